"""Helpers for the console's pilot tests: waiting, reading a screen's text, an executor agent."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from textual import events
from textual.app import App

from console.app import ConsoleApp
from console.config import AgentTarget, ConsoleConfig
from tests.conftest import eventually


async def wait_for(cond: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """``eventually`` with the console tests' longer default (an app and an agent in one process)."""
    await eventually(cond, timeout, what=what)


def screen_text(app: App[Any]) -> str:
    """The screen as plain text, exactly as drawn (dialogs included)."""
    width, height = app.size
    console = Console(
        width=width, height=height, file=io.StringIO(), record=True, color_system=None, legacy_windows=False
    )
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def executor_overrides(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """Settings of an agent with feed, detector and an executor (paper broker) proposing trades."""
    return {
        "roles": "feed,detector,executor",
        # 4x rather than the usual 20x: the pilot waits for the process to go idle after each key
        "clock": {"date": "2025-03-17", "speed": 4},
        "sim": {"strikes_each_side": 25, "anomaly_rate_per_min": 30.0},
        "executor": {
            "journal": tmp_path / "journal.sqlite",
            "paper_book": tmp_path / "paper.sqlite",
            "limits": {"max_quote_age_ms": 60_000.0},
            "playbook": {"mode": "propose", "proposal_ttl_s": 3600.0, "cooldown_s": 1.0},
            **extra,
        },
    }


def console_for(*addresses: str, operator: str = "alice", heartbeat_s: float = 5.0) -> ConsoleApp:
    agents = tuple(AgentTarget(name=f"agent{i}", address=a) for i, a in enumerate(addresses))
    return ConsoleApp(ConsoleConfig(agents=agents, operator=operator, heartbeat_s=heartbeat_s))


async def press(app: App[Any], *keys: str, settle: float = 0.05) -> None:
    """Key presses as the terminal driver delivers them (a Key event posted to the app), without the
    pilot's wait for the whole process to go idle: with an agent streaming in the same process it never
    does, and every ``pilot.press`` would cost two seconds. Callers wait for the effect they expect."""
    for key in keys:
        char = key if len(key) == 1 else None
        app.post_message(events.Key(key, char))
        await asyncio.sleep(settle)


class CuttableProxy:
    """A TCP proxy in front of an agent whose connections can be cut (a dropped VPN link): the agent
    keeps running, the console must reconnect through the proxy and resume where it was."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            agent_r, agent_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        self._writers += [client_w, agent_w]
        await asyncio.gather(self._pipe(client_r, agent_w), self._pipe(agent_r, client_w))

    def cut(self) -> None:
        """Close every connection now (new ones are accepted again)."""
        self.cuts += 1
        for w in self._writers:
            w.close()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
