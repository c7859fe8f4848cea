"""What every console screen shares: the status line (market, clock, each agent's connection, trading
state) and the redraw contract: the app calls ``redraw`` on the visible screen only, at most 10 times a
second, and the screen draws only what changed since its last frame (revisions in the model)."""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Static

from console.client import ConnectionState
from console.format import expiry_date, ny_time, price
from console.model import AgentView, ConsoleModel

STATE_STYLE = {
    ConnectionState.LIVE: "bold green",
    ConnectionState.CONNECTING: "bold yellow",
    ConnectionState.RECONNECTING: "bold red",
    ConnectionState.FAILED: "bold red",
}
TRADING_STYLE = {"ACTIVE": "bold green", "REDUCING": "bold yellow", "HALTED": "bold white on red"}


def agent_label(v: AgentView) -> Text:
    """``agent_id@address STATE seq N`` (plus how stale the data is when not live)."""
    text = Text.assemble(
        (f"{v.agent_id or '?'}@{v.target} ", ""),
        (v.state.value.upper(), STATE_STYLE[v.state]),
        (f" seq {v.last_seq}", "dim"),
    )
    if not v.live and v.last_wall_ns:
        text.append(f" - data stale, last update {time.time() - v.last_wall_ns / 1e9:.0f} s ago", "red")
    return text


def status_line(model: ConsoleModel) -> Text:
    v = model.market()
    und = price(v.underlying, math.isfinite(v.underlying))
    chg = ""
    if v.underlying_tick is not None and v.underlying_tick.prev_close > 0 and math.isfinite(v.underlying):
        d = v.underlying - v.underlying_tick.prev_close
        chg = f" {d:+.2f} ({d / v.underlying_tick.prev_close:+.2%})"
    text = Text.assemble(
        (f" {v.symbol} ", "bold"),
        (und, "bold cyan"),
        (chg, ""),
        "   0DTE ",
        (expiry_date(v.expiry), "bold"),
        "   ",
        (ny_time(v.last_ts_ns), "bold"),
        " NY",
    )
    trading = model.trading()
    if trading is not None and trading.risk is not None:
        r = trading.risk
        text.append("   ")
        text.append(f" {r.trading_state or '?'} ", TRADING_STYLE.get(r.trading_state, "bold"))
        text.append(" ")
        text.append("ARMED" if r.armed else "disarmed", "bold red" if r.armed else "dim")
    for view in model.views:
        text.append("\n ")
        text.append_text(agent_label(view))
        if not view.live and view.state_detail:
            text.append(f"  {view.state_detail}", "red")
    return text


class ConsoleScreen(Screen[None]):
    """A console screen: status line, the screen's body, the footer with its keys."""

    TITLE: ClassVar[str] = ""

    def __init__(self, model: ConsoleModel) -> None:
        super().__init__()
        self.model = model
        self.frames = 0
        self._status_markup = ""

    def compose(self) -> ComposeResult:
        yield Static("", id="status", classes="status")
        yield from self.body()
        yield Static("", id="keys", classes="keys")

    def body(self) -> ComposeResult:
        raise NotImplementedError

    def on_mount(self) -> None:
        self.sub_title = self.TITLE
        self.query_one("#keys", Static).update(self.key_bar())

    def key_bar(self) -> Text:
        """The keys of this screen, then the app's (drawn once: Textual's Footer rebuilds itself on every
        screen switch, which costs more than the switch itself)."""
        text = Text(" ")
        bindings = [*type(self).BINDINGS, *getattr(self.app, "BINDINGS", ())]
        for b in bindings:
            if isinstance(b, Binding) and b.show:
                text.append(b.key_display or b.key, "bold reverse")
                text.append(f" {b.description}  ")
        text.append("ctrl+p", "bold reverse")
        text.append(" palette")
        return text

    def on_screen_resume(self) -> None:
        self.redraw(force=True)

    def stale(self) -> bool:
        """True when the data this screen shows comes from an agent that is not live."""
        return not self.model.market().live

    def redraw(self, force: bool = False) -> None:
        """Draw what changed (everything when ``force``); called by the app while the screen is visible."""
        if not self.is_mounted:
            return
        try:
            self._redraw(force)
        except NoMatches:  # the widgets are being removed (shutdown) or not composed yet: no frame
            return

    def _redraw(self, force: bool) -> None:
        stale = self.stale()
        if stale != self.has_class("stale"):
            self.set_class(stale, "stale")
        status = status_line(self.model)
        markup = status.markup
        if markup != self._status_markup:
            self._status_markup = markup
            self.query_one("#status", Static).update(status)
        self.draw(force)
        self.frames += 1

    def draw(self, force: bool) -> None:
        raise NotImplementedError


def _sig(cell: Any) -> Any:
    """What decides how a cell looks (rich Text compares equal whatever its base style)."""
    if isinstance(cell, Text):
        return (cell.plain, str(cell.style), cell.justify, tuple(cell.spans))
    return cell


class Table(DataTable[Any]):
    """A DataTable that redraws by difference: ``sync`` writes only the cells that changed."""

    def __init__(self, *columns: str, id: str | None = None, cursor_type: str = "row") -> None:
        super().__init__(id=id, cursor_type=cursor_type, zebra_stripes=True)  # type: ignore[arg-type]
        self._columns = columns
        self.drawn: dict[str, tuple[Any, ...]] = {}

    def on_mount(self) -> None:
        for col in self._columns:
            self.add_column(col, key=col)

    def sync(self, rows: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Show ``rows`` ((key, cells) in order), touching only what differs: the same keys in the same
        order update only the changed cells; otherwise the table is rebuilt and the cursor stays on the
        same key when it is still there."""
        keys = [k for k, _ in rows]
        drawn = {key: tuple(_sig(c) for c in cells) for key, cells in rows}
        if keys == list(self.drawn):
            for key, cells in rows:
                before, sigs = self.drawn[key], drawn[key]
                if before == sigs:
                    continue
                row = self.get_row_index(key)
                for col, (old, new) in enumerate(zip(before, sigs, strict=True)):
                    if old != new:
                        self.update_cell_at(Coordinate(row, col), cells[col])
        else:
            cursor_key = self.selected_key()
            self.clear()
            for key, cells in rows:
                self.add_row(*cells, key=key)
            if cursor_key in keys:
                self.move_cursor(row=keys.index(cursor_key), animate=False)
        self.drawn = drawn

    def selected_key(self) -> str | None:
        """The key of the row under the cursor (None for an empty table)."""
        if self.row_count == 0 or not 0 <= self.cursor_row < self.row_count:
            return None
        key = self.coordinate_to_cell_key(Coordinate(self.cursor_row, 0)).row_key.value
        return str(key) if key is not None else None
