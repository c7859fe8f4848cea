"""Replay feed: plays back a recording (``spyctl record``) or IB chain CSV snapshots.

At recorded pace (the gaps between recorded event times, divided by the clock speed) or as fast as
possible. Events keep their recorded market time. Malformed input never stops the agent: CSV problems
arrive as data-quality notices from the CSV reader, a corrupt recording ends the replay with an error
notice at the point of damage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.domain import Notice, NoticeLevel
from agent.events import Payload
from agent.feeds.ib_csv import ChainFileError, load_ib_csv
from agent.wire import WireError, market_from_envelope, notice_from_pb
from proto.recording import RecordingError, is_recording, read_recording

if TYPE_CHECKING:
    from agent.runtime import AgentRuntime

YIELD_EVERY = 64  # in fast mode, let the server breathe every this many events


class ReplayError(ValueError):
    """The file cannot be replayed at all (neither a recording nor an IB chain CSV)."""


@dataclass(frozen=True, slots=True)
class TimedPayload:
    ts_ns: int
    payload: Payload


class ReplaySource:
    def __init__(self, path: Path, items: list[TimedPayload] | None, kind: str) -> None:
        self.path = path
        self.kind = kind
        self._items = items  # CSV files are small and loaded whole; recordings stream from disk

    @property
    def first_ts_ns(self) -> int:
        """Market time of the first timed item; 0 if none (or the recording is corrupt before one:
        ``play`` then reports the damage as a notice instead of the agent failing to start)."""
        try:
            for item in self.items():
                if item.ts_ns:
                    return item.ts_ns
        except RecordingError:
            return 0
        return 0

    def items(self) -> Iterator[TimedPayload]:
        """The payloads to replay, in order, with their recorded market time."""
        if self._items is not None:
            yield from self._items
            return
        for env in read_recording(self.path):
            try:
                payloads = market_from_envelope(env)
            except WireError as exc:
                yield TimedPayload(
                    env.ts_ns,
                    Notice(NoticeLevel.WARN, "data_quality.replay", f"seq {env.seq}: {exc}", source="replay"),
                )
                continue
            if env.WhichOneof("payload") == "notice" and env.notice.code.startswith("data_quality"):
                payloads.append(notice_from_pb(env.notice))
            for p in payloads:
                yield TimedPayload(env.ts_ns, p)

    async def play(self, rt: AgentRuntime, fast: bool) -> None:
        speed = rt.clock.speed
        t0_wall = time.monotonic()
        t0_market: int | None = None
        n = 0
        try:
            for item in self.items():
                if t0_market is None and item.ts_ns:
                    t0_market = item.ts_ns
                if not fast and t0_market is not None and item.ts_ns:
                    due = t0_wall + (item.ts_ns - t0_market) / 1e9 / speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                n += 1
                if fast and n % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                rt.publish(item.payload, item.ts_ns or None)
        except RecordingError as exc:
            rt.notice(NoticeLevel.ERROR, "replay.corrupt", str(exc), source="replay")
            return
        rt.notice(
            NoticeLevel.INFO, "replay.finished", f"replay of {self.path.name} finished", source="replay"
        )


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
    items: list[TimedPayload] = []
    for snap in snapshots:
        items.append(TimedPayload(snap.ts_ns, snap.underlying))
        if snap.chains:
            # the product trades today's expiry: the earliest one in the file (the 0DTE chain)
            items.append(TimedPayload(snap.ts_ns, min(snap.chains, key=lambda c: c.expiry)))
        items.extend(TimedPayload(snap.ts_ns, notice) for notice in snap.notices)
    return ReplaySource(path, items, "ib_csv")
