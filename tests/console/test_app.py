"""The console's chain screen and its connections under Textual's pilot, against real agents over gRPC."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

from textual.widgets import Static

from console.app import ConsoleApp
from console.client import ConnectionState
from console.model import CALL, PUT
from console.screens.base import Table
from console.screens.charts import SmileScreen
from console.screens.info import AgentsScreen
from console.screens.trading import RiskScreen
from console.widgets.ladder import Ladder
from proto.spyops.v1 import spyops_pb2 as pb
from tests.console.conftest import StartAgent
from tests.console.console_helpers import (
    CuttableProxy,
    console_for,
    executor_overrides,
    press,
    screen_text,
    wait_for,
)

# a 4x market rather than 20x where keys are pressed: the pilot waits for the process to go idle
SLOW_CLOCK = {"date": "2025-03-17", "speed": 4}


def status_text(app: ConsoleApp) -> str:
    return str(app.chain_screen.query_one("#status", Static).content)


def ladder(app: ConsoleApp) -> Ladder:
    return app.chain_screen.query_one("#ladder", Ladder)


async def test_chain_screen_shows_live_ladder_around_the_money(console_agent: StartAgent) -> None:
    agent = console_agent()
    app = ConsoleApp(agent.address)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(lambda: app.chain_screen.state is ConnectionState.LIVE and len(app.view.quotes) > 50)
        await pilot.pause(0.3)
        table = ladder(app)
        assert table.row_count == 25  # 12 strikes each side of the money and the money
        strikes = [float(k) for k in table.keys]
        assert strikes == sorted(strikes)
        atm = app.view.atm_strike()
        assert atm is not None
        assert math.isfinite(app.view.underlying)
        assert abs(atm - app.view.underlying) <= 0.5
        assert strikes[12] == atm  # the money sits in the middle of the ladder
        await wait_for(lambda: ladder(app).get_row(str(atm))[6].strip() == f"{atm:g}")
        row = table.get_row(str(atm))
        c_delta, c_iv, c_bid, c_ask = float(row[0]), float(row[1]), float(row[4]), float(row[5])
        p_iv, p_delta = float(row[11]), float(row[12])
        assert 0 < c_bid < c_ask
        assert 0.3 < c_delta < 0.7
        assert -0.7 < p_delta < -0.3
        assert 3 < c_iv < 200
        assert 3 < p_iv < 200
        app.chain_screen.redraw()  # no await until the comparison: the model cannot move meanwhile
        atm = app.view.atm_strike()
        assert atm is not None
        q, drawn = app.view.quotes[(atm, CALL)], table.get_row(str(atm))
        assert (float(drawn[4]), float(drawn[5])) == (round(q.bid, 2), round(q.ask, 2))
        assert (atm, PUT) in app.view.quotes
        text = status_text(app)
        assert "SPY" in text
        assert "LIVE" in text
        assert "0DTE 2025-03-17" in text
        # the ladder keeps updating: the sequence moves on, and only changed rows are redrawn
        seq = app.view.last_seq
        await wait_for(lambda: app.view.last_seq > seq + 10)
        assert table.rows_updated > 0
        assert "Strike" in screen_text(app)


async def test_lost_agent_is_shown_stale_and_resumed_without_gap(console_agent: StartAgent) -> None:
    agent = console_agent()
    port = agent.port
    app = ConsoleApp(agent.address)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(lambda: app.chain_screen.state is ConnectionState.LIVE and len(app.view.quotes) > 50)
        live_background = ladder(app).rich_style.bgcolor
        agent.stop()
        await wait_for(lambda: app.chain_screen.state is ConnectionState.RECONNECTING)
        await pilot.pause(0.2)
        assert app.chain_screen.has_class("stale")
        assert ladder(app).rich_style.bgcolor != live_background  # the ladder is visibly marked
        assert "RECONNECTING" in status_text(app)
        assert "data stale" in status_text(app)
        # said at once, in a notification and in the audit panel
        assert any("lost" in n.message for n in app._notifications)
        assert any("connection lost" in e.text for e in app.model.console_log)
        quotes_before = len(app.view.quotes)
        assert quotes_before > 50  # the last state is kept, marked stale
        # a new agent on the same port: the console resumes with a fresh snapshot of the new run
        console_agent(port=port, agent_id="test2")
        await wait_for(lambda: app.chain_screen.state is ConnectionState.LIVE, timeout=15)
        await wait_for(lambda: app.view.agent_id == "test2" and len(app.view.quotes) > 50)
        await pilot.pause(0.2)
        assert not app.chain_screen.has_class("stale")


async def test_keyboard_navigation_center_and_quit(console_agent: StartAgent) -> None:
    agent = console_agent(clock=SLOW_CLOCK)
    app = ConsoleApp(agent.address)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(lambda: len(app.view.quotes) > 50)
        await pilot.pause(0.3)
        table = ladder(app)
        middle = table.cursor_row
        await press(app, "down", "down", "left")
        assert table.cursor_row == middle + 2
        assert app.chain_screen.selected_contract() == (float(table.keys[middle + 2]), CALL)
        await press(app, "right", "right")
        chosen = app.chain_screen.selected_contract()
        assert chosen is not None
        assert chosen[1] == PUT
        await press(app, "c")
        await pilot.pause(0.2)
        assert table.row_count == 25
        assert table.cursor_row == 12  # back on the money
        await press(app, "q")
    assert app.return_code == 0 or app.return_code is None


async def test_signals_are_listed_and_their_contracts_highlighted(console_agent: StartAgent) -> None:
    agent = console_agent(roles="feed,detector", sim={"strikes_each_side": 25, "anomaly_rate_per_min": 60.0})
    app = ConsoleApp(agent.address)
    async with app.run_test(size=(130, 50)):
        await wait_for(lambda: len(app.view.signals) > 0, timeout=20)
        app.chain_screen.redraw(force=True)  # the panel redraws twice a second: now, then compare
        table = app.chain_screen.query_one("#signals", Table)
        assert table.row_count == len(app.model.open_signals()) > 0
        flagged = app.model.flagged()
        sig = next(iter(app.view.signals.values()))
        assert {(c.strike, int(c.right)) for c in sig.contracts} <= set(flagged)
        # a flagged contract in the window is highlighted: its strike cell carries the kind's tag
        window = {float(k) for k in ladder(app).keys}
        await wait_for(
            lambda: any(
                len(ladder(app).get_row(str(k))[6].split()) > 1
                for (k, _r) in app.model.flagged()
                if k in window and str(k) in ladder(app).cells
            ),
            timeout=10,
            what="a highlighted strike",
        )


async def test_two_agents_merged_commands_to_the_executor_and_one_drops(
    console_agent: StartAgent, tmp_path: Path
) -> None:
    """A feed+detector agent and an executor agent on its stream: one console shows both; commands
    go to the executor; when the feed agent drops, that is said at once and its data is kept, stale."""
    feed = console_agent(
        agent_id="feed", roles="feed,detector", sim={"strikes_each_side": 25, "anomaly_rate_per_min": 30.0}
    )
    execs = executor_overrides(tmp_path)
    execs["roles"] = "executor"
    executor = console_agent(agent_id="exec", feed="upstream", upstream=feed.address, **execs)
    app = console_for(feed.address, executor.address)
    async with app.run_test(size=(140, 45)) as pilot:
        a, b = app.model.views
        await wait_for(lambda: a.live and b.live and len(a.quotes) > 50 and b.risk is not None)
        await wait_for(lambda: b.info is not None and a.info is not None)
        assert app.model.market() is a
        assert app.model.leader() is b  # the only executor
        assert app.model.executors() == [b]
        # arm goes to the executor, not to the feed agent
        await press(app, "a")
        await wait_for(lambda: bool(app.results), what="the arm result")
        assert app.results[-1].ok, app.results[-1].text()
        await wait_for(lambda: b.risk is not None and b.risk.armed)
        assert a.risk is None
        # the agents screen lists both with roles and the leader
        await press(app, "8")
        await pilot.pause(0.6)
        await wait_for(lambda: isinstance(app.screen, AgentsScreen), timeout=5)
        text = screen_text(app)
        assert "feed,detector" in text
        assert "executor" in text
        assert "leader" in text
        # the feed agent drops: the console says so at once and keeps its data, marked stale
        quotes = len(a.quotes)
        feed.stop()
        await wait_for(lambda: a.state is ConnectionState.RECONNECTING)
        assert any("agent0" in n.message and "lost" in n.message for n in app._notifications)
        assert len(a.quotes) == quotes
        await press(app, "1")
        await pilot.pause(0.3)
        assert "RECONNECTING" in status_text(app)
        assert b.live  # the executor's stream is not affected


async def test_command_palette_switches_screens(console_agent: StartAgent) -> None:
    agent = console_agent(clock=SLOW_CLOCK)
    app = ConsoleApp(agent.address)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(lambda: len(app.view.quotes) > 50)
        titles = [t for t, _h, _c in app.palette_commands()]
        for wanted in (
            "Show Risk",
            "Arm the executor",
            "Halt (kill switch)",
            "Order ticket",
            "Set risk limits",
        ):
            assert wanted in titles
        await press(app, "ctrl+p")
        await pilot.pause(0.3)
        await press(app, *"risk")
        await pilot.pause(0.5)
        await press(app, "enter")
        await wait_for(lambda: isinstance(app.screen, RiskScreen), timeout=5, what="the risk screen")
        await press(app, "2")
        await wait_for(lambda: isinstance(app.screen, SmileScreen), timeout=2)


def test_command_line_errors_are_said_with_exit_code_2(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from console.app import console_command

    cli = typer.Typer()
    cli.command()(console_command)
    runner = CliRunner()
    bad = runner.invoke(cli, ["--agent", "nope"])
    assert bad.exit_code == 2
    assert "not host:port" in bad.output
    both = runner.invoke(cli, ["--demo", "--agent", "127.0.0.1:5"])
    assert both.exit_code == 2
    assert "either --demo" in both.output
    config = tmp_path / "console.toml"
    config.write_text("operator = 3\n")
    wrong = runner.invoke(cli, ["--config", str(config)])
    assert wrong.exit_code == 2
    assert "key 'operator'" in wrong.output


def lost_said(app: ConsoleApp, times: int) -> bool:
    return sum("connection lost" in e.text for e in app.model.console_log) >= times


def more_than(items: list[tuple[int, int, str]], n: int) -> bool:
    return len(items) > n


async def test_a_cut_link_resumes_from_the_last_seq_without_gap(console_agent: StartAgent) -> None:
    """The agent keeps running while the link drops: the console says so, keeps its data stale, and
    resumes from its last seq + 1 (no snapshot, no gap, no duplicate) when the link is back."""
    agent = console_agent(clock=SLOW_CLOCK)
    proxy = CuttableProxy(agent.port)
    await proxy.start()
    app = console_for(proxy.address)
    seen: list[tuple[int, int, str]] = []
    view = app.model.views[0]
    fold = view.apply

    def recording_apply(env: pb.Envelope) -> None:
        seen.append((env.seq, env.first_seq, env.WhichOneof("payload") or ""))
        fold(env)

    view.apply = recording_apply  # type: ignore[method-assign]
    try:
        async with app.run_test(size=(120, 40)):
            await wait_for(lambda: view.live and len(view.quotes) > 50)
            incarnation, before = view.incarnation, len(seen)
            for cut in range(1, 3):
                proxy.cut()
                # the reconnect can be quick (jittered backoff from 0 s): count what the console said
                await wait_for(partial(lost_said, app, cut), timeout=10, what="the drop said")
                assert len(view.quotes) > 50  # the data is kept meanwhile
                await wait_for(lambda: view.live, timeout=15, what="the stream back")
                await wait_for(partial(more_than, seen, len(seen) + 20), what="envelopes after the reconnect")
            assert view.incarnation == incarnation
            assert [kind for _s, _f, kind in seen[before:]].count("snapshot") == 0  # resumed, not restarted
            for (prev, _pf, _pk), (seq, first, _k) in zip(seen[before:], seen[before + 1 :], strict=False):
                assert (first or seq) == prev + 1, f"gap or duplicate: {prev} then {first or seq}"
            assert app.streams[view.target].reconnects >= 2
            assert sum("connection lost" in e.text for e in app.model.console_log) >= 2
    finally:
        await proxy.close()
