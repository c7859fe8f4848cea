"""The chain screen: the option ladder around the money (calls left, puts right: delta, IV, volume, size,
bid, ask), the money marked and followed, cells with an open signal highlighted by severity and tagged by
kind, keyboard navigation (Enter opens an order ticket for the selected contract), the open signals and
the latest notices.

Each frame computes the visible rows only (IV and delta for about 50 contracts, vectorized) and updates
only the cells whose text or style changed."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import RichLog

from console.analytics import delta, implied_vol, tau_years
from console.client import ConnectionState
from console.format import clip, pct_iv, price, size
from console.model import CALL, PUT, AgentView, ConsoleModel
from console.screens.base import ConsoleScreen, Table
from console.widgets.ladder import Column, Ladder
from proto.spyops.v1 import spyops_pb2 as pb

NO_BID, NO_ASK, STALE, CROSSED = pb.NO_BID, pb.NO_ASK, pb.STALE, pb.CROSSED
COLUMNS = (
    "C Delta",
    "C IV",
    "C Vol",
    "C Size",
    "C Bid",
    "C Ask",
    "Strike",
    "P Bid",
    "P Ask",
    "P Size",
    "P Vol",
    "P IV",
    "P Delta",
)
STRIKE_COL = COLUMNS.index("Strike")
WIDTHS = {"Delta": 7, "IV": 5, "Vol": 7, "Size": 9, "Bid": 7, "Ask": 7, "Strike": 11}
LADDER_COLUMNS = tuple(
    Column(c, WIDTHS[c.split()[-1]], "center" if c == "Strike" else "right") for c in COLUMNS
)
SEVERITY_STYLE = {"critical": "bold white on dark_red", "warn": "bold black on yellow", "info": "underline"}
KIND_TAG = {
    "parity": "p",
    "box": "b",
    "vertical": "v",
    "butterfly": "f",
    "intrinsic": "i",
    "crossed": "x",
    "smile_outlier": "s",
    "stale": "t",
}
SIGNAL_COLUMNS = ("Kind", "Status", "Edge $", "Explanation")
FULL_REFRESH_S = 1.0  # IV and delta drift with time even when quotes do not move
SIGNALS_EVERY_S = 0.5  # the signals panel under the ladder: at most twice a second

Cell = tuple[str, str]  # (text, style)


def kind_tag(kind: str) -> str:
    return KIND_TAG.get(kind, kind[:1] or "?")


def forward_of(view: AgentView, smile: pb.SmileFit | None) -> float:
    """The forward for IVs: the detector's (parity) forward for this expiry, else the underlying."""
    usable = smile is not None and smile.forward > 0 and math.isfinite(smile.forward)
    if smile is not None and usable and (not smile.expiry or smile.expiry == view.expiry):
        return float(smile.forward)
    return view.underlying


def mid_of(q: pb.OptionQuote) -> float:
    if q.flags & (NO_BID | NO_ASK) or q.bid <= 0 or q.ask <= 0:
        return math.nan
    return 0.5 * (q.bid + q.ask)


def quote_analytics(
    view: AgentView, keys: list[tuple[float, int]], smile: pb.SmileFit | None, which: str = "mid"
) -> tuple[np.ndarray, np.ndarray]:
    """(IV, delta) of the quotes at ``keys`` from their ``which`` price ("mid", "bid", "ask"); the feed's
    own IV and delta are used where it gives them (for "mid"). NaN where unknown."""
    n = len(keys)
    if n == 0:
        return np.empty(0), np.empty(0)
    quotes = [view.quotes.get(k) for k in keys]
    strikes = np.array([k[0] for k in keys], dtype=np.float64)
    calls = np.array([k[1] == CALL for k in keys])
    prices = np.full(n, np.nan)
    src_iv = np.full(n, np.nan)
    src_delta = np.full(n, np.nan)
    for i, q in enumerate(quotes):
        if q is None:
            continue
        if which == "mid":
            prices[i] = mid_of(q)
            src_iv[i], src_delta[i] = q.src_iv, q.src_delta
        elif which == "bid":
            prices[i] = q.bid if not q.flags & NO_BID and q.bid > 0 else math.nan
        else:
            prices[i] = q.ask if not q.flags & NO_ASK and q.ask > 0 else math.nan
    fwd = forward_of(view, smile)
    tau = tau_years(view.last_ts_ns, view.close_ns)
    iv = implied_vol(prices, fwd, strikes, tau, calls)
    iv = np.where(np.isfinite(src_iv) & (src_iv > 0), src_iv, iv)
    dl = delta(fwd, strikes, tau, iv, calls) if math.isfinite(fwd) else np.full(n, np.nan)
    dl = np.where(np.isfinite(src_delta), src_delta, dl)
    return iv, dl


def _quote_style(q: pb.OptionQuote | None, sig: pb.Signal | None) -> str:
    if sig is not None:
        return SEVERITY_STYLE.get(sig.severity, "")
    if q is None:
        return ""
    if q.flags & CROSSED:
        return "bold red"
    if q.flags & STALE:
        return "dim"
    return ""


def ladder_row(
    view: AgentView,
    strike: float,
    atm: bool,
    flagged: dict[tuple[float, int], pb.Signal],
    analytics: dict[tuple[float, int], tuple[float, float]],
) -> tuple[Cell, ...]:
    c = view.quotes.get((strike, CALL))
    p = view.quotes.get((strike, PUT))
    c_sig, p_sig = flagged.get((strike, CALL)), flagged.get((strike, PUT))
    c_style, p_style = _quote_style(c, c_sig), _quote_style(p, p_sig)
    c_iv, c_dl = analytics.get((strike, CALL), (math.nan, math.nan))
    p_iv, p_dl = analytics.get((strike, PUT), (math.nan, math.nan))

    def dl(x: float) -> str:
        return f"{x:+.2f}" if math.isfinite(x) else ""

    def bid(q: pb.OptionQuote | None) -> str:
        return "" if q is None else price(q.bid, not q.flags & NO_BID and q.bid > 0)

    def ask(q: pb.OptionQuote | None) -> str:
        return "" if q is None else price(q.ask, not q.flags & NO_ASK and q.ask > 0)

    def sz(q: pb.OptionQuote | None) -> str:
        return f"{size(q.bid_size)}x{size(q.ask_size)}" if q and (q.bid_size or q.ask_size) else ""

    label = f"{strike:g}"
    if c_sig is not None:
        label = f"{kind_tag(c_sig.kind)} {label}"
    if p_sig is not None:
        label = f"{label} {kind_tag(p_sig.kind)}"
    strike_style = "bold reverse" if atm else "bold"
    return (
        (dl(c_dl), "dim"),
        (pct_iv(c_iv), c_style if c_sig and c_sig.kind == "smile_outlier" else ""),
        (size(c.volume) if c else "", ""),
        (sz(c), ""),
        (bid(c), c_style),
        (ask(c), c_style),
        (label, strike_style),
        (bid(p), p_style),
        (ask(p), p_style),
        (sz(p), ""),
        (size(p.volume) if p else "", ""),
        (pct_iv(p_iv), p_style if p_sig and p_sig.kind == "smile_outlier" else ""),
        (dl(p_dl), "dim"),
    )


class ChainScreen(ConsoleScreen):
    TITLE = "Chain"
    BINDINGS = [
        Binding("c", "center", "Center"),
        Binding("enter", "ticket", "Ticket"),
    ]

    def __init__(self, model: ConsoleModel | AgentView, rows_each_side: int = 12) -> None:
        super().__init__(ConsoleModel([model]) if isinstance(model, AgentView) else model)
        self.rows_each_side = rows_each_side
        self._strikes: list[float] = []
        self._atm: float | None = None
        self._market: AgentView | None = None
        self._drawn: dict[float, tuple[Cell, ...]] = {}
        self._chain_rev = -1
        self._signals_rev = -1
        self._last_full = 0.0
        self._signals_at = 0.0
        self._notice_serial = 0
        self._notice_epoch = 0
        self.cells_updated = 0

    @property
    def view(self) -> AgentView:
        return self.model.market()

    @property
    def state(self) -> ConnectionState:
        return self.view.state

    def body(self) -> ComposeResult:
        with Vertical(id="main"):
            yield Ladder(LADDER_COLUMNS, id="ladder", cursor_column=STRIKE_COL)
            yield Table(*SIGNAL_COLUMNS, id="signals")
            yield RichLog(id="notices", max_lines=200, markup=False, wrap=False)

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#ladder", Ladder).focus()

    def action_center(self) -> None:
        table = self.query_one("#ladder", Ladder)
        self._rebuild(table, self.view.atm_strike(), center=True)

    def selected_contract(self) -> tuple[float, int] | None:
        """The contract under the cursor (the strike column counts as the call)."""
        table = self.query_one("#ladder", Ladder)
        if not self._strikes or table.row_count == 0:
            return None
        row, col = table.cursor_row, table.cursor_column
        if not 0 <= row < len(self._strikes):
            return None
        return self._strikes[row], PUT if col > STRIKE_COL else CALL

    def action_ticket(self) -> None:
        chosen = self.selected_contract()
        ticket = getattr(self.app, "action_order_ticket", None)
        if ticket is not None:
            ticket(*(chosen or (None, None)))

    def on_ladder_selected(self, event: Ladder.Selected) -> None:
        self.action_ticket()

    # ----------------------------------------------------------------- drawing

    def _window(self) -> list[float]:
        strikes = self.view.strikes()
        atm = self.view.atm_strike()
        if atm is None:
            return []
        i = strikes.index(atm)
        lo = max(0, i - self.rows_each_side)
        return strikes[lo : i + self.rows_each_side + 1]

    def draw(self, force: bool) -> None:
        view = self.view
        structure = view.take_structure_change()
        chain_rev, signals_rev = self.model.rev("chain"), self.model.rev("signals")
        now = time.monotonic()
        atm = view.atm_strike()
        table = self.query_one("#ladder", Ladder)
        if view is not self._market:
            self._market, structure = view, True
        if structure or atm != self._atm or force:
            self._rebuild(table, atm)
            self._last_full = now
        elif (
            chain_rev != self._chain_rev
            or signals_rev != self._signals_rev
            or now - self._last_full > FULL_REFRESH_S
        ):
            # (IV and delta drift with the clock: every row is recomputed at least once a second)
            self._update_rows(table, self._rows(atm))
            self._last_full = now
        self._chain_rev = chain_rev
        if force or (signals_rev != self._signals_rev and now - self._signals_at >= SIGNALS_EVERY_S):
            self._signals_rev, self._signals_at = signals_rev, now
            self._draw_signals()
        self._draw_notices(force)

    def _rows(self, atm: float | None) -> dict[float, tuple[Cell, ...]]:
        view = self.view
        keys = [(k, r) for k in self._strikes for r in (CALL, PUT)]
        iv, dl = quote_analytics(view, keys, self.model.smile())
        analytics = {key: (float(iv[i]), float(dl[i])) for i, key in enumerate(keys)}
        flagged = self.model.flagged()
        return {k: ladder_row(view, k, k == atm, flagged, analytics) for k in self._strikes}

    def _update_rows(self, table: Ladder, rows: dict[float, tuple[Cell, ...]]) -> None:
        for strike, row in rows.items():
            before = self._drawn.get(strike)
            if before != row:
                table.update_row(str(strike), row)  # redraws that one line
                self._drawn[strike] = row
                changed = row if before is None else [a for a, b in zip(before, row, strict=True) if a != b]
                self.cells_updated += len(changed)

    def _rebuild(self, table: Ladder, atm: float | None, center: bool = False) -> None:
        """A new window of strikes (the money moved, strikes came or went): the cursor stays on its
        strike when that is still in the window and off the middle row, else it follows the money."""
        keep = None
        if not center and self._strikes and table.row_count:
            row = table.cursor_row
            if 0 <= row < len(self._strikes) and row != len(self._strikes) // 2:
                keep = self._strikes[row]
        self._atm = atm
        self._strikes = self._window()
        rows = self._rows(atm)
        self._drawn = dict(rows)
        middle = str(atm) if atm is not None else None
        table.set_rows(
            [(str(k), rows[k]) for k in self._strikes],
            cursor_key=str(keep) if keep in self._strikes else middle,
        )

    def _draw_signals(self) -> None:
        table = self.query_one("#signals", Table)
        signals = self.model.open_signals()
        ordered = sorted(signals.values(), key=lambda sg: (-sg.score, sg.id))
        table.sync(
            [
                (
                    sig.id,
                    (
                        Text(sig.kind, style=SEVERITY_STYLE.get(sig.severity, "")),
                        sig.status,
                        Text(f"{sig.edge:,.2f}", justify="right"),
                        clip(sig.explanation, 100),
                    ),
                )
                for sig in ordered
            ]
        )
        table.border_title = f"Signals ({len(ordered)} open)"

    def _draw_notices(self, force: bool) -> None:
        log = self.query_one("#notices", RichLog)
        v = self.view
        if v.notice_epoch != self._notice_epoch or force:  # a snapshot replaced them, or a new source
            log.clear()
            self._notice_epoch, self._notice_serial = v.notice_epoch, v.notice_serial - len(v.notices)
        fresh = min(v.notice_serial - self._notice_serial, len(v.notices))
        items: Iterable[pb.Notice] = list(v.notices)[len(v.notices) - fresh :] if fresh > 0 else []
        for n in items:
            style = {"error": "bold red", "warn": "yellow"}.get(n.level, "dim")
            log.write(Text(f"{n.level.upper():5} {n.code}: {n.message}", style=style))
        self._notice_serial = v.notice_serial
