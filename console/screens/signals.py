"""The signals screen: new, active and resolved signals with edge, legs and explanation; the selected
one in detail; the executor's proposals (Enter opens the confirm/reject dialog)."""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from console.format import clip, contract, legs_text, ny_time, price
from console.model import ConsoleModel
from console.screens.base import ConsoleScreen, Table
from console.screens.chain import SEVERITY_STYLE
from proto.spyops.v1 import spyops_pb2 as pb

SIGNAL_COLUMNS = ("Status", "Severity", "Kind", "Edge $", "Units", "Legs", "Seen", "Explanation")
PROPOSAL_COLUMNS = ("Status", "Kind", "Qty", "Limit", "Edge $", "Legs", "Expires", "Explanation")
STATUS_ORDER = {"new": 0, "active": 1, "resolved": 2}
EXPLANATION_WIDTH = 90  # in the tables; the detail pane has all of it
RESOLVED_SHOWN = 20  # the latest resolved ones; the table stays quick to rebuild
REDRAW_EVERY_S = 0.5  # signals change with every evaluation; twice a second is plenty to read them


def signal_detail(sig: pb.Signal, proposals: list[pb.Proposal]) -> Text:
    text = Text.assemble(
        (f" {sig.kind}", SEVERITY_STYLE.get(sig.severity, "bold")),
        f"  {sig.severity}  {sig.status}  id {sig.id}",
        f"\n edge ${sig.edge:,.2f} per unit   score {sig.score:.2f}   units the sizes allow {sig.max_units}",
        f"\n first seen {ny_time(sig.first_seen_ns)}  last seen {ny_time(sig.last_seen_ns)} NY",
        f"\n {sig.explanation}",
    )
    for leg in sig.legs:
        text.append(
            f"\n   {leg.side:4} {leg.quantity} x {contract(leg.strike, leg.right)} at {price(leg.price)}"
            f" (shown {leg.displayed_size})"
        )
    if not sig.legs and sig.contracts:
        text.append("\n   contracts: " + ", ".join(contract(c.strike, c.right) for c in sig.contracts))
    for p in proposals:
        text.append(
            f"\n proposal {p.id}: {p.status}, {p.quantity} @ {p.limit_price}"
            + ("  (Enter: confirm or reject)" if p.status == "pending" else f"  {p.reason}"),
            "bold yellow" if p.status == "pending" else "dim",
        )
    return text


class SignalsScreen(ConsoleScreen):
    TITLE = "Signals"
    BINDINGS = [Binding("enter", "decide", "Confirm/reject proposal")]

    def __init__(self, model: ConsoleModel) -> None:
        super().__init__(model)
        self._revs: tuple[int, int] = (-1, -1)
        self._drawn_at = 0.0

    def body(self) -> ComposeResult:
        with Vertical(id="main"):
            yield Table(*SIGNAL_COLUMNS, id="signal-list")
            yield Table(*PROPOSAL_COLUMNS, id="proposal-list")
            yield Static("", id="signal-detail", classes="detail")

    def stale(self) -> bool:
        return any(not v.live for v in self.model.views if v.signals or v.proposals)

    def draw(self, force: bool) -> None:
        revs = (self.model.rev("signals"), self.model.rev("proposals"))
        now = time.monotonic()
        if not force and (revs == self._revs or now - self._drawn_at < REDRAW_EVERY_S):
            return
        self._revs, self._drawn_at = revs, now
        signals = self.signal_rows()
        table = self.query_one("#signal-list", Table)
        table.sync(signals)
        n_open = sum(1 for _, row in signals if str(row[0]) != "resolved")
        table.border_title = f"Signals: {n_open} open, {len(signals) - n_open} resolved"
        proposals = self.query_one("#proposal-list", Table)
        proposals.sync(self.proposal_rows())
        pending = sum(1 for p in self.all_proposals() if p.status == "pending")
        proposals.border_title = f"Proposals: {pending} pending"
        self.show_detail()

    def signal_rows(self) -> list[tuple[str, tuple[object, ...]]]:
        open_ = sorted(
            self.model.open_signals().values(),
            key=lambda s: (STATUS_ORDER.get(s.status, 3), -s.score, s.id),
        )
        ids = {s.id for s in open_}
        resolved = [s for s in self.model.resolved_signals() if s.id not in ids][:RESOLVED_SHOWN]
        rows: list[tuple[str, tuple[object, ...]]] = []
        for s in [*open_, *resolved]:
            style = SEVERITY_STYLE.get(s.severity, "") if s.status != "resolved" else "dim"
            rows.append(
                (
                    s.id,
                    (
                        s.status,
                        Text(s.severity, style=style),
                        Text(s.kind, style=style),
                        Text(f"{s.edge:,.2f}", justify="right"),
                        Text(str(s.max_units), justify="right"),
                        legs_text(s.legs) or ",".join(contract(c.strike, c.right) for c in s.contracts),
                        ny_time(s.last_seen_ns),
                        clip(s.explanation, EXPLANATION_WIDTH),
                    ),
                )
            )
        return rows

    def all_proposals(self) -> list[pb.Proposal]:
        trading = self.model.trading()
        if trading is None:
            return []
        return sorted(trading.proposals.values(), key=lambda p: (p.status != "pending", -p.created_ns))

    def proposal_rows(self) -> list[tuple[str, tuple[object, ...]]]:
        return [
            (
                p.id,
                (
                    Text(p.status, style="bold yellow" if p.status == "pending" else "dim"),
                    p.kind,
                    Text(str(p.quantity), justify="right"),
                    Text(p.limit_price, justify="right"),
                    Text(f"{p.edge:,.2f}", justify="right"),
                    legs_text(p.legs, p.quantity),
                    ny_time(p.expires_ns),
                    clip(p.explanation or p.reason, EXPLANATION_WIDTH),
                ),
            )
            for p in self.all_proposals()[:30]
        ]

    def selected_signal(self) -> pb.Signal | None:
        key = self.query_one("#signal-list", Table).selected_key()
        if key is None:
            return None
        sig = self.model.open_signals().get(key)
        if sig is None:
            sig = next((s for s in self.model.resolved_signals() if s.id == key), None)
        return sig

    def selected_proposal(self) -> pb.Proposal | None:
        """The proposal under the cursor of the proposals table, else the pending one of the selected
        signal (when the signals table has the focus)."""
        trading = self.model.trading()
        if trading is None:
            return None
        if self.focused is self.query_one("#proposal-list", Table):
            key = self.query_one("#proposal-list", Table).selected_key()
            return trading.proposals.get(key) if key else None
        sig = self.selected_signal()
        if sig is None:
            return None
        return next((p for p in trading.pending_proposals() if p.signal_id == sig.id), None)

    def show_detail(self) -> None:
        detail = self.query_one("#signal-detail", Static)
        sig = self.selected_signal()
        if sig is None:
            detail.update(Text(" no signal selected", "dim"))
            return
        trading = self.model.trading()
        props = [p for p in trading.proposals.values() if p.signal_id == sig.id] if trading else []
        detail.update(signal_detail(sig, props))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "signal-list":
            self.show_detail()

    def action_decide(self) -> None:
        proposal = self.selected_proposal()
        decide = getattr(self.app, "action_decide_proposal", None)
        if decide is not None:
            decide(proposal.id if proposal is not None else "")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_decide()
