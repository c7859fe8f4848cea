"""``spy-console --replay``: a recording played through the console's screens under Textual's pilot,
the replay agent embedded as ``--replay`` runs it, driven by the replay keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from textual.widgets import Input, Static
from typer.testing import CliRunner

from agent.feeds.replay import ReplayControl
from agent.runtime import AgentThread
from console.app import console_command
from console.format import ny_time
from console.replay import GoToTimeDialog, ReplayBar, ReplayConsoleApp, start_replay_agent
from proto.spyops.v1 import spyops_pb2 as pb
from tests.agent.test_replay import fold, make_recording
from tests.conftest import CSV_0317
from tests.console.console_helpers import wait_for

MINUTE = 60 * 1_000_000_000


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_recording(tmp_path_factory.mktemp("rec") / "console.spyrec", minutes=4.0)


@pytest.fixture
def replay(recording: Path) -> Iterator[tuple[AgentThread, ReplayControl]]:
    handle, control = start_replay_agent(recording, 2.0)
    yield handle, control
    handle.stop()


def screen_text(app: ReplayConsoleApp) -> str:
    """Everything the static widgets of the screen in front show (status line, replay bar, ...)."""
    return "\n".join(str(w.content) for w in app.screen.query(Static))


def bar(app: ReplayConsoleApp) -> str:
    bars = app.screen.query(ReplayBar)
    return str(bars.first().content) if bars else ""


def ladder_matches(app: ReplayConsoleApp, recording: Path, at_ns: int) -> bool:
    book, _tick = fold(recording, at_ns)
    quotes = app.view.quotes
    expected = {(k[0], pb.CALL if k[1].value == "C" else pb.PUT): q for k, q in book.quotes.items()}
    return set(quotes) == set(expected) and all(
        quotes[k].bid == pytest.approx(q.bid) and quotes[k].ask == pytest.approx(q.ask)
        for k, q in expected.items()
    )


async def test_replay_plays_pauses_and_seeks_through_the_screens(
    replay: tuple[AgentThread, ReplayControl], recording: Path
) -> None:
    handle, control = replay
    app = ReplayConsoleApp(handle.address, control, recording.name)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(lambda: len(app.view.quotes) > 20 and bool(app.screen.query(ReplayBar)))
        await wait_for(lambda: "PLAYING" in bar(app))
        assert recording.name in bar(app)
        assert "2x" in bar(app)

        await pilot.press("space")
        assert control.paused
        await wait_for(lambda: "PAUSED" in bar(app))
        await pilot.pause(0.3)
        held = control.status().position_ns
        seq = app.view.last_seq
        await pilot.pause(0.5)
        assert control.status().position_ns == held  # nothing plays while paused

        await pilot.press("right")  # one minute on
        target = held + MINUTE
        await wait_for(lambda: app.view.last_ts_ns == target)
        await pilot.pause(0.3)  # a frame or two
        assert app.view.last_seq > seq  # a seek is new events, never a rewound sequence
        assert control.status().position_ns == target
        assert ny_time(target) in screen_text(app)  # the status line and the bar show the replayed time
        assert ladder_matches(app, recording, target)

        await pilot.press("shift+left")  # ten minutes back: the start of the recording
        start = control.status().start_ns
        await wait_for(lambda: app.view.last_ts_ns == start)
        await pilot.pause(0.3)
        assert ny_time(start) in screen_text(app)
        assert ladder_matches(app, recording, start)
        assert "PAUSED" in bar(app)

        before = control.status().moments
        await pilot.press("full_stop")
        await wait_for(lambda: control.status().moments == before + 1)

        await pilot.press("g")
        await wait_for(lambda: isinstance(app.screen, GoToTimeDialog))
        await pilot.press(*"9:99")
        await pilot.press("enter")
        assert isinstance(app.screen, GoToTimeDialog)  # a bad time is said, not taken
        assert "HH:MM" in str(app.screen.query_one("#goto-error", Static).content)
        field = app.screen.query_one(Input)
        field.value = ""
        goto = ny_time(start + 2 * MINUTE + 30 * 1_000_000_000)
        await pilot.press(*goto, "enter")
        await wait_for(lambda: not isinstance(app.screen, GoToTimeDialog))
        await wait_for(lambda: ny_time(app.view.last_ts_ns) == goto)
        await pilot.pause(0.3)
        assert goto in screen_text(app)

        await pilot.press("plus")
        assert control.speed == 5.0
        await pilot.press("minus", "minus")
        assert control.speed == 1.0
        await pilot.press("space")
        assert not control.status().paused
        await wait_for(lambda: app.view.last_ts_ns > control.status().start_ns + 2 * MINUTE + 31 * 10**9)


async def test_go_to_dialog_can_be_cancelled(
    replay: tuple[AgentThread, ReplayControl], recording: Path
) -> None:
    handle, control = replay
    app = ReplayConsoleApp(handle.address, control, recording.name)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(lambda: len(app.view.quotes) > 20)
        await pilot.press("space")
        await pilot.press("g")
        await wait_for(lambda: isinstance(app.screen, GoToTimeDialog))
        await pilot.press("space", "left")  # typed into the dialog, not the replay's keys
        assert control.paused
        assert control.status().seeks == 0
        await pilot.press("escape")
        await wait_for(lambda: not isinstance(app.screen, GoToTimeDialog))
        await pilot.pause(0.2)
        assert control.status().seeks == 0


async def test_ib_csv_replay_shows_the_snapshot_and_ends() -> None:
    handle, control = start_replay_agent(CSV_0317, 1.0)
    try:
        app = ReplayConsoleApp(handle.address, control, CSV_0317.name)
        async with app.run_test(size=(140, 40)) as pilot:
            await wait_for(lambda: len(app.view.quotes) == 114 and "END" in bar(app))
            await pilot.pause(0.3)
            assert app.view.expiry == "20250317"
            assert ny_time(control.status().end_ns) in bar(app)
            await pilot.press("left")  # at the start already: lands there again, still consistent
            await wait_for(lambda: control.status().seeks == 1)
            await wait_for(lambda: len(app.view.quotes) == 114)
    finally:
        handle.stop()


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(console_command)
    return app


def test_replay_option_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli(), ["--replay", str(tmp_path / "missing.spyrec")])
    assert missing.exit_code == 3
    assert "does not exist" in missing.output
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 4)
    bad = runner.invoke(cli(), ["--replay", str(junk)])
    assert bad.exit_code == 3
    assert "neither a recording nor an IB chain CSV" in bad.output
    fast = runner.invoke(cli(), ["--replay", str(CSV_0317), "--speed", "100"])
    assert fast.exit_code == 3
    assert "0.25x..50x" in fast.output
    both = runner.invoke(cli(), ["--replay", str(CSV_0317), "--demo"])
    assert both.exit_code == 2
    assert "--replay runs its own agent" in both.output
