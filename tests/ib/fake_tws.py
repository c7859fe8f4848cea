"""A fake TWS / IB Gateway speaking the real IB socket protocol to the unmodified ``ib_async`` client.

Interface: ``/work/helpers/ib_contract.md`` (FakeFaults, FakeTWS). The server is an ``asyncio.start_server``
on 127.0.0.1 running in the test's event loop; it accepts any number of sequential or simultaneous client
connections and keeps its order book, executions and positions across them, like IB's servers.

Wire format (as ib_async 2.1.0 reads and writes it): after the client's ``API\\0`` + length-prefixed
``v157..178``, every message is a 4-byte big-endian length followed by NUL-terminated text fields, the
first being the message id. The server answers the handshake with ``[server version, connection time]``
and, on ``startApi`` (71), with managedAccounts (15), nextValidId (9) and the farm-status notices 2104,
2106, 2158 (warnings). The negotiated version is ``min(client max, server_version)`` (default 178, the
highest ib_async offers); fields whose presence depends on the version follow ib_async's decoder for
every version in 157..178 (tested at 157, 163, 165, 170, 176 and 178).

Requests handled (id): reqMktData 1 (STK, OPT and BAG; snapshots end with tickSnapshotEnd), cancelMktData 2,
placeOrder 3 (LMT and MKT; OPT, STK and BAG with combo legs; whatIf), cancelOrder 4, reqOpenOrders 5,
reqAccountUpdates 6, reqExecutions 7, reqIds 8, reqContractDetails 9, reqAutoOpenOrders 15,
reqAllOpenOrders 16, reqManagedAccts 17, reqCurrentTime 49, reqGlobalCancel 58, reqMarketDataType 59,
reqPositions 61 (a subscription: later position changes are pushed), reqAccountSummary 62/63,
cancelPositions 64, startApi 71, reqAccountUpdatesMulti 76/77, reqSecDefOptParams 78, reqCompletedOrders 99.
Any other id is logged and ignored; a malformed request gets error 320, never a crash.

Messages sent: tickPrice 1 (bid 1 / ask 2 / last 4 with sizes, close 9; delayed 66/67/68/75 when delayed
data is served), tickSize 2 (volume 8 / 74), orderStatus 3, error 4 (with advancedOrderRejectJson from
v166), openOrder 5, updateAccountValue 6, updatePortfolio 7, updateAccountTime 8, nextValidId 9,
contractDetails 10, execDetails 11, managedAccounts 15, tickOptionComputation 21 (bid 10, ask 11,
model 13; delayed 80/81/83), currentTime 49, contractDetailsEnd 52, openOrderEnd 53,
accountDownloadEnd 54, execDetailsEnd 55, tickSnapshotEnd 57, marketDataType 58, commissionReport 59,
position 61, positionEnd 62, accountSummary 63/64, accountUpdateMulti 73/74,
securityDefinitionOptionParameter 75/76, tickReqParams 81, completedOrder 101, completedOrdersEnd 102.

Market model: the stock quotes spot -/+ 0.01; options are Black-Scholes (r = q = 0) on a simple smile,
quoted mid -/+ max(0.01, 2% of mid) on a 0.01 tick, in trading time (6.5 h days, 252 a year): today's
expiry has ``hours_to_close`` left, a later one 6.5 h more per calendar day. Options are SPY, exchange
SMART, trading class SPY, multiplier 100, and have the conId ``option_con_id(strike, right, expiry)`` = 600_000_000 + 10_000_000 * expiry index
+ 10 * round(strike * 100) + (1 for C, 2 for P). The stock's conId is 756733 (SPY's real one).
reqSecDefOptParams answers one chain per exchange, SMART and CBOE (callers pick SMART). A new market data
line gets marketDataType, tickReqParams, then its ticks; a duplicate live reqId gets error 322, a cancel
of an unknown one error 300, a contract that is unknown or ambiguous error 200.

Orders: accepted orders get openOrder + orderStatus ``Submitted``. When ``auto_fill``, a marketable order
(BUY limit >= ask, SELL limit <= bid, or MKT; for BAG the net touch of the legs) fills completely at the
touch on placement or on a later set_spot / set_quote; a non-marketable IOC is cancelled. ``fill()``
executes by hand. A fill sends, to the placing client if connected: orderStatus, openOrder (new status),
execDetails (reqId -1) and commissionReport, in that order (``reorder_reports`` puts execDetails +
commissionReport first). A BAG fill is one execution per leg (secType OPT, exchange CBOE, leg price)
plus one for the combo (secType BAG, net price, commission 0), all with the order's orderId and permId;
this is what ib_async expects (``Trade.filled()`` of a BAG counts only the BAG executions). Commission:
0.65 per option contract. Rejections: unknown contract 200, orderRef in ``reject_order_refs`` 201,
unsupported order type or account 201, limit price off the 0.01 tick 110, quantity <= 0 434, reused
orderId of another client or of a finished order 103; rejected orders are booked with status
``Inactive`` and are in no report. cancelOrder: orderStatus ``Cancelled`` then error 202; unknown order
10147, finished order 10148. Order messages go only to connections with the placing clientId.
reqExecutions returns every execution matching the filter (clientId 0 = all clients) with its
commissionReport. reqPositions includes positions closed today (quantity 0).

Faults (``FakeFaults``, read on each use so a test may change them mid-run): as in the contract;
``drop_after_place``: the Nth placeOrder (all clients; whatIf ones not counted) is booked and processed (it may fill) with every
outgoing message suppressed, then every client socket is closed. ``competing_session``: error 10197 for
every reqMktData and no ticks while it is on (lines stay registered; a snapshot gets no
tickSnapshotEnd). ``no_secdef_for`` also applies to
reqMktData and placeOrder (error 200). ``pacing_limit`` (addition): a connection sending more messages than
that within one second gets error 100 and is closed, like TWS's 50 msg/s rule.

Additions to the contract: ``cancel_order_calls`` and the ``lose_cancels`` fault, ``server_version``, ``later_expiry``, ``hours_to_close`` and ``live_data``
keyword arguments, ``set_quote(..., expiry=)`` (``live_data=False``: reqMktData gives error 354 unless reqMarketDataType 3/4 asked for
delayed data, which is then served with delayed tick types); ``quote()``, ``option_con_id()``,
``stock_con_id``, ``expiries``, ``strikes``, ``spot``, ``positions``, ``connected_client_ids``,
``accepted_client_ids`` (every startApi that succeeded, in order); the dataclasses below; ``set_quote``
overrides last until the next ``set_spot``; ``FakeTWSThread`` (the server on its own loop in a thread, for
synchronous tests: ``with FakeTWSThread() as th: th.call(th.fake.set_spot, 591.0)``). FakeTWS's methods
must be called from the thread of the loop it runs in (a RuntimeError says so otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

SERVER_VERSION = 178
"""Highest server version spoken (ib_async 2.1.0 asks for v157..178; 178 is what a current TWS negotiates)."""
MIN_SERVER_VERSION = 157

UNSET_DOUBLE_STR = "1.7976931348623157E308"  # IB's "no value" double (Double.MAX_VALUE) as TWS writes it
STOCK_CON_ID = 756733
TICK = 0.01
COMMISSION_PER_CONTRACT = 0.65
EASTERN = ZoneInfo("US/Eastern")
MAX_MESSAGE = 1 << 24

_log = logging.getLogger("tests.ib.fake_tws")
T = TypeVar("T")

OPTION_EXCHANGES = (
    "SMART,AMEX,CBOE,PHLX,PSE,ISE,BOX,BATS,NASDAQOM,CBOE2,NASDAQBX,MIAX,GEMINI,EDGX,MERCURY,PEARL,"
    "EMERALD,MEMX,IBUSOPT"
)
ORDER_TYPES = "ACTIVETIM,AD,ADJUST,ALERT,ALLOC,AVGCOST,BASKET,COND,CONDORDER,DAY,DEACT,GAT,GTC,GTD,IOC,LMT,MKT,NONALGO,OCA,WHATIF"
PRICE_TICKS_LIVE = {"bid": 1, "ask": 2, "last": 4, "close": 9, "volume": 8}
PRICE_TICKS_DELAYED = {"bid": 66, "ask": 67, "last": 68, "close": 75, "volume": 74}
GREEK_TICKS_LIVE = {"bid": 10, "ask": 11, "model": 13}
GREEK_TICKS_DELAYED = {"bid": 80, "ask": 81, "model": 83}


@dataclass
class FakeFaults:
    """Scripted faults; a test may change them while the server runs (they are read on each use).

    - client_ids_in_use: startApi with one of these -> error 326, socket closed
    - competing_session: error 10197 on every reqMktData, and no ticks flow while True
    - max_tickers: reqMktData beyond this many live lines (all clients) -> error 101 for that reqId
    - drop_after_place: the Nth placeOrder (1-based, all clients) is booked and processed silently, then
      every client socket is closed
    - duplicate_reports: every orderStatus / execDetails / commissionReport is sent twice
    - reorder_reports: a fill's execDetails + commissionReport are sent before its orderStatus / openOrder
    - reject_order_refs: placeOrder with one of these orderRefs -> error 201 (rejected)
    - no_secdef_for: strikes whose contract details / market data / orders fail with error 200
    - pacing_limit (addition): more messages than this within 1 s on one connection -> error 100, closed
    - lose_cancels (addition): cancelOrder is recorded in ``cancel_order_calls`` and otherwise dropped, as
      a cancel lost while the Gateway had no link to IB (1100); the order stays working
    - commission_delay_s (addition): a fill's commissionReport messages are sent this many seconds after
      its execDetails (to the order's client connections at that time) instead of right after them, as
      IB does when its commission engine lags; reqExecutions still answers with the commission (it is
      known at the server). None: sent at once, as before
    """

    client_ids_in_use: set[int] = field(default_factory=set)
    competing_session: bool = False
    max_tickers: int | None = None
    drop_after_place: int | None = None
    duplicate_reports: bool = False
    reorder_reports: bool = False
    reject_order_refs: set[str] = field(default_factory=set)
    no_secdef_for: set[float] = field(default_factory=set)
    pacing_limit: int | None = None
    lose_cancels: bool = False
    commission_delay_s: float | None = None


@dataclass
class FakeComboLeg:
    conId: int
    ratio: int
    action: str  # BUY or SELL
    exchange: str = "SMART"


@dataclass
class FakeContract:
    """A contract as the server knows it (attribute names follow ib_async's ``Contract``)."""

    conId: int
    symbol: str
    secType: str  # STK, OPT or BAG
    lastTradeDateOrContractMonth: str = ""
    strike: float = 0.0
    right: str = ""  # C or P for options
    multiplier: str = ""
    exchange: str = "SMART"
    currency: str = "USD"
    localSymbol: str = ""
    tradingClass: str = ""
    primaryExchange: str = ""
    comboLegs: list[FakeComboLeg] = field(default_factory=list)


@dataclass
class FakeOrderRequest:
    """The order fields of one placeOrder message, as received."""

    action: str
    totalQuantity: float
    orderType: str
    lmtPrice: float | None
    auxPrice: float | None
    tif: str
    account: str
    orderRef: str
    transmit: bool
    parentId: int
    whatIf: bool


@dataclass
class PlaceOrderCall:
    """One placeOrder received (``FakeTWS.place_order_calls``)."""

    orderId: int
    orderRef: str
    contract: FakeContract
    order: FakeOrderRequest
    clientId: int
    time: float  # time.monotonic()


@dataclass
class BookOrder:
    """The server's order book entry (``FakeTWS.orders``), kept across client reconnects."""

    orderId: int
    clientId: int
    permId: int
    contract: FakeContract
    action: str
    totalQuantity: float
    orderType: str
    lmtPrice: float | None
    tif: str
    account: str
    orderRef: str
    status: str = "PreSubmitted"  # Submitted, Filled, Cancelled, Inactive (rejected)
    filled: float = 0.0
    remaining: float = 0.0
    avgFillPrice: float = 0.0
    lastFillPrice: float = 0.0
    completedTime: str = ""
    completedStatus: str = ""

    @property
    def active(self) -> bool:
        return self.status in ("PreSubmitted", "Submitted")


@dataclass
class FakeExecution:
    """One execution (``FakeTWS.executions``); a BAG fill makes one per leg (OPT) plus one for the combo (BAG)."""

    execId: str
    orderId: int
    permId: int
    clientId: int
    contract: FakeContract
    exchange: str
    side: str  # BOT or SLD
    shares: float
    price: float
    cumQty: float
    avgPrice: float
    orderRef: str
    time: dt.datetime  # UTC
    commission: float
    realizedPNL: float | None  # None for an opening execution


@dataclass
class FakePosition:
    """Position by conId (``FakeTWS.positions``); avgCost includes the multiplier, like IB."""

    contract: FakeContract
    position: float = 0.0
    avgCost: float = 0.0
    realizedPNL: float = 0.0


@dataclass
class _Quote:
    bid: float
    ask: float
    bid_size: float
    ask_size: float
    last: float | None = None
    last_size: float = 0.0
    close: float | None = None
    volume: float = 0.0
    iv: float | None = None
    delta: float = 0.0
    gamma: float = 0.0
    vega: float = 0.0
    theta: float = 0.0
    und: float = 0.0


class _Malformed(Exception):
    """A request whose fields cannot be read."""


class _Fields:
    """Cursor over a received message's fields (the message id is field 0)."""

    def __init__(self, fields: list[str], start: int = 1) -> None:
        self.f = fields
        self.i = start

    def text(self) -> str:
        if self.i >= len(self.f):
            raise _Malformed(f"message too short ({len(self.f)} fields)")
        value = self.f[self.i]
        self.i += 1
        return value

    def integer(self, default: int = 0) -> int:
        s = self.text()
        if not s:
            return default
        try:
            return int(float(s)) if "." in s or "e" in s.lower() else int(s)
        except ValueError as exc:
            raise _Malformed(f"bad int {s!r}") from exc

    def number(self) -> float | None:
        s = self.text()
        if not s:
            return None
        if s == "Infinite":
            return math.inf
        try:
            value = float(s)
        except ValueError as exc:
            raise _Malformed(f"bad float {s!r}") from exc
        return None if value >= 1.7e308 else value

    def flag(self) -> bool:
        return self.text() not in ("", "0", "false", "False")

    def skip(self, n: int) -> None:
        for _ in range(n):
            self.text()


@dataclass
class _Query:
    conId: int
    symbol: str
    secType: str
    expiry: str
    strike: float
    right: str
    multiplier: str
    exchange: str
    primaryExchange: str
    currency: str
    localSymbol: str
    tradingClass: str

    @classmethod
    def read(cls, r: _Fields) -> _Query:
        return cls(
            conId=r.integer(),
            symbol=r.text(),
            secType=r.text(),
            expiry=r.text(),
            strike=r.number() or 0.0,
            right=r.text(),
            multiplier=r.text(),
            exchange=r.text(),
            primaryExchange=r.text(),
            currency=r.text(),
            localSymbol=r.text(),
            tradingClass=r.text(),
        )


def _norm_right(right: str) -> str:
    r = right.strip().upper()
    return {"CALL": "C", "PUT": "P"}.get(r, r if r in ("C", "P") else "")


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isinf(value):
            return "Infinite"
        return repr(value)
    return str(value)


def _qty(value: float) -> str:
    """A size/quantity as TWS writes Decimals: no trailing .0."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _ncdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _npdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _round_tick(x: float) -> float:
    return round(round(x / TICK) * TICK, 2)


def _next_weekday(day: dt.date) -> dt.date:
    day += dt.timedelta(days=1)
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return day


class _Conn:
    """One client socket."""

    def __init__(self, server: FakeTWS, writer: asyncio.StreamWriter, number: int) -> None:
        self.server = server
        self.writer = writer
        self.number = number
        self.version = 0
        self.client_id: int | None = None
        self.ready = False
        self.closed = False
        self.lines: dict[int, FakeContract] = {}
        self.md_type = 1
        self.positions_sub = False
        self.account_sub = False
        self.recent: list[float] = []
        self.task: asyncio.Task[None] | None = None

    def send(self, *fields: Any) -> None:
        if self.closed or self.server._mute or self.writer.is_closing():
            return
        payload = "".join(_fmt(f) + "\0" for f in fields).encode()
        self.writer.write(struct.pack(">I", len(payload)) + payload)

    def close(self) -> None:
        self.closed = True
        self.ready = False
        with contextlib.suppress(Exception):
            self.writer.close()


class FakeTWS:
    """A TWS API server on 127.0.0.1 for tests; see the module docstring for the protocol covered."""

    def __init__(
        self,
        *,
        account: str = "DU1234567",
        symbol: str = "SPY",
        spot: float = 590.0,
        expiry: str | None = None,
        strikes: Iterable[float] | None = None,
        faults: FakeFaults | None = None,
        auto_fill: bool = True,
        server_version: int = SERVER_VERSION,
        later_expiry: str | None = None,
        hours_to_close: float = 4.0,
        live_data: bool = True,
    ) -> None:
        """``expiry`` defaults to today (YYYYMMDD, New York); ``later_expiry`` to the next weekday after it;
        ``strikes`` to round(spot)-30 .. round(spot)+30 step 1; ``server_version`` is the highest version
        offered (157..178); ``hours_to_close`` is the time to the 16:00 expiry used to price today's options;
        ``live_data=False`` serves only delayed data (after reqMarketDataType 3 or 4)."""
        if not MIN_SERVER_VERSION <= server_version <= SERVER_VERSION:
            raise ValueError(f"server_version must be in {MIN_SERVER_VERSION}..{SERVER_VERSION}")
        if not (math.isfinite(spot) and spot > 0):
            raise ValueError(f"spot must be a positive number, got {spot!r}")
        self.account = account
        self.symbol = symbol.upper()
        self.spot = float(spot)
        today = dt.datetime.now(EASTERN).date()
        self.expiry = expiry or today.strftime("%Y%m%d")
        exp_day = dt.datetime.strptime(self.expiry, "%Y%m%d").date()
        self.later_expiry = later_expiry or _next_weekday(exp_day).strftime("%Y%m%d")
        self.expiries: list[str] = [self.expiry, self.later_expiry]
        center = round(self.spot)
        self.strikes: list[float] = sorted(
            float(s) for s in (strikes if strikes is not None else range(center - 30, center + 31))
        )
        self.faults = faults if faults is not None else FakeFaults()
        self.auto_fill = auto_fill
        self.server_version = server_version
        self.hours_to_close = hours_to_close
        self.live_data = live_data
        self.stock_con_id = STOCK_CON_ID

        self.port = 0
        self.max_lines_seen = 0
        self.place_order_calls: list[PlaceOrderCall] = []
        self.cancel_order_calls: list[int] = []  # addition: the orderId of every cancelOrder received
        self.orders: dict[int, BookOrder] = {}
        self.executions: list[FakeExecution] = []
        self.positions: dict[int, FakePosition] = {}
        self.connections = 0
        self.request_times: list[float] = []
        self.accepted_client_ids: list[int] = []
        self.cash = 1_000_000.0

        self._server: asyncio.Server | None = None
        self._thread_id: int | None = None
        self._conns: list[_Conn] = []
        self._mute = False
        self._place_count = 0
        self._perm_seq = 1_900_000_000
        self._exec_seq = 0
        self._next_order_id = 1
        self._overrides: dict[int, tuple[float, float, float, float]] = {}
        self._stock_volume = 1_000_000.0
        self._contracts: dict[int, FakeContract] = {}
        self._stock = FakeContract(
            conId=STOCK_CON_ID,
            symbol=self.symbol,
            secType="STK",
            exchange="SMART",
            currency="USD",
            localSymbol=self.symbol,
            tradingClass=self.symbol,
            primaryExchange="ARCA",
        )
        self._contracts[STOCK_CON_ID] = self._stock
        for exp in self.expiries:
            for k in self.strikes:
                for right in ("C", "P"):
                    c = self._make_option(exp, k, right)
                    self._contracts[c.conId] = c
        self._handlers: dict[int, Callable[[_Conn, _Fields], None]] = {
            1: self._on_req_mkt_data,
            2: self._on_cancel_mkt_data,
            3: self._on_place_order,
            4: self._on_cancel_order,
            5: self._on_req_open_orders,
            6: self._on_req_account_updates,
            7: self._on_req_executions,
            8: self._on_req_ids,
            9: self._on_req_contract_details,
            15: self._on_req_auto_open_orders,
            16: self._on_req_all_open_orders,
            17: self._on_req_managed_accts,
            49: self._on_req_current_time,
            58: self._on_req_global_cancel,
            59: self._on_req_market_data_type,
            61: self._on_req_positions,
            62: self._on_req_account_summary,
            63: self._on_ignore,  # cancelAccountSummary
            64: self._on_cancel_positions,
            76: self._on_req_account_updates_multi,
            77: self._on_ignore,  # cancelAccountUpdatesMulti
            78: self._on_req_sec_def_opt_params,
            99: self._on_req_completed_orders,
        }

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> int:
        """Listen on 127.0.0.1:0; returns the port (also ``self.port``)."""
        self._thread_id = threading.get_ident()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Close every client socket and the listening socket."""
        if self._server is not None:
            self._server.close()
        await self.drop_connections()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def __aenter__(self) -> FakeTWS:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _check_thread(self) -> None:
        if self._thread_id is not None and threading.get_ident() != self._thread_id:
            raise RuntimeError(
                "FakeTWS must be driven from the thread of the event loop it runs in "
                "(from another thread use FakeTWSThread.call)"
            )

    # ------------------------------------------------------------------ observation

    @property
    def market_data_lines(self) -> dict[int, Any]:
        """Live reqMktData subscriptions of all connected clients: reqId -> FakeContract."""
        lines: dict[int, Any] = {}
        for conn in self._conns:
            lines.update(conn.lines)
        return lines

    @property
    def connected_client_ids(self) -> list[int]:
        """clientIds of the API sessions currently up (addition)."""
        return [c.client_id for c in self._conns if c.ready and c.client_id is not None]

    def option_con_id(self, strike: float, right: str, expiry: str | None = None) -> int:
        """The deterministic conId of an option (addition)."""
        exp = expiry or self.expiry
        r = _norm_right(right)
        if exp not in self.expiries or not r:
            raise ValueError(f"no such option: {exp} {strike} {right}")
        return (
            600_000_000
            + 10_000_000 * self.expiries.index(exp)
            + 10 * round(strike * 100)
            + (1 if r == "C" else 2)
        )

    def quote(self, strike: float, right: str, expiry: str | None = None) -> tuple[float, float]:
        """Current (bid, ask) of an option (addition)."""
        c = self._contracts.get(self.option_con_id(strike, right, expiry))
        if c is None:
            raise ValueError(f"no such option: {expiry or self.expiry} {strike} {right}")
        q = self._quote(c)
        return q.bid, q.ask

    # ------------------------------------------------------------------ market

    def set_spot(self, price: float) -> None:
        """Move the underlying, re-quote every option from the model (dropping set_quote overrides), push
        ticks to every live line, and fill resting orders that became marketable (when auto_fill)."""
        self._check_thread()
        if not (math.isfinite(price) and price > 0):
            raise ValueError(f"spot must be a positive number, got {price!r}")
        self.spot = float(price)
        self._overrides.clear()
        self._stock_volume += 100
        self._push_all_lines(None)
        self._fill_marketable()

    def set_quote(
        self,
        strike: float,
        right: str,
        bid: float,
        ask: float,
        bid_size: int = 10,
        ask_size: int = 10,
        expiry: str | None = None,
    ) -> None:
        """Override one option's quote (today's expiry unless ``expiry``, an addition) until the next
        set_spot; pushes ticks and fills resting orders that became marketable (when auto_fill). A bid of 0
        with size 0 is "no bid" (ib_async shows NaN)."""
        self._check_thread()
        if not (math.isfinite(bid) and math.isfinite(ask)) or bid < 0 or ask < bid:
            raise ValueError(f"bad quote bid={bid!r} ask={ask!r}")
        if bid_size < 0 or ask_size < 0:
            raise ValueError(f"bad sizes {bid_size!r} / {ask_size!r}")
        con_id = self.option_con_id(strike, right, expiry)
        if con_id not in self._contracts:
            raise ValueError(f"no such option: {expiry or self.expiry} {strike} {right}")
        self._overrides[con_id] = (float(bid), float(ask), float(bid_size), float(ask_size))
        self._push_all_lines(con_id)
        self._fill_marketable()

    # ------------------------------------------------------------------ connectivity faults

    async def drop_connections(self) -> None:
        """Close every client socket (TCP FIN) and wait until the server has forgotten them."""
        self._check_thread()
        conns = list(self._conns)
        for conn in conns:
            conn.close()
        tasks = [c.task for c in conns if c.task is not None and c.task is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        for conn in conns:
            self._forget(conn)

    def send_error(self, code: int, msg: str, req_id: int = -1) -> None:
        """Send an error message to every connected client (1100, 1101, 1102, 2104, ...)."""
        self._check_thread()
        for conn in self._conns:
            if conn.ready:
                self._error(conn, req_id, code, msg)

    # ------------------------------------------------------------------ orders

    def fill(self, order_id: int, quantity: int | None = None, price: float | None = None) -> None:
        """Execute (part of) an open order: orderStatus, openOrder, execDetails, commissionReport to its
        client if connected. Defaults: the whole remaining quantity at the limit price (touch for MKT)."""
        self._check_thread()
        order = self.orders.get(order_id)
        if order is None or not order.active:
            raise ValueError(f"order {order_id} is not open")
        qty = order.remaining if quantity is None else float(quantity)
        if not 0 < qty <= order.remaining + 1e-9:
            raise ValueError(f"fill quantity {quantity} outside 0..{order.remaining}")
        if price is None:
            price = order.lmtPrice if order.lmtPrice is not None else self._touch(order)[0]
        if price is None or not math.isfinite(price):
            raise ValueError(f"no price to fill order {order_id} at")
        self._execute(order, qty, float(price))

    # ------------------------------------------------------------------ connection handling

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = _Conn(self, writer, self.connections)
        conn.task = asyncio.current_task()
        self._conns.append(conn)
        try:
            if await reader.readexactly(4) != b"API\0":
                _log.warning("connection %d: no API prefix, closing", conn.number)
                return
            hello = await self._read_message(reader)
            if not self._handshake(conn, hello.decode(errors="replace")):
                return
            while not conn.closed:
                payload = await self._read_message(reader)
                fields = payload.decode(errors="replace").split("\0")
                if fields and fields[-1] == "":
                    fields.pop()
                now = time.monotonic()
                self.request_times.append(now)
                if self._over_pacing(conn, now):
                    break
                self._dispatch(conn, fields)
        except (asyncio.IncompleteReadError, ConnectionError, _Malformed):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("connection %d: unexpected failure", conn.number)
        finally:
            conn.close()
            self._forget(conn)

    async def _read_message(self, reader: asyncio.StreamReader) -> bytes:
        (size,) = struct.unpack(">I", await reader.readexactly(4))
        if size > MAX_MESSAGE:
            raise _Malformed(f"message of {size} bytes")
        return await reader.readexactly(size)

    def _over_pacing(self, conn: _Conn, now: float) -> bool:
        conn.recent = [t for t in conn.recent if now - t < 1.0]
        conn.recent.append(now)
        limit = self.faults.pacing_limit
        if limit is None or len(conn.recent) <= limit:
            return False
        _log.warning("connection %d: %d messages within 1 s, closing", conn.number, len(conn.recent))
        self._error(
            conn,
            -1,
            100,
            f"Max rate of messages per second has been exceeded:max={limit} rec={len(conn.recent)}",
        )
        conn.close()
        return True

    def _forget(self, conn: _Conn) -> None:
        if conn in self._conns:
            self._conns.remove(conn)
        conn.lines.clear()

    def _handshake(self, conn: _Conn, hello: str) -> bool:
        text = hello.split(" ", 1)[0].strip()
        try:
            if not text.startswith("v"):
                raise ValueError(text)
            lo_s, _, hi_s = text[1:].partition("..")
            lo = int(lo_s)
            hi = int(hi_s) if hi_s else lo
        except ValueError:
            _log.warning("connection %d: bad version range %r", conn.number, hello)
            return False
        version = min(hi, self.server_version)
        if version < max(lo, MIN_SERVER_VERSION):
            _log.warning("connection %d: no common version in %r", conn.number, hello)
            return False
        conn.version = version
        now = dt.datetime.now(EASTERN)
        conn.send(version, now.strftime("%Y%m%d %H:%M:%S ") + (now.tzname() or "EST"))
        return True

    def _dispatch(self, conn: _Conn, fields: list[str]) -> None:
        try:
            msg_id = int(fields[0])
        except (ValueError, IndexError):
            _log.warning("connection %d: unreadable message %r", conn.number, fields[:3])
            return
        try:
            if msg_id == 71:
                self._on_start_api(conn, _Fields(fields))
                return
            if not conn.ready:
                _log.warning("connection %d: message %d before startApi ignored", conn.number, msg_id)
                return
            handler = self._handlers.get(msg_id)
            if handler is None:
                _log.info("connection %d: unsupported message id %d ignored: %r", conn.number, msg_id, fields)
                return
            handler(conn, _Fields(fields))
        except _Malformed as exc:
            _log.warning("connection %d: malformed message %d: %s", conn.number, msg_id, exc)
            self._error(conn, -1, 320, f"Server error when reading an API client request. {exc}")
        except Exception as exc:
            _log.exception("connection %d: handling message %d failed", conn.number, msg_id)
            self._error(conn, -1, 321, f"Server error when validating an API client request. {exc!r}")
        finally:
            self._mute = False

    # ------------------------------------------------------------------ encoders

    def _error(self, conn: _Conn, req_id: int, code: int, msg: str, advanced: str = "") -> None:
        fields: list[Any] = [4, 2, req_id, code, msg]
        if conn.version >= 166:
            fields.append(advanced)
        conn.send(*fields)

    def _send_order_msg(self, conn: _Conn, *fields: Any) -> None:
        """orderStatus / execDetails / commissionReport (sent twice under duplicate_reports)."""
        conn.send(*fields)
        if self.faults.duplicate_reports:
            conn.send(*fields)

    def _contract_details(self, conn: _Conn, req_id: int, c: FakeContract) -> None:
        is_opt = c.secType == "OPT"
        head: list[Any] = [10] if conn.version >= 164 else [10, 8]
        fields: list[Any] = [
            *head,
            req_id,
            c.symbol,
            c.secType,
            c.lastTradeDateOrContractMonth,
            c.strike,
            c.right,
            c.exchange,
            c.currency,
            c.localSymbol,
            c.tradingClass,  # marketName
            c.tradingClass,
            c.conId,
            TICK,
        ]
        if conn.version < 164:
            fields.append(1)  # mdSizeMultiplier (obsolete)
        day = self.expiry
        fields += [
            c.multiplier,
            ORDER_TYPES,
            OPTION_EXCHANGES if is_opt else "SMART,AMEX,NYSE,CBOE,PHLX,ISE,CHX,ARCA,NASDAQ,BATS,IEX",
            1,  # priceMagnifier
            STOCK_CON_ID if is_opt else 0,  # underConId
            "SPDR S&P 500 ETF TRUST",
            "" if is_opt else "ARCA",
            c.lastTradeDateOrContractMonth[:6],
            "",
            "",
            "",
            "US/Eastern",
            f"{day}:0930-{day}:1600",
            f"{day}:0930-{day}:1600",
            "",  # evRule
            "",  # evMultiplier
            0,  # secIdList
            1,  # aggGroup
            c.symbol if is_opt else "",
            "STK" if is_opt else "",
            "32,32" if is_opt else "26,26",
            c.lastTradeDateOrContractMonth,
            "" if is_opt else "ETF",
        ]
        if conn.version == 163:
            fields.append(1)
        if conn.version >= 164:
            fields += [1, 1, 1]
        conn.send(*fields)

    def _order_fields_common(self, o: BookOrder) -> list[Any]:
        c = o.contract
        return [
            c.conId,
            c.symbol,
            c.secType,
            c.lastTradeDateOrContractMonth,
            c.strike,
            c.right,
            c.multiplier,
            c.exchange,
            c.currency,
            c.localSymbol,
            c.tradingClass,
            o.action,
            _qty(o.totalQuantity),
            o.orderType,
            o.lmtPrice,
            "",  # auxPrice
            o.tif,
            "",  # ocaGroup
            o.account,
            "O",  # openClose
            0,  # origin
            o.orderRef,
        ]

    def _combo_fields(self, c: FakeContract) -> list[Any]:
        fields: list[Any] = [len(c.comboLegs)]
        for leg in c.comboLegs:
            fields += [leg.conId, leg.ratio, leg.action, leg.exchange, 0, 0, "", -1]
        fields += [0, 0]  # orderComboLegs, smartComboRoutingParams
        return fields

    def _open_order(self, conn: _Conn, o: BookOrder, what_if: bool = False) -> None:
        v = conn.version
        fields: list[Any] = [5, o.orderId, *self._order_fields_common(o)]
        fields += [o.clientId, o.permId, 0, 0, 0, "", "", "", "", ""]
        # outsideRth, hidden, discretionaryAmt, goodAfterTime, sharesAllocation, faGroup, faMethod, faPercentage
        if v < 177:
            fields.append("")  # faProfile
        fields += [
            "",  # modelCode
            "",  # goodTillDate
            "",  # rule80A
            "",  # percentOffset
            "",  # settlingFirm
            0,  # shortSaleSlot
            "",  # designatedLocation
            -1,  # exemptCode
            0,  # auctionStrategy
            "",  # startingPrice
            "",  # stockRefPrice
            "",  # delta
            "",  # stockRangeLower
            "",  # stockRangeUpper
            "",  # displaySize
            0,  # blockOrder
            0,  # sweepToFill
            0,  # allOrNone
            "",  # minQty
            3,  # ocaType
            0,  # eTradeOnly
            0,  # firmQuoteOnly
            "",  # nbboPriceCap
            0,  # parentId
            0,  # triggerMethod
            "",  # volatility
            0,  # volatilityType
            "",  # deltaNeutralOrderType (none: no delta-neutral fields follow)
            "",  # deltaNeutralAuxPrice
            0,  # continuousUpdate
            0,  # referencePriceType
            "",  # trailStopPrice
            "",  # trailingPercent
            "",  # basisPoints
            "",  # basisPointsType
            "",  # comboLegsDescrip
            *self._combo_fields(o.contract),
            "",  # scaleInitLevelSize
            "",  # scaleSubsLevelSize
            "",  # scalePriceIncrement (unset: no scale fields follow)
            "",  # hedgeType
            0,  # optOutSmartRouting
            "",  # clearingAccount
            "IB",  # clearingIntent
            0,  # notHeld
            0,  # deltaNeutralContract present
            "",  # algoStrategy
            0,  # solicited
            what_if,
            o.status,
        ]
        if what_if:
            margin = abs(o.totalQuantity) * 100.0 * (o.lmtPrice or 0.0)
            fields += ["0.0", "0.0", "1000000.0", f"{margin:.2f}", f"{margin:.2f}", "0.0"]
            fields += [f"{margin:.2f}", f"{margin:.2f}", "1000000.0"]
            commission = COMMISSION_PER_CONTRACT * o.totalQuantity * max(1, len(o.contract.comboLegs))
            fields += [commission, commission, commission, "USD", ""]
        else:
            fields += [""] * 9 + ["", "", "", "", ""]
        fields += [
            0,  # randomizeSize
            0,  # randomizePrice
            0,  # conditions
            "",  # adjustedOrderType
            "",  # triggerPrice
            "",  # trailStopPrice
            "",  # lmtPriceOffset
            "",  # adjustedStopPrice
            "",  # adjustedStopLimitPrice
            "",  # adjustedTrailingAmount
            0,  # adjustableTrailingUnit
            "",  # softDollarTier name
            "",  # softDollarTier value
            "",  # softDollarTier displayName
            "",  # cashQty
            0,  # dontUseAutoPriceForHedge
            0,  # isOmsContainer
            0,  # discretionaryUpToLimitPrice
            0,  # usePriceMgmtAlgo
        ]
        if v >= 159:
            fields.append("")  # duration
        if v >= 160:
            fields.append("")  # postToAts
        if v >= 162:
            fields.append(0)  # autoCancelParent
        if v >= 170:
            fields += ["", "", "", "", ""]  # minTradeQty .. midOffsetAtHalf
        conn.send(*fields)

    def _completed_order(self, conn: _Conn, o: BookOrder) -> None:
        v = conn.version
        fields: list[Any] = [101, *self._order_fields_common(o)]
        fields += [o.permId, 0, 0, "", "", "", "", ""]
        # permId, outsideRth, hidden, discretionaryAmt, goodAfterTime, faGroup, faMethod, faPercentage
        if v < 177:
            fields.append("")  # faProfile
        fields += [
            "",  # modelCode
            "",  # goodTillDate
            "",  # rule80A
            "",  # percentOffset
            "",  # settlingFirm
            0,  # shortSaleSlot
            "",  # designatedLocation
            -1,  # exemptCode
            "",  # startingPrice
            "",  # stockRefPrice
            "",  # delta
            "",  # stockRangeLower
            "",  # stockRangeUpper
            "",  # displaySize
            0,  # sweepToFill
            0,  # allOrNone
            "",  # minQty
            3,  # ocaType
            0,  # triggerMethod
            "",  # volatility
            0,  # volatilityType
            "",  # deltaNeutralOrderType
            "",  # deltaNeutralAuxPrice
            0,  # continuousUpdate
            0,  # referencePriceType
            "",  # trailStopPrice
            "",  # trailingPercent
            "",  # comboLegsDescrip
            *self._combo_fields(o.contract),
            "",  # scaleInitLevelSize
            "",  # scaleSubsLevelSize
            "",  # scalePriceIncrement
            "",  # hedgeType
            "",  # clearingAccount
            "IB",  # clearingIntent
            0,  # notHeld
            0,  # deltaNeutralContract present
            "",  # algoStrategy
            0,  # solicited
            o.status,
            0,  # randomizeSize
            0,  # randomizePrice
            0,  # conditions
            "",  # trailStopPrice
            "",  # lmtPriceOffset
            "",  # cashQty
            0,  # dontUseAutoPriceForHedge
            0,  # isOmsContainer
            "",  # autoCancelDate
            _qty(o.filled),  # filledQuantity
            0,  # refFuturesConId
            0,  # autoCancelParent
            "",  # shareholder
            0,  # imbalanceOnly
            0,  # routeMarketableToBbo
            0,  # parentPermId
            o.completedTime,
            o.completedStatus,
        ]
        if v >= 170:
            fields += ["", "", "", "", ""]
        conn.send(*fields)

    def _order_status(self, conn: _Conn, o: BookOrder) -> None:
        self._send_order_msg(
            conn,
            3,
            o.orderId,
            o.status,
            _qty(o.filled),
            _qty(o.remaining),
            o.avgFillPrice,
            o.permId,
            0,  # parentId
            o.lastFillPrice,
            o.clientId,
            "",  # whyHeld
            0.0,  # mktCapPrice
        )

    def _exec_details(self, conn: _Conn, req_id: int, e: FakeExecution) -> None:
        c = e.contract
        fields: list[Any] = [
            11,
            req_id,
            e.orderId,
            c.conId,
            c.symbol,
            c.secType,
            c.lastTradeDateOrContractMonth,
            c.strike,
            c.right,
            c.multiplier,
            e.exchange,
            c.currency,
            c.localSymbol,
            c.tradingClass,
            e.execId,
            e.time.astimezone(EASTERN).strftime("%Y%m%d %H:%M:%S") + " US/Eastern",
            self.account,
            e.exchange,
            e.side,
            _qty(e.shares),
            e.price,
            e.permId,
            e.clientId,
            0,  # liquidation
            _qty(e.cumQty),
            e.avgPrice,
            e.orderRef,
            "",  # evRule
            "",  # evMultiplier
            "",  # modelCode
            2,  # lastLiquidity: removed liquidity
        ]
        if conn.version >= 178:
            fields.append(0)  # pendingPriceRevision
        self._send_order_msg(conn, *fields)

    def _commission_report(self, conn: _Conn, e: FakeExecution) -> None:
        realized = UNSET_DOUBLE_STR if e.realizedPNL is None else repr(round(e.realizedPNL, 6))
        self._send_order_msg(conn, 59, 1, e.execId, e.commission, "USD", realized, UNSET_DOUBLE_STR, "")

    def _position_msg(self, conn: _Conn, p: FakePosition) -> None:
        c = p.contract
        conn.send(
            61, 3, self.account, c.conId, c.symbol, c.secType, c.lastTradeDateOrContractMonth, c.strike,
            c.right, c.multiplier, "", c.currency, c.localSymbol, c.tradingClass, _qty(p.position), p.avgCost,
        )  # fmt: skip

    def _portfolio_msg(self, conn: _Conn, p: FakePosition) -> None:
        c = p.contract
        mult = float(c.multiplier or 1)
        q = self._quote(c)
        mark = (q.bid + q.ask) / 2 if q.ask > 0 else 0.0
        value = p.position * mark * mult
        unrealized = value - p.position * p.avgCost
        conn.send(
            7, 8, c.conId, c.symbol, c.secType, c.lastTradeDateOrContractMonth, c.strike, c.right, c.multiplier,
            c.primaryExchange, c.currency, c.localSymbol, c.tradingClass, _qty(p.position), round(mark, 4),
            round(value, 2), p.avgCost, round(unrealized, 2), round(p.realizedPNL, 2), self.account,
        )  # fmt: skip

    def _account_values(self) -> list[tuple[str, str, str]]:
        value = 0.0
        unrealized = 0.0
        realized = 0.0
        for p in self.positions.values():
            realized += p.realizedPNL
            if p.position:
                q = self._quote(p.contract)
                mark = (q.bid + q.ask) / 2 if q.ask > 0 else 0.0
                mult = float(p.contract.multiplier or 1)
                value += p.position * mark * mult
                unrealized += p.position * mark * mult - p.position * p.avgCost
        net = self.cash + value
        return [
            ("AccountCode", self.account, ""),
            ("AccountType", "INDIVIDUAL", ""),
            ("NetLiquidation", f"{net:.2f}", "USD"),
            ("TotalCashValue", f"{self.cash:.2f}", "USD"),
            ("AvailableFunds", f"{net:.2f}", "USD"),
            ("BuyingPower", f"{4 * net:.2f}", "USD"),
            ("ExcessLiquidity", f"{net:.2f}", "USD"),
            ("InitMarginReq", "0.00", "USD"),
            ("MaintMarginReq", "0.00", "USD"),
            ("GrossPositionValue", f"{abs(value):.2f}", "USD"),
            ("UnrealizedPnL", f"{unrealized:.2f}", "USD"),
            ("RealizedPnL", f"{realized:.2f}", "USD"),
        ]

    # ------------------------------------------------------------------ contracts

    def _make_option(self, expiry: str, strike: float, right: str) -> FakeContract:
        local = f"{self.symbol:<6}{expiry[2:]}{right}{round(strike * 1000):08d}"
        return FakeContract(
            conId=self.option_con_id(strike, right, expiry),
            symbol=self.symbol,
            secType="OPT",
            lastTradeDateOrContractMonth=expiry,
            strike=float(strike),
            right=right,
            multiplier="100",
            exchange="SMART",
            currency="USD",
            localSymbol=local,
            tradingClass=self.symbol,
        )

    def _resolve(self, q: _Query) -> list[FakeContract]:
        """Contracts matching a (possibly partial) description, like reqContractDetails."""
        if q.conId:
            c = self._contracts.get(q.conId)
            found = [] if c is None or (q.secType and q.secType.upper() != c.secType) else [c]
        else:
            sec = q.secType.upper()
            if q.localSymbol:
                found = [c for c in self._contracts.values() if c.localSymbol == q.localSymbol]
            elif q.symbol.upper() != self.symbol:
                found = []
            else:
                found = []
                if sec in ("", "STK"):
                    found.append(self._stock)
                if sec in ("", "OPT"):
                    found += [
                        c for c in self._contracts.values() if c.secType == "OPT" and self._opt_match(c, q)
                    ]
            if sec and sec not in ("STK", "OPT"):
                found = []
        if q.currency and q.currency.upper() != "USD":
            found = []
        if q.exchange and q.exchange.upper() not in [*OPTION_EXCHANGES.split(","), "ARCA", "NYSE", "ISLAND"]:
            found = []
        return [c for c in found if not (c.secType == "OPT" and c.strike in self.faults.no_secdef_for)]

    def _opt_match(self, c: FakeContract, q: _Query) -> bool:
        if q.expiry and not c.lastTradeDateOrContractMonth.startswith(q.expiry):
            return False
        if q.strike and abs(c.strike - q.strike) > 1e-6:
            return False
        right = _norm_right(q.right)
        if right and c.right != right:
            return False
        if q.tradingClass and q.tradingClass.upper() != c.tradingClass:
            return False
        return not (q.multiplier and q.multiplier not in ("100", "100.0"))

    def _with_exchange(self, c: FakeContract, exchange: str) -> FakeContract:
        if not exchange or exchange.upper() == c.exchange:
            return c
        return FakeContract(**{**c.__dict__, "exchange": exchange.upper(), "comboLegs": list(c.comboLegs)})

    # ------------------------------------------------------------------ pricing

    def _years(self, expiry: str) -> float:
        days = (
            dt.datetime.strptime(expiry, "%Y%m%d").date() - dt.datetime.strptime(self.expiry, "%Y%m%d").date()
        ).days
        return max(self.hours_to_close + 6.5 * days, 0.05) / (6.5 * 252.0)  # trading time

    def _vol(self, strike: float) -> float:
        m = math.log(strike / self.spot)
        return max(0.05, 0.14 - 0.8 * m + 6.0 * m * m)

    def _model(self, c: FakeContract) -> _Quote:
        s, k, t = self.spot, c.strike, self._years(c.lastTradeDateOrContractMonth)
        vol = self._vol(k)
        sq = vol * math.sqrt(t)
        d1 = (math.log(s / k) + 0.5 * vol * vol * t) / sq
        d2 = d1 - sq
        if c.right == "C":
            price = s * _ncdf(d1) - k * _ncdf(d2)
            delta = _ncdf(d1)
        else:
            price = k * _ncdf(-d2) - s * _ncdf(-d1)
            delta = _ncdf(d1) - 1.0
        gamma = _npdf(d1) / (s * sq)
        vega = s * _npdf(d1) * math.sqrt(t) / 100.0
        theta = -(s * _npdf(d1) * vol) / (2.0 * math.sqrt(t)) / 365.0
        half = max(TICK, _round_tick(0.02 * price))
        bid = max(0.0, _round_tick(price - half))
        ask = max(TICK, _round_tick(price + half))
        if ask <= bid:
            ask = _round_tick(bid + TICK)
        volume = float(100 + round(abs(k - s) * 7) % 900)
        return _Quote(
            bid=bid, ask=ask, bid_size=10.0 if bid > 0 else 0.0, ask_size=12.0, last=_round_tick(max(price, TICK)),
            last_size=1.0, close=_round_tick(max(price, TICK)), volume=volume, iv=vol, delta=delta, gamma=gamma,
            vega=vega, theta=theta, und=s,
        )  # fmt: skip

    def _quote(self, c: FakeContract) -> _Quote:
        if c.secType == "STK":
            s = self.spot
            return _Quote(
                bid=_round_tick(s - TICK), ask=_round_tick(s + TICK), bid_size=500.0, ask_size=400.0,
                last=_round_tick(s), last_size=100.0, close=_round_tick(s), volume=self._stock_volume,
            )  # fmt: skip
        if c.secType == "BAG":
            bid = ask = 0.0
            bid_size = ask_size = math.inf
            for leg in c.comboLegs:
                lc = self._contracts[leg.conId]
                lq = self._quote(lc)
                if leg.action == "BUY":
                    bid += leg.ratio * lq.bid
                    ask += leg.ratio * lq.ask
                else:
                    bid -= leg.ratio * lq.ask
                    ask -= leg.ratio * lq.bid
                bid_size = min(bid_size, lq.bid_size if leg.action == "BUY" else lq.ask_size)
                ask_size = min(ask_size, lq.ask_size if leg.action == "BUY" else lq.bid_size)
            return _Quote(bid=round(bid, 2), ask=round(ask, 2), bid_size=bid_size, ask_size=ask_size)
        q = self._model(c)
        override = self._overrides.get(c.conId)
        if override is not None:
            q.bid, q.ask, q.bid_size, q.ask_size = override
        return q

    # ------------------------------------------------------------------ market data

    def _delayed(self, conn: _Conn) -> bool:
        return not self.live_data and conn.md_type in (3, 4)

    def _send_ticks(self, conn: _Conn, req_id: int, c: FakeContract, initial: bool) -> None:
        q = self._quote(c)
        ticks = PRICE_TICKS_DELAYED if self._delayed(conn) else PRICE_TICKS_LIVE
        conn.send(1, 6, req_id, ticks["bid"], q.bid, _qty(q.bid_size), 1)
        conn.send(1, 6, req_id, ticks["ask"], q.ask, _qty(q.ask_size), 1)
        if q.last is not None and (initial or c.secType == "STK"):
            conn.send(1, 6, req_id, ticks["last"], q.last, _qty(q.last_size), 0)
            conn.send(2, 6, req_id, ticks["volume"], _qty(q.volume))
        if initial and q.close is not None:
            conn.send(1, 6, req_id, ticks["close"], q.close, 0, 0)
        if c.secType == "OPT" and q.iv is not None:
            greeks = GREEK_TICKS_DELAYED if self._delayed(conn) else GREEK_TICKS_LIVE
            for side, price in (("bid", q.bid), ("ask", q.ask), ("model", (q.bid + q.ask) / 2)):
                conn.send(
                    21,
                    req_id,
                    greeks[side],
                    1,
                    q.iv,
                    q.delta,
                    round(price, 4),
                    0.0,
                    q.gamma,
                    q.vega,
                    q.theta,
                    q.und,
                )

    def _push_all_lines(self, only_con_id: int | None) -> None:
        if self.faults.competing_session:
            return
        for conn in self._conns:
            if not conn.ready:
                continue
            for req_id, c in list(conn.lines.items()):
                legs = {leg.conId for leg in c.comboLegs}
                if only_con_id is None or c.conId == only_con_id or only_con_id in legs:
                    self._send_ticks(conn, req_id, c, initial=False)

    def _market_data_type_for(self, conn: _Conn) -> int:
        if self._delayed(conn):
            return conn.md_type
        return 2 if conn.md_type in (2, 4) else 1

    # ------------------------------------------------------------------ fills and positions

    def _touch(self, o: BookOrder) -> tuple[float | None, dict[int, float]]:
        """The price a market order of this side would get now, and the leg prices making it up."""
        c = o.contract
        buy = o.action == "BUY"
        if c.secType == "BAG":
            legs: dict[int, float] = {}
            net = 0.0
            for leg in c.comboLegs:
                lq = self._quote(self._contracts[leg.conId])
                leg_buys = (leg.action == "BUY") == buy
                px = lq.ask if leg_buys else lq.bid
                if (lq.ask_size if leg_buys else lq.bid_size) <= 0 or (not leg_buys and lq.bid <= 0):
                    return None, {}
                legs[leg.conId] = px
                net += (1 if leg.action == "BUY" else -1) * leg.ratio * px
            return round(net, 4), legs
        q = self._quote(c)
        if buy:
            return (q.ask, {}) if q.ask > 0 and q.ask_size > 0 else (None, {})
        return (q.bid, {}) if q.bid > 0 and q.bid_size > 0 else (None, {})

    def _marketable(self, o: BookOrder) -> float | None:
        touch, _ = self._touch(o)
        if touch is None:
            return None
        if o.orderType == "MKT" or o.lmtPrice is None:
            return touch
        if o.action == "BUY":
            return touch if o.lmtPrice >= touch - 1e-9 else None
        return touch if o.lmtPrice <= touch + 1e-9 else None

    def _fill_marketable(self) -> None:
        if not self.auto_fill:
            return
        for o in list(self.orders.values()):
            if o.active:
                price = self._marketable(o)
                if price is not None:
                    self._execute(o, o.remaining, price)

    def _leg_prices(self, o: BookOrder, price: float) -> dict[int, float]:
        """Leg prices of a combo fill at net ``price`` (the touch prices, the first leg absorbing the rest)."""
        _, legs = self._touch(o)
        if not legs:
            legs = {
                leg.conId: self._model(self._contracts[leg.conId]).last or TICK
                for leg in o.contract.comboLegs
            }
        net = sum(
            (1 if lg.action == "BUY" else -1) * lg.ratio * legs[lg.conId] for lg in o.contract.comboLegs
        )
        first = o.contract.comboLegs[0]
        sign = (1 if first.action == "BUY" else -1) * first.ratio
        legs[first.conId] = round(legs[first.conId] + (price - net) / sign, 4)
        return legs

    def _book_execution(
        self, o: BookOrder, contract: FakeContract, side: str, shares: float, price: float, when: dt.datetime,
        commission: float, exchange: str, cum: float, avg: float,
    ) -> FakeExecution:  # fmt: skip
        self._exec_seq += 1
        realized: float | None = None
        if contract.secType != "BAG":
            realized = self._apply_position(contract, shares if side == "BOT" else -shares, price, commission)
            mult = float(contract.multiplier or 1)
            self.cash -= (shares if side == "BOT" else -shares) * price * mult + commission
        e = FakeExecution(
            execId=f"0000f4e5.{self._exec_seq:08x}.01.01", orderId=o.orderId, permId=o.permId, clientId=o.clientId,
            contract=contract, exchange=exchange, side=side, shares=shares, price=price, cumQty=cum, avgPrice=avg,
            orderRef=o.orderRef, time=when, commission=commission, realizedPNL=realized,
        )  # fmt: skip
        self.executions.append(e)
        return e

    def _apply_position(
        self, c: FakeContract, signed_qty: float, price: float, commission: float
    ) -> float | None:
        """Update the position; returns the realized P&L of a closing execution, None for an opening one."""
        p = self.positions.setdefault(c.conId, FakePosition(contract=c))
        mult = float(c.multiplier or 1)
        cost = price * mult
        old = p.position
        if old == 0 or (old > 0) == (signed_qty > 0):
            new = old + signed_qty
            p.avgCost = (abs(old) * p.avgCost + abs(signed_qty) * cost + commission) / abs(new)
            p.position = new
            return None
        closing = min(abs(signed_qty), abs(old))
        direction = 1.0 if old > 0 else -1.0
        realized = closing * (cost - p.avgCost) * direction - commission * closing / abs(signed_qty)
        p.realizedPNL += realized
        new = old + signed_qty
        if abs(new) < 1e-9:
            p.position = 0.0
        elif (new > 0) != (old > 0):  # flipped: the rest opens at this price
            p.position = new
            p.avgCost = cost + commission * (abs(new) / abs(signed_qty)) / abs(new)
        else:
            p.position = new
        return realized

    def _execute(self, o: BookOrder, qty: float, price: float) -> None:
        when = dt.datetime.now(dt.UTC)
        prev_filled = o.filled
        o.filled = prev_filled + qty
        o.remaining = max(0.0, o.totalQuantity - o.filled)
        o.avgFillPrice = round((o.avgFillPrice * prev_filled + price * qty) / o.filled, 6)
        o.lastFillPrice = price
        if o.remaining <= 1e-9:
            o.remaining = 0.0
            o.status = "Filled"
            o.completedTime = when.astimezone(EASTERN).strftime("%Y%m%d %H:%M:%S") + " US/Eastern"
            o.completedStatus = "Filled"
        else:
            o.status = "Submitted"
        side = "BOT" if o.action == "BUY" else "SLD"
        execs: list[FakeExecution] = []
        c = o.contract
        if c.secType == "BAG":
            legs = self._leg_prices(o, price)
            for leg in c.comboLegs:
                lc = self._contracts[leg.conId]
                leg_side = "BOT" if (leg.action == "BUY") == (o.action == "BUY") else "SLD"
                shares = qty * leg.ratio
                execs.append(
                    self._book_execution(
                        o, self._with_exchange(lc, "CBOE"), leg_side, shares, legs[leg.conId], when,
                        round(COMMISSION_PER_CONTRACT * shares, 2), "CBOE", o.filled * leg.ratio, legs[leg.conId],
                    )
                )  # fmt: skip
            execs.append(
                self._book_execution(o, c, side, qty, price, when, 0.0, "SMART", o.filled, o.avgFillPrice)
            )
        else:
            exchange = "CBOE" if c.secType == "OPT" else "ARCA"
            commission = (
                round(COMMISSION_PER_CONTRACT * qty, 2)
                if c.secType == "OPT"
                else round(max(1.0, 0.005 * qty), 2)
            )
            execs.append(
                self._book_execution(
                    o, self._with_exchange(c, exchange), side, qty, price, when, commission, exchange, o.filled,
                    o.avgFillPrice,
                )
            )  # fmt: skip
        reorder = self.faults.reorder_reports
        delay = self.faults.commission_delay_s
        if delay is not None:
            asyncio.get_running_loop().call_later(delay, self._late_commission_reports, o, execs)
        for conn in self._owner_conns(o):
            if not reorder:
                self._order_status(conn, o)
                self._open_order(conn, o)
            for e in execs:
                self._exec_details(conn, -1, e)
            if delay is None:
                for e in execs:
                    self._commission_report(conn, e)
            if reorder:
                self._order_status(conn, o)
                self._open_order(conn, o)
        touched = {e.contract.conId for e in execs if e.contract.secType != "BAG"}
        for conn in self._conns:
            if not conn.ready:
                continue
            for con_id in touched:
                p = self.positions[con_id]
                if conn.positions_sub:
                    self._position_msg(conn, p)
                if conn.account_sub:
                    self._portfolio_msg(conn, p)

    def _late_commission_reports(self, o: BookOrder, execs: list[FakeExecution]) -> None:
        """The commissionReports held back by ``faults.commission_delay_s``."""
        for conn in self._owner_conns(o):
            for e in execs:
                self._commission_report(conn, e)

    def _owner_conns(self, o: BookOrder) -> list[_Conn]:
        return [c for c in self._conns if c.ready and c.client_id == o.clientId]

    def _cancel(self, o: BookOrder, reason: str = "") -> None:
        o.status = "Cancelled"
        o.completedTime = dt.datetime.now(EASTERN).strftime("%Y%m%d %H:%M:%S") + " US/Eastern"
        o.completedStatus = reason or "Cancelled by Trader"
        for conn in self._owner_conns(o):
            self._order_status(conn, o)
            self._error(conn, o.orderId, 202, f"Order Canceled - reason:{reason}")

    # ------------------------------------------------------------------ request handlers

    def _on_ignore(self, conn: _Conn, r: _Fields) -> None:
        pass

    def _on_start_api(self, conn: _Conn, r: _Fields) -> None:
        r.integer()  # version
        client_id = r.integer()
        if conn.ready:
            _log.warning("connection %d: second startApi ignored", conn.number)
            return
        if client_id in self.faults.client_ids_in_use or client_id in self.connected_client_ids:
            self._error(conn, -1, 326, "Unable to connect as the client id is already in use. Retry with a unique client id.")  # fmt: skip
            conn.close()
            return
        conn.client_id = client_id
        conn.ready = True
        self.accepted_client_ids.append(client_id)
        conn.send(15, 1, self.account)
        conn.send(9, 1, self._next_valid_id())
        self._error(conn, -1, 2104, "Market data farm connection is OK:usopt")
        self._error(conn, -1, 2106, "HMDS data farm connection is OK:ushmds")
        self._error(conn, -1, 2158, "Sec-def data farm connection is OK:secdefnj")

    def _next_valid_id(self) -> int:
        return max([self._next_order_id, *(oid + 1 for oid in self.orders)])

    def _on_req_ids(self, conn: _Conn, r: _Fields) -> None:
        conn.send(9, 1, self._next_valid_id())

    def _on_req_managed_accts(self, conn: _Conn, r: _Fields) -> None:
        conn.send(15, 1, self.account)

    def _on_req_current_time(self, conn: _Conn, r: _Fields) -> None:
        conn.send(49, 1, int(time.time()))

    def _on_req_contract_details(self, conn: _Conn, r: _Fields) -> None:
        r.integer()  # version
        req_id = r.integer()
        q = _Query.read(r)
        found = self._resolve(q)
        if not found:
            self._error(conn, req_id, 200, "No security definition has been found for the request")
            return
        for c in found:
            self._contract_details(conn, req_id, self._with_exchange(c, q.exchange))
        conn.send(52, 1, req_id)

    def _on_req_sec_def_opt_params(self, conn: _Conn, r: _Fields) -> None:
        req_id = r.integer()
        symbol = r.text()
        fut_fop_exchange = r.text()
        sec_type = r.text()
        con_id = r.integer()
        if symbol.upper() == self.symbol and sec_type.upper() in ("", "STK") and con_id in (0, STOCK_CON_ID):
            for exchange in ("SMART", "CBOE"):
                if fut_fop_exchange and fut_fop_exchange.upper() != exchange:
                    continue
                strikes = [k for k in self.strikes]
                conn.send(
                    75, req_id, exchange, STOCK_CON_ID, self.symbol, "100", len(self.expiries), *self.expiries,
                    len(strikes), *strikes,
                )  # fmt: skip
        conn.send(76, req_id)

    def _on_req_market_data_type(self, conn: _Conn, r: _Fields) -> None:
        r.integer()  # version
        md_type = r.integer()
        if md_type not in (1, 2, 3, 4):
            self._error(conn, -1, 10089, f"Invalid market data type {md_type}")
            return
        conn.md_type = md_type
        for req_id in conn.lines:
            conn.send(58, 1, req_id, self._market_data_type_for(conn))

    def _on_req_mkt_data(self, conn: _Conn, r: _Fields) -> None:
        r.integer()  # version
        req_id = r.integer()
        q = _Query.read(r)
        legs: list[FakeComboLeg] = []
        if q.secType.upper() == "BAG":
            for _ in range(r.integer()):
                legs.append(
                    FakeComboLeg(
                        conId=r.integer(), ratio=r.integer(), action=r.text().upper(), exchange=r.text()
                    )
                )
        if r.flag():
            r.skip(3)  # delta-neutral contract
        r.text()  # genericTickList
        snapshot = r.flag()
        contract = self._line_contract(q, legs)
        if contract is None:
            self._error(conn, req_id, 200, "No security definition has been found for the request")
            return
        if not snapshot and req_id in conn.lines:
            self._error(conn, req_id, 322, f"Duplicate ticker id {req_id}")
            return
        if self.faults.competing_session:
            self._error(conn, req_id, 10197, "No market data during competing live session")
        elif not self.live_data and conn.md_type not in (3, 4):
            self._error(
                conn, req_id, 354,
                "Requested market data is not subscribed. Displaying delayed market data.",
            )  # fmt: skip
            return
        if not snapshot:
            live = sum(len(c.lines) for c in self._conns)
            limit = self.faults.max_tickers
            if limit is not None and live >= limit:
                self._error(conn, req_id, 101, "Max number of tickers has been reached")
                return
            conn.lines[req_id] = contract
            self.max_lines_seen = max(self.max_lines_seen, live + 1)
        if self.faults.competing_session:
            return
        conn.send(58, 1, req_id, self._market_data_type_for(conn))
        conn.send(81, req_id, TICK, "9c0001", 3)
        self._send_ticks(conn, req_id, contract, initial=True)
        if snapshot:
            conn.send(57, 1, req_id)

    def _line_contract(self, q: _Query, legs: list[FakeComboLeg]) -> FakeContract | None:
        if q.secType.upper() == "BAG":
            if q.symbol.upper() != self.symbol or not legs:
                return None
            for leg in legs:
                c = self._contracts.get(leg.conId)
                if c is None or c.secType != "OPT" or c.strike in self.faults.no_secdef_for or leg.ratio <= 0:
                    return None
                if leg.action not in ("BUY", "SELL"):
                    return None
            return FakeContract(
                conId=0, symbol=self.symbol, secType="BAG", exchange="SMART", currency="USD", comboLegs=legs
            )
        found = self._resolve(q)
        return found[0] if len(found) == 1 else None

    def _on_cancel_mkt_data(self, conn: _Conn, r: _Fields) -> None:
        r.integer()  # version
        req_id = r.integer()
        if conn.lines.pop(req_id, None) is None:
            self._error(conn, req_id, 300, f"Can't find EId with tickerId:{req_id}")

    def _on_place_order(self, conn: _Conn, r: _Fields) -> None:
        v = conn.version
        order_id = r.integer()
        q = _Query.read(r)
        r.skip(2)  # secIdType, secId
        action = r.text().upper()
        total = r.number() or 0.0
        order_type = r.text().upper()
        lmt = r.number()
        aux = r.number()
        tif = r.text().upper() or "DAY"
        r.text()  # ocaGroup
        account = r.text()
        r.text()  # openClose
        r.integer()  # origin
        order_ref = r.text()
        transmit = r.flag()
        parent_id = r.integer()
        r.skip(6)  # blockOrder, sweepToFill, displaySize, triggerMethod, outsideRth, hidden
        legs: list[FakeComboLeg] = []
        if q.secType.upper() == "BAG":
            for _ in range(r.integer()):
                con_id, ratio, leg_action, leg_exchange = r.integer(), r.integer(), r.text().upper(), r.text()
                r.skip(4)  # openClose, shortSaleSlot, designatedLocation, exemptCode
                legs.append(FakeComboLeg(conId=con_id, ratio=ratio, action=leg_action, exchange=leg_exchange))
            r.skip(r.integer())  # orderComboLegs prices
            r.skip(2 * r.integer())  # smartComboRoutingParams
        r.skip(
            7
        )  # sharesAllocation, discretionaryAmt, goodAfterTime, goodTillDate, faGroup, faMethod, faPercentage
        if v < 177:
            r.skip(1)  # faProfile
        r.skip(24)  # modelCode .. deltaNeutralAuxPrice (deltaNeutralOrderType is the 23rd)
        if r.f[r.i - 2]:  # deltaNeutralOrderType set
            r.skip(8)
        r.skip(6)  # continuousUpdate .. scaleSubsLevelSize
        increment = r.number()
        if increment is not None and increment > 0:
            r.skip(7)
        r.skip(3)  # scaleTable, activeStartTime, activeStopTime
        if r.text():  # hedgeType
            r.skip(1)
        r.skip(4)  # optOutSmartRouting, clearingAccount, clearingIntent, notHeld
        if r.flag():
            r.skip(3)
        if r.text():  # algoStrategy
            r.skip(2 * r.integer())
        r.text()  # algoId
        what_if = r.flag()

        contract = self._order_contract(q, legs)
        request = FakeOrderRequest(
            action=action, totalQuantity=total, orderType=order_type, lmtPrice=lmt, auxPrice=aux, tif=tif,
            account=account, orderRef=order_ref, transmit=transmit, parentId=parent_id, whatIf=what_if,
        )  # fmt: skip
        shown = contract or FakeContract(
            conId=q.conId, symbol=q.symbol, secType=q.secType, lastTradeDateOrContractMonth=q.expiry,
            strike=q.strike, right=q.right, comboLegs=legs,
        )  # fmt: skip
        self.place_order_calls.append(
            PlaceOrderCall(order_id, order_ref, shown, request, conn.client_id or 0, time.monotonic())
        )
        if what_if:
            if contract is None:
                self._error(conn, order_id, 200, "No security definition has been found for the request")
                return
            o = self._new_book_order(conn, order_id, contract, request)
            o.status = "PreSubmitted"
            self._open_order(conn, o, what_if=True)
            return
        self._place_count += 1
        dropping = self.faults.drop_after_place == self._place_count
        if dropping:
            self._mute = True
        try:
            self._place(conn, order_id, contract, request)
        finally:
            self._mute = False
        if dropping:
            _log.info("drop_after_place: closing every connection after placeOrder %d", order_id)
            for c in list(self._conns):
                c.close()

    def _order_contract(self, q: _Query, legs: list[FakeComboLeg]) -> FakeContract | None:
        if q.secType.upper() == "BAG":
            c = self._line_contract(q, legs)
            if c is not None:
                c.conId = STOCK_CON_ID  # IB gives a combo the underlying's conId
            return c
        found = self._resolve(q)
        return self._with_exchange(found[0], q.exchange) if len(found) == 1 else None

    def _new_book_order(
        self, conn: _Conn, order_id: int, c: FakeContract, req: FakeOrderRequest
    ) -> BookOrder:
        self._perm_seq += 1
        return BookOrder(
            orderId=order_id, clientId=conn.client_id or 0, permId=self._perm_seq, contract=c, action=req.action,
            totalQuantity=req.totalQuantity, orderType=req.orderType, lmtPrice=req.lmtPrice, tif=req.tif,
            account=req.account or self.account, orderRef=req.orderRef, remaining=req.totalQuantity,
        )  # fmt: skip

    def _reject(self, conn: _Conn, order_id: int, code: int, msg: str, o: BookOrder | None) -> None:
        if o is not None:
            o.status = "Inactive"
            o.completedStatus = msg
            if order_id not in self.orders:
                self.orders[order_id] = o
        self._error(conn, order_id, code, msg)

    def _place(
        self, conn: _Conn, order_id: int, contract: FakeContract | None, req: FakeOrderRequest
    ) -> None:
        existing = self.orders.get(order_id)
        if existing is not None:
            if existing.clientId != conn.client_id or not existing.active:
                self._error(conn, order_id, 103, "Duplicate order id")
                return
            self._modify(conn, existing, req)
            return
        self._next_order_id = max(self._next_order_id, order_id + 1)
        if contract is None:
            self._error(conn, order_id, 200, "No security definition has been found for the request")
            return
        o = self._new_book_order(conn, order_id, contract, req)
        problem = self._validate(req)
        if problem is not None:
            self._reject(conn, order_id, problem[0], problem[1], o)
            return
        self.orders[order_id] = o
        o.status = "Submitted"
        self._open_order(conn, o)
        self._order_status(conn, o)
        self._after_accept(o)

    def _validate(self, req: FakeOrderRequest) -> tuple[int, str] | None:
        if req.action not in ("BUY", "SELL"):
            return 201, f"Order rejected - reason:Invalid action {req.action!r}"
        if req.totalQuantity <= 0:
            return 434, "The order size cannot be zero."
        if req.orderType not in ("LMT", "MKT"):
            return (
                201,
                f"Order rejected - reason:Order type {req.orderType} is not supported by this fake TWS",
            )
        if req.account and req.account != self.account:
            return 201, f"Order rejected - reason:Account {req.account} is not managed by this login"
        if req.orderType == "LMT":
            if req.lmtPrice is None or not math.isfinite(req.lmtPrice):
                return 201, "Order rejected - reason:A limit price is required"
            if abs(req.lmtPrice / TICK - round(req.lmtPrice / TICK)) > 1e-6:
                return 110, "The price does not conform to the minimum price variation for this contract."
        if req.orderRef in self.faults.reject_order_refs:
            return 201, f"Order rejected - reason:Rejected by the fake TWS (orderRef {req.orderRef})"
        return None

    def _after_accept(self, o: BookOrder) -> None:
        if not self.auto_fill:
            return
        price = self._marketable(o)
        if price is not None:
            self._execute(o, o.remaining, price)
        elif o.tif == "IOC":
            self._cancel(o)

    def _modify(self, conn: _Conn, o: BookOrder, req: FakeOrderRequest) -> None:
        problem = self._validate(req)
        if problem is not None:
            self._error(conn, o.orderId, problem[0], problem[1])
            return
        if req.totalQuantity < o.filled:
            self._error(conn, o.orderId, 201, "Order rejected - reason:quantity below the filled quantity")
            return
        o.totalQuantity = req.totalQuantity
        o.remaining = req.totalQuantity - o.filled
        o.lmtPrice = req.lmtPrice
        o.orderType = req.orderType
        o.orderRef = req.orderRef
        o.status = "Submitted"
        self._open_order(conn, o)
        self._order_status(conn, o)
        self._after_accept(o)

    def _on_cancel_order(self, conn: _Conn, r: _Fields) -> None:
        r.integer()  # version
        order_id = r.integer()
        self.cancel_order_calls.append(order_id)
        if self.faults.lose_cancels:
            return
        o = self.orders.get(order_id)
        if o is None or o.clientId != conn.client_id:
            self._error(conn, order_id, 10147, f"OrderId {order_id} that needs to be cancelled is not found.")
            return
        if not o.active:
            self._error(
                conn, order_id, 10148,
                f"OrderId {order_id} that needs to be cancelled cannot be cancelled, state: {o.status}.",
            )  # fmt: skip
            return
        self._cancel(o)

    def _on_req_global_cancel(self, conn: _Conn, r: _Fields) -> None:
        for o in list(self.orders.values()):
            if o.active:
                self._cancel(o, "Global Cancel")

    def _send_open_orders(self, conn: _Conn, all_clients: bool) -> None:
        for o in self.orders.values():
            if o.active and (all_clients or o.clientId == conn.client_id):
                self._open_order(conn, o)
                self._order_status(conn, o)
        conn.send(53, 1)

    def _on_req_open_orders(self, conn: _Conn, r: _Fields) -> None:
        self._send_open_orders(conn, all_clients=conn.client_id == 0)

    def _on_req_all_open_orders(self, conn: _Conn, r: _Fields) -> None:
        self._send_open_orders(conn, all_clients=True)

    def _on_req_auto_open_orders(self, conn: _Conn, r: _Fields) -> None:
        r.integer()  # version
        r.flag()  # autoBind: orders are only ever reported to their own client here

    def _on_req_completed_orders(self, conn: _Conn, r: _Fields) -> None:
        r.flag()  # apiOnly: every order here is an API order
        for o in self.orders.values():
            if o.status in ("Filled", "Cancelled"):
                self._completed_order(conn, o)
        conn.send(102)

    def _on_req_executions(self, conn: _Conn, r: _Fields) -> None:
        r.integer()  # version
        req_id = r.integer()
        client_id = r.integer()
        acct = r.text()
        r.text()  # time (not applied: every execution is from this session)
        symbol, sec_type, exchange, side = r.text(), r.text(), r.text(), r.text()
        for e in self.executions:
            if client_id and e.clientId != client_id:
                continue
            if acct and acct != self.account:
                continue
            if symbol and symbol.upper() != e.contract.symbol:
                continue
            if sec_type and sec_type.upper() != e.contract.secType:
                continue
            if exchange and exchange.upper() != e.exchange:
                continue
            if side and {"BUY": "BOT", "SELL": "SLD"}.get(side.upper(), side.upper()) != e.side:
                continue
            self._exec_details(conn, req_id, e)
            self._commission_report(conn, e)
        conn.send(55, 1, req_id)

    def _on_req_positions(self, conn: _Conn, r: _Fields) -> None:
        conn.positions_sub = True
        for p in self.positions.values():
            self._position_msg(conn, p)
        conn.send(62, 1)

    def _on_cancel_positions(self, conn: _Conn, r: _Fields) -> None:
        conn.positions_sub = False

    def _on_req_account_updates(self, conn: _Conn, r: _Fields) -> None:
        r.integer()  # version
        subscribe = r.flag()
        account = r.text()
        if account and account != self.account:
            self._error(
                conn, -1, 321, f"Error validating request:-'bF' : cause - Account {account} not found"
            )
            return
        conn.account_sub = subscribe
        if not subscribe:
            return
        for tag, value, currency in self._account_values():
            conn.send(6, 2, tag, value, currency, self.account)
        for p in self.positions.values():
            if p.position:
                self._portfolio_msg(conn, p)
        conn.send(8, 1, dt.datetime.now(EASTERN).strftime("%H:%M"))
        conn.send(54, 1, self.account)

    def _on_req_account_updates_multi(self, conn: _Conn, r: _Fields) -> None:
        r.integer()  # version
        req_id = r.integer()
        account = r.text()
        model_code = r.text()
        if account and account not in (self.account, "All"):
            self._error(
                conn, req_id, 321, f"Error validating request:-'bF' : cause - Account {account} not found"
            )
            return
        for tag, value, currency in self._account_values():
            conn.send(73, 1, req_id, self.account, model_code, tag, value, currency)
        conn.send(74, 1, req_id)

    def _on_req_account_summary(self, conn: _Conn, r: _Fields) -> None:
        r.integer()  # version
        req_id = r.integer()
        r.text()  # group
        wanted = {t.strip() for t in r.text().split(",") if t.strip()}
        for tag, value, currency in self._account_values():
            if tag in wanted:
                conn.send(63, 1, req_id, self.account, tag, value, currency)
        conn.send(64, 1, req_id)


class FakeTWSThread:
    """Runs a FakeTWS on its own event loop in a background thread, for synchronous tests and for clients
    living in other threads. ``call(fn, ...)`` runs a FakeTWS method in that thread and returns its result;
    ``run(coro)`` runs a coroutine (e.g. ``fake.drop_connections()``) there. Usable as a context manager."""

    def __init__(self, fake: FakeTWS | None = None, timeout: float = 5.0) -> None:
        self.fake = fake if fake is not None else FakeTWS()
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Start the thread and the server; returns the port."""
        if self._thread is not None:
            raise RuntimeError("already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._main, args=(loop,), name="fake-tws", daemon=True)
        self._thread.start()
        return self.run(self.fake.start())

    def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a (synchronous) FakeTWS method on the server's thread and wait for its result."""

        async def invoke() -> T:
            return fn(*args, **kwargs)

        return self.run(invoke())

    def stop(self) -> None:
        """Stop the server, then the loop and the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self.run(self.fake.stop())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self.timeout)
            self._loop = self._thread = None

    def __enter__(self) -> FakeTWSThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
