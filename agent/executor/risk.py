"""Pre-trade risk: every check returns a :class:`Denial` (a code and a reason), never raises.

:meth:`RiskEngine.check` runs every control on an intent against a :class:`RiskContext` (trading state,
armed flag, quotes, positions, working orders, the session) and returns all denials, empty when the
order may go. The engine keeps the little state the controls need across orders: the send times for
the throttles and the recent intents for the duplicate check; the caller tells it what was sent
(:meth:`RiskEngine.record_sent`, :meth:`RiskEngine.record_message`).

Trading states: ACTIVE (anything the limits allow), REDUCING (only orders that reduce existing
positions), HALTED (nothing but cancels and the flatten orders that the hard loss limit calls for).
:meth:`RiskEngine.loss_action` maps P&L onto the state it requires: the daily loss limit moves to
REDUCING, the hard limit to HALTED with a flatten.

Codes (stable; the console and the audit trail show them): ``halted``, ``reducing_only``,
``not_armed``, ``max_quantity``, ``max_premium``, ``no_quote``, ``price_collar``, ``quote_stale``,
``duplicate_intent``, ``order_rate``, ``message_rate``, ``max_working_orders``,
``max_position_contract``, ``max_position_total``, ``greeks_unavailable``, ``max_delta``,
``max_gamma``, ``max_vega``, ``daily_loss``, ``opening_cutoff``, ``restricted_contract``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum

from agent.domain import ChainBook, OptionQuote, QuoteFlag
from agent.executor.orders import Order, OrderIntent, Origin, Side
from agent.executor.positions import PnL, PortfolioGreeks, PositionBook, contract_greeks, sum_greeks
from agent.session import NS_PER_MINUTE, Session, to_ns

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


class RiskConfigError(ValueError):
    """Limits that do not make sense together; the message names the setting."""


class TradingState(Enum):
    ACTIVE = "active"
    REDUCING = "reducing"
    HALTED = "halted"


@dataclass(frozen=True, slots=True)
class Denial:
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class RiskLimits:
    max_order_quantity: int = 10
    max_premium_per_order: Decimal = Decimal("5000")
    collar_ticks: int = 5
    collar_fraction: float = 0.10
    max_quote_age_ms: float = 2_000.0
    duplicate_window_ms: float = 5_000.0
    max_orders_per_second: int = 5
    max_messages_per_second: int = 50  # IB's limit on messages to TWS/Gateway
    max_working_orders: int = 20
    max_position_per_contract: int = 50
    max_position_total: int = 200
    max_net_delta: float = 5_000.0  # share equivalents
    max_net_gamma: float = 2_000.0  # shares per $1
    max_net_vega: float = 2_000.0  # $ per vol point
    daily_loss_limit: float = 2_000.0  # $ (realized - fees + unrealized): REDUCING
    hard_loss_limit: float = 5_000.0  # $: HALTED and flatten
    opening_cutoff: str = "15:45"  # New York: no new opening orders from then on
    restricted: frozenset[str] = frozenset()  # OSI symbols

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in (
            "max_order_quantity",
            "max_orders_per_second",
            "max_messages_per_second",
            "max_working_orders",
            "max_position_per_contract",
            "max_position_total",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                problems.append(f"{name} must be a positive whole number (got {value!r})")
        for name in (
            "max_quote_age_ms",
            "duplicate_window_ms",
            "max_net_delta",
            "max_net_gamma",
            "max_net_vega",
            "daily_loss_limit",
            "hard_loss_limit",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                problems.append(f"{name} must be a positive number (got {value!r})")
        if not self.max_premium_per_order > 0:
            problems.append(f"max_premium_per_order must be > 0 (got {self.max_premium_per_order})")
        if self.collar_ticks < 0 or not 0.0 <= self.collar_fraction <= 1.0:
            problems.append("collar_ticks must be >= 0 and collar_fraction within 0..1")
        if self.hard_loss_limit < self.daily_loss_limit:
            problems.append(
                f"hard_loss_limit ({self.hard_loss_limit}) must be at least daily_loss_limit "
                f"({self.daily_loss_limit})"
            )
        try:
            h, m = (int(x) for x in self.opening_cutoff.split(":"))
            if not (0 <= h < 24 and 0 <= m < 60):
                raise ValueError
        except ValueError:
            problems.append(f"opening_cutoff must be HH:MM New York time (got {self.opening_cutoff!r})")
        if problems:
            raise RiskConfigError("invalid risk limits:\n  " + "\n  ".join(problems))


@dataclass(frozen=True, slots=True)
class RiskContext:
    now_ns: int
    state: TradingState
    armed: bool
    book: ChainBook
    positions: PositionBook
    working: tuple[Order, ...]
    session: Session
    # When the feed last confirmed the whole book: a streaming feed publishes only the quotes that
    # changed, so every update also confirms that the others still stand. 0: rely on quote stamps.
    book_ts_ns: int = 0


@dataclass(frozen=True, slots=True)
class LossAction:
    state: TradingState
    flatten: bool
    reason: str


def _signed_leaves(o: Order) -> dict[str, int]:
    """Signed contracts each leg of a working order may still trade."""
    out: dict[str, int] = {}
    for i, leg in enumerate(o.intent.legs):
        remaining = leg.ratio * o.quantity - o.leg_filled[i]
        out[leg.contract.osi] = leg.side_for(o.intent.side).sign * remaining
    return out


def is_reducing(intent: OrderIntent, positions: PositionBook, working: tuple[Order, ...]) -> bool:
    """Every leg trades against an existing position and cannot take it through zero, counting the
    working orders that already reduce it in the same direction."""
    for i, leg in enumerate(intent.legs):
        delta = intent.leg_quantity(i)
        pos = positions.quantity(leg.contract)
        if pos == 0 or (pos > 0) == (delta > 0):
            return False
        pending = sum(
            q
            for o in working
            for osi, q in _signed_leaves(o).items()
            if osi == leg.contract.osi and (q > 0) == (delta > 0)
        )
        if abs(delta + pending) > abs(pos):
            return False
    return True


@dataclass(slots=True)
class RiskEngine:
    limits: RiskLimits = field(default_factory=RiskLimits)
    _orders: deque[int] = field(default_factory=deque)
    _messages: deque[int] = field(default_factory=deque)
    _recent: deque[tuple[int, tuple[object, ...]]] = field(default_factory=deque)

    # ------------------------------------------------------------- bookkeeping

    def record_sent(self, intent: OrderIntent, now_ns: int) -> None:
        self._orders.append(now_ns)
        self._messages.append(now_ns)
        self._recent.append((now_ns, _signature(intent)))

    def record_message(self, now_ns: int) -> None:
        """A cancel or any other message to the broker (counts toward the 50/s)."""
        self._messages.append(now_ns)

    def _trim(self, now_ns: int) -> None:
        for window in (self._orders, self._messages):
            while window and window[0] <= now_ns - NS_PER_S:
                window.popleft()
        horizon = now_ns - int(self.limits.duplicate_window_ms * NS_PER_MS)
        while self._recent and self._recent[0][0] <= horizon:
            self._recent.popleft()

    def message_denial(self, now_ns: int) -> Denial | None:
        """Whether one more message (e.g. a cancel) may go now."""
        self._trim(now_ns)
        if len(self._messages) >= self.limits.max_messages_per_second:
            return Denial(
                "message_rate",
                f"{len(self._messages)} messages in the last second (limit {self.limits.max_messages_per_second}/s)",
            )
        return None

    def loss_action(self, pnl: PnL, state: TradingState) -> LossAction:
        """The state the day's P&L requires (never relaxes a stricter ``state``)."""
        lim = self.limits
        if pnl.net <= -lim.hard_loss_limit:
            return LossAction(
                TradingState.HALTED,
                True,
                f"loss {pnl.net:,.2f} $ reached the hard limit {lim.hard_loss_limit:,.0f} $",
            )
        if pnl.net <= -lim.daily_loss_limit and state is TradingState.ACTIVE:
            return LossAction(
                TradingState.REDUCING,
                False,
                f"loss {pnl.net:,.2f} $ reached the daily limit {lim.daily_loss_limit:,.0f} $",
            )
        return LossAction(state, False, "")

    # ------------------------------------------------------------- the checks

    def check(self, intent: OrderIntent, ctx: RiskContext) -> tuple[Denial, ...]:
        """Every denial of ``intent`` in ``ctx`` (empty: the order may be sent)."""
        self._trim(ctx.now_ns)
        lim = self.limits
        out: list[Denial] = []
        reducing = is_reducing(intent, ctx.positions, ctx.working)

        if ctx.state is TradingState.HALTED and not (intent.origin is Origin.FLATTEN and reducing):
            out.append(Denial("halted", "trading is halted: only cancels (and flatten orders) are allowed"))
        elif ctx.state is TradingState.REDUCING and not reducing:
            out.append(
                Denial("reducing_only", "trading state is REDUCING: only orders that reduce a position")
            )
        if intent.origin is Origin.STRATEGY and not ctx.armed:
            out.append(
                Denial("not_armed", "the executor is not armed: strategy orders need an operator to arm it")
            )
        restricted = [leg.contract.osi for leg in intent.legs if leg.contract.osi in lim.restricted]
        if restricted:
            out.append(Denial("restricted_contract", f"restricted contract(s): {', '.join(restricted)}"))
        if intent.quantity > lim.max_order_quantity:
            out.append(Denial("max_quantity", f"quantity {intent.quantity} > limit {lim.max_order_quantity}"))
        if intent.premium() > lim.max_premium_per_order:
            out.append(
                Denial(
                    "max_premium", f"premium {intent.premium():,} $ > limit {lim.max_premium_per_order:,} $"
                )
            )
        out.extend(self._market_checks(intent, ctx))
        if any(sig == _signature(intent) for _, sig in self._recent):
            out.append(
                Denial(
                    "duplicate_intent",
                    f"the same contracts, side and quantity were sent less than {lim.duplicate_window_ms:g} ms ago",
                )
            )
        if len(self._orders) >= lim.max_orders_per_second:
            out.append(
                Denial(
                    "order_rate",
                    f"{len(self._orders)} orders in the last second (limit {lim.max_orders_per_second}/s)",
                )
            )
        if (d := self.message_denial(ctx.now_ns)) is not None:
            out.append(d)
        if len(ctx.working) >= lim.max_working_orders:
            out.append(
                Denial(
                    "max_working_orders",
                    f"{len(ctx.working)} orders working (limit {lim.max_working_orders})",
                )
            )
        if not reducing:
            out.extend(self._opening_checks(intent, ctx))
        return tuple(out)

    def _market_checks(self, intent: OrderIntent, ctx: RiskContext) -> list[Denial]:
        lim = self.limits
        quotes: list[OptionQuote] = []
        for leg in intent.legs:
            q = ctx.book.quotes.get(leg.contract.key) if ctx.book.expiry == leg.contract.expiry else None
            if q is None or not (q.has_bid and q.has_ask):
                return [
                    Denial("no_quote", f"no two-sided quote for {leg.contract.osi}: cannot price the order")
                ]
            quotes.append(q)
        out: list[Denial] = []
        max_age_ns = int(lim.max_quote_age_ms * NS_PER_MS)
        for leg, q in zip(intent.legs, quotes, strict=True):
            if q.flags & QuoteFlag.STALE:
                # the feed says this quote was not refreshed (e.g. held across a connectivity gap):
                # never priced on, however young its timestamp looks
                out.append(Denial("quote_stale", f"quote of {leg.contract.osi} is flagged stale by the feed"))
                continue
            seen = max(q.quote_ts_ns, ctx.book_ts_ns)
            age = ctx.now_ns - seen
            if seen <= 0 or age > max_age_ns:
                shown = "unknown" if seen <= 0 else f"{age / NS_PER_MS:,.0f} ms"
                out.append(
                    Denial(
                        "quote_stale",
                        f"quote of {leg.contract.osi} is {shown} old (limit {lim.max_quote_age_ms:g} ms)",
                    )
                )
        # the combination as defined (buy legs minus sell legs): its bid and ask at the touch
        net_bid = sum(
            leg.side.sign * leg.ratio * (q.bid if leg.side is Side.BUY else q.ask)
            for leg, q in zip(intent.legs, quotes, strict=True)
        )
        net_ask = sum(
            leg.side.sign * leg.ratio * (q.ask if leg.side is Side.BUY else q.bid)
            for leg, q in zip(intent.legs, quotes, strict=True)
        )
        mid = 0.5 * (net_bid + net_ask)
        width = max(lim.collar_ticks * float(intent.tick), lim.collar_fraction * abs(mid))
        price = float(intent.limit_price)
        if not net_bid - width - 1e-9 <= price <= net_ask + width + 1e-9:
            out.append(
                Denial(
                    "price_collar",
                    f"limit {intent.limit_price} outside the collar {net_bid - width:.2f} .. {net_ask + width:.2f} "
                    f"(bid {net_bid:.2f} / ask {net_ask:.2f} ± {width:.2f})",
                )
            )
        return out

    def _opening_checks(self, intent: OrderIntent, ctx: RiskContext) -> list[Denial]:
        lim = self.limits
        out: list[Denial] = []
        cutoff = ctx.session.at(lim.opening_cutoff)
        if ctx.now_ns >= to_ns(cutoff):
            late = (ctx.now_ns - to_ns(cutoff)) / NS_PER_MINUTE
            out.append(
                Denial(
                    "opening_cutoff",
                    f"no new opening orders after {lim.opening_cutoff} New York ({late:.0f} min ago)",
                )
            )
        pnl = ctx.positions.pnl(ctx.book)
        if pnl.net <= -lim.daily_loss_limit:
            out.append(
                Denial(
                    "daily_loss",
                    f"day's P&L {pnl.net:,.2f} $ is past the daily loss limit {lim.daily_loss_limit:,.0f} $",
                )
            )
        # positions: held + working (same direction) + this order, per contract and in total
        current = ctx.positions.net_quantities()
        exposure = dict(current)
        for o in ctx.working:
            for osi, q in _signed_leaves(o).items():
                held = current.get(osi, 0)
                if held == 0 or (q > 0) == (held > 0):
                    exposure[osi] = exposure.get(osi, 0) + q
        before_total = sum(abs(q) for q in exposure.values())
        for i, leg in enumerate(intent.legs):
            osi = leg.contract.osi
            before = exposure.get(osi, 0)
            after = before + intent.leg_quantity(i)
            exposure[osi] = after
            if abs(after) > lim.max_position_per_contract and abs(after) > abs(before):
                out.append(
                    Denial(
                        "max_position_contract",
                        f"{osi} would reach {after:+d} (limit ±{lim.max_position_per_contract})",
                    )
                )
        after_total = sum(abs(q) for q in exposure.values())
        if after_total > lim.max_position_total and after_total > before_total:
            out.append(
                Denial(
                    "max_position_total",
                    f"total position would reach {after_total} contracts (limit {lim.max_position_total})",
                )
            )
        out.extend(self._greek_checks(intent, ctx))
        return out

    def _greek_checks(self, intent: OrderIntent, ctx: RiskContext) -> list[Denial]:
        lim = self.limits
        tau = ctx.session.tau(ctx.now_ns)
        held = ctx.positions.positions()
        contracts = [p.contract for p in held] + [leg.contract for leg in intent.legs]
        per = contract_greeks(ctx.book, contracts, tau)
        now = sum_greeks(((p.contract, p.quantity) for p in held), per)
        add = sum_greeks(((leg.contract, intent.leg_quantity(i)) for i, leg in enumerate(intent.legs)), per)
        if add.missing:
            return [
                Denial(
                    "greeks_unavailable",
                    f"no greeks for {', '.join(add.missing)}: cannot check the greek limits",
                )
            ]
        after: PortfolioGreeks = now + add
        out: list[Denial] = []
        for code, name, unit, limit in (
            ("max_delta", "delta", "shares", lim.max_net_delta),
            ("max_gamma", "gamma", "shares/$", lim.max_net_gamma),
            ("max_vega", "vega", "$/vol pt", lim.max_net_vega),
        ):
            b, a = getattr(now, name), getattr(after, name)
            if abs(a) > limit and abs(a) > abs(b):
                out.append(
                    Denial(code, f"net {name} would be {a:,.0f} {unit} (limit ±{limit:,.0f}; now {b:,.0f})")
                )
        return out


def _signature(intent: OrderIntent) -> tuple[object, ...]:
    legs = tuple(
        sorted((leg.contract.osi, leg.side_for(intent.side).value, leg.ratio) for leg in intent.legs)
    )
    return (legs, intent.quantity)
