"""``spy-agent``: run the feed, detector and executor roles (any subset) and serve them over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.feeds.replay import ReplayError
from agent.logs import configure_logging
from agent.server import AgentStartError
from agent.session import CalendarError
from agent.settings import ConfigError, load_settings

log = logging.getLogger(__name__)


def agent_command(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file")] = None,
    roles: Annotated[
        str | None, typer.Option(help="roles to run: feed,detector,executor (any subset)")
    ] = None,
    feed: Annotated[
        str | None, typer.Option(help="market data source: sim, replay, upstream or ib (IB Gateway/TWS)")
    ] = None,
    broker: Annotated[str | None, typer.Option(help="where the executor's orders go: paper or ib")] = None,
    ib_host: Annotated[str | None, typer.Option(help="IB Gateway/TWS host (default 127.0.0.1)")] = None,
    ib_port: Annotated[
        int | None, typer.Option(help="IB API port: 4002 Gateway paper (default), 4001 Gateway live")
    ] = None,
    ib_client_id: Annotated[int | None, typer.Option(help="IB API client id")] = None,
    upstream: Annotated[
        str | None, typer.Option(help="host:port of the agent whose stream feeds this one")
    ] = None,
    host: Annotated[str | None, typer.Option(help="address to listen on (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port (default 50051; 0 picks a free one)")] = None,
    agent_id: Annotated[str | None, typer.Option("--agent-id", help="name of this agent")] = None,
    speed: Annotated[float | None, typer.Option(help="market seconds per wall second (sim/replay)")] = None,
    start: Annotated[str | None, typer.Option(help="start the simulated clock at HH:MM New York")] = None,
    date: Annotated[dt.datetime | None, typer.Option(formats=["%Y-%m-%d"], help="session date")] = None,
    seed: Annotated[int | None, typer.Option(help="simulation seed")] = None,
    spot: Annotated[float | None, typer.Option(help="SPY level at the start of the simulation")] = None,
    anomaly_rate: Annotated[float | None, typer.Option(help="injected anomalies per market minute")] = None,
    labels: Annotated[
        Path | None, typer.Option(help="write ground-truth anomaly labels (JSONL) here")
    ] = None,
    replay: Annotated[Path | None, typer.Option(help="recording or IB chain CSV to play back")] = None,
    pace: Annotated[str | None, typer.Option(help="replay pace: recorded or fast")] = None,
    log_format: Annotated[str | None, typer.Option(help="text or json")] = None,
    port_file: Annotated[Path | None, typer.Option(help="write the bound port here once serving")] = None,
) -> None:
    """Run an agent until interrupted."""
    from agent.runtime import AgentRuntime

    overrides: dict[str, Any] = {
        "roles": roles,
        "feed": feed if feed is not None else ("replay" if replay else ("upstream" if upstream else None)),
        "upstream": upstream,
        "agent_id": agent_id,
        "log_format": log_format,
        "server": {"host": host, "port": port},
        "clock": {"speed": speed, "start": start, "date": date.date() if date else None},
        "sim": {"seed": seed, "spot": spot, "anomaly_rate_per_min": anomaly_rate, "labels_path": labels},
        "replay": {"path": replay, "pace": pace},
        "executor": {"broker": broker},
        "ib": {"host": ib_host, "port": ib_port, "client_id": ib_client_id},
    }
    try:
        settings = load_settings(config, **overrides)
        configure_logging(settings.log_format, settings.log_level)
        runtime = AgentRuntime(settings)
    except (ConfigError, CalendarError, ReplayError) as exc:
        typer.echo(f"spy-agent: {exc}", err=True)
        raise typer.Exit(2) from None

    async def main() -> None:
        await runtime.start()
        if port_file is not None:
            port_file.write_text(str(runtime.port))
        typer.echo(f"agent {settings.agent_id} serving on {settings.server.host}:{runtime.port}", err=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runtime.stop()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())
    except AgentStartError as exc:
        typer.echo(f"spy-agent: {exc}", err=True)
        raise typer.Exit(3) from None


def main() -> None:
    typer.run(agent_command)
