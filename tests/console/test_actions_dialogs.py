"""The action dialogs under Textual's pilot: confirm and cancel of each, validation, and the order ticket's
preview-then-send flow against a real executor agent over gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.app import App
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Button, Input, Select, Static

from console.actions import ActionResult, Operator, OrderTicket
from console.client import AgentClient
from console.model import AgentView
from console.screens.dialogs import (
    ConfirmDialog,
    FlattenDialog,
    HaltDialog,
    LimitsForm,
    OrderTicketDialog,
    ProposalDialog,
)
from proto.spyops.v1 import spyops_pb2 as pb
from tests.conftest import AgentFactory
from tests.console.test_actions import ready_executor

SIZE = (110, 44)


class Host(App[None]):
    """A bare app that opens one dialog at a time and keeps what each returned."""

    def __init__(self) -> None:
        super().__init__()
        self.results: list[Any] = []

    def open(self, screen: Screen[Any]) -> None:
        self.push_screen(screen, self.results.append)


async def until(pilot: Pilot[Any], cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


def text(screen: Screen[Any], selector: str) -> str:
    return str(screen.query_one(selector, Static).content)


async def open_dialog(app: Host, pilot: Pilot[Any], screen: Screen[Any]) -> None:
    app.open(screen)
    await pilot.pause()
    assert app.screen is screen


ORDERS = [
    pb.OrderUpdate(
        client_order_id="o-1",
        state="working",
        quantity=1,
        limit_price="1.20",
        legs=[pb.Leg(strike=590, right=pb.CALL, side="BUY", quantity=1)],
    ),
    pb.OrderUpdate(
        client_order_id="o-2",
        state="partially_filled",
        quantity=2,
        filled=1,
        limit_price="0.45",
        legs=[
            pb.Leg(strike=590, right=pb.CALL, side="BUY", quantity=2),
            pb.Leg(strike=591, right=pb.CALL, side="SELL", quantity=2),
        ],
    ),
    pb.OrderUpdate(client_order_id="o-3", state="pending_new", quantity=1, limit_price="2.00"),
    pb.OrderUpdate(client_order_id="o-4", state="filled", quantity=1, limit_price="1.00"),
    pb.OrderUpdate(client_order_id="o-5", state="cancelled", quantity=1, limit_price="1.00"),
]
POSITIONS = [
    pb.Position(strike=590, right=pb.CALL, quantity=5),
    pb.Position(strike=591, right=pb.CALL, quantity=-5),
    pb.Position(strike=592, right=pb.PUT, quantity=0),
]


# ---------------------------------------------------------------- confirm


async def test_confirm_dialog_starts_on_cancel_and_confirms_only_on_purpose() -> None:
    app = Host()
    async with app.run_test(size=SIZE) as pilot:
        dialog = ConfirmDialog("Arm the executor", "strategy orders may be sent from now on", "Arm")
        await open_dialog(app, pilot, dialog)
        assert "strategy orders may be sent" in text(dialog, "#what")
        assert str(dialog.query_one("#confirm", Button).label) == "Arm"
        assert app.focused is not None
        assert app.focused.id == "cancel"
        await pilot.press("enter")  # Enter on the default focus cancels
        await pilot.pause()
        assert app.results == [False]

        await open_dialog(app, pilot, ConfirmDialog("Disarm", "no strategy orders", "Disarm"))
        await pilot.press("escape")
        await pilot.pause()
        assert app.results == [False, False]

        await open_dialog(app, pilot, ConfirmDialog("Disarm", "no strategy orders", "Disarm", danger=True))
        await pilot.press("tab", "enter")  # to the confirm button, then press it
        await pilot.pause()
        assert app.results == [False, False, True]
        assert app.screen is app.screen_stack[0]


# ---------------------------------------------------------------- halt and flatten


async def test_halt_dialog_names_the_orders_it_cancels_and_needs_a_reason() -> None:
    app = Host()
    async with app.run_test(size=SIZE) as pilot:
        dialog = HaltDialog(ORDERS, agent="exec")
        await open_dialog(app, pilot, dialog)
        what = text(dialog, "#what")
        assert what.startswith("cancel 3 working orders: BUY 1 590C @ 1.20, BUY 2 590C / SELL 2 591C @ 0.45")
        assert "(1 of 2 filled)" in what
        assert "block new ones" in what
        assert "o-4" not in what
        assert [o.client_order_id for o in dialog.working] == ["o-1", "o-2", "o-3"]
        assert app.focused is dialog.query_one("#reason", Input)  # not on the Halt button

        await pilot.press("enter")  # no reason: refused in place
        await pilot.pause()
        assert app.screen is dialog
        assert "type a reason" in text(dialog, "#error")
        await pilot.click("#confirm")
        await pilot.pause()
        assert app.screen is dialog
        assert app.results == []

        await pilot.press(*"oops", "enter")
        await pilot.pause()
        assert app.results == ["oops"]

        await open_dialog(app, pilot, HaltDialog([], agent="exec"))
        assert "none in the console's view" in text(app.screen, "#what")
        await pilot.press(*"x", "escape")  # Escape cancels even with a reason typed
        await pilot.pause()
        assert app.results == ["oops", None]


async def test_flatten_dialog_names_the_positions_it_closes() -> None:
    app = Host()
    async with app.run_test(size=SIZE) as pilot:
        dialog = FlattenDialog(POSITIONS, ORDERS, agent="exec", note="the console's view is stale")
        await open_dialog(app, pilot, dialog)
        what = text(dialog, "#what")
        assert what.startswith(
            "close 2 positions: +5 SPY 590C, -5 SPY 591C with marketable limits inside the collar."
        )
        assert "3 working orders stay working" in what
        assert "stale" in text(dialog, "#note")
        assert len(dialog.positions) == 2
        assert app.focused is dialog.query_one("#reason", Input)
        dialog.query_one("#reason", Input).value = "end of day"
        await pilot.click("#confirm")
        await pilot.pause()
        assert app.results == ["end of day"]

        await open_dialog(app, pilot, FlattenDialog(POSITIONS))
        await pilot.click("#cancel")
        await pilot.pause()
        assert app.results == ["end of day", None]


# ---------------------------------------------------------------- limits


CURRENT = {
    "max_working_orders": "20.0",
    "max_position_total": "200",
    "daily_loss_limit": "2000.0",
    "hard_loss_limit": "5000",
}


async def test_limits_form_validates_in_place_and_returns_only_changes() -> None:
    app = Host()
    async with app.run_test(size=SIZE) as pilot:
        form = LimitsForm(CURRENT, agent="exec")
        await open_dialog(app, pilot, form)
        assert form.names[:4] == list(CURRENT)
        assert form.value_of("max_working_orders") == "20"  # whole numbers shown as such
        assert form.value_of("daily_loss_limit") == "2000"
        assert form.value_of("max_order_quantity") == ""  # not reported by the agent: unchanged

        await pilot.press("enter")  # nothing changed: stays open
        await pilot.pause()
        assert app.screen is form
        assert "nothing changed" in text(form, "#status")

        bad = {
            "max_order_quantity": ("abc", "not a number"),
            "max_working_orders": ("2.5", "whole number"),
            "max_position_total": ("0", "above 0"),
            "collar_fraction": ("1.5", "0 to 1"),
            "opening_cutoff": ("25:00", "HH:MM"),
            "max_net_delta": ("-3", "above 0"),
            "max_quote_age_ms": ("inf", "not a number"),
        }
        for name, (value, _) in bad.items():
            form.set_value(name, value)
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is form  # invalid: not dismissed
        assert app.results == []
        for name, (_, message) in bad.items():
            assert message in form.error_of(name), name
        assert "7 values to correct" in text(form, "#status")
        assert form.error_of("daily_loss_limit") == ""
        focused = app.focused
        assert isinstance(focused, Input)
        assert focused.id == form.ids["max_working_orders"]  # the first field in error

        for name in bad:
            form.set_value(name, form.current.get(name, ""))
        form.set_value("daily_loss_limit", "6000")  # above the hard loss limit
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is form
        assert "must be at least daily_loss_limit" in form.error_of("daily_loss_limit")

        form.set_value("daily_loss_limit", "1500")
        form.set_value("max_order_quantity", " 5 ")
        form.set_value("opening_cutoff", "9:30")
        form.set_value("restricted", "spy 250317c00590000, ")
        await pilot.click("#submit")
        await pilot.pause()
        assert app.results == [
            {
                "daily_loss_limit": "1500",
                "max_order_quantity": "5",
                "opening_cutoff": "09:30",
                "restricted": "SPY 250317C00590000",
            }
        ]

        # a value the agent reports oddly does not block changing another one
        odd = LimitsForm({"max_working_orders": "nan", "daily_loss_limit": "nan", "hard_loss_limit": "5000"})
        await open_dialog(app, pilot, odd)
        odd.set_value("hard_loss_limit", "6000")
        await pilot.click("#submit")
        await pilot.pause()
        assert app.results[-1] == {"hard_loss_limit": "6000"}

        await open_dialog(app, pilot, LimitsForm(CURRENT))
        await pilot.press("escape")
        await pilot.pause()
        assert app.results[-1] is None


# ---------------------------------------------------------------- proposals


PROPOSAL = pb.Proposal(
    id="p-7",
    signal_id="s-3",
    kind="vertical",
    quantity=2,
    limit_price="0.45",
    edge=12.5,
    explanation="590/591 call vertical offered below its intrinsic spread",
    status="pending",
    expires_ns=1_742_234_400_000_000_000,  # 2025-03-17 14:00 New York
    legs=[
        pb.Leg(strike=590, right=pb.CALL, side="BUY", quantity=2, price=1.2, displayed_size=10),
        pb.Leg(strike=591, right=pb.CALL, side="SELL", quantity=2, price=0.75),
    ],
)


async def test_proposal_dialog_confirm_reject_or_close() -> None:
    app = Host()
    async with app.run_test(size=SIZE) as pilot:
        dialog = ProposalDialog(PROPOSAL)
        await open_dialog(app, pilot, dialog)
        what = text(dialog, "#what")
        assert "vertical for signal s-3" in what
        assert "edge: $12.50 per unit, $25.00 for 2" in what
        assert "BUY 2 590C @ 1.20 (shown 10)" in what
        assert "SELL 2 591C @ 0.75" in what
        assert "expires: 14:00:00 ET" in what
        assert "below its intrinsic spread" in what
        assert app.focused is not None
        assert app.focused.id == "close"
        await pilot.press("enter")  # the default closes without deciding
        await pilot.pause()
        await open_dialog(app, pilot, ProposalDialog(PROPOSAL))
        await pilot.press("tab", "enter")  # Reject
        await pilot.pause()
        await open_dialog(app, pilot, ProposalDialog(PROPOSAL))
        await pilot.press("tab", "tab", "enter")  # Confirm
        await pilot.pause()
        await open_dialog(app, pilot, ProposalDialog(PROPOSAL))
        await pilot.press("escape")
        await pilot.pause()
        assert app.results == [None, False, True, None]


# ---------------------------------------------------------------- order ticket


async def live_view(client: AgentClient) -> AgentView:
    view = AgentView(target=client.target)
    view.apply(pb.Envelope(seq=1, snapshot=await client.snapshot()))
    return view


def send_button(dialog: OrderTicketDialog) -> Button:
    return dialog.query_one("#send", Button)


async def test_order_ticket_previews_before_send_against_a_real_executor(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = await ready_executor(start_agent, tmp_path)
    async with AgentClient(agent.address) as client:
        op = Operator(client, "alice")
        view = await live_view(client)
        atm = view.atm_strike()
        assert atm is not None
        call = view.quotes[(atm, pb.CALL)]
        app = Host()
        async with app.run_test(size=SIZE) as pilot:
            dialog = OrderTicketDialog(view, op.preview_order, strike=atm, right="C")
            await open_dialog(app, pilot, dialog)
            # preset from the chain row: one contract at the mid, on the tick
            assert dialog.query_one("#legs", Input).value == f"{atm:g}C"
            assert dialog.query_one("#quantity", Input).value == "1"
            price = float(dialog.query_one("#price", Input).value)
            assert call.bid <= price <= call.ask
            assert f"bid {call.bid:.2f} / ask {call.ask:.2f}" in text(dialog, "#market")
            assert send_button(dialog).disabled  # no preview yet
            assert app.focused is dialog.query_one("#quantity", Input)

            dialog.query_one("#price", Input).value = f"{call.ask:.2f}"
            await pilot.press("enter")  # Enter in a field runs the preview
            await until(pilot, lambda: not send_button(dialog).disabled)
            checks = text(dialog, "#checks")
            assert "preview: would be sent" in checks
            assert "would be sent" in checks
            assert not (await client.snapshot()).orders  # a preview sends nothing

            # a changed field needs a new preview
            dialog.query_one("#quantity", Input).value = "2"
            await pilot.pause()
            assert send_button(dialog).disabled
            assert "changed since the preview" in text(dialog, "#checks")
            await pilot.click("#send")  # a disabled Send does nothing
            await pilot.pause()
            assert app.results == []
            side = dialog.query_one("#side", Select)
            side.value = "SELL"
            await pilot.pause()
            assert send_button(dialog).disabled
            side.value = "BUY"
            dialog.query_one("#quantity", Input).value = "1"
            await pilot.pause()
            assert not send_button(dialog).disabled  # back to exactly the previewed ticket
            assert "preview: would be sent" in text(dialog, "#checks")

            dialog.query_one("#quantity", Input).value = "2"
            await pilot.click("#preview")
            await until(pilot, lambda: "previewing" not in text(dialog, "#checks"))
            assert not send_button(dialog).disabled, text(dialog, "#checks")
            await pilot.click("#send")
            await pilot.pause()
            ticket = app.results[-1]
            assert isinstance(ticket, OrderTicket)
            assert ticket == OrderTicket.parse("BUY", "2", f"{atm:g}C", f"{call.ask:.2f}")
            sent = await op.submit_order(ticket)  # what the app does with the ticket
            assert sent.ok, sent
            assert [o.client_order_id for o in (await client.snapshot()).orders] == [sent.client_order_id]

            # cancelled ticket
            await open_dialog(app, pilot, OrderTicketDialog(view, op.preview_order, strike=atm, right=pb.PUT))
            assert app.screen.query_one("#legs", Input).value == f"{atm:g}P"
            await pilot.press("escape")
            await pilot.pause()
            assert app.results[-1] is None


async def test_order_ticket_shows_the_denials_and_keeps_send_off(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = await ready_executor(start_agent, tmp_path)
    async with AgentClient(agent.address) as client:
        op = Operator(client, "alice")
        view = await live_view(client)
        atm = view.atm_strike()
        assert atm is not None
        assert (await op.halt("test")).ok
        app = Host()
        async with app.run_test(size=SIZE) as pilot:
            preset = OrderTicket.parse("BUY", "50", f"{atm:g}C,-{atm + 1:g}C", "0.50")
            dialog = OrderTicketDialog(view, op.preview_order, ticket=preset)
            await open_dialog(app, pilot, dialog)
            assert dialog.query_one("#legs", Input).value == f"{atm:g}C,-{atm + 1:g}C"
            assert "net per unit" in text(dialog, "#market")
            await pilot.click("#preview")
            await until(pilot, lambda: "refused" in text(dialog, "#checks"))
            checks = text(dialog, "#checks")
            assert "preview: would be refused" in checks
            assert "  - " in checks  # one line per denial
            assert "halted" in checks.lower()
            assert "max" in checks  # and the quantity limit
            assert dialog.query_one("#checks").has_class("refused")
            assert send_button(dialog).disabled
            assert app.screen is dialog


async def test_order_ticket_rejects_malformed_fields_and_stale_previews() -> None:
    calls: list[OrderTicket] = []

    async def preview(ticket: OrderTicket) -> ActionResult:
        calls.append(ticket)
        return ActionResult(True, "preview: would be sent", f"{ticket.describe()} would be sent", None)

    async def broken(ticket: OrderTicket) -> ActionResult:
        raise RuntimeError("callback bug")

    app = Host()
    async with app.run_test(size=SIZE) as pilot:
        dialog = OrderTicketDialog(None, preview, strike=590.0, right="C", preview_ttl_s=600.0)
        await open_dialog(app, pilot, dialog)
        assert dialog.query_one("#price", Input).value == ""  # no quotes known: no preset price
        assert "bad limit price" in text(dialog, "#error")
        for field, value, message in (
            ("#price", "1.234", "not on the tick"),
            ("#price", "0", "above 0"),
            ("#legs", "59X", "bad leg"),
            ("#quantity", "", "quantity"),
        ):
            dialog.query_one(field, Input).value = value
            await pilot.click("#preview")
            await pilot.pause()
            assert message in text(dialog, "#error"), field
            dialog.query_one("#legs", Input).value = "590C"
            dialog.query_one("#quantity", Input).value = "1"
            dialog.query_one("#price", Input).value = "1.00"
        assert calls == []  # nothing malformed reached the agent
        await pilot.pause()
        assert text(dialog, "#error") == ""

        # Enter in a field previews too; a click right after the error line vanished could hit the
        # button's old place while the layout settles
        dialog.query_one("#price", Input).focus()
        await pilot.press("enter")
        await until(pilot, lambda: not send_button(dialog).disabled)
        assert calls == [OrderTicket.parse("BUY", "1", "590C", "1.00")]
        dialog.preview_ttl_s = 0.05  # the preview ages past its TTL (a long TTL above: no race under load)
        await until(pilot, lambda: send_button(dialog).disabled)
        assert "preview again" in text(dialog, "#checks")
        await pilot.click("#send")
        await pilot.pause()
        assert app.screen is dialog

        dialog.preview_fn = broken  # a failing callback is shown, not raised
        await pilot.click("#preview")
        await until(pilot, lambda: "preview failed" in text(dialog, "#checks"))
        assert "callback bug" in text(dialog, "#checks")
        assert send_button(dialog).disabled
        await pilot.press("escape")
        await pilot.pause()
        assert app.results == [None]
