"""The executor role inside an agent, driven over gRPC: commands, idempotency, audit, orders and
fills at the paper broker, halt and flatten, restart from the journal, one executor per journal."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.runtime import AgentRuntime, AgentThread
from agent.server import AgentStartError
from console.client import AgentClient, AgentRequestError
from proto.spyops.v1 import spyops_pb2 as pb
from tests.conftest import AgentFactory, agent_settings, eventually


def executor_settings(tmp_path: Path, limits: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    # the test market runs at 20x: 2 s of market time is 100 ms of wall time on a loaded machine, so
    # the quote-age gate (tested on its own in tests/agent/executor) gets room here
    return {
        "roles": "feed,executor",
        "executor": {
            "journal": tmp_path / "journal.sqlite",
            "paper_book": tmp_path / "paper.sqlite",
            "limits": {"max_quote_age_ms": 60_000.0, **(limits or {})},
            **extra,
        },
    }


def cmd(operator: str = "alice", key: str | None = None, **action: Any) -> pb.Command:
    return pb.Command(idempotency_key=key or uuid.uuid4().hex, operator=operator, **action)


async def atm_call(client: AgentClient) -> pb.OptionQuote:
    snap = await client.snapshot()
    atm = min({q.strike for q in snap.chain.quotes}, key=lambda k: abs(k - snap.underlying.last))
    return next(q for q in snap.chain.quotes if q.strike == atm and q.right == pb.CALL)


def buy(q: pb.OptionQuote, quantity: int, price: float, preview: bool = False) -> pb.SubmitOrder:
    return pb.SubmitOrder(
        side="BUY",
        quantity=quantity,
        limit_price=f"{price:.2f}",
        legs=[pb.OrderLeg(strike=q.strike, right=pb.CALL, side="BUY")],
        preview=preview,
    )


async def test_commands_are_idempotent_and_audited(start_agent: AgentFactory, tmp_path: Path) -> None:
    agent = start_agent(**executor_settings(tmp_path))
    async with AgentClient(agent.address) as client:
        first = await client.execute(cmd(key="arm-1", set_armed=pb.SetArmed(armed=True)))
        assert first.accepted
        assert not first.replayed
        again = await client.execute(cmd(key="arm-1", set_armed=pb.SetArmed(armed=True)))
        assert again.replayed
        assert again.audit_seq == first.audit_seq  # the first result, nothing done twice
        audit = [
            e
            for e in agent.runtime.log.subscribe(from_seq=1, topics=["audit"]).items
            if hasattr(e, "payload")
        ]
        assert len(audit) == 1
        snap = await client.snapshot()
        assert snap.risk.armed
        assert snap.risk.trading_state == "ACTIVE"


async def test_manual_order_fills_at_the_touch_and_books_a_position(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = start_agent(**executor_settings(tmp_path))
    async with AgentClient(agent.address) as client:
        q = await atm_call(client)
        preview = await client.execute(cmd(submit_order=buy(q, 2, q.ask, preview=True)))
        assert preview.code == "preview"
        assert not preview.client_order_id
        sent = await client.execute(cmd(submit_order=buy(q, 2, q.ask + 0.05)))
        assert sent.accepted, sent.message
        cid = sent.client_order_id

        async def filled() -> bool:
            snap = await client.snapshot()
            return any(o.client_order_id == cid and o.state == "filled" for o in snap.orders)

        await eventually(filled)
        snap = await client.snapshot()
        (pos,) = snap.positions
        assert (pos.strike, pos.quantity) == (q.strike, 2)
        assert 0 < pos.delta < 200  # two at-the-money calls: about 100 share equivalents
        assert pos.gamma > 0
        assert snap.risk.fees > 0
        flat = await client.execute(cmd(flatten=pb.Flatten(reason="test")))
        assert flat.accepted, flat.message

        async def no_positions() -> bool:
            return len((await client.snapshot()).positions) == 0

        await eventually(no_positions)


async def test_the_operator_who_sent_an_order_is_published_and_kept(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = start_agent(**executor_settings(tmp_path))
    async with AgentClient(agent.address) as client:
        q = await atm_call(client)
        sent = await client.execute(cmd(operator="bob", submit_order=buy(q, 1, q.ask + 0.05)))
        assert sent.accepted, sent.message
        cid = sent.client_order_id

        async def filled() -> bool:
            snap = await client.snapshot()
            return any(o.client_order_id == cid and o.state == "filled" for o in snap.orders)

        await eventually(filled)
        flat = await client.execute(cmd(operator="carol", flatten=pb.Flatten(reason="test")))
        assert flat.accepted, flat.message
        snap = await client.snapshot()
        by_cid = {o.client_order_id: o for o in snap.orders}
        assert by_cid[cid].operator == "bob"
        assert by_cid[cid].source == "manual"
        (closing,) = [o for o in snap.orders if o.client_order_id != cid]
        assert (closing.operator, closing.source) == ("carol", "flatten")
        # every order event on the stream names its sender, from the first (pending_new) on
        events: list[pb.OrderUpdate] = []
        async for env in client.stream_once(from_seq=1, topics=["orders"]):
            if env.HasField("order"):
                events.append(env.order)
            if env.HasField("order") and env.order.client_order_id == closing.client_order_id:
                break
        mine = [e for e in events if e.client_order_id == cid]
        assert mine
        assert mine[0].state == "pending_new"
        assert {e.operator for e in mine} == {"bob"}
    assert agent.runtime.executor is not None
    intents = {i.client_order_id: i for i in agent.runtime.executor.journal.intents()}
    assert intents[cid].operator == "bob"  # journaled with the intent: it survives a restart


async def test_pre_trade_denials_and_bad_commands(start_agent: AgentFactory, tmp_path: Path) -> None:
    agent = start_agent(**executor_settings(tmp_path, operators=("alice",)))
    async with AgentClient(agent.address) as client:
        q = await atm_call(client)
        collar = await client.execute(cmd(submit_order=buy(q, 1, 0.01)))
        assert not collar.accepted
        assert collar.code == "denied"
        assert "price_collar" in {d.code for d in collar.denials}
        too_big = await client.execute(cmd(submit_order=buy(q, 1000, q.ask)))
        assert "max_quantity" in {d.code for d in too_big.denials}
        stranger = await client.execute(cmd(operator="mallory", halt=pb.Halt()))
        assert stranger.code == "unknown_operator"
        off = buy(q, 1, q.ask)
        off.limit_price = f"{q.ask + 0.005:.3f}"
        off_tick = await client.execute(cmd(submit_order=off))
        assert off_tick.code == "invalid"
        assert "tick" in off_tick.message
        unknown = pb.SubmitOrder(
            side="BUY",
            quantity=1,
            limit_price="1.00",
            legs=[pb.OrderLeg(strike=5.0, right=pb.CALL, side="BUY")],
        )
        assert "unknown contract" in (await client.execute(cmd(submit_order=unknown))).message
        bad_limit = await client.execute(cmd(set_limits=pb.SetLimits(limits={"max_order_quantity": "-1"})))
        assert not bad_limit.accepted
        assert "max_order_quantity" in bad_limit.message
        with pytest.raises(AgentRequestError, match="no action"):
            await client.execute(pb.Command(idempotency_key="x", operator="alice"))
        assert agent.runtime.executor is not None
        assert agent.runtime.executor.flow.orders == {}  # nothing reached the broker


async def test_halt_cancels_working_orders_and_blocks_new_ones(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = start_agent(**executor_settings(tmp_path, limits={"collar_fraction": 0.9}))
    async with AgentClient(agent.address) as client:
        q = await atm_call(client)
        resting = await client.execute(cmd(submit_order=buy(q, 1, max(0.01, round(q.bid * 0.5, 2)))))
        assert resting.accepted, resting.message
        halted = await client.execute(cmd(halt=pb.Halt(reason="test")))
        assert halted.accepted
        assert "1 working order(s) cancelled" in halted.message

        async def cancelled() -> bool:
            snap = await client.snapshot()
            return any(
                o.client_order_id == resting.client_order_id and o.state == "cancelled" for o in snap.orders
            )

        await eventually(cancelled)
        blocked = await client.execute(cmd(submit_order=buy(q, 1, q.ask)))
        assert "halted" in {d.code for d in blocked.denials}


async def test_restart_recovers_from_the_journal_and_one_executor_per_journal(tmp_path: Path) -> None:
    settings = agent_settings("exec", **executor_settings(tmp_path))
    first: AgentThread = AgentRuntime(settings).start_in_thread()
    try:
        async with AgentClient(first.address) as client:
            q = await atm_call(client)
            sent = await client.execute(cmd(key="order-1", submit_order=buy(q, 1, q.ask + 0.05)))
            assert sent.accepted
        with pytest.raises(AgentStartError, match="in use by another executor"):
            AgentRuntime(agent_settings("exec2", **executor_settings(tmp_path))).start_in_thread()
    finally:
        first.stop()
    second = AgentRuntime(settings).start_in_thread()
    try:
        async with AgentClient(second.address) as client:
            snap = await client.snapshot()
            assert [o.client_order_id for o in snap.orders] == [sent.client_order_id]
            again = await client.execute(cmd(key="order-1", submit_order=buy(q, 1, q.ask + 0.05)))
            assert again.replayed
            assert again.client_order_id == sent.client_order_id  # not a second order
    finally:
        second.stop()


async def test_agent_without_executor_refuses_commands(sim_agent: AgentThread) -> None:
    async with AgentClient(sim_agent.address) as client:
        with pytest.raises(AgentRequestError, match="runs no executor"):
            await client.execute(cmd(halt=pb.Halt()))


async def test_playbook_proposals_are_confirmed_or_rejected_by_an_operator(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    settings = executor_settings(tmp_path, playbook={"mode": "propose", "proposal_ttl_s": 600})
    agent = start_agent(
        roles="feed,detector,executor",
        sim={"anomaly_rate_per_min": 60.0},
        **{k: v for k, v in settings.items() if k != "roles"},
    )
    async with AgentClient(agent.address) as client:

        async def two_proposals() -> bool:
            return len((await client.snapshot()).proposals) >= 2

        await eventually(two_proposals, timeout=30)
        first, second = (await client.snapshot()).proposals[:2]
        assert first.legs
        assert first.status == "pending"
        rejected = await client.execute(
            cmd(decide_proposal=pb.DecideProposal(proposal_id=second.id, confirm=False))
        )
        assert rejected.accepted, rejected.message
        confirmed = await client.execute(
            cmd(decide_proposal=pb.DecideProposal(proposal_id=first.id, confirm=True))
        )
        # the order is sent, or refused by the pre-trade checks with a reason: never silently dropped
        assert confirmed.accepted or confirmed.denials, confirmed.message
        if confirmed.accepted:
            order = next(
                o for o in (await client.snapshot()).orders if o.client_order_id == confirmed.client_order_id
            )
            assert (order.operator, order.source) == ("alice", "strategy")  # who confirmed it
        again = await client.execute(
            cmd(decide_proposal=pb.DecideProposal(proposal_id=first.id, confirm=True))
        )
        assert not again.accepted  # a proposal is decided once
        pending = {p.id for p in (await client.snapshot()).proposals}
        assert first.id not in pending
        assert second.id not in pending


async def test_dead_man_halts_an_armed_executor_without_heartbeats(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = start_agent(**executor_settings(tmp_path, deadman_s=1.0))
    async with AgentClient(agent.address) as client:
        assert (await client.execute(cmd(set_armed=pb.SetArmed(armed=True)))).accepted
        for _ in range(3):  # heartbeats keep it armed
            await asyncio.sleep(0.5)
            assert (await client.execute(cmd(heartbeat=pb.Heartbeat()))).accepted
        assert (await client.snapshot()).risk.armed

        async def halted() -> bool:
            risk = (await client.snapshot()).risk
            return not risk.armed and risk.trading_state == "HALTED"

        await eventually(halted, timeout=10)
        snap = await client.snapshot()
        assert "executor.deadman" in {n.code for n in snap.recent_notices}


def test_unknown_risk_limit_in_settings_refuses_to_start(tmp_path: Path) -> None:
    settings = agent_settings("typo", **executor_settings(tmp_path, limits={"max_order_qty": 5}))
    with pytest.raises(AgentStartError, match=r"unknown risk limit.*max_order_qty"):
        AgentRuntime(settings).start_in_thread()


async def test_broker_error_on_submit_or_cancel_is_a_refused_command_and_the_order_is_kept(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    """A broker that raises (disconnected, timed out) never breaks a command: the operator gets a clear
    refusal, and the journaled order is kept open for reconciliation, never dropped or assumed rejected."""
    from agent.executor.broker import BrokerError

    agent = start_agent(**executor_settings(tmp_path, limits={"collar_fraction": 0.9}))
    role = agent.runtime.executor
    assert role is not None
    real_submit, real_cancel = role.broker.submit, role.broker.cancel

    async def refuse(*args: Any) -> None:
        raise BrokerError("IB did not answer within 15 s")

    async with AgentClient(agent.address) as client:
        q = await atm_call(client)
        role.broker.submit = refuse  # type: ignore[method-assign,assignment]
        sent = await client.execute(cmd(submit_order=buy(q, 1, q.ask)))
        assert not sent.accepted
        assert sent.code == "broker_error"
        assert "IB did not answer" in sent.message
        assert sent.client_order_id
        kept = role.flow.orders[sent.client_order_id]
        assert kept.state.value == "pending_new"  # its fate is the broker's to tell (reconciliation)
        role.broker.submit = real_submit  # type: ignore[method-assign]
        again = await client.execute(cmd(submit_order=buy(q, 1, q.ask)))
        assert "duplicate_intent" in {d.code for d in again.denials}  # it may be at the broker: not resent
        resting = await client.execute(cmd(submit_order=buy(q, 2, max(0.01, round(q.bid * 0.5, 2)))))
        assert resting.accepted, resting.message
        role.broker.cancel = refuse  # type: ignore[method-assign,assignment]
        cancel = await client.execute(
            cmd(cancel_order=pb.CancelOrder(client_order_id=resting.client_order_id))
        )
        assert not cancel.accepted
        assert cancel.code == "broker_error"
        assert role.flow.orders[resting.client_order_id].state.open
        halted = await client.execute(cmd(halt=pb.Halt(reason="test")))
        assert halted.accepted  # the halt itself holds even when a cancel cannot be sent
        snap = await client.snapshot()
        assert snap.risk.trading_state == "HALTED"
        role.broker.cancel = real_cancel  # type: ignore[method-assign]
