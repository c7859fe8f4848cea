"""Replay feed: IB chain CSV snapshots and recordings, played through a real agent."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import pytest

from agent.feeds.replay import ReplayError, open_replay
from agent.runtime import AgentThread
from agent.wire import snapshot_message
from console.client import AgentClient, ResumingStream
from proto.recording import MAGIC, RecordingWriter, read_recording
from tests.conftest import CSV_0317, AgentFactory, chain_key, eventually
from tests.proto.test_recording import write_recording


def notice_codes(agent: AgentThread) -> list[str]:
    return [n.code for n in agent.runtime.log.state.notices]


def finished(agent: AgentThread) -> bool:
    return "replay.finished" in notice_codes(agent) or "replay.corrupt" in notice_codes(agent)


def replay_agent(start_agent: AgentFactory, path: Path, agent_id: str = "replay") -> AgentThread:
    return start_agent(agent_id=agent_id, feed="replay", replay={"path": path, "pace": "fast"})


async def test_csv_replay_of_shared_data(start_agent: AgentFactory) -> None:
    agent = replay_agent(start_agent, CSV_0317)
    await eventually(lambda: finished(agent))
    async with AgentClient(agent.address) as client:
        info = await client.info()
        snap = await client.snapshot()
    assert info.feed == "replay"
    assert info.session_date == "2025-03-17"
    assert snap.chain.expiry == "20250317"  # the 0DTE chain, not the next day's
    assert len(snap.chain.quotes) == 114
    assert snap.underlying.last == pytest.approx(567.18, abs=0.01)
    assert snap.chain.underlying == pytest.approx(567.18, abs=0.01)
    assert "replay.corrupt" not in notice_codes(agent)


def damaged_csv(tmp_path: Path) -> Path:
    with CSV_0317.open(newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    col = {name: i for i, name in enumerate(header)}
    bad = [list(r) for r in body[:20]]
    bad[1] = bad[1][:-5]  # cut short
    bad[2][col["strike"]] = "abc"
    bad[3][col["bid"]] = "nan"
    bad[4][col["bid"]], bad[4][col["ask"]], bad[4][col["bidSize"]] = "9.00", "1.00", "5"  # crossed
    bad[5][col["right"]] = "X"
    out = tmp_path / "damaged.csv"
    with out.open("w", newline="") as f:
        csv.writer(f).writerows([header, *bad])
    return out


async def test_malformed_csv_gives_data_quality_notices(start_agent: AgentFactory, tmp_path: Path) -> None:
    agent = replay_agent(start_agent, damaged_csv(tmp_path))
    await eventually(lambda: finished(agent))
    codes = notice_codes(agent)
    assert codes.count("data_quality.malformed_row") == 3
    assert "data_quality.nan" in codes
    assert "data_quality.crossed" in codes
    assert agent.runtime.log.state.book.quotes  # the good rows made it
    async with AgentClient(agent.address) as client:
        assert await client.health() == "SERVING"


async def record(agent: AgentThread, path: Path, stop_after: float) -> int:
    """Record ``agent``'s stream losslessly, stop the agent after ``stop_after`` s, return the last seq."""
    async with AgentClient(agent.address) as client:
        with RecordingWriter(path) as writer:
            stream = ResumingStream(client, lossless=True, client_name="recorder")

            async def run() -> None:
                async for env in stream:
                    writer.write(env)

            task = asyncio.create_task(run())
            await asyncio.sleep(stop_after)
            await asyncio.to_thread(agent.stop)  # nothing is published after this
            last = agent.runtime.log.last_seq
            await eventually(lambda: stream.last_seq == last, timeout=5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    return last


async def test_recording_round_trip(start_agent: AgentFactory, tmp_path: Path) -> None:
    source = start_agent(agent_id="source")
    rec = tmp_path / "session.spyrec"
    last = await record(source, rec, stop_after=0.5)
    envs = list(read_recording(rec))
    assert envs[0].HasField("snapshot")
    assert envs[-1].seq == last
    assert [e.seq for e in envs[1:]] == list(range(envs[0].seq + 1, last + 1))  # lossless: every event
    assert all(not e.first_seq for e in envs)

    expected = snapshot_message(source.runtime.log.snapshot())
    replayed = replay_agent(start_agent, rec, agent_id="replayed")
    await eventually(lambda: finished(replayed))
    got = snapshot_message(replayed.runtime.log.snapshot())
    assert "replay.corrupt" not in notice_codes(replayed)
    assert len(got.chain.quotes) == len(expected.chain.quotes) > 0
    assert chain_key(got.chain) == chain_key(expected.chain)
    assert got.underlying == expected.underlying
    # events keep their recorded market time
    assert got.underlying.quote_ts_ns == expected.underlying.quote_ts_ns


def test_replay_sources(tmp_path: Path) -> None:
    path = tmp_path / "cut.spyrec"
    write_recording(path, 5)
    path.write_bytes(path.read_bytes()[:-3])
    assert open_replay(path).kind == "recording"
    assert open_replay(CSV_0317).kind == "ib_csv"
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(ReplayError, match="neither a recording nor an IB chain CSV"):
        open_replay(junk)
    with pytest.raises(ReplayError, match="does not exist"):
        open_replay(tmp_path / "missing.spyrec")


async def test_corrupt_recording_replays_up_to_the_damage(start_agent: AgentFactory, tmp_path: Path) -> None:
    path = tmp_path / "corrupt.spyrec"
    write_recording(path, 3)
    data = bytearray(path.read_bytes())
    first_len = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 4], "little")
    second = len(MAGIC) + 4 + first_len
    data[second + 4 : second + 8] = b"\xff\xff\xff\xff"  # garbage inside the second envelope
    path.write_bytes(bytes(data))
    agent = replay_agent(start_agent, path)
    await eventually(lambda: finished(agent))
    assert "replay.corrupt" in notice_codes(agent)
    assert agent.runtime.log.state.underlying is not None
    assert agent.runtime.log.state.underlying.last == 501.0


async def test_recording_corrupt_from_the_first_envelope(start_agent: AgentFactory, tmp_path: Path) -> None:
    path = tmp_path / "bad-start.spyrec"
    path.write_bytes(MAGIC + b"\x05\x00\x00\x00" + b"\xff\xff\xff\xff\xff")
    agent = replay_agent(start_agent, path)  # starts, and says what is wrong
    await eventually(lambda: finished(agent))
    assert "replay.corrupt" in notice_codes(agent)
