"""What the executor publishes on the event log: immutable views of orders, fills, positions, risk
state and the operator commands it received (the audit trail)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from agent.executor.orders import Fill, Order, OrderLeg
from agent.executor.playbook import Proposal
from agent.executor.positions import Position


@dataclass(frozen=True, slots=True)
class OrderUpdated:
    client_order_id: str
    broker_order_id: str
    state: str
    side: str
    legs: tuple[OrderLeg, ...]
    limit_price: Decimal
    quantity: int
    filled: int
    avg_price: Decimal | None
    reason: str
    origin: str
    signal_id: str
    operator: str = ""  # who sent the order (OrderIntent.operator)

    @classmethod
    def of(cls, order: Order) -> OrderUpdated:
        i = order.intent
        avg = order.leg_avg_price(0) if len(i.legs) == 1 else None
        return cls(
            client_order_id=i.client_order_id,
            broker_order_id=order.broker_order_id,
            state=order.state.value,
            side=i.side.value,
            legs=i.legs,
            limit_price=i.limit_price,
            quantity=i.quantity,
            filled=order.filled,
            avg_price=avg,
            reason=order.reason,
            origin=i.origin.value,
            signal_id=i.signal_id,
            operator=i.operator,
        )


@dataclass(frozen=True, slots=True)
class FillBooked:
    fill: Fill
    leg: OrderLeg


@dataclass(frozen=True, slots=True)
class PositionChanged:
    """A position marked to mid, with its greeks in share equivalents (quantity x multiplier; NaN
    when the contract has no usable quote or vol)."""

    position: Position
    mark: float  # mid, NaN when unknown
    unrealized: float
    delta: float = math.nan
    gamma: float = math.nan
    vega: float = math.nan
    theta: float = math.nan


@dataclass(frozen=True, slots=True)
class LimitUsage:
    name: str
    value: float
    used: float


@dataclass(frozen=True, slots=True)
class RiskStateChanged:
    trading_state: str
    armed: bool
    limits: tuple[LimitUsage, ...]
    realized: float
    unrealized: float
    fees: float
    leader: bool
    lease_epoch: int


@dataclass(frozen=True, slots=True)
class CommandRecorded:
    command: str
    operator: str
    idempotency_key: str
    arguments_json: str
    accepted: bool
    result: str


@dataclass(frozen=True, slots=True)
class ProposalChanged:
    """A playbook proposal waiting for (or decided by) an operator."""

    id: str
    signal_id: str
    kind: str
    side: str
    legs: tuple[OrderLeg, ...]
    limit_price: Decimal
    quantity: int
    edge: float
    created_ns: int
    expires_ns: int
    explanation: str
    status: str
    reason: str

    @classmethod
    def of(cls, p: Proposal) -> ProposalChanged:
        return cls(
            id=p.id,
            signal_id=p.signal_id,
            kind=p.kind,
            side=p.order.side.value,
            legs=p.order.legs,
            limit_price=p.order.limit_price,
            quantity=p.order.quantity,
            edge=p.edge,
            created_ns=p.created_ns,
            expires_ns=p.expires_ns,
            explanation=p.explanation,
            status=p.status.value,
            reason=p.reason,
        )
