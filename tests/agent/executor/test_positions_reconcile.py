"""Positions and P&L from fills; reconciliation of the journal with the broker."""

from __future__ import annotations

from decimal import Decimal

from agent.domain import Right
from agent.executor.broker import BrokerOrder, BrokerPosition
from agent.executor.orders import (
    CommissionCorrected,
    Fill,
    Order,
    OrderAccepted,
    OrderFilled,
    OrderRejected,
    OrderState,
    Side,
)
from agent.executor.positions import PositionBook
from agent.executor.reconcile import NEVER_SENT, reconcile
from agent.executor.risk import TradingState
from tests.agent.executor.helpers import SESSION, T0, book, buy, contract, quote

C = contract()


def f(exec_id: str, side: Side, qty: int, price: str, cid: str = "a-1") -> Fill:
    return Fill(exec_id, cid, 0, side, qty, Decimal(price), Decimal("0.65") * qty, T0)


def test_average_cost_realized_unrealized_fees() -> None:
    p = PositionBook()
    p.apply(f("1", Side.BUY, 2, "1.00"), C)
    p.apply(f("2", Side.BUY, 2, "1.20"), C)
    assert not p.apply(f("2", Side.BUY, 2, "1.20"), C)  # counted once
    p.apply(f("3", Side.SELL, 5, "1.50"), C)  # closes 4 at avg 1.10, opens 1 short at 1.50
    (pos,) = p.positions()
    assert (pos.quantity, pos.avg_price, pos.realized) == (-1, Decimal("1.50"), Decimal("160.00"))
    assert p.fees == Decimal("5.85")
    pnl = p.pnl(book(quote(bid=1.30, ask=1.40)))
    assert abs(pnl.unrealized - 15.0) < 1e-9  # short 1 from 1.50, mid 1.35
    assert abs(pnl.net - (160 - 5.85 + 15)) < 1e-9
    assert p.pnl(book(quote(590.0, Right.PUT))).unmarked == (C.osi,)


def test_portfolio_greeks_signs_and_units() -> None:
    p = PositionBook()
    p.apply(f("1", Side.BUY, 2, "2.00"), C)
    g = p.greeks(book(quote(590.0, bid=1.90, ask=2.00)), SESSION.tau(T0))
    assert 60 < g.delta < 140  # 2 ATM calls x 100 x ~0.5
    assert g.gamma > 0
    assert g.vega > 0
    assert g.theta < 0
    assert g.missing == ()


def _order(cid: str, state_ack: bool = False) -> Order:
    o = Order(buy(cid, qty=2))
    if state_ack:
        o.apply(OrderAccepted(cid, "B" + cid, T0))
    return o


def test_reconcile_explains_crash_aftermath() -> None:
    orders = {"a-1": _order("a-1"), "a-2": _order("a-2"), "a-3": _order("a-3", True)}
    broker = [
        BrokerOrder("a-1", "B1", OrderState.PARTIALLY_FILLED, 2, (1,)),  # ack and a fill were lost
        BrokerOrder("a-3", "B3", OrderState.CANCELLED, 2, (0,)),  # cancelled while we were down
    ]
    execs = [f("E1", Side.BUY, 1, "1.05")]
    res = reconcile(orders, broker, execs, [BrokerPosition(C, 1, Decimal("1.05"))], now_ns=T0)
    assert res.clean
    assert res.state is TradingState.ACTIVE
    assert res.counts == {
        "missed_fills": 1,
        "missed_acks": 1,
        "missed_closes": 1,
        "never_sent": 1,
        "commission_corrections": 0,
    }
    kinds = [type(r).__name__ for r in res.reports]
    assert kinds == ["OrderAccepted", "OrderFilled", "OrderRejected", "OrderCancelled"]
    assert any(getattr(r, "reason", "") == NEVER_SENT for r in res.reports)  # a-2: not resent
    assert orders["a-1"].state is OrderState.PENDING_NEW  # reconcile changes nothing itself


def test_reconcile_fails_closed_on_unexplained_differences() -> None:
    orders = {"a-1": _order("a-1", True)}
    res = reconcile(
        orders,
        [BrokerOrder("zz-9", "B9", OrderState.WORKING, 1, (0,))],
        [f("E7", Side.BUY, 1, "1.00", cid="zz-9")],
        [BrokerPosition(contract(600.0), 3, Decimal(1))],
        now_ns=T0,
        fail_state=TradingState.REDUCING,
    )
    assert res.state is TradingState.REDUCING
    text = "\n".join(res.unexplained)
    assert "zz-9" in text
    assert "never journaled" in text
    assert "a-1 is working in the journal but unknown to the broker" in text
    assert "position" in text
    assert any(n.code == "executor.fail_closed" for n in res.notices)


def test_order_closed_here_but_open_at_the_broker_is_unexplained() -> None:
    o = _order("a-1")
    o.apply(OrderRejected("a-1", T0, NEVER_SENT))
    res = reconcile({"a-1": o}, [BrokerOrder("a-1", "B1", OrderState.WORKING, 2, (0,))], [], [], now_ns=T0)
    assert res.state is TradingState.HALTED
    assert "still open at the broker" in res.unexplained[0]


def test_reconcile_corrects_a_commission_the_broker_reports_differently() -> None:
    o = _order("a-1", True)
    booked = Fill("E1", "a-1", 0, Side.BUY, 2, Decimal("1.05"), Decimal(0), T0)  # before IB's report
    o.apply(OrderFilled(booked))
    orders = {"a-1": o}
    at_broker = [BrokerOrder("a-1", "Ba-1", OrderState.FILLED, 2, (2,))]
    held = [BrokerPosition(C, 2, Decimal("1.05"))]
    res = reconcile(orders, at_broker, [f("E1", Side.BUY, 2, "1.05")], held, now_ns=T0 + 5)
    assert res.clean
    assert res.reports == (CommissionCorrected("a-1", "E1", Decimal("1.30"), T0 + 5),)
    assert res.counts["commission_corrections"] == 1
    assert "1 commission corrections" in res.notices[0].message
    assert o.commission == 0  # reconcile changes nothing itself
    # the same commission, or none known at the broker yet (0): nothing to correct
    for commission in ("0", "0.00"):
        unknown = Fill("E1", "a-1", 0, Side.BUY, 2, Decimal("1.05"), Decimal(commission), T0)
        assert reconcile(orders, at_broker, [unknown], held, now_ns=T0).reports == ()
    o.apply(res.reports[0])
    assert reconcile(orders, at_broker, [f("E1", Side.BUY, 2, "1.05")], held, now_ns=T0).reports == ()
