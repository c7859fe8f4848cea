"""One way to print results: Rich for people, JSON for scripts; and the CLI's exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

# Exit codes (part of the interface; documented in the README)
OK = 0
USAGE = 2  # bad arguments or configuration
UNREACHABLE = 3  # the agent cannot be reached
REFUSED = 4  # the agent refused the request
STREAM_ENDED = 5  # the stream ended or broke and could not be resumed

DEFAULT_AGENT = "127.0.0.1:50051"

stdout = Console()
stderr = Console(stderr=True)


def message_dict(msg: Message) -> dict[str, Any]:
    return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=False)


def print_json_line(data: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, separators=(",", ":"), default=str) + "\n")


def print_kv(title: str, rows: Iterable[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    stdout.print(table)


def print_table(title: str, columns: list[str], rows: Iterable[list[str]]) -> None:
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    stdout.print(table)


def fail(message: str) -> None:
    stderr.print(f"[bold red]error:[/] {message}", highlight=False)
