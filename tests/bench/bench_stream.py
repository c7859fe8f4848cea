"""Stream benchmarks: events/s and rows/s delivered to 1 and 10 clients, publish->receipt latency.

Run: ``.venv/bin/python -m pytest tests/bench/bench_stream.py -m bench -s -p no:cacheprovider``.
Prints figures; asserts nothing about timing (machines are shared and noisy).

Set-up. The agent runs in its **own process** (multiprocessing, spawn): a real ``AgentRuntime`` with
no roles (nothing publishes but the 2 s health beat, on a topic the clients do not ask for), serving
gRPC on 127.0.0.1. A publisher coroutine, driven over a pipe, runs on the agent's event loop and calls
``EventLog.publish`` with realistic chain updates (100 option quotes from the simulated market). The
clients run in the pytest process, one ``grpc.aio`` channel and TCP connection each (as separate
consoles would have), through ``console.client.AgentClient.raw_stream`` with full ``Envelope``
decoding. A separate process keeps the clients' GIL and protobuf decoding from stealing time from the
agent's loop; a thread would put both on one interpreter lock and measure the sum of the two. On a
2-core machine the agent gets one core and all clients share the other, so the CPU columns say which
side was saturated.

* throughput: publish N chain updates as fast as the loop allows (one publish per loop turn), to
  ``lossless`` clients (every event is one envelope) and to default clients (market data conflated for
  a client that is behind: one envelope then carries ``first_seq..seq``). Delivered rates run from the
  first publish to the client's receipt of the last event.
* latency: publish at a fixed rate; latency is ``time.time_ns()`` at the client once the envelope is
  decoded minus ``Envelope.wall_ns`` (agent wall clock at publish; same machine, same clock).
* batching: a bare ``grpc.aio`` server in the agent process streams pre-serialized envelopes, one per
  quote vs one per 100-quote chain update, to one client: the transport's message-rate ceiling.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

import grpc
import pytest

from agent.domain import ChainUpdate
from agent.eventlog import Event, EventLog
from agent.feeds.sim import SimConfig, SimulatedMarket
from agent.runtime import AgentRuntime
from agent.session import session_on_or_after, to_ns, today_new_york
from agent.settings import load_settings
from agent.wire import encode_item, payload_to_envelope
from console.client import CHANNEL_OPTIONS, DEFAULT_DEADLINE_S, AgentClient
from proto.spyops.v1 import spyops_pb2 as pb
from proto.spyops.v1 import spyops_pb2_grpc as pb_grpc

ROWS = 100  # option quotes per chain update
BURST_EVENTS = 3_000  # chain updates per throughput run (300k rows); below max_pending 5000
WARMUP_EVENTS = 300
RATE_HZ = 200  # chain updates per second in the latency runs (20k rows/s)
LATENCY_S = 8.0
PER_QUOTE_MESSAGES = 40_000  # bare gRPC peer, one message per quote
BATCH_MESSAGES = 3_000  # bare gRPC peer, one message per 100-quote chain update
END_MARK = "BENCH-END"  # trading_class of the last chain update of a run (survives conflation)
RAW_METHOD = "/bench.RawStream/Stream"
RUN_TIMEOUT_S = 60.0

pytestmark = pytest.mark.bench


# ====================================================================== agent process


def _chain_variants(n: int = 16) -> list[ChainUpdate]:
    """``n`` chain updates of ``ROWS`` quotes each, from successive steps of the simulated market."""
    sess = session_on_or_after(today_new_york())
    market = SimulatedMarket(SimConfig(seed=7, strikes_each_side=25), sess, to_ns(sess.at("10:30")))
    out: list[ChainUpdate] = []
    for _ in range(n):
        market.step()
        full = market.initial()[-1]
        assert isinstance(full, ChainUpdate)
        out.append(replace(full, quotes=full.quotes[:ROWS], full=False))
    return out


async def _publish_burst(event_log: EventLog, variants: list[ChainUpdate], n: int) -> dict[str, int]:
    """Publish ``n`` chain updates back to back, yielding to the loop after each one."""
    first = time.time_ns()
    first_seq = event_log.last_seq + 1
    for i in range(n):
        p = variants[i % len(variants)]
        event_log.publish(replace(p, trading_class=END_MARK) if i == n - 1 else p)
        await asyncio.sleep(0)
    return {
        "first_ns": first,
        "last_ns": time.time_ns(),
        "first_seq": first_seq,
        "last_seq": event_log.last_seq,
    }


async def _publish_at_rate(
    event_log: EventLog, variants: list[ChainUpdate], rate: float, n: int
) -> dict[str, int]:
    """Publish ``n`` chain updates at ``rate`` per second on the loop clock (no catch-up bursts)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    first = time.time_ns()
    late = 0
    for i in range(n):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late += 1
            await asyncio.sleep(0)
        p = variants[i % len(variants)]
        event_log.publish(replace(p, trading_class=END_MARK) if i == n - 1 else p)
    return {"first_ns": first, "last_ns": time.time_ns(), "late": late}


def _raw_messages(variants: list[ChainUpdate]) -> tuple[list[bytes], list[bytes]]:
    """Pre-serialized envelopes: one per quote, and one per chain update."""
    per_quote: list[bytes] = []
    batches: list[bytes] = []
    seq = 0
    for v in variants:
        seq += 1
        env = pb.Envelope(agent_id="raw", seq=seq, ts_ns=seq, wall_ns=time.time_ns())
        payload_to_envelope(v, env)
        batches.append(env.SerializeToString())
        for q in v.quotes:
            seq += 1
            one = pb.Envelope(agent_id="raw", seq=seq, ts_ns=seq, wall_ns=time.time_ns())
            payload_to_envelope(replace(v, quotes=(q,)), one)
            per_quote.append(one.SerializeToString())
    return per_quote, batches


async def _start_raw_server(per_quote: list[bytes], batches: list[bytes]) -> tuple[grpc.aio.Server, int]:
    """A bare grpc.aio server streaming pre-serialized envelopes (``from_seq`` = how many)."""

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        req = pb.StreamRequest.FromString(request)
        msgs = per_quote if req.client_name == "per_quote" else batches
        for i in range(req.from_seq):
            yield msgs[i % len(msgs)]

    handler = grpc.method_handlers_generic_handler(
        "bench.RawStream", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def _agent_main(conn: Connection) -> None:
    """Entry point of the agent process: serve, then run the publisher commands sent over ``conn``."""
    settings = load_settings(
        None,
        agent_id="bench",
        roles=(),
        # production max_pending (5000: a burst of BURST_EVENTS never cuts a lossless client); a small
        # replay buffer only bounds the memory of this long-lived process (appending is O(1) either way)
        server={"host": "127.0.0.1", "port": 0, "buffer_size": 2_000},
    )
    runtime = AgentRuntime(settings)
    agent = runtime.start_in_thread()
    variants = _chain_variants()
    per_quote, batches = _raw_messages(variants)

    def on_loop(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, agent.loop).result()

    raw_server, raw_port = on_loop(_start_raw_server(per_quote, batches))
    conn.send({"address": agent.address, "raw_address": f"127.0.0.1:{raw_port}"})
    try:
        while True:
            cmd, args = conn.recv()
            if cmd == "stop":
                break
            if cmd == "cpu":
                conn.send(time.process_time())
            elif cmd == "burst":
                conn.send(on_loop(_publish_burst(runtime.log, variants, **args)))
            elif cmd == "rate":
                conn.send(on_loop(_publish_at_rate(runtime.log, variants, **args)))
            else:
                conn.send({"error": f"unknown command {cmd}"})
    finally:
        on_loop(raw_server.stop(0))
        agent.stop()


@dataclass
class AgentProcess:
    process: Any
    conn: Connection
    address: str
    raw_address: str

    async def ask(self, cmd: str, **args: Any) -> Any:
        """Send a command to the agent process and wait for its reply without blocking the loop."""
        self.conn.send((cmd, args))
        return await asyncio.to_thread(self.conn.recv)


@pytest.fixture(scope="module")
def agent_process() -> Iterator[AgentProcess]:
    ctx = mp.get_context("spawn")  # never fork a process that already runs gRPC
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_agent_main, args=(child,), name="bench-agent", daemon=True)
    proc.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the agent process did not start within 60 s")
        hello = parent.recv()
        yield AgentProcess(proc, parent, hello["address"], hello["raw_address"])
    finally:
        with contextlib.suppress(OSError):
            parent.send(("stop", {}))
        proc.join(15)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


# ====================================================================== clients


class OwnConnectionClient(AgentClient):
    """``AgentClient`` on a TCP connection of its own.

    gRPC shares one connection between the channels of a process that have the same options; separate
    consoles each have their own, so each benchmark client asks for a local subchannel pool.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.deadline = DEFAULT_DEADLINE_S
        self._channel = grpc.aio.insecure_channel(
            target, options=[*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        )
        self._stub = pb_grpc.AgentServiceStub(self._channel)


@dataclass
class Tally:
    envelopes: int = 0
    events: int = 0  # market events the envelopes stand for (first_seq..seq)
    rows: int = 0
    last_ns: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    error: str = ""


async def _follow(address: str, lossless: bool, name: str, ready: asyncio.Event, tally: Tally) -> None:
    """One stream client: count chain envelopes until the run's last event arrives."""
    async with OwnConnectionClient(address) as client:
        call = client.raw_stream(topics=["market"], lossless=lossless, client_name=name)
        try:
            async for env in call:
                now = time.time_ns()
                if env.HasField("snapshot"):
                    ready.set()
                    continue
                if not env.HasField("chain"):
                    continue
                tally.envelopes += 1
                tally.events += env.seq - env.first_seq + 1 if env.first_seq else 1
                tally.rows += len(env.chain.quotes)
                tally.latencies_ns.append(now - env.wall_ns)
                tally.last_ns = now
                if env.chain.trading_class == END_MARK:
                    break
        except grpc.aio.AioRpcError as err:
            tally.error = f"{err.code().name}: {err.details()}"
            ready.set()
        finally:
            call.cancel()


@dataclass
class Run:
    tallies: list[Tally]
    published: dict[str, int]
    wall_s: float
    agent_cpu_s: float
    client_cpu_s: float


async def _run(agent: AgentProcess, n_clients: int, lossless: bool, cmd: str, **args: Any) -> Run:
    """Connect ``n_clients``, wait until each is live, run one publisher command, wait for delivery."""
    tallies = [Tally() for _ in range(n_clients)]
    readies = [asyncio.Event() for _ in range(n_clients)]
    tasks = [
        asyncio.create_task(_follow(agent.address, lossless, f"bench-{i}", readies[i], tallies[i]))
        for i in range(n_clients)
    ]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 30)
    cpu0_agent = await agent.ask("cpu")
    cpu0_client = time.process_time()
    t0 = time.perf_counter()
    published = await agent.ask(cmd, **args)
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), RUN_TIMEOUT_S)
    except TimeoutError:
        for t in tasks:
            t.cancel()
        for tl in tallies:
            tl.error = tl.error or "timed out"
    wall = time.perf_counter() - t0
    cpu1_client = time.process_time()
    cpu1_agent = await agent.ask("cpu")
    return Run(tallies, published, wall, cpu1_agent - cpu0_agent, cpu1_client - cpu0_client)


def _pct(values: list[int], q: int) -> float:
    """Percentile ``q`` of nanosecond values, in milliseconds."""
    if len(values) < 2:
        return float(values[0]) / 1e6 if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] / 1e6


def _k(x: float) -> str:
    return f"{x / 1e3:,.1f}k" if x < 1e6 else f"{x / 1e6:,.2f}M"


# ====================================================================== benchmarks


async def test_bench_stream_throughput(agent_process: AgentProcess) -> None:
    await _run(agent_process, 1, True, "burst", n=WARMUP_EVENTS)  # warm up both sides
    print(f"\n\nstream throughput: {BURST_EVENTS} chain updates x {ROWS} rows, published back to back")
    print(
        f"{'mode':<10}{'clients':>8}{'pub ev/s':>10}{'ev/s/client':>13}{'total ev/s':>12}"
        f"{'total rows/s':>14}{'envelopes':>11}{'events':>9}{'agent CPU':>11}{'client CPU':>12}  note"
    )
    for lossless in (True, False):
        for n_clients in (1, 10):
            r = await _run(agent_process, n_clients, lossless, "burst", n=BURST_EVENTS)
            pub = r.published
            pub_rate = BURST_EVENTS / max((pub["last_ns"] - pub["first_ns"]) / 1e9, 1e-9)
            span = (max(t.last_ns for t in r.tallies) - pub["first_ns"]) / 1e9
            per_client = statistics.mean(t.events / ((t.last_ns - pub["first_ns"]) / 1e9) for t in r.tallies)
            events = sum(t.events for t in r.tallies)
            rows = sum(t.rows for t in r.tallies)
            envelopes = sum(t.envelopes for t in r.tallies)
            errors = sorted({t.error for t in r.tallies if t.error})
            print(
                f"{'lossless' if lossless else 'conflated':<10}{n_clients:>8}{_k(pub_rate):>10}"
                f"{_k(per_client):>13}{_k(events / span):>12}{_k(rows / span):>14}"
                f"{envelopes // n_clients:>11,}{events // n_clients:>9,}"
                f"{r.agent_cpu_s / r.wall_s:>10.0%}{r.client_cpu_s / r.wall_s:>11.0%}"
                f"  {'; '.join(errors)}"
            )
    print(
        "  envelopes/events are per client; 'conflated' = default clients: when behind, one envelope\n"
        "  carries the latest quote of every contract over first_seq..seq (rows/s counts rows received).\n"
        "  CPU = core-seconds per wall second of each process (100% = one core)."
    )


async def test_bench_stream_latency(agent_process: AgentProcess) -> None:
    n = int(RATE_HZ * LATENCY_S)
    await _run(agent_process, 1, False, "burst", n=WARMUP_EVENTS)
    print(
        f"\n\nstream latency: publish -> client receipt (decoded), {RATE_HZ} chain updates/s x {ROWS} rows"
        f" = {_k(RATE_HZ * ROWS)} rows/s for {LATENCY_S:g} s, default (conflating) clients"
    )
    print(
        f"{'clients':>8}{'samples':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'conflated':>11}{'late pubs':>11}{'agent CPU':>11}{'client CPU':>12}"
    )
    for n_clients in (1, 10):
        r = await _run(agent_process, n_clients, False, "rate", rate=float(RATE_HZ), n=n)
        lat = [x for t in r.tallies for x in t.latencies_ns]
        conflated = sum(t.events - t.envelopes for t in r.tallies)
        errors = sorted({t.error for t in r.tallies if t.error})
        print(
            f"{n_clients:>8}{len(lat):>9,}{_pct(lat, 50):>9.2f}{_pct(lat, 90):>9.2f}{_pct(lat, 99):>9.2f}"
            f"{max(lat) / 1e6:>9.2f}{conflated:>11,}{r.published['late']:>11,}"
            f"{r.agent_cpu_s / r.wall_s:>10.0%}{r.client_cpu_s / r.wall_s:>11.0%}  {'; '.join(errors)}"
        )
    print(
        "  samples = envelopes over all clients; conflated = events merged into another envelope;\n"
        "  late pubs = publishes that started behind schedule (agent loop busy)."
    )


async def _raw_rate(address: str, mode: str, count: int) -> tuple[float, float, int]:
    """Messages/s and rows/s one client receives from the bare gRPC server (first to last message)."""
    async with grpc.aio.insecure_channel(
        address, options=[*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        method = channel.unary_stream(
            RAW_METHOD,
            request_serializer=pb.StreamRequest.SerializeToString,
            response_deserializer=pb.Envelope.FromString,
        )
        msgs = rows = 0
        first = last = 0.0
        async for env in method(pb.StreamRequest(from_seq=count, client_name=mode)):
            last = time.perf_counter()
            if msgs == 0:
                first = last
            else:
                rows += len(env.chain.quotes)
            msgs += 1
    span = max(last - first, 1e-9)
    return (msgs - 1) / span, rows / span, msgs


async def test_bench_stream_batching_vs_per_quote(agent_process: AgentProcess) -> None:
    addr = agent_process.raw_address
    await _raw_rate(addr, "per_quote", 2_000)  # warm up
    per_quote = await _raw_rate(addr, "per_quote", PER_QUOTE_MESSAGES)
    batched = await _raw_rate(addr, "batch", BATCH_MESSAGES)
    agent = await _run(agent_process, 1, True, "burst", n=BATCH_MESSAGES)
    span = (agent.tallies[0].last_ns - agent.published["first_ns"]) / 1e9
    agent_rows = agent.tallies[0].rows / span
    print("\n\nbatching gain, 1 client (bare grpc.aio server in the agent process, pre-serialized envelopes)")
    print(f"{'stream':<44}{'msgs/s':>10}{'rows/s':>10}{'vs per-quote':>14}")
    print(
        f"{'bare gRPC, one envelope per quote':<44}{_k(per_quote[0]):>10}{_k(per_quote[1]):>10}{'1.0x':>14}"
    )
    print(
        f"{'bare gRPC, one envelope per 100-quote batch':<44}{_k(batched[0]):>10}{_k(batched[1]):>10}"
        f"{batched[1] / per_quote[1]:>13.1f}x"
    )
    print(
        f"{'agent (event log + encode once), lossless':<44}{_k(agent.tallies[0].envelopes / span):>10}"
        f"{_k(agent_rows):>10}{agent_rows / per_quote[1]:>13.1f}x"
    )
    print(
        f"  ({per_quote[2]:,} per-quote messages, {batched[2]:,} batches, {agent.tallies[0].envelopes:,} agent events)"
    )
    encode_us, decode_us, size = _codec_costs()
    print(
        f"  one {ROWS}-row chain update: {size:,} bytes on the wire, encoded once by the agent in {encode_us:.0f} us,"
        f" decoded by each client in {decode_us:.0f} us (best of 5 x 200, this process)"
    )


def _codec_costs() -> tuple[float, float, int]:
    """Agent-side encode (``wire.encode_item``) and client-side decode of one chain update, in us."""
    chain = _chain_variants(1)[0]

    def encode() -> bytes:
        return encode_item("bench", Event(seq=1, ts_ns=1, wall_ns=1, topic="market", payload=chain))

    wire = encode()
    best_enc = best_dec = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(200):
            encode()
        t1 = time.perf_counter()
        for _ in range(200):
            pb.Envelope.FromString(wire)
        t2 = time.perf_counter()
        best_enc, best_dec = min(best_enc, (t1 - t0) / 200), min(best_dec, (t2 - t1) / 200)
    return best_enc * 1e6, best_dec * 1e6, len(wire)
