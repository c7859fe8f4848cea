"""The agent's market clock: real time, accelerated (``--speed 60``), or started at a chosen time.

Simulated time is anchored: ``market = anchor_market + (wall - anchor_wall) * speed``. Everything that
stamps events reads this clock, so a demo at 21:00 can show 15:30 of a live-looking session.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class MarketClock:
    speed: float = 1.0
    anchor_market_ns: int | None = None  # None: real time (market = wall at speed 1)
    _anchor_wall_ns: int = field(default_factory=time.time_ns)

    def __post_init__(self) -> None:
        if not (self.speed > 0.0):
            raise ValueError(f"clock speed must be > 0, got {self.speed}")
        if self.anchor_market_ns is None:
            self.anchor_market_ns = self._anchor_wall_ns

    @property
    def simulated(self) -> bool:
        return self.speed != 1.0 or self.anchor_market_ns != self._anchor_wall_ns

    def now_ns(self) -> int:
        assert self.anchor_market_ns is not None
        return self.anchor_market_ns + int((time.time_ns() - self._anchor_wall_ns) * self.speed)

    def reanchor(self, market_ns: int, speed: float) -> None:
        """From now on read ``market_ns`` and advance at ``speed`` (a replay that pauses, seeks or
        changes pace steers the agent's clock this way)."""
        if not (speed > 0.0):
            raise ValueError(f"clock speed must be > 0, got {speed}")
        self.anchor_market_ns, self._anchor_wall_ns, self.speed = market_ns, time.time_ns(), speed

    def wall_delay(self, market_ns: int) -> float:
        """Wall-clock seconds until the market clock reads ``market_ns`` (<= 0 if already past)."""
        return (market_ns - self.now_ns()) / 1e9 / self.speed

    async def sleep_until(self, market_ns: int) -> None:
        delay = self.wall_delay(market_ns)
        if delay > 0:
            await asyncio.sleep(delay)
