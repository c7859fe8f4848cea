"""One way to print results: Rich for people, JSON for scripts; and the CLI's exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from console.config import DEFAULT_AGENT as DEFAULT_AGENT  # re-exported

# Exit codes (part of the interface; shown by `spyctl --help` and documented in the README)
OK = 0
USAGE = 2  # bad arguments, configuration or input file (also any command-line syntax error)
UNREACHABLE = 3  # the agent cannot be reached (or an agent cannot listen on its port)
REFUSED = 4  # the agent refused the request (a command refused by the executor, a bad topic)
STREAM_ENDED = 5  # the stream broke and could not be resumed without a gap
INTERRUPTED = 130  # stopped with Ctrl-C (following commands: stream, signals --follow, record)

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (OK, "ok"),
    (USAGE, "bad arguments, configuration or input file"),
    (UNREACHABLE, "agent unreachable"),
    (REFUSED, "agent refused the request (command refused by the executor, bad topic)"),
    (STREAM_ENDED, "stream broke and could not be resumed without a gap"),
    (INTERRUPTED, "interrupted (Ctrl-C)"),
)


def exit_code_table() -> str:
    """The exit codes as text lines (the --help epilog)."""
    return "\n".join(f"{code:>3}  {meaning}" for code, meaning in EXIT_CODES)


stdout = Console()
stderr = Console(stderr=True)


def message_dict(msg: Message, defaults: bool = True) -> dict[str, Any]:
    """The proto3 JSON form (field names as in the .proto, 64-bit integers as strings). ``defaults``:
    every field, even at its default (``"armed": false``), so scripts see the same keys every time;
    envelopes of streams and replays leave defaults out (compact)."""
    return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=defaults)


def print_json_line(data: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, separators=(",", ":"), default=str) + "\n")


def cell(value: str | Text) -> Text:
    """Cells are plain text: an agent's message with brackets is never read as Rich markup."""
    return value if isinstance(value, Text) else Text(value)


def print_kv(title: str, rows: Iterable[tuple[str, str | Text]]) -> None:
    table = Table(title=escape(title), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(cell(k), cell(v))
    stdout.print(table)


def print_table(
    title: str, columns: list[str], rows: Iterable[Sequence[str | Text]], wrap: Iterable[str] | None = None
) -> None:
    """A Rich table; with ``wrap``, only those columns wrap (and share the spare width), the others keep
    their content on one line (cut with an ellipsis when the terminal is too narrow)."""
    table = Table(title=escape(title), title_justify="left")
    wrapping = set(wrap) if wrap is not None else None
    for col in columns:
        if wrapping is None or col in wrapping:
            table.add_column(col)
        else:
            table.add_column(col, no_wrap=True, min_width=len(col))
    for row in rows:
        table.add_row(*(cell(v) for v in row))
    stdout.print(table)


def fail(message: str) -> None:
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
