"""Market data from IB: today's SPY option chain in a strike window that fits the line budget.

On every (re)connection the feed sets the market data type (live 1, frozen 2, delayed 3,
delayed-frozen 4: shown in health and a notice), qualifies the underlying, reads its option
parameters (``reqSecDefOptParams``, trading class = the symbol), picks today's expiry (the session's;
the nearest later one with a warning when today has none), and subscribes the underlying plus a window
of strikes around the money: ``(line_budget - underlying lines - order lines) // 2`` strikes, calls
and puts. The window is re-centred, cancels first and subscriptions second, only when the money has
moved more than ``window_hysteresis_strikes`` strikes from the centre, so the number of live lines
never exceeds the budget and error 101 (max tickers) does not happen in normal operation; if it
happens anyway the window shrinks to what IB accepted and a notice says so.

Ticks are batched per event-loop turn: every strike that changed in one turn goes out as one
:class:`~agent.domain.ChainUpdate` (with the underlying tick riding along, as the simulator does), so
the detector and the executor see exactly what they see on the simulated feed.

Gaps: a dropped socket or 1100 marks every quote STALE (prices kept, flag set, so nothing trades on
them) until that contract ticks again after the link is back; 1101 (data lost) resubscribes every line,
1102 (data kept) does not. Errors: 354 (no market data subscription), 10167 (delayed data instead),
200 (no security definition: the strike is skipped), 101 (line refused) are reported as notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import replace
from typing import Any, Final

from ib_async import Option, Stock

from agent.domain import (
    ChainUpdate,
    ComponentHealth,
    ComponentStatus,
    NoticeLevel,
    OptionQuote,
    QuoteFlag,
    Right,
    UnderlyingTick,
    classify_quote,
)
from agent.events import Payload
from agent.ib.connection import HealthFn, IBConnection, NoticeFn, is_warning
from agent.settings import IBSettings

log = logging.getLogger(__name__)

MARKET_DATA_TYPES: Final = {1: "live", 2: "frozen", 3: "delayed", 4: "delayed-frozen"}
UNDERLYING: Final = (0.0, "U")
REQUEST_TIMEOUT_S = 15.0
SPOT_WAIT_S = 5.0
SETUP_RETRY_S = 15.0

MAX_TICKERS = 101
NOT_SUBSCRIBED = frozenset({354, 10089, 10090, 10091, 10168})
DELAYED_INSTEAD = 10167
NO_SECDEF = 200

Key = tuple[float, str]  # (strike, "C"/"P"), or UNDERLYING


def _finite(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _size(x: Any) -> int:
    v = _finite(x)
    return round(v) if math.isfinite(v) and v > 0 else 0


def _greek(comp: Any, name: str) -> float:
    if comp is None:
        return math.nan
    v = _finite(getattr(comp, name, None))
    if name in ("impliedVol", "undPrice"):
        return v if v >= 0.0 else math.nan
    return math.nan if v == -2.0 else v


def quote_from_ticker(t: Any, key: Key, ts_ns: int, stale: bool) -> OptionQuote:
    """An :class:`OptionQuote` from an ``ib_async`` Ticker (missing sides: 0.0 and NO_BID/NO_ASK)."""
    bid, ask = _finite(t.bid), _finite(t.ask)
    raw_bid = -1.0 if math.isnan(bid) else bid
    raw_ask = -1.0 if math.isnan(ask) else ask
    bsz, asz = _size(t.bidSize), _size(t.askSize)
    flags = classify_quote(raw_bid, raw_ask, bsz, asz)
    halted = _finite(getattr(t, "halted", math.nan))
    if halted in (1.0, 2.0):
        flags |= QuoteFlag.HALTED
    if stale:
        flags |= QuoteFlag.STALE
    last = _finite(t.last)
    comp = getattr(t, "modelGreeks", None)
    contract = t.contract
    return OptionQuote(
        strike=key[0],
        right=Right.parse(key[1]),
        bid=raw_bid if not flags & QuoteFlag.NO_BID else 0.0,
        ask=raw_ask if not flags & QuoteFlag.NO_ASK else 0.0,
        bid_size=bsz,
        ask_size=asz,
        last=last if last > 0 else 0.0,
        last_size=_size(t.lastSize),
        volume=_size(t.volume),
        quote_ts_ns=ts_ns,
        flags=flags,
        con_id=int(getattr(contract, "conId", 0) or 0),
        src_iv=_greek(comp, "impliedVol"),
        src_delta=_greek(comp, "delta"),
        src_gamma=_greek(comp, "gamma"),
        src_vega=_greek(comp, "vega"),
        src_theta=_greek(comp, "theta"),
        src_und_price=_greek(comp, "undPrice"),
    )


def underlying_price(t: Any) -> float:
    """Last trade, else the mid, else the previous close (NaN when IB sent nothing usable)."""
    last = _finite(t.last)
    if last > 0:
        return last
    bid, ask = _finite(t.bid), _finite(t.ask)
    if bid > 0 and ask > 0:
        return 0.5 * (bid + ask)
    close = _finite(t.close)
    return close if close > 0 else math.nan


def choose_window(strikes: Iterable[float], spot: float, n: int) -> list[float]:
    """The ``n`` strikes nearest ``spot`` (ties to the lower strike), ascending."""
    ordered = sorted(strikes, key=lambda k: (abs(k - spot), k))
    return sorted(ordered[: max(n, 0)])


class IBFeed:
    """See the module docstring. ``publish`` is the runtime's (payload -> event log)."""

    def __init__(
        self,
        conn: IBConnection,
        settings: IBSettings,
        *,
        publish: Callable[[Payload], None],
        notice: NoticeFn,
        health: HealthFn,
        clock_ns: Callable[[], int],
        expiry: str,
    ) -> None:
        self.conn = conn
        self.ib: Any = conn.ib
        self.settings = settings
        self._publish = publish
        self._notice = notice
        self._health = health
        self.clock_ns = clock_ns
        self.want_expiry = expiry
        self.symbol = settings.symbol
        self.expiry = ""
        self.trading_class = settings.symbol
        self.multiplier = 100
        self.tick = 0.01
        self.strikes: list[float] = []
        self.no_def: set[float] = set()
        self.lines: dict[Key, Any] = {}  # live market data lines (option keys and UNDERLYING) -> Ticker
        self._key_by_ticker: dict[int, Key] = {}
        self._key_by_req: dict[int, Key] = {}
        self.contracts: dict[Key, Any] = {}
        self.window: list[float] = []
        self.center: float | None = None
        self.option_line_cap = (
            settings.line_budget - max(1, settings.reserved_underlying_lines) - settings.reserved_order_lines
        )
        self.capacity_strikes = self.option_line_cap // 2
        self.max_lines = 0  # high-water mark of our own live lines
        self.spot = math.nan
        self._und: Any = None
        self._pending: set[Any] = set()
        self._flush_handle: asyncio.Handle | None = None
        self._last: dict[Key, OptionQuote] = {}
        # quotes held from before a connectivity gap and not refreshed since: published flagged STALE,
        # which the executor's pre-trade check refuses to trade on
        self._stale: set[Key] = set()
        self._gap = False
        self._not_subscribed = False
        self._seen_type: int | None = None
        self._window_lock = asyncio.Lock()
        self._window_task: asyncio.Task[None] | None = None
        self._ready = False
        self._setup_for = 0
        self.subscribe_calls = 0
        self.resubscriptions = 0
        self._reported: set[str] = set()
        conn.callbacks.connected.append(self._on_connected)
        conn.callbacks.disconnected.append(self._on_disconnected)
        conn.callbacks.ib_lost.append(self._on_ib_lost)
        conn.callbacks.restored.append(self._on_restored)
        conn.callbacks.error.append(self._on_error)
        self.ib.pendingTickersEvent += self._on_pending

    # ------------------------------------------------------------- reporting

    def notice(self, level: NoticeLevel, code: str, message: str, once: str | None = None) -> None:
        if once is not None:
            if once in self._reported:
                return
            self._reported.add(once)
        log.log(logging.INFO if level is NoticeLevel.INFO else logging.WARNING, "%s: %s", code, message)
        self._notice(level, code, message)

    def _status(self, status: ComponentStatus, detail: str) -> None:
        self._health(ComponentHealth("feed", status, detail))

    @property
    def type_name(self) -> str:
        t = self.settings.market_data_type
        return f"{MARKET_DATA_TYPES[t]} ({t})"

    def _report_ok(self) -> None:
        opts = sum(1 for k in self.lines if k != UNDERLYING)
        lo, hi = (self.window[0], self.window[-1]) if self.window else (math.nan, math.nan)
        status = ComponentStatus.OK
        extra = ""
        if self._not_subscribed:
            status, extra = ComponentStatus.DEGRADED, "; no market data subscription (354)"
        elif self.conn.competing_session:
            status, extra = ComponentStatus.DEGRADED, "; competing session (10197)"
        elif self._gap:
            status, extra = ComponentStatus.DOWN, "; IB link lost (1100): quotes stale"
        self._status(
            status,
            f"IB {self.type_name} data, {self.symbol} {self.expiry}: {opts} option lines + "
            f"{int(UNDERLYING in self.lines)} underlying of {self.settings.line_budget}, strikes "
            f"{lo:g}-{hi:g}{extra}",
        )

    # ------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Connect (the connection supervises itself) and stream until cancelled."""
        self._status(ComponentStatus.DOWN, f"connecting to IB at {self.conn.address}")
        self.conn.start()
        if self.conn.is_connected():  # the broker connected first: this feed missed that callback
            try:
                await self._on_connected(self.conn.connects == 1)
            except (ConnectionError, OSError) as exc:  # dropped meanwhile: the reconnect sets up again
                log.warning("feed set-up interrupted: %s", exc)
        try:
            await asyncio.Event().wait()
        finally:  # the connection is the runtime's (shared with the broker): it closes it
            if self._window_task is not None:
                self._window_task.cancel()

    async def _on_connected(self, first: bool) -> None:
        if self._setup_for == self.conn.connects:
            return  # already set up on this connection
        self._setup_for = self.conn.connects
        # ib_async forgot every ticker with the old socket: so has the server
        self._forget_lines()
        self._ready = False
        self._gap = False
        await self._set_market_data_type()
        if not await self._discover():
            self.conn.spawn(self._retry_setup(self.conn.connects))
            return
        await self._subscribe_underlying()
        await self._wait_for_spot()
        await self._rewindow(force=True)
        self._ready = True
        self._report_ok()

    async def _retry_setup(self, connects: int) -> None:
        """IB could not describe the chain (farm down, no permissions): try again on this connection."""
        await asyncio.sleep(SETUP_RETRY_S)
        if self.conn.connects == connects and self.conn.is_connected() and not self._ready:
            self._setup_for = 0
            try:
                await self._on_connected(False)
            except (ConnectionError, OSError) as exc:
                log.warning("feed set-up interrupted: %s", exc)

    def _forget_lines(self) -> None:
        self.lines.clear()
        self._key_by_ticker.clear()
        self._key_by_req.clear()
        self._und = None
        self._pending.clear()

    def _on_disconnected(self) -> None:
        self._ready = False
        self._mark_all_stale()
        self._forget_lines()
        if self._window_task is not None:
            self._window_task.cancel()
            self._window_task = None
        self._status(ComponentStatus.DOWN, "IB connection lost: quotes stale, resubscribing on reconnect")

    def _on_ib_lost(self) -> None:
        self._gap = True
        self._mark_all_stale()
        self._report_ok()

    async def _on_restored(self, data_lost: bool) -> None:
        self._gap = False
        if data_lost:
            self._mark_all_stale()  # whatever we hold is from before the gap until it ticks again
            if self._ready:
                await self.resubscribe_all()
        self._report_ok()

    def _mark_all_stale(self) -> None:
        if not self._last:
            return
        self._stale.clear()
        self._stale.update(self._last)
        quotes = tuple(
            replace(q, flags=q.flags | QuoteFlag.STALE) for q in self._ordered(self._last.values())
        )
        self._last = {(q.strike, q.right.value): q for q in quotes}
        self._emit(quotes, None)

    # ------------------------------------------------------------- set-up

    async def _request(self, awaitable: Any, what: str) -> Any:
        try:
            return await asyncio.wait_for(awaitable, REQUEST_TIMEOUT_S)
        except TimeoutError:
            self.notice(
                NoticeLevel.WARN, "feed.timeout", f"IB did not answer {what} within {REQUEST_TIMEOUT_S:g} s"
            )
            return None

    async def _set_market_data_type(self) -> None:
        await self.conn.pacer.acquire()
        self.ib.reqMarketDataType(self.settings.market_data_type)
        self.notice(
            NoticeLevel.INFO if self.settings.market_data_type == 1 else NoticeLevel.WARN,
            "feed.market_data_type",
            f"IB market data type: {self.type_name}",
        )

    async def _discover(self) -> bool:
        """Qualify the underlying, read its option parameters and pick the expiry."""
        stock = Stock(self.symbol, "SMART", "USD")
        await self.conn.pacer.acquire()
        details = await self._request(
            self.ib.reqContractDetailsAsync(stock), f"contract details of {self.symbol}"
        )
        if not details:
            self._status(ComponentStatus.DOWN, f"IB does not know {self.symbol} (no contract details)")
            self.notice(
                NoticeLevel.ERROR,
                "feed.no_underlying",
                f"IB has no contract details for {self.symbol} STK SMART USD",
            )
            return False
        stock = details[0].contract
        stock.exchange = "SMART"
        self.contracts[UNDERLYING] = stock
        await self.conn.pacer.acquire()
        chains = await self._request(
            self.ib.reqSecDefOptParamsAsync(self.symbol, "", "STK", stock.conId), "option parameters"
        )
        chosen = [c for c in chains or () if c.tradingClass == self.symbol and c.exchange == "SMART"]
        if not chosen:
            chosen = [c for c in chains or () if c.tradingClass == self.symbol]
        if not chosen:
            self._status(ComponentStatus.DOWN, f"no {self.symbol} option parameters from IB")
            self.notice(
                NoticeLevel.ERROR,
                "feed.no_chain",
                f"IB returned no option parameters for trading class {self.symbol}",
            )
            return False
        chain = chosen[0]
        expiries = sorted(str(e) for e in chain.expirations)
        if self.want_expiry in expiries:
            expiry = self.want_expiry
        else:
            later = [e for e in expiries if e >= self.want_expiry]
            if not later:
                self.notice(
                    NoticeLevel.ERROR,
                    "feed.no_expiry",
                    f"no {self.symbol} expiry on or after {self.want_expiry}",
                )
                return False
            expiry = later[0]
            self.notice(
                NoticeLevel.WARN,
                "feed.expiry",
                f"no {self.symbol} options expire on {self.want_expiry}; streaming {expiry} instead",
                once=f"expiry-{expiry}",
            )
        if self.expiry and expiry != self.expiry:
            self._last.clear()
            self._stale.clear()
        self.expiry = expiry
        self.trading_class = chain.tradingClass
        with contextlib.suppress(TypeError, ValueError):
            self.multiplier = int(float(chain.multiplier or 100))
        self.strikes = sorted({float(k) for k in chain.strikes if math.isfinite(float(k)) and k > 0})
        return True

    async def _subscribe_underlying(self) -> None:
        contract = self.contracts[UNDERLYING]
        await self._subscribe(UNDERLYING, contract)

    async def _wait_for_spot(self) -> None:
        deadline = asyncio.get_running_loop().time() + SPOT_WAIT_S
        while asyncio.get_running_loop().time() < deadline:
            if self._und is not None:
                px = underlying_price(self._und)
                if math.isfinite(px):
                    self.spot = px
                    return
            await asyncio.sleep(0.02)
        if not math.isfinite(self.spot) and self.strikes:
            self.spot = self.strikes[len(self.strikes) // 2]
            self.notice(
                NoticeLevel.WARN,
                "feed.no_spot",
                f"no {self.symbol} price from IB within {SPOT_WAIT_S:g} s; window centred on {self.spot:g} for now",
            )

    # ------------------------------------------------------------- lines

    def _option(self, strike: float, right: str) -> Any:
        key = (strike, right)
        c = self.contracts.get(key)
        if c is None:
            c = Option(
                self.symbol,
                self.expiry,
                strike,
                right,
                "SMART",
                multiplier=str(self.multiplier),
                currency="USD",
                tradingClass=self.trading_class,
            )
        return c

    async def _qualify(self, strike: float) -> bool:
        """Contract details of both rights of ``strike`` (cached); False when IB has none (error 200)."""
        ok = True
        for right in ("C", "P"):
            key = (strike, right)
            c = self.contracts.get(key)
            if c is not None and c.conId:
                continue
            await self.conn.pacer.acquire()
            details = await self._request(
                self.ib.reqContractDetailsAsync(self._option(strike, right)),
                f"contract details of {strike:g}{right}",
            )
            if not details:
                ok = False
                break
            d = details[0]
            c = d.contract
            c.exchange = "SMART"
            self.contracts[key] = c
            self.conn.con_ids[(self.expiry, strike, right)] = int(c.conId)
            tick = _finite(getattr(d, "minTick", math.nan))
            if tick > 0:
                self.tick = tick
        if not ok:
            self.no_def.add(strike)
            self.notice(
                NoticeLevel.WARN,
                "feed.no_secdef",
                f"IB has no {self.symbol} {self.expiry} {strike:g} option (200: no security definition); strike skipped",
                once=f"nodef-{strike}",
            )
        return ok

    def _live_option_lines(self) -> int:
        return sum(1 for k in self.lines if k != UNDERLYING)

    async def _subscribe(self, key: Key, contract: Any) -> None:
        if key in self.lines or not self.conn.is_connected():
            return
        if key != UNDERLYING and self._live_option_lines() >= min(
            self.option_line_cap, 2 * self.capacity_strikes
        ):
            return  # never beyond the budget
        await self.conn.pacer.acquire()
        if not self.conn.is_connected():
            return
        ticker = self.ib.reqMktData(contract, "", False, False)
        req_id = self.ib.wrapper.ticker2ReqId["mktData"].get(ticker)
        self.lines[key] = ticker
        self._key_by_ticker[id(ticker)] = key
        if req_id is not None:
            self._key_by_req[int(req_id)] = key
        if key == UNDERLYING:
            self._und = ticker
        self.subscribe_calls += 1
        self.max_lines = max(self.max_lines, len(self.lines))

    async def _unsubscribe(self, key: Key) -> None:
        ticker = self.lines.pop(key, None)
        if ticker is None:
            return
        self._key_by_ticker.pop(id(ticker), None)
        for rid, k in list(self._key_by_req.items()):
            if k == key:
                del self._key_by_req[rid]
        self._pending.discard(ticker)
        if self.conn.is_connected():
            await self.conn.pacer.acquire()
            with contextlib.suppress(ConnectionError):
                self.ib.cancelMktData(ticker.contract)

    def _drop_line_now(self, key: Key) -> None:
        """Forget a line IB refused (no cancel needed) and clean ib_async's mapping."""
        ticker = self.lines.pop(key, None)
        if ticker is None:
            return
        self._key_by_ticker.pop(id(ticker), None)
        self._pending.discard(ticker)
        with contextlib.suppress(Exception):
            self.ib.wrapper.endTicker(ticker, "mktData")

    async def resubscribe_all(self) -> None:
        """After 1101: IB dropped every subscription; cancel and request each line again."""
        self.resubscriptions += 1
        async with self._window_lock:
            keys = list(self.lines)
            for key in keys:
                ticker = self.lines.get(key)
                if ticker is None:  # refused meanwhile (101, 200)
                    continue
                await self._unsubscribe(key)
                await self._subscribe(key, ticker.contract)
        self.notice(NoticeLevel.INFO, "feed.resubscribed", f"resubscribed {len(keys)} market data lines")

    def _target_window(self) -> list[float]:
        valid = [k for k in self.strikes if k not in self.no_def]
        return choose_window(valid, self.spot, self.capacity_strikes)

    def needs_recenter(self) -> bool:
        if not self.window or not math.isfinite(self.spot):
            return bool(self.strikes) and math.isfinite(self.spot)
        valid = [k for k in self.strikes if k not in self.no_def]
        if not valid or self.center is None:
            return True
        atm = min(valid, key=lambda k: (abs(k - self.spot), k))
        try:
            moved = abs(valid.index(atm) - valid.index(self.center))
        except ValueError:
            return True
        return moved > self.settings.window_hysteresis_strikes

    async def _rewindow(self, force: bool = False) -> None:
        async with self._window_lock:
            # re-check after each pass: the money may have moved on while the lines were being changed,
            # and strikes without a definition shrink the target; a few rounds at most
            again = force
            for _ in range(8):
                if not again and not self.needs_recenter():
                    break
                target = self._target_window()
                valid = [k for k in self.strikes if k not in self.no_def]
                if not target or not valid:
                    break
                self.center = min(valid, key=lambda k: (abs(k - self.spot), k))
                current = {k[0] for k in self.lines if k != UNDERLYING}
                for strike in sorted(current - set(target)):
                    await self._unsubscribe((strike, "C"))
                    await self._unsubscribe((strike, "P"))
                # out of the book too, with quotes kept from before a reconnect that the new window leaves out
                removed = sorted((current | {k for k, _ in self._last}) - set(target))
                if removed:
                    for strike in removed:
                        self._last.pop((strike, "C"), None)
                        self._last.pop((strike, "P"), None)
                    self._emit((), None, removed=tuple(removed))
                complete = {k for k in current if (k, "C") in self.lines and (k, "P") in self.lines}
                added = sorted(set(target) - complete, key=lambda k: (abs(k - self.spot), k))
                results = await asyncio.gather(*(self._qualify(k) for k in added))
                for strike, ok in zip(added, results, strict=True):
                    if not ok:
                        continue
                    for right in ("C", "P"):
                        await self._subscribe((strike, right), self.contracts[(strike, right)])
                self.window = sorted(k[0] for k in self.lines if k != UNDERLYING and k[1] == "C")
                again = not all(results)  # refill the places of strikes IB does not list
            if self._ready:
                self._report_ok()

    def _maybe_recenter(self) -> None:
        if not self._ready or (self._window_task is not None and not self._window_task.done()):
            return
        if self.needs_recenter():
            self._window_task = asyncio.ensure_future(self._rewindow_guarded())

    async def _rewindow_guarded(self) -> None:
        try:
            await self._rewindow()
        except (ConnectionError, OSError) as exc:
            log.warning("window move interrupted: %s", exc)

    # ------------------------------------------------------------- errors

    def _on_error(self, req_id: int, code: int, message: str) -> None:
        if is_warning(code) or req_id < 0:
            if code == DELAYED_INSTEAD:
                self.notice(
                    NoticeLevel.WARN,
                    "feed.delayed",
                    f"IB sends delayed data (10167): {message}",
                    once="10167",
                )
            return
        key = self._key_by_req.get(req_id)
        if key is None:
            return
        what = f"{self.symbol}" if key == UNDERLYING else f"{self.symbol} {self.expiry} {key[0]:g}{key[1]}"
        if code == MAX_TICKERS:
            self._drop_line_now(key)
            opts = self._live_option_lines()
            self.capacity_strikes = max(1, min(self.capacity_strikes, opts // 2))
            self.notice(
                NoticeLevel.ERROR,
                "feed.max_tickers",
                f"IB refused a market data line for {what} (101: max tickers): window shrunk to "
                f"{self.capacity_strikes} strikes; lower ib.line_budget to your account's line count",
            )
            self._schedule(lambda: self._rewindow(force=True))
        elif code in NOT_SUBSCRIBED:
            self._drop_line_now(key)
            self._not_subscribed = True
            self.notice(
                NoticeLevel.ERROR,
                "feed.not_subscribed",
                f"no IB market data subscription for {what} ({code}): {message}. SPY options need OPRA "
                "(US options) and the underlying a US equities bundle",
                once=f"354-{key == UNDERLYING}",
            )
            self._report_ok()
        elif code == NO_SECDEF:
            self._drop_line_now(key)
            if key != UNDERLYING:
                self.no_def.add(key[0])
                other = (key[0], "P" if key[1] == "C" else "C")
                self._schedule(lambda: self._unsubscribe(other))
                self.notice(
                    NoticeLevel.WARN,
                    "feed.no_secdef",
                    f"IB has no security definition for {what} (200); strike skipped",
                    once=f"nodef-{key[0]}",
                )
                self._schedule(lambda: self._rewindow(force=True))
        elif code == 300:
            return  # cancel of a line IB had already forgotten
        else:
            self.notice(
                NoticeLevel.WARN,
                "feed.ib_error",
                f"IB error {code} on {what}: {message}",
                once=f"{code}-{key}",
            )

    def _schedule(self, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        async def guarded() -> None:
            try:
                await make()
            except (ConnectionError, OSError) as exc:
                log.warning("feed request interrupted: %s", exc)

        self.conn.spawn(guarded())

    # ------------------------------------------------------------- ticks

    def _on_pending(self, tickers: Iterable[Any]) -> None:
        self._pending.update(t for t in tickers if id(t) in self._key_by_ticker)
        if self._pending and self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Publish everything that changed since the last flush as one chain update."""
        self._flush_handle = None
        pending, self._pending = self._pending, set()
        now = self.clock_ns()
        quotes: list[OptionQuote] = []
        und: UnderlyingTick | None = None
        for t in pending:
            key = self._key_by_ticker.get(id(t))
            if key is None:
                continue
            self._check_type(t)
            if key == UNDERLYING:
                px = underlying_price(t)
                if math.isfinite(px):
                    self.spot = px
                    und = UnderlyingTick(
                        self.symbol,
                        px,
                        bid=_finite(t.bid),
                        ask=_finite(t.ask),
                        volume=_size(t.volume),
                        prev_close=_finite(t.close),
                        quote_ts_ns=now,
                    )
                continue
            if not self._gap:
                self._stale.discard(key)
            q = quote_from_ticker(t, key, now, key in self._stale)
            self._last[key] = q
            quotes.append(q)
        if quotes or und is not None:
            self._emit(self._ordered(quotes), und)
        if und is not None:
            self._maybe_recenter()

    def _check_type(self, t: Any) -> None:
        got = int(getattr(t, "marketDataType", 1) or 1)
        if got != self._seen_type:
            self._seen_type = got
            if got != self.settings.market_data_type:
                self.notice(
                    NoticeLevel.WARN,
                    "feed.market_data_type",
                    f"IB sends {MARKET_DATA_TYPES.get(got, str(got))} ({got}) data, configured {self.type_name}",
                )

    @staticmethod
    def _ordered(quotes: Iterable[OptionQuote]) -> tuple[OptionQuote, ...]:
        return tuple(sorted(quotes, key=lambda q: (q.strike, q.right is Right.PUT)))

    def _emit(
        self, quotes: tuple[OptionQuote, ...], und: UnderlyingTick | None, removed: tuple[float, ...] = ()
    ) -> None:
        if not self.expiry:
            if und is not None:
                self._publish(und)
            return
        if not quotes and not removed:
            if und is not None:
                self._publish(und)
            return
        self._publish(
            ChainUpdate(
                symbol=self.symbol,
                expiry=self.expiry,
                quotes=quotes,
                full=False,
                multiplier=self.multiplier,
                tick=self.tick,
                underlying=und.last if und is not None else self.spot,
                removed_strikes=removed,
                trading_class=self.trading_class,
                underlying_tick=und,
            )
        )
