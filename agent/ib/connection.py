"""One API connection to IB Gateway / TWS: connect, pick a free client id, reconnect, pace requests.

``ib_async`` does not reconnect by itself and clears all of its state on a disconnect, so this module
supervises the connection:

* connect with the configured client id; error 326 (id in use) moves on to the next id of
  ``client_id_pool`` at once; when every id is taken, or the Gateway cannot be reached (down, or its
  nightly restart), try again with exponential backoff and full jitter (plain asyncio:
  ``delay = uniform(initial/2, min(max, initial * 2**attempt))``), reset after a good connection;
* a socket drop is reported (notice + health) and followed by the same reconnect loop; the feed and
  the broker register callbacks that resubscribe and reconcile once the connection is back;
* IB's system messages become health and notices: 1100 (Gateway lost IB), 1101 (restored, market data
  lost: resubscribe), 1102 (restored, data kept), farm status 2103-2108/2157/2158, 10197 (a competing
  live session of the same user takes the market data);
* pacing: IB allows about 50 messages per second per connection. ``ib_async``'s own sliding-window
  throttle is set to ``request_rate`` (default 45) per 1.1 s as a hard cap on everything sent,
  including the library's own start-up requests (the extra 0.1 s absorbs delivery jitter); on top of it :class:`Pacer` (an async sliding window) meters our
  own requests so that bulk work (subscriptions, contract look-ups) never uses the last few slots of
  a second: orders and cancels always find room and never queue behind a burst of subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ib_async import IB

from agent.domain import ComponentHealth, ComponentStatus, NoticeLevel
from agent.settings import IBSettings

log = logging.getLogger(__name__)

NoticeFn = Callable[[NoticeLevel, str, str], None]
HealthFn = Callable[[ComponentHealth], None]

STABLE_CONNECTION_S = 10.0  # a connection that lasted this long (or the longest backoff) resets the backoff
URGENT_HEADROOM = 5  # slots per second that only urgent requests (orders, cancels) may use
# counted over 1.1 s rather than 1 s: messages sent at the edges of a window can reach the Gateway closer
# together than they left (delivery and event-loop jitter), and the Gateway counts what it receives
PACING_WINDOW_S = 1.1

# IB message codes (https://ibkrcampus.com/campus/ibkr-api-page/twsapi-doc/#api-error-codes)
CLIENT_ID_IN_USE = 326
COMPETING_SESSION = 10197
CONNECTIVITY_LOST = 1100
RESTORED_DATA_LOST = 1101
RESTORED_DATA_KEPT = 1102
SOCKET_PORT_RESET = 1300
MAX_RATE_EXCEEDED = 100
FARM_OK = frozenset({2104, 2106, 2158, 2107})  # market data, HMDS, sec-def farm OK; HMDS inactive but OK
FARM_ON_DEMAND = frozenset({2108})  # market data farm inactive, available on demand
FARM_BROKEN = frozenset({2103, 2105, 2157})
TWS_SERVER_BROKEN = 2110


def is_warning(code: int) -> bool:
    """IB's informational codes 2100-2169: never an error of a request, never the end of an order."""
    return 2100 <= code <= 2169


def _consume(fut: asyncio.Future[Any]) -> None:
    """Retrieve a finished future's exception so that asyncio does not log it as never retrieved."""
    if not fut.cancelled():
        fut.exception()


class Pacer:
    """At most ``rate`` acquisitions in any ``per_s`` window; non-urgent ones leave ``headroom`` free."""

    def __init__(
        self,
        rate: int,
        per_s: float = 1.0,
        headroom: int = URGENT_HEADROOM,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate < 1:
            raise ValueError(f"pacing rate must be >= 1, got {rate}")
        self.rate = rate
        self.per_s = per_s
        self.headroom = min(headroom, rate - 1)
        self._clock = clock
        self._times: deque[float] = deque()
        self.slowed_until = 0.0
        self.waits = 0

    def _limit(self, urgent: bool) -> int:
        limit = self.rate if urgent else self.rate - self.headroom
        if self._clock() < self.slowed_until:
            limit = max(1, limit // 2)
        return limit

    def try_acquire(self, urgent: bool = False) -> float:
        """0.0 and a slot taken, or the seconds to wait before trying again."""
        now = self._clock()
        while self._times and now - self._times[0] >= self.per_s:
            self._times.popleft()
        limit = self._limit(urgent)
        if len(self._times) < limit:
            self._times.append(now)
            return 0.0
        # the slot frees when the (len - limit + 1)-th oldest leaves the window
        oldest = self._times[len(self._times) - limit]
        return max(1e-3, oldest + self.per_s - now)

    async def acquire(self, urgent: bool = False) -> None:
        while True:
            wait = self.try_acquire(urgent)
            if wait == 0.0:
                return
            self.waits += 1
            await asyncio.sleep(wait)

    def slow_down(self, seconds: float = 10.0) -> None:
        """Halve the rate for a while (after IB said we sent too fast: error 100)."""
        self.slowed_until = self._clock() + seconds


def backoff_delay(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: uniform in [initial/2, min(cap, initial * 2**attempt)]."""
    top = min(cap, initial * (2 ** min(attempt, 30)))
    return rng.uniform(min(initial / 2, top), top)


ConnectedCb = Callable[[bool], Awaitable[None]]  # argument: first connection of this process
PlainCb = Callable[[], None]
RestoredCb = Callable[[bool], Awaitable[None]]  # argument: data lost (1101) or kept (1102)
ErrorCb = Callable[[int, int, str], None]  # req_id, code, message


@dataclass
class _Callbacks:
    connected: list[ConnectedCb] = field(default_factory=list)
    disconnected: list[PlainCb] = field(default_factory=list)
    ib_lost: list[PlainCb] = field(default_factory=list)
    restored: list[RestoredCb] = field(default_factory=list)
    error: list[ErrorCb] = field(default_factory=list)


class IBConnection:
    """Supervises one ``ib_async.IB`` connection; see the module docstring."""

    def __init__(
        self,
        settings: IBSettings,
        *,
        notice: NoticeFn,
        health: HealthFn,
        name: str = "ib",
        ib: Any = None,
        seed: int | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self._notice = notice
        self._health = health
        self.ib: Any = ib if ib is not None else IB()
        self.ib.client.MaxRequests = settings.request_rate
        self.ib.client.RequestsInterval = PACING_WINDOW_S
        self.pacer = Pacer(settings.request_rate, per_s=PACING_WINDOW_S)
        self.callbacks = _Callbacks()
        self.client_id: int | None = None
        self.connected = asyncio.Event()
        self.ib_link_up = True  # False between 1100 and 1101/1102
        self.competing_session = False
        self.connects = 0
        self.farms: dict[str, str] = {}
        self.con_ids: dict[tuple[str, float, str], int] = {}  # (expiry, strike, right) -> conId, shared cache
        self._rng = random.Random(seed)
        self._task: asyncio.Task[None] | None = None
        self._dropped: asyncio.Event = asyncio.Event()
        self._id_in_use: asyncio.Future[int] | None = None
        self._closing = False
        self._background: set[asyncio.Future[None]] = set()
        self._status: tuple[ComponentStatus, str] | None = None
        self.ib.errorEvent += self._on_error
        self.ib.disconnectedEvent += self._on_disconnected

    # ------------------------------------------------------------- reporting

    def notice(self, level: NoticeLevel, code: str, message: str) -> None:
        log.log(
            {NoticeLevel.INFO: logging.INFO, NoticeLevel.WARN: logging.WARNING}.get(level, logging.ERROR),
            "%s: %s",
            code,
            message,
        )
        self._notice(level, code, message)

    def _set_status(self, status: ComponentStatus, detail: str) -> None:
        if self._status != (status, detail):
            self._status = (status, detail)
            self._health(ComponentHealth(self.name, status, detail))

    @property
    def closing(self) -> bool:
        return self._closing

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, keeping a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def is_connected(self) -> bool:
        return bool(self.ib.isConnected()) and self.connected.is_set()

    # ------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start supervising (idempotent); ``wait_connected`` waits for the first connection."""
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"{self.name}-connection")

    async def wait_connected(self, wait_s: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self.connected.wait(), wait_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for t in list(self._background):
            t.cancel()
        self.disconnect()

    def disconnect(self) -> None:
        self._closing = True
        self.connected.clear()
        with contextlib.suppress(Exception):  # the loop may already be closing
            self.ib.disconnect()

    def client_ids(self) -> list[int]:
        ids = [self.settings.client_id, *self.settings.client_id_pool]
        return list(dict.fromkeys(ids))

    async def _supervise(self) -> None:
        attempt = 0
        while not self._closing:
            ok = await self._connect_any()
            if ok:
                up_since = time.monotonic()
                self._dropped.clear()
                first = self.connects == 1
                for cb in list(self.callbacks.connected):
                    try:
                        await cb(first)
                    except (ConnectionError, OSError) as exc:
                        log.warning("%s: connection lost during resync: %s", self.name, exc)
                    except Exception as exc:  # a callback that fails must say so, not stop reconnecting
                        log.exception("%s: on-connect callback failed", self.name)
                        self.notice(
                            NoticeLevel.ERROR, "ib.resync_failed", f"resync after connect failed: {exc}"
                        )
                await self._dropped.wait()
                if self.closing:
                    return
                # a connection that held for longer than the longest backoff starts over; one the Gateway
                # closes soon after accepting it (restarting, refusing this login) keeps backing off, so
                # that a Gateway which accepts and drops never gets a reconnect every initial delay
                if time.monotonic() - up_since >= max(self.settings.reconnect_max_s, STABLE_CONNECTION_S):
                    attempt = 0
                delay = backoff_delay(
                    attempt, self.settings.reconnect_initial_s, self.settings.reconnect_max_s, self._rng
                )
                attempt += 1
            else:
                delay = backoff_delay(
                    attempt, self.settings.reconnect_initial_s, self.settings.reconnect_max_s, self._rng
                )
                attempt += 1
            self._set_status(ComponentStatus.DOWN, f"{self.address}: reconnecting in {delay:.1f} s")
            await asyncio.sleep(delay)

    async def _connect_any(self) -> bool:
        """Try each client id once; True when connected (and synchronised)."""
        ids = self.client_ids()
        for i, cid in enumerate(ids):
            outcome = await self._connect_once(cid)
            if outcome == "ok":
                return True
            if outcome == "in_use":
                nxt = ids[i + 1] if i + 1 < len(ids) else None
                more = f"trying client id {nxt}" if nxt is not None else "no other id in ib.client_id_pool"
                self.notice(
                    NoticeLevel.WARN,
                    "ib.client_id_in_use",
                    f"client id {cid} is already in use at {self.address} (326); {more}",
                )
                continue
            return False  # unreachable or failed: back off before the next round
        self._set_status(ComponentStatus.DOWN, f"{self.address}: every client id in use ({ids})")
        return False

    async def _connect_once(self, client_id: int) -> str:
        s = self.settings
        loop = asyncio.get_running_loop()
        self._id_in_use = loop.create_future()
        peer_closed: asyncio.Future[str] = loop.create_future()

        def on_api_error(msg: str) -> None:  # the Gateway closed the socket before the API was ready
            if not peer_closed.done():
                peer_closed.set_result(str(msg))

        self.ib.client.apiError += on_api_error
        self._set_status(ComponentStatus.DEGRADED, f"connecting to {self.address} as client {client_id}")
        connect = asyncio.ensure_future(
            self.ib.connectAsync(
                s.host,
                s.port,
                clientId=client_id,
                timeout=s.connect_timeout_s,
                readonly=s.read_only,
                account=s.account,
            )
        )
        connect.add_done_callback(_consume)
        try:
            done, _ = await asyncio.wait(
                {connect, self._id_in_use, peer_closed}, return_when=asyncio.FIRST_COMPLETED
            )
            if self._id_in_use in done or (peer_closed in done and connect not in done):
                await asyncio.sleep(0)  # let a 326 that came with the close be seen
                in_use = self._id_in_use.done()
                connect.cancel()
                with contextlib.suppress(BaseException):
                    await connect
                with contextlib.suppress(Exception):
                    self.ib.disconnect()
                if in_use:
                    return "in_use"
                raise ConnectionError(f"the Gateway closed the connection ({peer_closed.result()})")
            connect.result()
        except (OSError, TimeoutError, ConnectionError) as exc:
            with contextlib.suppress(Exception):
                self.ib.disconnect()
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._set_status(ComponentStatus.DOWN, f"cannot connect to {self.address}: {why}")
            if self.connects == 0 or self._status is None or "cannot connect" not in self._status[1]:
                log.warning("%s: cannot connect to %s: %s", self.name, self.address, why)
            return "failed"
        finally:
            self._id_in_use = None
            self.ib.client.apiError -= on_api_error
            if not connect.done():
                connect.cancel()
        if not self.ib.isConnected():
            return "failed"
        if self._closing:  # closed while the connection was being made: do not come back to life
            with contextlib.suppress(Exception):
                self.ib.disconnect()
            return "failed"
        self.client_id = client_id
        self.connects += 1
        self.ib_link_up = True
        self.connected.set()
        accounts = ",".join(self.ib.wrapper.accounts) or "?"
        mode = "read-only" if s.read_only else "trading"
        again = "reconnected" if self.connects > 1 else "connected"
        self._set_status(
            ComponentStatus.OK, f"{again} to {self.address}, client {client_id}, account {accounts}, {mode}"
        )
        self.notice(
            NoticeLevel.INFO if self.connects == 1 else NoticeLevel.WARN,
            f"ib.{again}",
            f"{again} to IB at {self.address} as client {client_id} (account {accounts}, {mode} API)",
        )
        return "ok"

    # ------------------------------------------------------------- events from ib_async

    def _on_disconnected(self) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        self._dropped.set()
        if not was or self._closing:
            return
        self._set_status(ComponentStatus.DOWN, f"connection to {self.address} lost")
        self.notice(
            NoticeLevel.ERROR,
            "ib.disconnected",
            f"lost the connection to IB at {self.address} (socket closed: Gateway restart or network); "
            "reconnecting with backoff, quotes marked stale, orders reconciled on reconnect",
        )
        for cb in list(self.callbacks.disconnected):
            try:
                cb()
            except Exception:
                log.exception("%s: on-disconnect callback failed", self.name)

    def _on_error(self, req_id: int, code: int, message: str, contract: Any) -> None:
        try:
            self._handle_error(req_id, code, message)
        except Exception:  # never let a handler break ib_async's dispatch
            log.exception("%s: error handler failed for %s", self.name, code)

    def _handle_error(self, req_id: int, code: int, message: str) -> None:
        if code == CLIENT_ID_IN_USE:
            if self._id_in_use is not None and not self._id_in_use.done():
                self._id_in_use.set_result(code)
            return
        if code == COMPETING_SESSION:
            if not self.competing_session:
                self.competing_session = True
                self.notice(
                    NoticeLevel.ERROR,
                    "ib.competing_session",
                    "another session of this IB user is logged in with live market data (10197): no "
                    "quotes here until it logs out (use a separate username for the Gateway)",
                )
            self._set_status(ComponentStatus.DEGRADED, "competing live session: no market data (10197)")
        elif code == CONNECTIVITY_LOST:
            self.ib_link_up = False
            self._set_status(ComponentStatus.DOWN, f"Gateway lost its link to IB (1100): {message}")
            self.notice(
                NoticeLevel.ERROR,
                "ib.connectivity_lost",
                f"IB Gateway lost connectivity to IB (1100): quotes marked stale until restored. {message}",
            )
            for cb in list(self.callbacks.ib_lost):
                cb()
        elif code in (RESTORED_DATA_LOST, RESTORED_DATA_KEPT):
            lost = code == RESTORED_DATA_LOST
            self.ib_link_up = True
            self._set_status(ComponentStatus.OK, f"Gateway link to IB restored ({code})")
            self.notice(
                NoticeLevel.WARN if lost else NoticeLevel.INFO,
                "ib.connectivity_restored",
                f"IB connectivity restored ({code}): "
                + ("market data lost, resubscribing" if lost else "market data kept"),
            )
            for rcb in list(self.callbacks.restored):
                self.spawn(self._run_restored(rcb, lost))
        elif code == SOCKET_PORT_RESET:
            self.notice(NoticeLevel.WARN, "ib.port_reset", f"IB reset the socket port (1300): {message}")
        elif code == MAX_RATE_EXCEEDED:
            self.pacer.slow_down()
            self.notice(
                NoticeLevel.ERROR,
                "ib.pacing",
                f"IB says we sent too many messages per second (100): slowing down. {message}",
            )
        elif code in FARM_OK or code in FARM_ON_DEMAND or code in FARM_BROKEN or code == TWS_SERVER_BROKEN:
            self._farm(code, message)
        for ecb in list(self.callbacks.error):
            try:
                ecb(req_id, code, message)
            except Exception:
                log.exception("%s: error callback failed for %s", self.name, code)

    async def _run_restored(self, cb: RestoredCb, lost: bool) -> None:
        try:
            await cb(lost)
        except (ConnectionError, OSError) as exc:
            log.warning("%s: connection lost while restoring: %s", self.name, exc)
        except Exception as exc:
            log.exception("%s: restore callback failed", self.name)
            self.notice(
                NoticeLevel.ERROR,
                "ib.resync_failed",
                f"resubscribe after {1101 if lost else 1102} failed: {exc}",
            )

    def _farm(self, code: int, message: str) -> None:
        """Farm status messages ("Market data farm connection is OK:usfarm") become health."""
        farm = message.rsplit(":", 1)[-1].strip() if ":" in message else str(code)
        if code in FARM_OK:
            state = "ok"
        elif code in FARM_ON_DEMAND:
            state = "inactive (on demand)"
        else:
            state = "broken"
        self.farms[farm] = state
        broken = sorted(f for f, st in self.farms.items() if st == "broken")
        detail = ", ".join(f"{f} {st}" for f, st in sorted(self.farms.items()))
        self._health(
            ComponentHealth(
                f"{self.name}.farms", ComponentStatus.DEGRADED if broken else ComponentStatus.OK, detail
            )
        )
        if state == "broken":
            self.notice(NoticeLevel.WARN, "ib.farm", f"IB data farm {farm} disconnected ({code}): {message}")
