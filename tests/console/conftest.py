"""Agents for console and CLI tests: real agents on 127.0.0.1, each in its own thread and loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.runtime import AgentRuntime, AgentThread
from agent.settings import load_settings

StartAgent = Callable[..., AgentThread]


@pytest.fixture
def start_agent() -> Iterator[StartAgent]:
    """Start a simulated-market agent (10:30 NY, 20x) on a free port or the one given."""
    started: list[AgentThread] = []

    def start(port: int = 0, **overrides: Any) -> AgentThread:
        settings = load_settings(
            None,
            agent_id=overrides.pop("agent_id", "test"),
            roles=("feed",),
            feed="sim",
            server={"host": "127.0.0.1", "port": port},
            clock={"start": "10:30", "speed": 20, "date": overrides.pop("date", "2025-03-17")},
            sim={"seed": 11, "step_ms": 100, **overrides.pop("sim", {})},
            **overrides,
        )
        thread = AgentRuntime(settings).start_in_thread()
        started.append(thread)
        return thread

    yield start
    for t in started:
        t.stop()
