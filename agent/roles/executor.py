"""The executor role: operator commands, pre-trade risk, the journal-first order flow and the broker.

Wires the executor library (``agent.executor``) into an agent: quotes from the agent's own log feed
the paper broker and the risk checks; broker reports are journaled, folded into the orders and
published (order updates, fills, positions, risk state); operator commands arrive through
``execute`` (the gRPC ``Execute`` RPC), are idempotent on their key (kept in a SQLite file beside the
journal, so a repeat after a restart still returns the first result) and are published as audit
events. A dead-man switch takes its configured action when the executor is armed and no operator
heartbeat arrived for ``deadman_s``.

Every order names who sent it (``OrderIntent.operator``, journaled and published on each order update):
the command's operator for a manual order or a flatten, the confirming operator for a playbook
proposal, ``"playbook"`` for what the playbook sends on its own, ``"dead-man"`` / ``"risk"`` for the
automatic flattens.

Local fencing is the journal's file lock (one executor per journal); Kubernetes Lease election is
not wired yet, so ``leader`` is reported true for the process holding the journal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import socket
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, fields, replace
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from agent.detector.signals import Signal
from agent.domain import ChainUpdate, NoticeLevel, Right
from agent.eventlog import Event
from agent.executor.broker import BrokerError
from agent.executor.commands import CommandOutcome, CommandSpec
from agent.executor.core import Denied, OrderFlow
from agent.executor.events import (
    CommandRecorded,
    FillBooked,
    LimitUsage,
    OrderUpdated,
    PositionChanged,
    ProposalChanged,
    RiskStateChanged,
)
from agent.executor.fencing import NotLeaderError
from agent.executor.journal import Journal
from agent.executor.orders import (
    DEADMAN_OPERATOR,
    PLAYBOOK_OPERATOR,
    RISK_OPERATOR,
    CommissionCorrected,
    Contract,
    OrderError,
    OrderFilled,
    OrderIntent,
    OrderLeg,
    OrderReport,
    Origin,
    Outcome,
    Side,
    as_price,
    under_id,
)
from agent.executor.paper import PaperBroker
from agent.executor.playbook import (
    CancelOrder as PlaybookCancel,
)
from agent.executor.playbook import (
    ExitRules,
    KindRule,
    Mode,
    PlannedOrder,
    Playbook,
    PlaybookConfig,
    PlaybookConfigError,
    Pricing,
    Proposal,
    ProposalError,
    Target,
)
from agent.executor.positions import contract_greeks, flatten_intents
from agent.executor.risk import Denial, RiskConfigError, RiskContext, RiskEngine, RiskLimits, TradingState
from agent.settings import ExecutorSettings, LeaseSettings, PlaybookSettings

if TYPE_CHECKING:
    from agent.executor.lease import LeaderElector
    from agent.ib.broker import IBBroker
    from agent.runtime import AgentRuntime

log = logging.getLogger(__name__)

PUMP_S = 0.02
RISK_EVERY_S = 1.0
SYMBOL = "SPY"


@dataclass(frozen=True, slots=True)
class LegSpec:
    strike: float
    right: Right
    side: Side
    ratio: int = 1


class ExecutorStartError(RuntimeError):
    """The executor cannot start (journal locked or unusable, bad limits); the message says why."""


def risk_limits(s: ExecutorSettings) -> RiskLimits:
    names = {f.name for f in fields(RiskLimits)}
    unknown = sorted(set(s.limits) - names)
    if unknown:
        raise RiskConfigError(
            f"unknown risk limit(s) in [executor.limits]: {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    values: dict[str, Any] = dict(s.limits)
    if "max_premium_per_order" in values:
        values["max_premium_per_order"] = Decimal(str(values["max_premium_per_order"]))
    if "restricted" in values:
        values["restricted"] = frozenset(values["restricted"])
    return replace(RiskLimits(), **values)


def playbook_config(s: PlaybookSettings) -> PlaybookConfig:
    """The playbook's configuration from the typed settings (``PlaybookConfigError`` if invalid)."""
    rule = KindRule(
        mode=Mode(s.mode),
        pricing=Pricing(s.pricing),
        improve_ticks=s.improve_ticks,
        units=s.units,
        max_premium=Decimal(str(s.max_premium)),
        min_edge=s.min_edge,
    )
    exits = ExitRules(
        take_profit=Target.usd(str(s.take_profit_usd)) if s.take_profit_usd else None,
        stop_loss=Target.usd(str(s.stop_loss_usd)) if s.stop_loss_usd else None,
        max_hold_s=s.max_hold_s,
        flatten_before_close_min=s.flatten_before_close_min,
    )
    kinds = {kind: rule for kind in s.kinds} if s.mode != "off" else {}
    return PlaybookConfig(kinds=kinds, exits=exits, cooldown_s=s.cooldown_s, proposal_ttl_s=s.proposal_ttl_s)


class _CommandStore:
    """First results of operator commands by idempotency key, durable across restarts."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, outcome TEXT NOT NULL)")

    def get(self, key: str) -> CommandOutcome | None:
        row = self._db.execute("SELECT outcome FROM results WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        d = json.loads(row[0])
        d["denials"] = tuple(Denial(**x) for x in d["denials"])
        return CommandOutcome(**d)

    def put(self, key: str, outcome: CommandOutcome) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO results (key, outcome) VALUES (?, ?)", (key, json.dumps(asdict(outcome)))
        )

    def close(self) -> None:
        self._db.close()


class ExecutorRole:
    def __init__(self, rt: AgentRuntime, settings: ExecutorSettings) -> None:
        self._rt = rt
        self.settings = settings
        try:
            self.limits = risk_limits(settings)
            self.playbook = Playbook(playbook_config(settings.playbook), rt.session)
        except (RiskConfigError, PlaybookConfigError) as exc:
            raise ExecutorStartError(str(exc)) from None
        self._signals: list[Signal] = []
        settings.journal.parent.mkdir(parents=True, exist_ok=True)
        settings.paper_book.parent.mkdir(parents=True, exist_ok=True)
        try:
            prefix = re.sub(r"[^A-Za-z0-9_.]", "_", rt.settings.agent_id)[:24]  # client order id prefix
            self.journal = Journal(settings.journal, prefix, rt.session.expiry)
        except (OSError, RuntimeError, sqlite3.Error, OrderError) as exc:
            raise ExecutorStartError(f"executor journal: {exc}") from None
        self.broker: PaperBroker | IBBroker
        if settings.broker == "ib":
            ib = rt.settings.ib
            if ib.read_only:
                self.journal.close()
                raise ExecutorStartError(
                    "the IB broker cannot trade with ib.read_only = true: untick 'Read-Only API' in the "
                    "Gateway's API settings and set ib.read_only = false, or use executor.broker = 'paper'"
                )
            from agent.ib.broker import IBBroker  # ib_async is imported only when trading through IB

            self.broker = IBBroker(
                rt.ib_connection(),
                ib,
                clock_ns=rt.clock.now_ns,
                order_ref_prefix=prefix,
                intents=self._intent_of,
                session_date=rt.session.expiry,  # the journal's: only today's orderRefs are ours
            )
        else:
            self.broker = PaperBroker(
                settings.paper_book,
                rt.clock.now_ns,
                commission_per_contract=Decimal(str(settings.commission_per_contract)),
            )
        self.flow = OrderFlow(
            self.journal, self.broker, rt.clock.now_ns, fail_state=TradingState(settings.fail_state)
        )
        self.risk = RiskEngine(self.limits)
        self.commands = _CommandStore(str(settings.journal) + ".commands")
        self.elector: LeaderElector | None = None
        if settings.lease.enabled:
            self.elector = self._elector(settings.lease)
        self.armed = False
        self.last_heartbeat = time.monotonic()
        self._last_risk: RiskStateChanged | None = None
        self._book_ts_ns = 0  # market time of the last chain update (confirms the standing quotes)
        self._lock = asyncio.Lock()  # one command or report batch at a time
        rt.log.add_listener(self._on_event)

    def _elector(self, s: LeaseSettings) -> LeaderElector:
        # the Kubernetes client is imported only by replicas that elect a leader
        from kubernetes import client as k8s

        from agent.executor.lease import KubeLeaseStore, LeaderElector, LeaseError, LeaseTimings

        identity = s.identity or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        config = None
        if s.api_url:
            config = k8s.Configuration(host=s.api_url)
        try:
            store = KubeLeaseStore.connect(s.namespace, s.name, identity, configuration=config)
            timings = LeaseTimings(s.lease_duration_s, s.renew_deadline_s, s.retry_period_s)
        except (LeaseError, ValueError) as exc:
            self.close()
            raise ExecutorStartError(f"leader election: {exc}") from None
        return LeaderElector(
            store,
            identity,
            timings,
            on_started_leading=self._started_leading,
            on_stopped_leading=self._stopped_leading,
            epoch_floor=self.journal.stats().max_lease_epoch + 1,
        )

    def _started_leading(self, epoch: int) -> None:
        self._rt.notice(NoticeLevel.INFO, "executor.leader", f"leading (epoch {epoch})", "executor")
        self._publish_risk(force=True)

    def _stopped_leading(self) -> None:
        self._rt.notice(
            NoticeLevel.WARN, "executor.standby", "no longer the leader: sending nothing", "executor"
        )
        self._publish_risk(force=True)

    @property
    def leader(self) -> bool:
        return self.elector is None or self.elector.is_leader_now()

    # ------------------------------------------------------------- lifecycle

    def _intent_of(self, cid: str) -> OrderIntent | None:
        order = self.flow.orders.get(cid)
        return order.intent if order is not None else None

    @property
    def broker_name(self) -> str:
        if isinstance(self.broker, PaperBroker):
            return "paper broker"
        return f"IB broker at {self.broker.conn.address}"

    async def start(self) -> None:
        if not isinstance(self.broker, PaperBroker):
            try:
                await self.broker.start()
            except BrokerError as exc:
                raise ExecutorStartError(f"executor: {exc}") from None
        try:
            result = await self.flow.start()
        except BrokerError as exc:
            raise ExecutorStartError(f"executor: reconciliation with the broker failed: {exc}") from None
        for notice in result.notices:
            level = NoticeLevel.INFO if notice.code == "executor.reconciled" else NoticeLevel.ERROR
            self._rt.notice(level, notice.code, notice.message, source="executor")
        for order in self.flow.orders.values():
            self._rt.publish(OrderUpdated.of(order))
        self.playbook.restore(self.flow.orders.values())
        self._publish_positions()
        self._publish_risk(force=True)

    def close(self) -> None:
        self.commands.close()
        self.broker.close()
        self.journal.close()

    async def run(self) -> None:
        last_risk = 0.0
        while True:
            await asyncio.sleep(PUMP_S)
            async with self._lock:
                for report in self.broker.pump():
                    self._apply(report)
                await self._run_playbook()
                now = time.monotonic()
                if now - last_risk >= RISK_EVERY_S:
                    last_risk = now
                    await self._check_loss_limits()
                    await self._check_deadman()
                    self._publish_risk()

    def _on_event(self, ev: Event) -> None:
        if isinstance(ev.payload, ChainUpdate):
            self.broker.on_quotes(ev.payload)
            self._book_ts_ns = ev.ts_ns
        elif isinstance(ev.payload, Signal):
            self._signals.append(ev.payload)

    # ------------------------------------------------------------- publishing

    def _apply(self, report: OrderReport) -> None:
        applied = self.flow.on_report(report)
        if applied is None or applied.outcome in (Outcome.DUPLICATE, Outcome.IGNORED):
            return
        order = self.flow.orders[report.client_order_id]
        self._rt.publish(OrderUpdated.of(order))
        if isinstance(report, OrderFilled | CommissionCorrected) and applied.booked:
            exec_id = report.fill.exec_id if isinstance(report, OrderFilled) else report.exec_id
            fill = order.fills[exec_id]  # as booked: a corrected commission republishes the fill
            leg = order.intent.legs[fill.leg]
            self._rt.publish(FillBooked(fill, leg))
            self._publish_positions(leg.contract.osi)
            self._publish_risk()

    def _publish_positions(self, only_osi: str | None = None) -> None:
        book = self._rt.log.state.book
        held = [
            p
            for p in self.flow.positions.positions(include_flat=only_osi is not None)
            if only_osi is None or p.contract.osi == only_osi
        ]
        tau = self._rt.session.tau(self._rt.clock.now_ns())
        greeks = contract_greeks(book, [p.contract for p in held], tau)
        for pos in held:
            quote = book.quotes.get(pos.contract.key)
            mark = quote.mid if quote is not None else math.nan
            unreal = (
                (mark - float(pos.avg_price)) * pos.quantity * pos.contract.multiplier
                if math.isfinite(mark)
                else math.nan
            )
            g = greeks.get(pos.contract.osi)
            size = pos.quantity * pos.contract.multiplier
            if g is None:
                self._rt.publish(PositionChanged(pos, mark, unreal))
            else:
                self._rt.publish(
                    PositionChanged(
                        pos, mark, unreal, g.delta * size, g.gamma * size, g.vega * size, g.theta * size
                    )
                )

    def risk_state(self) -> RiskStateChanged:
        book = self._rt.log.state.book
        pnl = self.flow.positions.pnl(book)
        working = self.flow.working()
        total = sum(abs(p.quantity) for p in self.flow.positions.positions())
        lim = self.limits
        return RiskStateChanged(
            trading_state=self.flow.state.value.upper(),
            armed=self.armed,
            limits=(
                LimitUsage("max_working_orders", lim.max_working_orders, len(working)),
                LimitUsage("max_position_total", lim.max_position_total, total),
                LimitUsage("daily_loss_limit", lim.daily_loss_limit, max(0.0, -pnl.net)),
                LimitUsage("hard_loss_limit", lim.hard_loss_limit, max(0.0, -pnl.net)),
            ),
            realized=float(pnl.realized),
            unrealized=pnl.unrealized,
            fees=float(pnl.fees),
            leader=self.leader,
            lease_epoch=(self.elector.epoch or 0) if self.elector is not None else 0,
        )

    def _publish_risk(self, force: bool = False) -> None:
        state = self.risk_state()
        if force or state != self._last_risk:
            self._last_risk = state
            self._rt.publish(state)

    # ------------------------------------------------------------- the playbook

    async def _run_playbook(self) -> None:
        book = self._rt.log.state.book
        now = self._rt.clock.now_ns()
        signals, self._signals = self._signals, []
        for signal in signals:
            for out in self.playbook.on_signal(signal, book, now):
                if isinstance(out, Proposal):
                    self._rt.publish(ProposalChanged.of(out))
                else:
                    await self._place_planned(out, PLAYBOOK_OPERATOR)
        for proposal in self.playbook.expire(now):
            self._rt.publish(ProposalChanged.of(proposal))
        for action in self.playbook.on_tick(self.flow, book, now):
            if isinstance(action, PlaybookCancel):
                order = self.flow.orders.get(action.client_order_id)
                if order is not None and order.state.open and not order.cancel_requested:
                    try:
                        await self.flow.cancel(action.client_order_id)
                    except BrokerError as exc:
                        self._broker_refused(exc, action.client_order_id, "cancel")
                    self.risk.record_message(now)
                    self._rt.publish(OrderUpdated.of(order))
            else:
                await self._place_planned(action, PLAYBOOK_OPERATOR)

    async def _place_planned(self, plan: PlannedOrder, operator: str) -> CommandOutcome:
        """Place a playbook order; ``operator`` is who sent it (the confirming operator, or "playbook")."""
        outcome = await self._place(lambda cid: replace(plan.intent(cid), operator=operator))
        if not outcome.accepted:
            self._rt.notice(
                NoticeLevel.WARN,
                "executor.denied",
                f"{plan.purpose.value} for {plan.signal_id} not sent: {outcome.message}",
                "executor",
            )
        return outcome

    # ------------------------------------------------------------- automatic actions

    async def _check_loss_limits(self) -> None:
        action = self.risk.loss_action(self.flow.positions.pnl(self._rt.log.state.book), self.flow.state)
        if action.state is not self.flow.state:
            self.flow.state = action.state
            self._rt.notice(NoticeLevel.ERROR, "risk.loss_limit", action.reason, source="executor")
            if action.flatten:
                await self._halt("hard loss limit")
                await self._flatten("hard loss limit", RISK_OPERATOR)

    async def _check_deadman(self) -> None:
        silent = time.monotonic() - self.last_heartbeat
        if not self.armed or silent < self.settings.deadman_s:
            return
        why = (
            f"no operator heartbeat for {silent:.0f} s while armed (dead-man: {self.settings.deadman_action})"
        )
        self.armed = False
        self._rt.notice(NoticeLevel.ERROR, "executor.deadman", why, source="executor")
        if self.settings.deadman_action in ("halt", "flatten"):
            await self._halt("dead-man")
        if self.settings.deadman_action == "flatten":
            await self._flatten("dead-man", DEADMAN_OPERATOR)

    # ------------------------------------------------------------- orders

    def _ctx(self) -> RiskContext:
        return RiskContext(
            now_ns=self._rt.clock.now_ns(),
            state=self.flow.state,
            armed=self.armed,
            book=self._rt.log.state.book,
            positions=self.flow.positions,
            working=self.flow.working(),
            session=self._rt.session,
            book_ts_ns=self._book_ts_ns,
        )

    def _veto(self, intent: OrderIntent) -> tuple[Denial, ...]:
        return self.risk.check(intent, self._ctx())

    async def _place(self, build: Callable[[str], OrderIntent]) -> CommandOutcome:
        elector = self.elector
        fence: Callable[[OrderIntent], None] | None = None
        if elector is not None:
            try:
                epoch = elector.fence()
            except NotLeaderError as exc:
                return CommandOutcome(False, "not_leader", str(exc), "", (Denial("not_leader", str(exc)),))
            unfenced = build

            def build(cid: str) -> OrderIntent:
                return replace(unfenced(cid), lease_epoch=epoch)

            def fence(intent: OrderIntent) -> None:
                elector.fence(expect=intent.lease_epoch)

        journaled: list[str] = []
        decide = build

        def tracked(cid: str) -> OrderIntent:
            intent = decide(cid)
            journaled.append(intent.client_order_id)
            return intent

        try:
            placed = await self.flow.place(tracked, self._veto, fence)
        except BrokerError as exc:
            return self._broker_refused(exc, journaled[-1] if journaled else "", "submit")
        if isinstance(placed, Denied):
            reasons = "; ".join(d.reason for d in placed.denials)
            return CommandOutcome(False, "denied", reasons, placed.client_order_id, placed.denials)
        intent = placed.intent
        self.risk.record_sent(intent, self._rt.clock.now_ns())
        self._rt.publish(OrderUpdated.of(self.flow.orders[intent.client_order_id]))
        return CommandOutcome(True, "ok", f"sent {intent.describe()}", intent.client_order_id)

    def _broker_refused(self, exc: BrokerError, cid: str, what: str) -> CommandOutcome:
        """The broker raised while taking a submit or cancel: the journaled order stays as it is (open)
        and its fate is settled by the broker's reports or by reconciliation on the next start; it is
        never dropped and never assumed rejected, since the request may have reached the broker."""
        order = self.flow.orders.get(cid)
        if order is not None:
            if what == "submit":
                self.risk.record_sent(order.intent, self._rt.clock.now_ns())  # it may be at the broker
            self._rt.publish(OrderUpdated.of(order))
        message = f"{what} failed at the {self.broker_name}: {exc}"
        if order is not None:
            message += (
                f" (order {cid} kept {order.state.value} until the broker or reconciliation settles it)"
            )
        self._rt.notice(NoticeLevel.ERROR, "executor.broker_error", message, "executor")
        return CommandOutcome(False, "broker_error", message, cid)

    def _contract(self, strike: float, right: Right, expiry: str) -> Contract:
        book = self._rt.log.state.book
        if (strike, right) not in book.quotes:
            raise OrderError(f"unknown contract: no quote for {SYMBOL} {expiry} {strike:g}{right.value}")
        return Contract(SYMBOL, expiry, strike, right, book.multiplier, Decimal(str(book.tick)))

    def _manual_order(
        self, side: Side, quantity: int, price: str, legs: list[LegSpec], expiry: str, operator: str
    ) -> OrderIntent:
        """An operator's order, checked against the live chain (unknown contracts, the tick)."""
        contracts = [self._contract(leg.strike, leg.right, expiry) for leg in legs]
        tick = max(c.tick for c in contracts)
        limit = as_price(price, tick, allow_non_positive=len(legs) > 1)
        order_legs = tuple(OrderLeg(c, leg.side, leg.ratio) for c, leg in zip(contracts, legs, strict=True))
        return OrderIntent(
            "manual",  # the journal gives the real client order id
            side,
            quantity,
            limit,
            order_legs,
            self._rt.clock.now_ns(),
            origin=Origin.MANUAL,
            operator=operator,
        )

    async def _halt(self, reason: str) -> int:
        self.flow.state = TradingState.HALTED
        cancelled = 0
        failed: list[str] = []
        for order in self.flow.working():
            if not order.cancel_requested:
                try:
                    await self.flow.cancel(order.client_order_id)
                except BrokerError as exc:
                    failed.append(self._broker_refused(exc, order.client_order_id, "cancel").client_order_id)
                    continue
                finally:
                    self.risk.record_message(self._rt.clock.now_ns())
                    self._rt.publish(OrderUpdated.of(order))
                cancelled += 1
        self._rt.notice(
            NoticeLevel.WARN if not failed else NoticeLevel.ERROR,
            "executor.halted",
            f"halted ({reason}): {cancelled} order(s) cancelled"
            + (f"; cancel NOT sent for {', '.join(failed)} (broker error)" if failed else ""),
            "executor",
        )
        self._publish_risk(force=True)
        return cancelled

    async def _flatten(self, reason: str, operator: str) -> tuple[int, list[str]]:
        """Close every position with a marketable limit inside the collar (at the touch); ``operator``
        is who asked (an operator's name, or the automatic action)."""
        intents, problems = flatten_intents(
            self.flow.positions, self._rt.log.state.book, self._rt.clock.now_ns()
        )
        sent = 0
        for template in intents:
            outcome = await self._place(under_id(replace(template, operator=operator)))
            if outcome.accepted:
                sent += 1
            else:
                problems.append(f"{template.legs[0].contract.osi.strip()}: {outcome.message}")
        self._rt.notice(
            NoticeLevel.WARN,
            "executor.flatten",
            f"flatten ({reason}): {sent} closing order(s) sent"
            + (f"; {'; '.join(problems)}" if problems else ""),
            "executor",
        )
        return sent, problems

    # ------------------------------------------------------------- commands

    async def execute(self, cmd: CommandSpec) -> CommandOutcome:
        """Run one operator command once per idempotency key, and record it as an audit event."""
        if not cmd.idempotency_key:
            return self._audit(cmd, CommandOutcome(False, "invalid", "an idempotency key is required"))
        async with self._lock:
            first = self.commands.get(cmd.idempotency_key)
            if first is not None:
                return replace(first, replayed=True)
            if not cmd.operator or (self.settings.operators and cmd.operator not in self.settings.operators):
                outcome = CommandOutcome(
                    False, "unknown_operator", f"operator {cmd.operator!r} is not allowed here"
                )
            else:
                handler = self._handlers().get(cmd.kind)
                if handler is None:
                    outcome = CommandOutcome(False, "invalid", f"unknown command {cmd.kind!r}")
                else:
                    try:
                        outcome = await handler(cmd.args, cmd.operator)
                    except (OrderError, ValueError, KeyError, InvalidOperation) as exc:
                        outcome = CommandOutcome(False, "invalid", str(exc).strip("'\""))
                    except BrokerError as exc:  # any other broker call a command made
                        outcome = self._broker_refused(exc, "", cmd.kind)
            self.last_heartbeat = time.monotonic()  # any command is a sign of life
            outcome = self._audit(cmd, outcome)
            self.commands.put(cmd.idempotency_key, outcome)
            self._publish_risk()
            return outcome

    def _audit(self, cmd: CommandSpec, outcome: CommandOutcome) -> CommandOutcome:
        ev = self._rt.log.publish(
            CommandRecorded(
                command=cmd.kind,
                operator=cmd.operator,
                idempotency_key=cmd.idempotency_key,
                arguments_json=json.dumps(cmd.args, sort_keys=True, default=str),
                accepted=outcome.accepted,
                result=f"{outcome.code}: {outcome.message}",
            )
        )
        return replace(outcome, audit_seq=ev.seq)

    def _handlers(self) -> dict[str, Callable[[dict[str, Any], str], Awaitable[CommandOutcome]]]:
        """Command handlers by kind; each gets the command's arguments and its operator."""
        return {
            "set_armed": self._cmd_set_armed,
            "set_trading_state": self._cmd_set_trading_state,
            "halt": self._cmd_halt,
            "flatten": self._cmd_flatten,
            "submit_order": self._cmd_submit,
            "cancel_order": self._cmd_cancel,
            "heartbeat": self._cmd_heartbeat,
            "set_limits": self._cmd_set_limits,
            "decide_proposal": self._cmd_decide,
        }

    async def _cmd_decide(self, args: dict[str, Any], operator: str) -> CommandOutcome:
        pid, now = str(args["proposal_id"]), self._rt.clock.now_ns()
        try:
            if not args["confirm"]:
                proposal = self.playbook.reject(pid, now)
                self._rt.publish(ProposalChanged.of(proposal))
                return CommandOutcome(True, "ok", f"proposal {pid} rejected")
            plan = self.playbook.confirm(pid, now, self._rt.log.state.book)
        except ProposalError as exc:
            return CommandOutcome(False, "invalid", str(exc))
        for proposal in self.playbook.proposals(pending_only=False):
            if proposal.id == pid:
                self._rt.publish(ProposalChanged.of(proposal))
        return await self._place_planned(plan, operator)

    async def _cmd_set_armed(self, args: dict[str, Any], operator: str) -> CommandOutcome:
        self.armed = bool(args["armed"])
        if self.armed:
            self.last_heartbeat = time.monotonic()
        return CommandOutcome(True, "ok", "armed" if self.armed else "disarmed")

    async def _cmd_set_trading_state(self, args: dict[str, Any], operator: str) -> CommandOutcome:
        name = str(args["state"]).strip().lower()
        try:
            state = TradingState(name)
        except ValueError:
            raise ValueError(f"unknown trading state {args['state']!r}: ACTIVE, REDUCING or HALTED") from None
        self.flow.state = state
        return CommandOutcome(True, "ok", f"trading state {state.value.upper()}")

    async def _cmd_halt(self, args: dict[str, Any], operator: str) -> CommandOutcome:
        n = await self._halt(str(args.get("reason") or "operator"))
        return CommandOutcome(True, "ok", f"halted: {n} working order(s) cancelled")

    async def _cmd_flatten(self, args: dict[str, Any], operator: str) -> CommandOutcome:
        sent, problems = await self._flatten(str(args.get("reason") or "operator"), operator)
        msg = f"{sent} closing order(s) sent" + (f"; not closed: {'; '.join(problems)}" if problems else "")
        return CommandOutcome(not problems, "ok" if not problems else "partial", msg)

    async def _cmd_heartbeat(self, args: dict[str, Any], operator: str) -> CommandOutcome:
        return CommandOutcome(True, "ok", "heartbeat")

    async def _cmd_cancel(self, args: dict[str, Any], operator: str) -> CommandOutcome:
        cid = str(args["client_order_id"])
        if cid not in self.flow.orders:
            return CommandOutcome(False, "invalid", f"no order {cid}")
        try:
            applied = await self.flow.cancel(cid)
        except BrokerError as exc:
            self.risk.record_message(self._rt.clock.now_ns())
            return self._broker_refused(exc, cid, "cancel")
        self.risk.record_message(self._rt.clock.now_ns())
        self._rt.publish(OrderUpdated.of(self.flow.orders[cid]))
        if applied.outcome is Outcome.IGNORED:
            return CommandOutcome(False, "invalid", applied.detail, cid)
        return CommandOutcome(True, "ok", f"cancel requested for {cid}", cid)

    async def _cmd_submit(self, args: dict[str, Any], operator: str) -> CommandOutcome:
        side = Side(str(args["side"]).upper())
        quantity = int(args["quantity"])
        legs = [
            LegSpec(
                float(x["strike"]),
                Right.parse(str(x["right"])),
                Side(str(x["side"]).upper()),
                int(x.get("ratio", 1)),
            )
            for x in args["legs"]
        ]
        if not legs:
            raise ValueError("an order needs at least one leg")
        expiry = str(args.get("expiry") or self._rt.session.expiry)
        order = self._manual_order(side, quantity, str(args["limit_price"]), legs, expiry, operator)
        if args.get("preview"):
            intent = replace(order, client_order_id="preview")
            denials = self._veto(intent)
            verdict = (
                "would be sent" if not denials else "would be denied: " + "; ".join(d.reason for d in denials)
            )
            return CommandOutcome(not denials, "preview", f"{intent.describe()} {verdict}", "", denials)
        return await self._place(under_id(order))

    async def _cmd_set_limits(self, args: dict[str, Any], operator: str) -> CommandOutcome:
        names = {f.name: f for f in fields(RiskLimits)}
        changes: dict[str, Any] = {}
        for key, raw in dict(args["limits"]).items():
            if key not in names:
                raise ValueError(f"unknown limit {key!r}; known: {', '.join(sorted(names))}")
            current = getattr(self.limits, key)
            if isinstance(current, bool):
                raise ValueError(f"{key} cannot be set here")
            if isinstance(current, int):
                changes[key] = int(raw)
            elif isinstance(current, float):
                changes[key] = float(raw)
            elif isinstance(current, Decimal):
                changes[key] = Decimal(str(raw))
            elif isinstance(current, frozenset):
                changes[key] = frozenset(x.strip() for x in str(raw).split(",") if x.strip())
            else:
                changes[key] = str(raw)
        try:
            limits = replace(self.limits, **changes)
        except RiskConfigError as exc:
            return CommandOutcome(False, "invalid", str(exc))
        self.limits = limits
        self.risk.limits = limits
        return CommandOutcome(True, "ok", "limits set: " + ", ".join(f"{k}={v}" for k, v in changes.items()))
