"""The order model: prices on the tick, ids, and the state machine under hostile report streams."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from agent.domain import Right
from agent.executor.orders import (
    TERMINAL,
    TRANSITIONS,
    Applied,
    CancelRejected,
    CancelRequested,
    CommissionCorrected,
    Contract,
    Fill,
    OffTickError,
    Order,
    OrderAccepted,
    OrderCancelled,
    OrderError,
    OrderExpired,
    OrderFilled,
    OrderIntent,
    OrderLeg,
    OrderRejected,
    OrderReport,
    OrderState,
    Outcome,
    Side,
    as_price,
    client_order_id,
    nearest_tick,
    single_leg,
)
from tests.agent.executor.helpers import EXPIRY, T0, buy, contract


def fill(
    cid: str, exec_id: str, qty: int, leg: int = 0, side: Side = Side.BUY, price: str = "1.05"
) -> OrderFilled:
    return OrderFilled(Fill(exec_id, cid, leg, side, qty, Decimal(price), Decimal("0.65") * qty, T0))


def test_off_tick_price_is_refused_with_the_neighbours() -> None:
    with pytest.raises(OffTickError, match=r"1\.055 is not on the tick 0\.01: use 1\.05 or 1\.06"):
        buy("a-1", price="1.055")
    nickel = Contract("SPY", EXPIRY, 590.0, Right.CALL, tick=Decimal("0.05"))
    with pytest.raises(OffTickError):
        single_leg("a-1", nickel, Side.BUY, 1, "1.02", T0)
    assert single_leg("a-1", nickel, Side.BUY, 1, "1.05", T0).limit_price == Decimal("1.05")


@pytest.mark.parametrize("qty", [0, -1, 1.5, True])
def test_quantity_must_be_a_positive_int(qty: object) -> None:
    with pytest.raises(OrderError, match="quantity"):
        buy("a-1", qty=qty)  # type: ignore[arg-type]


def test_bad_prices_and_contracts() -> None:
    for bad in ("0", "-1.00", "nan", "abc", "inf"):
        with pytest.raises(OrderError):
            as_price(bad, Decimal("0.01"))
    with pytest.raises(OrderError, match="expiry"):
        Contract("SPY", "2025-03-17", 590.0, Right.CALL)
    with pytest.raises(OrderError, match="multiplier"):
        Contract("SPY", EXPIRY, 590.0, Right.CALL, multiplier=0)


def test_multiplier_is_carried_not_assumed() -> None:
    mini = Contract("XSP", EXPIRY, 590.0, Right.CALL, multiplier=10)
    assert single_leg("a-1", mini, Side.BUY, 3, "2.00", T0).premium() == Decimal("60.00")
    assert buy("a-1", qty=3, price="2.00").premium() == Decimal("600.00")


def test_spread_credit_price_and_leg_quantities() -> None:
    c1, c2 = contract(590.0), contract(591.0)
    spread = OrderIntent(
        "a-1", Side.SELL, 2, Decimal("-0.40"), (OrderLeg(c1, Side.BUY), OrderLeg(c2, Side.SELL)), T0
    )
    assert spread.is_spread
    assert [spread.leg_quantity(0), spread.leg_quantity(1)] == [-2, 2]
    with pytest.raises(OrderError, match="twice"):
        OrderIntent(
            "a-1", Side.BUY, 1, Decimal("0.40"), (OrderLeg(c1, Side.BUY), OrderLeg(c1, Side.SELL)), T0
        )


def test_client_order_ids_are_prefix_date_sequence() -> None:
    assert client_order_id("exec1", "20250317", 42) == "exec1-20250317-000042"
    with pytest.raises(OrderError, match="prefix"):
        client_order_id("bad prefix!", "20250317", 1)


def test_nearest_tick() -> None:
    assert nearest_tick(1.0449999, Decimal("0.01")) == Decimal("1.04")
    assert nearest_tick(1.03, Decimal("0.05")) == Decimal("1.05")


def test_happy_path_partial_then_filled_with_commission() -> None:
    o = Order(buy("a-1", qty=3))
    assert o.apply(OrderAccepted("a-1", "B1", T0)).outcome is Outcome.APPLIED
    assert o.apply(fill("a-1", "x1", 1)).state is OrderState.PARTIALLY_FILLED
    assert o.apply(fill("a-1", "x1", 1)).outcome is Outcome.DUPLICATE
    assert o.apply(fill("a-1", "x2", 2)).state is OrderState.FILLED
    assert (o.filled, o.leaves, o.commission) == (3, 0, Decimal("1.95"))
    assert o.leg_avg_price(0) == Decimal("1.05")


def test_fill_before_ack_and_ack_after_fill() -> None:
    o = Order(buy("a-1", qty=2))
    assert o.apply(fill("a-1", "x1", 1)).state is OrderState.PARTIALLY_FILLED
    assert o.apply(OrderAccepted("a-1", "B1", T0)).outcome is Outcome.IGNORED
    assert o.broker_order_id == "B1"


def test_late_fill_after_cancel_is_booked() -> None:
    o = Order(buy("a-1", qty=2))
    o.apply(OrderAccepted("a-1", "B1", T0))
    o.apply(CancelRequested("a-1", T0))
    assert o.apply(OrderCancelled("a-1", T0)).state is OrderState.CANCELLED
    r = o.apply(fill("a-1", "x1", 1))
    assert (r.outcome, r.state, o.filled) == (Outcome.LATE_FILL, OrderState.CANCELLED, 1)
    assert o.apply(fill("a-1", "x2", 1)).state is OrderState.FILLED  # a late fill completing it


def test_overfill_and_wrong_side_are_refused() -> None:
    o = Order(buy("a-1", qty=1))
    assert o.apply(fill("a-1", "x1", 2)).outcome is Outcome.REFUSED
    assert o.apply(fill("a-1", "x2", 1, side=Side.SELL)).outcome is Outcome.REFUSED
    assert o.filled == 0


def test_cancel_rejected_returns_to_working() -> None:
    o = Order(buy("a-1", qty=2))
    o.apply(OrderAccepted("a-1", "B1", T0))
    o.apply(CancelRequested("a-1", T0))
    assert o.apply(CancelRejected("a-1", T0, "too late")).state is OrderState.WORKING


def test_spread_fills_count_complete_units() -> None:
    c1, c2 = contract(590.0), contract(592.0)
    intent = OrderIntent(
        "a-1", Side.BUY, 2, Decimal("1.00"), (OrderLeg(c1, Side.BUY), OrderLeg(c2, Side.SELL, ratio=2)), T0
    )
    o = Order(intent)
    o.apply(fill("a-1", "x1", 2, leg=0))
    o.apply(fill("a-1", "x2", 3, leg=1, side=Side.SELL))
    assert (o.filled, o.state) == (1, OrderState.PARTIALLY_FILLED)
    o.apply(fill("a-1", "x3", 1, leg=1, side=Side.SELL))
    assert (o.filled, o.state) == (2, OrderState.FILLED)


def test_commission_correction_amends_a_booked_fill_in_any_state_once() -> None:
    o = Order(buy("a-1", qty=2))
    o.apply(OrderAccepted("a-1", "B1", T0))
    o.apply(OrderFilled(Fill("x1", "a-1", 0, Side.BUY, 2, Decimal("1.05"), Decimal(0), T0)))
    assert o.state is OrderState.FILLED
    moves = list(o.transitions)
    fix = CommissionCorrected("a-1", "x1", Decimal("1.30"), T0)
    assert o.corrects(fix)
    r = o.apply(fix)
    assert (r.outcome, r.state) == (Outcome.APPLIED, OrderState.FILLED)  # terminal, yet corrected
    assert (o.commission, o.fills["x1"].commission) == (Decimal("1.30"), Decimal("1.30"))
    assert o.transitions == moves
    assert not o.corrects(fix)
    assert o.apply(fix).outcome is Outcome.DUPLICATE
    assert o.apply(CommissionCorrected("a-1", "x9", Decimal(1), T0)).outcome is Outcome.IGNORED
    assert o.apply(CommissionCorrected("b-2", "x1", Decimal(1), T0)).outcome is Outcome.REFUSED
    assert o.apply(CommissionCorrected("a-1", "x1", Decimal("1.20"), T0)).booked  # a later amount wins
    assert o.commission == Decimal("1.20")
    with pytest.raises(OrderError):
        CommissionCorrected("a-1", "x1", Decimal("-0.65"), T0)


def test_intent_carries_its_operator() -> None:
    assert buy("a-1").operator == ""
    assert single_leg("a-1", contract(), Side.BUY, 1, "1.05", T0, operator="bob").operator == "bob"


# ---------------------------------------------------------------- stateful property test


class OrderMachine(RuleBasedStateMachine):
    """A broker that tells the truth, delivered through a network that duplicates and reorders.

    Reports go into an in-flight list; ``deliver`` hands any one of them (not the oldest) to the
    order; ``replay`` delivers an already delivered report again.
    """

    @initialize(qty=st.integers(1, 6), spread=st.booleans())
    def setup(self, qty: int, spread: bool) -> None:
        legs = (OrderLeg(contract(590.0), Side.BUY),)
        if spread:
            legs += (OrderLeg(contract(595.0), Side.SELL, ratio=2),)
        self.intent = OrderIntent("p-1", Side.BUY, qty, Decimal("1.00"), legs, T0)
        self.order = Order(self.intent)
        self.broker_filled = [0] * len(legs)  # what the broker really executed
        self.broker_done = False
        self.in_flight: list[OrderReport] = []
        self.delivered: list[OrderReport] = []
        self.delivered_fills: dict[str, Fill] = {}
        self.executed: set[str] = set()  # executions whose commission was not corrected yet
        self.n = 0
        self.last_filled = 0
        self.was_terminal = False

    def _send(self, r: OrderReport) -> None:
        self.in_flight.append(r)

    @rule()
    def ack(self) -> None:
        self._send(OrderAccepted("p-1", "B1", T0))

    @rule(leg=st.integers(0, 1), qty=st.integers(1, 12))
    def execute(self, leg: int, qty: int) -> None:
        leg %= len(self.intent.legs)
        room = self.intent.legs[leg].ratio * self.intent.quantity - self.broker_filled[leg]
        if self.broker_done or room <= 0:
            return
        q = min(qty, room)
        self.broker_filled[leg] += q
        self.n += 1
        self.executed.add(f"x{self.n}")
        side = self.intent.legs[leg].side_for(self.intent.side)
        self._send(
            OrderFilled(Fill(f"x{self.n}", "p-1", leg, side, q, Decimal("1.00"), Decimal("0.65") * q, T0))
        )

    @precondition(lambda self: bool(self.executed))
    @rule(data=st.data(), cents=st.integers(0, 500))
    def correct_commission(self, data: st.DataObject, cents: int) -> None:
        """The broker's commission for one execution, sent once (as the IB broker does)."""
        exec_id = data.draw(st.sampled_from(sorted(self.executed)))
        self.executed.discard(exec_id)
        self._send(CommissionCorrected("p-1", exec_id, Decimal(cents) / 100, T0))

    @rule()
    def request_cancel(self) -> None:
        self.order.apply(CancelRequested("p-1", T0))

    @rule(outcome=st.sampled_from(["cancelled", "rejected", "expired", "cancel_rejected"]))
    def broker_closes(self, outcome: str) -> None:
        if outcome == "cancel_rejected":
            self._send(CancelRejected("p-1", T0, "too late"))
            return
        self.broker_done = True
        self._send(
            {
                "cancelled": OrderCancelled("p-1", T0),
                "rejected": OrderRejected("p-1", T0, "no"),
                "expired": OrderExpired("p-1", T0),
            }[outcome]
        )

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.in_flight) - 1))
        r = self.in_flight.pop(i)
        self._apply(r)

    @precondition(lambda self: bool(self.delivered))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        r = data.draw(st.sampled_from(self.delivered))
        result = self.order.apply(r)
        if isinstance(r, OrderFilled):
            assert result.outcome is Outcome.DUPLICATE
        elif isinstance(r, CommissionCorrected):
            self._check_correction(r, result)

    def _check_correction(self, r: CommissionCorrected, result: Applied) -> None:
        """Applied exactly when it changes a delivered fill's commission; the model follows."""
        booked = self.delivered_fills.get(r.exec_id)
        if booked is None:
            assert result.outcome is Outcome.IGNORED
        elif booked.commission == r.commission:
            assert result.outcome is Outcome.DUPLICATE
        else:
            assert result.outcome is Outcome.APPLIED
            self.delivered_fills[r.exec_id] = replace(booked, commission=r.commission)

    def _apply(self, r: OrderReport) -> None:
        state = self.order.state
        result = self.order.apply(r)
        self.delivered.append(r)
        if isinstance(r, CommissionCorrected):
            self._check_correction(r, result)
            assert self.order.state is state  # a commission never moves the order
        if isinstance(r, OrderFilled):
            assert result.booked, result  # a true fill is always booked, late or not
            self.delivered_fills[r.fill.exec_id] = r.fill

    @invariant()
    def filled_within_quantity_and_monotone(self) -> None:
        o = self.order
        assert 0 <= o.filled <= o.quantity
        assert o.filled >= self.last_filled
        self.last_filled = o.filled
        for i, leg in enumerate(self.intent.legs):
            assert o.leg_filled[i] <= leg.ratio * o.quantity

    @invariant()
    def every_fill_booked_exactly_once(self) -> None:
        for i in range(len(self.intent.legs)):
            expected = sum(f.quantity for f in self.delivered_fills.values() if f.leg == i)
            assert self.order.leg_filled[i] == expected
        assert set(self.order.fills) == set(self.delivered_fills)
        assert self.order.commission == sum((f.commission for f in self.delivered_fills.values()), Decimal(0))

    @invariant()
    def terminal_is_final_and_transitions_legal(self) -> None:
        if self.was_terminal:
            assert self.order.state in TERMINAL
        self.was_terminal = self.order.state in TERMINAL
        for a, b in self.order.transitions:
            assert b in TRANSITIONS[a]
        if self.order.filled == self.order.quantity:
            assert self.order.state is OrderState.FILLED


TestOrderMachine = OrderMachine.TestCase
TestOrderMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
