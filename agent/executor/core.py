"""The executor's order flow, crash-only: journal first, broker second, reconcile on every start.

:class:`OrderFlow` owns the orders of one executor. It is a library (no gRPC, no event log): the role
that wires it into the agent gives it a journal, a broker and a risk veto, forwards broker reports to
:meth:`OrderFlow.on_report`, and publishes what comes back.

* :meth:`start` rebuilds the orders from the journal and reconciles with the broker before anything
  else; unexplained differences leave ``state`` failed closed.
* :meth:`place` allocates the client order id from the journal, runs the veto, **commits the intent**,
  and only then sends it.
* :meth:`on_report` journals a report (a repeated execution id is dropped by the journal's unique
  index; a commission correction that changes nothing is not journaled) and then folds it into the
  order and the positions. An execution reported again with another, non-zero commission than the one
  booked (a broker re-listing its executions once the commission is known) is booked as a
  :class:`~agent.executor.orders.CommissionCorrected`.

``crash_hook`` is called with a point name at the moments a crash hurts most (the crash test kills the
process there): ``intent_journaled`` (before the send), ``sent`` (before the ack), ``fill_received``
(a fill in hand, not yet journaled).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from agent.executor.broker import Broker
from agent.executor.fencing import NotLeaderError
from agent.executor.journal import Journal
from agent.executor.orders import (
    Applied,
    CancelRequested,
    CommissionCorrected,
    Order,
    OrderFilled,
    OrderIntent,
    OrderRejected,
    OrderReport,
    Outcome,
)
from agent.executor.positions import PositionBook
from agent.executor.reconcile import ReconcileResult, reconcile
from agent.executor.risk import Denial, TradingState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Placed:
    intent: OrderIntent


@dataclass(frozen=True, slots=True)
class Denied:
    client_order_id: str
    denials: tuple[Denial, ...]


def _no_crash(point: str) -> None:
    return None


class OrderFlow:
    def __init__(
        self,
        journal: Journal,
        broker: Broker,
        clock: Callable[[], int],
        *,
        fail_state: TradingState = TradingState.HALTED,
        crash_hook: Callable[[str], None] = _no_crash,
    ) -> None:
        self.journal = journal
        self.broker = broker
        self.clock = clock
        self.fail_state = fail_state
        self.crash_hook = crash_hook
        self.orders: dict[str, Order] = {}
        self.positions = PositionBook()
        self.state = TradingState.HALTED  # until start() has reconciled
        self.started = False

    async def start(self) -> ReconcileResult:
        self.orders = self.journal.load()
        result = reconcile(
            self.orders,
            await self.broker.open_orders() + await self.broker.completed_orders(),
            await self.broker.executions(),
            await self.broker.positions(),
            now_ns=self.clock(),
            fail_state=self.fail_state,
        )
        for r in result.reports:
            self._book(r)
        for cid in result.resend_cancels:
            await self.broker.cancel(cid)
        self.positions = PositionBook.from_orders(self.orders.values())
        self.state = result.state
        self.started = True
        for n in result.notices:
            log.log(
                logging.ERROR if n.code != "executor.reconciled" else logging.INFO,
                "%s: %s",
                n.code,
                n.message,
            )
        return result

    def working(self) -> tuple[Order, ...]:
        return tuple(o for o in self.orders.values() if o.state.open)

    async def place(
        self,
        build: Callable[[str], OrderIntent],
        veto: Callable[[OrderIntent], tuple[Denial, ...]] | None = None,
        fence: Callable[[OrderIntent], None] | None = None,
    ) -> Placed | Denied:
        """Journal, then send. ``fence`` runs between the two and raises ``NotLeaderError`` when this
        executor may no longer send (a deposed leader): the journaled intent is then closed as
        rejected, never sent."""
        if not self.started:
            raise RuntimeError("OrderFlow.start() must reconcile before any order")
        intent = build(self.journal.next_client_order_id())
        denials = veto(intent) if veto is not None else ()
        if denials:
            return Denied(intent.client_order_id, denials)
        self.journal.record_intent(intent)
        self.orders[intent.client_order_id] = Order(intent)
        self.crash_hook("intent_journaled")
        if fence is not None:
            try:
                fence(intent)
            except NotLeaderError as exc:
                self._book(OrderRejected(intent.client_order_id, self.clock(), f"not sent: {exc}"))
                return Denied(intent.client_order_id, (Denial("not_leader", str(exc)),))
        await self.broker.submit(intent)
        self.crash_hook("sent")
        return Placed(intent)

    async def cancel(self, client_order_id: str) -> Applied:
        order = self.orders.get(client_order_id)
        if order is None:
            raise KeyError(f"no order {client_order_id}")
        if order.state.terminal:
            return Applied(Outcome.IGNORED, order.state, f"order already {order.state.value}")
        result = self._book(CancelRequested(client_order_id, self.clock()))
        await self.broker.cancel(client_order_id)
        return result

    def on_report(self, report: OrderReport) -> Applied | None:
        """Journal and apply one broker report; None (and an error logged) for an unknown order."""
        if report.client_order_id not in self.orders:
            log.error("report for an order this executor does not know: %r", report)
            return None
        if isinstance(report, OrderFilled):
            self.crash_hook("fill_received")
            correction = self.orders[report.client_order_id].commission_correction(report.fill, self.clock())
            if correction is not None:
                report = correction
        return self._book(report)

    def _book(self, report: OrderReport) -> Applied:
        order = self.orders[report.client_order_id]
        if isinstance(report, CommissionCorrected) and not order.corrects(report):
            # a repeat, or for an execution never booked: nothing to journal (replay would ignore it)
            return order.apply(report)
        if not self.journal.record_report(report):
            return Applied(Outcome.DUPLICATE, order.state, "execution already journaled")
        result = order.apply(report)
        if isinstance(report, OrderFilled) and result.booked:
            fill = report.fill
            self.positions.apply(fill, order.intent.legs[fill.leg].contract)
        elif isinstance(report, CommissionCorrected) and result.booked:
            self.positions.correct_commission(report.exec_id, report.commission)
        return result
