"""Replay feed: plays back a recording (``spyctl record``) or IB chain CSV snapshots.

At recorded pace (the gaps between recorded event times, divided by the speed) or as fast as
possible. Events keep their recorded market time. Malformed input never stops the agent: CSV problems
arrive as data-quality notices from the CSV reader, a corrupt recording ends the replay with an error
notice at the point of damage.

Interactive control (``spy-console --replay``): every source carries a :class:`ReplayControl`, a
thread-safe handle another thread (the console's) uses to pause, resume, change the speed
(0.25x..50x or as fast as possible), step one recorded moment at a time and seek to any market time,
forward or backward. The file is played in *moments*: one recorded envelope (a recording) or one
chain snapshot (a CSV), each at one market time.

What a seek publishes. The agent's log is not rewound: sequence numbers keep increasing and a seek is
itself a run of ordinary events, so every client (console, recorder, relay) stays gap-free. The
player folds the file's market data up to the target time without publishing it (from the nearest
checkpoint it keeps every ``CHECKPOINT_NS`` of market time, so a backward seek does not re-read the
whole file) and then publishes, stamped with the target time: the open signals resolved, a
``replay.seek`` notice, the underlying tick and the whole chain as one ``full`` update (a client drops
every quote it held). Data-quality notices inside the skipped stretch are not published.

The detector across a seek: its state (quote histories for staleness, volume baselines, IV history,
the smile fit, tracked signals) belongs to one continuous stretch of market time. Time jumping either
way would make it misread the jump (traded volume accumulated over the skipped stretch looks like a
spike, a quote unchanged "for -10 minutes"), so every seek, forward or backward, first evaluates what
the detector has pending, resolves its open signals (published, so the screens drop them) and gives
the role a fresh detector on the same configuration. Signals then re-appear from the new position as
the detector sees them again. Stepping and speed changes are not seeks: the detector keeps its state.

The agent's market clock (which stamps health and notices) follows the replay: it runs at the replay
speed from the last moment played and stands still while paused, so everything on the stream carries
the replayed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.domain import ChainBook, ChainUpdate, Notice, NoticeLevel, UnderlyingTick
from agent.events import Payload
from agent.feeds.ib_csv import ChainFileError, load_ib_csv
from agent.session import NEW_YORK
from agent.wire import WireError, market_from_envelope, notice_from_pb
from proto.recording import MAGIC, RecordingError, is_recording, read_recording_from
from proto.spyops.v1 import spyops_pb2 as pb

if TYPE_CHECKING:
    from agent.clock import MarketClock
    from agent.runtime import AgentRuntime

log = logging.getLogger(__name__)

YIELD_EVERY = 64  # as fast as possible: let the server breathe every this many moments
FOLD_YIELD_EVERY = 2_000  # a seek folding a long stretch lets the loop run every this many moments
CHECKPOINT_NS = 30 * 1_000_000_000  # a fold checkpoint every 30 s of market time
SPEEDS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
MIN_SPEED, MAX_SPEED = SPEEDS[0], SPEEDS[-1]
HELD_CLOCK_SPEED = 1e-9
"""The market clock has no pause: a held clock runs at 1e-9x (one market ns per wall second)."""


class ReplayError(ValueError):
    """The file cannot be replayed at all (neither a recording nor an IB chain CSV)."""


@dataclass(frozen=True, slots=True)
class TimedPayload:
    ts_ns: int
    payload: Payload


@dataclass(frozen=True, slots=True)
class Moment:
    """One recorded moment: the payloads of one envelope or one CSV snapshot, at one market time.

    ``token`` says where it starts in the file (a byte offset, or an index for CSV files)."""

    token: int
    ts_ns: int
    payloads: tuple[Payload, ...]


@dataclass(frozen=True, slots=True)
class ReplayStatus:
    """Where a replay stands, for a status bar. Times are market UTC ns (0: not known yet)."""

    position_ns: int  # the replay's market clock now
    start_ns: int  # the first recorded time
    end_ns: int  # the last recorded time, once the player has read that far
    speed: float | None  # None: as fast as possible
    paused: bool
    finished: bool  # the last moment was played (a seek backward plays on again)
    moments: int  # moments published so far
    seeks: int
    error: str = ""  # why the file ended early (a corrupt recording)


def _check_speed(speed: float | None) -> float | None:
    if speed is None:
        return None
    if not isinstance(speed, int | float) or not math.isfinite(speed) or not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(
            f"replay speed must be within {MIN_SPEED:g}x..{MAX_SPEED:g}x (or max), got {speed!r}"
        )
    return float(speed)


def parse_speed(text: str) -> float | None:
    """``"2"``, ``"2x"``, ``"0.25"`` or ``"max"``; ValueError with what is allowed otherwise."""
    t = text.strip().lower()
    if t in ("max", "fast"):
        return None
    t = t.removesuffix("x")
    try:
        value = float(t)
    except ValueError:
        raise ValueError(
            f"replay speed must be a number within {MIN_SPEED:g}..{MAX_SPEED:g} or 'max', got {text!r}"
        ) from None
    return _check_speed(value)


def ny_time_to_ns(text: str, ref_ns: int) -> int:
    """Market time ``HH:MM[:SS]`` New York on the New York date of ``ref_ns``; ValueError if bad."""
    try:
        t = dt.time.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"expected a New York time HH:MM or HH:MM:SS, got {text!r}") from None
    if ref_ns <= 0:
        raise ValueError("the replay has no recorded time yet to take the date from")
    day = dt.datetime.fromtimestamp(ref_ns / 1e9, dt.UTC).astimezone(NEW_YORK).date()
    moment = dt.datetime.combine(day, t.replace(tzinfo=None), NEW_YORK)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1_000


def _ny(ts_ns: int) -> str:
    if ts_ns <= 0:
        return "--:--:--"
    return dt.datetime.fromtimestamp(ts_ns / 1e9, dt.UTC).astimezone(NEW_YORK).strftime("%H:%M:%S")


class ReplayControl:
    """Thread-safe remote control of one replay: pause, speed, step and seek from any thread.

    Commands only record what is wanted and wake the player, which runs on the agent's event loop
    and carries them out between two moments. The control also keeps the replay's market clock
    (anchored: ``market = anchor + (wall - anchor_wall) * speed``, standing still while paused),
    which :meth:`status` reads.
    """

    def __init__(self, speed: float | None = 1.0, *, paused: bool = False, hold_at_end: bool = False) -> None:
        self._lock = threading.Lock()
        self._speed = _check_speed(speed)
        self._speed_chosen = False  # set_speed was called: the agent's pace setting does not override
        self._paused = paused
        self._steps = 0
        self._seek_to: int | None = None
        self.hold_at_end = hold_at_end
        """At the end of the file keep waiting for commands (a seek backward plays on) instead of
        ending the feed. The console sets it; a plain ``spy-agent --replay`` ends as before."""
        self._anchor_market = 0
        self._anchor_wall = time.monotonic_ns()
        self._start_ns = 0
        self._end_ns = 0
        self._finished = False
        self._moments = 0
        self._seeks = 0
        self._error = ""
        self._version = 0  # bumped whenever the replay clock is re-anchored
        self._steered = -1  # the version the agent's clock was last steered to
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None

    # ------------------------------------------------------------------ commands (any thread)

    def pause(self) -> None:
        with self._lock:
            if not self._paused:
                self._anchor_market, self._anchor_wall = self._now_locked(), time.monotonic_ns()
                self._paused = True
        self._wake()

    def resume(self) -> None:
        with self._lock:
            if self._paused:
                self._anchor_wall = time.monotonic_ns()
                self._paused = False
        self._wake()

    def toggle_pause(self) -> bool:
        """Pause if playing, else resume; returns whether it is paused now."""
        with self._lock:
            paused = self._paused
        if paused:
            self.resume()
        else:
            self.pause()
        return not paused

    def set_speed(self, speed: float | None) -> None:
        """Market seconds per wall second within 0.25..50, or None for as fast as possible."""
        checked = _check_speed(speed)
        with self._lock:
            self._anchor_market, self._anchor_wall = self._now_locked(), time.monotonic_ns()
            self._speed, self._speed_chosen = checked, True
        self._wake()

    def faster(self) -> float | None:
        """The next speed up the ladder 0.25, 0.5, 1, 2, 5, 10, 20, 50, max; returns it."""
        with self._lock:
            cur = self._speed
        if cur is None:
            return None
        new = next((s for s in SPEEDS if s > cur), None)
        self.set_speed(new)
        return new

    def slower(self) -> float | None:
        """The next speed down the ladder (max goes to 50x); returns it."""
        with self._lock:
            cur = self._speed
        new = SPEEDS[-1] if cur is None else next((s for s in reversed(SPEEDS) if s < cur), SPEEDS[0])
        self.set_speed(new)
        return new

    def seek(self, ts_ns: int) -> None:
        """Go to market time ``ts_ns`` (clamped to the recording), forward or backward."""
        if not isinstance(ts_ns, int) or isinstance(ts_ns, bool) or ts_ns <= 0:
            raise ValueError(f"seek needs a market time in ns since the epoch, got {ts_ns!r}")
        with self._lock:
            self._seek_to = ts_ns
            self._steps = 0
        self._wake()

    def seek_by(self, delta_ns: int) -> int:
        """Seek relative to where the replay is (or to a seek not yet carried out); returns the target."""
        with self._lock:
            base = self._seek_to if self._seek_to is not None else self._now_locked()
            target = max(1, base + int(delta_ns))
            if self._start_ns:
                target = max(target, self._start_ns)
            self._seek_to = target
            self._steps = 0
        self._wake()
        return target

    def step(self, n: int = 1) -> None:
        """While paused, play the next ``n`` moments at once (pauses first if playing)."""
        if n < 1:
            raise ValueError(f"step needs a positive number of moments, got {n}")
        self.pause()
        with self._lock:
            self._steps += n
        self._wake()

    def status(self) -> ReplayStatus:
        with self._lock:
            return ReplayStatus(
                position_ns=self._now_locked(),
                start_ns=self._start_ns,
                end_ns=self._end_ns,
                speed=self._speed,
                paused=self._paused,
                finished=self._finished,
                moments=self._moments,
                seeks=self._seeks,
                error=self._error,
            )

    @property
    def paused(self) -> bool:
        with self._lock:
            return self._paused

    @property
    def speed(self) -> float | None:
        with self._lock:
            return self._speed

    # ------------------------------------------------------------------ the player's side

    def _now_locked(self) -> int:
        if self._paused or self._speed is None or self._finished or not self._anchor_market:
            return self._anchor_market
        return self._anchor_market + int((time.monotonic_ns() - self._anchor_wall) * self._speed)

    def _wake(self) -> None:
        with self._lock:
            self._version += 1
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None:
            with contextlib.suppress(RuntimeError):  # the agent stopped: nothing left to wake
                loop.call_soon_threadsafe(wakeup.set)

    def _bind(self, default_speed: float | None) -> None:
        """Called by the player on the agent's loop before the first moment."""
        with self._lock:
            if not self._speed_chosen:
                self._speed = _check_speed(
                    None if default_speed is None else min(max(default_speed, MIN_SPEED), MAX_SPEED)
                )
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()

    def _take(self) -> tuple[int | None, bool, bool, float | None]:
        """(seek target, whether to step one moment, paused, speed); consumes the seek and the step."""
        assert self._wakeup is not None
        self._wakeup.clear()  # before reading: a command from now on wakes the next wait
        with self._lock:
            seek, self._seek_to = self._seek_to, None
            step = self._steps > 0
            if step:
                self._steps -= 1
            return seek, step, self._paused, self._speed

    async def _wait(self, seconds: float | None) -> bool:
        """Sleep until a command arrives (True) or ``seconds`` pass (False; None: no limit)."""
        assert self._wakeup is not None
        try:
            await asyncio.wait_for(self._wakeup.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _delay_until(self, ts_ns: int) -> float:
        """Wall seconds until the replay clock reaches ``ts_ns`` (<= 0: due)."""
        with self._lock:
            if self._speed is None:
                return 0.0
            return (ts_ns - self._now_locked()) / 1e9 / self._speed

    def _played(self, ts_ns: int, *, jump: bool = False) -> None:
        """A moment at ``ts_ns`` was published (``jump``: a seek landed there)."""
        with self._lock:
            self._moments += 0 if jump else 1
            self._seeks += 1 if jump else 0
            self._finished = False
            if ts_ns and (jump or ts_ns > self._now_locked()):
                self._anchor_market, self._anchor_wall = ts_ns, time.monotonic_ns()
                self._version += 1

    def _known(self, start_ns: int | None = None, end_ns: int | None = None) -> None:
        with self._lock:
            if start_ns:
                self._start_ns = start_ns
                if not self._anchor_market:
                    self._anchor_market, self._anchor_wall = start_ns, time.monotonic_ns()
                    self._version += 1
            if end_ns:
                self._end_ns = end_ns

    def _finish(self, last_ns: int, error: str = "") -> None:
        with self._lock:
            if last_ns:
                self._anchor_market, self._anchor_wall = last_ns, time.monotonic_ns()
                self._end_ns = last_ns
            self._finished, self._error = True, error
            self._version += 1

    def _steer(self, clock: MarketClock) -> None:
        """Make the agent's market clock read the replay clock (on the agent's loop only: the loop
        is the clock's only reader); a no-op unless the replay clock was re-anchored since."""
        with self._lock:
            if self._steered == self._version:
                return
            self._steered = self._version
            market = self._now_locked()
            running = not (self._paused or self._speed is None or self._finished)
            speed = self._speed if running and self._speed is not None else HELD_CLOCK_SPEED
        if market:
            clock.reanchor(market, speed)


@dataclass
class _Checkpoint:
    ts_ns: int  # every moment before ``token`` is folded in; all of them at or before ts_ns
    token: int
    book: ChainBook
    tick: UnderlyingTick | None


def _copy_book(book: ChainBook) -> ChainBook:
    return dataclasses.replace(book, quotes=dict(book.quotes))


class ReplaySource:
    def __init__(self, path: Path, moments: list[Moment] | None, kind: str) -> None:
        self.path = path
        self.kind = kind
        self._moments = moments  # CSV files are small and loaded whole; recordings stream from disk
        self.control = ReplayControl()

    @property
    def start_token(self) -> int:
        return 0 if self._moments is not None else len(MAGIC)

    @property
    def first_ts_ns(self) -> int:
        """Market time of the first timed item; 0 if none (or the recording is corrupt before one:
        ``play`` then reports the damage as a notice instead of the agent failing to start)."""
        try:
            for m in self.moments():
                if m.ts_ns:
                    return m.ts_ns
        except RecordingError:
            return 0
        return 0

    def moments(self, token: int | None = None) -> Iterator[Moment]:
        """The recorded moments in order from ``token`` (a ``Moment.token``; default the start)."""
        if self._moments is not None:
            yield from self._moments[token or 0 :]
            return
        yield from _recording_moments(self.path, self.start_token if token is None else token)

    def items(self) -> Iterator[TimedPayload]:
        """The payloads to replay, in order, with their recorded market time."""
        for m in self.moments():
            for p in m.payloads:
                yield TimedPayload(m.ts_ns, p)

    async def play(self, rt: AgentRuntime, fast: bool) -> None:
        """Publish the file on ``rt`` under :attr:`control` (its speed defaults to the agent's clock
        speed, or as fast as possible for ``fast``); returns at the end unless ``hold_at_end``."""
        await _Player(self, rt).run(None if fast else rt.clock.speed)


def _recording_moments(path: Path, offset: int) -> Iterator[Moment]:
    """The moments of a recording from byte ``offset`` (a record boundary), those with something to
    replay (market data, data-quality notices); a truncated last record is ignored; RecordingError at
    a corrupt one (``proto.recording``'s framing, with the offsets a seek needs)."""
    for pos, env in read_recording_from(path, offset):
        payloads = _envelope_payloads(env)
        if payloads:  # the agent's own events (health, signals, orders...) are not replayed
            yield Moment(pos, env.ts_ns, payloads)


def _envelope_payloads(env: pb.Envelope) -> tuple[Payload, ...]:
    try:
        payloads = market_from_envelope(env)
    except WireError as exc:
        return (Notice(NoticeLevel.WARN, "data_quality.replay", f"seq {env.seq}: {exc}", source="replay"),)
    if env.WhichOneof("payload") == "notice" and env.notice.code.startswith("data_quality"):
        payloads.append(notice_from_pb(env.notice))
    return tuple(payloads)


class _Player:
    """Plays one source on one agent under the source's control (runs on the agent's loop)."""

    def __init__(self, source: ReplaySource, rt: AgentRuntime) -> None:
        self.source = source
        self.rt = rt
        self.ctl = source.control
        self.book = ChainBook()  # the market as of the last moment published or folded
        self.tick: UnderlyingTick | None = None
        self.position = 0  # market time of the last moment published or folded
        self.checkpoints = [_Checkpoint(0, source.start_token, ChainBook(), None)]
        self._it: Iterator[Moment] = iter(())
        self._next: Moment | None = None
        self._exhausted = False
        self._error = ""
        self._frontier_ts = 0  # checkpoints exist up to here

    # ---------------------------------------------------------------- reading

    def _open(self, cp: _Checkpoint) -> None:
        self.book, self.tick, self.position = _copy_book(cp.book), cp.tick, cp.ts_ns
        self._it = self.source.moments(cp.token)
        self._next, self._exhausted = None, False

    def _peek(self) -> Moment | None:
        if self._next is None and not self._exhausted:
            try:
                self._next = next(self._it, None)
            except RecordingError as exc:
                self._error = str(exc)
                self._next = None
            if self._next is None:
                self._exhausted = True
        return self._next

    def _advance(self, m: Moment) -> None:
        """Fold ``m`` into the book (whether published or skipped) and keep checkpoints."""
        self._next = None
        if m.ts_ns and m.ts_ns >= self._frontier_ts + CHECKPOINT_NS and m.ts_ns > self.position:
            # every moment before this one is folded: a seek can restart here
            self.checkpoints.append(_Checkpoint(self.position, m.token, _copy_book(self.book), self.tick))
            self._frontier_ts = m.ts_ns
        for p in m.payloads:
            if isinstance(p, ChainUpdate):
                self.book.apply(p)
                if p.underlying_tick is not None:
                    self.tick = p.underlying_tick
            elif isinstance(p, UnderlyingTick):
                self.tick = p
                self.book.underlying = p.last
        if m.ts_ns:
            self.position = max(self.position, m.ts_ns)

    # ---------------------------------------------------------------- playing

    async def run(self, default_speed: float | None) -> None:
        ctl, rt = self.ctl, self.rt
        ctl._bind(default_speed)
        self._open(self.checkpoints[0])
        first = self._peek()
        ctl._known(start_ns=self.source.first_ts_ns if first is not None else 0)
        announced_end = False
        n = 0
        while True:
            seek, step, paused, speed = ctl._take()
            if seek is not None:
                await self._seek(seek)
                announced_end = False
                continue
            ctl._steer(rt.clock)
            m = self._peek()
            if m is None:
                if not announced_end:
                    announced_end = True
                    self._announce_end()
                    ctl._steer(rt.clock)
                if not ctl.hold_at_end:
                    return
                await ctl._wait(None)
                continue
            announced_end = False
            if paused and not step:
                await ctl._wait(None)
                continue
            if not step and speed is not None and m.ts_ns:
                delay = ctl._delay_until(m.ts_ns)
                if delay > 0:
                    await ctl._wait(delay)
                    continue  # due now or a command came: look again
            self._advance(m)
            for p in m.payloads:
                rt.publish(p, m.ts_ns or None)
            ctl._played(m.ts_ns)
            n += 1
            if n % YIELD_EVERY == 0:  # also when a paced replay is behind: the server must run
                await asyncio.sleep(0)

    def _announce_end(self) -> None:
        ctl, rt = self.ctl, self.rt
        ctl._finish(self.position, self._error)
        if self._error:
            rt.notice(NoticeLevel.ERROR, "replay.corrupt", self._error, source="replay")
        else:
            rt.notice(
                NoticeLevel.INFO,
                "replay.finished",
                f"replay of {self.source.path.name} finished",
                source="replay",
            )

    async def _seek(self, target: int) -> None:
        start = self.ctl.status().start_ns
        target = max(target, start) if start else target
        before = self.ctl.status().position_ns
        # the latest checkpoint at or before the target; from the current position if that is later
        cp = max((c for c in self.checkpoints if c.ts_ns <= target), key=lambda c: c.ts_ns)
        if not cp.ts_ns <= self.position <= target:
            self._open(cp)
        folded = 0
        while (m := self._peek()) is not None and (not m.ts_ns or m.ts_ns <= target):
            self._advance(m)
            folded += 1
            if folded % FOLD_YIELD_EVERY == 0:
                await asyncio.sleep(0)
        landed = target if m is not None else self.position  # past the end: the last moment
        if m is None:
            self.ctl._known(end_ns=self.position)
        self._reset_detector(landed)
        rt = self.rt
        rt.publish(
            Notice(
                NoticeLevel.INFO,
                "replay.seek",
                f"replay moved from {_ny(before)} to {_ny(landed)} NY",
                source="replay",
            ),
            landed,
        )
        if self.tick is not None:
            rt.publish(self.tick, landed)
        if self.book.expiry:
            rt.publish(self.book.as_update(), landed)
        self.ctl._played(landed, jump=True)

    def _reset_detector(self, ts_ns: int) -> None:
        role = self.rt.detector
        if role is None:
            return
        from agent.detector.engine import Detector

        role.evaluate()  # what arrived before the seek, by the detector that saw it coming
        old = role.detector
        for sig in old.active_signals():
            self.rt.publish(dataclasses.replace(sig, status="resolved"), ts_ns)
        role.detector = Detector(old.config, old.session, compiled=old.compiled)


def open_replay(path: Path) -> ReplaySource:
    """A replay source for a recording or an IB chain CSV; ReplayError if it is neither."""
    if not path.is_file():
        raise ReplayError(f"replay file {path} does not exist")
    if is_recording(path):
        return ReplaySource(path, None, "recording")
    try:
        snapshots = load_ib_csv(path)
    except ChainFileError as exc:
        raise ReplayError(f"{path} is neither a recording nor an IB chain CSV: {exc}") from None
    moments: list[Moment] = []
    for snap in snapshots:
        payloads: list[Payload] = [snap.underlying]
        if snap.chains:
            # the product trades today's expiry: the earliest one in the file (the 0DTE chain)
            payloads.append(min(snap.chains, key=lambda c: c.expiry))
        payloads.extend(snap.notices)
        moments.append(Moment(len(moments), snap.ts_ns, tuple(payloads)))
    return ReplaySource(path, moments, "ib_csv")
