"""The paper broker: an external broker simulated in-process, with its own durable book.

It behaves like a venue the executor does not control:

* its book (orders, executions) lives in its own SQLite file, committed *before* any report about it
  is released, so after a crash of the whole process the broker still knows every order it accepted
  and every execution it made, exactly as IB would; reports still in flight are lost, as on a
  dropped connection, and the executor recovers them through reconciliation;
* it is idempotent on the client order id: a resubmitted intent (after a crash) is not a second order;
* limit orders fill against the live quotes it is fed (:meth:`on_quotes`) at the touch (buy legs at
  the ask, sell legs at the bid), a spread when its net price at the touch is inside its limit, each
  fill at most the displayed size not already taken at that quote (partial fills);
* an order becomes live ``latency_ns`` after submission, and every report is released ``latency_ns``
  after the event; :class:`Faults` adds rejects, extra delays and duplicated reports.

Time comes from ``clock`` (market ns); :meth:`pump` does everything that is due. ``run`` pumps on a
timer for the async world; tests call :meth:`pump` directly with a fake clock.

The book uses ``synchronous=NORMAL`` in WAL mode: this broker only has to survive process crashes
(that is what it simulates), not power loss.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import random
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from agent.domain import ChainBook, ChainUpdate, OptionQuote, QuoteFlag, Right
from agent.executor.broker import BrokerOrder, BrokerPosition
from agent.executor.journal import FileLock, fill_from_dict, fill_to_dict, intent_from_dict, intent_to_dict
from agent.executor.orders import (
    ZERO,
    CancelRejected,
    Contract,
    Fill,
    OrderAccepted,
    OrderCancelled,
    OrderExpired,
    OrderFilled,
    OrderIntent,
    OrderRejected,
    OrderReport,
    OrderState,
    Side,
    nearest_tick,
)

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    client_order_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    leg_filled TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    live_at_ns INTEGER NOT NULL,
    cancel_at_ns INTEGER,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS executions (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    exec_id TEXT NOT NULL UNIQUE,
    client_order_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_OPEN = (OrderState.PENDING_NEW.value, OrderState.WORKING.value, OrderState.PARTIALLY_FILLED.value)


@dataclass(frozen=True, slots=True)
class Faults:
    """Faults to inject: each rate is a probability per event, drawn from a seeded generator."""

    reject_rate: float = 0.0
    duplicate_rate: float = 0.0  # a report released twice (the copy a little later)
    delay_rate: float = 0.0  # a report held back by ``delay_ns`` more (so reports overtake it)
    delay_ns: int = 50_000_000
    seed: int = 0


@dataclass(slots=True)
class _Row:
    n: int
    intent: OrderIntent
    state: OrderState
    leg_filled: list[int]
    reason: str
    live_at_ns: int
    cancel_at_ns: int | None

    @property
    def broker_order_id(self) -> str:
        return f"P{self.n}"

    def units_filled(self) -> int:
        return min(f // leg.ratio for f, leg in zip(self.leg_filled, self.intent.legs, strict=True))


class PaperBroker:
    """See the module docstring. Implements :class:`agent.executor.broker.Broker`."""

    def __init__(
        self,
        path: Path,
        clock: Callable[[], int],
        *,
        latency_ns: int = 5_000_000,
        commission_per_contract: Decimal = Decimal("0.65"),
        faults: Faults = Faults(),
    ) -> None:
        self.path = Path(path)
        self.clock = clock
        self.latency_ns = latency_ns
        self.commission_per_contract = commission_per_contract
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._lock = FileLock(self.path.with_name(self.path.name + ".lock"), f"paper broker book {self.path}")
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.book = ChainBook()
        self._taken: dict[tuple[float, Right, Side], tuple[tuple[int, float, int], int]] = {}
        self._outbox: list[tuple[int, int, OrderReport]] = []
        self._tie = itertools.count()
        self._queue: asyncio.Queue[OrderReport] | None = None

    def close(self) -> None:
        self._db.close()
        self._lock.release()

    # ------------------------------------------------------------- counters (durable)

    def _bump(self, name: str) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET value = value + 1",
            (name,),
        )

    def counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------- book access

    def _rows(self, where: str = "", args: Iterable[object] = ()) -> list[_Row]:
        sql = "SELECT n, state, leg_filled, reason, live_at_ns, cancel_at_ns, body FROM orders"
        rows = self._db.execute(f"{sql} {where} ORDER BY n", tuple(args)).fetchall()
        return [
            _Row(n, intent_from_dict(json.loads(body)), OrderState(st), json.loads(lf), reason, live, cancel)
            for n, st, lf, reason, live, cancel, body in rows
        ]

    def _row(self, cid: str) -> _Row | None:
        rows = self._rows("WHERE client_order_id = ?", (cid,))
        return rows[0] if rows else None

    def _save(self, r: _Row) -> None:
        self._db.execute(
            "UPDATE orders SET state = ?, leg_filled = ?, reason = ?, cancel_at_ns = ? WHERE n = ?",
            (r.state.value, json.dumps(r.leg_filled), r.reason, r.cancel_at_ns, r.n),
        )

    def _emit(self, report: OrderReport, now: int) -> None:
        due = now + self.latency_ns
        if self.faults.delay_rate and self._rng.random() < self.faults.delay_rate:
            due += self.faults.delay_ns
        heapq.heappush(self._outbox, (due, next(self._tie), report))
        if self.faults.duplicate_rate and self._rng.random() < self.faults.duplicate_rate:
            heapq.heappush(self._outbox, (due + self.latency_ns, next(self._tie), report))

    # ------------------------------------------------------------- requests (sync core)

    def submit_now(self, intent: OrderIntent) -> bool:
        """Take ``intent`` into the book; False when this client order id is already there."""
        now = self.clock()
        self._db.execute("BEGIN IMMEDIATE")
        self._bump("submits")
        cur = self._db.execute(
            "INSERT OR IGNORE INTO orders (client_order_id, state, leg_filled, live_at_ns, body) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                intent.client_order_id,
                OrderState.PENDING_NEW.value,
                json.dumps([0] * len(intent.legs)),
                now + self.latency_ns,
                json.dumps(intent_to_dict(intent)),
            ),
        )
        fresh = cur.rowcount == 1
        if not fresh:
            self._bump("duplicate_submits")
        self._db.execute("COMMIT")
        if not fresh:
            row = self._row(intent.client_order_id)
            log.info("paper: %s already in the book, not a new order", intent.client_order_id)
            if row is not None and row.state is not OrderState.PENDING_NEW:
                self._emit(OrderAccepted(row.intent.client_order_id, row.broker_order_id, now), now)
        return fresh

    def cancel_now(self, cid: str) -> None:
        now = self.clock()
        row = self._row(cid)
        if row is None or row.state.value not in _OPEN:
            why = "unknown order" if row is None else f"order already {row.state.value}"
            self._emit(CancelRejected(cid, now, why), now)
            return
        if row.cancel_at_ns is None:
            row.cancel_at_ns = now + self.latency_ns
            self._db.execute("BEGIN IMMEDIATE")
            self._save(row)
            self._db.execute("COMMIT")

    def on_quotes(self, update: ChainUpdate) -> None:
        """Feed the live market (the same chain updates the detector sees)."""
        self.book.apply(update)

    def expire_all(self, reason: str = "session closed") -> int:
        """Expire every open order (end of day); returns how many."""
        now = self.clock()
        rows = self._rows(f"WHERE state IN {_OPEN}")
        self._db.execute("BEGIN IMMEDIATE")
        for r in rows:
            r.state, r.reason = OrderState.EXPIRED, reason
            self._save(r)
        self._db.execute("COMMIT")
        for r in rows:
            self._emit(OrderExpired(r.intent.client_order_id, now), now)
        return len(rows)

    def pump(self) -> list[OrderReport]:
        """Do everything due by now: accept or reject, cancel, match; release due reports."""
        now = self.clock()
        for r in self._rows(f"WHERE state IN {_OPEN}"):
            self._step(r, now)
        released: list[OrderReport] = []
        while self._outbox and self._outbox[0][0] <= now:
            released.append(heapq.heappop(self._outbox)[2])
        if self._queue is not None:
            for rep in released:
                self._queue.put_nowait(rep)
        return released

    def _step(self, r: _Row, now: int) -> None:
        cid = r.intent.client_order_id
        if r.state is OrderState.PENDING_NEW:
            if r.live_at_ns > now:
                return
            if self.faults.reject_rate and self._rng.random() < self.faults.reject_rate:
                r.state, r.reason = OrderState.REJECTED, "paper: injected reject"
                self._commit(r)
                self._emit(OrderRejected(cid, now, r.reason), now)
                return
            r.state = OrderState.WORKING
            self._commit(r)
            self._emit(OrderAccepted(cid, r.broker_order_id, now), now)
        if r.cancel_at_ns is not None and r.cancel_at_ns <= now:
            r.state, r.reason = OrderState.CANCELLED, "cancelled by request"
            self._commit(r)
            self._emit(OrderCancelled(cid, now, r.reason), now)
            return
        self._match(r, now)

    def _commit(self, r: _Row) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        self._save(r)
        self._db.execute("COMMIT")

    # ------------------------------------------------------------- matching

    def _touch(self, contract: Contract, side: Side) -> tuple[OptionQuote, Decimal, int] | None:
        """The quote, touch price and size still available to ``side`` on ``contract``."""
        if self.book.expiry and self.book.expiry != contract.expiry:
            return None
        q = self.book.quotes.get(contract.key)
        if q is None or q.flags & (QuoteFlag.HALTED | QuoteFlag.BAD_VALUE | QuoteFlag.CROSSED):
            return None
        if side is Side.BUY:
            if not q.has_ask:
                return None
            px, size = q.ask, q.ask_size
        else:
            if not q.has_bid:
                return None
            px, size = q.bid, q.bid_size
        ident = (q.quote_ts_ns, px, size)
        seen, taken = self._taken.get((contract.strike, contract.right, side), (ident, 0))
        if seen != ident:
            taken = 0
        return q, nearest_tick(px, contract.tick), max(size - taken, 0)

    def _match(self, r: _Row, now: int) -> None:
        intent = r.intent
        leaves = intent.quantity - r.units_filled()
        if leaves <= 0:
            return
        touches: list[tuple[OptionQuote, Decimal, int]] = []
        value = ZERO
        units = leaves
        for i, leg in enumerate(intent.legs):
            side = leg.side_for(intent.side)
            t = self._touch(leg.contract, side)
            if t is None:
                return
            touches.append(t)
            value += leg.side.sign * leg.ratio * t[1]
            units = min(units, (t[2] + r.leg_filled[i] - leg.ratio * r.units_filled()) // leg.ratio)
        marketable = value <= intent.limit_price if intent.side is Side.BUY else value >= intent.limit_price
        if not marketable or units <= 0:
            return
        base = self._db.execute("SELECT COALESCE(MAX(n), 0) FROM executions").fetchone()[0]
        fills: list[Fill] = []
        for i, (leg, (q, px, _)) in enumerate(zip(intent.legs, touches, strict=True)):
            want = leg.ratio * (r.units_filled() + units) - r.leg_filled[i]
            if want <= 0:
                continue
            side = leg.side_for(intent.side)
            fills.append(
                Fill(
                    exec_id=f"{r.broker_order_id}.{base + len(fills) + 1}",
                    client_order_id=intent.client_order_id,
                    leg=i,
                    side=side,
                    quantity=want,
                    price=px,
                    commission=self.commission_per_contract * want,
                    ts_ns=now,
                )
            )
            key = (leg.contract.strike, leg.contract.right, side)
            ident = (
                q.quote_ts_ns,
                q.ask if side is Side.BUY else q.bid,
                q.ask_size if side is Side.BUY else q.bid_size,
            )
            prev_ident, prev_taken = self._taken.get(key, (ident, 0))
            self._taken[key] = (ident, (prev_taken if prev_ident == ident else 0) + want)
            r.leg_filled[i] += want
        if r.units_filled() >= intent.quantity:
            r.state = OrderState.FILLED
        else:
            r.state = OrderState.PARTIALLY_FILLED
        self._db.execute("BEGIN IMMEDIATE")
        self._save(r)
        self._db.executemany(
            "INSERT INTO executions (exec_id, client_order_id, body) VALUES (?, ?, ?)",
            [(f.exec_id, f.client_order_id, json.dumps(fill_to_dict(f))) for f in fills],
        )
        self._db.execute("COMMIT")
        for f in fills:
            self._emit(OrderFilled(f), now)

    # ------------------------------------------------------------- queries

    def _broker_order(self, r: _Row) -> BrokerOrder:
        return BrokerOrder(
            r.intent.client_order_id,
            r.broker_order_id,
            r.state,
            r.intent.quantity,
            tuple(r.leg_filled),
            r.reason,
        )

    def book_orders(self) -> list[BrokerOrder]:
        return [self._broker_order(r) for r in self._rows()]

    def book_intents(self) -> list[OrderIntent]:
        return [r.intent for r in self._rows()]

    def book_executions(self) -> list[Fill]:
        rows = self._db.execute("SELECT body FROM executions ORDER BY n").fetchall()
        return [fill_from_dict(json.loads(b)) for (b,) in rows]

    def book_positions(self) -> list[BrokerPosition]:
        intents = {i.client_order_id: i for i in self.book_intents()}
        qty: dict[Contract, int] = {}
        cost: dict[Contract, Decimal] = {}
        for f in self.book_executions():
            c = intents[f.client_order_id].legs[f.leg].contract
            q0, signed = qty.get(c, 0), f.side.sign * f.quantity
            if q0 == 0 or (q0 > 0) == (signed > 0):
                cost[c] = (cost.get(c, ZERO) * abs(q0) + f.price * abs(signed)) / (abs(q0) + abs(signed))
            elif abs(signed) > abs(q0):
                cost[c] = f.price
            qty[c] = q0 + signed
        return [BrokerPosition(c, q, cost.get(c, ZERO)) for c, q in qty.items() if q != 0]

    # ------------------------------------------------------------- the Broker protocol

    async def submit(self, intent: OrderIntent) -> None:
        self.submit_now(intent)

    async def cancel(self, client_order_id: str) -> None:
        self.cancel_now(client_order_id)

    async def open_orders(self) -> list[BrokerOrder]:
        return [o for o in self.book_orders() if o.state.open]

    async def completed_orders(self) -> list[BrokerOrder]:
        return [o for o in self.book_orders() if o.state.terminal]

    async def executions(self) -> list[Fill]:
        return self.book_executions()

    async def positions(self) -> list[BrokerPosition]:
        return self.book_positions()

    async def reports(self) -> AsyncIterator[OrderReport]:
        if self._queue is None:
            self._queue = asyncio.Queue()
        while True:
            yield await self._queue.get()

    async def run(self, interval_s: float = 0.001) -> None:
        """Pump on a timer until cancelled."""
        while True:
            self.pump()
            await asyncio.sleep(interval_s)
