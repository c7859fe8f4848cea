"""Commissions that arrive after their fill: corrected once, journaled, replayed to the same fees."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from agent.executor.core import OrderFlow, Placed
from agent.executor.journal import Journal
from agent.executor.orders import (
    CommissionCorrected,
    Fill,
    OrderError,
    OrderFilled,
    OrderState,
    Outcome,
    Side,
    under_id,
)
from agent.executor.paper import PaperBroker
from agent.executor.positions import PositionBook
from tests.agent.executor.helpers import EXPIRY, T0, buy, chain, contract, quote

MS = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


async def _flow(tmp_path: Path, clock: Clock) -> tuple[OrderFlow, PaperBroker]:
    # a broker that books fills without their commission, as IB does when its report comes late
    broker = PaperBroker(tmp_path / "paper.db", clock, latency_ns=MS, commission_per_contract=Decimal(0))
    broker.on_quotes(chain(quote(bid=1.00, ask=1.05, ask_size=10, ts=clock.now)))
    flow = OrderFlow(Journal(tmp_path / "j.db", "ex1", EXPIRY), broker, clock)
    result = await flow.start()
    assert result.clean, result.unexplained
    return flow, broker


async def test_a_late_commission_is_booked_once_and_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    flow, broker = await _flow(tmp_path, clock)
    placed = await flow.place(under_id(buy("x", qty=2)))
    assert isinstance(placed, Placed)
    cid = placed.intent.client_order_id
    fills: list[OrderFilled] = []
    for _ in range(5):
        clock.now += 2 * MS
        for r in broker.pump():
            flow.on_report(r)
            if isinstance(r, OrderFilled):
                fills.append(r)
        await asyncio.sleep(0)
    order = flow.orders[cid]
    assert order.state is OrderState.FILLED
    (filled,) = fills
    exec_id = filled.fill.exec_id
    assert flow.positions.fees == 0
    reports_before = flow.journal.stats().reports

    late = CommissionCorrected(cid, exec_id, Decimal("1.30"), clock.now)
    applied = flow.on_report(late)
    assert applied is not None
    assert applied.outcome is Outcome.APPLIED
    assert order.state is OrderState.FILLED  # a commission never moves the state
    assert (order.commission, order.fills[exec_id].commission) == (Decimal("1.30"), Decimal("1.30"))
    assert flow.positions.fees == Decimal("1.30")
    assert flow.journal.stats().reports == reports_before + 1

    again = flow.on_report(late)  # the same report again: nothing booked, nothing journaled
    assert again is not None
    assert again.outcome is Outcome.DUPLICATE
    stale = flow.on_report(filled)  # the execution re-listed without its commission: no revert to 0
    assert stale is not None
    assert stale.outcome is Outcome.DUPLICATE
    unknown = flow.on_report(CommissionCorrected(cid, "no-such-exec", Decimal("9"), clock.now))
    assert unknown is not None
    assert unknown.outcome is Outcome.IGNORED
    assert flow.journal.stats().reports == reports_before + 1
    assert flow.positions.fees == Decimal("1.30")

    # the broker lists the execution again, now with a commission that differs: corrected from it
    relisted = OrderFilled(replace(filled.fill, commission=Decimal("1.40")))
    moved = flow.on_report(relisted)
    assert moved is not None
    assert moved.outcome is Outcome.APPLIED
    assert flow.positions.fees == Decimal("1.40")
    assert flow.journal.stats().fills == 1

    flow.journal.close()
    broker.close()
    # restart: the journal replays to the same fees; the broker's 0 (no commission known) corrects nothing
    flow2, broker2 = await _flow(tmp_path, clock)
    try:
        assert flow2.orders[cid].commission == Decimal("1.40")
        assert flow2.positions.fees == Decimal("1.40")
        assert PositionBook.from_orders(flow2.orders.values()).fees == Decimal("1.40")
    finally:
        flow2.journal.close()
        broker2.close()


def test_a_correction_needs_an_execution_id_and_a_real_amount() -> None:
    with pytest.raises(OrderError, match="execution id"):
        CommissionCorrected("a-1", "", Decimal(1), T0)
    for bad in (Decimal(-1), Decimal("NaN"), Decimal("Infinity")):
        with pytest.raises(OrderError, match="commission"):
            CommissionCorrected("a-1", "E1", bad, T0)


def test_position_fees_follow_a_correction() -> None:
    book = PositionBook()
    c = contract()
    book.apply(Fill("E1", "a-1", 0, Side.BUY, 2, Decimal("1.05"), Decimal(0), T0), c)
    book.apply(Fill("E2", "a-1", 0, Side.SELL, 2, Decimal("1.25"), Decimal("1.30"), T0), c)
    assert book.correct_commission("E1", Decimal("1.30")) == c
    assert book.correct_commission("E1", Decimal("1.30")) is None  # the same again: nothing moves
    assert book.correct_commission("E9", Decimal("1.00")) is None  # never booked
    assert book.fees == Decimal("2.60")
    (pos,) = book.positions(include_flat=True)
    assert (pos.fees, pos.realized) == (Decimal("2.60"), Decimal("40.00"))
