"""What the event log carries: every payload type and the stream topic it belongs to."""

from __future__ import annotations

from agent.detector.signals import Signal, SmileFit
from agent.domain import ChainUpdate, Health, Notice, UnderlyingTick
from agent.executor.events import (
    CommandRecorded,
    FillBooked,
    OrderUpdated,
    PositionChanged,
    ProposalChanged,
    RiskStateChanged,
)

Payload = (
    UnderlyingTick
    | ChainUpdate
    | Notice
    | Health
    | Signal
    | SmileFit
    | OrderUpdated
    | FillBooked
    | PositionChanged
    | RiskStateChanged
    | CommandRecorded
    | ProposalChanged
)


def topic_of(payload: Payload) -> str:
    """The stream topic a payload belongs to (see ``agent.domain.TOPICS``)."""
    if isinstance(payload, UnderlyingTick | ChainUpdate):
        return "market"
    if isinstance(payload, Signal | SmileFit):
        return "signals"
    if isinstance(payload, OrderUpdated | FillBooked | ProposalChanged):
        return "orders"
    if isinstance(payload, PositionChanged):
        return "positions"
    if isinstance(payload, RiskStateChanged):
        return "risk"
    if isinstance(payload, CommandRecorded):
        return "audit"
    if isinstance(payload, Notice):
        return "notices"
    if isinstance(payload, Health):
        return "health"
    raise TypeError(f"no topic for payload type {type(payload).__name__}")
