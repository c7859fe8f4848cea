"""``spyctl``: status, streams and recordings of agents; runs agents too.

Exit codes: 0 ok, 2 bad arguments, 3 agent unreachable, 4 agent refused the request, 5 stream ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from console.cli import backtest, output, trading
from console.cli.common import AgentOpt, client_for, run
from console.client import ConnectionEvent, ConnectionState, ResumingStream
from console.format import ny_time
from proto.recording import RecordingWriter
from proto.spyops.v1 import spyops_pb2 as pb

app = typer.Typer(no_args_is_help=True, help="Operate SPY 0DTE agents from the command line.")

TopicOpt = Annotated[list[str] | None, typer.Option("--topic", "-t", help="topic to follow (repeatable)")]


@app.command()
def status(
    agent: AgentOpt = output.DEFAULT_AGENT,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Agent identity, clock, roles, stream position and health."""

    async def go() -> tuple[pb.AgentInfo, str]:
        async with client_for(agent) as c:
            return await c.info(), await c.health()

    info, health = run(go())
    if json_out:
        output.print_json_line({**output.message_dict(info), "health": health})
        return
    output.print_kv(
        f"agent {info.agent_id} at {agent}",
        [
            ("health", health),
            ("version", info.version),
            ("roles", ", ".join(info.roles) or "-"),
            ("feed", info.feed or "-"),
            ("session", f"{info.session_date} (closes {ny_time(info.session_close_ns)} NY)"),
            ("market clock", f"{ny_time(info.clock_ns, with_date=True)} NY at {info.clock_speed:g}x"),
            ("events", f"seq {info.last_seq} (replayable from {info.oldest_seq})"),
            ("incarnation", info.incarnation),
            ("stream clients", str(info.clients)),
            ("upstream", info.upstream or "-"),
        ],
    )


def _summary(env: pb.Envelope) -> str:
    kind = env.WhichOneof("payload") or "?"
    head = f"{env.seq:>8} {ny_time(env.ts_ns)} {kind:<10}"
    if kind == "chain":
        c = env.chain
        return f"{head} {c.expiry} {len(c.quotes)} quotes{' (full)' if c.full else ''} und {c.underlying:.2f}"
    if kind == "underlying":
        return f"{head} {env.underlying.symbol} {env.underlying.last:.2f}"
    if kind == "notice":
        return f"{head} {env.notice.level} {env.notice.code}: {env.notice.message}"
    if kind == "snapshot":
        return f"{head} as of seq {env.snapshot.as_of_seq}, {len(env.snapshot.chain.quotes)} quotes"
    if kind == "signal":
        sig = env.signal
        return f"{head} {sig.status:<8} {sig.kind:<13} edge ${sig.edge:,.2f}  {sig.explanation}"
    if kind == "smile":
        return f"{head} {env.smile.model} forward {env.smile.forward:.2f} rmse {env.smile.rmse:.4f}"
    if kind == "health":
        return f"{head} " + ", ".join(f"{c.name}={c.status}" for c in env.health.components)
    return head


def _report_state(e: ConnectionEvent) -> None:
    if e.state in (ConnectionState.RECONNECTING, ConnectionState.FAILED):
        output.stderr.print(f"[yellow]{e.target}: {e.state.value}: {e.detail}[/]", highlight=False)


@app.command()
def stream(
    agent: AgentOpt = output.DEFAULT_AGENT,
    topic: TopicOpt = None,
    from_seq: Annotated[int, typer.Option("--from-seq", help="resume at this seq (0: snapshot first)")] = 0,
    count: Annotated[int, typer.Option(help="stop after this many events (0: follow forever)")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Print the agent's events as they happen (resumes across disconnects without gaps)."""
    if from_seq < 0 or count < 0:
        output.fail("--from-seq and --count must be >= 0")
        raise typer.Exit(output.USAGE)

    async def go() -> None:
        async with client_for(agent) as c:
            s = ResumingStream(
                c, topics=topic or (), from_seq=from_seq, on_state=_report_state, client_name="spyctl"
            )
            n = 0
            async with contextlib.aclosing(s.__aiter__()) as envelopes:
                async for env in envelopes:
                    if json_out:
                        output.print_json_line(output.message_dict(env))
                    else:
                        sys.stdout.write(_summary(env) + "\n")
                    n += 1
                    if count and n >= count:
                        break
            sys.stdout.flush()

    run(go())


@app.command()
def record(
    file: Annotated[Path, typer.Argument(help="recording to write (replay it with spy-agent --replay FILE)")],
    agent: AgentOpt = output.DEFAULT_AGENT,
    count: Annotated[int, typer.Option(help="stop after this many events (0: until interrupted)")] = 0,
    duration: Annotated[
        float, typer.Option(help="stop after this many seconds (0: until interrupted)")
    ] = 0.0,
) -> None:
    """Write the agent's stream losslessly to FILE, resuming across disconnects."""
    if count < 0 or duration < 0:
        output.fail("--count and --duration must be >= 0")
        raise typer.Exit(output.USAGE)
    try:
        writer = RecordingWriter(file)
    except OSError as exc:
        output.fail(f"cannot write {file}: {exc}")
        raise typer.Exit(output.USAGE) from None

    async def go() -> None:
        async with client_for(agent) as c:
            s = ResumingStream(c, lossless=True, on_state=_report_state, client_name="spyctl-record")
            deadline = time.monotonic() + duration if duration else None
            async with contextlib.aclosing(s.__aiter__()) as envelopes:
                async for env in envelopes:
                    writer.write(env)
                    if count and writer.count >= count:
                        break
                    if deadline and time.monotonic() >= deadline:
                        break
                    if writer.count % 256 == 0:
                        writer.flush()

    async def bounded() -> None:
        if duration:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(go(), timeout=duration + 5.0)
        else:
            await go()

    try:
        run(bounded())
    finally:
        writer.close()
        output.stderr.print(f"recorded {writer.count} events to {file}", highlight=False)


@app.command()
def detect(
    file: Annotated[Path, typer.Argument(help="a recording (spyctl record) or an IB chain CSV")],
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per signal")] = False,
    all_versions: Annotated[
        bool, typer.Option("--all", help="every update of each signal, not the last")
    ] = False,
) -> None:
    """Run the detector over a file offline and print its signals."""
    from agent.feeds.replay import ReplayError
    from agent.offline import detect_file
    from agent.wire import signal_to_pb

    try:
        found = list(detect_file(file))
    except (ReplayError, OSError) as exc:
        output.fail(str(exc))
        raise typer.Exit(output.USAGE) from None
    if not all_versions:
        found = list({s.id: s for s in found}.values())
    messages = []
    for sig in found:
        msg = pb.Signal()
        signal_to_pb(sig, msg)
        messages.append(msg)
    if json_out:
        for msg in messages:
            output.print_json_line(output.message_dict(msg))
        return
    output.print_table(
        f"{len(messages)} signals in {file.name}",
        ["id", "kind", "status", "edge $", "first seen", "explanation"],
        [
            [m.id, m.kind, m.status, f"{m.edge:,.2f}", ny_time(m.first_seen_ns), m.explanation]
            for m in messages
        ],
    )


@app.command()
def score(
    recording: Annotated[Path, typer.Argument(help="a recording of a simulated market with labels")],
    labels: Annotated[
        Path | None, typer.Option(help="labels JSONL (default: RECORDING.labels.jsonl)")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Per-kind precision and recall of the detector against a recording's ground-truth labels."""
    from agent.feeds.replay import ReplayError
    from agent.offline import labels_path_for, score_recording

    labels_file = labels or labels_path_for(recording)
    if not labels_file.is_file():
        output.fail(f"no labels at {labels_file}: record with `spy-agent --labels FILE` and pass --labels")
        raise typer.Exit(output.USAGE)
    try:
        scores = score_recording(recording, labels_file)
    except (ReplayError, OSError, ValueError) as exc:
        output.fail(str(exc))
        raise typer.Exit(output.USAGE) from None
    if json_out:
        for k in scores.values():
            output.print_json_line(
                {
                    "kind": k.kind,
                    "signals": k.signals,
                    "true_signals": k.true_signals,
                    "labels": k.labels,
                    "found_labels": k.found_labels,
                    "precision": k.precision,
                    "recall": k.recall,
                    "collateral": k.collateral,
                }
            )
        return
    output.print_table(
        f"detector vs labels of {recording.name}",
        ["kind", "signals", "precision", "labels", "recall", "collateral"],
        [
            [k.kind, str(k.signals), _ratio(k.precision), str(k.labels), _ratio(k.recall), str(k.collateral)]
            for k in scores.values()
        ],
    )


def _ratio(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3f}"


def _register_agent_command() -> None:
    from agent.cli import agent_command

    app.command("agent", help="Run an agent (same options as spy-agent).")(agent_command)


_register_agent_command()
trading.register(app)
backtest.register(app)


def main() -> None:
    app()
