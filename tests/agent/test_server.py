"""The agent over real gRPC on 127.0.0.1: several clients, a slow one, info, snapshot, bad arguments."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time

import grpc
import pytest

from agent import __version__
from agent.domain import NoticeLevel
from agent.runtime import AgentRuntime, AgentThread
from agent.server import AgentStartError
from console.client import (
    AgentClient,
    AgentRequestError,
    AgentUnreachable,
    ConnectionEvent,
    ConnectionState,
    ResumingStream,
)
from proto.spyops.v1 import spyops_pb2 as pb
from tests.conftest import AgentFactory, agent_settings, eventually


def covered(env: pb.Envelope) -> range:
    return range(env.first_seq or env.seq, env.seq + 1)


async def follow(client: AgentClient, until_seq: int, **kwargs: object) -> list[pb.Envelope]:
    """Envelopes of a ResumingStream up to (at least) ``until_seq``."""
    out: list[pb.Envelope] = []
    async for env in ResumingStream(client, **kwargs):  # type: ignore[arg-type]
        out.append(env)
        if env.seq >= until_seq:
            break
    return out


def assert_contiguous(envs: list[pb.Envelope]) -> None:
    """The first envelope is a snapshot; after it, every seq exactly once, in order."""
    assert envs[0].HasField("snapshot")
    last = envs[0].seq
    for env in envs[1:]:
        if env.HasField("snapshot"):
            assert env.seq >= last
        else:
            assert covered(env).start == last + 1, f"after {last} came {covered(env)}"
        last = env.seq


async def test_info_and_snapshot(sim_agent: AgentThread) -> None:
    async with AgentClient(sim_agent.address) as client:
        await eventually(lambda: sim_agent.runtime.log.last_seq > 20)
        info = await client.info()
        assert info.agent_id == "sim"
        assert info.version == __version__
        assert list(info.roles) == ["feed"]
        assert info.feed == "sim"
        dt.date.fromisoformat(info.session_date)
        assert info.clock_speed == 20
        assert info.last_seq > 20
        assert info.oldest_seq == 1
        assert len(info.incarnation) >= 8
        assert info.session_close_ns > info.clock_ns > 0
        assert abs(info.wall_ns - time.time_ns()) < 5e9
        assert info.upstream == ""
        assert info.clients == 0
        assert await client.health() == "SERVING"

        snap = await client.snapshot()
        assert snap.agent_id == "sim"
        assert snap.incarnation == info.incarnation
        assert snap.as_of_seq >= info.last_seq
        assert snap.chain.full
        assert snap.chain.symbol == "SPY"
        assert len(snap.chain.quotes) == 2 * 21  # 10 strikes each side of the money, calls and puts
        assert {q.right for q in snap.chain.quotes} == {pb.CALL, pb.PUT}
        assert 500 < snap.underlying.last < 700
        assert abs(snap.chain.underlying - snap.underlying.last) < 0.05
        assert any(n.code == "agent.started" for n in snap.recent_notices)
        assert {c.name: c.status for c in snap.health.components}.get("feed") == "ok"


async def test_several_clients_see_the_same_stream(sim_agent: AgentThread) -> None:
    clients = [AgentClient(sim_agent.address) for _ in range(4)]
    try:
        await eventually(lambda: sim_agent.runtime.log.last_seq > 5)
        target = sim_agent.runtime.log.last_seq + 300
        results = await asyncio.wait_for(
            asyncio.gather(
                follow(clients[0], target, lossless=True, client_name="a"),
                follow(clients[1], target, lossless=True, client_name="b"),
                follow(clients[2], target, lossless=True, from_seq=1, client_name="c"),
                follow(clients[3], target, client_name="conflated"),
            ),
            15,
        )
    finally:
        for c in clients:
            await c.close()
    for envs in results[:2]:
        assert_contiguous(envs)
        assert all(not e.first_seq for e in envs)  # lossless: never conflated
    # the client that started at seq 1 saw everything, one envelope per seq
    assert [e.seq for e in results[2]] == list(range(1, results[2][-1].seq + 1))
    assert_contiguous(results[3])
    # every client got the very same bytes for the same seq
    by_seq = {e.seq: e.SerializeToString() for e in results[2]}
    for envs in results[:2]:
        for e in envs[1:]:
            assert by_seq[e.seq] == e.SerializeToString()


async def test_slow_client_does_not_slow_the_others(start_agent: AgentFactory) -> None:
    # wide chains: big envelopes fill a stalled client's flow-control window quickly
    agent = start_agent(agent_id="slowtest", server={"max_pending": 20}, sim={"strikes_each_side": 60})
    log = agent.runtime.log

    def cut(name: str) -> bool:
        """No live subscription of that name (closed, or already gone once its handler saw the close)."""
        return not any(s.name == name and s.closed_reason is None for s in log.subscriptions())

    async with AgentClient(agent.address) as fast, AgentClient(agent.address) as stalled:
        await eventually(lambda: log.last_seq > 5)
        # a lossless raw stream that is opened and then not read at all
        stuck = stalled.raw_stream(from_seq=0, lossless=True, client_name="stuck")
        first = await stuck.read()
        assert isinstance(first, pb.Envelope)
        assert first.HasField("snapshot")

        start = log.last_seq
        t0 = time.monotonic()
        fast_states: list[ConnectionEvent] = []
        envs = await asyncio.wait_for(
            follow(fast, start + 400, client_name="fast", on_state=fast_states.append), 15
        )
        elapsed = time.monotonic() - t0
        assert_contiguous(envs)
        # the fast client keeps up with the agent while the stalled one lags
        assert log.last_seq - envs[-1].seq < 50
        assert 400 / elapsed > 50, f"fast client got only {400 / elapsed:.0f} events/s"
        await eventually(lambda: cut("stuck"), timeout=15)
        assert [e.state for e in fast_states] == [ConnectionState.CONNECTING, ConnectionState.LIVE]

        # once the stalled stream reads again, it gets what was in flight, then the reason it was cut
        received: list[pb.Envelope] = []

        async def read_all() -> None:
            while isinstance(env := await stuck.read(), pb.Envelope):  # EOF ends it
                received.append(env)

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(read_all(), 10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "client too slow" in (err.value.details() or "")
        last = received[-1].seq if received else first.seq
        assert f"from_seq={last + 1}" in (err.value.details() or "")

        # and resumes from there with no gap (a snapshot: it fell too far behind for its queue)
        resumed = await follow(stalled, log.last_seq + 10, from_seq=last + 1, lossless=True)
        if resumed[0].HasField("snapshot"):
            assert_contiguous(resumed)
        else:
            assert [e.seq for e in resumed] == list(range(last + 1, resumed[-1].seq + 1))


async def test_resuming_stream_cut_for_slowness_reconnects_cleanly(start_agent: AgentFactory) -> None:
    agent = start_agent(agent_id="burst", server={"max_pending": 20})
    rt = agent.runtime
    states: list[ConnectionEvent] = []
    envs: list[pb.Envelope] = []
    async with AgentClient(agent.address) as client:
        stream = ResumingStream(client, lossless=True, client_name="recorder", on_state=states.append)

        async def consume() -> None:
            async for env in stream:
                envs.append(env)

        task = asyncio.create_task(consume())
        try:
            await eventually(lambda: len(envs) > 5)

            def burst() -> None:  # more undelivered events than the client's queue holds, at once
                for i in range(50):
                    rt.notice(NoticeLevel.INFO, "test.burst", f"burst {i}")

            agent.call(burst)
            await eventually(lambda: any("RESOURCE_EXHAUSTED" in s.detail for s in states), timeout=10)
            await eventually(lambda: envs[-1].seq > rt.log.last_seq - 50 and len(envs) > 100)
            assert not task.done()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    detail = next(s.detail for s in states if "RESOURCE_EXHAUSTED" in s.detail)
    assert "client too slow" in detail
    assert stream.reconnects >= 1
    # the first snapshot, and one after each cut (a loaded machine may cut this tiny queue again)
    assert sum(e.HasField("snapshot") for e in envs) >= 2
    assert_contiguous(envs)


async def test_slow_conflating_client_gets_merged_market_data(start_agent: AgentFactory) -> None:
    agent = start_agent(agent_id="conflate", sim={"strikes_each_side": 60})  # big envelopes
    async with AgentClient(agent.address) as client:
        await eventually(lambda: agent.runtime.log.last_seq > 5)
        call = client.raw_stream(from_seq=1, client_name="lazy")
        await call.read()
        (sub,) = (s for s in agent.runtime.log.subscriptions() if s.name == "lazy")
        # the agent runs ahead while we read nothing; once the transport's window is full, the market
        # data queued for us is merged
        await eventually(lambda: sub.conflated > 300, timeout=15)
        envs: list[pb.Envelope] = []
        async with asyncio.timeout(10):
            while not envs or envs[-1].seq < agent.runtime.log.last_seq - 5:
                env = await call.read()
                assert isinstance(env, pb.Envelope)
                envs.append(env)
        call.cancel()
    merged = [e for e in envs if e.first_seq]
    assert merged, "a client that fell behind should receive conflated market data"
    assert all(e.WhichOneof("payload") in ("chain", "underlying") for e in merged)
    assert max(e.seq - e.first_seq for e in merged) > 5
    last = envs[0].first_seq - 1 if envs[0].first_seq else envs[0].seq - 1
    for e in envs:
        assert covered(e).start == last + 1
        last = e.seq


@pytest.mark.parametrize(
    ("request_args", "code"),
    [
        ({"topics": ["market", "gossip"]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"from_seq": -5}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"from_seq": 10**12}, grpc.StatusCode.OUT_OF_RANGE),
    ],
)
async def test_bad_stream_arguments(
    sim_agent: AgentThread, request_args: dict[str, object], code: grpc.StatusCode
) -> None:
    async with AgentClient(sim_agent.address) as client:
        with pytest.raises(AgentRequestError) as err:
            async for _ in client.stream_once(**request_args):  # type: ignore[arg-type]
                pass
        assert err.value.code == code
        assert sim_agent.runtime.log.clients == 0


async def test_resuming_stream_gives_up_on_invalid_argument(sim_agent: AgentThread) -> None:
    states: list[ConnectionEvent] = []
    async with AgentClient(sim_agent.address) as client:
        with pytest.raises(AgentRequestError, match="unknown topic"):
            async for _ in ResumingStream(client, topics=["nope"], on_state=states.append):
                pass
    assert states[-1].state is ConnectionState.FAILED


async def test_topic_filtered_stream(sim_agent: AgentThread) -> None:
    rt = sim_agent.runtime
    async with AgentClient(sim_agent.address) as client:
        kinds: list[str | None] = []
        async with asyncio.timeout(10):
            async for env in client.stream_once(from_seq=0, topics=["notices"]):
                kinds.append(env.WhichOneof("payload"))
                if len(kinds) == 1:
                    sim_agent.call(lambda: rt.notice(NoticeLevel.INFO, "test.0", "hello"))
                    sim_agent.call(lambda: rt.notice(NoticeLevel.INFO, "test.1", "hello"))
                if len(kinds) >= 3:
                    break
    assert kinds == ["snapshot", "notice", "notice"]


# ------------------------------------------------------------------ resume


async def test_reconnect_to_same_agent_resumes_without_gap(sim_agent: AgentThread) -> None:
    async with AgentClient(sim_agent.address) as client:
        first: list[pb.Envelope] = []
        async for env in client.stream_once(from_seq=0, lossless=True):
            first.append(env)
            if len(first) >= 30:
                break
        await asyncio.sleep(0.3)  # the agent moves on while we are away
        last = first[-1].seq
        again = await follow(client, sim_agent.runtime.log.last_seq + 20, from_seq=last + 1, lossless=True)
    assert not again[0].HasField("snapshot")
    assert [e.seq for e in again] == list(range(last + 1, again[-1].seq + 1))


async def test_resume_across_agent_restart(start_agent: AgentFactory) -> None:
    agent = start_agent(agent_id="phoenix")
    port, old_incarnation = agent.port, agent.runtime.incarnation
    states: list[ConnectionEvent] = []
    envs: list[pb.Envelope] = []
    async with AgentClient(agent.address) as client:
        stream = ResumingStream(client, on_state=states.append)

        async def consume() -> None:
            async for env in stream:
                envs.append(env)

        task = asyncio.create_task(consume())
        try:
            await eventually(lambda: len(envs) > 20)
            await asyncio.to_thread(agent.stop)  # the agent is killed mid-stream
            await eventually(lambda: any(s.state is ConnectionState.RECONNECTING for s in states))
            reborn = start_agent(agent_id="phoenix", port=port)
            assert reborn.runtime.incarnation != old_incarnation
            await eventually(
                lambda: any(
                    e.HasField("snapshot") and e.snapshot.incarnation == reborn.runtime.incarnation
                    for e in envs
                ),
                timeout=15,
            )
            await eventually(lambda: envs[-1].seq > 50 and not envs[-1].HasField("snapshot"))
            assert not task.done(), task.exception() if task.done() else None
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert stream.incarnation == reborn.runtime.incarnation
    assert stream.reconnects >= 1
    snaps = [i for i, e in enumerate(envs) if e.HasField("snapshot")]
    assert len(snaps) == 2
    assert_contiguous(envs[: snaps[1]])
    assert_contiguous(envs[snaps[1] :])


async def test_client_ahead_of_a_restarted_agent_starts_over(sim_agent: AgentThread) -> None:
    """A client resuming at a seq the agent never reached (it restarted) gets OUT_OF_RANGE, then a snapshot."""
    states: list[ConnectionEvent] = []
    async with AgentClient(sim_agent.address) as client:
        stream = ResumingStream(client, from_seq=10**9, on_state=states.append)
        async with asyncio.timeout(10):
            async for env in stream:
                assert env.HasField("snapshot")
                break
    assert any("OUT_OF_RANGE" in s.detail for s in states)
    assert stream.incarnation == sim_agent.runtime.incarnation


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_agent() -> None:
    async with AgentClient(f"127.0.0.1:{_free_port()}", deadline=1.0) as client:
        with pytest.raises(AgentUnreachable, match="unreachable"):
            await client.info()
        with pytest.raises(AgentUnreachable):
            await client.snapshot()
        with pytest.raises(AgentUnreachable):
            async for _ in client.stream_once():
                pass


def test_port_in_use(start_agent: AgentFactory) -> None:
    first = start_agent(agent_id="first")
    with pytest.raises(AgentStartError, match=str(first.port)):
        start_agent(agent_id="second", port=first.port)
    # a plain socket holding the port is refused the same way
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(AgentStartError):
            AgentRuntime(agent_settings("third", port)).start_in_thread()
