"""Composes an agent from its settings: clock, event log, the roles' tasks and the gRPC server.

``AgentRuntime.run()`` serves until cancelled; ``start_in_thread()`` runs the same agent on its own
event loop in a background thread (the console's ``--demo`` and the tests use it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from agent.clock import MarketClock
from agent.domain import ComponentHealth, ComponentStatus, Health, Notice, NoticeLevel
from agent.eventlog import EventLog
from agent.events import Payload
from agent.feeds.replay import ReplaySource, open_replay
from agent.feeds.upstream import UpstreamFeed
from agent.roles.detector import DetectorRole
from agent.roles.executor import ExecutorRole, ExecutorStartError
from agent.server import AgentIdentity, AgentServicer, AgentStartError, RunningServer, start_server
from agent.session import NEW_YORK, Session, session, session_on_or_after, to_ns, today_new_york
from agent.settings import AgentSettings, ConfigError

if TYPE_CHECKING:
    from agent.ib.connection import IBConnection

log = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 2.0
DEMO_DEFAULT_START = "10:30"
AVAILABLE_ROLES = frozenset({"feed", "detector", "executor"})


def choose_session_and_clock(
    settings: AgentSettings, now: dt.datetime | None = None
) -> tuple[Session, MarketClock, str]:
    """The session to run and the market clock, with a sentence for the operator about the choice.

    Real time when the market is open now and no start/speed was asked for; otherwise a simulated
    clock started at ``clock.start`` (default 10:30 New York) on the chosen session.
    """
    now = now or dt.datetime.now(dt.UTC)
    c = settings.clock
    sess = session(c.date) if c.date else session_on_or_after(today_new_york(now))
    now_ns = to_ns(now)
    if c.start is None and c.speed == 1.0 and sess.is_open(now_ns):
        return sess, MarketClock(), f"real-time clock, session {sess.date} (closes {_ny(sess.close_utc)} NY)"
    start = sess.at(c.start or DEMO_DEFAULT_START)
    why = "" if c.start else " (market closed now)"
    return (
        sess,
        MarketClock(speed=c.speed, anchor_market_ns=to_ns(start)),
        f"simulated clock from {c.start or DEMO_DEFAULT_START} NY{why} at {c.speed:g}x, session {sess.date}"
        f"{' (half day)' if sess.half_day else ''}",
    )


def _ny(t: dt.datetime) -> str:
    return t.astimezone(NEW_YORK).strftime("%H:%M")


class AgentRuntime:
    def __init__(self, settings: AgentSettings) -> None:
        missing = sorted(set(settings.roles) - AVAILABLE_ROLES)
        if missing:
            raise ConfigError(
                f"role(s) {', '.join(missing)} not available in this version; available: "
                f"{', '.join(sorted(AVAILABLE_ROLES))}"
            )
        self.settings = settings
        self.incarnation = uuid.uuid4().hex[:12]
        self.replay: ReplaySource | None = None
        if settings.feed == "replay":
            assert settings.replay.path is not None
            self.replay = open_replay(settings.replay.path)
            first = self.replay.first_ts_ns
            day = (
                dt.datetime.fromtimestamp(first / 1e9, dt.UTC).astimezone(NEW_YORK).date() if first else None
            )
            self.session = session_on_or_after(settings.clock.date or day or today_new_york())
            anchor = first or to_ns(self.session.at(DEMO_DEFAULT_START))
            self.clock = MarketClock(speed=settings.clock.speed, anchor_market_ns=anchor)
            self.clock_note = f"replay of {settings.replay.path} ({settings.replay.pace} pace)"
        else:
            self.session, self.clock, self.clock_note = choose_session_and_clock(settings)
        self.log = EventLog(
            settings.agent_id,
            self.incarnation,
            clock_ns=self.clock.now_ns,
            buffer_size=settings.server.buffer_size,
            max_pending=settings.server.max_pending,
        )
        self._components: dict[str, ComponentHealth] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._server: RunningServer | None = None
        self.upstream: UpstreamFeed | None = None
        self.detector: DetectorRole | None = None
        self.executor: ExecutorRole | None = None
        self._ib: IBConnection | None = None
        self.port = 0
        self.feed_lag_ms = 0.0

    # ------------------------------------------------------------- publishing helpers

    def publish(self, payload: Payload, ts_ns: int | None = None) -> None:
        self.log.publish(payload, ts_ns or None)

    def notice(self, level: NoticeLevel, code: str, message: str, source: str = "agent") -> None:
        self.publish(Notice(level, code, message, source=source))

    def set_health(self, component: ComponentHealth) -> None:
        previous = self._components.get(component.name)
        self._components[component.name] = component
        if previous is None or previous.status != component.status:
            self._publish_health()

    def _publish_health(self) -> None:
        self.publish(
            Health(
                components=tuple(self._components[k] for k in sorted(self._components)),
                feed_lag_ms=self.feed_lag_ms,
                clients=self.log.clients,
                detector_lag_ms=self.detector.lag_p99_ms() if self.detector else 0.0,
                detector_eval_ms=self.detector.eval_p50_ms() if self.detector else 0.0,
            )
        )

    def ib_connection(self) -> IBConnection:
        """The agent's one connection to IB Gateway / TWS, shared by the IB feed and the IB broker."""
        if self._ib is None:
            from agent.ib.connection import IBConnection

            self._ib = IBConnection(
                self.settings.ib,
                notice=lambda level, code, message: self.notice(level, code, message, source="ib"),
                health=self.set_health,
            )
        return self._ib

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> int:
        """Start serving and the roles' tasks; returns the bound port."""
        s = self.settings
        identity = AgentIdentity(
            agent_id=s.agent_id,
            roles=s.roles,
            feed=s.feed if "feed" in s.roles or s.feed == "upstream" else "",
            session_date=self.session.date.isoformat(),
            session_close_ns=self.session.close_ns,
            clock_speed=s.clock.speed,
            upstream=s.upstream or "",
        )
        if "executor" in s.roles:
            try:
                self.executor = ExecutorRole(self, s.executor)
            except ExecutorStartError as exc:
                raise AgentStartError(str(exc)) from None
        commands = self.executor.execute if self.executor is not None else None
        try:
            self._server = await start_server(
                AgentServicer(self.log, identity, self.clock.now_ns, commands), s.server.host, s.server.port
            )
        except AgentStartError:
            if self.executor is not None:
                self.executor.close()
            raise
        self.port = self._server.port
        self.notice(NoticeLevel.INFO, "agent.started", f"agent {s.agent_id} started: {self.clock_note}")
        if "detector" in s.roles:
            self.detector = DetectorRole(self, s.detector)
            self._spawn(self.detector.run(), "detector")
            self.set_health(ComponentHealth("detector", ComponentStatus.OK, "evaluating every chain update"))
        if self.executor is not None:
            try:
                await self.executor.start()  # reconciles with the broker before any command is served
            except ExecutorStartError as exc:
                await self.stop()
                raise AgentStartError(str(exc)) from None
            self._spawn(self.executor.run(), "executor")
            if self.executor.elector is not None:
                self._spawn(self.executor.elector.run(), "lease")
            self.set_health(ComponentHealth("executor", ComponentStatus.OK, self.executor.broker_name))
        if "feed" in s.roles or s.feed == "upstream":
            # a detector (or executor) without a local feed takes its quotes from the upstream agent
            self._spawn(self._run_feed(), "feed")
        self._spawn(self._health_loop(), "health")
        return self.port

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a role that dies must say so, not vanish
                log.exception("role %s failed", name)
                self.set_health(ComponentHealth(name, ComponentStatus.DOWN, f"{type(exc).__name__}: {exc}"))
                self.notice(NoticeLevel.ERROR, f"{name}.failed", f"{name} stopped: {exc}", source=name)

        self._tasks.append(asyncio.create_task(guarded(), name=name))

    async def _run_feed(self) -> None:
        s = self.settings
        if s.feed == "sim":
            from agent.feeds.simdriver import run_simulation

            await run_simulation(self, s.sim)
        elif s.feed == "ib":
            from agent.ib.feed import IBFeed

            feed = IBFeed(
                self.ib_connection(),
                s.ib,
                publish=self.publish,
                notice=lambda level, code, message: self.notice(level, code, message, source="feed"),
                health=self.set_health,
                clock_ns=self.clock.now_ns,
                expiry=self.session.expiry,
            )
            await feed.run()
        elif s.feed == "replay":
            assert self.replay is not None
            self.set_health(ComponentHealth("feed", ComponentStatus.OK, self.clock_note))
            await self.replay.play(self, fast=s.replay.pace == "fast")
            self.set_health(ComponentHealth("feed", ComponentStatus.DEGRADED, "replay finished"))
        else:
            assert s.upstream is not None
            self.upstream = UpstreamFeed(
                s.upstream,
                self.publish,
                self.set_health,
                client_name=f"{s.agent_id}/feed",
            )
            await self.upstream.run()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            if self.upstream is not None:
                self.feed_lag_ms = self.upstream.lag_ms
            self._publish_health()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        if self._server is not None:
            await self._server.stop(0.5)
            self._server = None
        if self.executor is not None:
            self.executor.close()
            self.executor = None
        if self._ib is not None:
            await self._ib.close()
            self._ib = None

    async def run(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    # ------------------------------------------------------------- background thread

    def start_in_thread(self, timeout: float = 30.0) -> AgentThread:
        th = AgentThread(self)
        th.start_and_wait(timeout)
        return th


class AgentThread:
    """An agent running on its own event loop in a daemon thread."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopped = asyncio.Event()
        self._thread = threading.Thread(
            target=self._main, name=f"agent-{runtime.settings.agent_id}", daemon=True
        )

    @property
    def port(self) -> int:
        return self.runtime.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.runtime.port}"

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        try:
            await self.runtime.start()
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread, re-raised there
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            await self.runtime.stop()

    def start_and_wait(self, timeout: float) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"agent did not start within {timeout:.0f} s")
        if self._error is not None:
            raise self._error

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the agent's loop (thread-safe), e.g. to publish from a test."""
        self.loop.call_soon_threadsafe(fn)

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout)
