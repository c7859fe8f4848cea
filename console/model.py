"""The console's picture of its agents, folded from their envelopes (wire types only: no agent imports).

``AgentView`` is one agent; ``ConsoleModel`` merges several (a feed+detector agent and an executor, or
executor replicas of which one leads). Folding is cheap at full stream rate: each envelope updates a
dict entry and bumps a revision counter; the screens read the model at their own redraw rate, compare
revisions and draw only what changed (``take_structure_change`` says when strikes came or went).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from console.analytics import default_close_ns
from console.client import ConnectionState
from proto.spyops.v1 import spyops_pb2 as pb

CALL: int = int(pb.CALL)
PUT: int = int(pb.PUT)
SEVERITY_RANK = {"critical": 3, "warn": 2, "info": 1}
TERMINAL_ORDER_STATES = frozenset({"filled", "cancelled", "rejected", "expired"})
HISTORY_BUCKET_NS = 5_000_000_000  # one point of the intraday chart per 5 market seconds
HISTORY_POINTS = 8_000  # about 11 hours at 5 s: a whole session, bounded
RESOLVED_KEPT = 200
FILLS_KEPT = 1_000
LOG_KEPT = 1_000
ORDERS_KEPT = 2_000


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of the notices & audit panel."""

    ts_ns: int
    agent: str
    kind: str  # "notice", "command", "rejected", "console"
    level: str  # "info", "warn", "error"
    text: str
    operator: str = ""


@dataclass
class AgentView:
    target: str
    name: str = ""
    agent_id: str = ""
    incarnation: str = ""
    last_seq: int = 0
    last_ts_ns: int = 0
    last_wall_ns: int = 0
    symbol: str = "SPY"
    expiry: str = ""
    multiplier: int = 100
    tick: float = 0.01  # minimum price increment of the options (from the chain)
    underlying: float = math.nan
    underlying_tick: pb.UnderlyingTick | None = None
    quotes: dict[tuple[float, int], pb.OptionQuote] = field(default_factory=dict)
    health: pb.Health | None = None
    notices: deque[pb.Notice] = field(default_factory=lambda: deque(maxlen=200))
    structure_changed: bool = True  # strikes added or removed: the ladder must be rebuilt
    envelopes: int = 0
    signals: dict[str, pb.Signal] = field(default_factory=dict)  # open signals by id
    resolved: deque[pb.Signal] = field(default_factory=lambda: deque(maxlen=RESOLVED_KEPT))
    smile: pb.SmileFit | None = None
    notice_serial: int = 0  # notices appended so far (the deque keeps only the latest)
    notice_epoch: int = 0  # bumped when a snapshot replaces the notices
    orders: dict[str, pb.OrderUpdate] = field(default_factory=dict)
    fills: deque[pb.Fill] = field(default_factory=lambda: deque(maxlen=FILLS_KEPT))
    positions: dict[tuple[str, float, int], pb.Position] = field(default_factory=dict)
    risk: pb.RiskState | None = None
    proposals: dict[str, pb.Proposal] = field(default_factory=dict)
    log: deque[LogEntry] = field(default_factory=lambda: deque(maxlen=LOG_KEPT))
    heartbeats: int = 0  # heartbeat commands seen in the audit (not listed one by one)
    history: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    session_open: float = math.nan  # first underlying price seen in the session
    session_high: float = math.nan
    session_low: float = math.nan
    # revisions: bumped on every change of a section; screens compare them with what they drew
    rev: dict[str, int] = field(default_factory=dict)
    # connection and GetInfo
    state: ConnectionState = ConnectionState.CONNECTING
    state_detail: str = ""
    info: pb.AgentInfo | None = None
    info_latency_ms: float = math.nan
    info_error: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.target

    def bump(self, section: str) -> None:
        self.rev[section] = self.rev.get(section, 0) + 1

    # ------------------------------------------------------------------ derived

    @property
    def live(self) -> bool:
        return self.state is ConnectionState.LIVE

    @property
    def roles(self) -> tuple[str, ...]:
        if self.info is not None:
            return tuple(self.info.roles)
        return ("executor",) if self.risk is not None else ()

    @property
    def is_executor(self) -> bool:
        return "executor" in self.roles or self.risk is not None

    @property
    def close_ns(self) -> int:
        if self.info is not None and self.info.session_close_ns > 0:
            return int(self.info.session_close_ns)
        return default_close_ns(self.expiry)

    def lag_s(self, now: float | None = None) -> float:
        """Wall seconds since the agent published the last envelope we have."""
        if not self.last_wall_ns:
            return math.nan
        return max(0.0, (now if now is not None else time.time()) - self.last_wall_ns / 1e9)

    def seq_behind(self) -> int:
        """Envelopes the agent had published, at its last GetInfo, beyond ours (0 if none or unknown)."""
        if self.info is None or self.info.incarnation != self.incarnation:
            return 0
        return max(0, int(self.info.last_seq) - self.last_seq)

    def strikes(self) -> list[float]:
        return sorted({k[0] for k in self.quotes})

    def atm_strike(self) -> float | None:
        strikes = self.strikes()
        if not strikes or not math.isfinite(self.underlying):
            return strikes[len(strikes) // 2] if strikes else None
        return min(strikes, key=lambda k: abs(k - self.underlying))

    def working_orders(self) -> list[pb.OrderUpdate]:
        return [o for o in self.orders.values() if o.state not in TERMINAL_ORDER_STATES]

    def open_positions(self) -> list[pb.Position]:
        return [p for p in self.positions.values() if p.quantity != 0]

    def pending_proposals(self) -> list[pb.Proposal]:
        return [p for p in self.proposals.values() if p.status == "pending"]

    def flagged(self) -> dict[tuple[float, int], pb.Signal]:
        return flagged(self.signals.values())

    # ------------------------------------------------------------------ folding

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
        elif kind == "signal":
            self._apply_signal(env.signal)
        elif kind == "order":
            self._apply_order(env.order, env.ts_ns)
        elif kind == "fill":
            self._apply_fill(env.fill)
            self.bump("fills")
        elif kind == "position":
            self._apply_position(env.position)
        elif kind == "risk":
            self.risk = env.risk
            self.bump("risk")
        elif kind == "health":
            self.health = env.health
            self.bump("health")
        elif kind == "notice":
            self._apply_notice(env.notice, env.ts_ns)
        elif kind == "snapshot":
            self._apply_snapshot(env.snapshot)
        elif kind == "command":
            self._apply_command(env.command, env.ts_ns)
        elif kind == "smile":
            self.smile = env.smile
            self.bump("smile")
        elif kind == "proposal":
            self._apply_proposal(env.proposal)

    def _apply_fill(self, fill: pb.Fill) -> None:
        """A fill republished with the same execution id (a commission corrected later) replaces the
        one shown; it is never a second fill."""
        if fill.exec_id:
            for i, seen in enumerate(self.fills):
                if seen.exec_id == fill.exec_id:
                    self.fills[i] = fill
                    return
        self.fills.append(fill)

    def _apply_tick(self, tick: pb.UnderlyingTick) -> None:
        self.underlying_tick = tick
        if tick.last > 0 and math.isfinite(tick.last):
            self.underlying = tick.last
            self._record_price(tick.last)
        self.bump("underlying")

    def _record_price(self, px: float) -> None:
        ts = self.last_ts_ns
        if not math.isfinite(self.session_open):
            self.session_open = self.session_high = self.session_low = px
        self.session_high = max(self.session_high, px)
        self.session_low = min(self.session_low, px)
        bucket = ts - ts % HISTORY_BUCKET_NS
        if self.history and self.history[-1][0] == bucket:
            self.history[-1] = (bucket, px)
        elif not self.history or bucket > self.history[-1][0]:
            self.history.append((bucket, px))

    def _apply_chain(self, c: pb.ChainUpdate) -> None:
        if c.full or (self.expiry and c.expiry != self.expiry):
            self.quotes.clear()
            self.structure_changed = True
        self.expiry = c.expiry
        self.symbol = c.symbol or self.symbol
        self.multiplier = c.multiplier or self.multiplier
        if c.tick > 0 and math.isfinite(c.tick):
            self.tick = c.tick
        if c.HasField("underlying_tick"):
            self._apply_tick(c.underlying_tick)
        elif c.underlying > 0 and math.isfinite(c.underlying):
            self.underlying = c.underlying
            self._record_price(c.underlying)
            self.bump("underlying")
        for strike in c.removed_strikes:
            self.quotes.pop((strike, CALL), None)
            self.quotes.pop((strike, PUT), None)
            self.structure_changed = True
        quotes = self.quotes
        for q in c.quotes:
            key = (q.strike, int(q.right))
            if key not in quotes:
                self.structure_changed = True
            quotes[key] = q
        self.bump("chain")

    def _apply_signal(self, sig: pb.Signal) -> None:
        if sig.status == "resolved":
            if self.signals.pop(sig.id, None) is not None or not any(r.id == sig.id for r in self.resolved):
                self.resolved.append(sig)
        else:
            self.signals[sig.id] = sig
        self.bump("signals")

    def _apply_order(self, o: pb.OrderUpdate, ts_ns: int) -> None:
        before = self.orders.get(o.client_order_id)
        self.orders[o.client_order_id] = o
        if len(self.orders) > ORDERS_KEPT:  # forget the oldest finished orders
            for cid in [k for k, v in self.orders.items() if v.state in TERMINAL_ORDER_STATES][:100]:
                del self.orders[cid]
        if o.state == "rejected" and (before is None or before.state != "rejected"):
            self._log(
                LogEntry(
                    ts_ns,
                    self.name,
                    "rejected",
                    "error",
                    f"order {o.client_order_id} rejected: {o.reason or 'no reason given'}",
                    o.operator,
                )
            )
        self.bump("orders")

    def _apply_position(self, p: pb.Position) -> None:
        key = (p.expiry, p.strike, int(p.right))
        if p.quantity == 0 and p.realized == 0:
            self.positions.pop(key, None)
        else:
            self.positions[key] = p  # closed positions stay listed for their realized P&L
        self.bump("positions")

    def _apply_proposal(self, p: pb.Proposal) -> None:
        self.proposals[p.id] = p
        if len(self.proposals) > 500:
            for pid in [k for k, v in self.proposals.items() if v.status != "pending"][:50]:
                del self.proposals[pid]
        self.bump("proposals")

    def _apply_notice(self, n: pb.Notice, ts_ns: int) -> None:
        self.notices.append(n)
        self.notice_serial += 1
        level = n.level if n.level in ("info", "warn", "error") else "warn"
        self._log(LogEntry(ts_ns, self.name, "notice", level, f"{n.code}: {n.message}"))

    def _apply_command(self, c: pb.CommandRecord, ts_ns: int) -> None:
        if c.command == "heartbeat" and c.accepted:
            self.heartbeats += 1
            self.bump("heartbeats")
            return
        verdict = "accepted" if c.accepted else "REFUSED"
        args = "" if c.arguments_json in ("", "{}") else f" {c.arguments_json}"
        self._log(
            LogEntry(
                ts_ns,
                self.name,
                "command",
                "info" if c.accepted else "warn",
                f"{c.command}{args} {verdict}: {c.result}",
                c.operator or "?",
            )
        )

    def _log(self, entry: LogEntry) -> None:
        self.log.append(entry)
        self.bump("log")

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
        self.resolved.clear()
        self.resolved.extend(sig for sig in s.signals if sig.status == "resolved")
        if s.HasField("smile"):
            self.smile = s.smile
        self.orders = {o.client_order_id: o for o in s.orders}
        self.positions = {(p.expiry, p.strike, int(p.right)): p for p in s.positions}
        self.risk = s.risk if s.HasField("risk") else None
        self.proposals = {p.id: p for p in s.proposals}
        self.notices.clear()
        self.notices.extend(s.recent_notices)
        self.notice_serial += len(s.recent_notices)
        self.notice_epoch += 1
        self.log = deque(
            (e for e in self.log if e.kind != "notice"),  # the audit survives a resync; notices are replaced
            maxlen=LOG_KEPT,
        )
        for n in s.recent_notices:
            level = n.level if n.level in ("info", "warn", "error") else "warn"
            self.log.append(LogEntry(s.ts_ns, self.name, "notice", level, f"{n.code}: {n.message}"))
        for section in (
            "chain",
            "underlying",
            "signals",
            "orders",
            "fills",
            "positions",
            "risk",
            "proposals",
            "health",
            "smile",
            "log",
        ):
            self.bump(section)

    def take_structure_change(self) -> bool:
        """Whether strikes were added or removed since the last call (the ladder must be rebuilt);
        which quotes changed is the chain revision's business (``rev["chain"]``)."""
        structure, self.structure_changed = self.structure_changed, False
        return structure


def flagged(signals: Iterable[pb.Signal]) -> dict[tuple[float, int], pb.Signal]:
    """The open signal of highest severity on each contract (for highlighting cells)."""
    out: dict[tuple[float, int], pb.Signal] = {}
    for sig in signals:
        for c in sig.contracts:
            key = (c.strike, int(c.right))
            cur = out.get(key)
            if cur is None or SEVERITY_RANK.get(sig.severity, 0) > SEVERITY_RANK.get(cur.severity, 0):
                out[key] = sig
    return out


class ConsoleModel:
    """Several agents' views merged: market data from one, signals from all, trading from the leader."""

    def __init__(self, views: list[AgentView]) -> None:
        if not views:
            raise ValueError("the console needs at least one agent")
        self.views = views
        self.by_target = {v.target: v for v in views}
        self.console_log: deque[LogEntry] = deque(maxlen=LOG_KEPT)
        self.console_rev = 0

    def add_console_entry(self, entry: LogEntry) -> None:
        """An operator action's result as the console saw it (shown with the agents' audit)."""
        self.console_log.append(entry)
        self.console_rev += 1

    def market(self) -> AgentView:
        """The agent whose chain is shown: the first live one with quotes, else the first with quotes."""
        for v in self.views:
            if v.quotes and v.live:
                return v
        for v in self.views:
            if v.quotes:
                return v
        return self.views[0]

    def executors(self) -> list[AgentView]:
        return [v for v in self.views if v.is_executor]

    def leader(self) -> AgentView | None:
        """The executor that takes commands: the one that says it leads (live first), or the only one."""
        execs = self.executors()
        leading = [v for v in execs if v.risk is not None and v.risk.leader]
        if leading:
            leading.sort(key=lambda v: (not v.live, -(v.risk.lease_epoch if v.risk else 0)))
            return leading[0]
        return execs[0] if len(execs) == 1 else None

    def trading(self) -> AgentView | None:
        """The executor whose orders, positions and risk are shown (the leader, else the first one)."""
        lead = self.leader()
        if lead is not None:
            return lead
        execs = self.executors()
        return execs[0] if execs else None

    def open_signals(self) -> dict[str, pb.Signal]:
        out: dict[str, pb.Signal] = {}
        market = self.market()
        for v in [market, *(v for v in self.views if v is not market)]:
            for sid, sig in v.signals.items():
                out.setdefault(sid, sig)
        return out

    def resolved_signals(self) -> list[pb.Signal]:
        seen: dict[str, pb.Signal] = {}
        for v in self.views:
            for sig in v.resolved:
                seen[sig.id] = sig
        return sorted(seen.values(), key=lambda s: -s.last_seen_ns)

    def flagged(self) -> dict[tuple[float, int], pb.Signal]:
        return flagged(self.open_signals().values())

    def smile(self) -> pb.SmileFit | None:
        market = self.market()
        if market.smile is not None:
            return market.smile
        return next((v.smile for v in self.views if v.smile is not None), None)

    def rev(self, section: str) -> int:
        """Sum of one section's revisions over every agent (changes when any of them changes)."""
        return sum(v.rev.get(section, 0) for v in self.views)

    def log_entries(self) -> list[LogEntry]:
        entries = [e for v in self.views for e in v.log]
        entries.extend(self.console_log)
        entries.sort(key=lambda e: e.ts_ns)
        return entries

    def log_rev(self) -> int:
        return self.rev("log") + self.console_rev

    def any_stale(self) -> bool:
        return any(not v.live for v in self.views)
