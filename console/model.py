"""The console's picture of one agent, folded from its envelopes (wire types only: no agent imports).

Cheap to update at full stream rate; the screens read it at their own redraw rate and ask
``changed_strikes`` what to redraw, so the cost of drawing follows what is visible and what changed.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from proto.spyops.v1 import spyops_pb2 as pb

CALL, PUT = pb.CALL, pb.PUT


@dataclass
class AgentView:
    target: str
    agent_id: str = ""
    incarnation: str = ""
    last_seq: int = 0
    last_ts_ns: int = 0
    last_wall_ns: int = 0
    symbol: str = "SPY"
    expiry: str = ""
    underlying: float = math.nan
    underlying_tick: pb.UnderlyingTick | None = None
    quotes: dict[tuple[float, int], pb.OptionQuote] = field(default_factory=dict)
    health: pb.Health | None = None
    notices: deque[pb.Notice] = field(default_factory=lambda: deque(maxlen=200))
    changed_strikes: set[float] = field(default_factory=set)
    structure_changed: bool = True  # strikes added or removed: the ladder must be rebuilt
    envelopes: int = 0
    signals: dict[str, pb.Signal] = field(default_factory=dict)  # open signals by id
    signals_changed: bool = True
    smile: pb.SmileFit | None = None
    notice_serial: int = 0  # notices appended so far (the deque keeps only the latest)
    notice_epoch: int = 0  # bumped when a snapshot replaces the notices

    def strikes(self) -> list[float]:
        return sorted({k[0] for k in self.quotes})

    def atm_strike(self) -> float | None:
        strikes = self.strikes()
        if not strikes or not math.isfinite(self.underlying):
            return strikes[len(strikes) // 2] if strikes else None
        return min(strikes, key=lambda k: abs(k - self.underlying))

    def apply(self, env: pb.Envelope) -> None:
        self.envelopes += 1
        self.last_seq = env.seq
        if env.ts_ns:
            self.last_ts_ns = env.ts_ns
        self.last_wall_ns = env.wall_ns or self.last_wall_ns
        self.agent_id = env.agent_id or self.agent_id
        kind = env.WhichOneof("payload")
        if kind == "chain":
            self._apply_chain(env.chain)
        elif kind == "underlying":
            self._apply_tick(env.underlying)
        elif kind == "snapshot":
            self._apply_snapshot(env.snapshot)
        elif kind == "notice":
            self.notices.append(env.notice)
            self.notice_serial += 1
        elif kind == "health":
            self.health = env.health
        elif kind == "signal":
            self._apply_signal(env.signal)
        elif kind == "smile":
            self.smile = env.smile

    def _apply_tick(self, tick: pb.UnderlyingTick) -> None:
        self.underlying_tick = tick
        if tick.last > 0:
            self.underlying = tick.last

    def _apply_chain(self, c: pb.ChainUpdate) -> None:
        if c.full or (self.expiry and c.expiry != self.expiry):
            self.quotes.clear()
            self.structure_changed = True
        self.expiry = c.expiry
        self.symbol = c.symbol or self.symbol
        if c.underlying > 0:
            self.underlying = c.underlying
        if c.HasField("underlying_tick"):
            self._apply_tick(c.underlying_tick)
        for strike in c.removed_strikes:
            self.quotes.pop((strike, CALL), None)
            self.quotes.pop((strike, PUT), None)
            self.structure_changed = True
        for q in c.quotes:
            key = (q.strike, int(q.right))
            if key not in self.quotes:
                self.structure_changed = True
            self.quotes[key] = q
            self.changed_strikes.add(q.strike)

    def _apply_signal(self, sig: pb.Signal) -> None:
        if sig.status == "resolved":
            self.signals.pop(sig.id, None)
        else:
            self.signals[sig.id] = sig
        self.signals_changed = True
        self.changed_strikes.update(c.strike for c in sig.contracts)

    def flagged(self) -> dict[tuple[float, int], pb.Signal]:
        """The open signal of highest severity on each contract (for highlighting cells)."""
        rank = {"critical": 3, "warn": 2, "info": 1}
        out: dict[tuple[float, int], pb.Signal] = {}
        for sig in self.signals.values():
            for c in sig.contracts:
                key = (c.strike, int(c.right))
                cur = out.get(key)
                if cur is None or rank.get(sig.severity, 0) > rank.get(cur.severity, 0):
                    out[key] = sig
        return out

    def _apply_snapshot(self, s: pb.Snapshot) -> None:
        self.incarnation = s.incarnation
        self.agent_id = s.agent_id
        self.quotes.clear()
        self.expiry = ""
        self.structure_changed = True
        if s.ts_ns:
            self.last_ts_ns = s.ts_ns
        if s.HasField("underlying"):
            self._apply_tick(s.underlying)
        if s.HasField("chain"):
            self._apply_chain(s.chain)
        if s.HasField("health"):
            self.health = s.health
        self.signals = {sig.id: sig for sig in s.signals if sig.status != "resolved"}
        self.signals_changed = True
        if s.HasField("smile"):
            self.smile = s.smile
        self.notices.clear()
        self.notices.extend(s.recent_notices)
        self.notice_serial += len(s.recent_notices)
        self.notice_epoch += 1

    def take_changes(self) -> tuple[bool, set[float]]:
        """What changed since the last call: (ladder structure changed, strikes with new quotes)."""
        structure, changed = self.structure_changed, self.changed_strikes
        self.structure_changed, self.changed_strikes = False, set()
        return structure, changed
