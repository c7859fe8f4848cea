"""Translation between the agent's domain values and the ``spyops.v1`` wire messages.

The only module of the agent that knows the protobuf types (besides the gRPC servicer that calls it).
"""

from __future__ import annotations

import math
from typing import Any

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
from agent.executor.commands import CommandOutcome, CommandSpec
from agent.executor.events import (
    CommandRecorded,
    FillBooked,
    OrderUpdated,
    PositionChanged,
    ProposalChanged,
    RiskStateChanged,
)
from agent.executor.orders import OrderLeg, Side
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


def _order_leg_to_pb(leg: OrderLeg, order_side: str, quantity: int, out: pb.Leg) -> None:
    c = leg.contract
    out.strike = c.strike
    out.right = _RIGHT_TO_PB[c.right]
    out.side = leg.side_for(Side(order_side)).value
    out.quantity = leg.ratio * quantity
    out.expiry = c.expiry


def order_to_pb(o: OrderUpdated, out: pb.OrderUpdate) -> None:
    out.client_order_id = o.client_order_id
    out.broker_order_id = o.broker_order_id
    out.state = o.state
    for leg in o.legs:
        _order_leg_to_pb(leg, o.side, o.quantity, out.legs.add())
    out.limit_price = str(o.limit_price)
    out.quantity = o.quantity
    out.filled = o.filled
    out.avg_price = "" if o.avg_price is None else str(o.avg_price)
    out.reason = o.reason
    out.source = o.origin
    out.operator = o.operator


def proposal_to_pb(p: ProposalChanged, out: pb.Proposal) -> None:
    out.id = p.id
    out.signal_id = p.signal_id
    out.kind = p.kind
    for leg in p.legs:
        _order_leg_to_pb(leg, p.side, p.quantity, out.legs.add())
    out.limit_price = str(p.limit_price)
    out.quantity = p.quantity
    out.edge = p.edge
    out.created_ns = p.created_ns
    out.expires_ns = p.expires_ns
    out.explanation = p.explanation
    out.status = p.status
    out.reason = p.reason


def fill_to_pb(f: FillBooked, out: pb.Fill) -> None:
    fill, c = f.fill, f.leg.contract
    out.exec_id = fill.exec_id
    out.client_order_id = fill.client_order_id
    out.leg.strike = c.strike
    out.leg.right = _RIGHT_TO_PB[c.right]
    out.leg.side = fill.side.value
    out.leg.price = float(fill.price)
    out.leg.quantity = fill.quantity
    out.leg.expiry = c.expiry
    out.quantity = fill.quantity
    out.price = str(fill.price)
    out.commission = str(fill.commission)
    out.fill_ts_ns = fill.ts_ns


def position_to_pb(p: PositionChanged, out: pb.Position) -> None:
    pos, c = p.position, p.position.contract
    out.strike = c.strike
    out.right = _RIGHT_TO_PB[c.right]
    out.expiry = c.expiry
    out.quantity = pos.quantity
    out.avg_cost = str(pos.avg_price)
    out.mark = p.mark
    out.unrealized = p.unrealized
    out.realized = float(pos.realized - pos.fees)
    out.delta, out.gamma, out.vega, out.theta = p.delta, p.gamma, p.vega, p.theta


def risk_to_pb(r: RiskStateChanged, out: pb.RiskState) -> None:
    out.trading_state = r.trading_state
    out.armed = r.armed
    for lim in r.limits:
        out.limits.add(name=lim.name, value=lim.value, used=lim.used)
    out.realized_pnl = r.realized
    out.unrealized_pnl = r.unrealized
    out.fees = r.fees
    out.leader = r.leader
    out.lease_epoch = r.lease_epoch


def command_to_pb(c: CommandRecorded, out: pb.CommandRecord) -> None:
    out.command = c.command
    out.operator = c.operator
    out.idempotency_key = c.idempotency_key
    out.arguments_json = c.arguments_json
    out.accepted = c.accepted
    out.result = c.result


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
    for o in s.orders:
        order_to_pb(o, out.orders.add())
    for p in s.positions:
        position_to_pb(p, out.positions.add())
    if s.risk is not None:
        risk_to_pb(s.risk, out.risk)
    for prop in s.proposals:
        proposal_to_pb(prop, out.proposals.add())


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
    elif isinstance(p, OrderUpdated):
        order_to_pb(p, env.order)
    elif isinstance(p, FillBooked):
        fill_to_pb(p, env.fill)
    elif isinstance(p, PositionChanged):
        position_to_pb(p, env.position)
    elif isinstance(p, RiskStateChanged):
        risk_to_pb(p, env.risk)
    elif isinstance(p, CommandRecorded):
        command_to_pb(p, env.command)
    elif isinstance(p, ProposalChanged):
        proposal_to_pb(p, env.proposal)
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


# ------------------------------------------------------------------ operator commands


def command_from_pb(c: pb.Command) -> CommandSpec:
    """The command of a wire message; WireError when it names no action."""
    kind = c.WhichOneof("action")
    if kind is None:
        raise WireError("the command names no action")
    args: dict[str, Any] = {}
    if kind == "set_armed":
        args = {"armed": c.set_armed.armed}
    elif kind == "set_trading_state":
        args = {"state": c.set_trading_state.state}
    elif kind == "halt":
        args = {"reason": c.halt.reason}
    elif kind == "flatten":
        args = {"reason": c.flatten.reason}
    elif kind == "set_limits":
        args = {"limits": dict(c.set_limits.limits)}
    elif kind == "cancel_order":
        args = {"client_order_id": c.cancel_order.client_order_id}
    elif kind == "decide_proposal":
        args = {"proposal_id": c.decide_proposal.proposal_id, "confirm": c.decide_proposal.confirm}
    elif kind == "submit_order":
        o = c.submit_order
        legs = []
        for leg in o.legs:
            right = _RIGHT_FROM_PB.get(leg.right)
            if right is None:
                raise WireError(f"order leg at strike {leg.strike:g} has no right (call/put)")
            legs.append(
                {"strike": leg.strike, "right": right.value, "side": leg.side, "ratio": leg.ratio or 1}
            )
        args = {
            "side": o.side,
            "quantity": o.quantity,
            "limit_price": o.limit_price,
            "legs": legs,
            "preview": o.preview,
            "expiry": o.expiry,
        }
    return CommandSpec(c.idempotency_key, c.operator, kind, args)


def outcome_to_pb(o: CommandOutcome) -> pb.CommandResult:
    return pb.CommandResult(
        accepted=o.accepted,
        code=o.code,
        message=o.message,
        client_order_id=o.client_order_id,
        denials=[pb.Denial(code=d.code, reason=d.reason) for d in o.denials],
        replayed=o.replayed,
        audit_seq=o.audit_seq,
    )
