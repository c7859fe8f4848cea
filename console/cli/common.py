"""What every spyctl command shares: the agent option, the client, and one async runner that turns
client errors into exit codes."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer

from console.cli import output
from console.client import AgentClient, AgentRequestError, AgentUnreachable, ClientError

T = TypeVar("T")

AgentOpt = Annotated[str, typer.Option("--agent", "-a", envvar="SPYCTL_AGENT", help="agent host:port")]


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one async command, translating client errors into exit codes."""
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except AgentUnreachable as exc:
        output.fail(str(exc))
        raise typer.Exit(output.UNREACHABLE) from None
    except AgentRequestError as exc:
        output.fail(str(exc))
        raise typer.Exit(output.REFUSED) from None
    except ClientError as exc:
        output.fail(str(exc))
        raise typer.Exit(output.USAGE) from None


def client_for(agent: str) -> AgentClient:
    try:
        return AgentClient(agent)
    except ClientError as exc:
        output.fail(str(exc))
        raise typer.Exit(output.USAGE) from None
