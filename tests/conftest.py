"""Shared fixtures: agents running in background threads on 127.0.0.1, a free port each (port 0)."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.runtime import AgentRuntime, AgentThread
from agent.settings import load_settings
from proto.spyops.v1 import spyops_pb2 as pb

DATA = Path(__file__).parent / "data"
CSV_0317 = DATA / "ib_spy_chain_2025-03-17_1355ET.csv"

# a fast simulated market: 20x clock, 50 ms market steps -> a step every 2.5 ms of wall time
FAST_SIM: dict[str, Any] = {
    "feed": "sim",
    "clock": {"start": "10:30", "speed": 20},
    "sim": {"seed": 11, "step_ms": 50, "strikes_each_side": 10},
}


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Agent settings come from the test alone, never from the developer's SPY_* environment."""
    for key in list(os.environ):
        if key.startswith("SPY_"):
            monkeypatch.delenv(key)


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A CLI run in-process (CliRunner) configures logging onto its own stderr, closed when the run
    ends; an agent thread of a later test must not log into that closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def agent_settings(agent_id: str = "test-agent", port: int = 0, **overrides: Any) -> Any:
    server = {"host": "127.0.0.1", "port": port, **overrides.pop("server", {})}
    merged = dict(FAST_SIM)
    for key, value in overrides.items():  # nested sections merge: sim={"seed": 3} keeps step_ms
        merged[key] = {**merged[key], **value} if isinstance(merged.get(key), dict) else value
    return load_settings(agent_id=agent_id, server=server, **merged)


AgentFactory = Callable[..., AgentThread]


@pytest.fixture
def start_agent() -> Iterator[AgentFactory]:
    """Start agents in threads; all are stopped after the test. ``start_agent(agent_id=..., **settings)``."""
    started: list[AgentThread] = []

    def start(agent_id: str = "test-agent", port: int = 0, **overrides: Any) -> AgentThread:
        th = AgentRuntime(agent_settings(agent_id, port, **overrides)).start_in_thread()
        started.append(th)
        return th

    yield start
    for th in reversed(started):
        th.stop()


@pytest.fixture
def sim_agent(start_agent: AgentFactory) -> AgentThread:
    return start_agent(agent_id="sim")


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 10.0,
    every: float = 0.05,
    what: str = "condition",
) -> None:
    """Wait until ``check()`` is true (sync or async), failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not met within {timeout} s")
        await asyncio.sleep(every)


def chain_key(chain: pb.ChainUpdate) -> bytes:
    """A comparable form of a chain (NaN-safe: compares the wire bytes of the sorted quotes)."""
    quotes = sorted(chain.quotes, key=lambda q: (q.strike, q.right))
    out = pb.ChainUpdate(symbol=chain.symbol, expiry=chain.expiry, quotes=quotes)
    return out.SerializeToString(deterministic=True)


def same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b
