"""How spyctl shows envelopes (``stream``, ``replay``) and signals (``signals``): one line each for people,
and the topic an envelope belongs to (the agent's stream topics, as in the contract)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from console.format import contract, money, ny_time
from proto.spyops.v1 import spyops_pb2 as pb

# The stream topics of the contract (StreamRequest.topics); equal to agent.domain.TOPICS (tested).
TOPICS: tuple[str, ...] = ("market", "signals", "orders", "positions", "risk", "health", "notices", "audit")


def complete_topics(incomplete: str) -> list[str]:
    """Shell completion of --topic."""
    return [t for t in TOPICS if t.startswith(incomplete)]


_TOPIC_OF_PAYLOAD = {
    "underlying": "market",
    "chain": "market",
    "signal": "signals",
    "smile": "signals",
    "order": "orders",
    "fill": "orders",
    "proposal": "orders",
    "position": "positions",
    "risk": "risk",
    "health": "health",
    "notice": "notices",
    "command": "audit",
}


def topic_of(env: pb.Envelope) -> str:
    """The topic of an envelope; "snapshot" for snapshots (sent whatever the topics), "" if empty."""
    kind = env.WhichOneof("payload")
    if kind is None:
        return ""
    if kind == "snapshot":
        return "snapshot"
    return _TOPIC_OF_PAYLOAD.get(kind, "")


def wanted(env: pb.Envelope, topics: Iterable[str]) -> bool:
    """Does a topic filter keep this envelope? (no topics: all; snapshots always, as the agent does)"""
    chosen = set(topics)
    if not chosen:
        return True
    topic = topic_of(env)
    return topic == "snapshot" or topic in chosen


def legs_text(legs: Iterable[pb.Leg]) -> str:
    return " / ".join(
        f"{leg.side.lower()} {leg.quantity} {leg.strike:g}{'C' if leg.right == pb.CALL else 'P'}"
        for leg in legs
    )


def envelope_summary(env: pb.Envelope) -> str:
    """One line for people: seq, New York time, payload kind and what matters in it."""
    kind = env.WhichOneof("payload") or "?"
    head = f"{env.seq:>8} {ny_time(env.ts_ns)} {kind:<10}"
    if kind == "chain":
        c = env.chain
        return f"{head} {c.expiry} {len(c.quotes)} quotes{' (full)' if c.full else ''} und {c.underlying:.2f}"
    if kind == "underlying":
        return f"{head} {env.underlying.symbol} {env.underlying.last:.2f}"
    if kind == "notice":
        return f"{head} {env.notice.level} {env.notice.code}: {env.notice.message}"
    if kind == "snapshot":
        snap = env.snapshot
        return (
            f"{head} as of seq {snap.as_of_seq}, {len(snap.chain.quotes)} quotes, "
            f"{len(snap.signals)} signals, {len(snap.orders)} orders"
        )
    if kind == "signal":
        sig = env.signal
        return (
            f"{head} {sig.status:<8} {sig.kind:<13} edge ${money(sig.edge, signed=False)}  {sig.explanation}"
        )
    if kind == "smile":
        return f"{head} {env.smile.model} forward {env.smile.forward:.2f} rmse {env.smile.rmse:.4f}"
    if kind == "health":
        return f"{head} " + ", ".join(f"{c.name}={c.status}" for c in env.health.components)
    if kind == "order":
        o = env.order
        return f"{head} {o.client_order_id} {o.state} {o.filled}/{o.quantity} @ {o.limit_price} {legs_text(o.legs)}"
    if kind == "fill":
        f = env.fill
        return f"{head} {f.client_order_id} {f.quantity} @ {f.price} {legs_text([f.leg])}"
    if kind == "position":
        p = env.position
        return f"{head} {contract(p.strike, p.right)} qty {p.quantity} mark {money(p.mark, signed=False)}"
    if kind == "risk":
        r = env.risk
        armed = "armed" if r.armed else "disarmed"
        return f"{head} {r.trading_state or '-'} {armed} realized {money(r.realized_pnl, signed=False)}"
    if kind == "command":
        c2 = env.command
        verdict = "accepted" if c2.accepted else "refused"
        return f"{head} {c2.command} by {c2.operator or '?'} {verdict}: {c2.result}"
    if kind == "proposal":
        p2 = env.proposal
        return f"{head} {p2.id} {p2.status} {p2.kind} {legs_text(p2.legs)} @ {p2.limit_price}"
    return head


def age_text(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``; "-" when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
