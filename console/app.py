"""``spy-console``: the Textual operator console.

spy-console --demo                          embedded agent on a simulated market, then the console
spy-console --agent host:port [--agent ..]  connect to running agents (or --config FILE)
spy-console --replay FILE [--speed X]       play a recording or IB chain CSV (see console/replay.py)

The console follows every agent's stream at once (one ``ResumingStream`` each), folds them into one
``ConsoleModel`` and shows it on ten screens (keys 1-9, 0/F1 for help, or the command palette). Commands
go to the executor that leads (or the only one), through ``console.actions.Operator``; the dangerous
ones open a dialog that names what will happen. While an executor is connected the console sends it a
heartbeat every ``heartbeat_s`` seconds (the executor's dead-man).

Rendering follows what is visible: one timer redraws only the screen on top, at most 12 times a
second, and each screen writes only the cells that changed since its previous frame.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import typer
from textual.app import App
from textual.binding import Binding, BindingType
from textual.command import DiscoveryHit, Hit, Hits, Provider

from console.actions import ActionResult, Operator
from console.actions import OrderTicket as Ticket
from console.client import AgentClient, ClientError, ConnectionEvent, ConnectionState, ResumingStream
from console.config import AgentTarget, ConfigError, ConsoleConfig, default_operator, load_console_config
from console.model import AgentView, ConsoleModel, LogEntry
from console.screens.base import ConsoleScreen
from console.screens.chain import ChainScreen
from console.screens.charts import SmileScreen, UnderlyingScreen
from console.screens.dialogs import (
    ConfirmDialog,
    FlattenDialog,
    HaltDialog,
    LimitsForm,
    OrderTicketDialog,
    ProposalDialog,
)
from console.screens.info import AgentsScreen, HelpScreen, LogScreen
from console.screens.signals import SignalsScreen
from console.screens.trading import OrdersScreen, PositionsScreen, RiskScreen

if TYPE_CHECKING:
    from agent.runtime import AgentThread

log = logging.getLogger(__name__)

REDRAW_S = (
    1 / 12
)  # at most 12 frames a second, whatever the stream rate (a 0.1 s timer drops late ticks: < 10 fps)
GC_FREEZE_AFTER_S = (
    3.0  # start-up objects leave the collector: shorter gen-2 pauses (screen switches < 100 ms)
)
INFO_EVERY_S = 3.0  # GetInfo per agent: roles, version, latency, how far behind we are
# (name, key, title, screen class): the order of the keys 1..9 and 0
SCREENS: tuple[tuple[str, str, str, type[ConsoleScreen]], ...] = (
    ("chain", "1", "Chain", ChainScreen),
    ("smile", "2", "Smile", SmileScreen),
    ("underlying", "3", "Underlying", UnderlyingScreen),
    ("signals", "4", "Signals", SignalsScreen),
    ("orders", "5", "Orders & fills", OrdersScreen),
    ("positions", "6", "Positions & P&L", PositionsScreen),
    ("risk", "7", "Risk", RiskScreen),
    ("agents", "8", "Agents", AgentsScreen),
    ("log", "9", "Notices & audit", LogScreen),
    ("help", "0", "Help", HelpScreen),
)


class ConsoleCommands(Provider):
    """The command palette (ctrl+p): every screen and every operator action by name."""

    def _commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        app = self.app
        assert isinstance(app, ConsoleApp)
        return app.palette_commands()

    async def discover(self) -> Hits:
        for title, help_text, callback in self._commands():
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)


def _one_agent(target: str) -> ConsoleConfig:
    return ConsoleConfig(agents=(AgentTarget(name=target, address=target),), operator=default_operator())


class ConsoleApp(App[None]):
    CSS_PATH = "console.tcss"
    TITLE = "SPY 0DTE console"
    COMMANDS: ClassVar[set[Any]] = App.COMMANDS | {ConsoleCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        *(Binding(key, f"show('{name}')", title, show=name == "help") for name, key, title, _cls in SCREENS),
        Binding("f1,question_mark", "show('help')", "Help", show=False),
        Binding("a", "arm", "Arm"),
        Binding("d", "disarm", "Disarm"),
        Binding("H", "halt", "Halt"),
        Binding("F", "flatten", "Flatten"),
        Binding("l", "limits", "Limits"),
        Binding("o", "order_ticket", "Order ticket"),
        Binding("r", "retry_last", "Retry unanswered command", show=False),
    ]

    def __init__(
        self,
        config: ConsoleConfig | str,
        *,
        connect: bool = True,
        model: ConsoleModel | None = None,
    ) -> None:
        super().__init__()
        self.config = _one_agent(config) if isinstance(config, str) else config
        self.connect = connect
        self.model = model or ConsoleModel(
            [AgentView(target=t.address, name=t.name) for t in self.config.agents]
        )
        self.console_screens: dict[str, ConsoleScreen] = {
            name: cls(self.model) for name, _key, _title, cls in SCREENS
        }
        chain = self.console_screens["chain"]
        assert isinstance(chain, ChainScreen)
        self.chain_screen: ChainScreen = chain
        self.clients: dict[str, AgentClient] = {}
        self.operators: dict[str, Operator] = {}
        self.streams: dict[str, ResumingStream] = {}
        self.results: list[ActionResult] = []  # every action's result, in order (the audit panel shows them)
        self.heartbeat_results: dict[str, ActionResult] = {}
        # the last command whose answer never came (it may or may not have run): r resends it, same key
        self.unanswered: tuple[AgentView, ActionResult] | None = None
        self.current = "chain"

    # ------------------------------------------------------------------ compatibility

    @property
    def view(self) -> AgentView:
        """The agent whose market data is shown."""
        return self.model.market()

    # ------------------------------------------------------------------ lifecycle

    def on_mount(self) -> None:
        for name, screen in self.console_screens.items():
            self.install_screen(screen, name)
        self.push_screen("chain")
        self.set_interval(REDRAW_S, self.redraw)
        self.set_timer(GC_FREEZE_AFTER_S, self._freeze_startup_objects)
        if self.connect:
            for view in self.model.views:
                client = AgentClient(view.target)
                self.clients[view.target] = client
                self.operators[view.target] = Operator(client, self.config.operator)
                self.run_worker(self._follow(view, client), group=f"stream {view.target}")
                self.run_worker(self._poll_info(view, client), group=f"info {view.target}")
            self.set_interval(self.config.heartbeat_s, self.send_heartbeats)

    def _freeze_startup_objects(self) -> None:
        """Move what start-up allocated (Textual's widgets, the first snapshot) out of the cyclic GC's
        generations: a full collection then walks far fewer objects. Measured by tests/bench/bench_console.py:
        the longest gen-2 pause went from ~220 ms to ~70 ms, screen-switch p99 from ~200 ms to ~90 ms."""
        gc.collect()
        gc.freeze()

    async def on_unmount(self) -> None:
        for client in self.clients.values():
            try:
                await client.close()
            except Exception:  # closing on the way out: nothing to report to
                log.debug("closing the client failed", exc_info=True)

    def redraw(self) -> None:
        """The frame timer: redraw the console screen on top (under a dialog, the one below it)."""
        for screen in reversed(self.screen_stack):
            if isinstance(screen, ConsoleScreen):
                screen.redraw()
                return

    # ------------------------------------------------------------------ streams

    async def _follow(self, view: AgentView, client: AgentClient) -> None:
        """Follow one agent's stream for as long as the app runs; reconnects are inside."""
        stream = ResumingStream(
            client, on_state=partial(self._on_connection, view), client_name="spy-console"
        )
        self.streams[view.target] = stream
        try:
            async for env in stream:
                view.apply(env)
        except ClientError as exc:
            self._on_connection(view, ConnectionEvent(view.target, ConnectionState.FAILED, str(exc)))

    def _on_connection(self, view: AgentView, event: ConnectionEvent) -> None:
        was = view.state
        view.state, view.state_detail = event.state, event.detail
        if event.state is ConnectionState.RECONNECTING and was is ConnectionState.LIVE:
            self.notify(f"connection to {view.name} lost: reconnecting ({event.detail})", severity="warning")
            self._console_log(view, "warn", f"connection lost: {event.detail}")
        elif event.state is ConnectionState.LIVE and was is ConnectionState.RECONNECTING:
            self.notify(f"{view.name} is back: {event.detail}")
            self._console_log(view, "info", f"reconnected: {event.detail}")
        elif event.state is ConnectionState.FAILED:
            self.notify(f"{view.name}: {event.detail}", severity="error", timeout=10)
            self._console_log(view, "error", f"stream failed: {event.detail}")
        self.redraw()

    async def _poll_info(self, view: AgentView, client: AgentClient) -> None:
        """GetInfo every few seconds: roles, version, session close, the round trip and how far behind."""
        while True:
            t0 = time.perf_counter()
            try:
                info = await client.info()
            except ClientError as exc:
                view.info_error = str(exc)
            else:
                view.info, view.info_latency_ms = info, (time.perf_counter() - t0) * 1000
                view.info_error = ""
                view.bump("info")
            await asyncio.sleep(INFO_EVERY_S)

    def _console_log(self, view: AgentView | None, level: str, text: str) -> None:
        ts = (view.last_ts_ns if view is not None else 0) or self.model.market().last_ts_ns or time.time_ns()
        self.model.add_console_entry(
            LogEntry(ts, view.name if view else "console", "console", level, text, self.config.operator)
        )

    # ------------------------------------------------------------------ screens

    def action_show(self, name: str) -> None:
        if name not in self.console_screens:
            return
        if name == self.current and self.screen is self.console_screens[name]:
            return
        # a dialog open on top stays where it is: screens switch under it only when it is closed
        if not isinstance(self.screen, ConsoleScreen):
            return
        self.current = name
        self.switch_screen(name)

    def palette_commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        cmds: list[tuple[str, str, Callable[[], Any]]] = [
            (f"Show {title}", f"screen {key}", partial(self.action_show, name))
            for name, key, title, _cls in SCREENS
        ]
        cmds += [
            ("Arm the executor", "a: let the executor trade", self.action_arm),
            ("Disarm the executor", "d: no new orders from the strategy", self.action_disarm),
            ("Halt (kill switch)", "H: cancel every working order, block new ones", self.action_halt),
            ("Flatten every position", "F: close positions with marketable limits", self.action_flatten),
            ("Set risk limits", "l: the limits form", self.action_limits),
            ("Order ticket", "o: a manual limit order, previewed first", self.action_order_ticket),
            (
                "Trading state ACTIVE",
                "resume normal trading",
                partial(self.action_trading_state, "ACTIVE"),
            ),
            (
                "Trading state REDUCING",
                "only orders that reduce positions",
                partial(self.action_trading_state, "REDUCING"),
            ),
            ("Cancel the selected order", "x on the orders screen", self._cancel_selected),
            ("Confirm or reject a proposal", "the selected or the first pending one", self._decide_first),
            ("Send a heartbeat now", "the executor's dead-man", self.send_heartbeats),
            (
                "Resend the unanswered command",
                "r: same idempotency key, runs at most once",
                self.action_retry_last,
            ),
            ("Center the chain on the money", "c on the chain screen", self._center_chain),
        ]
        return cmds

    def _center_chain(self) -> None:
        self.action_show("chain")
        chain = self.console_screens["chain"]
        assert isinstance(chain, ChainScreen)
        chain.action_center()

    def _cancel_selected(self) -> None:
        orders = self.console_screens["orders"]
        assert isinstance(orders, OrdersScreen)
        if self.current != "orders":
            self.action_show("orders")
            self.notify("select the order to cancel, then x")
            return
        self.action_cancel_order(orders.selected_order() or "")

    def _decide_first(self) -> None:
        signals = self.console_screens["signals"]
        assert isinstance(signals, SignalsScreen)
        chosen = signals.selected_proposal() if self.current == "signals" else None
        if chosen is None or chosen.status != "pending":
            trading = self.model.trading()
            pending = trading.pending_proposals() if trading else []
            chosen = pending[0] if pending else None
        self.action_decide_proposal(chosen.id if chosen else "")

    # ------------------------------------------------------------------ actions

    def leader(self) -> tuple[AgentView, Operator] | None:
        """The executor commands go to, and its Operator; says why not (notify) when there is none."""
        lead = self.model.leader()
        if lead is None:
            execs = self.model.executors()
            why = (
                "no executor connected"
                if not execs
                else f"none of the {len(execs)} executors says it leads: retry when one does"
            )
            self.notify(f"no command sent: {why}", severity="error")
            self._console_log(None, "error", f"no command sent: {why}")
            return None
        op = self.operators.get(lead.target)
        if op is None:
            self.notify(f"no command sent: not connected to {lead.name}", severity="error")
            return None
        return lead, op

    def report(self, view: AgentView, result: ActionResult) -> None:
        """Show an action's result (notify) and add it to the audit panel. A command left unanswered
        (timeout, dropped connection) may have run: the operator is offered to resend it with the same
        idempotency key (r), which runs it at most once, instead of sending it again as a new one."""
        self.results.append(result)
        detail = result.detail or result.title
        if result.retryable and result.command is not None:
            self.unanswered = (view, result)
            detail += (
                "\nIt may or may not have run: press r to resend it with the same key (runs at most once)."
            )
        elif self.unanswered is not None and self.unanswered[1].key == result.key:
            self.unanswered = None  # answered now
        self.notify(
            detail,
            title=result.title,
            severity="information" if result.ok else "error",
            timeout=6 if result.ok else 12,
        )
        self._console_log(view, "info" if result.ok else "error", result.text())

    def action_retry_last(self) -> None:
        if self.unanswered is None:
            self.notify("no unanswered command to resend")
            return
        view, previous = self.unanswered
        op = self.operators.get(view.target)
        if op is None:
            self.notify(f"cannot resend: not connected to {view.name}", severity="error")
            return
        self._run(view, partial(op.retry, previous))

    def _run(self, view: AgentView, call: Callable[[], Any]) -> None:
        """Run one Operator call in the background and report its result."""

        async def run() -> None:
            result = await call()
            self.report(view, result)

        self.run_worker(run(), group="actions")

    def action_arm(self) -> None:
        if (chosen := self.leader()) is not None:
            view, op = chosen
            self._run(view, op.arm)

    def action_disarm(self) -> None:
        if (chosen := self.leader()) is not None:
            view, op = chosen
            self._run(view, op.disarm)

    def _cancelled(self, what: str) -> None:
        self.notify(f"{what}: cancelled, nothing sent")
        self._console_log(None, "info", f"{what} cancelled by the operator: nothing sent")

    def action_halt(self) -> None:
        if (chosen := self.leader()) is None:
            return
        view, op = chosen

        def done(reason: str | None) -> None:
            if reason:
                self._run(view, partial(op.halt, reason))
            else:
                self._cancelled("halt")

        self.push_screen(HaltDialog(view.orders.values(), agent=view.name), done)

    def action_flatten(self) -> None:
        if (chosen := self.leader()) is None:
            return
        view, op = chosen

        def done(reason: str | None) -> None:
            if reason:
                self._run(view, partial(op.flatten, reason))
            else:
                self._cancelled("flatten")

        self.push_screen(FlattenDialog(view.positions.values(), view.orders.values(), agent=view.name), done)

    def action_trading_state(self, state: str) -> None:
        if (chosen := self.leader()) is None:
            return
        view, op = chosen
        now = view.risk.trading_state if view.risk else "?"

        def done(ok: bool | None) -> None:
            if ok:
                self._run(view, partial(op.set_trading_state, state))
            else:
                self._cancelled(f"trading state {state}")

        self.push_screen(
            ConfirmDialog(
                f"Trading state {state} on {view.name}",
                f"The executor goes from {now} to {state}.",
                f"Set {state}",
                danger=state != "ACTIVE",
            ),
            done,
        )

    def action_limits(self) -> None:
        if (chosen := self.leader()) is None:
            return
        view, op = chosen
        current = {lim.name: f"{lim.value:g}" for lim in view.risk.limits} if view.risk else {}

        def done(changes: dict[str, str] | None) -> None:
            if changes:
                self._run(view, partial(op.set_limits, changes))
            else:
                self._cancelled("limits")

        self.push_screen(LimitsForm(current, agent=view.name), done)

    def action_order_ticket(self, strike: float | None = None, right: int | None = None) -> None:
        if (chosen := self.leader()) is None:
            return
        view, op = chosen
        market = self.model.market()
        try:
            tick = Decimal(str(round(market.tick, 6)))
        except InvalidOperation:
            tick = Decimal("0.01")

        def done(ticket: Ticket | None) -> None:
            if ticket is not None:
                self._run(view, partial(op.submit_order, ticket))
            else:
                self._cancelled("order ticket")

        self.push_screen(
            OrderTicketDialog(market, op.preview_order, strike=strike, right=right, tick=tick), done
        )

    def action_cancel_order(self, client_order_id: str = "") -> None:
        if not client_order_id:
            self.notify("no order selected: pick one on the orders screen (5), then x", severity="warning")
            return
        if (chosen := self.leader()) is None:
            return
        view, op = chosen
        self._run(view, partial(op.cancel_order, client_order_id))

    def action_decide_proposal(self, proposal_id: str = "") -> None:
        if (chosen := self.leader()) is None:
            return
        view, op = chosen
        proposal = view.proposals.get(proposal_id) if proposal_id else None
        if proposal is None:
            self.notify(
                "no proposal selected: pick a pending one on the signals screen (4)", severity="warning"
            )
            return
        if proposal.status != "pending":
            self.notify(f"proposal {proposal.id} is {proposal.status}: nothing to decide", severity="warning")
            return

        def done(confirm: bool | None) -> None:
            if confirm is None:
                self._cancelled(f"proposal {proposal.id}")
            else:
                self._run(view, partial(op.decide, proposal.id, confirm))

        self.push_screen(ProposalDialog(proposal), done)

    def send_heartbeats(self) -> None:
        """The dead-man: one heartbeat to each connected executor; a failure is said once."""
        for view in self.model.executors():
            op = self.operators.get(view.target)
            if op is None or not view.live:
                continue

            async def beat(view: AgentView = view, op: Operator = op) -> None:
                result = await op.heartbeat()
                before = self.heartbeat_results.get(view.target)
                self.heartbeat_results[view.target] = result
                if not result.ok and (before is None or before.ok):
                    self.report(view, result)

            self.run_worker(beat(), group="heartbeat")


def start_demo_agent(
    speed: float | None, start: str | None, seed: int | None, anomaly_rate: float | None
) -> AgentThread:
    """The embedded agent of ``--demo``: simulated market, detector and an executor on the paper
    broker (journal and book in a fresh temporary folder), on a free 127.0.0.1 port, in this process."""
    import tempfile

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
    agent: Annotated[
        list[str] | None,
        typer.Option("--agent", "-a", help="host:port or name=host:port of an agent (repeatable)"),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="console config file (TOML: operator, [[agents]])")
    ] = None,
    replay: Annotated[
        Path | None,
        typer.Option(
            "--replay",
            help="play a recording or IB chain CSV through the console (keys: space, +/-, arrows, g)",
        ),
    ] = None,
    speed: Annotated[
        float | None, typer.Option(help="demo/replay: market seconds per wall second (replay: 0.25..50)")
    ] = None,
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
    agents: Sequence[str] = agent or ()
    if replay is not None:
        if demo or agents or config is not None:
            typer.echo(
                "spy-console: --replay runs its own agent: give no --demo, --agent or --config", err=True
            )
            raise typer.Exit(2)
        from console.replay import run_replay_console

        raise typer.Exit(run_replay_console(replay, 1.0 if speed is None else speed))
    if demo and (agents or config is not None):
        typer.echo("spy-console: give either --demo or --agent/--config", err=True)
        raise typer.Exit(2)
    handle = None
    if demo:
        from agent.server import AgentStartError
        from agent.session import CalendarError
        from agent.settings import ConfigError as AgentConfigError

        try:
            handle = start_demo_agent(speed, start, seed, anomaly_rate)
        except (AgentConfigError, CalendarError, AgentStartError, TimeoutError) as exc:
            typer.echo(f"spy-console: cannot start the demo agent: {exc}", err=True)
            raise typer.Exit(3) from None
        try:
            settings = load_console_config(())
            operator, heartbeat = settings.operator, settings.heartbeat_s
        except ConfigError:
            operator, heartbeat = default_operator(), 5.0
        console_config = ConsoleConfig(
            agents=(AgentTarget(name="demo", address=handle.address),),
            operator=operator,
            heartbeat_s=heartbeat,
        )
    else:
        try:
            console_config = load_console_config(agents, config)
        except ConfigError as exc:
            typer.echo(f"spy-console: {exc}", err=True)
            raise typer.Exit(2) from None
    try:
        ConsoleApp(console_config).run()  # the embedded agent, if any, stops below
    finally:
        if handle is not None:
            handle.stop()


def main() -> None:
    typer.run(console_command)
