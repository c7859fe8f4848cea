"""Modal dialogs for the operator's actions: each names what will happen and returns through ``dismiss``.

- ``ConfirmDialog(title, what_will_happen, confirm_label)`` -> ``bool``
- ``HaltDialog(orders)`` / ``FlattenDialog(positions)`` -> the reason typed (``str``) or ``None``: they name
  the working orders that will be cancelled / the positions that will be closed, and need a typed reason
- ``LimitsForm(current)`` -> the changed limits ``{name: value}`` or ``None``; every input is validated
  in place (an invalid value shows its error and the form stays open)
- ``OrderTicketDialog(view, preview, strike=, right=)`` (also exported as ``OrderTicket``, the name in the
  console contract) -> ``actions.OrderTicket`` or ``None``: Send is enabled only after a successful
  preview of exactly the ticket on screen; changing any field needs a new preview
- ``ProposalDialog(proposal)`` -> ``True`` (confirm), ``False`` (reject) or ``None`` (closed)

All are keyboard-driven: Tab moves between fields and buttons, Enter presses the focused button, Escape
cancels. Enter in a text field: the limits form validates (and returns only when every value is valid),
the order ticket runs its preview (never Send), halt and flatten go ahead only once a reason is typed.
The focus never starts on a button that sends anything (Cancel, Close, or the first field).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import ClassVar, Generic, TypeVar
from zoneinfo import ZoneInfo

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from console import actions
from console.actions import DEFAULT_TICK, ActionResult, TicketError
from console.model import AgentView
from proto.spyops.v1 import spyops_pb2 as pb

NEW_YORK = ZoneInfo("America/New_York")
OPEN_STATES = frozenset({"pending_new", "working", "partially_filled"})
PREVIEW_TTL_S = 30.0  # a preview older than this must be run again before Send (quotes move)
LISTED = 6  # orders / positions named one by one in a halt or flatten dialog; the rest are counted

T = TypeVar("T")
PreviewFn = Callable[[actions.OrderTicket], Awaitable[ActionResult]]


def _right(right: int) -> str:
    return "C" if right == pb.CALL else "P" if right == pb.PUT else "?"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _say(widget: Static, text: str) -> None:
    """Set a message line; an empty one takes no room."""
    widget.update(text)
    widget.display = bool(text)


def open_orders(orders: Iterable[pb.OrderUpdate]) -> list[pb.OrderUpdate]:
    """The orders a halt cancels: pending new, working or partially filled."""
    return [o for o in orders if o.state in OPEN_STATES]


def describe_order(o: pb.OrderUpdate) -> str:
    """``BUY 1 590C / SELL 1 591C @ 0.45 (1 filled)`` (wire legs carry their own side and contracts)."""
    legs = " / ".join(
        f"{leg.side.upper() or '?'} {leg.quantity} {leg.strike:g}{_right(leg.right)}" for leg in o.legs
    )
    filled = f" ({o.filled} of {o.quantity} filled)" if o.filled else ""
    return f"{legs or '?'} @ {o.limit_price or '?'}{filled}"


def describe_halt(orders: Iterable[pb.OrderUpdate]) -> str:
    """What a halt does, from the orders the console knows."""
    working = open_orders(orders)
    if not working:
        what = "cancel every working order (none in the console's view)"
    else:
        named = ", ".join(describe_order(o) for o in working[:LISTED])
        more = f" and {len(working) - LISTED} more" if len(working) > LISTED else ""
        what = f"cancel {_plural(len(working), 'working order')}: {named}{more},"
    return f"{what} and block new ones (trading state HALTED). Open positions stay open: flatten closes them."


def describe_position(p: pb.Position) -> str:
    """``+5 SPY 590C``."""
    return f"{p.quantity:+d} SPY {p.strike:g}{_right(p.right)}"


def describe_flatten(positions: Iterable[pb.Position], orders: Iterable[pb.OrderUpdate] = ()) -> str:
    """What a flatten does, from the positions (and working orders) the console knows."""
    held = [p for p in positions if p.quantity != 0]
    if not held:
        what = "close every open position (none in the console's view)"
    else:
        named = ", ".join(describe_position(p) for p in held[:LISTED])
        more = f" and {len(held) - LISTED} more" if len(held) > LISTED else ""
        what = f"close {_plural(len(held), 'position')}: {named}{more}"
    text = f"{what} with marketable limits inside the collar."
    working = open_orders(orders)
    if working:
        text += f" {_plural(len(working), 'working order')} stay working (halt cancels them)."
    return text


class DialogScreen(ModalScreen[T], Generic[T]):
    """A centred box; Escape cancels with the dialog's cancel value."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    DialogScreen {
        align: center middle;
        background: $background 60%;
    }
    DialogScreen > #box {
        width: 84;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: thick $primary;
        background: $surface;
        padding: 0 1;
    }
    DialogScreen.danger > #box {
        border: thick $error;
    }
    DialogScreen #title {
        text-style: bold;
        width: 100%;
        margin-bottom: 1;
    }
    DialogScreen .error {
        color: $text-error;
        height: auto;
    }
    DialogScreen .msg {
        display: none;
    }
    DialogScreen #reason-label {
        margin-top: 1;
    }
    DialogScreen #buttons {
        height: auto;
        margin-top: 1;
        align-horizontal: right;
    }
    DialogScreen #buttons Button {
        margin-left: 1;
    }
    """

    def _cancel_value(self) -> T | None:
        return None

    def action_cancel(self) -> None:
        self.dismiss(self._cancel_value())

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()


class ConfirmDialog(DialogScreen[bool]):
    """Yes or no to one action; focus starts on Cancel."""

    AUTO_FOCUS = "#cancel"

    def __init__(
        self, title: str, what_will_happen: str, confirm_label: str = "Confirm", *, danger: bool = False
    ) -> None:
        super().__init__(classes="danger" if danger else None)
        self.title_text = title
        self.what = what_will_happen
        self.confirm_label = confirm_label
        self.danger = danger

    def compose(self) -> ComposeResult:
        with Vertical(id="box"):
            yield Label(self.title_text, id="title", markup=False)
            yield Static(self.what, id="what", markup=False)
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button(self.confirm_label, id="confirm", variant="error" if self.danger else "primary")

    def _cancel_value(self) -> bool:
        return False

    @on(Button.Pressed, "#confirm")
    def _confirm(self) -> None:
        self.dismiss(True)


class _ReasonDialog(DialogScreen[str]):
    """Names what will happen and needs a typed reason (recorded with the command) to go ahead."""

    AUTO_FOCUS = "#reason"
    action_label = ""
    heading = ""

    def __init__(self, what_will_happen: str, agent: str = "", note: str = "") -> None:
        super().__init__(classes="danger")
        self.what = what_will_happen
        self.agent = agent
        self.note = note

    def compose(self) -> ComposeResult:
        with Vertical(id="box"):
            where = f" on {self.agent}" if self.agent else ""
            yield Label(f"{self.heading}{where}", id="title", markup=False)
            yield Static(self.what, id="what", markup=False)
            if self.note:
                yield Static(self.note, id="note", classes="error", markup=False)
            yield Label("Reason (recorded with the command), then Enter:", id="reason-label")
            yield Input(placeholder="why", id="reason")
            yield Static("", id="error", classes="error msg", markup=False)
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button(self.action_label, id="confirm", variant="error")

    @property
    def reason(self) -> str:
        return self.query_one("#reason", Input).value.strip()

    @on(Input.Submitted, "#reason")
    @on(Button.Pressed, "#confirm")
    def _go(self) -> None:
        if not self.reason:
            _say(self.query_one("#error", Static), "type a reason first: it is recorded in the audit trail")
            self.query_one("#reason", Input).focus()
            return
        self.dismiss(self.reason)


class HaltDialog(_ReasonDialog):
    """The kill switch: names the working orders that will be cancelled; returns the reason or None."""

    action_label = "Halt"
    heading = "Halt (kill switch)"

    def __init__(self, orders: Iterable[pb.OrderUpdate] = (), agent: str = "", note: str = "") -> None:
        orders = list(orders)
        self.working = open_orders(orders)
        super().__init__(describe_halt(orders), agent, note)


class FlattenDialog(_ReasonDialog):
    """Names the positions that will be closed; returns the reason or None."""

    action_label = "Flatten"
    heading = "Flatten every position"

    def __init__(
        self,
        positions: Iterable[pb.Position] = (),
        orders: Iterable[pb.OrderUpdate] = (),
        agent: str = "",
        note: str = "",
    ) -> None:
        self.positions = [p for p in positions if p.quantity != 0]
        super().__init__(describe_flatten(self.positions, orders), agent, note)


# ---------------------------------------------------------------- limits


@dataclass(frozen=True, slots=True)
class LimitSpec:
    kind: str  # count, positive, money, ticks, fraction, time, symbols, text
    help: str


# The executor's risk limits (agent.executor.risk.RiskLimits) and what each accepts.
LIMITS: dict[str, LimitSpec] = {
    "max_order_quantity": LimitSpec("count", "units per order"),
    "max_premium_per_order": LimitSpec("money", "$ premium per order"),
    "collar_ticks": LimitSpec("ticks", "ticks a limit may cross the touch"),
    "collar_fraction": LimitSpec("fraction", "fraction of the price a limit may cross (0..1)"),
    "max_quote_age_ms": LimitSpec("positive", "ms: older quotes refuse orders"),
    "duplicate_window_ms": LimitSpec("positive", "ms: same order twice is refused"),
    "max_orders_per_second": LimitSpec("count", "orders per second"),
    "max_messages_per_second": LimitSpec("count", "broker messages per second"),
    "max_working_orders": LimitSpec("count", "orders working at once"),
    "max_position_per_contract": LimitSpec("count", "contracts per contract"),
    "max_position_total": LimitSpec("count", "contracts in all"),
    "max_net_delta": LimitSpec("positive", "share equivalents"),
    "max_net_gamma": LimitSpec("positive", "shares per $1"),
    "max_net_vega": LimitSpec("positive", "$ per vol point"),
    "daily_loss_limit": LimitSpec("positive", "$ loss: REDUCING"),
    "hard_loss_limit": LimitSpec("positive", "$ loss: HALTED and flatten"),
    "opening_cutoff": LimitSpec("time", "HH:MM New York: no new openings from then"),
    "restricted": LimitSpec("symbols", "OSI symbols, comma-separated"),
}


def check_limit(name: str, text: str) -> str:
    """The value to send for one limit, normalised; ValueError with what is wrong."""
    kind = LIMITS[name].kind if name in LIMITS else "text"
    value = text.strip()
    if kind == "symbols":
        return ",".join(x.strip().upper() for x in value.split(",") if x.strip())
    if not value:
        raise ValueError("a value is required")
    if kind == "text":
        return value
    if kind == "time":
        hh, sep, mm = value.partition(":")
        if sep and hh.isdigit() and mm.isdigit() and len(mm) == 2 and 0 <= int(hh) < 24 and int(mm) < 60:
            return f"{int(hh):02d}:{mm}"
        raise ValueError("a New York time HH:MM, e.g. 15:45")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a number")
    if kind in ("count", "ticks"):
        if number != number.to_integral_value():
            raise ValueError("a whole number")
        if kind == "count" and number <= 0:
            raise ValueError("a whole number above 0")
        if kind == "ticks" and number < 0:
            raise ValueError("a whole number, 0 or more")
        if number > 10**9:
            raise ValueError("too large")
        return str(int(number))
    if kind == "fraction":
        if not 0 <= number <= 1:
            raise ValueError("a fraction from 0 to 1")
    elif number <= 0:
        raise ValueError("a number above 0")
    if number > 10**12:
        raise ValueError("too large")
    return _plain(number)


def _plain(number: Decimal) -> str:
    """``2000`` rather than ``2E+3``, ``0.1`` rather than ``0.10``."""
    return format(number.normalize(), "f")


def _initial(name: str, text: str) -> str:
    """A current value as the form shows it (``20.0`` -> ``20`` for whole-number limits)."""
    try:
        return check_limit(name, text)
    except ValueError:
        return text.strip()


class LimitsForm(DialogScreen[dict[str, str]]):
    """Every known risk limit with its current value; returns only the changed ones, validated."""

    AUTO_FOCUS = "Input"
    DEFAULT_CSS = """
    LimitsForm > #box {
        width: 100;
        height: 90%;
    }
    LimitsForm #rows {
        height: 1fr;
    }
    LimitsForm .row {
        height: auto;
    }
    LimitsForm .row Label.name {
        width: 28;
    }
    LimitsForm .row Input {
        width: 16;
    }
    LimitsForm .row .help {
        width: 1fr;
        color: $text-muted;
        padding-left: 1;
    }
    LimitsForm .row .error {
        width: 100%;
        padding-left: 28;
    }
    """

    def __init__(self, current: Mapping[str, str], agent: str = "") -> None:
        super().__init__()
        self.agent = agent
        self.current = {name: _initial(name, str(value)) for name, value in current.items()}
        # the limits the agent reports first, then the others it accepts
        self.names = [n for n in current if n in LIMITS] + [n for n in LIMITS if n not in current]
        self.names += [n for n in current if n not in LIMITS]
        self.ids = {name: f"limit-{i}" for i, name in enumerate(self.names)}

    def compose(self) -> ComposeResult:
        with Vertical(id="box"):
            where = f" on {self.agent}" if self.agent else ""
            yield Label(f"Risk limits{where}", id="title", markup=False)
            yield Static(
                "Change values and press Enter. Empty fields the agent did not report stay unchanged; "
                "the executor validates again and changes nothing if one value is refused.",
                markup=False,
            )
            with VerticalScroll(id="rows"):
                for name in self.names:
                    known = name in self.current
                    with Horizontal(classes="row"):
                        yield Label(name, classes="name", markup=False)
                        yield Input(
                            self.current.get(name, ""),
                            placeholder="current" if known else "unchanged",
                            id=self.ids[name],
                            compact=True,
                        )
                        spec = LIMITS.get(name)
                        yield Label(spec.help if spec else "", classes="help", markup=False)
                    yield Static("", id=f"{self.ids[name]}-error", classes="error msg", markup=False)
            yield Static("", id="status", classes="error msg", markup=False)
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Set limits", id="submit", variant="primary")

    def value_of(self, name: str) -> str:
        return self.query_one(f"#{self.ids[name]}", Input).value

    def set_value(self, name: str, value: str) -> None:
        self.query_one(f"#{self.ids[name]}", Input).value = value

    def error_of(self, name: str) -> str:
        return str(self.query_one(f"#{self.ids[name]}-error", Static).content)

    def validate(self) -> tuple[dict[str, str], dict[str, str]]:
        """(changes, errors by name); a field left as it was is no change, even if the agent's value is odd."""
        changes: dict[str, str] = {}
        errors: dict[str, str] = {}
        values: dict[str, str] = {}
        for name in self.names:
            text = self.value_of(name).strip()
            before = self.current.get(name)
            if text == (before or ""):
                if before:
                    values[name] = before
                continue
            try:
                values[name] = check_limit(name, text)
            except ValueError as exc:
                errors[name] = str(exc)
                continue
            if values[name] != before:
                changes[name] = values[name]
        daily, hard = values.get("daily_loss_limit"), values.get("hard_loss_limit")
        if (
            daily is not None
            and hard is not None
            and ({"daily_loss_limit", "hard_loss_limit"} & set(changes))
        ):
            try:
                inverted = Decimal(hard) < Decimal(daily)
            except InvalidOperation:
                inverted = False
            if inverted:
                target = "hard_loss_limit" if "hard_loss_limit" in changes else "daily_loss_limit"
                errors[target] = f"hard_loss_limit ({hard}) must be at least daily_loss_limit ({daily})"
        return changes, errors

    @on(Input.Submitted)
    @on(Button.Pressed, "#submit")
    def _submit(self) -> None:
        changes, errors = self.validate()
        first: Input | None = None
        for name in self.names:
            _say(self.query_one(f"#{self.ids[name]}-error", Static), errors.get(name, ""))
            if name in errors and first is None:
                first = self.query_one(f"#{self.ids[name]}", Input)
        status = self.query_one("#status", Static)
        if errors:
            _say(status, f"{_plural(len(errors), 'value')} to correct: nothing sent")
            if first is not None:
                first.focus()
            return
        if not changes:
            _say(status, "nothing changed: change a value, or Escape to close")
            return
        self.dismiss(changes)


# ---------------------------------------------------------------- order ticket


def natural_market(view: AgentView | None, ticket_legs: Iterable[actions.TicketLeg]) -> tuple[float, float]:
    """(bid, ask) of one unit of the combination at the touch (the order buying); NaN when unknown."""
    if view is None:
        return math.nan, math.nan
    bid = ask = 0.0
    for leg in ticket_legs:
        q = view.quotes.get(leg.key)
        if q is None:
            return math.nan, math.nan
        b = q.bid if q.bid > 0 and math.isfinite(q.bid) else math.nan
        a = q.ask if q.ask > 0 and math.isfinite(q.ask) else math.nan
        if leg.side == "BUY":
            bid, ask = bid + leg.ratio * b, ask + leg.ratio * a
        else:
            bid, ask = bid - leg.ratio * a, ask - leg.ratio * b
    return bid, ask


def on_tick(price: float, tick: Decimal) -> Decimal:
    return (Decimal(str(price)) / tick).quantize(Decimal(1), rounding=ROUND_HALF_UP) * tick


class OrderTicketDialog(DialogScreen[actions.OrderTicket]):
    """A manual limit order: Preview runs the executor's pre-trade checks (nothing is sent); Send is
    enabled only when the preview of exactly this ticket passed, less than ``PREVIEW_TTL_S`` ago.
    Returns the previewed ticket (the caller submits it) or None."""

    AUTO_FOCUS = "#quantity"
    DEFAULT_CSS = """
    OrderTicketDialog .field {
        height: auto;
        margin-bottom: 1;
    }
    OrderTicketDialog .field Label {
        width: 14;
    }
    OrderTicketDialog .field Input, OrderTicketDialog .field Select {
        width: 1fr;
    }
    OrderTicketDialog #market {
        color: $text-muted;
        height: auto;
    }
    OrderTicketDialog #checks {
        height: auto;
        min-height: 2;
        border-top: solid $primary-darken-2;
    }
    OrderTicketDialog #checks.passed {
        color: $text-success;
    }
    OrderTicketDialog #checks.refused {
        color: $text-error;
    }
    """

    def __init__(
        self,
        view: AgentView | None,
        preview: PreviewFn,
        *,
        strike: float | None = None,
        right: str | int | None = None,
        side: str = "BUY",
        quantity: int = 1,
        ticket: actions.OrderTicket | None = None,
        tick: Decimal = DEFAULT_TICK,
        preview_ttl_s: float = PREVIEW_TTL_S,
    ) -> None:
        super().__init__()
        self.view = view
        self.preview_fn = preview
        self.tick = tick
        self.preview_ttl_s = preview_ttl_s
        self.previewed: tuple[actions.OrderTicket, ActionResult, float] | None = None
        self.previewing = False
        self.expiry = ticket.expiry if ticket is not None else ""
        if ticket is not None:
            self._side, self._qty = ticket.side, str(ticket.quantity)
            self._legs, self._price = ticket.legs_text, str(ticket.limit_price)
        else:
            self._side, self._qty, self._legs, self._price = side.upper(), str(quantity), "", ""
            if strike is not None and right is not None:
                r = _right(right) if isinstance(right, int) else right.strip().upper()
                r = actions.RIGHT_NAMES.get(r, "")
                if r and math.isfinite(strike) and strike > 0:
                    self._legs = f"{strike:g}{r}"
                    self._price = self._preset_price()

    def _preset_price(self) -> str:
        try:
            legs = actions.parse_legs(self._legs)
        except TicketError:
            return ""
        bid, ask = natural_market(self.view, legs)
        if not (math.isfinite(bid) and math.isfinite(ask)):
            return ""
        price = on_tick((bid + ask) / 2, self.tick)
        if len(legs) == 1 and price <= 0:
            price = self.tick
        return str(price)

    def compose(self) -> ComposeResult:
        with Vertical(id="box"):
            yield Label("Order ticket (limit)", id="title")
            with Horizontal(classes="field"):
                yield Label("Side")
                yield Select(
                    [("BUY", "BUY"), ("SELL", "SELL")],
                    value=self._side,
                    allow_blank=False,
                    id="side",
                    compact=True,
                )
            with Horizontal(classes="field"):
                yield Label("Quantity")
                yield Input(self._qty, placeholder="units", restrict=r"\d*", id="quantity", compact=True)
            with Horizontal(classes="field"):
                yield Label("Legs")
                yield Input(self._legs, placeholder="590C, or a spread 590C,-591C", id="legs", compact=True)
            with Horizontal(classes="field"):
                yield Label("Limit price")
                yield Input(
                    self._price, placeholder=f"per unit, on the tick ({self.tick})", id="price", compact=True
                )
            yield Static("", id="market", markup=False)
            yield Static("", id="error", classes="error msg", markup=False)
            yield Static("Preview runs the pre-trade checks; Send needs a passed preview.", id="checks")
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Preview", id="preview", variant="primary")
                yield Button("Send", id="send", variant="error", disabled=True)

    def on_mount(self) -> None:
        self._refresh()
        self.set_interval(1.0, self._refresh_send)

    def ticket(self) -> actions.OrderTicket:
        """The ticket the fields describe; TicketError if they do not make one."""
        side = self.query_one("#side", Select).value
        return actions.OrderTicket.parse(
            side if isinstance(side, str) else "",
            self.query_one("#quantity", Input).value,
            self.query_one("#legs", Input).value,
            self.query_one("#price", Input).value,
            self.expiry,
            self.tick,
        )

    def _current(self) -> tuple[actions.OrderTicket | None, str]:
        try:
            return self.ticket(), ""
        except TicketError as exc:
            return None, str(exc)

    def send_ready(self) -> bool:
        """A passed preview of exactly the ticket on screen, recent enough."""
        ticket, _ = self._current()
        if ticket is None or self.previewed is None or self.previewing:
            return False
        seen, result, at = self.previewed
        return seen == ticket and result.ok and time.monotonic() - at <= self.preview_ttl_s

    def _refresh_send(self) -> None:
        send = self.query_one("#send", Button)
        ready = self.send_ready()
        if send.disabled == ready:
            send.disabled = not ready
        if not ready and self.previewed is not None and not self.previewing:
            seen, result, at = self.previewed
            ticket, _ = self._current()
            if seen == ticket and result.ok and time.monotonic() - at > self.preview_ttl_s:
                self._show_checks(f"preview older than {self.preview_ttl_s:g} s: preview again", "")

    def _refresh(self) -> None:
        ticket, error = self._current()
        _say(self.query_one("#error", Static), error)
        market = self.query_one("#market", Static)
        if ticket is None:
            _say(market, "")
        else:
            bid, ask = natural_market(self.view, ticket.legs)
            unit = "net per unit" if len(ticket.legs) > 1 else "per contract"
            if math.isfinite(bid) and math.isfinite(ask):
                _say(market, f"market {unit}: bid {bid:.2f} / ask {ask:.2f}")
            else:
                _say(market, f"market {unit}: not known to the console")
        if self.previewed is not None and not self.previewing:
            seen, result, _ = self.previewed
            if seen != ticket:
                self._show_checks("the ticket changed since the preview: preview again before Send", "")
            else:
                self._show_checks(self._checks_text(result), "passed" if result.ok else "refused")
        self._refresh_send()

    @staticmethod
    def _checks_text(result: ActionResult) -> str:
        return "\n".join([result.text(), *(f"  - {code}: {reason}" for code, reason in result.denials)])

    def _show_checks(self, text: str, cls: str) -> None:
        checks = self.query_one("#checks", Static)
        checks.update(text)
        checks.set_class(cls == "passed", "passed")
        checks.set_class(cls == "refused", "refused")

    @on(Input.Changed)
    @on(Select.Changed)
    def _changed(self) -> None:
        self._refresh()

    @on(Input.Submitted)
    @on(Button.Pressed, "#preview")
    def _preview_pressed(self) -> None:
        self.start_preview()

    def start_preview(self) -> None:
        ticket, error = self._current()
        if ticket is None:
            _say(self.query_one("#error", Static), error)
            return
        if self.previewing:
            return
        self.previewing = True
        self.query_one("#preview", Button).disabled = True
        self._refresh_send()
        self._show_checks(f"previewing {ticket.describe()} ...", "")
        self.run_worker(self._run_preview(ticket), group="preview", exclusive=True)

    async def _run_preview(self, ticket: actions.OrderTicket) -> None:
        try:
            result = await self.preview_fn(ticket)
        except Exception as exc:  # noqa: BLE001 - the callback's failure is shown, the ticket stays open
            result = ActionResult(False, "preview failed", f"{type(exc).__name__}: {exc}", None)
        self.previewing = False
        self.previewed = (ticket, result, time.monotonic())
        if not self.is_attached:
            return
        self.query_one("#preview", Button).disabled = False
        lines = [self._checks_text(result)]
        current, _ = self._current()
        if current != ticket:
            lines.append("the ticket changed during the preview: preview again before Send")
        self._show_checks("\n".join(lines), "passed" if result.ok else "refused")
        self._refresh_send()

    @on(Button.Pressed, "#send")
    def _send(self) -> None:
        if not self.send_ready() or self.previewed is None:
            self._refresh_send()
            return
        self.dismiss(self.previewed[0])


OrderTicket = OrderTicketDialog  # the dialog's name in the console contract


# ---------------------------------------------------------------- proposals


def _ny_time(ns: int) -> str:
    if ns <= 0:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).astimezone(NEW_YORK).strftime("%H:%M:%S ET")


def describe_leg(leg: pb.Leg) -> str:
    price = f" @ {leg.price:.2f}" if leg.price > 0 and math.isfinite(leg.price) else ""
    size = f" (shown {leg.displayed_size})" if leg.displayed_size else ""
    return f"{leg.side or '?'} {leg.quantity or 1} {leg.strike:g}{_right(leg.right)}{price}{size}"


class ProposalDialog(DialogScreen[bool]):
    """A playbook proposal: confirm sends its order through the pre-trade checks, reject drops it.
    Returns True, False, or None when closed without deciding (Escape)."""

    AUTO_FOCUS = "#close"

    def __init__(self, proposal: pb.Proposal) -> None:
        super().__init__()
        self.proposal = proposal

    def compose(self) -> ComposeResult:
        p = self.proposal
        edge = f"{p.edge:,.2f}" if math.isfinite(p.edge) else "?"
        total = f"{p.edge * p.quantity:,.2f}" if math.isfinite(p.edge) else "?"
        lines = [
            f"{p.kind or 'proposal'} for signal {p.signal_id or '-'}",
            f"order: {p.quantity} unit(s) at {p.limit_price or '?'} per unit",
            f"edge: ${edge} per unit, ${total} for {p.quantity}",
            f"expires: {_ny_time(p.expires_ns)}"
            + (f"  status: {p.status}" if p.status and p.status != "pending" else ""),
            "legs:",
            *(f"  {describe_leg(leg)}" for leg in p.legs),
        ]
        if p.explanation:
            lines += ["", p.explanation]
        if p.reason:
            lines.append(f"reason: {p.reason}")
        with Vertical(id="box"):
            yield Label(f"Proposal {p.id}", id="title", markup=False)
            yield Static("\n".join(lines), id="what", markup=False)
            with Horizontal(id="buttons"):
                yield Button("Close", id="close")
                yield Button("Reject", id="reject", variant="warning")
                yield Button("Confirm", id="confirm", variant="success")

    @on(Button.Pressed, "#close")
    def _close(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#reject")
    def _reject(self) -> None:
        self.dismiss(False)

    @on(Button.Pressed, "#confirm")
    def _confirm(self) -> None:
        self.dismiss(True)
