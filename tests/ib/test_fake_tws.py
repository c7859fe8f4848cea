"""The fake TWS server driven by the real, unmodified ib_async client over a real socket on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

import pytest
from ib_async import IB, ComboLeg, Contract, ExecutionFilter, LimitOrder, MarketOrder, Option, Stock

from tests.conftest import eventually
from tests.ib.fake_tws import STOCK_CON_ID, FakeFaults, FakeTWS, FakeTWSThread

TIMEOUT = 3.0


async def until(check: Callable[[], Any], timeout: float = 2.0) -> None:
    await eventually(check, timeout, every=0.01)


class Errors:
    """Collects ib_async's errorEvent: (reqId, code, message)."""

    def __init__(self, ib: IB) -> None:
        self.seen: list[tuple[int, int, str]] = []
        ib.errorEvent += self.on_error

    def on_error(self, req_id: int, code: int, msg: str, contract: Any) -> None:
        self.seen.append((req_id, code, msg))

    def codes(self) -> list[int]:
        return [code for _, code, _ in self.seen]


@pytest.fixture(autouse=True)
def _decoder_accepts_every_message(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """ib_async's decoder logs (and swallows) any message it cannot parse: fail the test on one."""
    caplog.set_level(logging.INFO, logger="ib_async")
    yield
    records = caplog.get_records("setup") + caplog.get_records("call")
    bad = [r.getMessage() for r in records if r.name == "ib_async.Decoder" and r.levelno >= logging.ERROR]
    assert bad == []


@pytest.fixture
async def fake() -> AsyncIterator[FakeTWS]:
    server = FakeTWS()
    await server.start()
    yield server
    await server.stop()


async def connect(fake: FakeTWS, client_id: int = 1, timeout: float = TIMEOUT) -> IB:
    ib = IB()
    await ib.connectAsync("127.0.0.1", fake.port, clientId=client_id, timeout=timeout)
    return ib


@pytest.fixture
async def ib(fake: FakeTWS) -> AsyncIterator[IB]:
    client = await connect(fake)
    yield client
    client.disconnect()


def option(fake: FakeTWS, strike: float, right: str = "C", expiry: str | None = None) -> Option:
    return Option("SPY", expiry or fake.expiry, strike, right, "SMART", tradingClass="SPY")


async def qualified(ib: IB, *contracts: Contract) -> list[Contract]:
    result = await ib.qualifyContractsAsync(*contracts)
    assert all(isinstance(c, Contract) for c in result), result
    return [c for c in result if isinstance(c, Contract)]


# ---------------------------------------------------------------------------------------------- session


async def test_connect_completes_the_startup_sync(fake: FakeTWS, ib: IB) -> None:
    assert ib.isConnected()
    assert ib.client.serverVersion() == 178
    assert ib.managedAccounts() == ["DU1234567"]
    assert ib.client.getReqId() >= 1
    assert fake.accepted_client_ids == [1]
    assert fake.connected_client_ids == [1]
    values = {v.tag: v.value for v in ib.accountValues()}
    assert float(values["NetLiquidation"]) == pytest.approx(1_000_000.0)
    # startApi + positions, open orders, completed orders, account updates (+multi), executions
    assert len(fake.request_times) >= 7
    assert fake.request_times == sorted(fake.request_times)
    now = await ib.reqCurrentTimeAsync()
    assert abs(now.timestamp() - time.time()) < 5


@pytest.mark.parametrize("version", [157, 163, 165, 170, 176])
async def test_older_server_versions_speak_their_field_layout(version: int) -> None:
    fake = FakeTWS(server_version=version)
    await fake.start()
    ib = await connect(fake)
    try:
        assert ib.client.serverVersion() == version
        spy, call = await qualified(ib, Stock("SPY", "SMART", "USD"), option(fake, 590.0))
        assert spy.conId == STOCK_CON_ID
        assert call.conId == fake.option_con_id(590.0, "C")
        details = await ib.reqContractDetailsAsync(call)
        assert details[0].underConId == STOCK_CON_ID
        assert details[0].minTick == 0.01
        trade = ib.placeOrder(call, LimitOrder("BUY", 1, fake.quote(590.0, "C")[1], orderRef="v"))
        await until(lambda: trade.orderStatus.status == "Filled" and bool(trade.fills))
        await until(lambda: trade.fills[0].commissionReport.commission == pytest.approx(0.65))
        assert trade.order.permId == fake.orders[trade.order.orderId].permId
        ib.disconnect()
        ib = await connect(fake)
        assert [f.execution.orderRef for f in ib.fills()] == ["v"]
        completed = [t for t in ib.trades() if t.orderStatus.status == "Filled"]
        assert [t.order.orderRef for t in completed] == ["v"]
    finally:
        ib.disconnect()
        await fake.stop()


async def test_client_id_in_use_gets_error_326_and_the_socket_closed(fake: FakeTWS, ib: IB) -> None:
    second = IB()
    errors = Errors(second)
    with pytest.raises((TimeoutError, ConnectionError)):
        await second.connectAsync("127.0.0.1", fake.port, clientId=1, timeout=0.5)
    assert 326 in errors.codes()
    assert not second.isConnected()
    assert ib.isConnected()  # the first session is untouched
    fake.faults.client_ids_in_use.add(9)
    third = IB()
    errors3 = Errors(third)
    with pytest.raises((TimeoutError, ConnectionError)):
        await third.connectAsync("127.0.0.1", fake.port, clientId=9, timeout=0.5)
    assert 326 in errors3.codes()
    assert fake.accepted_client_ids == [1]


async def test_drop_connections_disconnects_and_a_reconnect_keeps_the_book(fake: FakeTWS, ib: IB) -> None:
    (call,) = await qualified(ib, option(fake, 590.0))
    trade = ib.placeOrder(call, LimitOrder("BUY", 2, fake.quote(590.0, "C")[1], orderRef="keep"))
    await until(lambda: trade.orderStatus.status == "Filled")
    dropped: list[bool] = []
    ib.disconnectedEvent += lambda: dropped.append(True)
    await fake.drop_connections()
    await until(lambda: not ib.isConnected())
    assert dropped == [True]
    assert ib.fills() == []  # ib_async clears its whole session state on a disconnect
    assert fake.connected_client_ids == []
    again = await connect(fake)
    try:
        assert fake.connections == 2
        assert [f.execution.orderRef for f in again.fills()] == ["keep"]  # from the startup reqExecutions
        fills = await again.reqExecutionsAsync(ExecutionFilter(clientId=1))
        assert [(f.execution.shares, f.execution.orderRef) for f in fills] == [(2.0, "keep")]
        # a repeated reqExecutions returns new Fill objects whose commission stays empty (ib_async keys
        # commission reports to the first Fill of an execId): the commission is on ib.fills()
        assert fills[0].commissionReport.commission == 0.0
        assert again.fills()[0].commissionReport.commission == pytest.approx(1.3)
        positions = await again.reqPositionsAsync()
        assert [(p.contract.conId, p.position) for p in positions] == [(call.conId, 2.0)]
        assert next(iter(fake.orders.values())).status == "Filled"
        # the next order id continues above every order the server has seen
        assert again.client.getReqId() > trade.order.orderId
    finally:
        again.disconnect()


async def test_send_error_reaches_every_client_and_1102_resubscribes_the_summary(
    fake: FakeTWS, ib: IB
) -> None:
    errors = Errors(ib)
    fake.send_error(1100, "Connectivity between IB and Trader Workstation has been lost.")
    fake.send_error(1101, "Connectivity between IB and TWS has been restored- data lost.")
    fake.send_error(1102, "Connectivity between IB and TWS has been restored- data maintained.")
    await until(lambda: errors.codes()[-3:] == [1100, 1101, 1102])
    # ib_async answers 1102 with reqAccountSummary, which the server serves
    # (ib.accountSummary() is a blocking call: read the wrapper's store from a coroutine)
    await until(lambda: any(v.tag == "NetLiquidation" for v in ib.wrapper.acctSummary.values()))


# ---------------------------------------------------------------------------------------------- contracts


async def test_qualify_spy_and_options(fake: FakeTWS, ib: IB) -> None:
    spy, call, put_later = await qualified(
        ib, Stock("SPY", "SMART", "USD"), option(fake, 590.0), option(fake, 585.0, "P", fake.later_expiry)
    )
    assert (spy.conId, spy.secType, spy.primaryExchange) == (STOCK_CON_ID, "STK", "ARCA")
    assert call.conId == fake.option_con_id(590.0, "C")
    assert (call.multiplier, call.tradingClass, call.exchange) == ("100", "SPY", "SMART")
    assert call.localSymbol == f"SPY   {fake.expiry[2:]}C00590000"
    assert put_later.conId == fake.option_con_id(585.0, "P", fake.later_expiry)
    by_con_id = await qualified(ib, Contract(conId=call.conId))
    assert by_con_id[0].strike == 590.0
    errors = Errors(ib)
    missing = await ib.qualifyContractsAsync(option(fake, 590.5), Stock("QQQ", "SMART", "USD"))
    assert missing == [None, None]
    assert errors.codes() == [200, 200]
    chain_wide = await ib.reqContractDetailsAsync(Option("SPY", fake.expiry, 0.0, "C", "SMART"))
    assert len(chain_wide) == len(fake.strikes)


async def test_no_secdef_for_fails_contract_details_with_200() -> None:
    fake = FakeTWS(faults=FakeFaults(no_secdef_for={600.0}))
    await fake.start()
    ib = await connect(fake)
    try:
        errors = Errors(ib)
        result = await ib.qualifyContractsAsync(option(fake, 600.0), option(fake, 599.0))
        assert result[0] is None
        assert isinstance(result[1], Contract)
        assert errors.codes() == [200]
    finally:
        ib.disconnect()
        await fake.stop()


async def test_sec_def_opt_params(fake: FakeTWS, ib: IB) -> None:
    chains = await ib.reqSecDefOptParamsAsync("SPY", "", "STK", STOCK_CON_ID)
    assert {c.exchange for c in chains} == {"SMART", "CBOE"}
    smart = next(c for c in chains if c.exchange == "SMART")
    assert smart.tradingClass == "SPY"
    assert smart.multiplier == "100"
    # typed int in ib_async's OptionChain, but the decoder leaves it the wire string
    assert cast(Any, smart.underlyingConId) == str(STOCK_CON_ID)
    assert list(smart.expirations) == [fake.expiry, fake.later_expiry]
    assert list(smart.strikes) == fake.strikes == [float(k) for k in range(560, 621)]
    assert await ib.reqSecDefOptParamsAsync("QQQ", "", "STK", 0) == []


# ---------------------------------------------------------------------------------------------- market data


async def test_market_data_ticks_greeks_and_cancel(fake: FakeTWS, ib: IB) -> None:
    spy, call = await qualified(ib, Stock("SPY", "SMART", "USD"), option(fake, 590.0))
    stock_ticker = ib.reqMktData(spy)
    ticker = ib.reqMktData(call)
    await until(lambda: ticker.modelGreeks is not None and stock_ticker.last == 590.0)
    assert (stock_ticker.bid, stock_ticker.ask, stock_ticker.bidSize) == (589.99, 590.01, 500.0)
    assert (ticker.bid, ticker.ask) == fake.quote(590.0, "C")
    assert ticker.bid < ticker.ask
    assert ticker.bidSize == 10.0
    assert ticker.askSize == 12.0
    assert ticker.volume > 0
    assert ticker.last > 0
    assert ticker.marketDataType == 1
    greeks = ticker.modelGreeks
    assert greeks is not None
    assert greeks.undPrice == 590.0
    assert greeks.impliedVol == pytest.approx(0.14)
    assert 0.45 < (greeks.delta or 0) < 0.55
    assert ticker.bidGreeks is not None
    assert ticker.askGreeks is not None
    assert len(fake.market_data_lines) == 2

    fake.set_spot(592.0)
    await until(lambda: ticker.modelGreeks is not None and ticker.modelGreeks.undPrice == 592.0)
    assert (ticker.bid, ticker.ask) == fake.quote(590.0, "C")
    assert stock_ticker.last == 592.0
    fake.set_quote(590.0, "C", 3.10, 3.20, bid_size=5, ask_size=7)
    await until(lambda: ticker.bid == 3.10)
    assert (ticker.ask, ticker.bidSize, ticker.askSize) == (3.20, 5.0, 7.0)

    ib.cancelMktData(call)
    await until(lambda: len(fake.market_data_lines) == 1)
    assert next(iter(fake.market_data_lines.values())).secType == "STK"
    assert fake.max_lines_seen == 2


async def test_snapshot_request(fake: FakeTWS, ib: IB) -> None:
    (call,) = await qualified(ib, option(fake, 588.0, "P"))
    (ticker,) = await asyncio.wait_for(ib.reqTickersAsync(call), TIMEOUT)
    assert (ticker.bid, ticker.ask) == fake.quote(588.0, "P")
    assert fake.market_data_lines == {}
    assert fake.max_lines_seen == 0


async def test_max_tickers_gives_error_101() -> None:
    fake = FakeTWS(faults=FakeFaults(max_tickers=2))
    await fake.start()
    ib = await connect(fake)
    try:
        errors = Errors(ib)
        contracts = await qualified(ib, option(fake, 589.0), option(fake, 590.0), option(fake, 591.0))
        tickers = [ib.reqMktData(c) for c in contracts]
        await until(lambda: 101 in errors.codes())
        assert len(fake.market_data_lines) == 2
        assert fake.max_lines_seen == 2
        refused = [req for req, code, _ in errors.seen if code == 101]
        assert refused == [ib.wrapper.ticker2ReqId["mktData"][tickers[2]]]
        ib.cancelMktData(contracts[0])
        await until(lambda: len(fake.market_data_lines) == 1)
        ib.reqMktData(contracts[2])
        await until(lambda: len(fake.market_data_lines) == 2)
        assert errors.codes().count(101) == 1
    finally:
        ib.disconnect()
        await fake.stop()


async def test_competing_session_gives_10197_and_no_ticks() -> None:
    fake = FakeTWS(faults=FakeFaults(competing_session=True))
    await fake.start()
    ib = await connect(fake)
    try:
        errors = Errors(ib)
        (call,) = await qualified(ib, option(fake, 590.0))
        ticker = ib.reqMktData(call)
        await until(lambda: 10197 in errors.codes())
        fake.set_spot(591.0)
        await asyncio.sleep(0.1)
        assert ticker.modelGreeks is None
        assert ticker.bid != ticker.bid
        fake.faults.competing_session = False
        fake.set_spot(591.5)
        await until(lambda: ticker.modelGreeks is not None and ticker.modelGreeks.undPrice == 591.5)
    finally:
        ib.disconnect()
        await fake.stop()


async def test_delayed_market_data_type() -> None:
    fake = FakeTWS(live_data=False)
    await fake.start()
    ib = await connect(fake)
    try:
        errors = Errors(ib)
        (call,) = await qualified(ib, option(fake, 590.0))
        ib.reqMktData(call)
        await until(lambda: 354 in errors.codes())
        ib.cancelMktData(call)
        ib.reqMarketDataType(3)
        ticker = ib.reqMktData(call)
        await until(lambda: ticker.modelGreeks is not None and ticker.bid > 0)
        assert ticker.marketDataType == 3
    finally:
        ib.disconnect()
        await fake.stop()


# ---------------------------------------------------------------------------------------------- orders


async def test_marketable_option_limit_order_fills_with_commission(fake: FakeTWS, ib: IB) -> None:
    (call,) = await qualified(ib, option(fake, 590.0))
    commissions: list[float] = []
    ib.commissionReportEvent += lambda trade, fill, report: commissions.append(report.commission)
    seen: list[str] = []
    ib.execDetailsEvent += lambda trade, fill: seen.append(f"exec:{trade.orderStatus.status}")
    ib.orderStatusEvent += lambda trade: seen.append(f"status:{trade.orderStatus.status}")
    ask = fake.quote(590.0, "C")[1]
    trade = ib.placeOrder(call, LimitOrder("BUY", 3, ask + 0.05, orderRef="spy-0dte-1"))
    await until(lambda: trade.orderStatus.status == "Filled" and commissions == [pytest.approx(1.95)])
    assert seen == ["status:Submitted", "status:Filled", "exec:Filled"]  # default order: status first
    assert trade.orderStatus.avgFillPrice == ask  # filled at the touch, not the limit
    (fill,) = ib.fills()
    assert (fill.execution.side, fill.execution.shares, fill.execution.price) == ("BOT", 3.0, ask)
    assert fill.execution.orderRef == "spy-0dte-1"
    assert fill.execution.permId == trade.order.permId
    assert fill.contract.conId == call.conId
    (call_record,) = fake.place_order_calls
    assert (call_record.orderId, call_record.orderRef) == (trade.order.orderId, "spy-0dte-1")
    assert call_record.order.lmtPrice == pytest.approx(ask + 0.05)
    book = fake.orders[trade.order.orderId]
    assert (book.status, book.filled, book.remaining, book.orderRef) == ("Filled", 3.0, 0.0, "spy-0dte-1")
    assert fake.positions[call.conId].position == 3.0
    await until(
        lambda: [p.position for p in ib.positions()] == [3.0]
    )  # pushed to the reqPositions subscription

    sell = ib.placeOrder(call, LimitOrder("SELL", 3, 0.01, orderRef="close"))
    await until(lambda: sell.orderStatus.status == "Filled" and len(commissions) == 2)
    closing = fake.executions[-1]
    assert closing.realizedPNL is not None
    expected = 3 * 100 * (closing.price - ask) - 1.95 - 1.95
    assert closing.realizedPNL == pytest.approx(expected)
    assert ib.fills()[-1].commissionReport.realizedPNL == pytest.approx(expected)
    await until(lambda: ib.positions() == [])


async def test_resting_order_partial_fill_then_cancel(fake: FakeTWS, ib: IB) -> None:
    (put,) = await qualified(ib, option(fake, 588.0, "P"))
    bid = fake.quote(588.0, "P")[0]
    trade = ib.placeOrder(put, LimitOrder("BUY", 2, round(bid - 0.05, 2), orderRef="rest"))
    await until(lambda: trade.orderStatus.status == "Submitted")
    assert trade.fills == []
    fake.fill(trade.order.orderId, 1)
    await until(lambda: trade.orderStatus.filled == 1.0 and len(trade.fills) == 1)
    assert trade.orderStatus.status == "Submitted"
    assert trade.orderStatus.remaining == 1.0
    assert trade.fills[0].execution.price == round(bid - 0.05, 2)
    errors = Errors(ib)
    ib.cancelOrder(trade.order)
    await until(lambda: trade.orderStatus.status == "Cancelled")
    await until(lambda: 202 in errors.codes())
    assert fake.orders[trade.order.orderId].status == "Cancelled"
    with pytest.raises(ValueError, match="not open"):
        fake.fill(trade.order.orderId)
    # a cancel of a finished order is refused by the server
    ib.client.cancelOrder(trade.order.orderId)  # type: ignore[no-untyped-call]
    await until(lambda: 10148 in errors.codes())


async def test_resting_order_fills_when_the_market_comes_to_it(fake: FakeTWS, ib: IB) -> None:
    (call,) = await qualified(ib, option(fake, 592.0))
    bid, ask = fake.quote(592.0, "C")
    trade = ib.placeOrder(call, LimitOrder("BUY", 1, bid, orderRef="wait"))
    await until(lambda: trade.orderStatus.status == "Submitted")
    fake.set_quote(592.0, "C", round(bid - 0.02, 2), bid)
    await until(lambda: trade.orderStatus.status == "Filled" and len(trade.fills) == 1)
    assert trade.fills[0].execution.price == bid
    assert ask > bid
    # a modification (same orderId) to a marketable price fills
    other = ib.placeOrder(call, LimitOrder("BUY", 1, 0.01, orderRef="mod"))
    await until(lambda: other.orderStatus.status == "Submitted")
    other.order.lmtPrice = 50.0
    ib.placeOrder(call, other.order)
    await until(lambda: other.orderStatus.status == "Filled")
    assert fake.orders[other.order.orderId].lmtPrice == 50.0
    assert other.fills[0].execution.price == bid  # at the touch
    assert [c.orderId for c in fake.place_order_calls].count(other.order.orderId) == 2


async def test_bag_order_fills_per_leg_plus_the_combo(fake: FakeTWS, ib: IB) -> None:
    long_call, short_call = await qualified(ib, option(fake, 590.0), option(fake, 592.0))
    bag = Contract(
        symbol="SPY",
        secType="BAG",
        exchange="SMART",
        currency="USD",
        comboLegs=[
            ComboLeg(conId=long_call.conId, ratio=1, action="BUY", exchange="SMART"),
            ComboLeg(conId=short_call.conId, ratio=1, action="SELL", exchange="SMART"),
        ],
    )
    net_ask = round(fake.quote(590.0, "C")[1] - fake.quote(592.0, "C")[0], 2)
    commissions: list[tuple[str, float]] = []
    ib.commissionReportEvent += lambda trade, fill, rep: commissions.append(
        (fill.contract.secType, rep.commission)
    )
    ticker = ib.reqMktData(bag)
    await until(lambda: ticker.ask == net_ask)
    trade = ib.placeOrder(bag, LimitOrder("BUY", 2, net_ask, orderRef="vertical"))
    await until(lambda: trade.orderStatus.status == "Filled" and len(commissions) == 3)
    assert trade.filled() == 2.0  # ib_async counts only the BAG executions of a combo
    by_type = sorted(
        (f.contract.secType, f.contract.conId, f.execution.side, f.execution.shares) for f in trade.fills
    )
    assert by_type == [
        ("BAG", STOCK_CON_ID, "BOT", 2.0),
        ("OPT", long_call.conId, "BOT", 2.0),
        ("OPT", short_call.conId, "SLD", 2.0),
    ]
    bag_fill = next(f for f in trade.fills if f.contract.secType == "BAG")
    assert bag_fill.execution.price == pytest.approx(net_ask)
    assert sorted(commissions) == [("BAG", 0.0), ("OPT", 1.3), ("OPT", 1.3)]
    assert {f.execution.permId for f in trade.fills} == {trade.order.permId}
    positions = {p.contract.conId: p.position for p in await ib.reqPositionsAsync()}
    assert positions == {long_call.conId: 2.0, short_call.conId: -2.0}
    assert fake.place_order_calls[-1].contract.comboLegs[1].action == "SELL"


async def test_order_rejections(fake: FakeTWS, ib: IB) -> None:
    fake.faults.reject_order_refs.add("bad")
    errors = Errors(ib)
    (call,) = await qualified(ib, option(fake, 590.0))
    rejected = ib.placeOrder(call, LimitOrder("BUY", 1, 0.5, orderRef="bad"))
    off_tick = ib.placeOrder(call, LimitOrder("BUY", 1, 0.505, orderRef="tick"))
    unknown = ib.placeOrder(Contract(conId=123, secType="OPT", exchange="SMART"), LimitOrder("BUY", 1, 0.5))
    await until(lambda: all(t.orderStatus.status == "Cancelled" for t in (rejected, off_tick, unknown)))
    assert sorted(errors.codes()) == [110, 200, 201]
    assert fake.orders[rejected.order.orderId].status == "Inactive"
    assert not fake.executions


async def test_what_if_order(fake: FakeTWS, ib: IB) -> None:
    (call,) = await qualified(ib, option(fake, 590.0))
    state = await asyncio.wait_for(ib.whatIfOrderAsync(call, LimitOrder("BUY", 2, 1.5)), TIMEOUT)
    assert float(state.initMarginChange) == pytest.approx(300.0)
    assert fake.orders == {}
    assert fake.executions == []


async def test_market_order_and_ioc(fake: FakeTWS, ib: IB) -> None:
    (call,) = await qualified(ib, option(fake, 590.0))
    bid, _ = fake.quote(590.0, "C")
    market = ib.placeOrder(call, MarketOrder("SELL", 1, orderRef="mkt"))
    await until(lambda: market.orderStatus.status == "Filled")
    assert market.orderStatus.avgFillPrice == bid
    ioc = ib.placeOrder(call, LimitOrder("BUY", 1, 0.01, tif="IOC", orderRef="ioc"))
    await until(lambda: ioc.orderStatus.status == "Cancelled")


async def test_two_clients_each_hear_only_their_own_orders(fake: FakeTWS, ib: IB) -> None:
    other = await connect(fake, client_id=2)
    try:
        assert sorted(fake.connected_client_ids) == [1, 2]
        (call,) = await qualified(ib, option(fake, 590.0))
        trade = ib.placeOrder(call, LimitOrder("BUY", 1, 0.01, orderRef="mine"))
        await until(lambda: trade.orderStatus.status == "Submitted")
        assert [t.order.orderRef for t in await other.reqOpenOrdersAsync()] == []
        everyone = await other.reqAllOpenOrdersAsync()
        assert [(t.order.orderRef, t.order.clientId) for t in everyone] == [("mine", 1)]
        errors = Errors(other)
        other.client.cancelOrder(trade.order.orderId)  # type: ignore[no-untyped-call]
        await until(lambda: 10147 in errors.codes())  # not its order
        heard_by_other: list[Any] = []  # (its reqAllOpenOrders answer above did emit orderStatusEvent)
        other.orderStatusEvent += heard_by_other.append
        other.execDetailsEvent += lambda trade, fill: heard_by_other.append(fill)
        fake.fill(trade.order.orderId)
        await until(lambda: trade.orderStatus.status == "Filled")
        await asyncio.sleep(0.05)
        assert heard_by_other == []
        fills = await other.reqExecutionsAsync()
        assert [(f.execution.clientId, f.execution.orderRef) for f in fills] == [(1, "mine")]
    finally:
        other.disconnect()


async def test_client_zero_binds_and_sees_every_open_order(fake: FakeTWS, ib: IB) -> None:
    (call,) = await qualified(ib, option(fake, 590.0))
    trade = ib.placeOrder(call, LimitOrder("SELL", 1, 99.0, orderRef="resting"))
    await until(lambda: trade.orderStatus.status == "Submitted")
    zero = await connect(fake, client_id=0)  # ib_async sends reqAutoOpenOrders(True) for client 0
    try:
        assert [(t.order.orderRef, t.order.clientId) for t in zero.openTrades()] == [("resting", 1)]
    finally:
        zero.disconnect()


# ---------------------------------------------------------------------------------------------- order faults


async def test_drop_after_place_books_the_order_but_the_client_never_hears() -> None:
    fake = FakeTWS(faults=FakeFaults(drop_after_place=2))
    await fake.start()
    ib = await connect(fake)
    try:
        (call,) = await qualified(ib, option(fake, 590.0))
        ask = fake.quote(590.0, "C")[1]
        first = ib.placeOrder(call, LimitOrder("BUY", 1, ask, orderRef="one"))
        await until(lambda: first.orderStatus.status == "Filled")
        second = ib.placeOrder(call, LimitOrder("BUY", 1, ask, orderRef="two"))
        await until(lambda: not ib.isConnected())
        assert second.fills == []
        assert second.orderStatus.status == "PendingSubmit"
        assert fake.orders[second.order.orderId].status == "Filled"
        ib = await connect(fake)
        refs = sorted(f.execution.orderRef for f in await ib.reqExecutionsAsync())
        assert refs == ["one", "two"]
        assert sum(p.position for p in ib.positions()) == 2.0
    finally:
        ib.disconnect()
        await fake.stop()


async def test_duplicate_reports_are_sent_twice(fake: FakeTWS, ib: IB) -> None:
    fake.faults.duplicate_reports = True
    (call,) = await qualified(ib, option(fake, 590.0))
    execs: list[str] = []
    commissions: list[str] = []
    ib.execDetailsEvent += lambda trade, fill: execs.append(fill.execution.execId)
    ib.commissionReportEvent += lambda trade, fill, rep: commissions.append(rep.execId)
    trade = ib.placeOrder(call, LimitOrder("BUY", 1, fake.quote(590.0, "C")[1], orderRef="dup"))
    await until(lambda: trade.orderStatus.status == "Filled" and len(commissions) == 2)
    # ib_async drops the repeated execDetails (same execId) but emits the repeated commission report
    assert len(execs) == 1
    assert len(ib.fills()) == 1
    assert commissions == [execs[0], execs[0]]


async def test_reordered_reports_put_the_fill_before_the_status(fake: FakeTWS, ib: IB) -> None:
    fake.faults.reorder_reports = True
    (call,) = await qualified(ib, option(fake, 590.0))
    seen: list[str] = []
    ib.execDetailsEvent += lambda trade, fill: seen.append(f"exec:{trade.orderStatus.status}")
    ib.orderStatusEvent += lambda trade: seen.append(f"status:{trade.orderStatus.status}")
    trade = ib.placeOrder(call, LimitOrder("BUY", 1, fake.quote(590.0, "C")[1], orderRef="late"))
    await until(lambda: trade.orderStatus.status == "Filled")
    assert seen == ["status:Submitted", "exec:Submitted", "status:Filled"]


# ---------------------------------------------------------------------------------------------- raw protocol


async def _raw_session(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    hello = b"v157..178"
    writer.write(b"API\0" + struct.pack(">I", len(hello)) + hello)
    await _read_fields(reader)  # [version, time]
    _write_fields(writer, "71", "2", "33", "")
    return reader, writer


def _write_fields(writer: asyncio.StreamWriter, *fields: str) -> None:
    payload = "".join(f + "\0" for f in fields).encode()
    writer.write(struct.pack(">I", len(payload)) + payload)


async def _read_fields(reader: asyncio.StreamReader) -> list[str]:
    (size,) = struct.unpack(">I", await asyncio.wait_for(reader.readexactly(4), TIMEOUT))
    return (await reader.readexactly(size)).decode().split("\0")[:-1]


async def _read_until(reader: asyncio.StreamReader, msg_id: str) -> list[str]:
    while True:
        fields = await _read_fields(reader)
        if fields[0] == msg_id:
            return fields


async def test_unknown_and_malformed_messages_never_crash_the_server(fake: FakeTWS) -> None:
    reader, writer = await _raw_session(fake.port)
    try:
        assert (await _read_until(reader, "9"))[2].isdigit()
        _write_fields(writer, "999", "1", "x")  # unknown message id: ignored
        _write_fields(writer, "3", "5", "0", "SPY")  # truncated placeOrder
        _write_fields(writer, "notanumber")
        error = await _read_until(reader, "4")
        while error[3] != "320":
            error = await _read_until(reader, "4")
        _write_fields(writer, "49", "1")  # still serving
        assert abs(int((await _read_until(reader, "49"))[2]) - time.time()) < 5
    finally:
        writer.close()
    # a client that does not speak the protocol is dropped; the server keeps accepting
    bad_reader, bad_writer = await asyncio.open_connection("127.0.0.1", fake.port)
    bad_writer.write(b"GET / HTTP/1.0\r\n\r\n")
    assert await asyncio.wait_for(bad_reader.read(), TIMEOUT) == b""
    bad_writer.close()
    ib = await connect(fake, client_id=4)
    assert ib.isConnected()
    ib.disconnect()


# ---------------------------------------------------------------------------------------------- threads


def test_server_in_its_own_thread_for_synchronous_tests() -> None:
    with FakeTWSThread(FakeTWS(spot=600.0)) as th:

        async def client() -> None:
            ib = await connect(th.fake)
            try:
                (call,) = await qualified(ib, option(th.fake, 600.0))
                ticker = ib.reqMktData(call)
                await until(lambda: ticker.modelGreeks is not None)
                th.call(th.fake.set_spot, 601.0)
                await until(lambda: ticker.modelGreeks is not None and ticker.modelGreeks.undPrice == 601.0)
                th.run(th.fake.drop_connections())
                await until(lambda: not ib.isConnected())
            finally:
                ib.disconnect()

        asyncio.run(client())
        with pytest.raises(RuntimeError, match="thread"):
            th.fake.set_spot(602.0)
        assert th.fake.connections == 1


async def test_pacing_limit_closes_a_connection_that_floods() -> None:
    fake = FakeTWS(faults=FakeFaults(pacing_limit=20))
    await fake.start()
    ib = await connect(fake)  # the startup sync is far below 20 messages
    try:
        errors = Errors(ib)
        ib.client.MaxRequests = 0  # switch off ib_async's own 45/s throttle
        for _ in range(30):
            ib.client.reqCurrentTime()  # type: ignore[no-untyped-call]
        await until(lambda: not ib.isConnected())
        assert 100 in errors.codes()
    finally:
        ib.disconnect()
        await fake.stop()
