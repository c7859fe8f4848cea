"""The IB feed and broker inside a real agent, against the fake TWS with the real ``ib_async`` client.

Everything runs on the test's event loop: the fake server, the agent runtime (gRPC on 127.0.0.1, its
journal in a temporary SQLite file) and the IB connection. Assertions read the server's own book
(``place_order_calls``, ``orders``, ``executions``, ``max_lines_seen``, ``request_times``) and the
agent's state folded from its event log.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from ib_async import LimitOrder, Option

from agent.domain import ChainUpdate, ComponentStatus, Notice, QuoteFlag, Right
from agent.eventlog import Event
from agent.executor.commands import CommandOutcome, CommandSpec
from agent.executor.events import FillBooked
from agent.executor.orders import CommissionCorrected, OrderState
from agent.runtime import AgentRuntime
from agent.session import session_on_or_after, today_new_york
from agent.settings import load_settings
from tests.conftest import eventually
from tests.ib.fake_tws import FakeTWS

BUDGET = 24  # 1 underlying + 4 for orders + 19 -> 9 strikes (18 option lines)
CLIENT_ID = 5


def expiry() -> str:
    return session_on_or_after(today_new_york()).expiry


@pytest.fixture
async def fake() -> AsyncIterator[FakeTWS]:
    server = FakeTWS(expiry=expiry(), spot=590.0)
    await server.start()
    yield server
    await server.stop()


def settings(fake: FakeTWS, tmp_path: Path, roles: str = "feed,detector,executor", **ib: Any) -> Any:
    return load_settings(
        agent_id="edge1",
        roles=roles,
        feed="ib",
        server={"host": "127.0.0.1", "port": 0},
        clock={"start": "10:30", "speed": 1},
        executor={
            "broker": "ib",
            "journal": tmp_path / "journal.sqlite",
            "paper_book": tmp_path / "paper.sqlite",
            "limits": {"max_quote_age_ms": 600_000.0},
        },
        ib={
            "port": fake.port,
            "client_id": CLIENT_ID,
            "client_id_pool": (6, 7),
            "line_budget": BUDGET,
            "reconnect_initial_s": 0.05,
            "reconnect_max_s": 0.3,
            "connect_timeout_s": 5.0,
            "commission_wait_s": 1.0,
            **ib,
        },
    )


class Agent:
    """A runtime on this loop, with a record of the notices it published."""

    def __init__(self, rt: AgentRuntime) -> None:
        self.rt = rt
        self.notices: list[Notice] = []
        self.chains: list[ChainUpdate] = []
        rt.log.add_listener(self._on)

    def _on(self, ev: Event) -> None:
        if isinstance(ev.payload, Notice):
            self.notices.append(ev.payload)
        elif isinstance(ev.payload, ChainUpdate):
            self.chains.append(ev.payload)

    def codes(self) -> list[str]:
        return [n.code for n in self.notices]

    @property
    def book(self) -> Any:
        return self.rt.log.state.book

    def strikes(self) -> list[float]:
        return sorted({k for k, _ in self.book.quotes})

    async def command(self, kind: str, **args: Any) -> CommandOutcome:
        assert self.rt.executor is not None
        spec = CommandSpec(uuid.uuid4().hex, "alice", kind, args)
        return await self.rt.executor.execute(spec)

    def order(self, cid: str) -> Any:
        assert self.rt.executor is not None
        return self.rt.executor.flow.orders[cid]

    def health(self, name: str) -> Any:
        return self.rt._components.get(name)


Starter = Callable[..., Awaitable[Agent]]


@pytest.fixture
async def start(fake: FakeTWS, tmp_path: Path) -> AsyncIterator[Starter]:
    running: list[AgentRuntime] = []

    async def go(roles: str = "feed,detector,executor", **ib: Any) -> Agent:
        rt = AgentRuntime(settings(fake, tmp_path, roles, **ib))
        agent = Agent(rt)
        await rt.start()
        running.append(rt)
        return agent

    yield go
    for rt in running:
        await rt.stop()


async def streaming(agent: Agent, n: int = 10) -> None:
    await eventually(lambda: len(agent.book.quotes) >= n and agent.rt.log.state.underlying is not None)


def lines_per_second(times: list[float]) -> int:
    """The most messages the server received within any one second."""
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


def resting(fake: FakeTWS, strike: float) -> float:
    """A buy price inside the risk collar that does not fill: a few ticks under the bid."""
    return max(0.01, round(fake.quote(strike, "C")[0] - 0.05, 2))


def buy_call(strike: float, price: float, qty: int = 1) -> dict[str, Any]:
    return {
        "side": "BUY",
        "quantity": qty,
        "limit_price": f"{price:.2f}",
        "legs": [{"strike": strike, "right": "C", "side": "BUY"}],
    }


# ------------------------------------------------------------------ scenarios


async def test_full_session_streams_quotes_and_trades_through_ib(fake: FakeTWS, start: Starter) -> None:
    agent = await start()
    await streaming(agent, 2 * 9)
    book = agent.book
    assert book.expiry == fake.expiry
    assert book.trading_class == "SPY"
    assert agent.strikes() == [float(k) for k in range(586, 595)]  # 9 strikes around 590
    q = book.quotes[(590.0, Right.CALL)]
    assert q.con_id == fake.option_con_id(590.0, "C")
    assert q.has_bid
    assert q.has_ask
    assert q.src_delta == pytest.approx(0.5, abs=0.1)  # IB's model greeks ride along
    assert agent.health("feed").status is ComponentStatus.OK
    assert "live (1)" in agent.health("feed").detail
    assert fake.max_lines_seen <= BUDGET
    # a single option at the touch fills at IB: order, fill with commission, position
    _bid, ask = fake.quote(590.0, "C")
    out = await agent.command("submit_order", **buy_call(590.0, ask, 2))
    assert out.accepted, out.message
    await eventually(lambda: agent.order(out.client_order_id).state is OrderState.FILLED)
    order = agent.order(out.client_order_id)
    assert order.commission == Decimal("1.30")
    assert [c.orderRef for c in fake.place_order_calls] == [out.client_order_id]
    # a call spread as one BAG order
    net_ask = fake.quote(588.0, "C")[1] - fake.quote(592.0, "C")[0]
    spread = {
        "side": "BUY",
        "quantity": 1,
        "limit_price": f"{net_ask:.2f}",
        "legs": [
            {"strike": 588.0, "right": "C", "side": "BUY"},
            {"strike": 592.0, "right": "C", "side": "SELL"},
        ],
    }
    out2 = await agent.command("submit_order", **spread)
    assert out2.accepted, out2.message
    await eventually(lambda: agent.order(out2.client_order_id).state is OrderState.FILLED)
    assert fake.place_order_calls[-1].contract.secType == "BAG"
    assert agent.order(out2.client_order_id).leg_filled == [1, 1]
    held = {p.contract.osi: p.quantity for p in agent.rt.executor.flow.positions.positions()}  # type: ignore[union-attr]
    at_ib = {(p.contract.strike, p.contract.right): round(p.position) for p in fake.positions.values()}
    assert at_ib == {(590.0, "C"): 2, (588.0, "C"): 1, (592.0, "C"): -1}
    assert sorted(held.values()) == [-1, 1, 2]
    assert lines_per_second(fake.request_times) <= 45
    assert agent.rt.detector is not None
    assert agent.rt.detector.evaluations > 0  # the detector runs on the IB chain as on the simulated one
    assert not [c for c in agent.codes() if c.endswith(".failed")]


async def test_market_data_type_is_configurable_and_354_is_reported(tmp_path: Path) -> None:
    async with FakeTWS(expiry=expiry(), live_data=False) as fake:
        rt = AgentRuntime(settings(fake, tmp_path, roles="feed", market_data_type=3))
        agent = Agent(rt)
        await rt.start()
        try:
            await streaming(agent, 18)
            assert "delayed (3)" in agent.health("feed").detail
            assert "feed.not_subscribed" not in agent.codes()
        finally:
            await rt.stop()
        rt = AgentRuntime(settings(fake, tmp_path, roles="feed"))
        agent = Agent(rt)
        await rt.start()
        try:
            await eventually(lambda: "feed.not_subscribed" in agent.codes())
            assert agent.health("feed").status is ComponentStatus.DEGRADED
            assert "OPRA" in next(n.message for n in agent.notices if n.code == "feed.not_subscribed")
        finally:
            await rt.stop()


@pytest.mark.slow
async def test_window_moves_across_strikes_within_the_line_budget(fake: FakeTWS, start: Starter) -> None:
    agent = await start(roles="feed")
    await streaming(agent, 18)
    seen: set[float] = set()
    for spot in (591.4, 593.6, 596.2, 600.1, 604.8, 599.0, 588.3, 579.9, 575.2):
        fake.set_spot(spot)
        atm = round(spot)
        await eventually(lambda atm=atm: atm in agent.strikes() and len(agent.book.quotes) >= 18)
        assert len(fake.market_data_lines) <= BUDGET - 4
        seen.update(agent.strikes())
    assert min(seen) <= 572.0
    assert max(seen) >= 608.0
    assert fake.max_lines_seen <= BUDGET - 4  # the order lines were never touched
    assert "feed.max_tickers" not in agent.codes()
    # hysteresis: a move of one strike does not re-centre
    before = list(agent.strikes())
    calls = agent.rt.log.state.book.quotes  # noqa: F841 - the book is live; strikes compared below
    fake.set_spot(576.4)
    await asyncio.sleep(0.3)
    assert agent.strikes() == before
    assert lines_per_second(fake.request_times) <= 45


async def test_client_id_in_use_picks_the_next_one(fake: FakeTWS, start: Starter) -> None:
    fake.faults.client_ids_in_use = {CLIENT_ID}
    agent = await start(roles="feed")
    await streaming(agent, 4)
    assert fake.accepted_client_ids[-1] == 6
    assert "ib.client_id_in_use" in agent.codes()
    assert "client 6" in agent.health("ib").detail


async def test_1101_resubscribes_and_1102_does_not(fake: FakeTWS, start: Starter) -> None:
    agent = await start(roles="feed")
    await streaming(agent, 18)
    fake.send_error(1100, "Connectivity between IB and Trader Workstation has been lost.")
    await eventually(lambda: all(q.flags & QuoteFlag.STALE for q in agent.book.quotes.values()))
    assert agent.health("ib").status is ComponentStatus.DOWN
    lines = set(fake.market_data_lines)
    fake.send_error(
        1102, "Connectivity between IB and Trader Workstation has been restored - data maintained."
    )
    await eventually(lambda: agent.health("ib").status is ComponentStatus.OK)
    await asyncio.sleep(0.3)
    assert set(fake.market_data_lines) == lines  # the same subscriptions: nothing resubscribed
    # quotes stay stale until they tick again
    assert all(q.flags & QuoteFlag.STALE for q in agent.book.quotes.values())
    fake.set_spot(590.2)
    await eventually(lambda: not any(q.flags & QuoteFlag.STALE for q in agent.book.quotes.values()))
    fake.send_error(1100, "Connectivity between IB and Trader Workstation has been lost.")
    fake.send_error(1101, "Connectivity between IB and Trader Workstation has been restored - data lost.")
    # every line cancelled and requested again (new request ids), never more lines than before
    await eventually(lambda: len(fake.market_data_lines) == 19 and not set(fake.market_data_lines) & lines)
    await eventually(lambda: not any(q.flags & QuoteFlag.STALE for q in agent.book.quotes.values()))
    assert "feed.resubscribed" in agent.codes()
    assert fake.max_lines_seen <= BUDGET - 4


async def test_socket_drop_marks_stale_then_reconnects_and_resubscribes(
    fake: FakeTWS, start: Starter
) -> None:
    agent = await start(roles="feed")
    await streaming(agent, 18)
    await fake.drop_connections()
    await eventually(lambda: "ib.disconnected" in agent.codes())
    assert all(q.flags & QuoteFlag.STALE for q in agent.book.quotes.values())
    await eventually(lambda: "ib.reconnected" in agent.codes())
    await eventually(lambda: not any(q.flags & QuoteFlag.STALE for q in agent.book.quotes.values()))
    assert fake.connections == 2
    assert len(fake.market_data_lines) == 19
    # the money moves while the Gateway restarts: quotes of strikes the new window leaves out go away
    await fake.drop_connections()
    await eventually(lambda: agent.codes().count("ib.disconnected") == 2)
    fake.set_spot(597.0)
    await eventually(lambda: agent.strikes() == [float(k) for k in range(593, 602)])
    await eventually(lambda: not any(q.flags & QuoteFlag.STALE for q in agent.book.quotes.values()))


async def test_disconnect_while_an_order_is_in_flight(fake: FakeTWS, start: Starter) -> None:
    agent = await start()
    await streaming(agent, 18)
    fake.faults.drop_after_place = 1  # booked (and filled) at IB, every answer lost with the socket
    _bid, ask = fake.quote(589.0, "C")
    out = await agent.command("submit_order", **buy_call(589.0, ask, 1))
    assert out.accepted
    await eventually(lambda: "ib.reconnected" in agent.codes())
    await eventually(lambda: agent.order(out.client_order_id).state is OrderState.FILLED)
    order = agent.order(out.client_order_id)
    assert len(order.fills) == 1
    assert [c.orderRef for c in fake.place_order_calls].count(out.client_order_id) == 1
    # a resting order survives another drop: still working, not duplicated, not assumed cancelled
    fake.faults.drop_after_place = None
    # quotes from before the drop are stale (the broker would refuse to send on them) until resubscribed
    await eventually(lambda: not any(q.flags & QuoteFlag.STALE for q in agent.book.quotes.values()))
    low = await agent.command("submit_order", **buy_call(591.0, resting(fake, 591.0), 1))
    assert low.accepted
    await eventually(lambda: agent.order(low.client_order_id).state is OrderState.WORKING)
    await fake.drop_connections()
    await eventually(lambda: agent.codes().count("ib.reconnected") >= 2)
    await asyncio.sleep(0.3)
    assert agent.order(low.client_order_id).state is OrderState.WORKING
    (book_order,) = [o for o in fake.orders.values() if o.orderRef == low.client_order_id]
    fake.fill(book_order.orderId)
    await eventually(lambda: agent.order(low.client_order_id).state is OrderState.FILLED)
    refs = [c.orderRef for c in fake.place_order_calls]
    assert len(refs) == len(set(refs)) == 2


async def test_warnings_never_end_an_order_and_errors_wait_for_evidence(
    fake: FakeTWS, start: Starter
) -> None:
    agent = await start()
    await streaming(agent, 18)
    out = await agent.command("submit_order", **buy_call(590.0, resting(fake, 590.0), 1))
    await eventually(lambda: agent.order(out.client_order_id).state is OrderState.WORKING)
    (bo,) = [o for o in fake.orders.values() if o.orderRef == out.client_order_id]
    for code in (2100, 2109, 2137, 2169):
        fake.send_error(code, "Order Event Warning", req_id=bo.orderId)
    fake.send_error(399, "Order Message: your order will not be placed at the exchange until...", bo.orderId)
    fake.send_error(110, "The price does not conform to the minimum price variation", bo.orderId)
    # an error ib_async takes as the end of the order (it marks its Trade cancelled locally) ...
    fake.send_error(10268, "The 'EtradeOnly' order attribute is not supported", bo.orderId)
    conn = agent.rt._ib
    assert conn is not None
    await eventually(
        lambda: any(
            t.orderStatus.status == "Cancelled" for t in conn.ib.trades() if t.order.orderId == bo.orderId
        )
    )
    await asyncio.sleep(1.0)  # ... but the adapter re-reads IB's orders after an error: still open there
    assert agent.order(out.client_order_id).state is OrderState.WORKING
    assert "broker.order_error" in agent.codes()
    cancel = await agent.command("cancel_order", client_order_id=out.client_order_id)
    assert cancel.accepted
    await eventually(lambda: agent.order(out.client_order_id).state is OrderState.CANCELLED)


async def test_duplicated_and_reordered_reports_book_each_fill_once(fake: FakeTWS, start: Starter) -> None:
    fake.faults.duplicate_reports = True
    fake.faults.reorder_reports = True
    agent = await start()
    await streaming(agent, 18)
    _bid, ask = fake.quote(591.0, "P")
    out = await agent.command(
        "submit_order",
        side="BUY",
        quantity=3,
        limit_price=f"{ask:.2f}",
        legs=[{"strike": 591.0, "right": "P", "side": "BUY"}],
    )
    await eventually(lambda: agent.order(out.client_order_id).state is OrderState.FILLED)
    await asyncio.sleep(0.3)
    order = agent.order(out.client_order_id)
    assert order.leg_filled == [3]
    assert len(order.fills) == len({e.execId for e in fake.executions if e.orderRef == out.client_order_id})
    assert order.commission == Decimal("1.95")


async def test_executor_restart_against_the_same_ib_sends_no_duplicates(
    fake: FakeTWS, tmp_path: Path
) -> None:
    first = AgentRuntime(settings(fake, tmp_path))
    a = Agent(first)
    await first.start()
    await streaming(a, 18)
    ask = fake.quote(590.0, "C")[1]
    filled = await a.command("submit_order", **buy_call(590.0, ask, 1))
    rest = await a.command("submit_order", **buy_call(588.0, resting(fake, 588.0), 2))
    await eventually(lambda: a.order(filled.client_order_id).state is OrderState.FILLED)
    await eventually(lambda: a.order(rest.client_order_id).state is OrderState.WORKING)
    await first.stop()  # the executor goes away; IB keeps its book
    (bo,) = [o for o in fake.orders.values() if o.orderRef == rest.client_order_id]
    fake.fill(bo.orderId, quantity=1)  # a fill while nobody listens
    second = AgentRuntime(settings(fake, tmp_path))
    b = Agent(second)
    await second.start()
    try:
        order = b.order(rest.client_order_id)
        assert order.state is OrderState.PARTIALLY_FILLED  # reconciled from IB's executions
        assert order.leg_filled == [1]
        assert "executor.reconciled" in b.codes()
        assert "executor.fail_closed" not in b.codes()
        assert b.rt.executor is not None
        assert b.rt.executor.flow.state.value == "active"
        refs = [c.orderRef for c in fake.place_order_calls]
        assert len(refs) == len(set(refs)) == 2  # nothing sent again
        fake.fill(bo.orderId)
        await eventually(lambda: b.order(rest.client_order_id).state is OrderState.FILLED)
    finally:
        await second.stop()


async def test_competing_session_and_max_tickers_are_reported(fake: FakeTWS, start: Starter) -> None:
    fake.faults.max_tickers = 11  # the account has fewer lines than configured
    agent = await start(roles="feed")
    await eventually(lambda: "feed.max_tickers" in agent.codes())
    await eventually(lambda: len(agent.book.quotes) >= 8)
    assert len(fake.market_data_lines) <= 11
    fake.faults.competing_session = True
    fake.set_spot(593.5)
    await eventually(lambda: "ib.competing_session" in agent.codes())
    assert agent.health("ib").status is ComponentStatus.DEGRADED


async def test_read_only_refuses_an_ib_broker(fake: FakeTWS, tmp_path: Path) -> None:
    from agent.settings import ConfigError

    with pytest.raises(ConfigError, match="read_only"):
        settings(fake, tmp_path, read_only=True)
    s = settings(fake, tmp_path, roles="feed", read_only=True)
    rt = AgentRuntime(s)
    agent = Agent(rt)
    await rt.start()
    try:
        await streaming(agent, 4)
        assert "read-only" in agent.health("ib").detail
    finally:
        await rt.stop()


class Crash(BaseException):
    """The executor process dying at a crash point (nothing after it runs)."""


@pytest.mark.parametrize("point", ["intent_journaled", "sent"])
async def test_executor_crash_at_each_point_then_restart_sends_nothing_twice(
    fake: FakeTWS, tmp_path: Path, point: str
) -> None:
    first = AgentRuntime(settings(fake, tmp_path))
    a = Agent(first)
    await first.start()
    await streaming(a, 18)
    assert first.executor is not None

    def crash(at: str) -> None:
        if at == point:
            first.executor.broker.pump = lambda: []  # type: ignore[union-attr,method-assign]  # reports die with it
            raise Crash(at)

    first.executor.flow.crash_hook = crash
    ask = fake.quote(590.0, "C")[1]
    with pytest.raises(Crash):
        await a.command("submit_order", **buy_call(590.0, ask, 1))
    (cid,) = first.executor.flow.orders
    await first.stop()
    sent = [c.orderRef for c in fake.place_order_calls]
    assert sent == ([cid] if point == "sent" else [])
    second = AgentRuntime(settings(fake, tmp_path))
    b = Agent(second)
    await second.start()
    try:
        order = b.order(cid)
        if point == "sent":
            assert order.state is OrderState.FILLED  # IB filled it while the executor was gone
            assert len(order.fills) == 1
        else:
            assert order.state is OrderState.REJECTED  # never reached IB: closed, not resent
        assert "executor.fail_closed" not in b.codes()
        await asyncio.sleep(0.3)
        assert [c.orderRef for c in fake.place_order_calls] == sent  # zero duplicates
    finally:
        await second.stop()


async def test_an_ib_broker_refuses_to_start_without_ib(tmp_path: Path) -> None:
    from agent.server import AgentStartError

    async with FakeTWS(expiry=expiry()) as fake:
        port = fake.port
    dead = FakeTWS(expiry=expiry())
    dead.port = port  # nothing listens there any more
    rt = AgentRuntime(settings(dead, tmp_path, connect_timeout_s=0.3))
    with pytest.raises(AgentStartError, match="cannot reach IB"):
        await rt.start()
    await rt.stop()


async def test_reconnected_under_another_client_id_still_sees_fills(fake: FakeTWS, start: Starter) -> None:
    agent = await start()
    await streaming(agent, 18)
    out = await agent.command("submit_order", **buy_call(590.0, resting(fake, 590.0), 1))
    await eventually(lambda: agent.order(out.client_order_id).state is OrderState.WORKING)
    fake.faults.client_ids_in_use = {CLIENT_ID}  # the Gateway still holds the old session's id
    await fake.drop_connections()
    await eventually(lambda: fake.connected_client_ids == [6])
    await eventually(lambda: "broker.foreign_orders" in agent.codes())
    (bo,) = [o for o in fake.orders.values() if o.orderRef == out.client_order_id]
    fake.fill(bo.orderId)  # IB tells only client 5, which is gone
    await eventually(lambda: agent.order(out.client_order_id).state is OrderState.FILLED)
    assert [c.orderRef for c in fake.place_order_calls] == [out.client_order_id]


async def test_no_order_goes_out_on_quotes_from_before_a_gap(fake: FakeTWS, start: Starter) -> None:
    agent = await start()
    await streaming(agent, 18)
    fake.send_error(1100, "Connectivity between IB and Trader Workstation has been lost.")
    await eventually(lambda: all(q.flags & QuoteFlag.STALE for q in agent.book.quotes.values()))
    ask = fake.quote(590.0, "C")[1]
    out = await agent.command("submit_order", **buy_call(590.0, ask, 1))
    assert not out.accepted  # the risk check denies a quote flagged stale (the IB broker would too)
    assert "quote_stale" in {d.code for d in out.denials}
    fake.send_error(
        1102, "Connectivity between IB and Trader Workstation has been restored - data maintained."
    )
    await eventually(lambda: agent.health("ib").status is ComponentStatus.OK)
    out = await agent.command("submit_order", **buy_call(590.0, ask, 2))
    # restored, but not refreshed yet: the pre-trade check denies a quote flagged stale outright
    assert not out.accepted
    assert "quote_stale" in {d.code for d in out.denials}
    assert out.client_order_id not in agent.rt.executor.flow.orders  # type: ignore[union-attr]
    fake.set_spot(590.3)
    await eventually(lambda: not any(q.flags & QuoteFlag.STALE for q in agent.book.quotes.values()))
    ask = fake.quote(590.0, "C")[1]
    out = await agent.command("submit_order", **buy_call(590.0, ask, 3))
    await eventually(lambda: agent.order(out.client_order_id).state is OrderState.FILLED)
    assert [c.orderRef for c in fake.place_order_calls] == [out.client_order_id]


async def test_a_cancel_lost_in_a_connectivity_gap_is_sent_again_after_1101(
    fake: FakeTWS, start: Starter
) -> None:
    """1100, a cancel that never reaches IB, then 1101: the order must not sit in pending_cancel forever
    while it still works at IB. The broker re-reads IB's orders on restore and asks again."""
    agent = await start()
    await streaming(agent, 18)
    out = await agent.command("submit_order", **buy_call(590.0, resting(fake, 590.0), 1))
    assert out.accepted, out.message
    await eventually(lambda: agent.order(out.client_order_id).state is OrderState.WORKING)
    (bo,) = [o for o in fake.orders.values() if o.orderRef == out.client_order_id]
    fake.send_error(1100, "Connectivity between IB and Trader Workstation has been lost.")
    fake.faults.lose_cancels = True
    cancel = await agent.command("cancel_order", client_order_id=out.client_order_id)
    assert cancel.accepted
    await eventually(lambda: len(fake.cancel_order_calls) == 1)
    await asyncio.sleep(0.2)
    assert agent.order(out.client_order_id).state is OrderState.PENDING_CANCEL
    assert fake.orders[bo.orderId].status == "Submitted"  # still working at IB
    fake.faults.lose_cancels = False
    fake.send_error(1101, "Connectivity between IB and TWS has been restored - data lost.")
    await eventually(lambda: agent.order(out.client_order_id).state is OrderState.CANCELLED)
    assert fake.orders[bo.orderId].status == "Cancelled"
    assert "broker.cancel_resent" in agent.codes()


async def test_an_ib_rejection_closes_the_order_once_ibs_book_confirms_it(
    fake: FakeTWS, start: Starter
) -> None:
    agent = await start()
    await streaming(agent, 18)
    fake.faults.reject_order_refs = {"edge1-" + expiry() + "-000001"}
    ask = fake.quote(590.0, "C")[1]
    out = await agent.command("submit_order", **buy_call(590.0, ask, 1))
    assert out.accepted
    assert out.client_order_id in fake.faults.reject_order_refs
    await eventually(lambda: agent.order(out.client_order_id).state is OrderState.REJECTED)
    assert "Rejected by the fake TWS" in agent.order(out.client_order_id).reason
    assert "broker.rejected" in agent.codes()


async def test_another_executors_and_yesterdays_orders_are_not_ours(fake: FakeTWS, tmp_path: Path) -> None:
    """An executor whose prefix starts like ours ('edge1_b' is fine, but an orderRef 'edge1-b-...' typed
    by hand or 'edge1-<yesterday>-...' from TWS's multi-day trade log) must not fail reconciliation."""
    rt = AgentRuntime(settings(fake, tmp_path))
    a = Agent(rt)
    await rt.start()
    try:
        await streaming(a, 18)
        conn = rt._ib
        assert conn is not None
        ask = fake.quote(590.0, "C")[1]
        # orders placed at IB by someone else with look-alike orderRefs, filled there
        for ref in ("edge1-b-" + expiry() + "-000001", "edge1-20200102-000001"):
            c = Option(
                "SPY", expiry(), 590.0, "C", "SMART", multiplier="100", currency="USD", tradingClass="SPY"
            )
            trade = conn.ib.placeOrder(c, LimitOrder("BUY", 1, ask, orderRef=ref))
            await eventually(lambda t=trade: t.orderStatus.status == "Filled")
    finally:
        await rt.stop()
    assert len(fake.executions) == 2
    # a fresh executor on the same journal: it reconciles against IB's executions and positions
    second = AgentRuntime(settings(fake, tmp_path))
    b = Agent(second)
    await second.start()
    try:
        mismatches = [n.message for n in b.notices if n.code == "executor.reconcile_mismatch"]
        assert not any("never journaled" in m or "unknown order" in m for m in mismatches), mismatches
        await asyncio.sleep(0.1)
    finally:
        await second.stop()


async def test_a_ratio_spread_partly_filled_books_legs_at_their_ratio_and_reconciles_clean(
    fake: FakeTWS, tmp_path: Path
) -> None:
    """A 1x2 BAG: IB executes each leg (ratio x units) plus the combo itself; the legs are booked, the
    combo's own execution is not, and a restart reconciles the partial fill without a difference."""
    first = AgentRuntime(settings(fake, tmp_path))
    a = Agent(first)
    await first.start()
    await streaming(a, 18)
    legs = [
        {"strike": 590.0, "right": "C", "side": "BUY", "ratio": 1},
        {"strike": 593.0, "right": "C", "side": "SELL", "ratio": 2},
    ]
    net_bid = fake.quote(590.0, "C")[0] - 2 * fake.quote(593.0, "C")[1]
    out = await a.command(
        "submit_order", side="BUY", quantity=2, limit_price=f"{net_bid - 0.02:.2f}", legs=legs
    )
    assert out.accepted, out.message
    await eventually(lambda: a.order(out.client_order_id).state is OrderState.WORKING)
    (bo,) = [o for o in fake.orders.values() if o.orderRef == out.client_order_id]
    fake.fill(bo.orderId, quantity=1)
    await eventually(lambda: a.order(out.client_order_id).leg_filled == [1, 2])
    await asyncio.sleep(0.3)
    order = a.order(out.client_order_id)
    assert order.state is OrderState.PARTIALLY_FILLED
    assert order.filled == 1
    assert order.commission == Decimal("1.95")  # 3 option contracts; the combo's own execution is not booked
    await first.stop()
    second = AgentRuntime(settings(fake, tmp_path))
    b = Agent(second)
    await second.start()
    try:
        assert "executor.fail_closed" not in b.codes(), [n.message for n in b.notices]
        again = b.order(out.client_order_id)
        assert again.leg_filled == [1, 2]
        assert again.state is OrderState.PARTIALLY_FILLED
        fake.fill(bo.orderId)
        await eventually(lambda: b.order(out.client_order_id).state is OrderState.FILLED)
        assert b.order(out.client_order_id).leg_filled == [2, 4]
    finally:
        await second.stop()


async def test_a_cancel_asked_while_the_gateway_is_down_goes_out_when_it_is_back(
    fake: FakeTWS, start: Starter
) -> None:
    """A halt during the nightly restart: the resting order still works at IB, so the cancel must not be
    dropped as 'rejected, not connected' (the order back to working); it goes out on reconnect."""
    agent = await start()
    await streaming(agent, 18)
    out = await agent.command("submit_order", **buy_call(590.0, resting(fake, 590.0), 1))
    assert out.accepted, out.message
    await eventually(lambda: agent.order(out.client_order_id).state is OrderState.WORKING)
    (bo,) = [o for o in fake.orders.values() if o.orderRef == out.client_order_id]
    fake.faults.client_ids_in_use = {5, 6, 7}  # the Gateway refuses every login for a while
    await fake.drop_connections()
    await eventually(lambda: "ib.disconnected" in agent.codes())
    halted = await agent.command("halt", reason="gateway restart")
    assert halted.accepted
    await asyncio.sleep(0.3)
    assert agent.order(out.client_order_id).state is OrderState.PENDING_CANCEL
    assert fake.orders[bo.orderId].status == "Submitted"
    fake.faults.client_ids_in_use = set()
    await eventually(lambda: agent.order(out.client_order_id).state is OrderState.CANCELLED)
    assert fake.orders[bo.orderId].status == "Cancelled"


def _fees(agent: Agent) -> Decimal:
    assert agent.rt.executor is not None
    return agent.rt.executor.flow.positions.fees


def _corrections(agent: Agent) -> list[CommissionCorrected]:
    assert agent.rt.executor is not None
    return [r for r in agent.rt.executor.journal.reports() if isinstance(r, CommissionCorrected)]


async def test_a_commission_report_after_the_fill_was_booked_corrects_the_fees(
    fake: FakeTWS, tmp_path: Path
) -> None:
    """IB's commission report comes after the executor stopped waiting for it: the fill is booked with 0
    and then corrected, once (IB repeats the report), journaled, published, and kept across a restart."""
    fake.faults.commission_delay_s = 0.8
    fake.faults.duplicate_reports = True
    first = AgentRuntime(settings(fake, tmp_path, commission_wait_s=0.1))
    a = Agent(first)
    fills: list[FillBooked] = []
    first.log.add_listener(
        lambda ev: fills.append(ev.payload) if isinstance(ev.payload, FillBooked) else None
    )
    await first.start()
    try:
        await streaming(a, 18)
        ask = fake.quote(590.0, "C")[1]
        out = await a.command("submit_order", **buy_call(590.0, ask, 2))
        assert out.accepted, out.message
        await eventually(lambda: a.order(out.client_order_id).state is OrderState.FILLED)
        order = a.order(out.client_order_id)
        assert order.commission == 0  # booked before IB's commission report came
        await eventually(lambda: a.order(out.client_order_id).commission == Decimal("1.30"))
        assert _fees(a) == Decimal("1.30")
        await asyncio.sleep(0.3)  # the repeated report has come too
        (exec_id,) = order.fills
        assert _corrections(a) == [
            CommissionCorrected(out.client_order_id, exec_id, Decimal("1.30"), _corrections(a)[0].ts_ns)
        ]
        assert a.codes().count("broker.late_commission") == 1
        # the fill is published again with its commission; the risk state shows the fees
        assert [f.fill.commission for f in fills if f.fill.exec_id == exec_id] == [
            Decimal(0),
            Decimal("1.30"),
        ]
        assert a.rt.executor is not None
        assert a.rt.executor.risk_state().fees == pytest.approx(1.30)
        assert order.state is OrderState.FILLED
    finally:
        await first.stop()
    second = AgentRuntime(settings(fake, tmp_path, commission_wait_s=0.1))
    b = Agent(second)
    await second.start()
    try:  # replayed from the journal: the same fees, nothing to correct again
        await asyncio.sleep(0.3)  # the reports of the resync are pumped: none changes the fees
        assert b.order(out.client_order_id).commission == Decimal("1.30")
        assert _fees(b) == Decimal("1.30")
        assert "executor.fail_closed" not in b.codes()
        assert len(_corrections(b)) == 1
    finally:
        await second.stop()


async def test_reconciliation_corrects_a_commission_that_came_while_the_executor_was_down(
    fake: FakeTWS, tmp_path: Path
) -> None:
    fake.faults.commission_delay_s = 60.0  # not before the executor stops
    first = AgentRuntime(settings(fake, tmp_path, commission_wait_s=0.1))
    a = Agent(first)
    await first.start()
    try:
        await streaming(a, 18)
        ask = fake.quote(590.0, "C")[1]
        out = await a.command("submit_order", **buy_call(590.0, ask, 1))
        assert out.accepted, out.message
        await eventually(lambda: a.order(out.client_order_id).state is OrderState.FILLED)
        assert a.order(out.client_order_id).commission == 0
    finally:
        await first.stop()
    # on restart IB lists the execution with its commission: reconciliation corrects the booked fill
    second = AgentRuntime(settings(fake, tmp_path, commission_wait_s=0.1))
    b = Agent(second)
    await second.start()
    try:
        await asyncio.sleep(0.3)  # the resync's own reports of that execution are pumped as well
        assert b.order(out.client_order_id).commission == Decimal("0.65")
        assert _fees(b) == Decimal("0.65")
        assert "executor.reconciled" in b.codes()
        assert any("1 commission corrections" in n.message for n in b.notices)
        assert "executor.fail_closed" not in b.codes()
        assert b.rt.executor is not None
        assert b.rt.executor.flow.state.value == "active"
        assert len(_corrections(b)) == 1
    finally:
        await second.stop()
