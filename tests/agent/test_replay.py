"""Replay feed: IB chain CSV snapshots and recordings, played through a real agent."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import math
import time
from pathlib import Path

import pytest

from agent.detector.signals import Signal
from agent.domain import ChainBook, ChainUpdate, Notice, Right, UnderlyingTick
from agent.eventlog import EventLog
from agent.feeds.replay import (
    ReplayControl,
    ReplayError,
    ReplayStatus,
    ny_time_to_ns,
    open_replay,
    parse_speed,
)
from agent.feeds.sim import SimConfig, SimulatedMarket
from agent.runtime import AgentThread
from agent.session import session, to_ns
from agent.wire import encode_item, snapshot_message
from console.client import AgentClient, ResumingStream
from proto.recording import MAGIC, RecordingWriter, read_recording
from tests.conftest import CSV_0317, AgentFactory, chain_key, eventually
from tests.proto.test_recording import write_recording

NS = 1_000_000_000


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


# ====================================================================== interactive control


def make_recording(path: Path, minutes: float = 3.0, seed: int = 5, anomaly_rate: float = 4.0) -> Path:
    """A small recording with ``spyctl record`` semantics from a seeded simulated market: a lossless
    recorder's stream of an agent (its first-connect snapshot, then every event with its seq)."""
    sess = session(dt.date(2025, 3, 17))
    market = SimulatedMarket(
        SimConfig(seed=seed, strikes_each_side=10, step_ms=500, anomaly_rate_per_min=anomaly_rate),
        sess,
        to_ns(sess.at("10:30")),
    )
    elog = EventLog("rec", "inc-rec", max_pending=10**9)
    sub = elog.subscribe(lossless=True, name="recorder")
    elog.publish_all(market.initial(), market.now_ns)
    for _ in range(int(minutes * 60 * 2)):
        step = market.step()
        elog.publish_all(step.events, step.ts_ns)
    with RecordingWriter(path) as writer:
        for item in sub.items:
            writer.write_bytes(encode_item("rec", item))
    return path


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_recording(tmp_path_factory.mktemp("rec") / "session.spyrec")


def fold(path: Path, until_ns: int) -> tuple[ChainBook, UnderlyingTick | None]:
    """The market of a file as of ``until_ns``, folded independently of the player."""
    book, tick = ChainBook(), None
    for m in open_replay(path).moments():
        if m.ts_ns > until_ns:
            break
        for p in m.payloads:
            if isinstance(p, ChainUpdate):
                book.apply(p)
            elif isinstance(p, UnderlyingTick):
                tick = p
    return book, tick


def quotes_of(book: ChainBook) -> dict[tuple[float, Right], tuple[float, float, int, int]]:
    return {k: (q.bid, q.ask, q.bid_size, q.ask_size) for k, q in book.quotes.items()}


def control_of(agent: AgentThread) -> ReplayControl:
    assert agent.runtime.replay is not None
    return agent.runtime.replay.control


def interactive(start_agent: AgentFactory, path: Path, speed: float = 1.0) -> AgentThread:
    return start_agent(
        agent_id="replay",
        roles=("feed", "detector"),
        feed="replay",
        replay={"path": path, "pace": "recorded"},
        clock={"speed": speed},
    )


async def paused_after(agent: AgentThread, moments: int) -> ReplayStatus:
    ctl = control_of(agent)
    await eventually(lambda: ctl.status().moments >= moments)
    ctl.pause()
    await asyncio.sleep(0.2)  # the player takes the command between two moments
    return ctl.status()


def test_control_validates_commands() -> None:
    ctl = ReplayControl()
    for bad in (0.0, 0.1, 51.0, math.nan, math.inf, -1.0):
        with pytest.raises(ValueError, match=r"within 0.25x..50x"):
            ctl.set_speed(bad)
    assert ctl.speed == 1.0
    assert [ctl.faster() for _ in range(6)] == [2.0, 5.0, 10.0, 20.0, 50.0, None]
    assert ctl.faster() is None  # max stays max
    assert [ctl.slower() for _ in range(9)] == [50.0, 20.0, 10.0, 5.0, 2.0, 1.0, 0.5, 0.25, 0.25]
    with pytest.raises(ValueError, match="seek needs"):
        ctl.seek(-5)
    with pytest.raises(ValueError, match="positive"):
        ctl.step(0)
    assert parse_speed("max") is None
    assert parse_speed("2x") == 2.0
    with pytest.raises(ValueError, match="or 'max'"):
        parse_speed("fast-ish")
    with pytest.raises(ValueError, match="within"):
        parse_speed("100")
    ref = to_ns(session(dt.date(2025, 3, 17)).at("10:30"))
    assert ny_time_to_ns("11:15:30", ref) == to_ns(session(dt.date(2025, 3, 17)).at("11:15:30"))
    with pytest.raises(ValueError, match="HH:MM"):
        ny_time_to_ns("25:99", ref)


async def test_pause_stops_emission_and_resume_continues(start_agent: AgentFactory, recording: Path) -> None:
    agent = interactive(start_agent, recording, speed=5.0)
    ctl = control_of(agent)
    st = await paused_after(agent, 5)
    assert st.paused
    state = agent.runtime.log.state
    under = state.underlying
    await asyncio.sleep(0.6)  # 3 s of market time at 5x: several moments would have been due
    later = ctl.status()
    assert later.moments == st.moments
    assert later.position_ns == st.position_ns  # the replay clock stands still
    assert agent.runtime.log.state.underlying is under
    # the agent's own clock (stamping health and notices) is held at the replay's time too
    assert abs(agent.runtime.clock.now_ns() - st.position_ns) < 1_000_000
    ctl.resume()
    await eventually(lambda: ctl.status().moments > st.moments + 3)
    assert ctl.status().position_ns > st.position_ns


async def test_speed_paces_the_recorded_time(start_agent: AgentFactory, recording: Path) -> None:
    agent = interactive(start_agent, recording, speed=1.0)
    ctl = control_of(agent)
    st = await paused_after(agent, 2)
    ctl.set_speed(20.0)
    ctl.resume()
    t0 = time.monotonic()
    await asyncio.sleep(1.0)
    ctl.pause()
    wall = time.monotonic() - t0
    await asyncio.sleep(0.1)
    last = agent.runtime.log.state.underlying
    assert last is not None
    advanced_s = (last.quote_ts_ns - st.position_ns) / 1e9
    # never ahead of 20x the wall time it had; at least a quarter of it on a busy machine
    assert wall * 20 / 4 <= advanced_s <= wall * 20 + 0.5
    assert ctl.status().speed == 20.0


async def test_step_plays_one_moment(start_agent: AgentFactory, recording: Path) -> None:
    agent = interactive(start_agent, recording)
    ctl = control_of(agent)
    st = await paused_after(agent, 3)
    moments = list(open_replay(recording).moments())
    ctl.step()
    await eventually(lambda: ctl.status().moments == st.moments + 1)
    await asyncio.sleep(0.2)
    after = ctl.status()
    assert after.moments == st.moments + 1
    assert after.paused
    assert after.position_ns == moments[st.moments].ts_ns  # the next recorded moment, exactly
    ctl.step(3)
    await eventually(lambda: ctl.status().moments == st.moments + 4)
    assert ctl.status().position_ns == moments[st.moments + 3].ts_ns


async def test_seek_forward_and_back_publishes_a_consistent_market(
    start_agent: AgentFactory, recording: Path
) -> None:
    agent = interactive(start_agent, recording)
    ctl = control_of(agent)
    st = await paused_after(agent, 3)
    log_ = agent.runtime.log
    start = st.start_ns
    resolved_total = 0
    for target in (start + 150 * NS, start + 20 * NS, start + 100 * NS, start + 40 * NS):
        seq_before, seeks = log_.last_seq, ctl.status().seeks
        open_before = set(log_.state.open_signals)
        ctl.seek(target)
        await eventually(lambda s=seeks: ctl.status().seeks == s + 1)
        await asyncio.sleep(0.2)
        book, tick = fold(recording, target)
        assert quotes_of(log_.state.book) == quotes_of(book)
        assert log_.state.underlying == tick
        status = ctl.status()
        assert status.position_ns == target
        assert status.paused
        events = [ev for ev in log_._buffer if ev.seq > seq_before]
        assert [ev.seq for ev in events] == list(range(seq_before + 1, log_.last_seq + 1))
        chains = [ev.payload for ev in events if isinstance(ev.payload, ChainUpdate)]
        assert chains
        assert chains[0].full
        notice_events = [ev for ev in events if isinstance(ev.payload, Notice)]
        first_notice = notice_events[0].payload
        assert isinstance(first_notice, Notice)
        assert first_notice.code == "replay.seek"
        assert all(ev.ts_ns == target for ev in events[: events.index(notice_events[0]) + 1])
        # the detector started over: whatever it had open before the seek was published resolved
        resolved = {
            ev.payload.id
            for ev in events
            if isinstance(ev.payload, Signal) and ev.payload.status == "resolved"
        }
        assert open_before <= resolved
        resolved_total += len(resolved)
    assert resolved_total > 0  # the detector did have signals open to resolve
    # playing on after a backward seek continues from there
    moments = ctl.status().moments
    ctl.step()
    await eventually(lambda: ctl.status().moments == moments + 1)
    assert start + 40 * NS < ctl.status().position_ns <= start + 41 * NS


async def test_seek_by_relative_and_past_the_end(start_agent: AgentFactory, recording: Path) -> None:
    agent = interactive(start_agent, recording)
    agent.runtime.replay.control.hold_at_end = True  # type: ignore[union-attr]
    ctl = control_of(agent)
    st = await paused_after(agent, 2)
    target = ctl.seek_by(60 * NS)
    assert target == st.position_ns + 60 * NS
    await eventually(lambda: ctl.status().seeks == 1)
    assert ctl.status().position_ns == target
    ctl.seek_by(-3600 * NS)  # before the start: the start
    await eventually(lambda: ctl.status().seeks == 2)
    assert ctl.status().position_ns == st.start_ns
    ctl.seek(st.start_ns + 3600 * NS)  # past the end: the last moment, finished
    await eventually(lambda: ctl.status().seeks == 3)
    await eventually(lambda: ctl.status().finished)
    end = ctl.status()
    last_ts = list(open_replay(recording).moments())[-1].ts_ns
    assert end.position_ns == end.end_ns == last_ts
    assert "replay.finished" in notice_codes(agent)
    ctl.seek(st.start_ns + 30 * NS)  # held at the end: a seek back plays on
    await eventually(lambda: ctl.status().seeks == 4)
    assert not ctl.status().finished
    ctl.set_speed(None)
    ctl.resume()
    await eventually(lambda: ctl.status().finished)
    book, _tick = fold(recording, last_ts)
    assert quotes_of(agent.runtime.log.state.book) == quotes_of(book)


async def test_moments_are_what_the_feed_replays(start_agent: AgentFactory, tmp_path: Path) -> None:
    """A live agent's recording holds its own events too (health, notices, signals): a step or a seek
    moves through market moments only."""
    source = start_agent(agent_id="source", roles=("feed", "detector"))
    rec = tmp_path / "live.spyrec"
    await record(source, rec, stop_after=2.5)  # the health beat comes every 2 s
    envs = list(read_recording(rec))
    assert "health" in {e.WhichOneof("payload") for e in envs}
    moments = list(open_replay(rec).moments())
    assert moments
    assert all(m.payloads for m in moments)
    market = [e for e in envs if e.WhichOneof("payload") in ("snapshot", "chain", "underlying")]
    assert len(moments) == len(market)  # the live sim has no data-quality notices
    assert [m.ts_ns for m in moments] == [e.ts_ns for e in market]


def test_commands_after_the_agent_stopped_are_harmless() -> None:
    ctl = ReplayControl()
    loop = asyncio.new_event_loop()

    async def bind() -> None:
        ctl._bind(1.0)

    loop.run_until_complete(bind())
    loop.close()
    ctl.pause()
    ctl.seek(5 * NS)
    ctl.step()
    assert ctl.status().paused
