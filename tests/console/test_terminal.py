"""`spy-console --demo` in a real terminal (tmux): start, read the screen, type keys, quit."""

from __future__ import annotations

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


def wait_screen(session: str, want: tuple[str, ...], timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-p", "-t", session)
        if all(w in screen for w in want):
            return screen
        time.sleep(0.25)
    raise AssertionError(f"screen never showed {want}:\n{screen}")


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (.ci/run installs it)")
def test_demo_in_a_real_terminal(tmp_path: Path) -> None:
    session = f"spy-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exit-code"
    cmd = f"{CONSOLE} --demo --start 10:30 --speed 10 --seed 3; echo $? > {done}"
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", cmd)
    try:
        # the status line, the ladder's header and the notices panel with the agent's first notice
        screen = wait_screen(session, ("LIVE", "Strike", "C Bid", "P Ask", "0DTE", "agent.started"))
        assert "demo@127.0.0.1:" in screen
        ladder = [line for line in screen.splitlines() if line.strip()[:1].isdigit()]
        assert len(ladder) >= 20  # the strike ladder around the money
        tmux("send-keys", "-t", session, "down", "down", "c")
        wait_screen(session, ("LIVE",))
        tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 15
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert done.exists(), "the console did not quit on q"
        assert done.read_text().strip() == "0"
    finally:
        subprocess.run([TMUX or "tmux", "kill-session", "-t", session], capture_output=True, check=False)
