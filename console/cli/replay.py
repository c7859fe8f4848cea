"""``spyctl replay FILE``: play a recording (``spyctl record``) or an IB chain CSV to stdout, in the
formats of ``spyctl stream`` (one line per envelope, or ``--json``: one Envelope object per line), paced
by ``--speed`` (0: as fast as possible), within a New York time window (``--from``/``--to``), then a
summary (envelopes, time span, topics). With ``--json`` the summary is the last line,
``{"summary": {...}}``.

A recording plays exactly as recorded (every payload, with its agent's seq). An IB chain CSV plays as
the replay feed reads it (``agent.feeds.replay``): per snapshot the underlying, the 0DTE chain and any
data-quality notices, numbered from 1. A file that is neither, or a recording damaged in the middle, is
an error (exit 2) naming the file and the place.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from console.cli import output
from console.cli.envelopes import TOPICS, complete_topics, envelope_summary, topic_of, wanted
from console.format import NEW_YORK, ny_time
from proto.recording import RecordingError, is_recording, read_recording
from proto.spyops.v1 import spyops_pb2 as pb

TIME_FORMATS = (
    "%H:%M",
    "%H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%dT%H:%M:%S",
)


class ReplayInputError(ValueError):
    """The file cannot be replayed; the message names the file and what is wrong."""


def read_envelopes(path: Path) -> Iterator[pb.Envelope]:
    """The envelopes of a recording or an IB chain CSV, in order (ReplayInputError if neither)."""
    if not path.exists():
        raise ReplayInputError(f"replay file {path} does not exist")
    if not path.is_file():
        raise ReplayInputError(f"{path} is not a file")
    try:
        recording = is_recording(path)
    except OSError as exc:
        raise ReplayInputError(f"cannot read {path}: {exc}") from None
    if recording:
        return _recording(path)
    return _csv(path)


def _recording(path: Path) -> Iterator[pb.Envelope]:
    try:
        yield from read_recording(path)
    except RecordingError as exc:
        raise ReplayInputError(str(exc)) from None
    except OSError as exc:
        raise ReplayInputError(f"cannot read {path}: {exc}") from None


def _csv(path: Path) -> Iterator[pb.Envelope]:
    from agent.feeds.replay import ReplayError, open_replay
    from agent.wire import payload_to_envelope

    try:
        source = open_replay(path)
        items = list(source.items())
    except ReplayError as exc:
        raise ReplayInputError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayInputError(f"cannot read {path}: {exc}") from None
    agent_id = f"replay:{path.name}"
    for seq, item in enumerate(items, start=1):
        env = pb.Envelope(agent_id=agent_id, seq=seq, ts_ns=item.ts_ns)
        payload_to_envelope(item.payload, env)
        yield env


def parse_ny_time(value: str, session: dt.date | None, option: str) -> int:
    """``HH:MM[:SS]`` on the file's session date, or a full ``YYYY-MM-DD HH:MM[:SS]``, New York; UTC ns."""
    text = value.strip()
    for fmt in TIME_FORMATS:
        try:
            parsed = dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
        if not fmt.startswith("%Y"):
            if session is None:
                raise ReplayInputError(
                    f"{option} {value!r}: the file has no timed events to take a date from; "
                    "give a date too (YYYY-MM-DD HH:MM)"
                )
            parsed = dt.datetime.combine(session, parsed.time())
        return int(parsed.replace(tzinfo=NEW_YORK).timestamp() * 1_000_000_000)
    raise ReplayInputError(
        f"{option} {value!r}: expected a New York time HH:MM[:SS] or YYYY-MM-DD HH:MM[:SS]"
    )


@dataclass
class Summary:
    file: str
    read: int = 0
    shown: int = 0
    first_ns: int = 0
    last_ns: int = 0
    topics: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    agents: set[str] = field(default_factory=set)
    interrupted: bool = False

    def add(self, env: pb.Envelope) -> None:
        self.shown += 1
        self.topics[topic_of(env) or "?"] += 1
        self.kinds[env.WhichOneof("payload") or "?"] += 1
        if env.agent_id:
            self.agents.add(env.agent_id)
        if env.ts_ns:
            self.first_ns = env.ts_ns if not self.first_ns else min(self.first_ns, env.ts_ns)
            self.last_ns = max(self.last_ns, env.ts_ns)

    @property
    def span_s(self) -> float:
        return (self.last_ns - self.first_ns) / 1e9 if self.first_ns else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "envelopes": self.shown,
            "read": self.read,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "first": ny_time(self.first_ns, with_date=True) if self.first_ns else None,
            "last": ny_time(self.last_ns, with_date=True) if self.last_ns else None,
            "span_s": self.span_s,
            "topics": dict(sorted(self.topics.items())),
            "payloads": dict(sorted(self.kinds.items())),
            "agents": sorted(self.agents),
            "interrupted": self.interrupted,
        }


def register(app: typer.Typer) -> None:
    @app.command("replay")
    def replay_cmd(
        file: Annotated[Path, typer.Argument(help="a recording (spyctl record) or an IB chain CSV")],
        topic: Annotated[
            list[str] | None,
            typer.Option(
                "--topic",
                "-t",
                metavar="TOPIC",
                autocompletion=complete_topics,
                help=f"only these topics (repeatable): {', '.join(TOPICS)}",
            ),
        ] = None,
        speed: Annotated[
            float, typer.Option(help="pace: 1 = as recorded, 10 = ten times faster, 0 = as fast as possible")
        ] = 0.0,
        from_time: Annotated[
            str | None,
            typer.Option(
                "--from",
                metavar="TIME",
                help="start at this New York time: HH:MM[:SS] on the file's date, or YYYY-MM-DD HH:MM[:SS]",
            ),
        ] = None,
        to_time: Annotated[
            str | None, typer.Option("--to", metavar="TIME", help="stop at this New York time (as --from)")
        ] = None,
        count: Annotated[int, typer.Option(help="stop after this many envelopes (0: all)")] = 0,
        json_out: Annotated[
            bool, typer.Option("--json", help="one JSON object (an Envelope) per line, then the summary")
        ] = False,
    ) -> None:
        """Play a recording or an IB chain CSV to stdout like `spyctl stream`, then a summary."""
        topics = [t.strip() for t in topic or () if t.strip()]
        unknown = sorted(set(topics) - set(TOPICS))
        if unknown:
            output.fail(f"unknown topic(s) {', '.join(unknown)}; valid topics: {', '.join(TOPICS)}")
            raise typer.Exit(output.USAGE)
        if not math.isfinite(speed) or speed < 0:
            output.fail(f"--speed must be a number >= 0 (0: as fast as possible), got {speed}")
            raise typer.Exit(output.USAGE)
        if count < 0:
            output.fail("--count must be >= 0")
            raise typer.Exit(output.USAGE)
        summary = Summary(file=str(file))
        try:
            envelopes = read_envelopes(file)
            # the session date of --from/--to: the New York date of the first timed envelope
            head: list[pb.Envelope] = []
            session: dt.date | None = None
            if from_time or to_time:
                for env in envelopes:
                    head.append(env)
                    if env.ts_ns:
                        session = dt.datetime.fromtimestamp(env.ts_ns / 1e9, NEW_YORK).date()
                        break
            start_ns = parse_ny_time(from_time, session, "--from") if from_time else None
            end_ns = parse_ny_time(to_time, session, "--to") if to_time else None
            if start_ns is not None and end_ns is not None and end_ns < start_ns:
                raise ReplayInputError(f"--to {to_time} is before --from {from_time}")
            _play(itertools.chain(head, envelopes), summary, topics, speed, start_ns, end_ns, count, json_out)
        except ReplayInputError as exc:
            sys.stdout.flush()
            output.fail(str(exc))
            raise typer.Exit(output.USAGE) from None
        except KeyboardInterrupt:
            summary.interrupted = True
            _print_summary(summary, json_out)
            raise typer.Exit(output.INTERRUPTED) from None
        _print_summary(summary, json_out)


def _play(
    envelopes: Iterator[pb.Envelope],
    summary: Summary,
    topics: list[str],
    speed: float,
    start_ns: int | None,
    end_ns: int | None,
    count: int,
    json_out: bool,
) -> None:
    windowed = start_ns is not None or end_ns is not None
    t0_wall = 0.0
    t0_market = 0
    for env in envelopes:
        summary.read += 1
        if windowed and (
            not env.ts_ns
            or (start_ns is not None and env.ts_ns < start_ns)
            or (end_ns is not None and env.ts_ns > end_ns)
        ):
            continue
        if not wanted(env, topics):
            continue
        if speed > 0 and env.ts_ns:
            if not t0_market:
                t0_wall, t0_market = time.monotonic(), env.ts_ns
            delay = t0_wall + (env.ts_ns - t0_market) / 1e9 / speed - time.monotonic()
            if delay > 0:
                sys.stdout.flush()
                time.sleep(delay)
        if json_out:
            output.print_json_line(output.message_dict(env, defaults=False))
        else:
            sys.stdout.write(envelope_summary(env) + "\n")
        summary.add(env)
        if count and summary.shown >= count:
            break
    sys.stdout.flush()


def _print_summary(s: Summary, json_out: bool) -> None:
    if json_out:
        output.print_json_line({"summary": s.as_dict()})
        sys.stdout.flush()
        return
    span = f"{ny_time(s.first_ns)} .. {ny_time(s.last_ns)} NY ({s.span_s:,.1f} s)" if s.first_ns else "-"
    output.print_kv(
        f"replay of {Path(s.file).name}" + (" (interrupted)" if s.interrupted else ""),
        [
            ("envelopes", f"{s.shown} shown of {s.read} read"),
            ("time span", span),
            ("session", ny_time(s.first_ns, with_date=True)[:10] if s.first_ns else "-"),
            ("topics", ", ".join(f"{k} {v}" for k, v in sorted(s.topics.items())) or "-"),
            ("payloads", ", ".join(f"{k} {v}" for k, v in sorted(s.kinds.items())) or "-"),
            ("agents", ", ".join(sorted(s.agents)) or "-"),
        ],
    )
