"""The console's Operator against real agents over gRPC: every command, refusals, unreachable agents and
idempotent retries (a lost answer must not make a command run twice)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from agent.runtime import AgentThread
from console.actions import (
    ActionResult,
    Operator,
    OrderTicket,
    TicketError,
    TicketLeg,
    parse_legs,
    parse_price,
)
from console.client import AgentClient
from proto.spyops.v1 import spyops_pb2 as pb
from tests.agent.test_executor_role import executor_settings
from tests.conftest import AgentFactory, eventually


async def atm_call(client: AgentClient) -> pb.OptionQuote:
    snap = await client.snapshot()
    atm = min({q.strike for q in snap.chain.quotes}, key=lambda k: abs(k - snap.underlying.last))
    return next(q for q in snap.chain.quotes if q.strike == atm and q.right == pb.CALL)


async def ready_executor(start_agent: AgentFactory, tmp_path: Path) -> AgentThread:
    # real time: the market moves little while a test looks at it, and the agent's thread leaves the
    # CPU (and the GIL) to the console under test
    agent = start_agent(clock={"speed": 1}, **executor_settings(tmp_path))
    async with AgentClient(agent.address) as c:

        async def has_chain() -> bool:
            return len((await c.snapshot()).chain.quotes) > 0

        await eventually(has_chain)
    return agent


async def _first(it: AsyncIterator[pb.Envelope]) -> AsyncIterator[pb.Envelope]:
    async for env in it:
        yield env
        return


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------- tickets


def test_ticket_parsing_and_wire_form() -> None:
    assert parse_legs("590C") == (TicketLeg(590.0, "C", "BUY", 1),)
    assert parse_legs(" 590c , -591C ") == (TicketLeg(590.0, "C"), TicketLeg(591.0, "C", "SELL"))
    assert parse_legs("590C,-2x591C,592C")[1] == TicketLeg(591.0, "C", "SELL", 2)
    assert parse_legs("+589.5PUT") == (TicketLeg(589.5, "P"),)
    for bad in ("59X", "C590", "", ",", "-x590C", "590"):
        with pytest.raises(TicketError):
            parse_legs(bad)
    assert parse_price("1.25") == Decimal("1.25")
    with pytest.raises(TicketError, match="not on the tick"):
        parse_price("1.255")
    with pytest.raises(TicketError, match="above 0"):
        parse_price("0")
    with pytest.raises(TicketError, match="a number"):
        parse_price("NaN")
    assert parse_price("-0.10", allow_non_positive=True) == Decimal("-0.10")

    t = OrderTicket.parse("buy", "2", "590C,-591C", "0.45")
    assert t.describe() == "BUY 2 SPY 590C,-591C @ 0.45"
    wire = t.to_proto(preview=True)
    assert (wire.side, wire.quantity, wire.limit_price, wire.preview) == ("BUY", 2, "0.45", True)
    assert [(leg.strike, leg.right, leg.side, leg.ratio) for leg in wire.legs] == [
        (590.0, pb.CALL, "BUY", 1),
        (591.0, pb.CALL, "SELL", 1),
    ]
    assert OrderTicket.parse("S", 1, "590C,-591C", "-0.05").limit_price == Decimal("-0.05")  # a credit
    with pytest.raises(TicketError, match="quantity"):
        OrderTicket.parse("BUY", "0", "590C", "1.00")
    with pytest.raises(TicketError, match="quantity"):
        OrderTicket.parse("BUY", "1.5", "590C", "1.00")
    with pytest.raises(TicketError, match="side"):
        OrderTicket.parse("HOLD", "1", "590C", "1.00")
    with pytest.raises(TicketError, match="twice"):
        OrderTicket.parse("BUY", "1", "590C,-590C", "1.00")
    with pytest.raises(TicketError, match="above 0"):
        OrderTicket.parse("BUY", "1", "590C", "-1.00")
    assert OrderTicket.parse("BUY", "1", "590C", "1.2") == OrderTicket.parse("BUY", "1", "590C", "1.20")


# ---------------------------------------------------------------- commands against a real executor


async def test_every_command_against_a_real_executor(start_agent: AgentFactory, tmp_path: Path) -> None:
    agent = await ready_executor(start_agent, tmp_path)
    async with AgentClient(agent.address) as client:
        op = Operator(client, "alice")
        call = await atm_call(client)

        armed = await op.arm()
        assert armed.ok, armed
        assert armed.title == "armed"
        assert armed.result is not None
        assert armed.result.audit_seq > 0
        hb = await op.heartbeat()
        assert hb.ok
        assert hb.title == "heartbeat"
        assert hb.key != armed.key  # a fresh idempotency key for every command
        assert armed.command is not None
        assert armed.command.operator == "alice"

        ticket = OrderTicket.parse("BUY", "1", f"{call.strike:g}C", f"{call.ask:.2f}")
        preview = await op.preview_order(ticket)
        assert preview.ok, preview
        assert preview.title == "preview: would be sent"
        assert "would be sent" in preview.detail
        assert preview.client_order_id == ""
        assert not (await client.snapshot()).orders  # a preview sends nothing

        sent = await op.submit_order(ticket)
        assert sent.ok, sent
        assert sent.title == "order sent"
        cid = sent.client_order_id
        assert cid
        assert cid in sent.detail
        snap = await client.snapshot()
        assert [o.client_order_id for o in snap.orders] == [cid]
        # the audit trail names the operator and the command's key
        assert sent.result is not None
        records = [e async for e in _first(client.stream_once(sent.result.audit_seq, ["audit"]))]
        env = records[0]
        assert env.command.command == "submit_order"
        assert (env.command.operator, env.command.idempotency_key) == ("alice", sent.key)

        too_big = await op.preview_order(
            OrderTicket.parse("BUY", "50", f"{call.strike:g}C", f"{call.ask:.2f}")
        )
        assert not too_big.ok
        assert too_big.title == "preview: would be refused"
        assert too_big.denials
        assert any("max" in code for code, _ in too_big.denials)

        cancel = await op.cancel_order(cid)
        assert cancel.title in ("cancel requested", "cancel refused")  # it may have filled at the touch
        unknown = await op.cancel_order("nope-1")
        assert not unknown.ok
        assert "no order nope-1" in unknown.detail
        assert not (await op.cancel_order(" ")).ok  # nothing sent without an id

        limits = await op.set_limits({"max_order_quantity": "5"})
        assert limits.ok, limits
        assert "max_order_quantity=5" in limits.detail
        bad = await op.set_limits({"max_order_quantity": "0"})
        assert not bad.ok
        assert bad.title == "limits refused"
        assert "positive whole number" in bad.detail
        assert not (await op.set_limits({})).ok

        state = await op.set_trading_state("reducing")
        assert state.ok
        assert state.title == "trading state REDUCING"
        wrong = await op.set_trading_state("sideways")
        assert not wrong.ok
        assert "unknown trading state" in wrong.detail
        assert (await op.set_trading_state("ACTIVE")).ok

        decide = await op.decide("no-such-proposal", True)
        assert not decide.ok
        assert decide.title == "confirm refused"

        halt = await op.halt("test")
        assert halt.ok, halt
        assert halt.title == "halted"
        assert "halted" in halt.detail
        denied = await op.submit_order(OrderTicket.parse("BUY", "2", f"{call.strike:g}C", f"{call.ask:.2f}"))
        assert not denied.ok
        assert denied.title == "order refused"
        assert denied.denials
        assert "halted" in denied.detail.lower()

        flat = await op.flatten("test")
        assert flat.title in ("flattening", "flatten incomplete")
        assert flat.result is not None
        disarm = await op.disarm()
        assert disarm.ok
        assert disarm.title == "disarmed"


async def test_an_agent_without_an_executor_refuses_without_an_exception(start_agent: AgentFactory) -> None:
    agent = start_agent()
    async with AgentClient(agent.address) as client:
        res = await Operator(client, "alice").halt("test")
    assert not res.ok
    assert res.title == "halt: refused by the agent"
    assert "runs no executor" in res.detail
    assert not res.retryable


async def test_unreachable_agent_gives_a_result_not_an_exception() -> None:
    async with AgentClient(f"127.0.0.1:{free_port()}", deadline=0.5) as client:
        op = Operator(client, "alice")
        res = await op.arm()
        assert not res.ok
        assert res.retryable
        assert res.title == "arm: agent unreachable"
        assert "unreachable" in res.detail
        assert res.result is None
        assert res.key
        again = await op.retry(res)
        assert not again.ok
        assert again.key == res.key
    # a closed channel is a result too
    closed = await op.heartbeat()
    assert not closed.ok
    assert closed.retryable
    with pytest.raises(ValueError, match="operator"):
        Operator(client, " ")
    assert not (await op.retry(ActionResult(False, "x", "", None))).ok


# ---------------------------------------------------------------- idempotent retry


class HoldingProxy:
    """A TCP proxy to an agent that can hold back the agent's answers (a lost response)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, gated: bool) -> None:
        try:
            while data := await r.read(65536):
                if gated:
                    await self.flowing.wait()
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
        for coro in (self._pipe(cr, sw, False), self._pipe(sr, cw, True)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def holding_proxy(target_port: int) -> AsyncIterator[HoldingProxy]:
    proxy = HoldingProxy(target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def test_retry_after_a_lost_answer_runs_the_order_once(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = await ready_executor(start_agent, tmp_path)
    async with (
        holding_proxy(agent.port) as proxy,
        AgentClient(f"127.0.0.1:{proxy.port}", deadline=1.0) as client,
        AgentClient(agent.address) as direct,
    ):
        op = Operator(client, "alice")
        assert (await op.heartbeat()).ok  # the connection through the proxy is up
        call = await atm_call(direct)
        ticket = OrderTicket.parse("BUY", "1", f"{call.strike:g}C", f"{call.ask:.2f}")

        proxy.flowing.clear()  # the agent gets the order; its answer does not come back
        lost = await op.submit_order(ticket)
        assert not lost.ok
        assert lost.retryable
        assert "no answer" in lost.title or "unreachable" in lost.title

        async def order_count() -> int:
            return len((await direct.snapshot()).orders)

        async def reached() -> bool:
            return await order_count() > 0

        await eventually(reached)  # the order did reach the agent
        assert await order_count() == 1

        proxy.flowing.set()
        again = await op.retry(lost)
        assert again.ok, again
        assert again.key == lost.key
        assert again.replayed  # the agent's first result: nothing ran twice
        assert "already done" in again.detail
        assert await order_count() == 1
        fresh = await op.submit_order(ticket)  # a new intent gets a new key (and is a new command)
        assert fresh.key != lost.key
        assert not fresh.replayed


async def test_retry_after_unreachable_runs_once_when_the_agent_is_back(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    port = free_port()
    async with AgentClient(f"127.0.0.1:{port}", deadline=0.5) as client:
        op = Operator(client, "alice")
        down = await op.arm()
        assert not down.ok
        assert down.retryable
        start_agent(port=port, **executor_settings(tmp_path))
        client.deadline = op.deadline = 5.0
        up = await op.retry(down)
        for _ in range(50):  # the channel reconnects with backoff: retry (same key) until it answers
            if up.ok or not up.retryable:
                break
            await asyncio.sleep(0.2)
            up = await op.retry(up)
        assert up.ok, up
        assert up.key == down.key
        assert up.title == "armed"
        assert not up.replayed
        twice = await op.retry(up)
        assert twice.ok
        assert twice.replayed
        assert twice.result is not None
        assert up.result is not None
        assert twice.result.audit_seq == up.result.audit_seq
