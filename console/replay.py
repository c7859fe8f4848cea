"""``spy-console --replay FILE``: a recorded session played through the console's own screens.

The console embeds an agent (as ``--demo`` does) whose feed is the replay of FILE (a ``spyctl record``
recording or an IB chain CSV) and which runs the detector, so signals show as they would have live.
The console follows that agent over gRPC like any other and drives the replay directly through the
feed's thread-safe :class:`agent.feeds.replay.ReplayControl`:

    space          pause / play
    + / -          faster / slower (0.25x .. 50x, then as fast as possible)
    right / left   seek 1 minute forward / back      shift+right / shift+left: 10 minutes
    .              step: play the next recorded moment (pauses)
    g              go to a New York time (HH:MM or HH:MM:SS)

A seek lands on the state of the recording at the target time (a whole-chain update, the detector
started over: see :mod:`agent.feeds.replay`); the replay bar at the bottom of every screen shows the
position, the recorded span, the speed and whether it is paused.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Label, Static, TextArea

from agent.feeds.replay import ReplayControl, ReplayStatus, ny_time_to_ns
from console.app import ConsoleApp
from console.format import ny_time

if TYPE_CHECKING:
    from agent.runtime import AgentThread

BAR_REFRESH_S = 0.2
MINUTE_NS = 60 * 1_000_000_000
REPLAY_ACTIONS = frozenset(
    {"replay_pause", "replay_faster", "replay_slower", "replay_seek", "replay_step", "replay_goto"}
)


def start_replay_agent(path: Path, speed: float | None) -> tuple[AgentThread, ReplayControl]:
    """The embedded agent of ``--replay``: the replay feed of ``path`` and the detector, on a free
    127.0.0.1 port, in this process; and the control of its replay. ``speed`` None: as fast as possible.

    Raises ReplayError (not a replayable file), ValueError (speed out of range), ConfigError,
    AgentStartError or TimeoutError, each with a message for the operator."""
    from agent.runtime import AgentRuntime
    from agent.settings import load_settings

    settings = load_settings(
        None,
        agent_id="replay",
        roles=("feed", "detector"),
        feed="replay",
        replay={"path": path, "pace": "recorded"},
        server={"host": "127.0.0.1", "port": 0},
    )
    runtime = AgentRuntime(settings)
    assert runtime.replay is not None
    control = runtime.replay.control
    control.set_speed(speed)  # validated before anything runs
    control.hold_at_end = True  # the end of the file is a place to seek back from
    return runtime.start_in_thread(), control


def speed_label(speed: float | None) -> str:
    return "max" if speed is None else f"{speed:g}x"


def bar_text(name: str, st: ReplayStatus) -> Text:
    """``REPLAY file  ▶ 10:42:13 NY  10:30:00..16:00:00  [####----]  2x`` and the keys."""
    if st.finished:
        state, style = "■ END", "bold yellow"
    elif st.paused:
        state, style = "❚❚ PAUSED", "bold yellow"
    else:
        state, style = "▶ PLAYING", "bold green"
    span = f"{ny_time(st.start_ns)}..{ny_time(st.end_ns) if st.end_ns else '?'}"
    text = Text.assemble(
        (" REPLAY ", "bold reverse"),
        (f" {name}  ", ""),
        (state, style),
        "  ",
        (ny_time(st.position_ns), "bold"),
        " NY  ",
        (span, "dim"),
    )
    if st.end_ns > st.start_ns > 0:
        done = min(max((st.position_ns - st.start_ns) / (st.end_ns - st.start_ns), 0.0), 1.0)
        filled = round(done * 20)
        text.append(f"  [{'#' * filled}{'-' * (20 - filled)}]", "cyan")
    text.append(f"  {speed_label(st.speed)}", "bold")
    if st.error:
        text.append(f"  {st.error}", "bold red")
    text.append("   space pause  +/- speed  ←/→ 1 min  shift 10 min  . step  g go to", "dim")
    return text


class ReplayBar(Static):
    """The replay's position, span, speed and state, one line at the bottom of a screen."""

    def __init__(self, text: Text, id: str | None = None) -> None:
        super().__init__(text, id=id)
        self.shown = text.plain

    def update(self, content: Any = "", *, layout: bool = True) -> None:
        super().update(content, layout=layout)
        self.shown = content.plain if isinstance(content, Text) else str(content)

    DEFAULT_CSS = """
    ReplayBar {
        dock: bottom;
        height: 1;
        background: $panel;
    }
    """


class GoToTimeDialog(ModalScreen[int]):
    """Asks for a New York time on the replay's day; dismisses with the market time in ns."""

    DEFAULT_CSS = """
    GoToTimeDialog { align: center middle; }
    GoToTimeDialog > Vertical {
        width: 50; height: auto; border: thick $primary; background: $surface; padding: 1 2;
    }
    GoToTimeDialog #goto-error { color: $error; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, ref_ns: int) -> None:
        super().__init__()
        self.ref_ns = ref_ns

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Go to New York time (now {ny_time(self.ref_ns)}):")
            yield Input(placeholder="HH:MM or HH:MM:SS", id="goto-time")
            yield Label("", id="goto-error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            target = ny_time_to_ns(event.value, self.ref_ns)
        except ValueError as exc:
            self.query_one("#goto-error", Label).update(str(exc))
            return
        self.dismiss(target)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ReplayConsoleApp(ConsoleApp):
    """The console on an embedded replay agent, with the replay's keys and a replay bar."""

    TITLE = "SPY 0DTE console - replay"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "replay_pause", "Pause/play"),
        Binding("plus,equals_sign", "replay_faster", "Faster", key_display="+"),
        Binding("minus", "replay_slower", "Slower", key_display="-"),
        Binding("right", "replay_seek(1)", "+1 min", show=False, priority=True),
        Binding("left", "replay_seek(-1)", "-1 min", show=False, priority=True),
        Binding("shift+right", "replay_seek(10)", "+10 min", show=False, priority=True),
        Binding("shift+left", "replay_seek(-10)", "-10 min", show=False, priority=True),
        Binding("full_stop", "replay_step", "Step", key_display="."),
        Binding("g", "replay_goto", "Go to time"),
    ]

    def __init__(self, target: str, control: ReplayControl, name: str) -> None:
        super().__init__(target)
        self.replay = control
        self.replay_name = name

    def on_mount(self) -> None:  # Textual runs ConsoleApp.on_mount as well (handlers of every class)
        self.set_interval(BAR_REFRESH_S, self.refresh_replay_bar)
        self.call_after_refresh(self.refresh_replay_bar)

    # ----------------------------------------------------------------- the bar

    def refresh_replay_bar(self) -> None:
        """Keep a replay bar on the screen in front (mounted once per screen; dialogs have none)."""
        screen = self.screen
        if isinstance(screen, ModalScreen):
            return
        bars = screen.query(ReplayBar)
        text = bar_text(self.replay_name, self.replay.status())
        if not bars:
            bar = ReplayBar(text, id="replay-bar")
            if screen.query(Footer) or screen.query("#keys"):
                bar.styles.margin = (0, 0, 1, 0)  # above the key line, which docks at the bottom too
            screen.mount(bar)
        else:
            bar = bars.first()
            if text.plain != bar.shown:  # each screen's bar: one left behind catches up when shown
                bar.update(text)

    def palette_commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        replay: list[tuple[str, str, Callable[[], Any]]] = [
            ("Replay: pause / play", "space", self.action_replay_pause),
            ("Replay: faster", "+", self.action_replay_faster),
            ("Replay: slower", "-", self.action_replay_slower),
            ("Replay: 1 minute forward", "right", partial(self.action_replay_seek, 1)),
            ("Replay: 1 minute back", "left", partial(self.action_replay_seek, -1)),
            ("Replay: 10 minutes forward", "shift+right", partial(self.action_replay_seek, 10)),
            ("Replay: 10 minutes back", "shift+left", partial(self.action_replay_seek, -10)),
            ("Replay: step one recorded moment", ".", self.action_replay_step),
            ("Replay: go to a time", "g: HH:MM[:SS] New York", self.action_replay_goto),
        ]
        return [*super().palette_commands(), *replay]

    # ----------------------------------------------------------------- keys

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # typing in a dialog or a text field keeps its own keys (space, arrows, +, -, g)
        typing = isinstance(self.screen, ModalScreen) or isinstance(self.focused, Input | TextArea)
        if action in REPLAY_ACTIONS and typing:
            return False
        return super().check_action(action, parameters)

    def action_replay_pause(self) -> None:
        paused = self.replay.toggle_pause()
        self._changed("paused" if paused else "playing")

    def action_replay_faster(self) -> None:
        self._changed(f"speed {speed_label(self.replay.faster())}")

    def action_replay_slower(self) -> None:
        self._changed(f"speed {speed_label(self.replay.slower())}")

    def action_replay_seek(self, minutes: int) -> None:
        target = self.replay.seek_by(minutes * MINUTE_NS)
        self._changed(f"seeking to {ny_time(target)} NY")

    def action_replay_step(self) -> None:
        self.replay.step()
        self._changed("step")

    def action_replay_goto(self) -> None:
        st = self.replay.status()

        def go(target: int | None) -> None:
            if target is not None:
                self.replay.seek(target)
                self._changed(f"seeking to {ny_time(target)} NY")

        self.push_screen(GoToTimeDialog(st.position_ns or st.start_ns), go)

    def _changed(self, what: str) -> None:
        self.log.info(f"replay: {what}")
        self.refresh_replay_bar()


def run_replay_console(path: Path, speed: float | None) -> int:
    """Start the replay agent and the console; the exit code for ``spy-console``."""
    import typer

    from agent.feeds.replay import ReplayError
    from agent.server import AgentStartError
    from agent.session import CalendarError
    from agent.settings import ConfigError

    try:
        handle, control = start_replay_agent(path, speed)
    except (ReplayError, ValueError, ConfigError, CalendarError, AgentStartError, TimeoutError) as exc:
        typer.echo(f"spy-console: cannot replay {path}: {exc}", err=True)
        return 3
    try:
        ReplayConsoleApp(handle.address, control, path.name).run()
    finally:
        handle.stop()
    return 0
