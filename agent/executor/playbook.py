"""The strategy playbook: which detector signals become orders, at what price and size, and how the
positions they open are closed. A pure library: no broker, journal, clock or event log.

**Mapping.** :class:`PlaybookConfig` maps signal kinds to a :class:`KindRule`; every kind is ``off``
unless configured. Only arbitrage kinds (``parity``, ``box``, ``vertical``, ``butterfly``,
``intrinsic``) may trade; quality and flow kinds never do (a config error), relative-value kinds only
with ``allow_relative``. Modes:

* ``off``: the signal is ignored;
* ``propose``: the signal becomes a :class:`Proposal`; an operator confirms it (:meth:`Playbook.confirm`
  returns the entry order, once) or rejects it; a proposal expires when its signal resolves, after
  ``proposal_ttl_s``, or at the flatten time, whichever comes first;
* ``auto``: the signal becomes the entry order directly.

**Orders and risk.** The playbook returns :class:`PlannedOrder` values: an order as decided, without
a client order id, because the journal allocates that id (``OrderFlow.place``). The *caller* applies
the pre-trade risk checks, exactly as for any other order, through the veto of ``OrderFlow.place``::

    plan: PlannedOrder = ...
    await flow.place(lambda cid: plan.intent(cid, lease_epoch=epoch), veto=lambda i: risk.check(i, ctx))

The playbook does not call :class:`~agent.executor.risk.RiskEngine` itself: the checks need the live
trading state, armed flag, working orders and throttles that the executor owns, and the intent needs
the journal's id; a second, partial check here would only disagree with the real one. ``auto``
therefore never bypasses risk: an entry the engine denies is not sent (and still counts for the
cool-down, so one signal does not flood the audit trail with denials).

**Pricing** (:func:`combination_price`). A combination is priced per unit as its legs are defined
(buy legs minus sell legs; a spread may be zero or negative, a credit). ``touch`` pays the ask of every
leg bought and hits the bid of every leg sold; ``mid`` takes the sum of the legs' mids, rounded to the
tick *toward the touch* (never a better price than mid); ``improve`` starts at the touch and moves
``improve_ticks`` order ticks toward the mid, never past it. The result is a ``Decimal`` on the order's
tick. An entry never pays more than the net price the detector found its edge at (the signal's own
leg prices), so a market that moved against the signal leaves the order unfilled instead of buying a
trade that is no longer an arbitrage.

**Sizing.** ``units`` combinations per entry, capped by the signal's ``max_units`` (what the displayed
sizes allowed), by the sizes displayed now in the book at the traded side, and by ``max_premium``
(``|limit| x units x multiplier``). A cap of zero is a skip, never an order of zero.

**Idempotency.** One signal id (all its updates) produces at most one proposal or entry per
``cooldown_s``, and no new proposal while one is pending. :meth:`Playbook.restore` reseeds the
cool-downs from the journal's orders after a restart.

**Exits** (:meth:`Playbook.on_tick`). The playbook's positions are derived on every tick from the
orders (crash-only: nothing to lose in memory): orders of origin ``strategy`` or ``flatten`` that carry
a ``signal_id``, grouped by signal id and legs; the first such order is the entry (its side is the
trade's direction), orders on the opposite side are exits, and a ``flatten`` order of the same signal
id on some of the trade's contracts (see netting below) is an exit of that trade too.

*Allocation.* Each trade's holding of each leg comes from its own fills only: the signed contracts its
entries bought or sold minus those its exits closed (:attr:`PlaybookTrade.held`), whatever other trades
hold of the same contract: a parity trade short the 590 call and a butterfly long it are two positions,
although the position book nets them. What a trade may still close (:attr:`PlaybookTrade.closable`) is
that holding less the contracts its working exits will close, and then the playbook's claims are
checked against the position book, contract by contract: the playbook's exits taken together never
sell more than the book holds (nor buy back more than it is short), counting working exits. When the
trades' claims on a contract add up to more than the book holds in that direction (an operator closed
contracts by hand), the claims are reduced by the difference, the most recent trade first
(:attr:`PlaybookTrade.reduced`), and the exit's reason says so. Rules, in priority order:

1. flatten before close: from ``flatten_before_close_min`` minutes before the session's close (15:50
   New York on a regular day, 12:50 on a 13:00 half day) every trade's remaining legs are closed at the
   touch with origin ``flatten``. Opposite claims of different trades on one contract are netted first
   (:attr:`PlaybookTrade.crossed`; allocated oldest trade first on both sides): they offset each other
   in the book, and an order for them would not reduce the book's position, so the risk engine would
   deny it after the opening cutoff or when REDUCING or HALTED. Each trade then gets its own order for
   what remains: the whole combination when what remains is whole units of it, otherwise an order on
   the remaining legs only (still the trade's signal id, origin ``flatten``). Every flatten order
   reduces the book, so the book ends flat; the per-trade bookkeeping keeps the netted contracts on
   each side (each trade's P&L marks them; the sum over trades is the book's P&L);
2. stop-loss and 3. take-profit, per unit in dollars or in percent of the entry premium, on the
   combination's mark (``mid`` by default, or ``touch``: what closing would get now), before fees;
4. time exit: ``max_hold_s`` after the first entry fill.

Exits of rules 2-4 close whole units of the trade's own combination (as many as are closable on every
leg; legs left over wait for the flatten), have origin ``strategy`` and are priced by
``exits.pricing``. Contracts with an exit order working are not exited again; an exit working longer
than ``reprice_after_s`` is cancelled (a :class:`CancelOrder`) so that the next tick re-prices it; an
exit not placed (e.g. denied by risk) is proposed again after ``retry_after_s``. Entry orders still
working after ``entry_ttl_s``, or at the flatten time, are cancelled.

Limits of the order model (see the report): parity and intrinsic signals are arbitrages against the
underlying, but a :class:`~agent.executor.orders.Contract` is an option, so the playbook trades the
option legs only and the position carries delta (the risk engine's greek limits still apply).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from enum import Enum
from typing import Final, Protocol

from agent.detector.signals import (
    ARBITRAGE_KINDS,
    FLOW_KINDS,
    QUALITY_KINDS,
    RELATIVE_KINDS,
    SIGNAL_KINDS,
    Signal,
)
from agent.domain import ChainBook, OptionQuote, QuoteFlag
from agent.executor.orders import (
    ZERO,
    Contract,
    Order,
    OrderError,
    OrderIntent,
    OrderLeg,
    Origin,
    Side,
    nearest_tick,
)
from agent.executor.positions import PositionBook
from agent.session import NEW_YORK, NS_PER_MINUTE, Session

log = logging.getLogger(__name__)

NS_PER_S: Final = 1_000_000_000
_UNUSABLE: Final = QuoteFlag.CROSSED | QuoteFlag.STALE | QuoteFlag.BAD_VALUE | QuoteFlag.HALTED


class PlaybookConfigError(ValueError):
    """A playbook configuration that cannot work; the message names the setting."""


class ProposalError(ValueError):
    """A proposal that cannot be confirmed or rejected (unknown, decided, expired); says why."""


class Mode(Enum):
    OFF = "off"
    PROPOSE = "propose"
    AUTO = "auto"


class Pricing(Enum):
    MID = "mid"
    TOUCH = "touch"
    IMPROVE = "improve"


class Mark(Enum):
    """How an open position is valued for take-profit and stop-loss."""

    MID = "mid"
    TOUCH = "touch"  # what closing it at the touch would get now


class Purpose(Enum):
    ENTRY = "entry"
    TAKE_PROFIT = "take_profit"
    STOP_LOSS = "stop_loss"
    TIME_EXIT = "time_exit"
    FLATTEN = "flatten"


class ProposalStatus(Enum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"
    EXPIRED = "expired"


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class Target:
    """A take-profit or stop-loss distance per unit: ``amount`` dollars, or ``amount`` percent of the
    entry premium (``|entry price| x multiplier``) when ``percent``."""

    amount: Decimal
    percent: bool = False

    def __post_init__(self) -> None:
        if not (self.amount.is_finite() and self.amount > ZERO):
            raise PlaybookConfigError(f"a take-profit / stop-loss amount must be > 0 (got {self.amount})")

    @classmethod
    def usd(cls, amount: Decimal | str | int) -> Target:
        return cls(Decimal(str(amount)), False)

    @classmethod
    def pct(cls, amount: Decimal | str | int) -> Target:
        return cls(Decimal(str(amount)), True)

    def dollars(self, entry_price: Decimal, multiplier: int) -> Decimal | None:
        """The distance in dollars per unit; None for a percentage of a zero entry price."""
        if not self.percent:
            return self.amount
        base = abs(entry_price) * multiplier
        return self.amount / 100 * base if base > ZERO else None

    def describe(self) -> str:
        return f"{self.amount}%" if self.percent else f"${self.amount}"


@dataclass(frozen=True, slots=True)
class KindRule:
    """What to do with signals of one kind."""

    mode: Mode = Mode.OFF
    pricing: Pricing = Pricing.MID
    improve_ticks: int = 0
    units: int = 1  # combinations per entry (before the caps)
    max_premium: Decimal = Decimal("1000")  # dollars per entry: |limit| x units x multiplier
    min_edge: float = 0.0  # dollars per unit (Signal.edge) below which the signal is ignored

    def problems(self, kind: str) -> list[str]:
        out: list[str] = []
        if not isinstance(self.units, int) or isinstance(self.units, bool) or self.units <= 0:
            out.append(f"kinds.{kind}.units must be a positive whole number (got {self.units!r})")
        if not isinstance(self.improve_ticks, int) or self.improve_ticks < 0:
            out.append(f"kinds.{kind}.improve_ticks must be >= 0 (got {self.improve_ticks!r})")
        elif self.pricing is Pricing.IMPROVE and self.improve_ticks == 0:
            out.append(f"kinds.{kind}: pricing 'improve' needs improve_ticks >= 1 (0 is 'touch')")
        if not (self.max_premium.is_finite() and self.max_premium > ZERO):
            out.append(f"kinds.{kind}.max_premium must be > 0 dollars (got {self.max_premium})")
        if not (math.isfinite(self.min_edge) and self.min_edge >= 0.0):
            out.append(f"kinds.{kind}.min_edge must be >= 0 dollars (got {self.min_edge!r})")
        return out


@dataclass(frozen=True, slots=True)
class ExitRules:
    """How positions opened by the playbook are closed (see the module docstring)."""

    take_profit: Target | None = None
    stop_loss: Target | None = None
    max_hold_s: float | None = None
    flatten_before_close_min: float = 10.0  # 15:50 New York, 12:50 on a 13:00 half day
    pricing: Pricing = Pricing.TOUCH
    improve_ticks: int = 0
    mark: Mark = Mark.MID
    reprice_after_s: float = 5.0
    retry_after_s: float = 2.0

    def problems(self) -> list[str]:
        out: list[str] = []
        if self.max_hold_s is not None and not (math.isfinite(self.max_hold_s) and self.max_hold_s > 0):
            out.append(f"exits.max_hold_s must be > 0 seconds or unset (got {self.max_hold_s!r})")
        if not (math.isfinite(self.flatten_before_close_min) and 0 < self.flatten_before_close_min < 390):
            out.append(
                "exits.flatten_before_close_min must be minutes before the close, > 0 and < 390 "
                f"(got {self.flatten_before_close_min!r})"
            )
        if not isinstance(self.improve_ticks, int) or self.improve_ticks < 0:
            out.append(f"exits.improve_ticks must be >= 0 (got {self.improve_ticks!r})")
        elif self.pricing is Pricing.IMPROVE and self.improve_ticks == 0:
            out.append("exits: pricing 'improve' needs improve_ticks >= 1 (0 is 'touch')")
        for name in ("reprice_after_s", "retry_after_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                out.append(f"exits.{name} must be > 0 seconds (got {value!r})")
        return out


def _all_off() -> dict[str, KindRule]:
    return {kind: KindRule() for kind in ARBITRAGE_KINDS}


@dataclass(frozen=True, slots=True)
class PlaybookConfig:
    """The playbook's settings; every kind is off unless a rule says otherwise."""

    kinds: Mapping[str, KindRule] = field(default_factory=_all_off)
    exits: ExitRules = field(default_factory=ExitRules)
    cooldown_s: float = 300.0  # one proposal / entry per signal id per cool-down
    proposal_ttl_s: float = 30.0
    entry_ttl_s: float = 30.0  # an entry still working after this is cancelled
    allow_relative: bool = False  # let smile_outlier / iv_jump trade (they are not arbitrage)

    def __post_init__(self) -> None:
        problems: list[str] = []
        for kind, rule in self.kinds.items():
            if kind not in SIGNAL_KINDS:
                problems.append(f"kinds.{kind}: unknown signal kind (known: {', '.join(SIGNAL_KINDS)})")
                continue
            problems.extend(rule.problems(kind))
            if rule.mode is Mode.OFF:
                continue
            if kind in QUALITY_KINDS or kind in FLOW_KINDS:
                problems.append(f"kinds.{kind}: quality and flow signals never trade; set mode 'off'")
            elif kind in RELATIVE_KINDS and not self.allow_relative:
                problems.append(
                    f"kinds.{kind}: not an arbitrage; set allow_relative to trade it, or mode 'off'"
                )
        for name in ("cooldown_s", "proposal_ttl_s", "entry_ttl_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                problems.append(f"{name} must be > 0 seconds (got {value!r})")
        if isinstance(self.cooldown_s, int | float) and 0 < self.cooldown_s < 1:
            problems.append(f"cooldown_s must be at least 1 second (got {self.cooldown_s!r})")
        problems.extend(self.exits.problems())
        if problems:
            raise PlaybookConfigError("invalid playbook configuration:\n  " + "\n  ".join(problems))

    def rule(self, kind: str) -> KindRule:
        return self.kinds.get(kind) or KindRule()

    def with_mode(self, mode: Mode, kinds: Iterable[str] = ARBITRAGE_KINDS) -> PlaybookConfig:
        """The same configuration with ``kinds`` switched to ``mode`` (other rule fields kept)."""
        rules = dict(self.kinds)
        for kind in kinds:
            rules[kind] = replace(rules.get(kind) or KindRule(), mode=mode)
        return replace(self, kinds=rules)


# ---------------------------------------------------------------- what the playbook returns


@dataclass(frozen=True, slots=True)
class PlannedOrder:
    """An order the playbook decided, before the journal gives it a client order id.

    ``limit_price`` is per unit as the legs are defined (see ``OrderIntent``); ``quantity`` counts units.
    Built orders carry ``signal_id``, which is how the playbook recognises its positions.
    """

    purpose: Purpose
    side: Side
    quantity: int
    limit_price: Decimal
    legs: tuple[OrderLeg, ...]
    signal_id: str
    created_ns: int
    origin: Origin = Origin.STRATEGY
    reason: str = ""

    def __post_init__(self) -> None:
        if not self.signal_id:
            raise OrderError("a playbook order needs the signal id it trades")
        self.intent("validation")  # the same checks as the real intent: legs, quantity, tick

    def intent(self, client_order_id: str, lease_epoch: int = 0) -> OrderIntent:
        """The order intent under the journal's ``client_order_id`` (``OrderFlow.place``'s build)."""
        return OrderIntent(
            client_order_id,
            self.side,
            self.quantity,
            self.limit_price,
            self.legs,
            self.created_ns,
            lease_epoch=lease_epoch,
            origin=self.origin,
            signal_id=self.signal_id,
        )

    def premium(self) -> Decimal:
        return abs(self.limit_price) * self.quantity * self.legs[0].contract.multiplier

    def describe(self) -> str:
        legs = " / ".join(
            f"{leg.side_for(self.side).value.lower()} {leg.ratio * self.quantity}x "
            f"{leg.contract.strike:g}{leg.contract.right.value}"
            for leg in self.legs
        )
        return f"{self.purpose.value} {self.signal_id}: {legs} @ {self.limit_price}"


@dataclass(frozen=True, slots=True)
class Proposal:
    """An entry waiting for an operator. ``id`` is what ``spyctl confirm ID`` takes."""

    id: str
    signal_id: str
    kind: str
    order: PlannedOrder
    edge: float  # dollars per unit, as the detector saw it
    created_ns: int
    expires_ns: int
    explanation: str
    status: ProposalStatus = ProposalStatus.PENDING
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CancelOrder:
    """Cancel one of the playbook's working orders (a stale entry, an exit to re-price)."""

    client_order_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Skip:
    """Why a signal produced no entry (logged; shown by tools that explain the playbook)."""

    signal_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class PlaybookTrade:
    """A position the playbook opened: ``units`` of the combination ``legs`` bought (``side`` BUY)
    or sold, at ``entry_price`` per unit on average; ``exiting`` units have an exit order working.

    Per leg (in the order of ``legs``), signed contracts (+ long, - short), see the module docstring:
    ``held`` by the trade's own fills; ``closable`` by new exit orders (``held`` less the working
    exits, less ``reduced``); ``reduced``, what the position book no longer backs (closed by hand), as
    a count of contracts; ``crossed``, the part of ``closable`` that offsets other trades' opposite
    claims (netted at the flatten, no order). ``order_ids`` are the trade's orders (its P&L is theirs).
    """

    signal_id: str
    side: Side
    legs: tuple[OrderLeg, ...]
    units: int
    entry_price: Decimal
    opened_ns: int
    exiting: int = 0
    held: tuple[int, ...] = ()
    closable: tuple[int, ...] = ()
    reduced: tuple[int, ...] = ()
    crossed: tuple[int, ...] = ()
    order_ids: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[object, ...]:
        return _trade_key(self.signal_id, self.legs)

    @property
    def multiplier(self) -> int:
        return self.legs[0].contract.multiplier

    @property
    def directions(self) -> tuple[int, ...]:
        """+1 for a leg the trade holds long, -1 short."""
        return tuple(leg.side_for(self.side).sign for leg in self.legs)

    @property
    def closable_units(self) -> int:
        """Whole units of the combination that exits may close now (closable on every leg)."""
        return max(
            0,
            min(
                (d * c) // leg.ratio
                for d, c, leg in zip(self.directions, self.closable, self.legs, strict=True)
            ),
        )

    @property
    def remaining(self) -> tuple[int, ...]:
        """Signed contracts per leg the flatten closes by orders: ``closable`` less ``crossed``."""
        return tuple(c - x for c, x in zip(self.closable, self.crossed, strict=True))

    def shortfall(self) -> str:
        """Why exits close less than the trade holds ('' when the book backs it all)."""
        short = [f"{n} {_leg_name(leg)}" for n, leg in zip(self.reduced, self.legs, strict=True) if n]
        if not short:
            return ""
        return (
            f"the position book holds less than the playbook's trades ({', '.join(short)} not closed: "
            "closed by hand?)"
        )


class Blotter(Protocol):
    """What :meth:`Playbook.on_tick` reads: every order of the day and the positions (``OrderFlow``)."""

    @property
    def orders(self) -> Mapping[str, Order]: ...

    @property
    def positions(self) -> PositionBook: ...


# ---------------------------------------------------------------- pricing


def _usable(q: OptionQuote | None) -> bool:
    return q is not None and q.has_bid and q.has_ask and not (q.flags & _UNUSABLE) and q.bid <= q.ask


def _round(price: Decimal, tick: Decimal, up: bool) -> Decimal:
    units = (price / tick).to_integral_value(rounding=ROUND_CEILING if up else ROUND_FLOOR)
    return units * tick


def combination_price(
    legs: Sequence[OrderLeg],
    quotes: Sequence[OptionQuote],
    side: Side,
    pricing: Pricing,
    improve_ticks: int = 0,
) -> Decimal:
    """Limit per unit for trading the combination ``legs`` on ``side`` (see the module docstring).

    ``quotes`` are the legs' quotes, in order, two-sided. The result is on the coarsest leg tick.
    """
    tick = max(leg.contract.tick for leg in legs)
    touch = ZERO
    mid = ZERO
    for leg, q in zip(legs, quotes, strict=True):
        bid, ask = nearest_tick(q.bid, leg.contract.tick), nearest_tick(q.ask, leg.contract.tick)
        paid = ask if leg.side_for(side) is Side.BUY else bid
        touch += leg.side.sign * leg.ratio * paid
        mid += leg.side.sign * leg.ratio * (bid + ask) / 2
    buying = side is Side.BUY
    mid_on_tick = _round(mid, tick, up=buying)  # toward the touch: never better than mid
    if pricing is Pricing.TOUCH:
        price = touch
    elif pricing is Pricing.MID:
        price = mid_on_tick
    else:
        step = improve_ticks * tick
        price = max(touch - step, mid_on_tick) if buying else min(touch + step, mid_on_tick)
    return _round(price, tick, up=not buying)  # off the order tick (mixed leg ticks): the passive side


def combination_mark(
    legs: Sequence[OrderLeg], quotes: Sequence[OptionQuote], side: Side, mark: Mark
) -> Decimal:
    """Value per unit (as the legs are defined) of a position held on ``side``."""
    if mark is Mark.TOUCH:  # what closing it would get: the opposite side at the touch
        return combination_price(legs, quotes, side.opposite, Pricing.TOUCH)
    total = ZERO
    for leg, q in zip(legs, quotes, strict=True):
        bid, ask = nearest_tick(q.bid, leg.contract.tick), nearest_tick(q.ask, leg.contract.tick)
        total += leg.side.sign * leg.ratio * (bid + ask) / 2
    return total


def _quotes(legs: Sequence[OrderLeg], book: ChainBook) -> list[OptionQuote] | str:
    """The legs' quotes from ``book``, or why they cannot be used."""
    out: list[OptionQuote] = []
    for leg in legs:
        c = leg.contract
        q = book.quotes.get(c.key) if book.expiry == c.expiry else None
        if q is None or not _usable(q):
            return f"no usable two-sided quote for {c.osi.strip()}"
        out.append(q)
    return out


def _trade_key(signal_id: str, legs: Sequence[OrderLeg]) -> tuple[object, ...]:
    return (signal_id, tuple((leg.contract.osi, leg.side.value, leg.ratio) for leg in legs))


def _is_playbook(intent: OrderIntent) -> bool:
    return bool(intent.signal_id) and intent.origin in (Origin.STRATEGY, Origin.FLATTEN)


# ---------------------------------------------------------------- derived positions


@dataclass(slots=True)
class _Group:
    signal_id: str
    side: Side
    legs: tuple[OrderLeg, ...]
    entries: list[Order] = field(default_factory=list)
    exits: list[Order] = field(default_factory=list)  # incl. flatten orders on some of the legs

    @property
    def osis(self) -> tuple[str, ...]:
        return tuple(leg.contract.osi for leg in self.legs)


def _groups(orders: Iterable[Order]) -> list[_Group]:
    """The playbook's orders grouped per trade (signal id and legs), the first one the entry.

    A ``flatten`` order of a signal id whose legs are not a trade's own but a part of a trade's
    contracts (the flatten's netted orders) belongs to the oldest such trade of that signal id.
    """
    groups: dict[tuple[object, ...], _Group] = {}
    by_signal: dict[str, list[_Group]] = {}
    mine = sorted(
        (o for o in orders if _is_playbook(o.intent)),
        key=lambda o: (o.intent.created_ns, o.client_order_id),
    )
    for o in mine:
        key = _trade_key(o.intent.signal_id, o.intent.legs)
        g = groups.get(key)
        if g is None and o.intent.origin is Origin.FLATTEN:
            osis = {leg.contract.osi for leg in o.intent.legs}
            parent = next((p for p in by_signal.get(o.intent.signal_id, ()) if osis <= set(p.osis)), None)
            if parent is not None:
                parent.exits.append(o)
                continue
        if g is None:
            g = groups[key] = _Group(o.intent.signal_id, o.intent.side, o.intent.legs)
            by_signal.setdefault(g.signal_id, []).append(g)
        (g.entries if o.intent.side is g.side else g.exits).append(o)
    return list(groups.values())


def _leg_name(leg: OrderLeg) -> str:
    return f"{leg.contract.strike:g}{leg.contract.right.value}"


def _net_fill_price(o: Order) -> Decimal | None:
    """Average price per unit (as the legs are defined) of what ``o`` filled."""
    total = ZERO
    for i, leg in enumerate(o.intent.legs):
        avg = o.leg_avg_price(i)
        if avg is None:
            return None
        total += leg.side.sign * leg.ratio * avg
    return total


def _signed_fills(o: Order) -> dict[str, int]:
    """Signed contracts ``o`` filled, per contract (+ bought, - sold)."""
    out: dict[str, int] = {}
    for f in o.fills.values():
        osi = o.intent.legs[f.leg].contract.osi
        out[osi] = out.get(osi, 0) + f.side.sign * f.quantity
    return out


def _signed_leaves(o: Order) -> dict[str, int]:
    """Signed contracts a working order may still trade, per contract (none once it is terminal)."""
    if not o.state.open:
        return {}
    return {
        leg.contract.osi: leg.side_for(o.intent.side).sign * (leg.ratio * o.quantity - o.leg_filled[i])
        for i, leg in enumerate(o.intent.legs)
    }


def _allocate(claims: list[int], amount: int, order: Iterable[int]) -> list[int]:
    """Take ``amount`` (>= 0) out of the same-signed ``claims`` in the index ``order``; what each gave."""
    taken = [0] * len(claims)
    for i in order:
        if amount <= 0:
            break
        n = min(abs(claims[i]), amount)
        taken[i] = n
        amount -= n
    return taken


def _trades(orders: Iterable[Order], positions: PositionBook) -> list[PlaybookTrade]:
    """Each trade's legs from its own fills, its claims checked against the book (module docstring)."""
    groups = _groups(orders)
    held: list[dict[str, int]] = []
    free: list[dict[str, int]] = []
    working: dict[str, int] = {}  # per contract: what the playbook's working exits will still trade
    for g in groups:
        h = dict.fromkeys(g.osis, 0)
        leaves = dict.fromkeys(g.osis, 0)
        for o in (*g.entries, *g.exits):
            for osi, n in _signed_fills(o).items():
                h[osi] += n
        for o in g.exits:
            for osi, n in _signed_leaves(o).items():
                leaves[osi] += n
                working[osi] = working.get(osi, 0) + n
        held.append(h)
        # a trade that holds nothing claims nothing (its working exits still count for the book)
        free.append({osi: h[osi] + leaves[osi] if any(h.values()) else 0 for osi in g.osis})
    # the book's backing, contract by contract: claims beyond it are reduced, the newest trade first
    book = positions.net_quantities()
    claims = [dict(f) for f in free]
    reduced: list[dict[str, int]] = [dict.fromkeys(g.osis, 0) for g in groups]
    crossed: list[dict[str, int]] = [dict.fromkeys(g.osis, 0) for g in groups]
    for osi in sorted({osi for g in groups for osi in g.osis}):
        who = [i for i, g in enumerate(groups) if osi in g.osis]
        total = sum(claims[i][osi] for i in who)
        backed = book.get(osi, 0) + working.get(osi, 0)  # the book once the working exits are done
        sign = 1 if total > 0 else -1
        excess = abs(total) - max(sign * backed, 0) if total else 0
        if excess > 0:
            same = [i for i in who if claims[i][osi] * sign > 0]
            cut = _allocate([claims[i][osi] for i in same], excess, reversed(range(len(same))))
            for i, n in zip(same, cut, strict=True):
                claims[i][osi] -= sign * n
                reduced[i][osi] = n
        # opposite claims offset each other in the book: netted, oldest trade first on each side
        longs = [i for i in who if claims[i][osi] > 0]
        shorts = [i for i in who if claims[i][osi] < 0]
        cross = min(sum(claims[i][osi] for i in longs), -sum(claims[i][osi] for i in shorts))
        for side, ids in ((1, longs), (-1, shorts)):
            taken = _allocate([claims[i][osi] for i in ids], cross, range(len(ids)))
            for i, n in zip(ids, taken, strict=True):
                crossed[i][osi] = side * n
    out: list[PlaybookTrade] = []
    for k, g in enumerate(groups):
        legs_held = tuple(held[k][osi] for osi in g.osis)
        if not any(legs_held):
            continue
        directions = [leg.side_for(g.side).sign for leg in g.legs]
        units = max(
            0, min((d * n) // leg.ratio for d, n, leg in zip(directions, legs_held, g.legs, strict=True))
        )
        weights = [(o.filled, _net_fill_price(o)) for o in g.entries if o.filled > 0]
        priced = [(n, p) for n, p in weights if p is not None]
        units_priced = sum(n for n, _ in priced)
        entry = sum((p * n for n, p in priced), ZERO) / units_priced if units_priced else ZERO
        opened = min((f.ts_ns for o in g.entries for f in o.fills.values()), default=0)
        exiting = sum(o.quantity - o.filled for o in g.exits if o.state.open and o.intent.legs == g.legs)
        out.append(
            PlaybookTrade(
                g.signal_id,
                g.side,
                g.legs,
                units,
                entry,
                opened,
                exiting,
                held=legs_held,
                closable=tuple(claims[k][osi] for osi in g.osis),
                reduced=tuple(reduced[k][osi] for osi in g.osis),
                crossed=tuple(crossed[k][osi] for osi in g.osis),
                order_ids=tuple(
                    o.client_order_id
                    for o in sorted(
                        (*g.entries, *g.exits), key=lambda o: (o.intent.created_ns, o.client_order_id)
                    )
                ),
            )
        )
    return out


# ---------------------------------------------------------------- the playbook


class Playbook:
    """Signals in, proposals and planned orders out; exits for what it opened. See the module docstring.

    One instance per session (``session`` gives the close and the flatten time). Not thread-safe: call
    it from the executor's one task.
    """

    def __init__(self, config: PlaybookConfig, session: Session) -> None:
        self.config = config
        self.session = session
        self._last_entry: dict[str, int] = {}  # signal id -> ns of its last proposal / entry
        self._proposals: dict[str, Proposal] = {}
        self._proposed_signal: dict[str, Signal] = {}  # proposal id -> the signal it came from
        self._emitted: dict[object, int] = {}  # trade key / client order id -> ns of the last exit/cancel

    # ------------------------------------------------------------- clock helpers

    @property
    def flatten_ns(self) -> int:
        """From this moment the playbook opens nothing and closes everything it holds."""
        minutes = self.config.exits.flatten_before_close_min
        return self.session.close_ns - int(minutes * NS_PER_MINUTE)

    # ------------------------------------------------------------- entries

    def plan_entry(self, signal: Signal, book: ChainBook, now_ns: int) -> PlannedOrder | Skip:
        """The entry ``signal`` calls for now, priced and sized from ``book``, or why there is none.

        Pure: ignores modes' bookkeeping (cool-down, proposals); :meth:`on_signal` applies those.
        """
        rule = self.config.rule(signal.kind)

        def skip(reason: str) -> Skip:
            return Skip(signal.id, reason)

        if rule.mode is Mode.OFF:
            return skip(f"kind {signal.kind} is off in the playbook")
        if signal.status == "resolved":
            return skip("the signal is resolved")
        if not signal.legs:
            return skip("the signal has no legs to trade")
        if not self.session.open_ns <= now_ns < self.flatten_ns:
            return skip("outside the playbook's trading window (session open .. flatten time)")
        if signal.expiry != book.expiry or signal.expiry != self.session.expiry:
            return skip(f"signal expiry {signal.expiry} is not the book's / session's ({book.expiry})")
        if signal.edge < rule.min_edge:
            return skip(f"edge ${signal.edge:.2f}/unit is below the kind's min_edge ${rule.min_edge:.2f}")
        if signal.max_units <= 0:
            return skip("the displayed sizes allow no unit")
        if len(signal.legs) == 1 and signal.legs[0].quantity != 1:
            return skip("a single-leg signal of more than one contract per unit is not supported")
        tick = Decimal(str(book.tick))
        try:
            contracts = [
                Contract(
                    book.symbol,
                    signal.expiry,
                    leg.strike,
                    leg.right,
                    multiplier=book.multiplier,
                    tick=tick,
                    con_id=q.con_id if (q := book.quotes.get(leg.key)) is not None else 0,
                )
                for leg in signal.legs
            ]
        except OrderError as e:
            return skip(f"cannot build the contracts: {e}")
        if len(signal.legs) == 1:
            side = Side(signal.legs[0].side)
            legs: tuple[OrderLeg, ...] = (OrderLeg(contracts[0], Side.BUY),)
        else:
            side = Side.BUY  # the combination as the detector defined it
            legs = tuple(
                OrderLeg(c, Side(leg.side), leg.quantity)
                for c, leg in zip(contracts, signal.legs, strict=True)
            )
        quotes = _quotes(legs, book)
        if isinstance(quotes, str):
            return skip(quotes)
        price = combination_price(legs, quotes, side, rule.pricing, rule.improve_ticks)
        # never worse than the price the detector found the edge at
        order_tick = max(leg.contract.tick for leg in legs)
        found = sum(
            (
                leg.side.sign * leg.ratio * nearest_tick(s.price, leg.contract.tick)
                for leg, s in zip(legs, signal.legs, strict=True)
            ),
            ZERO,
        )
        found = _round(found, order_tick, up=side is not Side.BUY)
        price = min(price, found) if side is Side.BUY else max(price, found)
        if len(legs) == 1 and price <= ZERO:
            return skip(f"a single option priced at {price}: nothing to trade")
        # sizing: fixed units, capped by the displayed sizes (signal and book) and the premium
        units = min(rule.units, signal.max_units)
        for leg, q in zip(legs, quotes, strict=True):
            shown = q.ask_size if leg.side_for(side) is Side.BUY else q.bid_size
            units = min(units, shown // leg.ratio)
        if units <= 0:
            return skip("the book displays less than one unit at the touch")
        per_unit = abs(price) * legs[0].contract.multiplier
        if per_unit > ZERO:
            units = min(units, int(rule.max_premium // per_unit))
            if units <= 0:
                return skip(f"one unit costs ${per_unit} > max_premium ${rule.max_premium}")
        return PlannedOrder(
            Purpose.ENTRY,
            side,
            units,
            price,
            legs,
            signal.id,
            now_ns,
            reason=f"{signal.kind} edge ${signal.edge:.2f}/unit, {rule.pricing.value} pricing",
        )

    def on_signal(self, signal: Signal, book: ChainBook, now_ns: int) -> list[Proposal | PlannedOrder]:
        """React to a new or updated signal.

        Returns the new proposal (``propose``) or entry (``auto``), at most one per signal id per
        cool-down; for a resolved signal, its pending proposals, now expired.
        """
        if signal.status == "resolved":
            return list(self._expire(lambda p: p.signal_id == signal.id, now_ns, "the signal resolved"))
        mode = self.config.rule(signal.kind).mode
        if mode is Mode.OFF:
            return []
        last = self._last_entry.get(signal.id)
        if last is not None and now_ns - last < int(self.config.cooldown_s * NS_PER_S):
            return []
        if any(
            p.signal_id == signal.id and p.status is ProposalStatus.PENDING for p in self._proposals.values()
        ):
            return []
        plan = self.plan_entry(signal, book, now_ns)
        if isinstance(plan, Skip):
            log.debug("playbook skips %s: %s", plan.signal_id, plan.reason)
            return []
        self._last_entry[signal.id] = now_ns
        if mode is Mode.AUTO:
            log.info("playbook entry %s", plan.describe())
            return [plan]
        proposal = Proposal(
            id=f"{signal.id}@{dt.datetime.fromtimestamp(now_ns / NS_PER_S, NEW_YORK):%H%M%S}",
            signal_id=signal.id,
            kind=signal.kind,
            order=plan,
            edge=signal.edge,
            created_ns=now_ns,
            expires_ns=min(now_ns + int(self.config.proposal_ttl_s * NS_PER_S), self.flatten_ns),
            explanation=signal.explanation,
        )
        self._proposals[proposal.id] = proposal
        self._proposed_signal[proposal.id] = signal
        log.info("playbook proposes %s (%s)", proposal.id, plan.describe())
        return [proposal]

    # ------------------------------------------------------------- proposals

    def proposals(self, *, pending_only: bool = True) -> list[Proposal]:
        return [p for p in self._proposals.values() if not pending_only or p.status is ProposalStatus.PENDING]

    def _decide(self, proposal_id: str, now_ns: int) -> Proposal:
        p = self._proposals.get(proposal_id)
        if p is None:
            raise ProposalError(f"no proposal {proposal_id!r} (see the pending proposals)")
        if p.status is ProposalStatus.PENDING and now_ns >= p.expires_ns:
            p = self._set(p, ProposalStatus.EXPIRED, "expired before it was confirmed")
        if p.status is not ProposalStatus.PENDING:
            why = f": {p.reason}" if p.reason else ""
            raise ProposalError(f"proposal {proposal_id} is already {p.status.value}{why}")
        return p

    def _set(self, p: Proposal, status: ProposalStatus, reason: str) -> Proposal:
        p = replace(p, status=status, reason=reason)
        self._proposals[p.id] = p
        if status is not ProposalStatus.PENDING:
            self._proposed_signal.pop(p.id, None)
        return p

    def confirm(self, proposal_id: str, now_ns: int, book: ChainBook | None = None) -> PlannedOrder:
        """The entry of a pending proposal, once; with ``book``, re-priced and re-sized on it now.

        ProposalError when the proposal is unknown, already decided, expired, or (re-pricing) no longer
        tradeable; a failed re-pricing leaves it pending.
        """
        p = self._decide(proposal_id, now_ns)
        plan = replace(p.order, created_ns=now_ns)
        if book is not None:
            fresh = self.plan_entry(self._proposed_signal[p.id], book, now_ns)
            if isinstance(fresh, Skip):
                raise ProposalError(f"proposal {proposal_id} cannot be traded now: {fresh.reason}")
            plan = fresh
        self._set(p, ProposalStatus.CONFIRMED, "confirmed by an operator")
        log.info("playbook proposal %s confirmed: %s", proposal_id, plan.describe())
        return plan

    def reject(self, proposal_id: str, now_ns: int, reason: str = "rejected by an operator") -> Proposal:
        """Reject a pending proposal; ProposalError when it is unknown or already decided."""
        p = self._decide(proposal_id, now_ns)
        return self._set(p, ProposalStatus.REJECTED, reason)

    def expire(self, now_ns: int) -> list[Proposal]:
        """Expire the pending proposals past their time; returns them (to publish)."""
        out = list(self._expire(lambda p: now_ns >= p.expires_ns, now_ns, "expired unconfirmed"))
        # forget what can no longer matter: decided proposals and cool-downs over an hour old
        horizon = now_ns - max(int(self.config.cooldown_s * NS_PER_S), 3600 * NS_PER_S)
        for pid in [
            k
            for k, p in self._proposals.items()
            if p.status is not ProposalStatus.PENDING and p.created_ns < horizon
        ]:
            del self._proposals[pid]
        for sid in [k for k, ns in self._last_entry.items() if ns < horizon]:
            del self._last_entry[sid]
        return out

    def _expire(self, which: _ProposalFilter, now_ns: int, reason: str) -> Iterable[Proposal]:
        for p in list(self._proposals.values()):
            if p.status is ProposalStatus.PENDING and which(p):
                yield self._set(p, ProposalStatus.EXPIRED, reason)

    # ------------------------------------------------------------- exits

    def trades(self, blotter: Blotter) -> list[PlaybookTrade]:
        """The positions the playbook holds now, derived from the orders and the position book."""
        return _trades(blotter.orders.values(), blotter.positions)

    def on_tick(self, blotter: Blotter, book: ChainBook, now_ns: int) -> list[PlannedOrder | CancelOrder]:
        """Exits due now for the playbook's positions, and cancels of its stale working orders."""
        ex = self.config.exits
        out: list[PlannedOrder | CancelOrder] = []
        flattening = now_ns >= self.flatten_ns
        retry_ns = int(ex.retry_after_s * NS_PER_S)

        def due(key: object) -> bool:
            last = self._emitted.get(key)
            if last is not None and now_ns - last < retry_ns:
                return False
            self._emitted[key] = now_ns
            return True

        groups = _groups(blotter.orders.values())
        for g in groups:
            for o in g.entries:
                if not o.state.open or o.cancel_requested:
                    continue
                age = now_ns - o.intent.created_ns
                if flattening or age >= int(self.config.entry_ttl_s * NS_PER_S):
                    why = (
                        "flatten before close"
                        if flattening
                        else f"entry unfilled after {age / NS_PER_S:.0f} s"
                    )
                    if due(o.client_order_id):
                        out.append(CancelOrder(o.client_order_id, why))
            for o in g.exits:
                if o.state.open and not o.cancel_requested:
                    age = now_ns - o.intent.created_ns
                    if age >= int(ex.reprice_after_s * NS_PER_S) and due(o.client_order_id):
                        out.append(
                            CancelOrder(
                                o.client_order_id, f"re-price an exit working for {age / NS_PER_S:.0f} s"
                            )
                        )
        for t in _trades(blotter.orders.values(), blotter.positions):
            if flattening:
                exit_ = self._flatten(t, book, now_ns)
            else:
                units = t.closable_units
                if units <= 0:
                    if any(t.reduced) and due(("short", t.key)):
                        log.warning("playbook exits of %s are limited: %s", t.signal_id, t.shortfall())
                    continue
                exit_ = self._exit(t, units, book, now_ns)
            if isinstance(exit_, str):
                if due(("unpriced", t.key)):  # say so, but not on every tick
                    log.warning("playbook cannot price the exit of %s: %s", t.signal_id, exit_)
            elif exit_ is not None and due(t.key):
                out.append(exit_)
        return out

    def _exit(self, t: PlaybookTrade, units: int, book: ChainBook, now_ns: int) -> PlannedOrder | str | None:
        """The exit due for ``units`` of ``t`` now (rules 2-4), None when none is, or why a due exit
        cannot be priced."""
        ex = self.config.exits
        quotes = _quotes(t.legs, book)
        purpose: Purpose | None = None
        reason = ""
        if not isinstance(quotes, str):
            value = combination_mark(t.legs, quotes, t.side, ex.mark)
            pnl = t.side.sign * (value - t.entry_price) * t.multiplier  # dollars per unit
            sl = ex.stop_loss.dollars(t.entry_price, t.multiplier) if ex.stop_loss else None
            tp = ex.take_profit.dollars(t.entry_price, t.multiplier) if ex.take_profit else None
            if sl is not None and pnl <= -sl:
                purpose, reason = Purpose.STOP_LOSS, f"P&L ${pnl:.2f}/unit at or below -${sl:.2f}"
            elif tp is not None and pnl >= tp:
                purpose, reason = Purpose.TAKE_PROFIT, f"P&L ${pnl:.2f}/unit at or above ${tp:.2f}"
        if purpose is None and ex.max_hold_s is not None and t.opened_ns > 0:
            held_s = (now_ns - t.opened_ns) / NS_PER_S
            if held_s >= ex.max_hold_s:
                purpose, reason = Purpose.TIME_EXIT, f"held {held_s:.0f} s >= max_hold_s {ex.max_hold_s:g}"
        if purpose is None:
            return None
        if isinstance(quotes, str):
            return f"{purpose.value}: {quotes}"
        if short := t.shortfall():
            reason += f"; {units} of {t.units - t.exiting} unit(s): {short}"
        side = t.side.opposite
        price = combination_price(t.legs, quotes, side, ex.pricing, ex.improve_ticks)
        if len(t.legs) == 1 and price <= ZERO:
            price = t.legs[0].contract.tick  # a worthless option: offer it at one tick
        log.info("playbook %s of %s: %s", purpose.value, t.signal_id, reason)
        return PlannedOrder(purpose, side, units, price, t.legs, t.signal_id, now_ns, reason=reason)

    def _flatten(self, t: PlaybookTrade, book: ChainBook, now_ns: int) -> PlannedOrder | str | None:
        """The flatten order for what ``t`` still has to close by an order (rule 1), None when nothing,
        or why it cannot be priced: the whole combination when what remains is whole units of it,
        otherwise an order on the remaining legs (see the module docstring)."""
        remaining = t.remaining
        if not any(remaining):
            return None
        notes = ["flatten before the close"]
        netted = [f"{abs(x)} {_leg_name(leg)}" for x, leg in zip(t.crossed, t.legs, strict=True) if x]
        if netted:
            notes.append(f"netted against other playbook trades' opposite holdings: {', '.join(netted)}")
        if short := t.shortfall():
            notes.append(short)
        reason = "; ".join(notes)
        side = t.side.opposite
        units = t.directions[0] * remaining[0] // t.legs[0].ratio
        legs: tuple[OrderLeg, ...]
        if units > 0 and all(
            d * r == units * leg.ratio for d, r, leg in zip(t.directions, remaining, t.legs, strict=True)
        ):
            legs, quantity = t.legs, units  # whole units of the trade's own combination
        else:
            parts = [(leg.contract, r) for leg, r in zip(t.legs, remaining, strict=True) if r]

            def closing(r: int) -> Side:  # sell what is held long, buy back what is held short
                return Side.SELL if r > 0 else Side.BUY

            if len(parts) == 1:
                contract, r = parts[0]
                side, legs, quantity = closing(r), (OrderLeg(contract, Side.BUY),), abs(r)
            else:
                quantity = math.gcd(*(abs(r) for _, r in parts))
                legs = tuple(
                    OrderLeg(c, closing(r) if side is Side.BUY else closing(r).opposite, abs(r) // quantity)
                    for c, r in parts
                )
        quotes = _quotes(legs, book)
        if isinstance(quotes, str):
            return f"{Purpose.FLATTEN.value}: {quotes}"
        price = combination_price(legs, quotes, side, Pricing.TOUCH)
        if len(legs) == 1 and price <= ZERO:
            price = legs[0].contract.tick  # a worthless option: offer it at one tick
        log.info("playbook %s of %s: %s", Purpose.FLATTEN.value, t.signal_id, reason)
        return PlannedOrder(
            Purpose.FLATTEN,
            side,
            quantity,
            price,
            legs,
            t.signal_id,
            now_ns,
            origin=Origin.FLATTEN,
            reason=reason,
        )

    # ------------------------------------------------------------- restart

    def restore(self, orders: Iterable[Order]) -> None:
        """After a restart: the cool-downs from the entries in the journal (pending proposals are lost)."""
        for g in _groups(orders):
            for o in g.entries:
                ns = o.intent.created_ns
                self._last_entry[g.signal_id] = max(self._last_entry.get(g.signal_id, ns), ns)


class _ProposalFilter(Protocol):
    def __call__(self, p: Proposal, /) -> bool: ...
