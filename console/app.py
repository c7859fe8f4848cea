"""``spy-console``: the Textual operator console.

spy-console --demo                 embedded agent on a simulated market, then the console
spy-console --agent host:port      connect to a running agent
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from textual import work
from textual.app import App
from textual.message import Message

from console.client import AgentClient, ClientError, ConnectionEvent, ConnectionState, ResumingStream
from console.model import AgentView
from console.screens.chain import ChainScreen

if TYPE_CHECKING:
    from agent.runtime import AgentThread

log = logging.getLogger(__name__)


class ConnectionChanged(Message):
    def __init__(self, event: ConnectionEvent) -> None:
        super().__init__()
        self.event = event


class ConsoleApp(App[None]):
    CSS_PATH = "console.tcss"
    TITLE = "SPY 0DTE console"

    def __init__(self, target: str, demo: AgentThread | None = None) -> None:
        super().__init__()
        self.target = target
        self.demo = demo
        self.view = AgentView(target=target)
        self.chain_screen = ChainScreen(self.view)
        self.stream: ResumingStream | None = None

    def on_mount(self) -> None:
        self.push_screen(self.chain_screen)
        self.follow_agent()

    @work(exclusive=True, group="stream")
    async def follow_agent(self) -> None:
        """Follow the agent's stream for as long as the app runs; reconnects are inside."""
        client = AgentClient(self.target)
        self.stream = ResumingStream(
            client,
            on_state=self._post_connection,
            client_name="spy-console",
        )
        try:
            async for env in self.stream:
                self.view.apply(env)
        except ClientError as exc:
            self.post_message(
                ConnectionChanged(ConnectionEvent(self.target, ConnectionState.FAILED, str(exc)))
            )
        finally:
            await client.close()

    def _post_connection(self, event: ConnectionEvent) -> None:
        self.post_message(ConnectionChanged(event))

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        self.chain_screen.set_connection(message.event.state, message.event.detail)
        if message.event.state is ConnectionState.RECONNECTING and message.event.attempt <= 1:
            self.notify(f"connection to {self.target} lost: reconnecting", severity="warning")

    def on_unmount(self) -> None:
        if self.demo is not None:
            self.demo.stop()


def start_demo_agent(
    speed: float | None, start: str | None, seed: int | None, anomaly_rate: float | None
) -> AgentThread:
    """The embedded agent of ``--demo``: simulated market, detector and an executor on the paper
    broker (journal and book in a fresh temporary folder), on a free 127.0.0.1 port, in this process."""
    import tempfile
    from pathlib import Path

    from agent.runtime import AgentRuntime
    from agent.settings import load_settings

    state_dir = Path(tempfile.mkdtemp(prefix="spy-demo-"))
    settings = load_settings(
        None,
        agent_id="demo",
        roles=("feed", "detector", "executor"),
        executor={"journal": state_dir / "journal.sqlite", "paper_book": state_dir / "paper-broker.sqlite"},
        feed="sim",
        server={"host": "127.0.0.1", "port": 0},
        clock={"speed": speed, "start": start},
        sim={"seed": seed, "anomaly_rate_per_min": anomaly_rate if anomaly_rate is not None else 0.5},
    )
    return AgentRuntime(settings).start_in_thread()


def console_command(
    demo: Annotated[bool, typer.Option("--demo", help="run an embedded agent on a simulated market")] = False,
    agent: Annotated[str | None, typer.Option("--agent", "-a", help="host:port of a running agent")] = None,
    speed: Annotated[float | None, typer.Option(help="demo: market seconds per wall second")] = None,
    start: Annotated[str | None, typer.Option(help="demo: start the market clock at HH:MM New York")] = None,
    seed: Annotated[int | None, typer.Option(help="demo: simulation seed")] = None,
    anomaly_rate: Annotated[float | None, typer.Option(help="demo: injected anomalies per minute")] = None,
    log_file: Annotated[
        Path | None, typer.Option(help="write logs here (the console never logs to the screen)")
    ] = None,
) -> None:
    """Open the operator console."""
    if log_file is not None:
        logging.basicConfig(filename=log_file, level=logging.INFO)
    else:
        logging.basicConfig(handlers=[logging.NullHandler()])
    if demo == (agent is not None):
        typer.echo("spy-console: give either --demo or --agent host:port", err=True)
        raise typer.Exit(2)
    handle = None
    if demo:
        from agent.server import AgentStartError
        from agent.session import CalendarError
        from agent.settings import ConfigError

        try:
            handle = start_demo_agent(speed, start, seed, anomaly_rate)
        except (ConfigError, CalendarError, AgentStartError, TimeoutError) as exc:
            typer.echo(f"spy-console: cannot start the demo agent: {exc}", err=True)
            raise typer.Exit(3) from None
        target = handle.address
    else:
        assert agent is not None
        target = agent
    try:
        from console.client import parse_target

        parse_target(target)
    except ClientError as exc:
        typer.echo(f"spy-console: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        ConsoleApp(target, demo=handle).run()
    finally:
        if handle is not None:
            handle.stop()


def main() -> None:
    typer.run(console_command)
