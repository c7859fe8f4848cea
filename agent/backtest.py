"""``spyctl backtest FILE``: the detector and the executor over a recording (or an IB chain CSV).

The same pieces as the live agent, fed from a file instead of a feed, and driven by the file's own
market time (never the wall clock):

* the :class:`~agent.detector.engine.Detector` with the detector role's thresholds, one evaluation
  per chain update (as ``spyctl detect``);
* the :class:`~agent.executor.playbook.Playbook`, by default in ``auto`` for the arbitrage kinds
  (``propose-all-confirmed`` runs the proposal path instead, every proposal confirmed at once and
  re-priced on the book of that moment); its exits, entry time-outs and flatten before close apply;
* every order through :class:`~agent.executor.core.OrderFlow` (journal first) under the
  :class:`~agent.executor.risk.RiskEngine`'s pre-trade checks, armed and ACTIVE, with the daily and
  hard loss limits moving the trading state as in the executor role;
* the :class:`~agent.executor.paper.PaperBroker`, whose clock is the replay's current time: an order
  sent on one update goes live ``latency_ns`` later, so it fills on a later update, at that update's
  touch, and the fill is reported after one more latency.

Journal and paper book live in a temporary directory unless ``state_dir`` is given (it must not
hold a backtest already). At the end of the file every order still open is expired and what is still
held is marked at the last mid (a contract without a two-sided quote is listed as unmarked).

The result is typed (:class:`BacktestResult`): one :class:`BacktestTrade` per traded signal and a
:class:`BacktestSummary` with the totals, which come from the executor's own position book.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any, Final

from agent.detector.engine import Detector
from agent.detector.signals import ARBITRAGE_KINDS, Signal
from agent.domain import ChainBook, ChainUpdate, UnderlyingTick
from agent.executor.core import Denied, OrderFlow
from agent.executor.journal import Journal, JournalError
from agent.executor.orders import (
    PLAYBOOK_OPERATOR,
    RISK_OPERATOR,
    ZERO,
    Fill,
    Order,
    OrderError,
    OrderIntent,
    OrderLeg,
    Side,
    under_id,
)
from agent.executor.paper import PaperBroker
from agent.executor.playbook import (
    CancelOrder,
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
    ProposalStatus,
    Purpose,
)
from agent.executor.positions import PositionBook, flatten_intents
from agent.executor.risk import RiskContext, RiskEngine, RiskLimits, TradingState
from agent.feeds.replay import ReplayError, open_replay
from agent.roles.detector import detector_config
from agent.session import NEW_YORK, CalendarError, Session, session_on_or_after
from agent.settings import DetectorSettings
from proto.recording import RecordingError

log = logging.getLogger(__name__)

PREFIX: Final = "backtest"  # client order id prefix of the backtest's executor
JOURNAL_FILE: Final = "journal.sqlite"
BOOK_FILE: Final = "paper-book.sqlite"
RISK_FLATTEN: Final = "risk_flatten"  # the trade rows of the hard loss limit's flatten orders
CENT: Final = Decimal("0.01")
PRICE_STEP: Final = Decimal("0.0001")  # average prices per unit


class BacktestError(ValueError):
    """The backtest cannot run (unreadable file, nothing to replay, bad settings, busy state dir)."""


class EntryMode(Enum):
    """How signals become entries: directly (``auto``) or as proposals an operator confirms at once."""

    AUTO = "auto"
    PROPOSE_ALL_CONFIRMED = "propose-all-confirmed"


@dataclass(frozen=True, slots=True)
class BacktestConfig:
    mode: EntryMode = EntryMode.AUTO
    kinds: tuple[str, ...] = ARBITRAGE_KINDS
    units: int = 1  # combinations per entry, before the playbook's caps
    pricing: Pricing = Pricing.TOUCH
    improve_ticks: int = 1  # with pricing improve
    max_premium: Decimal = Decimal("1000")  # dollars per entry (the playbook's cap)
    commission_per_contract: Decimal = Decimal("0.65")
    latency_ns: int = 5_000_000  # the paper broker's
    exits: ExitRules = field(default_factory=ExitRules)
    limits: RiskLimits = field(default_factory=RiskLimits)
    detector: DetectorSettings = field(default_factory=DetectorSettings)

    def playbook_config(self) -> PlaybookConfig:
        """The playbook's configuration; PlaybookConfigError names a bad setting."""
        mode = Mode.AUTO if self.mode is EntryMode.AUTO else Mode.PROPOSE
        rule = KindRule(
            mode=mode,
            pricing=self.pricing,
            improve_ticks=self.improve_ticks if self.pricing is Pricing.IMPROVE else 0,
            units=self.units,
            max_premium=self.max_premium,
        )
        return PlaybookConfig(kinds={k: rule for k in self.kinds}, exits=self.exits)


@dataclass(frozen=True, slots=True)
class BacktestTrade:
    """What the playbook did with one signal: its entry, its exits and their P&L.

    Prices are per unit of the combination as its legs are defined (buy legs minus sell legs), the
    average of the fills; ``realized`` is in dollars before fees, on the units closed; ``unrealized``
    marks the units still held at the last mid (NaN when a leg had no two-sided quote).
    """

    signal_id: str
    kind: str
    side: Side  # the combination bought or sold by the entry
    legs: tuple[OrderLeg, ...]
    entry_ns: int  # first entry fill
    entry_price: Decimal
    entry_units: int
    exit_ns: int  # last exit fill, 0 when nothing was closed
    exit_price: Decimal | None
    exit_units: int
    exit_reason: str  # take_profit, stop_loss, time_exit, flatten; "" while held
    held_units: int
    contracts: int  # every contract filled, entries and exits
    realized: Decimal
    unrealized: float  # of the marked legs
    fees: Decimal
    fills: tuple[Fill, ...]  # in market time order
    unmarked: tuple[str, ...] = ()  # held contracts without a two-sided quote at the end

    @property
    def net(self) -> float:
        return float(self.realized - self.fees) + self.unrealized

    def describe_legs(self) -> str:
        return " / ".join(
            f"{leg.side_for(self.side).value.lower()} {leg.ratio}x {leg.contract.strike:g}{leg.contract.right.value}"
            for leg in self.legs
        )


@dataclass(frozen=True, slots=True)
class BacktestSummary:
    file: str
    source: str  # recording or ib_csv
    session_date: str
    start_ns: int
    end_ns: int
    chain_updates: int
    signals: int  # distinct signals of the traded kinds
    proposals: int
    orders: int  # sent to the paper broker (entries, exits, flatten)
    fills: int  # executions
    contracts: int
    cancels: int
    expired: int  # orders still open at the end of the file
    denials: tuple[tuple[str, int], ...]  # risk denial code -> count, by code
    realized: Decimal
    unrealized: float
    fees: Decimal
    unmarked: tuple[str, ...]
    trading_state: str
    notes: tuple[str, ...] = ()

    @property
    def net(self) -> float:
        return float(self.realized - self.fees) + self.unrealized

    @property
    def denied(self) -> int:
        return sum(n for _, n in self.denials)


@dataclass(frozen=True, slots=True)
class BacktestResult:
    trades: tuple[BacktestTrade, ...]
    summary: BacktestSummary


# ---------------------------------------------------------------- plain data for JSON


def _money(d: Decimal | None) -> float | None:
    return None if d is None else float(d)


def _time(ns: int) -> str | None:
    return dt.datetime.fromtimestamp(ns / 1e9, NEW_YORK).isoformat() if ns else None


def trade_dict(t: BacktestTrade) -> dict[str, Any]:
    """One trade as JSON-ready data (money as numbers in dollars, times in New York ISO format)."""
    return {
        "type": "trade",
        "signal_id": t.signal_id,
        "kind": t.kind,
        "side": t.side.value,
        "legs": [
            {
                "strike": leg.contract.strike,
                "right": leg.contract.right.value,
                "side": leg.side_for(t.side).value,
                "ratio": leg.ratio,
                "osi": leg.contract.osi.strip(),
            }
            for leg in t.legs
        ],
        "entry_time": _time(t.entry_ns),
        "entry_price": _money(t.entry_price),
        "entry_units": t.entry_units,
        "exit_time": _time(t.exit_ns),
        "exit_price": _money(t.exit_price),
        "exit_units": t.exit_units,
        "exit_reason": t.exit_reason,
        "held_units": t.held_units,
        "contracts": t.contracts,
        "realized": _money(t.realized),
        "unrealized": round(t.unrealized, 2),
        "fees": _money(t.fees),
        "net": round(t.net, 2),
        "unmarked": list(t.unmarked),
    }


def summary_dict(s: BacktestSummary) -> dict[str, Any]:
    return {
        "type": "summary",
        "file": s.file,
        "source": s.source,
        "session_date": s.session_date,
        "start_time": _time(s.start_ns),
        "end_time": _time(s.end_ns),
        "chain_updates": s.chain_updates,
        "signals": s.signals,
        "proposals": s.proposals,
        "orders": s.orders,
        "fills": s.fills,
        "contracts": s.contracts,
        "cancels": s.cancels,
        "expired": s.expired,
        "denials": dict(s.denials),
        "realized": _money(s.realized),
        "unrealized": round(s.unrealized, 2),
        "fees": _money(s.fees),
        "net": round(s.net, 2),
        "unmarked": list(s.unmarked),
        "trading_state": s.trading_state,
        "notes": list(s.notes),
    }


# ---------------------------------------------------------------- the run


def run_backtest(
    path: Path, config: BacktestConfig | None = None, state_dir: Path | None = None
) -> BacktestResult:
    """Backtest ``path`` (see the module docstring); BacktestError when it cannot run."""
    return asyncio.run(backtest(path, config, state_dir))


async def backtest(
    path: Path, config: BacktestConfig | None = None, state_dir: Path | None = None
) -> BacktestResult:
    """:func:`run_backtest` for callers already in an event loop."""
    cfg = config or BacktestConfig()
    try:
        playbook_config = cfg.playbook_config()
    except (PlaybookConfigError, OrderError) as exc:
        raise BacktestError(str(exc)) from None
    try:
        source = open_replay(path)
    except (ReplayError, OSError) as exc:
        raise BacktestError(str(exc)) from None
    first_ts = source.first_ts_ns
    if not first_ts:
        raise BacktestError(
            f"{path} holds no timed market data to backtest (empty or corrupt from the start)"
        )
    day = dt.datetime.fromtimestamp(first_ts / 1e9, NEW_YORK).date()
    try:
        sess = session_on_or_after(day)
    except CalendarError as exc:
        raise BacktestError(f"{path}: {exc}") from None
    with ExitStack() as stack:
        if state_dir is None:
            where = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="spy-backtest-")))
        else:
            where = state_dir
            where.mkdir(parents=True, exist_ok=True)
            if (where / JOURNAL_FILE).exists() or (where / BOOK_FILE).exists():
                raise BacktestError(
                    f"{where} already holds a backtest's journal or paper book: give an empty directory"
                )
        run = _Run(path, source.kind, sess, cfg, playbook_config, where, first_ts)
        stack.callback(run.close)
        await run.start()
        try:
            for item in source.items():
                await run.on_item(item.ts_ns, item.payload)
        except RecordingError as exc:  # a recording cut short or damaged: report up to the damage
            run.notes.append(f"the recording is damaged, results cover the part before it: {exc}")
        return await run.finish()
    raise AssertionError("unreachable: ExitStack does not swallow exceptions")


class _Run:
    """One backtest's executor, driven by the file's market time (``now``)."""

    def __init__(
        self,
        path: Path,
        source_kind: str,
        sess: Session,
        cfg: BacktestConfig,
        playbook_config: PlaybookConfig,
        where: Path,
        first_ts: int,
    ) -> None:
        self.path = path
        self.source_kind = source_kind
        self.session = sess
        self.cfg = cfg
        self.now = first_ts
        self.start_ns = first_ts
        self.notes: list[str] = []
        self.detector = Detector(detector_config(cfg.detector), sess)
        self.playbook = Playbook(playbook_config, sess)
        self.risk = RiskEngine(cfg.limits)
        self.book = ChainBook()
        self.book_ts = 0
        self.tick: UnderlyingTick | None = None
        clock: Callable[[], int] = lambda: self.now  # noqa: E731  (the replay's time, never the wall's)
        try:
            self.journal = Journal(where / JOURNAL_FILE, PREFIX, sess.expiry)
        except (JournalError, OSError) as exc:
            raise BacktestError(f"backtest journal: {exc}") from None
        try:
            self.broker = PaperBroker(
                where / BOOK_FILE,
                clock,
                latency_ns=cfg.latency_ns,
                commission_per_contract=cfg.commission_per_contract,
            )
        except (JournalError, OSError) as exc:
            self.journal.close()
            raise BacktestError(f"backtest paper book: {exc}") from None
        self.flow = OrderFlow(self.journal, self.broker, clock)
        self.kinds: dict[str, str] = {}  # signal id -> kind, for the traded kinds
        self.purposes: dict[str, Purpose] = {}  # client order id -> why the playbook sent it
        self.updates = 0
        self.proposals = 0
        self.sent = 0
        self.cancels = 0
        self.expired = 0
        self.denials: Counter[str] = Counter()

    def close(self) -> None:
        self.broker.close()
        self.journal.close()

    async def start(self) -> None:
        await self.flow.start()
        self.flow.state = TradingState.ACTIVE  # a fresh journal and book: nothing to reconcile

    # ------------------------------------------------------------- the replay

    async def on_item(self, ts_ns: int, payload: object) -> None:
        if ts_ns > self.now:
            self.now = ts_ns
        if isinstance(payload, UnderlyingTick):
            self.tick = payload
        elif isinstance(payload, ChainUpdate):
            await self.on_chain(payload)
            return
        self.pump()

    async def on_chain(self, update: ChainUpdate) -> None:
        if update.underlying_tick is not None:
            self.tick = update.underlying_tick
        self.updates += 1
        self.book.apply(update)
        self.book_ts = self.now
        self.broker.on_quotes(update)
        self.pump()  # what is due at these quotes: acks, fills of live orders, reports in flight
        await self.check_loss_limits()
        out = self.detector.on_chain(update, self.tick, self.now)
        for sig in out.signals_changed:
            await self.on_signal(sig)
        for action in self.playbook.on_tick(self.flow, self.book, self.now):
            if isinstance(action, CancelOrder):
                await self.cancel(action.client_order_id)
            else:
                await self.place(action)
        self.playbook.expire(self.now)

    async def on_signal(self, sig: Signal) -> None:
        if sig.kind in self.cfg.kinds:
            self.kinds.setdefault(sig.id, sig.kind)
        for item in self.playbook.on_signal(sig, self.book, self.now):
            if isinstance(item, PlannedOrder):
                await self.place(item)
            elif item.status is ProposalStatus.PENDING:
                await self.confirm(item)

    async def confirm(self, proposal: Proposal) -> None:
        self.proposals += 1
        try:
            plan = self.playbook.confirm(proposal.id, self.now, self.book)
        except ProposalError as exc:
            log.info("backtest: proposal %s not confirmed: %s", proposal.id, exc)
            return
        await self.place(plan)

    def pump(self) -> None:
        for report in self.broker.pump():
            self.flow.on_report(report)

    # ------------------------------------------------------------- orders under risk

    def context(self) -> RiskContext:
        return RiskContext(
            now_ns=self.now,
            state=self.flow.state,
            armed=True,
            book=self.book,
            positions=self.flow.positions,
            working=self.flow.working(),
            session=self.session,
            book_ts_ns=self.book_ts,
        )

    async def place(self, plan: PlannedOrder) -> None:
        await self.send(lambda cid: replace(plan.intent(cid), operator=PLAYBOOK_OPERATOR), plan.purpose)

    async def send(self, build: Callable[[str], OrderIntent], purpose: Purpose) -> None:
        placed = await self.flow.place(build, lambda i: self.risk.check(i, self.context()))
        if isinstance(placed, Denied):
            self.denials.update(d.code for d in placed.denials)
            log.info(
                "backtest: %s denied: %s", placed.client_order_id, "; ".join(d.reason for d in placed.denials)
            )
            return
        self.risk.record_sent(placed.intent, self.now)
        self.purposes[placed.intent.client_order_id] = purpose
        self.sent += 1

    async def cancel(self, cid: str) -> None:
        order = self.flow.orders.get(cid)
        if order is None or order.state.terminal or order.cancel_requested:
            return
        await self.flow.cancel(cid)
        self.risk.record_message(self.now)
        self.cancels += 1

    async def check_loss_limits(self) -> None:
        """The executor role's loss limits: REDUCING past the daily one, HALTED and flatten past the hard one."""
        action = self.risk.loss_action(self.flow.positions.pnl(self.book), self.flow.state)
        if action.state is self.flow.state:
            return
        self.flow.state = action.state
        self.notes.append(f"{_time(self.now)}: {action.reason}: trading state {action.state.value}")
        if action.flatten:
            for o in self.flow.working():
                await self.cancel(o.client_order_id)
            await self.flatten()

    async def flatten(self) -> None:
        intents, problems = flatten_intents(self.flow.positions, self.book, self.now)
        self.notes.extend(f"flatten: {p}" for p in problems)
        for intent in intents:
            await self.send(under_id(replace(intent, operator=RISK_OPERATOR)), Purpose.FLATTEN)

    # ------------------------------------------------------------- the end

    async def finish(self) -> BacktestResult:
        end = self.now
        self.pump()
        self.expired = self.broker.expire_all("the backtest's file ended")
        self.now = end + self.cfg.latency_ns  # release the reports still in flight (fills, expiries)
        self.pump()
        self.now = end
        orders = list(self.flow.orders.values())
        trades = tuple(self.trades(orders))
        pnl = self.flow.positions.pnl(self.book)
        fills = [f for o in orders for f in o.fills.values()]
        summary = BacktestSummary(
            file=self.path.name,
            source=self.source_kind,
            session_date=self.session.date.isoformat(),
            start_ns=self.start_ns,
            end_ns=end,
            chain_updates=self.updates,
            signals=len(self.kinds),
            proposals=self.proposals,
            orders=self.sent,
            fills=len(fills),
            contracts=sum(f.quantity for f in fills),
            cancels=self.cancels,
            expired=self.expired,
            denials=tuple(sorted(self.denials.items())),
            realized=_cents(pnl.realized),
            unrealized=pnl.unrealized,
            fees=_cents(pnl.fees),
            unmarked=tuple(s.strip() for s in pnl.unmarked),
            trading_state=self.flow.state.value,
            notes=tuple(self.notes),
        )
        return BacktestResult(trades, summary)

    def trades(self, orders: list[Order]) -> Iterator[BacktestTrade]:
        """One trade per signal and legs with at least one fill, in the order they were entered.

        The closing orders of the hard loss limit's flatten trade contracts, not signals: they are
        rows of their own (signal id ``RISK_FLATTEN``), one per contract.
        """
        groups: dict[tuple[object, ...], list[Order]] = {}
        for o in sorted(orders, key=lambda o: (o.intent.created_ns, o.client_order_id)):
            if o.fills:
                key = (
                    o.intent.signal_id,
                    tuple((leg.contract.osi, leg.side, leg.ratio) for leg in o.intent.legs),
                )
                groups.setdefault(key, []).append(o)
        for group in groups.values():
            yield self.trade(group)

    def trade(self, group: list[Order]) -> BacktestTrade:
        first = group[0].intent
        entries = [o for o in group if o.intent.side is first.side]
        exits = [o for o in group if o.intent.side is not first.side]
        book = PositionBook()
        fills = sorted(
            ((f, o.intent.legs[f.leg].contract) for o in group for f in o.fills.values()),
            key=lambda fc: (fc[0].ts_ns, fc[0].client_order_id, fc[0].exec_id),
        )
        for f, contract in fills:
            book.apply(f, contract)
        pnl = book.pnl(self.book)
        entry_units = sum(o.filled for o in entries)
        exit_units = sum(o.filled for o in exits)
        closed = [o for o in exits if o.fills]
        return BacktestTrade(
            signal_id=first.signal_id or RISK_FLATTEN,
            kind=self.kinds.get(first.signal_id, first.signal_id.split(":", 1)[0]) or RISK_FLATTEN,
            side=first.side,
            legs=first.legs,
            entry_ns=min((f.ts_ns for o in entries for f in o.fills.values()), default=0),
            entry_price=_net_price(entries) or ZERO,  # a trade has an entry fill
            entry_units=entry_units,
            exit_ns=max((f.ts_ns for o in closed for f in o.fills.values()), default=0),
            exit_price=_net_price(exits),
            exit_units=exit_units,
            exit_reason=self.purposes[closed[-1].client_order_id].value if closed else "",
            held_units=max(entry_units - exit_units, 0),
            contracts=sum(f.quantity for f, _ in fills),
            realized=_cents(pnl.realized),
            unrealized=pnl.unrealized,
            fees=_cents(pnl.fees),
            fills=tuple(f for f, _ in fills),
            unmarked=tuple(s.strip() for s in pnl.unmarked),
        )


def _net_price(orders: list[Order]) -> Decimal | None:
    """Average price per unit, as the legs are defined, of the complete units ``orders`` filled."""
    total, units = ZERO, 0
    for o in orders:
        if o.filled <= 0:
            continue
        price = ZERO
        for i, leg in enumerate(o.intent.legs):
            avg = o.leg_avg_price(i)
            if avg is None:
                break
            price += leg.side.sign * leg.ratio * avg
        else:
            total += price * o.filled
            units += o.filled
    return (total / units).quantize(PRICE_STEP) if units else None


def _cents(d: Decimal) -> Decimal:
    return d.quantize(CENT)


__all__ = [
    "BacktestConfig",
    "BacktestError",
    "BacktestResult",
    "BacktestSummary",
    "BacktestTrade",
    "EntryMode",
    "backtest",
    "run_backtest",
    "summary_dict",
    "trade_dict",
]
