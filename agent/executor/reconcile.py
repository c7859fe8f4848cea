"""Reconciliation on start: the journal's orders against the broker's book.

Pure: takes the orders rebuilt from the journal and what the broker says (open and completed orders,
today's executions, positions) and returns the reports that bring the journal up to date plus every
difference it could not explain. It changes nothing itself; the executor journals the reports, then
trades only if ``result.state`` allows.

Explained differences (the normal aftermath of a crash), turned into reports:

* an execution the journal lacks, of an order it knows: the fill happened while we were down;
* an order the journal has as pending_new that the broker lists: the ack was lost;
* an order the broker finished (cancelled, rejected, expired) that the journal still has open;
* an execution the journal has with another commission than the broker's (booked before the broker's
  commission report came): the commission is corrected. A zero commission from the broker is taken as
  "not reported yet" (IB sends commission reports apart from executions), never as a correction;
* an order the journal has as pending_new that the broker does not know: the process died between
  journaling the intent and sending it. It is closed as rejected and **not** resent: the decision was
  made on prices that are gone; the strategy decides again.

Unexplained (a notice each, and the state fails closed to ``fail_state``): a broker order or execution
the journal has no intent for, an order the journal believes was acknowledged that the broker does
not know, a broker order filled beyond what its executions show, and any position that differs
between the journal (after the explained fills) and the broker.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from agent.domain import Notice, NoticeLevel
from agent.executor.broker import BrokerOrder, BrokerPosition
from agent.executor.orders import (
    Fill,
    Order,
    OrderAccepted,
    OrderCancelled,
    OrderExpired,
    OrderFilled,
    OrderRejected,
    OrderReport,
    OrderState,
)
from agent.executor.positions import PositionBook
from agent.executor.risk import TradingState

NEVER_SENT = "never reached the broker (executor stopped before sending); not resent"


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    reports: tuple[OrderReport, ...]
    notices: tuple[Notice, ...]
    unexplained: tuple[str, ...]
    state: TradingState
    resend_cancels: tuple[str, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.unexplained


def reconcile(
    orders: dict[str, Order],
    broker_orders: list[BrokerOrder],
    executions: list[Fill],
    positions: list[BrokerPosition],
    *,
    now_ns: int,
    fail_state: TradingState = TradingState.HALTED,
) -> ReconcileResult:
    work = {cid: copy.deepcopy(o) for cid, o in orders.items()}
    reports: list[OrderReport] = []
    notices: list[Notice] = []
    unexplained: list[str] = []
    counts = dict.fromkeys(
        ("missed_fills", "missed_acks", "missed_closes", "never_sent", "commission_corrections"), 0
    )

    def book(r: OrderReport) -> None:
        if work[r.client_order_id].apply(r).booked:
            reports.append(r)

    by_cid = {b.client_order_id: b for b in broker_orders}
    for bo in broker_orders:
        if bo.client_order_id not in work:
            unexplained.append(
                f"broker has order {bo.client_order_id} ({bo.state.value}) that this executor never journaled"
            )
    # acks first, so that fills land on acknowledged orders
    for cid, o in work.items():
        seen = by_cid.get(cid)
        if seen is not None and o.state is OrderState.PENDING_NEW and seen.state is not OrderState.REJECTED:
            book(OrderAccepted(cid, seen.broker_order_id, now_ns))
            counts["missed_acks"] += 1
    for f in executions:
        owner = work.get(f.client_order_id)
        if owner is None:
            unexplained.append(f"broker execution {f.exec_id} belongs to unknown order {f.client_order_id}")
        elif f.exec_id in owner.fills:
            if (correction := owner.commission_correction(f, now_ns)) is not None:
                book(correction)
                counts["commission_corrections"] += 1
        else:
            before = len(reports)
            book(OrderFilled(f))
            if len(reports) == before:
                unexplained.append(f"broker execution {f.exec_id} does not fit order {f.client_order_id}")
            else:
                counts["missed_fills"] += 1
    resend: list[str] = []
    for cid, o in work.items():
        if o.state.terminal:
            late = by_cid.get(cid)
            if late is not None and late.state.open:
                # e.g. closed here as never sent, yet it reached the broker after all (in flight at the crash)
                unexplained.append(
                    f"order {cid} is {o.state.value} in the journal but still open at the broker"
                )
            continue
        at_broker = by_cid.get(cid)
        if at_broker is None:
            if o.state is OrderState.PENDING_NEW or (
                o.state is OrderState.PENDING_CANCEL and not o.broker_order_id
            ):
                book(OrderRejected(cid, now_ns, NEVER_SENT))
                counts["never_sent"] += 1
            else:
                unexplained.append(f"order {cid} is {o.state.value} in the journal but unknown to the broker")
            continue
        match at_broker.state:
            case OrderState.CANCELLED:
                book(OrderCancelled(cid, now_ns, at_broker.reason or "cancelled at the broker"))
            case OrderState.REJECTED:
                book(OrderRejected(cid, now_ns, at_broker.reason or "rejected by the broker"))
            case OrderState.EXPIRED:
                book(OrderExpired(cid, now_ns))
            case OrderState.FILLED:
                pass
            case _:
                if o.state is OrderState.PENDING_CANCEL:
                    resend.append(cid)  # the cancel request may have died with us: ask again
                continue
        counts["missed_closes"] += 1
    for cid, o in work.items():
        listed = by_cid.get(cid)
        if listed is not None and tuple(o.leg_filled) != listed.leg_filled:
            unexplained.append(
                f"order {cid}: broker shows legs filled {list(listed.leg_filled)}, its executions give {o.leg_filled}"
            )
    mine = PositionBook.from_orders(work.values()).net_quantities()
    theirs = {p.contract.osi: p.quantity for p in positions if p.quantity != 0}
    for osi in sorted(set(mine) | set(theirs)):
        if mine.get(osi, 0) != theirs.get(osi, 0):
            unexplained.append(
                f"position {osi}: journal {mine.get(osi, 0):+d}, broker {theirs.get(osi, 0):+d}"
            )

    explained = sum(counts.values())
    if explained:
        notices.append(
            Notice(
                NoticeLevel.INFO,
                "executor.reconciled",
                "reconciled with the broker: "
                + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items() if v),
                source="executor",
            )
        )
    state = TradingState.ACTIVE
    if unexplained:
        state = fail_state
        for text in unexplained:
            notices.append(Notice(NoticeLevel.ERROR, "executor.reconcile_mismatch", text, source="executor"))
        notices.append(
            Notice(
                NoticeLevel.ERROR,
                "executor.fail_closed",
                f"{len(unexplained)} unexplained difference(s) with the broker: trading state {state.value} "
                f"until an operator has looked",
                source="executor",
            )
        )
    return ReconcileResult(tuple(reports), tuple(notices), tuple(unexplained), state, tuple(resend), counts)
