"""Operator commands to the executor and their outcomes, as domain values (the gRPC edge translates
them in ``agent.wire``; the executor role carries them out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.executor.risk import Denial


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One operator command, already translated from the wire (``kind`` + its arguments).

    ``kind``: set_armed, set_trading_state, halt, flatten, submit_order, cancel_order, heartbeat,
    set_limits or decide_proposal.
    """

    idempotency_key: str
    operator: str
    kind: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    accepted: bool
    code: str
    message: str
    client_order_id: str = ""
    denials: tuple[Denial, ...] = ()
    replayed: bool = False
    audit_seq: int = 0
