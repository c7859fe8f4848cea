"""The agents screen (every agent: roles, leader, version, GetInfo latency, last seq, lag), the notices
and audit screen (data-quality notices, rejected orders, operator commands with who sent them, and the
console's own action results) and the help screen (every key binding)."""

from __future__ import annotations

import math
import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static

from console.format import clip, ny_time
from console.model import AgentView, ConsoleModel, LogEntry
from console.screens.base import STATE_STYLE, ConsoleScreen, Table

AGENT_COLUMNS = (
    "Name",
    "Address",
    "Agent",
    "State",
    "Roles",
    "Leader",
    "Version",
    "Feed",
    "Latency ms",
    "Last seq",
    "Behind",
    "Lag s",
    "Health",
)
LOG_COLUMNS = ("Time NY", "Agent", "Kind", "Operator", "What")
LEVEL_STYLE = {"error": "bold red", "warn": "yellow", "info": ""}
LOG_SHOWN = 500


def leader_text(v: AgentView) -> Text:
    if not v.is_executor:
        return Text("-", style="dim")
    if v.risk is None:
        return Text("?", style="yellow")
    return Text("leader", style="bold green") if v.risk.leader else Text("standby", style="yellow")


def health_text(v: AgentView) -> Text:
    if v.health is None:
        return Text("-", style="dim")
    bad = [c for c in v.health.components if c.status != "ok"]
    if not bad:
        return Text(f"ok ({len(v.health.components)})", style="green")
    return Text(", ".join(f"{c.name} {c.status}" for c in bad), style="bold red")


class AgentsScreen(ConsoleScreen):
    TITLE = "Agents"

    def __init__(self, model: ConsoleModel) -> None:
        super().__init__(model)
        self._last = 0.0

    def body(self) -> ComposeResult:
        with Vertical(id="main"):
            yield Static("", id="agents-caption", classes="caption")
            yield Table(*AGENT_COLUMNS, id="agent-list")
            yield Static("", id="agent-detail", classes="detail")

    def stale(self) -> bool:
        return self.model.any_stale()

    def draw(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        wall = time.time()
        lead = self.model.leader()
        rows = []
        for v in self.model.views:
            info = v.info
            lag = v.lag_s(wall)
            rows.append(
                (
                    v.target,
                    (
                        v.name,
                        v.target,
                        v.agent_id or "?",
                        Text(v.state.value.upper(), style=STATE_STYLE[v.state]),
                        ",".join(v.roles) or "?",
                        leader_text(v),
                        info.version if info else "?",
                        info.feed if info else "?",
                        Text(
                            f"{v.info_latency_ms:.1f}" if math.isfinite(v.info_latency_ms) else "-",
                            justify="right",
                        ),
                        Text(str(v.last_seq), justify="right"),
                        Text(str(v.seq_behind()), justify="right"),
                        Text(f"{lag:.1f}" if math.isfinite(lag) else "-", justify="right"),
                        health_text(v),
                    ),
                )
            )
        self.query_one("#agent-list", Table).sync(rows)
        live = sum(1 for v in self.model.views if v.live)
        self.query_one("#agents-caption", Static).update(
            Text.assemble(
                f" {len(self.model.views)} agent(s), {live} live.  Commands go to ",
                (lead.name if lead else "no executor (none leads)", "bold" if lead else "bold red"),
                (
                    "   latency: GetInfo round trip; lag: seconds since the agent published what we show",
                    "dim",
                ),
            )
        )
        detail = Text()
        for v in self.model.views:
            detail.append(f" {v.name}: ", "bold")
            detail.append(v.state_detail or v.state.value)
            if v.info_error:
                detail.append(f"  GetInfo: {v.info_error}", "red")
            if v.info is not None:
                detail.append(
                    f"  session {v.info.session_date}, clock x{v.info.clock_speed:g},"
                    f" {v.info.clients} client(s), incarnation {v.info.incarnation[:8]}"
                )
                if v.info.upstream:
                    detail.append(f", upstream {v.info.upstream}")
            if v.health is not None:
                detail.append(
                    f"  feed lag {v.health.feed_lag_ms:.0f} ms, detector lag {v.health.detector_lag_ms:.0f} ms"
                )
            detail.append("\n")
        self.query_one("#agent-detail", Static).update(detail)


def log_row(e: LogEntry, i: int) -> tuple[str, tuple[object, ...]]:
    style = LEVEL_STYLE.get(e.level, "")
    return (
        f"{i}",
        (
            ny_time(e.ts_ns),
            e.agent,
            Text(e.kind, style=style),
            e.operator,
            Text(clip(e.text, 160), style=style),
        ),
    )


class LogScreen(ConsoleScreen):
    """Notices and audit: newest first."""

    TITLE = "Notices & audit"
    BINDINGS = [Binding("f", "filter", "Filter: all/notices/audit")]
    FILTERS = ("all", "notices", "audit")

    def __init__(self, model: ConsoleModel) -> None:
        super().__init__(model)
        self._rev = (-1, "")
        self.filter = "all"

    def body(self) -> ComposeResult:
        with Vertical(id="main"):
            yield Static("", id="log-caption", classes="caption")
            yield Table(*LOG_COLUMNS, id="log-list")

    def stale(self) -> bool:
        return self.model.any_stale()

    def action_filter(self) -> None:
        self.filter = self.FILTERS[(self.FILTERS.index(self.filter) + 1) % len(self.FILTERS)]
        self.redraw(force=True)

    def entries(self) -> list[LogEntry]:
        entries = self.model.log_entries()
        if self.filter == "notices":
            entries = [e for e in entries if e.kind == "notice"]
        elif self.filter == "audit":
            entries = [e for e in entries if e.kind != "notice"]
        return entries

    def draw(self, force: bool) -> None:
        rev = (self.model.log_rev(), self.filter)
        if rev == self._rev and not force:
            return
        self._rev = rev
        entries = self.entries()
        shown = entries[-LOG_SHOWN:][::-1]
        n = len(entries)
        self.query_one("#log-list", Table).sync([log_row(e, n - i) for i, e in enumerate(shown)])
        heartbeats = sum(v.heartbeats for v in self.model.views)
        self.query_one("#log-caption", Static).update(
            Text.assemble(
                f" showing {self.filter} ({len(entries)} entries, newest first)",
                f"   heartbeats recorded: {heartbeats}",
                ("   f: cycle the filter", "dim"),
            )
        )


class HelpScreen(ConsoleScreen):
    TITLE = "Help"

    def body(self) -> ComposeResult:
        with VerticalScroll(id="main"):
            yield Static("", id="help-text")

    def stale(self) -> bool:
        return False

    def draw(self, force: bool) -> None:
        if force:
            self.query_one("#help-text", Static).update(help_text(self.app))


def help_text(app: object) -> Text:
    """Every key binding of the app and of each screen, from the bindings themselves."""
    from textual.app import App

    assert isinstance(app, App)
    text = Text(" ctrl+p opens the command palette: every screen and every action by name\n", "bold")
    text.append(" Tables: up/down/left/right, pgup/pgdn, home/end move the cursor; Enter selects\n\n")
    bindings = [b for b in app.BINDINGS if isinstance(b, Binding)]
    screens = [b for b in bindings if b.action.startswith("show(")]
    text.append(" Screens\n", "bold underline")
    for b in screens:
        text.append(f"  {b.key}", "bold cyan")
        text.append(f" {b.description}")
    text.append("\n\n Everywhere\n", "bold underline")
    for b in bindings:
        if b in screens:
            continue
        text.append(f"  {b.key:<16}", "bold cyan")
        text.append(f"{b.description}\n")
    for name, screen in getattr(app, "console_screens", {}).items():
        own = [b for b in type(screen).BINDINGS if isinstance(b, Binding)]
        if own:
            text.append(f"\n {screen.TITLE or name}\n", "bold underline")
            for b in own:
                text.append(f"  {b.key:<16}", "bold cyan")
                text.append(f"{b.description}\n")
    return text
