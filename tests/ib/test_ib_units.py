"""IB adapters without a server: pacing, backoff, quotes from tickers, the strike window, and the broker
fed raw ``ib_async`` wrapper messages (what the server would send) through a real ``ib_async.IB``."""

from __future__ import annotations

import asyncio
import math
import random
from decimal import Decimal
from typing import Any

import pytest
from ib_async import CommissionReport, Execution, Option, Order, OrderState, Ticker
from ib_async.objects import OptionComputation

from agent.domain import ChainUpdate, ComponentHealth, NoticeLevel, QuoteFlag, Right
from agent.events import Payload
from agent.executor.orders import (
    CancelRejected,
    CommissionCorrected,
    Contract,
    OrderAccepted,
    OrderCancelled,
    OrderFilled,
    OrderIntent,
    OrderLeg,
    OrderRejected,
    Side,
    single_leg,
)
from agent.executor.orders import OrderState as S
from agent.ib.broker import IBBroker, state_of
from agent.ib.connection import IBConnection, Pacer, backoff_delay, is_warning
from agent.ib.feed import UNDERLYING, IBFeed, choose_window, quote_from_ticker
from agent.settings import IBSettings

EXPIRY = "20251125"


class Recorder:
    def __init__(self) -> None:
        self.notices: list[tuple[NoticeLevel, str, str]] = []
        self.health: list[ComponentHealth] = []
        self.published: list[Payload] = []

    def notice(self, level: NoticeLevel, code: str, message: str) -> None:
        self.notices.append((level, code, message))

    def codes(self) -> list[str]:
        return [c for _, c, _ in self.notices]


def connection(rec: Recorder, **settings: Any) -> IBConnection:
    return IBConnection(IBSettings(**settings), notice=rec.notice, health=rec.health.append, seed=1)


# ------------------------------------------------------------------ pacing and backoff


def test_pacer_never_exceeds_the_rate_and_keeps_headroom_for_orders() -> None:
    now = [0.0]
    pacer = Pacer(45, clock=lambda: now[0])
    sent: list[float] = []
    for _ in range(500):  # bulk requests as fast as the pacer allows, on a fake clock
        wait = pacer.try_acquire()
        if wait:
            now[0] += wait
            assert pacer.try_acquire() == 0.0
        sent.append(now[0])
    # any window of one second holds at most 40 bulk requests (45 minus 5 kept for orders)
    for i in range(len(sent) - 40):
        assert sent[i + 40] - sent[i] >= 1.0
    # once bulk requests are at their limit, the headroom is still there for urgent ones
    while pacer.try_acquire() == 0.0:
        pass
    for _ in range(5):
        assert pacer.try_acquire(urgent=True) == 0.0
    assert pacer.try_acquire(urgent=True) > 0.0
    pacer.slow_down(10.0)
    now[0] += 1.0
    taken = sum(1 for _ in range(45) if pacer.try_acquire() == 0.0)
    assert taken == 20  # halved after IB's error 100


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(3)
    delays = [backoff_delay(a, 1.0, 30.0, rng) for a in range(12)]
    assert all(0.5 <= d <= 30.0 for d in delays)
    assert max(delays[:2]) <= 2.0
    assert max(delays[8:]) > 8.0
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, never in lockstep


def test_warnings_are_2100_to_2169() -> None:
    assert is_warning(2104)
    assert is_warning(2169)
    assert is_warning(2100)
    assert not is_warning(2170)
    assert not is_warning(201)
    assert not is_warning(1100)


def test_settings_reject_a_budget_without_option_lines() -> None:
    with pytest.raises(ValueError, match="no lines for options"):
        IBSettings(line_budget=5, reserved_order_lines=4)
    with pytest.raises(ValueError, match="client_id_pool"):
        IBSettings(client_id=3, client_id_pool=(3, 4))


# ------------------------------------------------------------------ quotes and the window


def option(strike: float, right: str, con_id: int = 0) -> Any:
    return Option("SPY", EXPIRY, strike, right, "SMART", multiplier="100", currency="USD", conId=con_id)


def test_quote_from_ticker_maps_sides_sizes_greeks_and_flags() -> None:
    t = Ticker(contract=option(590.0, "C", 77))
    q = quote_from_ticker(t, (590.0, "C"), 5, stale=False)
    assert q.flags & QuoteFlag.NO_BID
    assert q.flags & QuoteFlag.NO_ASK
    assert not q.flags & QuoteFlag.BAD_VALUE
    assert (q.bid, q.ask, q.con_id) == (0.0, 0.0, 77)
    t.bid, t.bidSize, t.ask, t.askSize = 1.20, 12.0, 1.25, 30.0
    t.last, t.lastSize, t.volume = 1.22, 2.0, 1500.0
    t.modelGreeks = OptionComputation(0, 0.18, 0.52, 1.22, 0.0, 0.07, 0.11, -0.9, 590.3)
    q = quote_from_ticker(t, (590.0, "C"), 5, stale=True)
    assert (q.bid, q.ask, q.bid_size, q.ask_size, q.last, q.volume) == (1.20, 1.25, 12, 30, 1.22, 1500)
    assert q.right is Right.CALL
    assert q.quote_ts_ns == 5
    assert q.flags == QuoteFlag.STALE
    assert (q.src_iv, q.src_delta, q.src_gamma, q.src_und_price) == (0.18, 0.52, 0.07, 590.3)
    t.modelGreeks = OptionComputation(0, None, -2.0, None, None, -2.0, None, None, None)
    t.ask, t.halted = 1.10, 1.0
    q = quote_from_ticker(t, (590.0, "C"), 5, stale=False)
    assert math.isnan(q.src_iv)
    assert math.isnan(q.src_delta)
    assert math.isnan(q.src_gamma)
    assert q.flags & QuoteFlag.CROSSED
    assert q.flags & QuoteFlag.HALTED
    t.bid = math.inf
    assert quote_from_ticker(t, (590.0, "C"), 5, stale=False).flags & QuoteFlag.NO_BID


def test_choose_window_takes_the_strikes_nearest_the_money() -> None:
    strikes = [float(k) for k in range(560, 621)]
    w = choose_window(strikes, 590.4, 10)
    assert w == [float(k) for k in range(586, 596)]
    assert choose_window(strikes, 555.0, 4) == [560.0, 561.0, 562.0, 563.0]
    assert choose_window(strikes, 590.0, 0) == []


async def test_feed_window_hysteresis_stale_marks_and_batches() -> None:
    rec = Recorder()
    conn = connection(rec, line_budget=25, reserved_order_lines=4, window_hysteresis_strikes=2)
    feed = IBFeed(
        conn,
        conn.settings,
        publish=rec.published.append,
        notice=rec.notice,
        health=rec.health.append,
        clock_ns=lambda: 1_000,
        expiry=EXPIRY,
    )
    assert feed.capacity_strikes == 10  # (25 - 1 underlying - 4 for orders) // 2
    feed.expiry, feed.strikes = EXPIRY, [float(k) for k in range(570, 611)]
    feed.spot = 590.2
    assert feed.needs_recenter()  # nothing subscribed yet
    feed.window, feed.center = feed._target_window(), 590.0
    feed.spot = 591.9
    assert not feed.needs_recenter()  # two strikes away: inside the hysteresis
    feed.spot = 593.1
    assert feed.needs_recenter()
    # two option lines and the underlying tick in one loop turn -> one chain update carrying both
    tc, tp, tu = Ticker(contract=option(590.0, "C", 1)), Ticker(contract=option(590.0, "P", 2)), Ticker()
    for key, t in (((590.0, "C"), tc), ((590.0, "P"), tp), (UNDERLYING, tu)):
        feed.lines[key] = t
        feed._key_by_ticker[id(t)] = key
    tc.bid, tc.bidSize, tc.ask, tc.askSize = 2.0, 5.0, 2.1, 5.0
    tp.bid, tp.bidSize, tp.ask, tp.askSize = 1.9, 5.0, 2.0, 5.0
    tu.last = 590.3
    feed._on_pending([tc, tp])
    feed._on_pending([tu])
    await asyncio.sleep(0)
    assert len(rec.published) == 1
    update = rec.published[0]
    assert isinstance(update, ChainUpdate)
    assert not update.full
    assert [(q.strike, q.right) for q in update.quotes] == [(590.0, Right.CALL), (590.0, Right.PUT)]
    assert update.underlying_tick is not None
    assert update.underlying_tick.last == 590.3
    # 1100: every quote republished STALE; ticks during the gap stay stale; after 1102 a tick clears it
    feed._on_ib_lost()
    stale = rec.published[-1]
    assert isinstance(stale, ChainUpdate)
    assert all(q.flags & QuoteFlag.STALE for q in stale.quotes)
    tc.bid = 2.05
    feed._on_pending([tc])
    await asyncio.sleep(0)
    during = rec.published[-1]
    assert isinstance(during, ChainUpdate)
    assert during.quotes[0].flags & QuoteFlag.STALE
    await feed._on_restored(False)
    assert feed.resubscriptions == 0  # 1102: data kept, nothing resubscribed
    tc.bid = 2.06
    feed._on_pending([tc])
    await asyncio.sleep(0)
    fresh = rec.published[-1]
    assert isinstance(fresh, ChainUpdate)
    assert not fresh.quotes[0].flags & QuoteFlag.STALE
    assert (590.0, "P") in feed._stale  # the put has not ticked since: still stale


async def test_feed_max_tickers_shrinks_the_window_and_reports() -> None:
    rec = Recorder()
    conn = connection(rec)
    feed = IBFeed(
        conn,
        conn.settings,
        publish=rec.published.append,
        notice=rec.notice,
        health=rec.health.append,
        clock_ns=lambda: 1,
        expiry=EXPIRY,
    )
    for i, k in enumerate(range(580, 600)):
        for right in ("C", "P"):
            t = Ticker(contract=option(float(k), right))
            feed.lines[(float(k), right)] = t
            feed._key_by_req[100 + 2 * i + (right == "P")] = (float(k), right)
    feed._on_error(139, 101, "Max number of tickers has been reached")
    assert feed.capacity_strikes == 19
    assert "feed.max_tickers" in rec.codes()
    feed._on_error(138, 354, "Requested market data is not subscribed")
    assert "feed.not_subscribed" in rec.codes()
    feed._on_error(-1, 2104, "Market data farm connection is OK:usfarm")
    assert rec.codes().count("feed.max_tickers") == 1
    await conn.close()


# ------------------------------------------------------------------ the broker on raw messages


def call_contract(strike: float = 590.0, right: Right = Right.CALL) -> Contract:
    return Contract("SPY", EXPIRY, strike, right)


def make_broker(rec: Recorder, **settings: Any) -> tuple[IBBroker, IBConnection]:
    conn = connection(rec, **settings)
    conn.client_id = 7
    broker = IBBroker(conn, conn.settings, clock_ns=lambda: 42, order_ref_prefix="edge1")
    return broker, conn


def open_order(conn: IBConnection, ref: str, order_id: int, perm_id: int, status: str = "Submitted") -> None:
    o = Order(orderId=order_id, clientId=7, permId=perm_id, orderRef=ref, totalQuantity=2.0, action="BUY")
    conn.ib.wrapper.openOrder(order_id, option(590.0, "C", 11), o, OrderState(status=status))


def status(conn: IBConnection, order_id: int, perm_id: int, st: str, filled: float = 0.0) -> None:
    conn.ib.wrapper.orderStatus(order_id, st, filled, 2.0 - filled, 0.0, perm_id, 0, 0.0, 7, "", 0.0)


def execution(
    conn: IBConnection, exec_id: str, ref: str, strike: float = 590.0, right: str = "C", **kw: Any
) -> None:
    ex = Execution(
        execId=exec_id,
        orderRef=ref,
        side=kw.pop("side", "BOT"),
        shares=kw.pop("shares", 1.0),
        price=kw.pop("price", 1.25),
        permId=900,
        clientId=7,
        orderId=5,
    )
    conn.ib.wrapper.execDetails(-1, kw.pop("contract", option(strike, right, 11)), ex)


async def test_broker_maps_server_messages_to_reports_once() -> None:
    rec = Recorder()
    broker, conn = make_broker(rec, commission_wait_s=5.0)
    intent = single_leg("edge1-20251125-000001", call_contract(), Side.BUY, 2, "1.30", 1)
    broker._intents[intent.client_order_id] = intent
    open_order(conn, intent.client_order_id, 5, 900, "PreSubmitted")
    open_order(conn, intent.client_order_id, 5, 900, "Submitted")  # the same ack again
    open_order(conn, "other-20251125-000001", 6, 901)  # not this executor's: ignored
    assert broker.pump() == [OrderAccepted(intent.client_order_id, "900", 42)]
    # the execution waits for its commission report, then goes out once; a repeat is dropped
    execution(conn, "e1", intent.client_order_id)
    assert broker.pump() == []
    conn.ib.wrapper.commissionReport(CommissionReport(execId="e1", commission=0.65, currency="USD"))
    execution(conn, "e1", intent.client_order_id)
    (filled,) = broker.pump()
    assert isinstance(filled, OrderFilled)
    f = filled.fill
    assert (f.exec_id, f.leg, f.side, f.quantity, f.price, f.commission) == (
        "e1",
        0,
        Side.BUY,
        1,
        Decimal("1.25"),
        Decimal("0.65"),
    )
    # a warning on the order ends nothing, an ordinary error ends nothing either (state from IB only)
    conn.ib.wrapper.error(5, 2109, "Order Event Warning: outside regular trading hours", "")
    conn.ib.wrapper.error(5, 399, "Order Message: warning", "")
    assert broker.pump() == []
    assert "broker.order_error" in rec.codes()
    # the server's own status ends it, once
    status(conn, 5, 900, "Cancelled", filled=1.0)
    status(conn, 5, 900, "Cancelled", filled=1.0)
    (cancelled,) = broker.pump()
    assert isinstance(cancelled, OrderCancelled)
    assert cancelled.client_order_id == intent.client_order_id
    broker.close()


async def test_broker_commission_timeout_rejects_and_spread_legs() -> None:
    rec = Recorder()
    broker, conn = make_broker(rec, commission_wait_s=0.05)
    legs = (
        OrderLeg(call_contract(590.0), Side.BUY),
        OrderLeg(call_contract(595.0), Side.SELL),
    )
    spread = OrderIntent("edge1-20251125-000002", Side.BUY, 1, Decimal("2.00"), legs, 1)
    broker._intents[spread.client_order_id] = spread
    open_order(conn, spread.client_order_id, 8, 902)
    broker.pump()
    bag = option(0.0, "")
    bag.secType = "BAG"
    execution(conn, "b0", spread.client_order_id, contract=bag, price=2.0)  # the combo's own: skipped
    execution(conn, "b1", spread.client_order_id, 595.0, "C", side="SLD", price=1.0)
    await asyncio.sleep(0.15)
    (f,) = broker.pump()
    assert isinstance(f, OrderFilled)
    assert (f.fill.leg, f.fill.side, f.fill.commission) == (1, Side.SELL, Decimal(0))
    # 201 for an order IB never acknowledged is a rejection once IB's book confirms it (Inactive here);
    # a cancel problem is a cancel rejection
    open_order(conn, "edge1-20251125-000003", 9, 903, "PendingSubmit")
    conn.ib.wrapper.error(9, 201, "Order rejected - reason: no trading permissions", "")
    conn.ib.wrapper.error(8, 161, "Cancel attempted when order is not in a cancellable state", "")
    reports = broker.pump()
    assert not any(isinstance(r, OrderRejected) for r in reports)
    assert any(isinstance(r, CancelRejected) and r.client_order_id == spread.client_order_id for r in reports)
    status(conn, 9, 903, "Inactive")
    assert broker.pump() == [
        OrderRejected(
            "edge1-20251125-000003", 42, "IB rejected: Order rejected - reason: no trading permissions"
        )
    ]
    status(conn, 9, 903, "Inactive")
    assert broker.pump() == []  # once
    broker.close()


async def test_broker_201_then_a_working_status_keeps_the_order_open() -> None:
    """IB may send error 201 and then work the order after all: the order is not declared rejected on
    the error alone (it would be live at IB, unknown to the executor, and impossible to cancel)."""
    rec = Recorder()
    broker, conn = make_broker(rec)
    cid = "edge1-20251125-000006"
    open_order(conn, cid, 14, 906, "PendingSubmit")
    conn.ib.wrapper.error(14, 201, "Order rejected - reason: margin check pending", "")
    status(conn, 14, 906, "Submitted")
    reports = broker.pump()
    assert not any(isinstance(r, OrderRejected) for r in reports)
    assert OrderAccepted(cid, "906", 42) in reports
    assert not broker.known[cid].closed
    assert "broker.rejected" in rec.codes()  # still said loudly
    broker.close()


def test_broker_owns_exactly_its_client_order_ids_of_the_session() -> None:
    rec = Recorder()
    conn = connection(rec)
    b = IBBroker(conn, conn.settings, clock_ns=lambda: 42, order_ref_prefix="edge1", session_date="20251125")
    assert b.ours("edge1-20251125-000001")
    assert not b.ours("edge1-20251124-000007")  # yesterday's (TWS can list several days of executions)
    assert not b.ours("edge1-b-20251125-000001")  # another executor whose prefix starts like ours
    assert not b.ours("edge1-manual")  # a hand-typed orderRef
    assert not b.ours("edge1-20251125-000001x")
    assert not b.ours(None)
    any_day = IBBroker(connection(rec), conn.settings, clock_ns=lambda: 42, order_ref_prefix="edge1")
    assert any_day.ours("edge1-20251124-000007")
    assert not any_day.ours("edge1-b-20251125-000001")
    b.close()
    any_day.close()


async def test_broker_never_books_a_malformed_execution_and_never_raises() -> None:
    rec = Recorder()
    broker, conn = make_broker(rec, commission_wait_s=0.0)
    intent = single_leg("edge1-20251125-000007", call_contract(), Side.BUY, 2, "1.30", 1)
    broker._intents[intent.client_order_id] = intent
    execution(conn, "n1", intent.client_order_id, shares=math.nan)
    execution(conn, "n2", intent.client_order_id, price=math.nan)
    execution(conn, "n3", intent.client_order_id, price=math.inf)
    execution(conn, "n4", intent.client_order_id, shares=1.5)
    assert broker.pump() == []
    assert rec.codes().count("broker.bad_execution") == 4
    for bad in ("n1", "n2"):
        ex = Execution(execId=bad, orderRef=intent.client_order_id, side="BOT", shares=math.nan, price=1.0)
        assert broker.fill_from(option(590.0, "C", 11), ex) is None  # what executions() uses: no raise
    execution(conn, "ok", intent.client_order_id)
    (good,) = broker.pump()
    assert isinstance(good, OrderFilled)
    broker.close()


async def test_broker_says_when_a_commission_comes_after_its_fill_was_booked() -> None:
    rec = Recorder()
    broker, conn = make_broker(rec, commission_wait_s=0.02)
    intent = single_leg("edge1-20251125-000008", call_contract(), Side.BUY, 1, "1.30", 1)
    broker._intents[intent.client_order_id] = intent
    execution(conn, "c1", intent.client_order_id)
    await asyncio.sleep(0.1)
    (f,) = broker.pump()
    assert isinstance(f, OrderFilled)
    assert f.fill.commission == 0
    conn.ib.wrapper.commissionReport(CommissionReport(execId="c1", commission=0.65, currency="USD"))
    assert "broker.late_commission" in rec.codes()
    # never a second fill: a correction of the booked one, once however often IB repeats the report
    assert broker.pump() == [CommissionCorrected(intent.client_order_id, "c1", Decimal("0.65"), 42)]
    conn.ib.wrapper.commissionReport(CommissionReport(execId="c1", commission=0.65, currency="USD"))
    execution(conn, "c1", intent.client_order_id)  # re-listed (reqExecutions): nothing new
    await asyncio.sleep(0.05)
    assert broker.pump() == []
    assert rec.codes().count("broker.late_commission") == 1
    broker.close()
    # with no wait at all, a fill goes out at once and its commission follows as a correction
    broker, conn = make_broker(rec, commission_wait_s=0.0)
    broker._intents[intent.client_order_id] = intent
    execution(conn, "c2", intent.client_order_id)
    (f2,) = broker.pump()
    assert isinstance(f2, OrderFilled)
    assert f2.fill.commission == 0
    conn.ib.wrapper.commissionReport(CommissionReport(execId="c2", commission=0.65, currency="USD"))
    assert broker.pump() == [CommissionCorrected(intent.client_order_id, "c2", Decimal("0.65"), 42)]
    # a fill booked with its commission is never corrected by a repeat of the same report
    conn.ib.wrapper.commissionReport(CommissionReport(execId="c3", commission=0.65, currency="USD"))
    execution(conn, "c3", intent.client_order_id)
    (f3,) = broker.pump()
    assert isinstance(f3, OrderFilled)
    assert f3.fill.commission == Decimal("0.65")
    conn.ib.wrapper.commissionReport(CommissionReport(execId="c3", commission=0.65, currency="USD"))
    assert broker.pump() == []
    broker.close()


async def test_broker_refuses_to_send_when_disconnected_and_is_idempotent() -> None:
    rec = Recorder()
    broker, conn = make_broker(rec)
    intent = single_leg("edge1-20251125-000004", call_contract(), Side.SELL, 1, "1.10", 1)
    await broker.submit(intent)
    (r,) = broker.pump()
    assert isinstance(r, OrderRejected)
    assert "not connected" in r.reason
    open_order(conn, "edge1-20251125-000005", 12, 905)
    broker.pump()
    again = single_leg("edge1-20251125-000005", call_contract(), Side.BUY, 2, "1.10", 1)
    await broker.submit(again)  # already at IB: not sent, the ack repeated
    assert broker.pump() == [OrderAccepted("edge1-20251125-000005", "905", 42)]
    assert broker.duplicate_submits == 1
    await broker.cancel("edge1-20251125-999999")
    (c,) = broker.pump()
    assert isinstance(c, CancelRejected)
    broker.close()


def test_ib_status_to_order_state() -> None:
    assert state_of("Submitted", False) is S.WORKING
    assert state_of("Submitted", True) is S.PARTIALLY_FILLED
    assert state_of("PendingCancel", False) is S.PENDING_CANCEL
    assert state_of("Filled", True) is S.FILLED
    assert state_of("ApiCancelled", False) is S.CANCELLED
    assert state_of("Inactive", False) is S.REJECTED


async def test_reconnect_backs_off_through_a_restart_and_a_gateway_that_accepts_then_drops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The nightly restart refuses connections for minutes, and a Gateway coming up may accept a socket
    and close it at once: the backoff keeps growing through both, it does not restart at the initial delay
    after each short-lived connection (which would hammer the Gateway every second)."""
    import agent.ib.connection as connection_module

    attempts: list[int] = []

    def record(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
        attempts.append(attempt)
        return 0.001

    monkeypatch.setattr(connection_module, "backoff_delay", record)
    rec = Recorder()
    conn = connection(rec, reconnect_initial_s=1.0, reconnect_max_s=60.0)
    script = ["failed"] * 4 + ["ok"] * 4  # four refusals, then four connections dropped at once

    async def connect_once(client_id: int) -> str:
        outcome = script.pop(0) if script else "failed"
        if outcome == "ok":
            conn.connects += 1
            asyncio.get_running_loop().call_soon(conn._dropped.set)
        return outcome

    monkeypatch.setattr(conn, "_connect_once", connect_once)
    conn.start()
    for _ in range(200):
        if len(attempts) >= 9:
            break
        await asyncio.sleep(0.005)
    await conn.close()
    assert attempts[:9] == list(range(9))


async def test_broker_verifies_an_order_whose_error_came_while_a_verification_ran(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Errors on two orders, the second arriving while IB's orders are being re-read for the first: both
    are settled from IB's book (neither is left open forever)."""
    import agent.ib.broker as broker_module

    monkeypatch.setattr(broker_module, "VERIFY_DELAY_S", 0.01)
    rec = Recorder()
    broker, conn = make_broker(rec)
    monkeypatch.setattr(conn, "is_connected", lambda: True)
    open_order(conn, "edge1-20251125-000011", 21, 0, "PendingSubmit")
    open_order(conn, "edge1-20251125-000012", 22, 0, "PendingSubmit")
    reads = 0

    async def all_open_orders() -> list[Any]:
        nonlocal reads
        reads += 1
        if reads == 1:  # the second order's error lands while the first pass waits for IB
            conn.ib.wrapper.error(22, 200, "No security definition has been found for the request", "")
        await asyncio.sleep(0)
        return []

    async def completed_orders(api_only: bool) -> list[Any]:
        return []

    monkeypatch.setattr(conn.ib, "reqAllOpenOrdersAsync", all_open_orders)
    monkeypatch.setattr(conn.ib, "reqCompletedOrdersAsync", completed_orders)
    conn.ib.wrapper.error(21, 200, "No security definition has been found for the request", "")
    for _ in range(100):
        if len([r for r in broker._out if isinstance(r, OrderRejected)]) == 2:
            break
        await asyncio.sleep(0.01)
    rejected = {r.client_order_id for r in broker.pump() if isinstance(r, OrderRejected)}
    assert rejected == {"edge1-20251125-000011", "edge1-20251125-000012"}
    broker.close()


async def test_broker_positions_with_malformed_values_are_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ib_async import Position

    rec = Recorder()
    broker, conn = make_broker(rec)
    monkeypatch.setattr(conn, "is_connected", lambda: True)
    rows = [
        Position("DU1", option(590.0, "C", 11), math.nan, 120.0),
        Position("DU1", Option("SPY", EXPIRY, 591.0, "C", "SMART", multiplier="0", conId=12), 1.0, 1.0),
        Position("DU1", option(592.0, "P", 13), -2.0, 85.0),
    ]

    async def positions() -> list[Any]:
        return rows

    monkeypatch.setattr(conn.ib, "reqPositionsAsync", positions)
    (good,) = await broker.positions()
    assert (good.contract.strike, good.quantity, good.avg_cost) == (592.0, -2, Decimal("0.85"))
    assert rec.codes().count("broker.bad_position") == 2
    broker.close()


async def test_broker_never_merges_an_intent_into_another_order_with_its_order_ref() -> None:
    """Two executors with one prefix, or a journal restarted mid-day, hand out an id IB already has for a
    different order: the intent is refused loudly (not silently taken as sent), and that order's reports
    are never booked to it. The very same order again is an idempotent retry."""
    rec = Recorder()
    broker, conn = make_broker(rec)
    cid = "edge1-20251125-000001"
    open_order(conn, cid, 30, 930, "Submitted")  # BUY 2, placed by someone else under this orderRef
    broker.pump()
    other = single_leg(cid, call_contract(595.0), Side.SELL, 1, "0.40", 1)
    await broker.submit(other)
    (r,) = broker.pump()
    assert isinstance(r, OrderRejected)
    assert "different order" in r.reason
    assert "broker.order_ref_collision" in rec.codes()
    execution(conn, "x1", cid)  # the other order fills: not ours to book
    status(conn, 30, 930, "Filled", filled=2.0)
    assert broker.pump() == []
    # the same order (same side, quantity, no limit known) is a retry: acknowledged, not sent again
    same_cid = "edge1-20251125-000002"
    open_order(conn, same_cid, 31, 931, "Submitted")
    broker.pump()
    same = single_leg(same_cid, call_contract(), Side.BUY, 2, "1.30", 1)
    await broker.submit(same)
    assert broker.pump() == [OrderAccepted(same_cid, "931", 42)]
    broker.close()


async def test_broker_sends_an_order_once_when_a_retry_overtakes_the_first_submit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Idempotent on the client order id even while the first submit still waits (here for a spread
    leg's contract details): a concurrent retry of the same id is not a second order at IB."""
    from ib_async import ContractDetails, Trade

    rec = Recorder()
    broker, conn = make_broker(rec)
    monkeypatch.setattr(conn, "is_connected", lambda: True)
    broker._synced.set()

    async def details(spec: Any) -> list[Any]:
        await asyncio.sleep(0.02)
        return [ContractDetails(contract=option(spec.strike, spec.right, int(spec.strike * 10)))]

    placed: list[Any] = []

    def place(contract: Any, order: Any) -> Any:
        order.orderId = 40 + len(placed)
        placed.append(order)
        return Trade(contract=contract, order=order)

    monkeypatch.setattr(conn.ib, "reqContractDetailsAsync", details)
    monkeypatch.setattr(conn.ib, "placeOrder", place)
    legs = (OrderLeg(call_contract(590.0), Side.BUY), OrderLeg(call_contract(595.0), Side.SELL))
    spread = OrderIntent("edge1-20251125-000020", Side.BUY, 1, Decimal("2.00"), legs, 1)
    await asyncio.gather(broker.submit(spread), broker.submit(spread))
    assert len(placed) == 1
    assert broker.duplicate_submits == 1
    broker.close()


async def test_a_connection_closed_while_connecting_stays_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    conn = connection(rec)
    release = asyncio.Event()
    state = {"connected": False, "disconnects": 0}

    async def connect_async(*args: Any, **kwargs: Any) -> None:
        await release.wait()
        state["connected"] = True

    def disconnect() -> None:
        state["disconnects"] += 1
        state["connected"] = False

    monkeypatch.setattr(conn.ib, "connectAsync", connect_async)
    monkeypatch.setattr(conn.ib, "isConnected", lambda: state["connected"])
    monkeypatch.setattr(conn.ib, "disconnect", disconnect)
    ran: list[bool] = []

    async def on_connected(first: bool) -> None:
        ran.append(first)

    conn.callbacks.connected.append(on_connected)
    conn.start()
    await asyncio.sleep(0.05)
    conn.disconnect()  # the owner shuts down while the Gateway is still answering the handshake
    release.set()
    await asyncio.sleep(0.1)
    assert not conn.connected.is_set()
    assert not state["connected"]
    assert ran == []
    await conn.close()


async def test_broker_takes_a_status_from_an_open_order_with_malformed_fields() -> None:
    rec = Recorder()
    broker, _conn = make_broker(rec)
    cid = "edge1-20251125-000030"
    o = Order(orderId=50, clientId=7, permId=950, orderRef=cid, action="BUY")
    o.totalQuantity = None  # type: ignore[assignment]
    o.lmtPrice = "x"  # type: ignore[assignment]
    broker._tap_open_order(50, option(590.0, "C", 11), o, OrderState(status="Cancelled"))
    reports = broker.pump()
    assert OrderAccepted(cid, "950", 42) not in reports  # a cancel is not an ack
    assert any(isinstance(r, OrderCancelled) for r in reports)
    broker.close()
