"""Drives the simulated market on the agent's market clock and publishes its events.

The simulation advances in fixed market-time steps, independent of wall time, so a seeded run with
the same session and start is the same event for event; the clock only decides *when* each step is
published. A driver that falls behind (high ``--speed``) publishes steps back to back, skipping none.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from agent.domain import ChainUpdate, ComponentHealth, ComponentStatus, UnderlyingTick
from agent.events import Payload
from agent.feeds.anomalies import LabelSink
from agent.feeds.sim import SimConfig, SimulatedMarket
from agent.settings import SimSettings

if TYPE_CHECKING:
    from agent.runtime import AgentRuntime

log = logging.getLogger(__name__)


def sim_config(s: SimSettings) -> SimConfig:
    return SimConfig(
        seed=s.seed,
        spot=s.spot,
        strikes_each_side=s.strikes_each_side,
        step_ms=s.step_ms,
        anomaly_rate_per_min=s.anomaly_rate_per_min,
    )


def bundle(events: Sequence[Payload]) -> list[Payload]:
    """One step's underlying tick rides inside its chain update: one event, encoded once for all."""
    ticks = [e for e in events if isinstance(e, UnderlyingTick)]
    chains = [e for e in events if isinstance(e, ChainUpdate)]
    if len(ticks) != 1 or len(chains) != 1:
        return list(events)
    merged = replace(chains[0], underlying_tick=ticks[0])
    return [merged if e is chains[0] else e for e in events if e is not ticks[0]]


async def run_simulation(rt: AgentRuntime, settings: SimSettings) -> None:
    clock = rt.clock
    start_ns = clock.anchor_market_ns if clock.simulated else clock.now_ns()
    assert start_ns is not None
    start_ns = max(start_ns, rt.session.open_ns)
    await clock.sleep_until(start_ns)  # a --start before the open waits for the bell
    market = SimulatedMarket(sim_config(settings), rt.session, start_ns)
    sink = LabelSink(settings.labels_path) if settings.labels_path else None
    try:
        for ev in market.initial():
            rt.publish(ev, start_ns)
        rt.set_health(
            ComponentHealth(
                "feed", ComponentStatus.OK, f"simulated market, seed {settings.seed}, {rt.clock_note}"
            )
        )
        while True:
            step = market.step()
            delay = clock.wall_delay(step.ts_ns)
            await asyncio.sleep(max(delay, 0.0))
            rt.feed_lag_ms = max(0.0, -delay * 1000.0)
            for payload in bundle(step.events):
                rt.publish(payload, step.ts_ns)
            if sink is not None:
                for label in step.labels:
                    sink.write(label)
            if market.closed:
                break
        rt.set_health(ComponentHealth("feed", ComponentStatus.DEGRADED, "session closed: options expired"))
    finally:
        if sink is not None:
            sink.close()
