"""The executor's screens: orders and fills; positions and P&L (realized, unrealized, fees, portfolio
greeks); risk (trading state, armed, each limit with its utilisation, daily P&L against the loss limits).

They show the leading executor (or the only one); with no executor connected they say so."""

from __future__ import annotations

import math
from itertools import islice

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Static

from console.format import clip, contract, expiry_date, legs_text, money, num, ny_time
from console.model import TERMINAL_ORDER_STATES, AgentView, ConsoleModel
from console.screens.base import TRADING_STYLE, ConsoleScreen, Table

ORDER_COLUMNS = ("Order", "State", "Source", "Legs", "Qty", "Filled", "Limit", "Avg", "Reason", "Operator")
FILL_COLUMNS = ("Time", "Exec", "Order", "Side", "Contract", "Qty", "Price", "Commission")
POSITION_COLUMNS = (
    "Contract",
    "Expiry",
    "Qty",
    "Avg cost",
    "Mark",
    "Unrealized",
    "Realized",
    "Delta",
    "Gamma",
    "Vega",
    "Theta",
)
LIMIT_COLUMNS = ("Limit", "Value", "Used", "Utilisation", "")
ORDER_STATE_STYLE = {
    "working": "bold cyan",
    "pending_new": "cyan",
    "partially_filled": "bold yellow",
    "filled": "green",
    "pending_cancel": "yellow",
    "cancelled": "dim",
    "rejected": "bold red",
    "expired": "dim",
}
NO_EXECUTOR = " no executor connected: orders, positions and risk come from an agent with the executor role"


def _right(text: str) -> Text:
    return Text(text, justify="right")


def _signed(x: float, fmt: str = "+,.2f") -> Text:
    if not math.isfinite(x):
        return _right("-")
    return Text(format(x, fmt), justify="right", style="green" if x > 0 else "red" if x < 0 else "")


def bar(fraction: float, width: int = 20) -> Text:
    """A utilisation bar, green to red."""
    if not math.isfinite(fraction):
        return Text("")
    f = max(0.0, min(1.0, fraction))
    n = round(f * width)
    style = "green" if f < 0.6 else "yellow" if f < 0.9 else "bold red"
    return Text("█" * n + "·" * (width - n), style=style)


class TradingScreen(ConsoleScreen):
    """Base of the executor screens: the data comes from the leading executor."""

    def __init__(self, model: ConsoleModel) -> None:
        super().__init__(model)
        self._revs: tuple[object, ...] = ()

    def executor(self) -> AgentView | None:
        return self.model.trading()

    def stale(self) -> bool:
        ex = self.executor()
        return ex is not None and not ex.live

    def changed(self, force: bool, *sections: str) -> bool:
        ex = self.executor()
        revs: tuple[object, ...] = (id(ex), *((ex.rev.get(s, 0) if ex else -1) for s in sections))
        if revs == self._revs and not force:
            return False
        self._revs = revs
        return True


class OrdersScreen(TradingScreen):
    TITLE = "Orders & fills"
    BINDINGS = [Binding("x", "cancel_selected", "Cancel order")]

    def body(self) -> ComposeResult:
        with Vertical(id="main"):
            yield Static("", id="orders-caption", classes="caption")
            yield Table(*ORDER_COLUMNS, id="order-list")
            yield Table(*FILL_COLUMNS, id="fill-list")

    def draw(self, force: bool) -> None:
        if not self.changed(force, "orders", "fills"):
            return
        ex = self.executor()
        caption = self.query_one("#orders-caption", Static)
        orders = self.query_one("#order-list", Table)
        fills = self.query_one("#fill-list", Table)
        if ex is None:
            caption.update(Text(NO_EXECUTOR, "dim"))
            orders.sync([])
            fills.sync([])
            return
        working = ex.working_orders()
        caption.update(
            Text.assemble(
                (f" {ex.name}", "bold"),
                f"  {len(working)} working, {len(ex.orders)} orders today, {len(ex.fills)} fills",
                ("   x: cancel the selected order, o: new order ticket", "dim"),
            )
        )
        ordered = sorted(
            ex.orders.values(), key=lambda o: (o.state in TERMINAL_ORDER_STATES, o.client_order_id)
        )
        orders.sync(
            [
                (
                    o.client_order_id,
                    (
                        o.client_order_id,
                        Text(o.state, style=ORDER_STATE_STYLE.get(o.state, "")),
                        o.source,
                        legs_text(o.legs, o.quantity),
                        _right(str(o.quantity)),
                        _right(str(o.filled)),
                        _right(o.limit_price),
                        _right(o.avg_price or "-"),
                        Text(clip(o.reason, 60), style="red" if o.reason else ""),
                        o.operator,
                    ),
                )
                for o in ordered
            ]
        )
        orders.border_title = f"Orders ({len(working)} working)"
        fills.sync(
            [
                (
                    f.exec_id or f"{f.client_order_id}-{i}",
                    (
                        ny_time(f.fill_ts_ns),
                        f.exec_id,
                        f.client_order_id,
                        f.leg.side,
                        contract(f.leg.strike, f.leg.right),
                        _right(str(f.quantity)),
                        _right(f.price),
                        _right(f.commission),
                    ),
                )
                for i, f in enumerate(islice(reversed(ex.fills), 300))
            ]
        )
        fills.border_title = f"Fills ({len(ex.fills)})"

    def selected_order(self) -> str | None:
        return self.query_one("#order-list", Table).selected_key()

    def action_cancel_selected(self) -> None:
        cancel = getattr(self.app, "action_cancel_order", None)
        if cancel is not None:
            cancel(self.selected_order() or "")


class PositionsScreen(TradingScreen):
    TITLE = "Positions & P&L"

    def body(self) -> ComposeResult:
        with Vertical(id="main"):
            yield Static("", id="pnl", classes="caption")
            yield Table(*POSITION_COLUMNS, id="position-list")

    def draw(self, force: bool) -> None:
        if not self.changed(force, "positions", "risk"):
            return
        ex = self.executor()
        pnl = self.query_one("#pnl", Static)
        table = self.query_one("#position-list", Table)
        if ex is None:
            pnl.update(Text(NO_EXECUTOR, "dim"))
            table.sync([])
            return
        positions = sorted(ex.positions.values(), key=lambda p: (p.expiry, p.strike, p.right))
        table.sync(
            [
                (
                    f"{p.expiry}:{p.strike:g}:{p.right}",
                    (
                        contract(p.strike, p.right),
                        expiry_date(p.expiry),
                        _signed(p.quantity, "+d") if p.quantity else _right("0"),
                        _right(p.avg_cost),
                        _right(num(p.mark)),
                        _signed(p.unrealized),
                        _signed(p.realized),
                        _right(num(p.delta, ",.1f")),
                        _right(num(p.gamma, ",.2f")),
                        _right(num(p.vega, ",.2f")),
                        _right(num(p.theta, ",.2f")),
                    ),
                )
                for p in positions
            ]
        )
        open_ = [p for p in positions if p.quantity]
        table.border_title = f"Positions ({len(open_)} open)"
        pnl.update(self.summary(ex))

    def summary(self, ex: AgentView) -> Text:
        open_ = ex.open_positions()
        greeks = {g: sum(getattr(p, g) for p in open_ if math.isfinite(getattr(p, g))) for g in GREEKS}
        missing = sum(1 for p in open_ if not math.isfinite(p.delta))
        text = Text(f" {ex.name}", "bold")
        if ex.risk is not None:
            r = ex.risk
            net = r.realized_pnl - r.fees + r.unrealized_pnl
            text.append("   realized ")
            text.append_text(_signed(r.realized_pnl))
            text.append("   unrealized ")
            text.append_text(_signed(r.unrealized_pnl))
            text.append(f"   fees {money(r.fees, signed=False)}")
            text.append("   net ")
            text.append_text(_signed(net))
        else:
            text.append("   P&L: no risk state from the executor yet", "dim")
        text.append(
            f"\n portfolio greeks (share equivalents): delta {greeks['delta']:+,.1f}"
            f"  gamma {greeks['gamma']:+,.2f}  vega {greeks['vega']:+,.2f}  theta {greeks['theta']:+,.2f}"
        )
        if missing:
            text.append(f"  ({missing} position(s) without greeks)", "yellow")
        return text


GREEKS = ("delta", "gamma", "vega", "theta")
LOSS_LIMITS = ("daily_loss_limit", "hard_loss_limit")


class RiskScreen(TradingScreen):
    TITLE = "Risk"

    def body(self) -> ComposeResult:
        with Vertical(id="main"):
            yield Static("", id="risk-state", classes="caption")
            yield Table(*LIMIT_COLUMNS, id="limit-list")
            yield Static("", id="loss", classes="detail")

    def draw(self, force: bool) -> None:
        if not self.changed(force, "risk", "orders", "positions"):
            return
        ex = self.executor()
        head = self.query_one("#risk-state", Static)
        table = self.query_one("#limit-list", Table)
        loss = self.query_one("#loss", Static)
        if ex is None or ex.risk is None:
            head.update(Text(NO_EXECUTOR if ex is None else f" {ex.name}: no risk state yet", "dim"))
            table.sync([])
            loss.update("")
            return
        r = ex.risk
        head.update(
            Text.assemble(
                (f" {ex.name}", "bold"),
                "   trading ",
                (f" {r.trading_state} ", TRADING_STYLE.get(r.trading_state, "bold")),
                "   ",
                ("ARMED" if r.armed else "disarmed", "bold red" if r.armed else "bold"),
                "   ",
                ("leader" if r.leader else "standby", "bold green" if r.leader else "yellow"),
                f" (lease epoch {r.lease_epoch})",
                f"   {len(ex.working_orders())} working orders, {len(ex.open_positions())} positions",
                ("\n a arm  d disarm  H halt  F flatten  l limits  (or ctrl+p)", "dim"),
            )
        )
        rows = []
        for lim in r.limits:
            frac = lim.used / lim.value if lim.value > 0 else math.nan
            rows.append(
                (
                    lim.name,
                    (
                        lim.name,
                        _right(f"{lim.value:,.6g}"),
                        _right(f"{lim.used:,.6g}"),
                        _right(f"{frac:.0%}" if math.isfinite(frac) else "-"),
                        bar(frac),
                    ),
                )
            )
        table.sync(rows)
        table.border_title = "Limits"
        net = r.realized_pnl - r.fees + r.unrealized_pnl
        text = Text(" daily P&L ")
        text.append_text(_signed(net))
        text.append(
            f"  (realized {r.realized_pnl:+,.2f} - fees {r.fees:,.2f} + unrealized {r.unrealized_pnl:+,.2f})"
        )
        limits = {lim.name: lim.value for lim in r.limits}
        for name, effect in zip(LOSS_LIMITS, ("REDUCING", "HALTED and flatten"), strict=True):
            if name in limits and limits[name] > 0:
                room = limits[name] + net
                frac = max(0.0, -net) / limits[name]
                text.append(f"\n {name.replace('_', ' ')} -{limits[name]:,.0f}: ")
                text.append_text(bar(frac, 30))
                text.append(f" {frac:.0%} used, {room:,.2f} left before {effect}")
        loss.update(text)
