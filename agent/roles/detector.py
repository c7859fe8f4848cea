"""The detector role: evaluates the chain on every market update and publishes signals.

It listens to the agent's own log, so its input is the same whether the feed runs in this process or
upstream (``--feed upstream``). Updates that arrive while an evaluation runs are coalesced into the
next one; the role reports its lag (first coalesced update received -> signals published) and its
evaluation time in the agent's health.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

from agent.detector.config import DetectorConfig
from agent.detector.engine import Detector
from agent.domain import ChainUpdate, UnderlyingTick
from agent.eventlog import Event
from agent.settings import DetectorSettings

if TYPE_CHECKING:
    from agent.runtime import AgentRuntime

log = logging.getLogger(__name__)

_NS_SETTINGS = {"max_leg_skew_ms": "max_leg_skew_ns", "resolve_after_ms": "resolve_after_ns"}


def detector_config(s: DetectorSettings) -> DetectorConfig:
    """The engine's thresholds from the typed settings (milliseconds become nanoseconds)."""
    names = {f.name for f in fields(DetectorConfig)}
    values: dict[str, Any] = {}
    for key, value in s.model_dump().items():
        if key in _NS_SETTINGS:
            key, value = _NS_SETTINGS[key], int(value * 1_000_000)
        if key in names:
            values[key] = value
    return replace(DetectorConfig(), **values)


def _percentile(samples: deque[int], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] / 1e6


class DetectorRole:
    def __init__(self, rt: AgentRuntime, settings: DetectorSettings) -> None:
        self._rt = rt
        self._settings = settings
        self.detector = Detector(detector_config(settings), rt.session)
        self._pending: list[ChainUpdate] = []
        self._tick: UnderlyingTick | None = None
        self._first_received_ns: int | None = None
        self._last_ts_ns = 0
        self._wakeup = asyncio.Event()
        self._last_smile_wall = 0.0
        self.lag_ns: deque[int] = deque(maxlen=2000)
        self.eval_ns: deque[int] = deque(maxlen=2000)
        self.evaluations = 0
        rt.log.add_listener(self._on_event)

    def _on_event(self, ev: Event) -> None:
        p = ev.payload
        if isinstance(p, ChainUpdate):
            self._pending.append(p)
            if p.underlying_tick is not None:
                self._tick = p.underlying_tick
            if self._first_received_ns is None:
                self._first_received_ns = time.perf_counter_ns()
            self._last_ts_ns = ev.ts_ns
            self._wakeup.set()
        elif isinstance(p, UnderlyingTick):
            self._tick = p

    def lag_p99_ms(self) -> float:
        return _percentile(self.lag_ns, 0.99)

    def eval_p50_ms(self) -> float:
        return _percentile(self.eval_ns, 0.50)

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            self.evaluate()
            await asyncio.sleep(0)  # let the server and the feed run between evaluations

    def evaluate(self) -> None:
        """Evaluate everything that arrived since the last evaluation, then publish the findings."""
        if not self._pending:
            return
        updates, self._pending = self._pending, []
        received, self._first_received_ns = self._first_received_ns, None
        ts = self._last_ts_ns
        out = self.detector.on_chain(updates, self._tick, ts, received_ns=received)
        for signal in out.signals_changed:
            self._rt.publish(signal, ts)
        now = time.monotonic()
        if out.smile is not None and now - self._last_smile_wall >= self._settings.smile_every_s:
            self._last_smile_wall = now
            self._rt.publish(out.smile, ts)
        self.evaluations += 1
        self.eval_ns.append(out.eval_ns)
        if received is not None:
            self.lag_ns.append(time.perf_counter_ns() - received)
