"""Every console screen and every operator action flow under Textual's pilot, against a real agent
(simulated market, detector and an executor on the paper broker, proposing trades)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Button, Input

from console.actions import ActionResult
from console.app import ConsoleApp
from console.model import CALL
from console.screens.base import ConsoleScreen, Table
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
from tests.console.conftest import StartAgent
from tests.console.console_helpers import console_for, executor_overrides, press, screen_text, wait_for

SIZE = (150, 50)


@pytest.fixture
def trading_agent(console_agent: StartAgent, tmp_path: Path) -> str:
    return console_agent(agent_id="demo", **executor_overrides(tmp_path)).address


def shown(app: ConsoleApp) -> Screen[object]:
    """The screen on top (a function, so that type narrowing does not outlive a key press)."""
    return app.screen


async def showing(app: ConsoleApp, cls: type[Screen[Any]]) -> None:
    """Wait until the screen on top is a ``cls`` (a key press is handled asynchronously)."""

    def ready() -> bool:
        screen = app.screen
        mounted = isinstance(screen, cls) and screen.is_mounted
        return mounted and (isinstance(screen, ConsoleScreen) or screen.focused is not None)

    await wait_for(ready, timeout=5, what=f"the {cls.__name__}")
    await asyncio.sleep(0.05)


async def ready(app: ConsoleApp) -> None:
    view = app.model.views[0]
    await wait_for(lambda: view.live and len(view.quotes) > 50 and view.risk is not None, what="a live agent")


async def last_result(app: ConsoleApp, count: int) -> None:
    await wait_for(lambda: len(app.results) >= count, what=f"action result #{count}")


async def test_every_screen_by_its_key(trading_agent: str) -> None:
    app = console_for(trading_agent)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app)
        await wait_for(lambda: bool(app.model.open_signals()) and app.model.smile() is not None, timeout=20)
        view = app.model.views[0]

        await press(app, "2")
        await showing(app, SmileScreen)
        smile = shown(app)
        assert isinstance(smile, SmileScreen)
        await wait_for(lambda: bool(smile.points.get("mid")) and bool(smile.points.get("fit")))
        assert all(5 < iv < 300 for _k, iv in smile.points["mid"])
        assert len(smile.points["bid"]) >= len(smile.points["mid"]) // 2
        assert "Implied volatility" in screen_text(app)

        await press(app, "3")
        await showing(app, UnderlyingScreen)
        und = shown(app)
        assert isinstance(und, UnderlyingScreen)
        await wait_for(lambda: und.plotted_points > 0)
        text = screen_text(app)
        assert "SPY" in text
        assert "prev close" in text
        assert "intraday" in text

        await press(app, "4")
        await showing(app, SignalsScreen)
        sig_screen = shown(app)
        assert isinstance(sig_screen, SignalsScreen)
        await pilot.pause(0.6)
        table = sig_screen.query_one("#signal-list", Table)
        assert table.row_count >= len(app.model.open_signals()) > 0
        sig = sig_screen.selected_signal()
        assert sig is not None
        assert sig.kind in screen_text(app)
        assert "edge $" in screen_text(app)

        await press(app, "5")
        await showing(app, OrdersScreen)
        await pilot.pause(0.3)
        assert "working" in screen_text(app)
        assert "Fills" in screen_text(app)

        await press(app, "6")
        await showing(app, PositionsScreen)
        await pilot.pause(0.3)
        text = screen_text(app)
        assert "realized" in text
        assert "unrealized" in text
        assert "fees" in text
        assert "portfolio greeks" in text

        await press(app, "7")
        await showing(app, RiskScreen)
        await pilot.pause(0.3)
        limits = shown(app).query_one("#limit-list", Table)
        assert {"max_working_orders", "daily_loss_limit", "hard_loss_limit"} <= set(limits.drawn)
        text = screen_text(app)
        assert "ACTIVE" in text
        assert "disarmed" in text
        assert "daily P&L" in text
        assert "leader" in text

        await press(app, "8")
        await showing(app, AgentsScreen)
        await wait_for(lambda: view.info is not None and math.isfinite(view.info_latency_ms))
        await pilot.pause(0.6)
        text = screen_text(app)
        assert "feed,detector,executor" in text
        assert "leader" in text
        assert "LIVE" in text

        await press(app, "9")
        await showing(app, LogScreen)
        await pilot.pause(0.2)
        assert "agent.started" in screen_text(app)
        await press(app, "f")
        await showing(app, LogScreen)
        log_screen = shown(app)
        assert isinstance(log_screen, LogScreen)
        await wait_for(lambda: log_screen.filter == "notices", timeout=5)

        await press(app, "0")
        await showing(app, HelpScreen)
        await pilot.pause(0.2)
        text = screen_text(app)
        for words in ("Halt", "Flatten", "Arm", "Disarm", "Limits", "Order ticket", "Cancel order", "ctrl+p"):
            assert words in text, words

        await press(app, "1")
        await showing(app, ChainScreen)
        # hidden screens are not redrawn: only the chain's frame counter moves now
        frames = {name: s.frames for name, s in app.console_screens.items()}
        await pilot.pause(0.5)
        assert app.console_screens["chain"].frames > frames["chain"]
        assert all(s.frames == frames[n] for n, s in app.console_screens.items() if n != "chain")


async def test_arm_and_disarm_show_their_result_and_audit(trading_agent: str) -> None:
    app = console_for(trading_agent, operator="alice")
    async with app.run_test(size=SIZE) as pilot:
        await ready(app)
        view = app.model.views[0]
        await press(app, "a")
        await last_result(app, 1)
        assert app.results[0].ok
        assert app.results[0].title == "armed"
        await wait_for(lambda: view.risk is not None and view.risk.armed)
        await press(app, "d")
        await last_result(app, 2)
        assert app.results[1].title == "disarmed"
        await wait_for(lambda: view.risk is not None and not view.risk.armed)
        # the agent's audit records who sent them; the console's panel shows its own results too
        await wait_for(lambda: sum(e.kind == "command" for e in view.log) >= 2)
        commands = [e for e in view.log if e.kind == "command"]
        assert all(e.operator == "alice" for e in commands)
        await press(app, "9")
        await pilot.pause(0.3)
        text = screen_text(app)
        assert "set_armed" in text
        assert "alice" in text
        assert "armed" in text


async def test_an_unanswered_command_is_resent_with_its_key_and_runs_at_most_once(trading_agent: str) -> None:
    """A command whose answer never came may have run: r resends it under the same idempotency key, so
    the executor runs it once whether or not the first one arrived."""
    app = console_for(trading_agent, operator="alice")
    async with app.run_test(size=SIZE):
        await ready(app)
        view = app.model.views[0]
        op = app.operators[view.target]
        # 1. the first send reached the executor, only its answer was lost
        arrived = op.command()
        arrived.set_armed.armed = True
        first = await op.send(arrived)
        assert first.ok
        assert not first.replayed
        lost = ActionResult(
            False, "arm: no answer", "deadline exceeded", None, command=arrived, retryable=True
        )
        app.report(view, lost)
        assert app.unanswered is not None
        await press(app, "r")
        await last_result(app, 2)
        again = app.results[-1]
        assert again.ok
        assert again.replayed
        assert again.key == arrived.idempotency_key
        assert app.unanswered is None
        # 2. the first send never arrived: the resend runs it, once
        never = op.command()
        never.set_armed.armed = False
        app.report(
            view, ActionResult(False, "disarm: no answer", "unreachable", None, command=never, retryable=True)
        )
        await press(app, "r")
        await last_result(app, 4)
        assert app.results[-1].ok
        assert not app.results[-1].replayed
        await wait_for(lambda: view.risk is not None and not view.risk.armed)
        # nothing left to resend
        await press(app, "r")
        assert len(app.results) == 4


async def test_halt_needs_a_confirmation_and_cancelling_sends_nothing(trading_agent: str) -> None:
    app = console_for(trading_agent)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app)
        view = app.model.views[0]
        await press(app, "H")
        await showing(app, HaltDialog)
        assert "cancel every working order" in screen_text(app)
        await press(app, "escape")
        await wait_for(lambda: not isinstance(shown(app), HaltDialog))
        await pilot.pause(0.3)
        assert app.results == []
        assert any("halt cancelled" in e.text for e in app.model.console_log)
        assert view.risk is not None
        assert view.risk.trading_state == "ACTIVE"
        # the reason is required, then the halt goes
        await press(app, "H")
        await showing(app, HaltDialog)
        await press(app, "enter")  # no reason yet: the dialog stays
        await showing(app, HaltDialog)
        shown(app).query_one("#reason", Input).value = "test halt"
        await press(app, "enter")
        await last_result(app, 1)
        assert app.results[0].ok, app.results[0].text()
        assert app.results[0].title == "halted"
        await wait_for(lambda: view.risk is not None and view.risk.trading_state == "HALTED")
        # back to ACTIVE through the palette's trading state entry (a confirmation, cancelled first)
        app.action_trading_state("ACTIVE")
        await pilot.pause(0.1)
        await showing(app, ConfirmDialog)
        await press(app, "escape")
        await showing(app, ChainScreen)
        assert len(app.results) == 1
        app.action_trading_state("ACTIVE")
        await pilot.pause(0.1)
        await pilot.click("#confirm")
        await last_result(app, 2)
        assert app.results[1].ok, app.results[1].text()
        await wait_for(lambda: view.risk is not None and view.risk.trading_state == "ACTIVE")


async def test_flatten_names_the_positions_and_can_be_cancelled(trading_agent: str) -> None:
    app = console_for(trading_agent)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app)
        await press(app, "F")
        await showing(app, FlattenDialog)
        assert "close every open position" in screen_text(app)
        await pilot.click("#cancel")
        await pilot.pause(0.2)
        assert app.results == []
        assert any("flatten cancelled" in e.text for e in app.model.console_log)
        await press(app, "F")
        shown(app).query_one("#reason", Input).value = "end of test"
        await press(app, "enter")
        await last_result(app, 1)
        result = app.results[0]
        assert result.title in ("flattening", "flatten incomplete"), result.text()
        assert any("flatten" in e.text for e in app.model.console_log)


async def test_limits_form_sets_a_limit_and_cancel_sends_nothing(trading_agent: str) -> None:
    app = console_for(trading_agent)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app)
        view = app.model.views[0]
        await press(app, "l")
        await showing(app, LimitsForm)
        await press(app, "escape")
        await showing(app, ChainScreen)
        assert app.results == []
        await press(app, "l")
        await showing(app, LimitsForm)
        form = shown(app)
        assert isinstance(form, LimitsForm)
        form.set_value("max_working_orders", "7")
        await pilot.click("#submit")
        await last_result(app, 1)
        assert app.results[0].ok, app.results[0].text()
        assert app.results[0].title == "limits set"

        def max_working() -> float:
            assert view.risk is not None
            return next(lim.value for lim in view.risk.limits if lim.name == "max_working_orders")

        await wait_for(lambda: max_working() == 7)


async def test_order_ticket_from_the_chain_previews_sends_and_cancels(trading_agent: str) -> None:
    app = console_for(trading_agent)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app)
        view = app.model.views[0]
        await pilot.pause(0.3)
        # cancelled ticket: nothing sent
        await press(app, "o")
        await showing(app, OrderTicketDialog)
        await press(app, "escape")
        await showing(app, ChainScreen)
        assert app.results == []
        # Enter on the ladder opens a ticket preset with the contract under the cursor
        await press(app, "left")  # the call side
        chosen = app.chain_screen.selected_contract()
        assert chosen is not None
        assert chosen[1] == CALL
        await press(app, "enter")
        await showing(app, OrderTicketDialog)
        ticket = shown(app)
        assert isinstance(ticket, OrderTicketDialog)
        assert ticket.query_one("#legs", Input).value == f"{chosen[0]:g}C"
        q = view.quotes[chosen]
        ticket.query_one("#price", Input).value = f"{max(0.01, round(q.bid - 0.1, 2)):.2f}"  # rests
        await pilot.pause(0.1)
        assert ticket.query_one("#send", Button).disabled  # no preview yet
        await pilot.click("#preview")
        await wait_for(lambda: ticket.previewed is not None, what="the preview")
        previewed = ticket.previewed
        assert previewed is not None
        assert previewed[1].ok, previewed[1].text()
        await wait_for(lambda: not ticket.query_one("#send", Button).disabled)
        await pilot.click("#send")
        await last_result(app, 1)
        sent = app.results[0]
        assert sent.ok, sent.text()
        assert sent.title == "order sent"
        cid = sent.client_order_id
        await wait_for(lambda: cid in view.orders and view.orders[cid].state == "working")
        # the orders screen lists it; x cancels the selected order
        await press(app, "5")
        await showing(app, OrdersScreen)
        orders = shown(app)
        assert isinstance(orders, OrdersScreen)
        await pilot.pause(0.3)
        assert cid in orders.query_one("#order-list", Table).drawn
        orders.query_one("#order-list", Table).move_cursor(
            row=list(orders.query_one("#order-list", Table).drawn).index(cid)
        )
        orders.query_one("#order-list", Table).focus()
        await press(app, "x")
        await last_result(app, 2)
        assert app.results[1].ok, app.results[1].text()
        assert app.results[1].title == "cancel requested"
        await wait_for(lambda: view.orders[cid].state == "cancelled")


async def decide_one(app: ConsoleApp, pilot: Pilot[None], button: str, via_table: bool) -> str:
    """Open the dialog of a pending proposal and press ``button``; a proposal can expire (its signal
    resolved) before the decision reaches the executor: then the refusal is shown and we try another."""
    view = app.model.views[0]
    for _attempt in range(5):
        await wait_for(lambda: len(view.pending_proposals()) >= 1, timeout=60, what="a pending proposal")
        pending = view.pending_proposals()[0]
        count = len(app.results)
        if via_table:
            await showing(app, SignalsScreen)
            signals = shown(app)
            assert isinstance(signals, SignalsScreen)
            table = signals.query_one("#proposal-list", Table)
            signals.redraw(force=True)
            table.focus()
            table.move_cursor(row=list(table.drawn).index(pending.id))
            await press(app, "enter")
        else:
            app.action_decide_proposal(pending.id)
            await pilot.pause(0.05)
        await showing(app, ProposalDialog)
        dialog = shown(app)
        assert isinstance(dialog, ProposalDialog)
        assert dialog.proposal.id == pending.id
        await pilot.click(button)
        await last_result(app, count + 1)
        result = app.results[-1]
        if result.ok:
            return pending.id
        assert "refused" in result.title, result.text()  # the reason is shown
        assert result.detail
    raise AssertionError("every proposal expired before the decision reached the executor")


async def test_proposals_confirm_reject_and_close(console_agent: StartAgent, tmp_path: Path) -> None:
    settings = executor_overrides(tmp_path)
    settings["clock"] = {"date": "2025-03-17", "speed": 1}  # signals (and their proposals) last longer
    settings["sim"] = {"strikes_each_side": 25, "anomaly_rate_per_min": 60.0}
    app = console_for(console_agent(agent_id="demo", **settings).address)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app)
        view = app.model.views[0]
        await press(app, "4")
        await showing(app, SignalsScreen)
        # closed without deciding: nothing sent
        await wait_for(lambda: len(view.pending_proposals()) >= 1, timeout=60, what="a proposal")
        app.action_decide_proposal(view.pending_proposals()[0].id)
        await pilot.pause(0.05)
        await showing(app, ProposalDialog)
        await press(app, "escape")
        await showing(app, SignalsScreen)
        assert app.results == []
        assert any("cancelled by the operator" in e.text for e in app.model.console_log)
        # reject, from the action; then confirm, from the proposals table (Enter)
        rejected = await decide_one(app, pilot, "#reject", via_table=False)
        assert app.results[-1].title == "proposal rejected"
        await wait_for(lambda: view.proposals[rejected].status == "rejected")
        # a confirmed proposal becomes a strategy order: the executor must be armed first
        await press(app, "a")
        await wait_for(lambda: view.risk is not None and view.risk.armed)
        confirmed = await decide_one(app, pilot, "#confirm", via_table=True)
        assert app.results[-1].title == "proposal confirmed"
        await wait_for(lambda: view.proposals[confirmed].status == "confirmed")


async def test_heartbeats_go_to_the_executor(trading_agent: str) -> None:
    app = console_for(trading_agent, heartbeat_s=0.2)
    async with app.run_test(size=SIZE):
        await ready(app)
        view = app.model.views[0]
        await wait_for(lambda: view.heartbeats >= 2, what="heartbeats in the agent's audit")
        assert app.heartbeat_results[view.target].ok


async def test_actions_without_an_executor_say_why(console_agent: StartAgent) -> None:
    agent = console_agent(roles="feed", clock={"date": "2025-03-17", "speed": 4})
    app = console_for(agent.address)
    async with app.run_test(size=SIZE) as pilot:
        view = app.model.views[0]
        await wait_for(lambda: view.live and view.info is not None)
        for key in ("a", "H", "F", "l", "o"):
            await press(app, key)
            await pilot.pause(0.05)
            await showing(app, ChainScreen)  # no dialog opened
        assert app.results == []
        assert sum("no executor connected" in e.text for e in app.model.console_log) == 5
        await press(app, "7")
        await pilot.pause(0.2)
        assert "no executor connected" in screen_text(app)
