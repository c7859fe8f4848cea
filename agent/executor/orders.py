"""The order model: contracts, intents, broker reports, and the order state machine.

Plain domain values: nothing here knows a broker, a journal or the wire. Prices are ``Decimal`` on the
contract's tick (an off-tick price is an :class:`OffTickError`, never rounded silently), quantities are
positive ``int`` contracts, and the multiplier is carried by the contract.

Client order ids are ``<prefix>-<YYYYMMDD>-<seq>``: the prefix names the agent, the date the session,
and ``seq`` is the journal's own sequence number of the intent, so an id is unique and stable across
restarts (the journal allocates it before the broker ever sees the order).

A multi-leg order (a spread) is one order of ``quantity`` units; leg ``i`` trades ``ratio_i`` contracts
per unit. Brokers report executions per leg; an order's filled quantity is the number of complete
units, ``min(leg_filled_i // ratio_i)``.

State machine (``TRANSITIONS``)::

    pending_new --ack--> working --fill--> partially_filled --fill--> filled
         |                  |                    |
         +--cancel req--> pending_cancel <-------+        (cancel rejected: back to working/partial)
         |                  |
         +--reject--> rejected    pending_cancel --confirmed--> cancelled;  any live --> expired

Reports may arrive duplicated or out of order: a fill before its ack implies the ack, an ack after a
fill is ignored, a duplicate execution id is ignored. Terminal states (filled, cancelled, rejected,
expired) are final, with one exception: a *late fill* (the broker executed before it cancelled or
expired the order, and the reports crossed) is still booked, because the position is real; when such a
fill completes the quantity the order becomes ``filled``.

A :class:`CommissionCorrected` report sets the commission of a fill already booked (a broker that
reports commissions separately, late, or differently after a restart). It never changes the state, is
applied in any state (terminal included), and is idempotent: a correction to the commission the fill
already has is ignored, as is one for an execution the order does not have.

``OrderIntent.operator`` names who sent the order: the operator of a manual order, the operator who
confirmed a playbook proposal (``"playbook"`` when the playbook trades on its own), the operator who
asked for a flatten (or the automatic action that did).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Final

from agent.domain import Right, osi_symbol

log = logging.getLogger(__name__)

ZERO: Final = Decimal(0)


class OrderError(ValueError):
    """An order that cannot be built: bad price, quantity, legs or id. The message says what to fix."""


class OffTickError(OrderError):
    """A price that is not a whole number of the contract's ticks."""


class Side(Enum):
    BUY = "BUY"
    SELL = "SELL"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


@dataclass(frozen=True, slots=True)
class Contract:
    """One listed option: what it is, its multiplier and its tick (both carried, never assumed)."""

    symbol: str
    expiry: str  # YYYYMMDD
    strike: float
    right: Right
    multiplier: int = 100
    tick: Decimal = Decimal("0.01")
    con_id: int = 0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"\d{8}", self.expiry):
            raise OrderError(f"contract expiry must be YYYYMMDD, got {self.expiry!r}")
        if not self.strike > 0.0:
            raise OrderError(f"contract strike must be > 0, got {self.strike}")
        if self.multiplier <= 0:
            raise OrderError(f"contract multiplier must be > 0, got {self.multiplier}")
        if not self.tick > ZERO:
            raise OrderError(f"contract tick must be > 0, got {self.tick}")

    @property
    def key(self) -> tuple[float, Right]:
        """The chain key (strike, right), as in ``ChainBook.quotes``."""
        return (self.strike, self.right)

    @property
    def osi(self) -> str:
        return osi_symbol(self.symbol, self.expiry, self.right, self.strike)


def as_price(value: Decimal | str | int, tick: Decimal, *, allow_non_positive: bool = False) -> Decimal:
    """``value`` as a Decimal price on ``tick``; OffTickError / OrderError when it is not one."""
    try:
        price = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise OrderError(f"price {value!r} is not a number") from None
    if not price.is_finite():
        raise OrderError(f"price {value!r} is not a finite number")
    if not allow_non_positive and price <= ZERO:
        raise OrderError(f"price must be > 0, got {price}")
    if price % tick != ZERO:
        lower = (price // tick) * tick
        raise OffTickError(f"price {price} is not on the tick {tick}: use {lower} or {lower + tick}")
    return price


def nearest_tick(value: float, tick: Decimal) -> Decimal:
    """A float price (a quote, a mid) rounded to the nearest tick (half up), as a Decimal."""
    units = (Decimal(repr(value)) / tick).quantize(Decimal(1), rounding="ROUND_HALF_UP")
    return units * tick


@dataclass(frozen=True, slots=True)
class OrderLeg:
    """``ratio`` contracts of ``contract`` per unit of the order, on ``side`` when the order buys."""

    contract: Contract
    side: Side
    ratio: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.ratio, int) or isinstance(self.ratio, bool) or self.ratio <= 0:
            raise OrderError(f"leg ratio must be a positive integer, got {self.ratio!r}")

    def side_for(self, order_side: Side) -> Side:
        """The side this leg actually trades when the order is on ``order_side``."""
        return self.side if order_side is Side.BUY else self.side.opposite


class Origin(Enum):
    STRATEGY = "strategy"
    MANUAL = "manual"
    FLATTEN = "flatten"


PLAYBOOK_OPERATOR: Final = "playbook"  # sender of the orders the playbook places on its own (auto, exits)
DEADMAN_OPERATOR: Final = "dead-man"  # sender of a flatten taken by the dead-man switch
RISK_OPERATOR: Final = "risk"  # sender of a flatten taken on the hard loss limit


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """An order as decided, before any broker has seen it.

    ``limit_price`` is per unit: for a single leg the option price; for a spread the net price of the
    legs as defined (buy legs minus sell legs), which may be zero or negative (a credit). ``quantity``
    counts units. ``lease_epoch`` is the leadership epoch under which the intent was decided (fencing).
    """

    client_order_id: str
    side: Side
    quantity: int
    limit_price: Decimal
    legs: tuple[OrderLeg, ...]
    created_ns: int
    lease_epoch: int = 0
    origin: Origin = Origin.STRATEGY
    tif: str = "DAY"
    signal_id: str = ""
    operator: str = ""  # who sent it (see the module docstring); "" in journals written before it existed

    def __post_init__(self) -> None:
        if not self.client_order_id:
            raise OrderError("an order needs a client order id")
        if not isinstance(self.quantity, int) or isinstance(self.quantity, bool) or self.quantity <= 0:
            raise OrderError(f"quantity must be a positive whole number of contracts, got {self.quantity!r}")
        if not self.legs:
            raise OrderError("an order needs at least one leg")
        keys = [leg.contract.key for leg in self.legs]
        if len(set(keys)) != len(keys):
            raise OrderError("a contract appears twice among the legs: merge them into one leg")
        if len({leg.contract.expiry for leg in self.legs}) != 1:
            raise OrderError("all legs of a spread must share one expiry")
        if len(self.legs) == 1 and self.legs[0].ratio != 1:
            raise OrderError("a single-leg order has ratio 1: put the size in quantity")
        as_price(self.limit_price, self.tick, allow_non_positive=self.is_spread)

    @property
    def is_spread(self) -> bool:
        return len(self.legs) > 1

    @property
    def tick(self) -> Decimal:
        """The order's price increment: the coarsest tick among its legs."""
        return max(leg.contract.tick for leg in self.legs)

    def leg_quantity(self, i: int) -> int:
        """Signed contracts leg ``i`` trades when the whole order fills (+ buys, - sells)."""
        leg = self.legs[i]
        return leg.side_for(self.side).sign * leg.ratio * self.quantity

    def premium(self) -> Decimal:
        """Dollars that change hands if the whole order fills at its limit (absolute value)."""
        mult = self.legs[0].contract.multiplier
        return abs(self.limit_price) * self.quantity * mult

    def describe(self) -> str:
        legs = " / ".join(
            f"{leg.side_for(self.side).value.lower()} {leg.ratio * self.quantity}x "
            f"{leg.contract.strike:g}{leg.contract.right.value}"
            for leg in self.legs
        )
        return f"{self.client_order_id}: {legs} @ {self.limit_price}"


def single_leg(
    client_order_id: str,
    contract: Contract,
    side: Side,
    quantity: int,
    limit_price: Decimal | str,
    created_ns: int,
    *,
    lease_epoch: int = 0,
    origin: Origin = Origin.STRATEGY,
    signal_id: str = "",
    operator: str = "",
) -> OrderIntent:
    """A one-contract order (the common case), price checked against the contract's tick."""
    price = as_price(limit_price, contract.tick)
    return OrderIntent(
        client_order_id,
        side,
        quantity,
        price,
        (OrderLeg(contract, Side.BUY),),
        created_ns,
        lease_epoch=lease_epoch,
        origin=origin,
        signal_id=signal_id,
        operator=operator,
    )


def under_id(intent: OrderIntent) -> Callable[[str], OrderIntent]:
    """A build step for ``OrderFlow.place``: ``intent`` under the journal's client order id."""
    return lambda cid: replace(intent, client_order_id=cid)


def client_order_id(prefix: str, session_date: str, seq: int) -> str:
    """``prefix-YYYYMMDD-seq``: unique while prefixes are unique per executor and seq per journal."""
    if not re.fullmatch(r"[A-Za-z0-9_.]{1,24}", prefix):
        raise OrderError(f"client order id prefix must be 1-24 of A-Z a-z 0-9 _ . (got {prefix!r})")
    return f"{prefix}-{session_date}-{seq:06d}"


# ---------------------------------------------------------------- broker reports (past tense)


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution of one leg. ``exec_id`` is the broker's id, unique per execution."""

    exec_id: str
    client_order_id: str
    leg: int
    side: Side
    quantity: int
    price: Decimal
    commission: Decimal
    ts_ns: int

    def __post_init__(self) -> None:
        if self.quantity <= 0:
            raise OrderError(f"fill quantity must be > 0, got {self.quantity}")


@dataclass(frozen=True, slots=True)
class OrderAccepted:
    client_order_id: str
    broker_order_id: str
    ts_ns: int


@dataclass(frozen=True, slots=True)
class OrderFilled:
    fill: Fill

    @property
    def client_order_id(self) -> str:
        return self.fill.client_order_id


@dataclass(frozen=True, slots=True)
class OrderCancelled:
    client_order_id: str
    ts_ns: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class OrderRejected:
    client_order_id: str
    ts_ns: int
    reason: str


@dataclass(frozen=True, slots=True)
class OrderExpired:
    client_order_id: str
    ts_ns: int


@dataclass(frozen=True, slots=True)
class CancelRejected:
    client_order_id: str
    ts_ns: int
    reason: str


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """Local: the executor asked the broker to cancel (journaled before the request is sent)."""

    client_order_id: str
    ts_ns: int


@dataclass(frozen=True, slots=True)
class CommissionCorrected:
    """The commission of execution ``exec_id`` (already booked) is ``commission``, not what was booked.

    Sent when a broker's commission report arrives after the fill was booked without it, or when the
    broker's executions show another commission at reconciliation."""

    client_order_id: str
    exec_id: str
    commission: Decimal
    ts_ns: int

    def __post_init__(self) -> None:
        if not self.exec_id:
            raise OrderError("a commission correction needs the execution id it corrects")
        if not (self.commission.is_finite() and self.commission >= ZERO):
            raise OrderError(f"commission must be a finite amount >= 0, got {self.commission}")


OrderReport = (
    OrderAccepted
    | OrderFilled
    | OrderCancelled
    | OrderRejected
    | OrderExpired
    | CancelRejected
    | CancelRequested
    | CommissionCorrected
)


# ---------------------------------------------------------------- the state machine


class OrderState(Enum):
    PENDING_NEW = "pending_new"
    WORKING = "working"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    PENDING_CANCEL = "pending_cancel"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def open(self) -> bool:
        return self not in TERMINAL


S = OrderState
TERMINAL: Final = frozenset({S.FILLED, S.CANCELLED, S.REJECTED, S.EXPIRED})

TRANSITIONS: Final[dict[OrderState, frozenset[OrderState]]] = {
    S.PENDING_NEW: frozenset(
        {S.WORKING, S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.REJECTED, S.CANCELLED, S.EXPIRED}
    ),
    S.WORKING: frozenset(
        {S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.CANCELLED, S.EXPIRED, S.REJECTED}
    ),
    S.PARTIALLY_FILLED: frozenset({S.FILLED, S.PENDING_CANCEL, S.CANCELLED, S.EXPIRED}),
    S.PENDING_CANCEL: frozenset(
        {S.WORKING, S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.EXPIRED, S.REJECTED}
    ),
    # terminal: only a late fill that completes the quantity moves on (see the module docstring)
    S.CANCELLED: frozenset({S.FILLED}),
    S.EXPIRED: frozenset({S.FILLED}),
    S.REJECTED: frozenset({S.FILLED}),
    S.FILLED: frozenset(),
}
"""Every state an order may move to from each state; anything else is refused."""


class Outcome(Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # the same execution id again: nothing booked
    IGNORED = "ignored"  # stale or out-of-order report that changes nothing (e.g. ack after a fill)
    LATE_FILL = "late_fill"  # booked on an order already cancelled/expired/rejected
    REFUSED = "refused"  # inconsistent with the order (overfill, unknown leg): nothing booked


@dataclass(frozen=True, slots=True)
class Applied:
    outcome: Outcome
    state: OrderState
    detail: str = ""

    @property
    def booked(self) -> bool:
        return self.outcome in (Outcome.APPLIED, Outcome.LATE_FILL)


@dataclass(slots=True)
class Order:
    """One order's life: the intent, its state, and every fill booked once (by execution id)."""

    intent: OrderIntent
    state: OrderState = OrderState.PENDING_NEW
    broker_order_id: str = ""
    leg_filled: list[int] = field(default_factory=list)
    fills: dict[str, Fill] = field(default_factory=dict)
    commission: Decimal = ZERO
    reason: str = ""
    cancel_requested: bool = False
    late_fills: int = 0
    transitions: list[tuple[OrderState, OrderState]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.leg_filled:
            self.leg_filled = [0] * len(self.intent.legs)

    @property
    def client_order_id(self) -> str:
        return self.intent.client_order_id

    @property
    def quantity(self) -> int:
        return self.intent.quantity

    @property
    def filled(self) -> int:
        """Complete units filled (every leg at its ratio)."""
        return min(f // leg.ratio for f, leg in zip(self.leg_filled, self.intent.legs, strict=True))

    @property
    def leaves(self) -> int:
        return 0 if self.state.terminal else self.quantity - self.filled

    def leg_avg_price(self, i: int) -> Decimal | None:
        fills = [f for f in self.fills.values() if f.leg == i]
        qty = sum(f.quantity for f in fills)
        return sum((f.price * f.quantity for f in fills), ZERO) / qty if qty else None

    def _move(self, to: OrderState) -> None:
        if to is self.state:
            return
        if to not in TRANSITIONS[self.state]:
            raise AssertionError(
                f"{self.client_order_id}: illegal transition {self.state.value} -> {to.value}"
            )
        self.transitions.append((self.state, to))
        self.state = to

    def _live_state(self) -> OrderState:
        """The non-terminal state the fills and the cancel request say we are in."""
        if self.cancel_requested:
            return S.PENDING_CANCEL
        return S.PARTIALLY_FILLED if any(self.leg_filled) else S.WORKING

    def apply(self, report: OrderReport) -> Applied:
        """Fold one report in; returns what it did. Never raises on duplicates or reordering."""
        if report.client_order_id != self.client_order_id:
            return Applied(Outcome.REFUSED, self.state, "report for another order")
        if isinstance(report, OrderFilled):
            return self._fill(report.fill)
        if isinstance(report, CommissionCorrected):
            return self._correct_commission(report)
        if self.state.terminal:
            return Applied(Outcome.IGNORED, self.state, f"{type(report).__name__} after {self.state.value}")
        match report:
            case OrderAccepted(broker_order_id=bid):
                self.broker_order_id = self.broker_order_id or bid
                if self.state is S.PENDING_NEW:
                    self._move(S.WORKING)
                    return Applied(Outcome.APPLIED, self.state)
                return Applied(Outcome.IGNORED, self.state, "ack after the order moved on")
            case CancelRequested():
                self.cancel_requested = True
                self._move(S.PENDING_CANCEL)
            case CancelRejected(reason=why):
                if not self.cancel_requested:
                    return Applied(Outcome.IGNORED, self.state, "cancel rejected without a cancel request")
                self.cancel_requested = False
                self.reason = why
                if self.state is S.PENDING_CANCEL:
                    self._move(S.PARTIALLY_FILLED if any(self.leg_filled) else S.WORKING)
            case OrderCancelled(reason=why):
                self.reason = why or "cancelled"
                self._move(S.CANCELLED)
            case OrderExpired():
                self.reason = "expired"
                self._move(S.EXPIRED)
            case OrderRejected(reason=why):
                if any(self.leg_filled):
                    # a broker cannot reject what it already executed: keep the fills, treat as cancel
                    self.reason = f"rejected after fills: {why}"
                    self._move(S.CANCELLED)
                else:
                    self.reason = why
                    self._move(S.REJECTED)
        return Applied(Outcome.APPLIED, self.state)

    def commission_correction(self, fill: Fill, ts_ns: int) -> CommissionCorrected | None:
        """An execution the broker lists again with another (reported, non-zero) commission than the
        one booked: the correction to book. None if ``fill`` is not booked or agrees; a zero commission
        means "not reported yet", never a correction to zero."""
        booked = self.fills.get(fill.exec_id)
        if booked is None or fill.commission <= ZERO or booked.commission == fill.commission:
            return None
        return CommissionCorrected(fill.client_order_id, fill.exec_id, fill.commission, ts_ns)

    def corrects(self, report: CommissionCorrected) -> bool:
        """Whether ``report`` would change a booked fill's commission (False: a repeat or unknown)."""
        fill = self.fills.get(report.exec_id)
        return fill is not None and fill.commission != report.commission

    def _correct_commission(self, report: CommissionCorrected) -> Applied:
        fill = self.fills.get(report.exec_id)
        if fill is None:
            return Applied(Outcome.IGNORED, self.state, f"commission for unknown execution {report.exec_id}")
        if fill.commission == report.commission:
            return Applied(
                Outcome.DUPLICATE, self.state, f"execution {report.exec_id} already has that commission"
            )
        self.fills[report.exec_id] = replace(fill, commission=report.commission)
        self.commission += report.commission - fill.commission
        return Applied(
            Outcome.APPLIED,
            self.state,
            f"commission of {report.exec_id}: {fill.commission} -> {report.commission}",
        )

    def _fill(self, fill: Fill) -> Applied:
        if fill.exec_id in self.fills:
            return Applied(Outcome.DUPLICATE, self.state, f"execution {fill.exec_id} already booked")
        if not 0 <= fill.leg < len(self.intent.legs):
            return Applied(
                Outcome.REFUSED, self.state, f"fill for leg {fill.leg} of a {len(self.intent.legs)}-leg order"
            )
        leg = self.intent.legs[fill.leg]
        if fill.side is not leg.side_for(self.intent.side):
            return Applied(Outcome.REFUSED, self.state, f"fill on the wrong side ({fill.side.value})")
        if self.leg_filled[fill.leg] + fill.quantity > leg.ratio * self.quantity:
            return Applied(
                Outcome.REFUSED,
                self.state,
                f"overfill: leg {fill.leg} would have {self.leg_filled[fill.leg] + fill.quantity} of "
                f"{leg.ratio * self.quantity}",
            )
        was_terminal = self.state.terminal
        self.fills[fill.exec_id] = fill
        self.leg_filled[fill.leg] += fill.quantity
        self.commission += fill.commission
        complete = all(
            f == lg.ratio * self.quantity for f, lg in zip(self.leg_filled, self.intent.legs, strict=True)
        )
        if complete:
            self._move(S.FILLED)
        elif not was_terminal:
            self._move(self._live_state())
        if was_terminal:
            self.late_fills += 1
            log.warning("late fill %s on %s order %s", fill.exec_id, self.state.value, self.client_order_id)
            return Applied(Outcome.LATE_FILL, self.state)
        return Applied(Outcome.APPLIED, self.state)
