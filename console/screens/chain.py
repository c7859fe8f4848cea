"""The chain screen: the option ladder around the money, the underlying, clock and connection state."""

from __future__ import annotations

import math
import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, RichLog, Static

from console.client import ConnectionState
from console.format import ny_time, price, size
from console.model import CALL, PUT, AgentView
from proto.spyops.v1 import spyops_pb2 as pb

REDRAW_S = 0.1  # at most 10 frames a second, whatever the stream rate
NO_BID, NO_ASK = pb.NO_BID, pb.NO_ASK
COLUMNS = ("C Vol", "C Size", "C Bid", "C Ask", "Strike", "P Bid", "P Ask", "P Size", "P Vol")


def _side(q: pb.OptionQuote | None, field: str) -> str:
    if q is None:
        return ""
    if field == "bid":
        return price(q.bid, not q.flags & NO_BID and q.bid > 0)
    if field == "ask":
        return price(q.ask, not q.flags & NO_ASK and q.ask > 0)
    if field == "size":
        return f"{size(q.bid_size)}x{size(q.ask_size)}" if q.bid_size or q.ask_size else ""
    return size(q.volume)


SEVERITY_STYLE = {"critical": "bold white on dark_red", "warn": "bold black on yellow", "info": "underline"}
SIGNAL_COLUMNS = ("Kind", "Status", "Edge $", "Explanation")


def ladder_cells(
    view: AgentView, strike: float, atm: bool, flagged: dict[tuple[float, int], pb.Signal] | None = None
) -> list[Text]:
    flagged = flagged or {}
    c = view.quotes.get((strike, CALL))
    p = view.quotes.get((strike, PUT))
    c_sig, p_sig = flagged.get((strike, CALL)), flagged.get((strike, PUT))
    c_style = SEVERITY_STYLE.get(c_sig.severity, "") if c_sig else ""
    p_style = SEVERITY_STYLE.get(p_sig.severity, "") if p_sig else ""
    label = Text(f"{strike:g}", style="bold reverse" if atm else "bold", justify="center")
    calls = [_side(c, "vol"), _side(c, "size"), _side(c, "bid"), _side(c, "ask")]
    puts = [_side(p, "bid"), _side(p, "ask"), _side(p, "size"), _side(p, "vol")]
    return [
        *(Text(x, justify="right", style=c_style if i >= 2 else "") for i, x in enumerate(calls)),
        label,
        *(Text(x, justify="right", style=p_style if i < 2 else "") for i, x in enumerate(puts)),
    ]


class ChainScreen(Screen[None]):
    BINDINGS = [Binding("q", "app.quit", "Quit"), Binding("c", "center", "Center on the money")]

    def __init__(self, view: AgentView, rows_each_side: int = 12) -> None:
        super().__init__()
        self.view = view
        self.rows_each_side = rows_each_side
        self._strikes: list[float] = []
        self._atm: float | None = None
        self.state = ConnectionState.CONNECTING
        self.state_detail = ""
        self.frames = 0
        self._notice_serial = 0
        self._notice_epoch = 0

    def compose(self) -> ComposeResult:
        with Vertical(id="main"):
            yield Static("", id="status")
            yield DataTable(id="ladder", cursor_type="row", zebra_stripes=False)
            yield DataTable(id="signals", cursor_type="row", zebra_stripes=True)
            yield RichLog(id="notices", max_lines=200, markup=False, wrap=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#ladder", DataTable)
        for col in COLUMNS:
            table.add_column(col, key=col)
        signals = self.query_one("#signals", DataTable)
        for col in SIGNAL_COLUMNS:
            signals.add_column(col, key=col)
        self.set_interval(REDRAW_S, self.redraw)

    def set_connection(self, state: ConnectionState, detail: str) -> None:
        self.state, self.state_detail = state, detail
        self.set_class(state is not ConnectionState.LIVE, "stale")
        self._draw_status()

    def action_center(self) -> None:
        self._atm = None
        self.view.structure_changed = True
        self.redraw()

    # ----------------------------------------------------------------- drawing

    def _window(self) -> list[float]:
        strikes = self.view.strikes()
        atm = self.view.atm_strike()
        if atm is None:
            return []
        i = strikes.index(atm)
        lo = max(0, i - self.rows_each_side)
        return strikes[lo : i + self.rows_each_side + 1]

    def redraw(self) -> None:
        structure, changed = self.view.take_changes()
        atm = self.view.atm_strike()
        table = self.query_one("#ladder", DataTable)
        flagged = self.view.flagged()
        if structure or atm != self._atm:
            self._rebuild(table, atm, flagged)
        else:
            for strike in changed.intersection(self._strikes):
                cells = ladder_cells(self.view, strike, strike == atm, flagged)
                for col, cell in zip(COLUMNS, cells, strict=True):
                    table.update_cell(str(strike), col, cell)
        if self.view.signals_changed:
            self.view.signals_changed = False
            self._draw_signals()
        self._draw_status()
        self._draw_notices()
        self.frames += 1

    def _rebuild(
        self, table: DataTable[Text], atm: float | None, flagged: dict[tuple[float, int], pb.Signal]
    ) -> None:
        self._atm = atm
        self._strikes = self._window()
        cursor = table.cursor_row
        table.clear()
        for strike in self._strikes:
            table.add_row(*ladder_cells(self.view, strike, strike == atm, flagged), key=str(strike))
        if self._strikes:
            table.move_cursor(
                row=min(cursor, len(self._strikes) - 1) if cursor > 0 else len(self._strikes) // 2
            )

    def _draw_signals(self) -> None:
        table = self.query_one("#signals", DataTable)
        table.clear()
        ordered = sorted(self.view.signals.values(), key=lambda sg: (-sg.score, sg.id))
        for sig in ordered:
            style = SEVERITY_STYLE.get(sig.severity, "")
            table.add_row(
                Text(sig.kind, style=style),
                sig.status,
                Text(f"{sig.edge:,.2f}", justify="right"),
                sig.explanation,
                key=sig.id,
            )
        table.border_title = f"Signals ({len(ordered)} open)"

    def _draw_status(self) -> None:
        v = self.view
        und = price(v.underlying, math.isfinite(v.underlying))
        chg = ""
        if v.underlying_tick is not None and v.underlying_tick.prev_close > 0 and math.isfinite(v.underlying):
            d = v.underlying - v.underlying_tick.prev_close
            chg = f" {d:+.2f} ({d / v.underlying_tick.prev_close:+.2%})"
        state_style = {
            ConnectionState.LIVE: "bold green",
            ConnectionState.CONNECTING: "bold yellow",
            ConnectionState.RECONNECTING: "bold red",
            ConnectionState.FAILED: "bold red",
        }[self.state]
        age = ""
        if v.last_wall_ns and self.state is not ConnectionState.LIVE:
            age = f" - data stale, last update {time.time() - v.last_wall_ns / 1e9:.0f} s ago"
        expiry = f"{v.expiry[:4]}-{v.expiry[4:6]}-{v.expiry[6:]}" if v.expiry else "-"
        text = Text.assemble(
            (f" {v.symbol} ", "bold"),
            (und, "bold cyan"),
            (chg, ""),
            "   0DTE ",
            (expiry, "bold"),
            "   ",
            (ny_time(v.last_ts_ns), "bold"),
            " NY   ",
            (f"{v.agent_id or '?'}@{v.target} ", ""),
            (self.state.value.upper(), state_style),
            (f" seq {v.last_seq}{age}", "dim"),
        )
        if self.state is not ConnectionState.LIVE and self.state_detail:
            text.append(f"\n {self.state_detail}", style="red")
        self.query_one("#status", Static).update(text)

    def _draw_notices(self) -> None:
        log = self.query_one("#notices", RichLog)
        v = self.view
        if v.notice_epoch != self._notice_epoch:  # a snapshot replaced them
            log.clear()
            self._notice_epoch, self._notice_serial = v.notice_epoch, v.notice_serial - len(v.notices)
        fresh = min(v.notice_serial - self._notice_serial, len(v.notices))
        for n in list(v.notices)[len(v.notices) - fresh :] if fresh > 0 else []:
            style = {"error": "bold red", "warn": "yellow"}.get(n.level, "dim")
            log.write(Text(f"{n.level.upper():5} {n.code}: {n.message}", style=style))
        self._notice_serial = v.notice_serial
