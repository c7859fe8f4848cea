"""The console's chain screen under Textual's pilot, against real agents over gRPC."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from textual.widgets import DataTable, Static

from console.app import ConsoleApp
from console.client import ConnectionState
from tests.console.conftest import StartAgent


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def status_text(app: ConsoleApp) -> str:
    return str(app.chain_screen.query_one("#status", Static).content)


async def test_chain_screen_shows_live_ladder_around_the_money(console_agent: StartAgent) -> None:
    agent = console_agent()
    app = ConsoleApp(agent.address)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(lambda: app.chain_screen.state is ConnectionState.LIVE and len(app.view.quotes) > 50)
        await pilot.pause(0.3)
        table = app.chain_screen.query_one("#ladder", DataTable)
        assert table.row_count == 25  # 12 strikes each side of the money and the money
        strikes = [float(str(k.value)) for k in table.rows]
        assert strikes == sorted(strikes)
        atm = app.view.atm_strike()
        assert atm is not None
        assert math.isfinite(app.view.underlying)
        assert abs(atm - app.view.underlying) <= 0.5
        assert strikes[12] == atm  # the money sits in the middle of the ladder
        row = table.get_row(str(atm))
        assert str(row[4]) == f"{atm:g}"
        call_bid, call_ask = float(str(row[2])), float(str(row[3]))
        assert 0 < call_bid < call_ask
        text = status_text(app)
        assert "SPY" in text
        assert "LIVE" in text
        assert "0DTE 2025-03-17" in text
        # the ladder keeps updating: the sequence moves on
        seq = app.view.last_seq
        await wait_for(lambda: app.view.last_seq > seq + 10)


async def test_lost_agent_is_shown_stale_and_resumed_without_gap(console_agent: StartAgent) -> None:
    agent = console_agent()
    port = agent.port
    app = ConsoleApp(agent.address)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(lambda: app.chain_screen.state is ConnectionState.LIVE and len(app.view.quotes) > 50)
        agent.stop()
        await wait_for(lambda: app.chain_screen.state is ConnectionState.RECONNECTING)
        await pilot.pause(0.2)
        assert app.chain_screen.has_class("stale")
        assert "RECONNECTING" in status_text(app)
        quotes_before = len(app.view.quotes)
        assert quotes_before > 50  # the last state is kept, marked stale
        # a new agent on the same port: the console resumes with a fresh snapshot of the new run
        console_agent(port=port, agent_id="test2")
        await wait_for(lambda: app.chain_screen.state is ConnectionState.LIVE, timeout=15)
        await wait_for(lambda: app.view.agent_id == "test2" and len(app.view.quotes) > 50)
        await pilot.pause(0.2)
        assert not app.chain_screen.has_class("stale")


async def test_center_key_and_quit(console_agent: StartAgent) -> None:
    agent = console_agent()
    app = ConsoleApp(agent.address)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(lambda: len(app.view.quotes) > 50)
        await pilot.press("down", "down", "c")
        await pilot.pause(0.2)
        assert app.chain_screen.query_one("#ladder", DataTable).row_count == 25
        await pilot.press("q")
    assert app.return_code == 0 or app.return_code is None


async def test_signals_are_listed_and_their_contracts_highlighted(console_agent: StartAgent) -> None:
    agent = console_agent(roles="feed,detector", sim={"strikes_each_side": 25, "anomaly_rate_per_min": 60.0})
    app = ConsoleApp(agent.address)
    async with app.run_test(size=(130, 50)) as pilot:
        await wait_for(lambda: len(app.view.signals) > 0, timeout=20)
        await pilot.pause(0.3)
        table = app.chain_screen.query_one("#signals", DataTable)
        assert table.row_count == len(app.view.signals) > 0
        sig = next(iter(app.view.signals.values()))
        row = [str(c) for c in table.get_row(sig.id)]
        assert row[0] == sig.kind  # the explanation may have moved on with the quotes since
        assert row[3]
        flagged = app.view.flagged()
        assert {(c.strike, int(c.right)) for c in sig.contracts} <= set(flagged)
