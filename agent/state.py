"""The agent's current state, folded from its own events: what a snapshot carries.

Every event published on the log is applied here, in order, on the agent's event loop, so a snapshot
taken between two publishes is exactly the state as of ``as_of_seq``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace

from agent.detector.signals import Signal, SmileFit
from agent.domain import ChainBook, ChainUpdate, Health, Notice, UnderlyingTick
from agent.events import Payload
from agent.executor.events import OrderUpdated, PositionChanged, ProposalChanged, RiskStateChanged

RECENT_NOTICES = 50
RECENT_RESOLVED = 50


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a client needs to draw its screen, consistent as of ``as_of_seq``."""

    agent_id: str
    incarnation: str
    as_of_seq: int
    ts_ns: int
    underlying: UnderlyingTick | None
    chain: ChainUpdate | None
    health: Health | None
    recent_notices: tuple[Notice, ...]
    signals: tuple[Signal, ...] = ()  # open ones, then the most recently resolved
    smile: SmileFit | None = None
    orders: tuple[OrderUpdated, ...] = ()
    positions: tuple[PositionChanged, ...] = ()
    risk: RiskStateChanged | None = None
    proposals: tuple[ProposalChanged, ...] = ()


@dataclass
class AgentState:
    agent_id: str
    incarnation: str
    last_seq: int = 0
    last_ts_ns: int = 0
    underlying: UnderlyingTick | None = None
    book: ChainBook = field(default_factory=ChainBook)
    health: Health | None = None
    notices: deque[Notice] = field(default_factory=lambda: deque(maxlen=RECENT_NOTICES))
    open_signals: dict[str, Signal] = field(default_factory=dict)
    resolved: deque[Signal] = field(default_factory=lambda: deque(maxlen=RECENT_RESOLVED))
    smile: SmileFit | None = None
    orders: dict[str, OrderUpdated] = field(default_factory=dict)
    positions: dict[str, PositionChanged] = field(default_factory=dict)
    risk: RiskStateChanged | None = None
    proposals: dict[str, ProposalChanged] = field(default_factory=dict)  # pending ones

    def apply(self, seq: int, ts_ns: int, payload: Payload) -> None:
        self.last_seq, self.last_ts_ns = seq, ts_ns
        if isinstance(payload, ChainUpdate):
            self.book.apply(payload)
            if payload.underlying_tick is not None:
                self.underlying = payload.underlying_tick
        elif isinstance(payload, UnderlyingTick):
            self.underlying = payload
            self.book.underlying = payload.last
        elif isinstance(payload, Notice):
            self.notices.append(payload)
        elif isinstance(payload, Health):
            self.health = payload
        elif isinstance(payload, Signal):
            if payload.status == "resolved":
                self.open_signals.pop(payload.id, None)
                self.resolved.append(payload)
            else:
                self.open_signals[payload.id] = payload
        elif isinstance(payload, SmileFit):
            self.smile = payload
        elif isinstance(payload, OrderUpdated):
            self.orders[payload.client_order_id] = payload
        elif isinstance(payload, PositionChanged):
            osi = payload.position.contract.osi
            if payload.position.quantity == 0:
                self.positions.pop(osi, None)
            else:
                self.positions[osi] = payload
        elif isinstance(payload, RiskStateChanged):
            self.risk = payload
        elif isinstance(payload, ProposalChanged):
            if payload.status == "pending":
                self.proposals[payload.id] = payload
            else:
                self.proposals.pop(payload.id, None)

    def snapshot(self) -> Snapshot:
        chain = self.book.as_update() if self.book.expiry else None
        if chain is not None and self.underlying is not None and not math.isfinite(chain.underlying):
            chain = replace(chain, underlying=self.underlying.last)
        return Snapshot(
            agent_id=self.agent_id,
            incarnation=self.incarnation,
            as_of_seq=self.last_seq,
            ts_ns=self.last_ts_ns,
            underlying=self.underlying,
            chain=chain,
            health=self.health,
            recent_notices=tuple(self.notices),
            signals=(*self.open_signals.values(), *self.resolved),
            smile=self.smile,
            orders=tuple(self.orders.values()),
            positions=tuple(self.positions.values()),
            risk=self.risk,
            proposals=tuple(self.proposals.values()),
        )
