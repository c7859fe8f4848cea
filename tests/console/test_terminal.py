"""`spy-console --demo` in a real terminal (tmux): start, read the screen, type keys, quit."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TMUX = shutil.which("tmux")
CONSOLE = Path(sys.executable).parent / "spy-console"


def tmux(*args: str) -> str:
    assert TMUX is not None
    return subprocess.run([TMUX, *args], check=True, capture_output=True, text=True).stdout


def ladder_rows(screen: str) -> list[str]:
    """Lines of the strike ladder: they start with the call's delta, or its volume when there is none."""
    return [line for line in screen.splitlines() if re.match(r"^\s*[+-]?\d", line)]


def wait_screen(session: str, want: tuple[str, ...], timeout: float = 30.0, rows: int = 0) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-p", "-t", session)
        if all(w in screen for w in want) and len(ladder_rows(screen)) >= rows:
            return screen
        time.sleep(0.25)
    raise AssertionError(f"screen never showed {want}:\n{screen}")


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (.ci/run installs it)")
def test_demo_in_a_real_terminal(tmp_path: Path) -> None:
    session = f"spy-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exit-code"
    cmd = f"{CONSOLE} --demo --start 10:30 --speed 10 --seed 3; echo $? > {done}"
    # a shell first, then the command typed into it: the pane has its final size before the app starts
    tmux("new-session", "-d", "-s", session, "-x", "130", "-y", "50", "bash --norc --noprofile")
    tmux("send-keys", "-t", session, cmd, "Enter")
    try:
        # the status line, the ladder's header and the notices panel with the agent's first notice
        # and a strike ladder around the money (the rest scrolls)
        want = ("LIVE", "Strike", "C Bid", "P Ask", "0DTE", "agent.started", "Signals (")
        screen = wait_screen(session, want, rows=15)
        assert "demo@127.0.0.1:" in screen
        tmux("send-keys", "-t", session, "down", "down", "c")
        wait_screen(session, ("LIVE",))
        # other screens by their keys: risk, the agents, help; then back to the chain
        tmux("send-keys", "-t", session, "7")
        wait_screen(session, ("daily P&L", "max_working_orders", "ACTIVE"))
        tmux("send-keys", "-t", session, "8")
        wait_screen(session, ("feed,detector,executor", "leader"))
        tmux("send-keys", "-t", session, "0")
        wait_screen(session, ("command palette", "Halt", "Flatten"))
        tmux("send-keys", "-t", session, "1")
        wait_screen(session, ("Strike", "C IV", "P Delta"), rows=15)
        tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 15
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert done.exists(), "the console did not quit on q"
        assert done.read_text().strip() == "0"
    finally:
        subprocess.run([TMUX or "tmux", "kill-session", "-t", session], capture_output=True, check=False)
