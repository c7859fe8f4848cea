"""The paper broker: durable book, idempotent on client order id, fills at the touch, faults."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from agent.executor.journal import JournalLockedError
from agent.executor.orders import (
    OrderAccepted,
    OrderCancelled,
    OrderFilled,
    OrderIntent,
    OrderLeg,
    OrderRejected,
    OrderState,
    Side,
)
from agent.executor.paper import Faults, PaperBroker
from tests.agent.executor.helpers import T0, buy, chain, contract, quote

MS = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def fills(reports: list[object]) -> list[tuple[int, Decimal]]:
    return [(r.fill.quantity, r.fill.price) for r in reports if isinstance(r, OrderFilled)]


def test_latency_then_ack_then_partial_fills_up_to_displayed_size(tmp_path: Path, clock: Clock) -> None:
    p = PaperBroker(tmp_path / "paper.db", clock, latency_ns=5 * MS)
    p.on_quotes(chain(quote(ask=1.05, ask_size=3)))
    p.submit_now(buy("a-1", qty=5, price="1.10"))
    assert p.pump() == []  # not live yet
    clock.now += 5 * MS
    assert p.pump() == []  # live and matched now; reports still on the wire
    clock.now += 5 * MS
    out = p.pump()
    assert isinstance(out[0], OrderAccepted)
    assert fills(out) == [(3, Decimal("1.05"))]  # at the touch (price improvement), displayed size only
    clock.now += 10 * MS
    assert fills(p.pump()) == []  # the same displayed size is not filled twice
    p.on_quotes(chain(quote(ask=1.06, ask_size=10, ts=T0 + 1)))
    clock.now += 1 * MS
    p.pump()
    clock.now += 5 * MS
    assert fills(p.pump()) == [(2, Decimal("1.06"))]
    assert p.book_orders()[0].state is OrderState.FILLED
    assert p.book_positions()[0].quantity == 5


def test_limit_below_the_ask_does_not_fill(tmp_path: Path, clock: Clock) -> None:
    p = PaperBroker(tmp_path / "paper.db", clock, latency_ns=0)
    p.on_quotes(chain(quote(bid=1.00, ask=1.05)))
    p.submit_now(buy("a-1", price="1.04"))
    p.submit_now(buy("a-2", price="1.01", side=Side.SELL))  # above the bid: rests
    p.submit_now(buy("a-3", price="0.99", side=Side.SELL))
    out = p.pump()
    assert fills(out) == [(1, Decimal("1.00"))]
    assert [r.client_order_id for r in out if isinstance(r, OrderFilled)] == ["a-3"]


def test_idempotent_on_client_order_id_and_durable(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "paper.db"
    p = PaperBroker(path, clock, latency_ns=0)
    assert p.submit_now(buy("a-1"))
    p.pump()
    p.close()
    p = PaperBroker(path, clock, latency_ns=0)  # "restarted": the book is still there
    assert not p.submit_now(buy("a-1"))
    assert len(p.book_orders()) == 1
    assert (p.counter("submits"), p.counter("duplicate_submits")) == (2, 1)
    assert any(isinstance(r, OrderAccepted) for r in p.pump())  # the resubmitter learns the status


def test_the_book_has_one_owner(tmp_path: Path, clock: Clock) -> None:
    p = PaperBroker(tmp_path / "paper.db", clock)
    with pytest.raises(JournalLockedError):
        PaperBroker(tmp_path / "paper.db", clock)
    p.close()


def test_cancel_and_cancel_of_unknown(tmp_path: Path, clock: Clock) -> None:
    p = PaperBroker(tmp_path / "paper.db", clock, latency_ns=MS)
    p.submit_now(buy("a-1", price="0.50"))
    clock.now += MS
    p.pump()
    p.cancel_now("a-1")
    p.cancel_now("nope")
    clock.now += 2 * MS
    out = p.pump()
    clock.now += 2 * MS
    out += p.pump()
    assert any(isinstance(r, OrderCancelled) for r in out)
    assert any(getattr(r, "reason", "") == "unknown order" for r in out)


def test_spread_fills_all_legs_when_net_price_is_inside_the_limit(tmp_path: Path, clock: Clock) -> None:
    p = PaperBroker(tmp_path / "paper.db", clock, latency_ns=0)
    c1, c2 = contract(590.0), contract(592.0)
    p.on_quotes(chain(quote(590.0, ask=2.00, ask_size=4), quote(592.0, bid=1.20, ask=1.25, bid_size=2)))
    spread = OrderIntent(
        "s-1", Side.BUY, 3, Decimal("0.80"), (OrderLeg(c1, Side.BUY), OrderLeg(c2, Side.SELL)), T0
    )
    p.submit_now(spread)
    out = fills(p.pump())
    assert out == [(2, Decimal("2.00")), (2, Decimal("1.20"))]  # 2 units: the 592 bid shows 2


def test_injected_rejects_and_duplicates(tmp_path: Path, clock: Clock) -> None:
    p = PaperBroker(tmp_path / "paper.db", clock, latency_ns=0, faults=Faults(reject_rate=1.0))
    p.submit_now(buy("a-1"))
    assert isinstance(p.pump()[0], OrderRejected)
    p.close()
    p = PaperBroker(tmp_path / "paper2.db", clock, latency_ns=MS, faults=Faults(duplicate_rate=1.0))
    p.on_quotes(chain(quote()))
    p.submit_now(buy("a-1"))
    clock.now += 10 * MS
    p.pump()
    clock.now += 10 * MS
    out = p.pump()
    assert len(out) == 4  # ack and fill, each twice
