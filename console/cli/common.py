"""What every spyctl command shares: the agent and config options, the clients, and one async runner
that turns client errors into exit codes.

Agents come from ``console.config``: ``--agent`` (repeatable: ``host:port``, ``name=host:port`` or the
name of an agent in the config file) and ``--config FILE``. Read commands address every selected agent
and show each; commands that change something go to exactly one agent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, NoReturn, TypeVar

import typer
from rich.markup import escape

from console.cli import output
from console.client import (
    AgentClient,
    AgentRequestError,
    AgentUnreachable,
    ClientError,
    ConnectionEvent,
    ConnectionState,
    GapError,
    ResumingStream,
)
from console.config import AgentTarget, ConfigError, ConsoleConfig, load_console_config, select_agents
from proto.spyops.v1 import spyops_pb2 as pb

T = TypeVar("T")


@dataclass(frozen=True)
class GlobalOptions:
    """``spyctl --agent A --config F COMMAND``: the same options given before the command; the
    command's own ``--agent``/``--config`` win over them."""

    agents: tuple[str, ...] = ()
    config: Path | None = None


_global = GlobalOptions()


def set_global_options(options: GlobalOptions) -> None:
    """Called by the app callback, which runs before every command (so never stale)."""
    global _global
    _global = options


def global_options() -> GlobalOptions:
    return _global


def complete_agents(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of --agent: the names in the config file (--config if already typed)."""
    config = ctx.params.get("config") or ctx.find_root().params.get("config")
    try:
        cfg = load_console_config((), config if isinstance(config, Path) else None)
    except ConfigError:
        return []
    return [t.name for t in cfg.agents if t.name.startswith(incomplete)]


AgentsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--agent",
        "-a",
        envvar="SPYCTL_AGENT",
        metavar="AGENT",
        autocompletion=complete_agents,
        help="agent: host:port, name=host:port or a name from the config file (repeatable; "
        "default: every agent in the config file, else 127.0.0.1:50051)",
        show_default=False,
    ),
]
AgentOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--agent",
        "-a",
        envvar="SPYCTL_AGENT",
        metavar="AGENT",
        autocompletion=complete_agents,
        help="the agent: host:port, name=host:port or a name from the config file "
        "(required when the config file lists several)",
        show_default=False,
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        help="console config file (TOML; default: $SPY_CONSOLE_CONFIG, else ~/.config/spyops/console.toml)",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON (one object per line)")]


def exit_with(code: int, message: str) -> NoReturn:
    output.fail(message)
    raise typer.Exit(code)


def exit_code_of(exc: BaseException) -> int:
    if isinstance(exc, AgentUnreachable):
        return output.UNREACHABLE
    if isinstance(exc, AgentRequestError):
        return output.REFUSED
    if isinstance(exc, GapError):
        return output.STREAM_ENDED
    return output.USAGE


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one async command, translating client errors into exit codes."""
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(output.INTERRUPTED) from None
    except ClientError as exc:
        exit_with(exit_code_of(exc), str(exc))


def load_config(config: Path | None, agents: Sequence[str] = ()) -> ConsoleConfig:
    try:
        return load_console_config(agents, config)
    except ConfigError as exc:
        exit_with(output.USAGE, str(exc))


def targets(
    agents: Sequence[str] | None, config: Path | None
) -> tuple[ConsoleConfig, tuple[AgentTarget, ...]]:
    """The configuration and the agents a read command addresses (exit 2 on a bad config)."""
    root = global_options()
    values = list(agents or root.agents)
    config = config if config is not None else root.config
    cfg = load_config(config, values)
    try:
        return cfg, select_agents(cfg, values)
    except ConfigError as exc:
        exit_with(output.USAGE, str(exc))


def one_target(
    agents: Sequence[str] | None, config: Path | None, what: str
) -> tuple[ConsoleConfig, AgentTarget]:
    """The single agent a command goes to; several selected is a usage error naming them."""
    cfg, chosen = targets(agents, config)
    if len(chosen) > 1:
        names = ", ".join(t.name for t in chosen)
        exit_with(
            output.USAGE,
            f"{what} goes to exactly one agent, and {len(chosen)} are selected ({names}): "
            f"choose one with --agent NAME",
        )
    return cfg, chosen[0]


def client_for(target: AgentTarget | str) -> AgentClient:
    address = target.address if isinstance(target, AgentTarget) else target
    try:
        return AgentClient(address)
    except ClientError as exc:
        exit_with(output.USAGE, str(exc))


@dataclass(frozen=True)
class PerAgent(Generic[T]):
    """One agent's answer to a read command: a value, or the error that prevented it."""

    target: AgentTarget
    value: T | None
    error: ClientError | None


def per_agent(
    chosen: Sequence[AgentTarget], fetch: Callable[[AgentClient], Awaitable[T]]
) -> list[PerAgent[T]]:
    """Ask every agent concurrently; an agent's failure does not hide the others' answers."""

    async def one(target: AgentTarget) -> PerAgent[T]:
        try:
            async with AgentClient(target.address) as c:
                return PerAgent(target, await fetch(c), None)
        except ClientError as exc:
            return PerAgent(target, None, exc)

    async def go() -> list[PerAgent[T]]:
        return list(await asyncio.gather(*(one(t) for t in chosen)))

    try:
        return asyncio.run(go())
    except KeyboardInterrupt:
        raise typer.Exit(output.INTERRUPTED) from None


def finish(results: Sequence[PerAgent[Any]]) -> None:
    """Report the agents that failed (stderr) and exit with the first failure's code, if any."""
    failed = [r for r in results if r.error is not None]
    for r in failed:
        output.fail(f"{r.target.name}: {r.error}")
    if failed and failed[0].error is not None:
        raise typer.Exit(exit_code_of(failed[0].error))


def title(target: AgentTarget, several: bool, text: str) -> str:
    return f"{target.name}: {text}" if several else text


def report_state(e: ConnectionEvent) -> None:
    if e.state in (ConnectionState.RECONNECTING, ConnectionState.FAILED):
        output.stderr.print(
            f"[yellow]{escape(e.target)}: {e.state.value}: {escape(e.detail)}[/]",
            highlight=False,
            soft_wrap=True,
        )


async def check_reachable(clients: Sequence[tuple[AgentTarget, AgentClient]]) -> None:
    """Fail fast (AgentUnreachable, exit 3) before following streams that would retry forever."""
    await asyncio.gather(*(c.info() for _, c in clients))


async def merged_streams(
    clients: Sequence[tuple[AgentTarget, AgentClient]],
    topics: Sequence[str] = (),
    from_seq: int = 0,
    client_name: str = "spyctl",
) -> AsyncGenerator[tuple[AgentTarget, pb.Envelope], None]:
    """The envelopes of several agents' resuming streams, interleaved as they arrive."""
    if len(clients) == 1:
        target, client = clients[0]
        s = ResumingStream(
            client, topics=topics, from_seq=from_seq, on_state=report_state, client_name=client_name
        )
        async with contextlib.aclosing(s.__aiter__()) as envelopes:
            async for env in envelopes:
                yield target, env
        return
    queue: asyncio.Queue[tuple[AgentTarget, pb.Envelope] | BaseException] = asyncio.Queue(maxsize=1024)

    async def pump(target: AgentTarget, client: AgentClient) -> None:
        s = ResumingStream(client, topics=topics, on_state=report_state, client_name=client_name)
        try:
            async with contextlib.aclosing(s.__aiter__()) as envelopes:
                async for env in envelopes:
                    await queue.put((target, env))
        except ClientError as exc:
            await queue.put(exc)

    tasks = [asyncio.create_task(pump(t, c)) for t, c in clients]
    try:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
