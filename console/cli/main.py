"""``spyctl``: the scriptable operator CLI: status, streams, signals, orders, risk and commands of agents;
recordings, offline detection, scoring, backtests and replays of files; runs agents too.

Agents come from ``--agent`` (repeatable) and the console config file (``console.config``); read
commands show every selected agent, commands that change something go to exactly one. ``--json``
prints one JSON object per line. Exit codes: ``console.cli.output.EXIT_CODES`` (in ``--help``).
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

from console.cli import backtest, config_cmd, output, replay, signals, trading
from console.cli.common import (
    AgentOpt,
    AgentsOpt,
    ConfigOpt,
    GlobalOptions,
    JsonOpt,
    check_reachable,
    client_for,
    finish,
    merged_streams,
    one_target,
    per_agent,
    report_state,
    run,
    set_global_options,
    targets,
)
from console.cli.envelopes import TOPICS, complete_topics, envelope_summary
from console.client import AgentClient, ResumingStream
from console.format import ny_time
from proto.recording import RecordingWriter
from proto.spyops.v1 import spyops_pb2 as pb

EPILOG = (
    "[bold]Agents[/]: --agent host:port | name=host:port | NAME (repeatable), or the config file "
    "(--config FILE, $SPY_CONSOLE_CONFIG, ~/.config/spyops/console.toml). Read commands show every "
    "selected agent; commands (arm, halt, order, ...) need exactly one. --json: one object per line.\n\n"
    "[bold]Exit codes[/]\n" + "\n".join(f"  {code:>3}  {text}" for code, text in output.EXIT_CODES) + "\n\n"
    "[bold]Completion[/]: spyctl --install-completion (bash, zsh, fish, powershell: the current shell); "
    "spyctl --show-completion prints the script; _SPYCTL_COMPLETE=source_zsh spyctl prints another shell's."
)

app = typer.Typer(
    no_args_is_help=True,
    help="Operate SPY 0DTE agents from the command line.",
    epilog=EPILOG,
    rich_markup_mode="rich",
)


@app.callback()
def _root(agent: AgentsOpt = None, config: ConfigOpt = None) -> None:
    set_global_options(GlobalOptions(tuple(agent or ()), config))


TopicOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--topic",
        "-t",
        metavar="TOPIC",
        autocompletion=complete_topics,
        help=f"topic to follow (repeatable): {', '.join(TOPICS)}",
    ),
]


@app.command()
def status(agent: AgentsOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Agent identity, clock, roles, stream position and health (every selected agent)."""
    _, chosen = targets(agent, config)

    async def fetch(c: AgentClient) -> tuple[pb.AgentInfo, str]:
        return await c.info(), await c.health()

    results = per_agent(chosen, fetch)
    for r in results:
        if r.value is None:
            continue
        info, health = r.value
        if json_out:
            output.print_json_line(
                {
                    **output.message_dict(info),
                    "health": health,
                    "agent": r.target.name,
                    "address": r.target.address,
                }
            )
            continue
        output.print_kv(
            f"agent {info.agent_id} at {r.target.address}"
            + (f" ({r.target.name})" if r.target.name != r.target.address else ""),
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
    finish(results)


def _check_topics(topics: list[str] | None) -> list[str]:
    wanted = [t.strip() for t in topics or () if t.strip()]
    unknown = sorted(set(wanted) - set(TOPICS))
    if unknown:
        output.fail(f"unknown topic(s) {', '.join(unknown)}; valid topics: {', '.join(TOPICS)}")
        raise typer.Exit(output.USAGE)
    return wanted


@app.command()
def stream(
    agent: AgentsOpt = None,
    config: ConfigOpt = None,
    topic: TopicOpt = None,
    from_seq: Annotated[
        int, typer.Option("--from-seq", help="resume at this seq (0: snapshot first; one agent only)")
    ] = 0,
    count: Annotated[int, typer.Option(help="stop after this many events (0: follow until Ctrl-C)")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object (an Envelope) per line")] = False,
) -> None:
    """Print the agents' events as they happen (resumes across disconnects without gaps)."""
    if from_seq < 0 or count < 0:
        output.fail("--from-seq and --count must be >= 0")
        raise typer.Exit(output.USAGE)
    topics = _check_topics(topic)
    _, chosen = targets(agent, config)
    if from_seq and len(chosen) > 1:
        output.fail("--from-seq is a position in one agent's stream: choose one agent with --agent")
        raise typer.Exit(output.USAGE)
    several = len(chosen) > 1

    async def go() -> None:
        clients = [(t, client_for(t)) for t in chosen]
        try:
            await check_reachable(clients)
            n = 0
            async with contextlib.aclosing(merged_streams(clients, topics, from_seq)) as envelopes:
                async for target, env in envelopes:
                    if json_out:
                        output.print_json_line(output.message_dict(env, defaults=False))
                    else:
                        line = envelope_summary(env)
                        sys.stdout.write((f"{target.name:<12} {line}" if several else line) + "\n")
                    sys.stdout.flush()
                    n += 1
                    if count and n >= count:
                        break
        finally:
            for _, c in clients:
                await c.close()

    run(go())


@app.command()
def record(
    file: Annotated[Path, typer.Argument(help="recording to write (replay it with spyctl replay FILE)")],
    agent: AgentOpt = None,
    config: ConfigOpt = None,
    count: Annotated[int, typer.Option(help="stop after this many events (0: until interrupted)")] = 0,
    duration: Annotated[
        float, typer.Option(help="stop after this many seconds (0: until interrupted)")
    ] = 0.0,
) -> None:
    """Write one agent's stream losslessly to FILE, resuming across disconnects."""
    if count < 0 or not math.isfinite(duration) or duration < 0:
        output.fail("--count and --duration must be >= 0")
        raise typer.Exit(output.USAGE)
    _, target = one_target(agent, config, "record")
    writers: list[RecordingWriter] = []

    async def go() -> None:
        async with client_for(target) as c:
            await c.info()  # unreachable: exit 3 at once instead of retrying forever
            try:
                writers.append(RecordingWriter(file))
            except OSError as exc:
                output.fail(f"cannot write {file}: {exc}")
                raise typer.Exit(output.USAGE) from None
            writer = writers[0]
            s = ResumingStream(c, lossless=True, on_state=report_state, client_name="spyctl-record")
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
        for writer in writers:
            writer.close()
            output.stderr.print(f"recorded {writer.count} events to {file}", highlight=False, markup=False)


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
    """``spyctl agent ...`` runs ``spy-agent ...``: the agent code is imported only when it is called, so
    that every other command (and each shell-completion request) starts quickly."""

    @app.command(
        "agent",
        add_help_option=False,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def agent_cmd(ctx: typer.Context) -> None:
        """Run an agent (same options as spy-agent; see spyctl agent --help)."""
        from agent.cli import agent_command

        sub = typer.Typer(add_completion=False)
        sub.command()(agent_command)
        typer.main.get_command(sub).main(args=list(ctx.args), prog_name="spyctl agent")


_register_agent_command()
signals.register(app)
trading.register(app)
backtest.register(app)
replay.register(app)
config_cmd.register(app)


def main() -> None:
    app(prog_name="spyctl")
