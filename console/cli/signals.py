"""``spyctl signals [--follow]``: the detector's open signals, and with ``--follow`` every new, updated
and resolved signal as it happens (topic "signals"), from every selected agent.

JSON: one object per signal, the ``Signal`` message's fields plus ``agent`` (the agent's name),
``age_s`` (seconds since first seen, on the agent's market clock) and, when following, ``event``
(``open``: open when following began, ``new``, ``updated``, ``resolved``) and ``seq`` (a string, as
64-bit integers are in proto JSON).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.text import Text

from console.cli import output
from console.cli.common import (
    AgentsOpt,
    ConfigOpt,
    JsonOpt,
    check_reachable,
    client_for,
    finish,
    merged_streams,
    per_agent,
    run,
    targets,
    title,
)
from console.cli.envelopes import age_text
from console.client import AgentClient
from console.config import AgentTarget
from console.format import ny_time
from proto.spyops.v1 import spyops_pb2 as pb

SEVERITY_ORDER = {"critical": 0, "warn": 1, "info": 2}
EVENT_OF_STATUS = {"new": "new", "active": "updated", "resolved": "resolved"}


def is_open(sig: pb.Signal) -> bool:
    return sig.status != "resolved"


def signal_dict(sig: pb.Signal, target: AgentTarget, now_ns: int, **extra: Any) -> dict[str, Any]:
    age = (now_ns - sig.first_seen_ns) / 1e9 if now_ns and sig.first_seen_ns else None
    return {**output.message_dict(sig), "agent": target.name, "age_s": age, **extra}


def _edge(x: float) -> str:
    return f"{x:,.2f}" if x == x else "-"


def _rows(signals: Sequence[pb.Signal], now_ns: int) -> list[list[str | Text]]:
    ordered = sorted(signals, key=lambda s: (SEVERITY_ORDER.get(s.severity, 3), -s.edge, s.first_seen_ns))
    return [
        [
            s.kind,
            s.severity or "-",
            s.status,
            _edge(s.edge),
            short_legs(s.legs) or "-",
            age_text((now_ns - s.first_seen_ns) / 1e9) if now_ns and s.first_seen_ns else "-",
            Text.assemble(s.explanation, "\n", (s.id, "dim")),
        ]
        for s in ordered
    ]


def short_legs(legs: Sequence[pb.Leg]) -> str:
    """``+589P -588P``: + bought, - sold, ``2x`` for a ratio."""
    return " ".join(
        f"{'-' if leg.side == 'SELL' else '+'}{f'{leg.quantity}x' if leg.quantity > 1 else ''}"
        f"{leg.strike:g}{'C' if leg.right == pb.CALL else 'P'}"
        for leg in legs
    )


def follow_line(target: AgentTarget, several: bool, event: str, ts_ns: int, sig: pb.Signal) -> str:
    who = f"{target.name:<12} " if several else ""
    return (
        f"{ny_time(ts_ns)} {who}{event:<8} {sig.kind:<13} {sig.severity or '-':<8} "
        f"edge ${_edge(sig.edge):>8}  {short_legs(sig.legs) or '-'}  {sig.explanation}  [{sig.id}]"
    )


def register(app: typer.Typer) -> None:
    @app.command()
    def signals(
        agent: AgentsOpt = None,
        config: ConfigOpt = None,
        follow: Annotated[
            bool,
            typer.Option("--follow", "-f", help="then print new, updated and resolved signals until Ctrl-C"),
        ] = False,
        count: Annotated[
            int, typer.Option(help="with --follow: stop after this many lines (0: until Ctrl-C)")
        ] = 0,
        json_out: JsonOpt = False,
    ) -> None:
        """Open signals (kind, severity, edge, legs, explanation, age); --follow streams their changes."""
        if count < 0:
            output.fail("--count must be >= 0")
            raise typer.Exit(output.USAGE)
        _, chosen = targets(agent, config)
        if follow:
            _follow(chosen, count, json_out)
            return
        results = per_agent(chosen, _snapshot)
        several = len(results) > 1
        for r in results:
            if r.value is None:
                continue
            snap = r.value
            open_signals = [s for s in snap.signals if is_open(s)]
            if json_out:
                for s in open_signals:
                    output.print_json_line(signal_dict(s, r.target, snap.ts_ns))
                continue
            output.print_table(
                title(r.target, several, f"{len(open_signals)} open signals at {ny_time(snap.ts_ns)} NY"),
                ["kind", "severity", "status", "edge $", "legs", "age", "explanation (id)"],
                _rows(open_signals, snap.ts_ns),
                wrap=("explanation (id)", "legs"),
            )
        finish(results)


async def _snapshot(c: AgentClient) -> pb.Snapshot:
    return await c.snapshot()


def _follow(chosen: Sequence[AgentTarget], count: int, json_out: bool) -> None:
    several = len(chosen) > 1

    def emit(target: AgentTarget, event: str, seq: int, ts_ns: int, sig: pb.Signal) -> None:
        if json_out:
            output.print_json_line(signal_dict(sig, target, ts_ns, event=event, seq=str(seq)))
        else:
            sys.stdout.write(follow_line(target, several, event, ts_ns, sig) + "\n")
        sys.stdout.flush()

    async def go() -> None:
        clients = [(t, client_for(t)) for t in chosen]
        try:
            await check_reachable(clients)
            n = 0
            stream = merged_streams(clients, ["signals"], client_name="spyctl-signals")
            async with contextlib.aclosing(stream) as envelopes:
                async for target, env in envelopes:
                    if env.HasField("snapshot"):
                        # the state when following began (or after a resync): the open signals
                        batch = [
                            ("open", env.seq, env.snapshot.ts_ns, s)
                            for s in env.snapshot.signals
                            if is_open(s)
                        ]
                    elif env.HasField("signal"):
                        sig = env.signal
                        batch = [
                            (
                                EVENT_OF_STATUS.get(sig.status, sig.status or "updated"),
                                env.seq,
                                env.ts_ns,
                                sig,
                            )
                        ]
                    else:
                        continue  # smile fits share the topic
                    for event, seq, ts_ns, sig in batch:
                        emit(target, event, seq, ts_ns, sig)
                        n += 1
                        if count and n >= count:
                            return
        finally:
            for _, c in clients:
                await c.close()

    run(go())
