"""One test per pre-trade control: each denies with its code, and the base order passes them all."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest

from agent.domain import ChainBook, QuoteFlag, Right
from agent.executor.orders import Fill, Order, OrderAccepted, OrderIntent, OrderLeg, Origin, Side
from agent.executor.positions import PnL, PositionBook
from agent.executor.risk import (
    Denial,
    RiskConfigError,
    RiskContext,
    RiskEngine,
    RiskLimits,
    TradingState,
)
from agent.session import to_ns
from tests.agent.executor.helpers import SESSION, T0, book, buy, contract, quote

NOW = T0 + 100_000_000
C590, P585 = contract(590.0), contract(585.0, Right.PUT)


def market() -> ChainBook:
    return book(
        quote(590.0, bid=1.90, ask=2.00, ts=T0),
        quote(585.0, Right.PUT, bid=0.40, ask=0.42, ts=T0),
        quote(595.0, bid=0.30, ask=0.32, ts=T0),
    )


def ctx(**kw: Any) -> RiskContext:
    base: dict[str, Any] = {
        "now_ns": NOW,
        "state": TradingState.ACTIVE,
        "armed": True,
        "book": market(),
        "positions": PositionBook(),
        "working": (),
        "session": SESSION,
    }
    return RiskContext(**{**base, **kw})


def intent(qty: int = 1, price: str = "2.00", side: Side = Side.BUY, c: Any = C590, **kw: Any) -> OrderIntent:
    return dataclasses.replace(buy("r-1", qty=qty, price=price, c=c, side=side), **kw)


def codes(denials: tuple[Denial, ...]) -> set[str]:
    return {d.code for d in denials}


def long_position(qty: int, c: Any = C590, price: str = "2.00") -> PositionBook:
    p = PositionBook()
    p.apply(Fill("e", "x", 0, Side.BUY, qty, Decimal(price), Decimal(0), T0), c)
    return p


def test_base_order_passes_every_control() -> None:
    assert RiskEngine().check(intent(), ctx()) == ()


def test_halted_blocks_everything_but_flatten() -> None:
    e = RiskEngine()
    assert codes(e.check(intent(), ctx(state=TradingState.HALTED))) >= {"halted"}
    flatten = intent(side=Side.SELL, price="1.90", origin=Origin.FLATTEN)
    assert "halted" not in codes(e.check(flatten, ctx(state=TradingState.HALTED, positions=long_position(1))))


def test_reducing_only_allows_position_reducing_orders() -> None:
    e = RiskEngine()
    assert "reducing_only" in codes(e.check(intent(), ctx(state=TradingState.REDUCING)))
    close = intent(side=Side.SELL, price="1.90")
    assert e.check(close, ctx(state=TradingState.REDUCING, positions=long_position(1))) == ()
    # selling more than held would go short: not reducing
    assert "reducing_only" in codes(
        e.check(
            intent(qty=2, side=Side.SELL, price="1.90"),
            ctx(state=TradingState.REDUCING, positions=long_position(1)),
        )
    )


def test_not_armed_blocks_strategy_orders_only() -> None:
    e = RiskEngine()
    assert codes(e.check(intent(), ctx(armed=False))) == {"not_armed"}
    assert e.check(intent(origin=Origin.MANUAL), ctx(armed=False)) == ()


def test_max_order_quantity() -> None:
    assert "max_quantity" in codes(RiskEngine(RiskLimits(max_order_quantity=2)).check(intent(qty=3), ctx()))


def test_max_premium_per_order() -> None:
    denial = RiskEngine(RiskLimits(max_premium_per_order=Decimal("500"))).check(intent(qty=3), ctx())
    assert codes(denial) == {"max_premium"}
    assert "600" in denial[0].reason


@pytest.mark.parametrize(("price", "ok"), [("2.05", True), ("2.30", False), ("1.85", True), ("1.50", False)])
def test_price_collar_against_bid_ask(price: str, ok: bool) -> None:
    e = RiskEngine(RiskLimits(collar_ticks=5, collar_fraction=0.0))
    assert ("price_collar" not in codes(e.check(intent(price=price), ctx()))) is ok


def test_collar_of_a_spread_uses_the_net_market() -> None:
    spread = OrderIntent(
        "r-1",
        Side.BUY,
        1,
        Decimal("1.70"),
        (OrderLeg(C590, Side.BUY), OrderLeg(contract(595.0), Side.SELL)),
        T0,
    )
    e = RiskEngine(RiskLimits(collar_ticks=2, collar_fraction=0.0))
    assert "price_collar" not in codes(e.check(spread, ctx()))  # net 1.58 / 1.70
    assert "price_collar" in codes(e.check(dataclasses.replace(spread, limit_price=Decimal("1.80")), ctx()))


def test_no_quote() -> None:
    assert "no_quote" in codes(RiskEngine().check(intent(c=contract(600.0)), ctx()))


def test_quote_age_gate() -> None:
    e = RiskEngine(RiskLimits(max_quote_age_ms=500))
    assert "quote_stale" in codes(e.check(intent(), ctx(now_ns=T0 + 600_000_000)))
    assert "quote_stale" not in codes(e.check(intent(), ctx(now_ns=T0 + 400_000_000)))


def test_duplicate_intent_window() -> None:
    e = RiskEngine(RiskLimits(duplicate_window_ms=1000))
    e.record_sent(intent(), NOW)
    assert "duplicate_intent" in codes(e.check(intent(), ctx(now_ns=NOW + 10)))
    assert "duplicate_intent" not in codes(e.check(intent(qty=2), ctx(now_ns=NOW + 10)))  # other quantity
    assert "duplicate_intent" not in codes(
        e.check(intent(), ctx(now_ns=NOW + 1_100_000_000, book=_fresh(NOW + 1_000_000_000)))
    )


def _fresh(ts: int) -> ChainBook:
    return book(quote(590.0, bid=1.90, ask=2.00, ts=ts))


def test_order_rate_throttle() -> None:
    e = RiskEngine(RiskLimits(max_orders_per_second=2, duplicate_window_ms=1))
    e.record_sent(intent(qty=2), NOW - 500_000_000)
    e.record_sent(intent(qty=3), NOW - 100_000_000)
    assert "order_rate" in codes(e.check(intent(), ctx()))
    assert "order_rate" not in codes(e.check(intent(), ctx(now_ns=NOW + 600_000_000, book=_fresh(NOW))))


def test_ib_message_rate_counts_cancels() -> None:
    e = RiskEngine()
    for k in range(50):
        e.record_message(NOW - 1000 + k)
    assert e.message_denial(NOW) is not None
    assert "message_rate" in codes(e.check(intent(), ctx()))
    assert e.message_denial(NOW + 1_000_000_000) is None


def test_max_working_orders() -> None:
    working = tuple(Order(buy(f"w-{k}", c=contract(595.0), price="0.30")) for k in range(3))
    assert "max_working_orders" in codes(
        RiskEngine(RiskLimits(max_working_orders=3)).check(intent(), ctx(working=working))
    )


def test_max_position_per_contract_counts_held_and_working() -> None:
    lim = RiskLimits(max_position_per_contract=5)
    working = (Order(buy("w-1", qty=2, price="2.00")),)
    assert "max_position_contract" in codes(
        RiskEngine(lim).check(intent(qty=1), ctx(positions=long_position(3), working=working))
    )
    assert "max_position_contract" not in codes(
        RiskEngine(lim).check(intent(qty=1), ctx(positions=long_position(3)))
    )


def test_max_position_total() -> None:
    lim = RiskLimits(max_position_total=4)
    held = long_position(3, c=P585, price="0.40")
    assert "max_position_total" in codes(RiskEngine(lim).check(intent(qty=2), ctx(positions=held)))


def test_net_delta_gamma_vega_limits() -> None:
    # ATM 0DTE call at 11:00: delta about 0.5, so 3 contracts are about 150 shares
    assert codes(RiskEngine(RiskLimits(max_net_delta=100)).check(intent(qty=3), ctx())) == {"max_delta"}
    assert "max_gamma" in codes(RiskEngine(RiskLimits(max_net_gamma=1)).check(intent(qty=3), ctx()))
    assert "max_vega" in codes(RiskEngine(RiskLimits(max_net_vega=1)).check(intent(qty=3), ctx()))
    # a delta-reducing order passes even above the limit: short puts... here selling the held calls
    held = long_position(3)
    assert (
        RiskEngine(RiskLimits(max_net_delta=100)).check(
            intent(side=Side.SELL, price="1.90"), ctx(positions=held)
        )
        == ()
    )


def test_greeks_unavailable_fails_closed() -> None:
    no_spot = market()
    no_spot.underlying = float("nan")
    assert "greeks_unavailable" in codes(RiskEngine().check(intent(), ctx(book=no_spot)))


def test_daily_loss_blocks_opening_and_moves_to_reducing_hard_limit_halts_and_flattens() -> None:
    e = RiskEngine(RiskLimits(daily_loss_limit=100, hard_loss_limit=300))
    losing = long_position(1, price="3.50")  # marked at 1.95: -155 $
    assert "daily_loss" in codes(e.check(intent(c=P585, price="0.42"), ctx(positions=losing)))
    assert (
        e.loss_action(PnL(Decimal(0), Decimal(0), -150.0), TradingState.ACTIVE).state is TradingState.REDUCING
    )
    hard = e.loss_action(PnL(Decimal("-250"), Decimal("10"), -50.0), TradingState.REDUCING)
    assert (hard.state, hard.flatten) == (TradingState.HALTED, True)
    assert e.loss_action(PnL(Decimal(0), Decimal(0), 10.0), TradingState.ACTIVE).state is TradingState.ACTIVE


def test_opening_cutoff_new_york_time() -> None:
    late = to_ns(SESSION.at("15:46"))
    fresh = book(
        quote(590.0, bid=1.90, ask=2.00, ts=late), quote(585.0, Right.PUT, bid=0.4, ask=0.42, ts=late)
    )
    e = RiskEngine()
    assert "opening_cutoff" in codes(e.check(intent(), ctx(now_ns=late, book=fresh)))
    close = intent(side=Side.SELL, price="1.90")
    assert "opening_cutoff" not in codes(
        e.check(close, ctx(now_ns=late, book=fresh, positions=long_position(1)))
    )


def test_restricted_contracts() -> None:
    e = RiskEngine(RiskLimits(restricted=frozenset({C590.osi})))
    assert codes(e.check(intent(), ctx())) == {"restricted_contract"}


def test_limits_are_validated() -> None:
    with pytest.raises(RiskConfigError, match="hard_loss_limit"):
        RiskLimits(daily_loss_limit=500, hard_loss_limit=100)
    with pytest.raises(RiskConfigError, match="max_order_quantity"):
        RiskLimits(max_order_quantity=0)
    with pytest.raises(RiskConfigError, match="opening_cutoff"):
        RiskLimits(opening_cutoff="25:00")


def test_working_order_acknowledged_still_counts() -> None:
    o = Order(buy("w-1", qty=4, price="2.00"))
    o.apply(OrderAccepted("w-1", "B", T0))
    assert "max_position_contract" in codes(
        RiskEngine(RiskLimits(max_position_per_contract=4)).check(intent(), ctx(working=(o,)))
    )


def test_quote_flagged_stale_is_denied_even_when_young() -> None:
    """A quote the feed flagged STALE (e.g. held across an IB connectivity gap) is never traded on,
    however recent its timestamp looks."""
    e = RiskEngine(RiskLimits(max_quote_age_ms=500))
    stale = dataclasses.replace(quote(590.0, bid=1.90, ask=2.00, ts=NOW), flags=QuoteFlag.STALE)
    denials = e.check(intent(), ctx(book=book(stale), book_ts_ns=NOW))
    assert "quote_stale" in codes(denials)
    assert any("flagged stale" in d.reason for d in denials if d.code == "quote_stale")
    fresh = quote(590.0, bid=1.90, ask=2.00, ts=NOW)
    assert "quote_stale" not in codes(e.check(intent(), ctx(book=book(fresh), book_ts_ns=NOW)))
