"""Translation between the agent's domain values and the ``spyops.v1`` wire messages.

The only module of the agent that knows the protobuf types (besides the gRPC servicer that calls it).
"""

from __future__ import annotations

import math

from agent.detector.signals import Leg, Signal, SmileFit
from agent.domain import (
    ChainUpdate,
    Health,
    Notice,
    NoticeLevel,
    OptionQuote,
    QuoteFlag,
    Right,
    UnderlyingTick,
)
from agent.eventlog import Event, MarketMerge, QueueItem
from agent.events import Payload
from agent.state import Snapshot
from proto.spyops.v1 import spyops_pb2 as pb

_RIGHT_TO_PB = {Right.CALL: pb.CALL, Right.PUT: pb.PUT}
_RIGHT_FROM_PB = {pb.CALL: Right.CALL, pb.PUT: Right.PUT}


class WireError(ValueError):
    """A wire message that does not translate into a valid domain value."""


# ------------------------------------------------------------------ encode


def underlying_to_pb(t: UnderlyingTick, out: pb.UnderlyingTick) -> None:
    out.symbol = t.symbol
    out.last = t.last
    out.bid = t.bid
    out.ask = t.ask
    out.volume = t.volume
    out.prev_close = t.prev_close
    out.quote_ts_ns = t.quote_ts_ns


def chain_to_pb(c: ChainUpdate, out: pb.ChainUpdate) -> None:
    out.symbol = c.symbol
    out.expiry = c.expiry
    out.multiplier = c.multiplier
    out.tick = c.tick
    out.full = c.full
    out.underlying = c.underlying
    out.trading_class = c.trading_class
    out.removed_strikes.extend(c.removed_strikes)
    if c.underlying_tick is not None:
        underlying_to_pb(c.underlying_tick, out.underlying_tick)
    add = out.quotes.add
    for q in c.quotes:
        add(
            strike=q.strike,
            right=_RIGHT_TO_PB[q.right],
            bid=q.bid,
            ask=q.ask,
            bid_size=q.bid_size,
            ask_size=q.ask_size,
            last=q.last,
            last_size=q.last_size,
            volume=q.volume,
            quote_ts_ns=q.quote_ts_ns,
            flags=int(q.flags),
            con_id=q.con_id,
            src_iv=q.src_iv,
            src_delta=q.src_delta,
            src_gamma=q.src_gamma,
            src_vega=q.src_vega,
            src_theta=q.src_theta,
            src_und_price=q.src_und_price,
        )


def notice_to_pb(n: Notice, out: pb.Notice) -> None:
    out.level = n.level.value
    out.code = n.code
    out.message = n.message
    out.source = n.source
    out.attributes.update(dict(n.attributes))


def health_to_pb(h: Health, out: pb.Health) -> None:
    for c in h.components:
        out.components.add(name=c.name, status=c.status.value, detail=c.detail)
    out.feed_lag_ms = h.feed_lag_ms
    out.clients = h.clients
    out.detector_lag_ms = h.detector_lag_ms
    out.detector_eval_ms = h.detector_eval_ms


def leg_to_pb(leg: Leg, expiry: str, out: pb.Leg) -> None:
    out.strike = leg.strike
    out.right = _RIGHT_TO_PB[leg.right]
    out.side = leg.side
    out.price = leg.price
    out.quantity = leg.quantity
    out.expiry = expiry
    out.displayed_size = leg.displayed_size


def signal_to_pb(sig: Signal, out: pb.Signal) -> None:
    out.id = sig.id
    out.kind = sig.kind
    out.expiry = sig.expiry
    for leg in sig.legs:
        leg_to_pb(leg, sig.expiry, out.legs.add())
    out.edge = sig.edge
    out.score = sig.score
    out.first_seen_ns = sig.first_seen_ns
    out.last_seen_ns = sig.last_seen_ns
    out.status = sig.status
    out.explanation = sig.explanation
    out.severity = sig.severity.value
    out.max_units = sig.max_units
    for strike, right in sig.contracts:
        out.contracts.add(strike=strike, right=_RIGHT_TO_PB[right])


def smile_to_pb(fit: SmileFit, expiry: str, out: pb.SmileFit) -> None:
    out.expiry = expiry
    out.model = fit.model
    out.params.update(fit.params)
    out.forward = fit.forward
    out.strikes.extend(fit.strikes)
    out.ivs.extend(fit.ivs)
    out.rmse = fit.rmse
    out.n_used = fit.n_used
    out.forward_method = fit.forward_method


def snapshot_to_pb(s: Snapshot, out: pb.Snapshot) -> None:
    out.agent_id = s.agent_id
    out.incarnation = s.incarnation
    out.as_of_seq = s.as_of_seq
    out.ts_ns = s.ts_ns
    if s.underlying is not None:
        underlying_to_pb(s.underlying, out.underlying)
    if s.chain is not None:
        chain_to_pb(s.chain, out.chain)
    if s.health is not None:
        health_to_pb(s.health, out.health)
    for n in s.recent_notices:
        notice_to_pb(n, out.recent_notices.add())
    for sig in s.signals:
        signal_to_pb(sig, out.signals.add())
    if s.smile is not None:
        smile_to_pb(s.smile, s.chain.expiry if s.chain else "", out.smile)


def payload_to_envelope(p: Payload, env: pb.Envelope) -> None:
    if isinstance(p, ChainUpdate):
        chain_to_pb(p, env.chain)
    elif isinstance(p, UnderlyingTick):
        underlying_to_pb(p, env.underlying)
    elif isinstance(p, Notice):
        notice_to_pb(p, env.notice)
    elif isinstance(p, Health):
        health_to_pb(p, env.health)
    elif isinstance(p, Signal):
        signal_to_pb(p, env.signal)
    elif isinstance(p, SmileFit):
        smile_to_pb(p, "", env.smile)
    else:  # pragma: no cover - exhaustive over Payload
        raise TypeError(f"no wire form for {type(p).__name__}")


def encode_item(agent_id: str, item: QueueItem) -> bytes:
    """Serialized ``Envelope`` of one queued item; events are encoded once and cached."""
    if isinstance(item, Event):
        if item.wire is None:
            env = pb.Envelope(agent_id=agent_id, seq=item.seq, ts_ns=item.ts_ns, wall_ns=item.wall_ns)
            payload_to_envelope(item.payload, env)
            item.wire = env.SerializeToString()
        return item.wire
    if isinstance(item, MarketMerge):
        env = pb.Envelope(
            agent_id=agent_id, seq=item.seq, ts_ns=item.ts_ns, wall_ns=item.wall_ns, first_seq=item.first_seq
        )
        payload_to_envelope(item.payload(), env)
        return env.SerializeToString()
    snap = item.snapshot
    env = pb.Envelope(agent_id=agent_id, seq=snap.as_of_seq, ts_ns=snap.ts_ns)
    snapshot_to_pb(snap, env.snapshot)
    return env.SerializeToString()


def snapshot_message(s: Snapshot) -> pb.Snapshot:
    out = pb.Snapshot()
    snapshot_to_pb(s, out)
    return out


# ------------------------------------------------------------------ decode (upstream agents, recordings)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else math.nan


def underlying_from_pb(m: pb.UnderlyingTick) -> UnderlyingTick:
    return UnderlyingTick(
        symbol=m.symbol,
        last=m.last,
        bid=m.bid,
        ask=m.ask,
        volume=m.volume,
        prev_close=m.prev_close,
        quote_ts_ns=m.quote_ts_ns,
    )


def quote_from_pb(q: pb.OptionQuote) -> OptionQuote:
    right = _RIGHT_FROM_PB.get(q.right)
    if right is None:
        raise WireError(f"option quote at strike {q.strike} has no right (call/put)")
    if not (math.isfinite(q.strike) and q.strike > 0):
        raise WireError(f"option quote with invalid strike {q.strike}")
    return OptionQuote(
        strike=q.strike,
        right=right,
        bid=q.bid,
        ask=q.ask,
        bid_size=q.bid_size,
        ask_size=q.ask_size,
        last=q.last,
        last_size=q.last_size,
        volume=q.volume,
        quote_ts_ns=q.quote_ts_ns,
        flags=QuoteFlag(q.flags & 0x7F),
        con_id=q.con_id,
        src_iv=q.src_iv,
        src_delta=q.src_delta,
        src_gamma=q.src_gamma,
        src_vega=q.src_vega,
        src_theta=q.src_theta,
        src_und_price=q.src_und_price,
    )


def chain_from_pb(m: pb.ChainUpdate) -> ChainUpdate:
    return ChainUpdate(
        symbol=m.symbol,
        expiry=m.expiry,
        quotes=tuple(quote_from_pb(q) for q in m.quotes),
        full=m.full,
        multiplier=m.multiplier or 100,
        tick=m.tick or 0.01,
        underlying=_finite(m.underlying) if m.underlying else math.nan,
        removed_strikes=tuple(m.removed_strikes),
        trading_class=m.trading_class,
        underlying_tick=underlying_from_pb(m.underlying_tick) if m.HasField("underlying_tick") else None,
    )


def notice_from_pb(m: pb.Notice) -> Notice:
    try:
        level = NoticeLevel(m.level)
    except ValueError:
        level = NoticeLevel.WARN
    return Notice(
        level=level,
        code=m.code,
        message=m.message,
        source=m.source,
        attributes=tuple(sorted(m.attributes.items())),
    )


def market_from_envelope(env: pb.Envelope) -> list[Payload]:
    """The market payloads of an envelope (a snapshot yields its underlying and full chain)."""
    kind = env.WhichOneof("payload")
    if kind == "underlying":
        return [underlying_from_pb(env.underlying)]
    if kind == "chain":
        return [chain_from_pb(env.chain)]
    if kind == "snapshot":
        out: list[Payload] = []
        if env.snapshot.HasField("underlying"):
            out.append(underlying_from_pb(env.snapshot.underlying))
        if env.snapshot.HasField("chain"):
            out.append(chain_from_pb(env.snapshot.chain))
        return out
    return []
