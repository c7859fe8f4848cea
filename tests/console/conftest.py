"""Console and CLI tests run against agents with a full ladder on a fixed session date."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agent.runtime import AgentThread
from tests.conftest import AgentFactory

StartAgent = Callable[..., AgentThread]


@pytest.fixture
def console_agent(start_agent: AgentFactory) -> StartAgent:
    """``start_agent`` with 25 strikes each side and the session of 2025-03-17."""

    def start(agent_id: str = "test", port: int = 0, **overrides: Any) -> AgentThread:
        overrides.setdefault("sim", {"strikes_each_side": 25})
        overrides.setdefault("clock", {"date": "2025-03-17"})
        return start_agent(agent_id, port, **overrides)

    return start
