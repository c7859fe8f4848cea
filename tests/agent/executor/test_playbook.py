"""The strategy playbook: modes, proposals, pricing on the tick, sizing, exits, flatten, idempotency."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from agent.detector.signals import Leg, Severity, Signal
from agent.domain import ChainBook, ChainUpdate, OptionQuote, Right
from agent.executor.core import OrderFlow
from agent.executor.orders import (
    ZERO,
    Contract,
    Fill,
    Order,
    OrderAccepted,
    OrderCancelled,
    OrderFilled,
    OrderLeg,
    Origin,
    Side,
    single_leg,
)
from agent.executor.playbook import (
    Blotter,
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
    Skip,
    Target,
    combination_price,
)
from agent.executor.positions import PositionBook
from agent.executor.risk import RiskContext, RiskEngine, TradingState
from agent.session import Session, session, to_ns
from tests.agent.executor.helpers import SESSION, T0

S = 1_000_000_000
NOW = T0 + 100_000_000
HALF_DAY: Session = session(dt.date(2026, 11, 27))


def _typecheck_orderflow_is_a_blotter(flow: OrderFlow) -> Blotter:
    return flow  # mypy: the executor's OrderFlow is what on_tick reads


# ---------------------------------------------------------------- builders


def q(strike: float, bid: float, ask: float, right: Right = Right.CALL, size: int = 10) -> OptionQuote:
    return OptionQuote(strike, right, bid, ask, size, size, quote_ts_ns=T0)


MARKET = (
    q(585.0, 5.00, 5.10),
    q(590.0, 1.90, 2.00),
    q(595.0, 0.30, 0.32),
    q(585.0, 0.40, 0.42, Right.PUT),
)


def market(*quotes: OptionQuote, expiry: str = SESSION.expiry) -> ChainBook:
    b = ChainBook()
    b.apply(ChainUpdate("SPY", expiry, quotes or MARKET, full=True, underlying=590.0))
    return b


def leg(strike: float, side: str, price: float, qty: int = 1, right: Right = Right.CALL) -> Leg:
    return Leg(strike, right, "BUY" if side == "BUY" else "SELL", price, qty, 10)


VERTICAL = (leg(590.0, "BUY", 2.00), leg(595.0, "SELL", 0.30))


def signal(
    kind: str = "vertical",
    legs: tuple[Leg, ...] = VERTICAL,
    *,
    sid: str = "",
    status: str = "new",
    edge: float = 8.0,
    max_units: int = 10,
    expiry: str = SESSION.expiry,
) -> Signal:
    return Signal(
        id=sid or f"{kind}:{expiry}:590",
        kind=kind,
        expiry=expiry,
        legs=legs,
        edge=edge,
        score=edge,
        first_seen_ns=T0,
        last_seen_ns=T0,
        status="resolved" if status == "resolved" else ("active" if status == "active" else "new"),
        explanation="test",
        severity=Severity.CRITICAL,
        max_units=max_units,
    )


def config(mode: Mode = Mode.AUTO, exits: ExitRules | None = None, **rule: Any) -> PlaybookConfig:
    return PlaybookConfig(
        kinds={k: KindRule(mode, **rule) for k in ("vertical", "butterfly", "box", "parity", "intrinsic")},
        exits=exits or ExitRules(),
    )


def playbook(mode: Mode = Mode.AUTO, exits: ExitRules | None = None, **rule: Any) -> Playbook:
    return Playbook(config(mode, exits, **rule), SESSION)


def entry(pb: Playbook, sig: Signal | None = None, book: ChainBook | None = None) -> PlannedOrder:
    plan = pb.plan_entry(sig or signal(), book or market(), NOW)
    assert isinstance(plan, PlannedOrder), plan
    return plan


def filled(plan: PlannedOrder, cid: str, prices: tuple[str, ...], ts: int = NOW, units: int = 0) -> Order:
    """``plan`` as an order that filled ``units`` (all by default) at ``prices`` per leg."""
    o = Order(plan.intent(cid))
    o.apply(OrderAccepted(cid, f"B{cid}", ts))
    n = units or plan.quantity
    for i, lg in enumerate(o.intent.legs):
        fill = Fill(f"{cid}.{i}", cid, i, lg.side_for(plan.side), lg.ratio * n, Decimal(prices[i]), ZERO, ts)
        o.apply(OrderFilled(fill))
    return o


@dataclasses.dataclass
class FakeBlotter:
    orders: dict[str, Order]
    positions: PositionBook


def blotter(*orders: Order) -> FakeBlotter:
    return FakeBlotter({o.client_order_id: o for o in orders}, PositionBook.from_orders(orders))


def net(legs: tuple[OrderLeg, ...], side: Side, pricing: Pricing, book: ChainBook, ticks: int = 0) -> Decimal:
    quotes = [book.quotes[lg.contract.key] for lg in legs]
    return combination_price(legs, quotes, side, pricing, ticks)


def c(strike: float, right: Right = Right.CALL) -> Contract:
    return Contract("SPY", SESSION.expiry, strike, right)


# ---------------------------------------------------------------- configuration and mode off


def test_default_config_is_off_for_every_kind_and_produces_nothing() -> None:
    pb = Playbook(PlaybookConfig(), SESSION)
    for kind in ("parity", "box", "vertical", "butterfly", "intrinsic"):
        assert pb.on_signal(signal(kind), market(), NOW) == []
    assert pb.proposals() == []
    skip = pb.plan_entry(signal(), market(), NOW)
    assert isinstance(skip, Skip)
    assert "off" in skip.reason


def test_mode_off_explicitly_produces_nothing() -> None:
    pb = playbook(Mode.OFF)
    assert pb.on_signal(signal(), market(), NOW) == []
    assert pb.on_tick(blotter(), market(), NOW) == []


@pytest.mark.parametrize("kind", ["crossed", "stale", "wide_spread", "volume_spike", "trade_through"])
def test_quality_and_flow_kinds_never_trade(kind: str) -> None:
    with pytest.raises(PlaybookConfigError, match="never trade"):
        PlaybookConfig(kinds={kind: KindRule(Mode.AUTO)})
    # off is fine, and an unconfigured kind is off
    pb = Playbook(PlaybookConfig(kinds={kind: KindRule(Mode.OFF)}), SESSION)
    assert pb.on_signal(signal(kind), market(), NOW) == []


def test_relative_kinds_need_an_explicit_opt_in() -> None:
    with pytest.raises(PlaybookConfigError, match="allow_relative"):
        PlaybookConfig(kinds={"smile_outlier": KindRule(Mode.PROPOSE)})
    PlaybookConfig(kinds={"smile_outlier": KindRule(Mode.PROPOSE)}, allow_relative=True)


def test_bad_settings_are_named() -> None:
    with pytest.raises(PlaybookConfigError) as err:
        PlaybookConfig(
            kinds={
                "nonsense": KindRule(),
                "vertical": KindRule(Mode.AUTO, Pricing.IMPROVE, units=0, max_premium=Decimal(0)),
            },
            cooldown_s=0,
            exits=ExitRules(flatten_before_close_min=0, max_hold_s=-1),
        )
    text = str(err.value)
    for name in (
        "kinds.nonsense",
        "kinds.vertical.units",
        "improve_ticks",
        "max_premium",
        "cooldown_s",
        "flatten_before_close_min",
        "max_hold_s",
    ):
        assert name in text
    with pytest.raises(PlaybookConfigError):
        Target.usd(0)


def test_with_mode_switches_the_arbitrage_kinds() -> None:
    cfg = PlaybookConfig().with_mode(Mode.PROPOSE)
    assert {cfg.rule(k).mode for k in ("parity", "box", "vertical", "butterfly", "intrinsic")} == {
        Mode.PROPOSE
    }
    assert cfg.rule("stale").mode is Mode.OFF


# ---------------------------------------------------------------- propose


def test_propose_creates_a_pending_proposal() -> None:
    pb = playbook(Mode.PROPOSE)
    out = pb.on_signal(signal(), market(), NOW)
    assert len(out) == 1
    p = out[0]
    assert isinstance(p, Proposal)
    assert p.status is ProposalStatus.PENDING
    assert p.signal_id == "vertical:20250317:590"
    assert p.id == "vertical:20250317:590@110000"  # signal id @ New York time
    assert p.order.purpose is Purpose.ENTRY
    assert p.expires_ns == NOW + 30 * S
    assert pb.proposals() == [p]


def test_confirm_turns_a_proposal_into_an_intent_once() -> None:
    pb = playbook(Mode.PROPOSE)
    (p,) = pb.on_signal(signal(), market(), NOW)
    assert isinstance(p, Proposal)
    plan = pb.confirm(p.id, NOW + S)
    assert plan.legs == p.order.legs
    assert plan.limit_price == p.order.limit_price
    assert plan.created_ns == NOW + S
    intent = plan.intent("pb-20250317-000001", lease_epoch=3)
    assert intent.signal_id == p.signal_id
    assert intent.origin is Origin.STRATEGY
    assert intent.lease_epoch == 3
    assert pb.proposals() == []
    assert pb.proposals(pending_only=False)[0].status is ProposalStatus.CONFIRMED
    with pytest.raises(ProposalError, match="already confirmed"):
        pb.confirm(p.id, NOW + 2 * S)
    with pytest.raises(ProposalError, match="no proposal"):
        pb.confirm("nope", NOW)


def test_confirm_with_a_book_reprices_on_the_current_market() -> None:
    pb = playbook(Mode.PROPOSE, pricing=Pricing.MID)
    (p,) = pb.on_signal(signal(), market(), NOW)
    assert isinstance(p, Proposal)
    assert p.order.limit_price == Decimal("1.64")
    moved = market(q(590.0, 1.80, 1.90), q(595.0, 0.30, 0.32))
    plan = pb.confirm(p.id, NOW + S, moved)
    assert plan.limit_price == Decimal("1.54")


def test_confirm_that_cannot_be_priced_leaves_the_proposal_pending() -> None:
    pb = playbook(Mode.PROPOSE)
    (p,) = pb.on_signal(signal(), market(), NOW)
    assert isinstance(p, Proposal)
    with pytest.raises(ProposalError, match="no usable two-sided quote"):
        pb.confirm(p.id, NOW + S, market(q(590.0, 1.90, 2.00)))
    assert pb.confirm(p.id, NOW + S).signal_id == p.signal_id


def test_reject() -> None:
    pb = playbook(Mode.PROPOSE)
    (p,) = pb.on_signal(signal(), market(), NOW)
    assert isinstance(p, Proposal)
    rejected = pb.reject(p.id, NOW + S, "too small")
    assert rejected.status is ProposalStatus.REJECTED
    assert rejected.reason == "too small"
    with pytest.raises(ProposalError, match="already rejected: too small"):
        pb.confirm(p.id, NOW + S)


def test_proposal_expires_after_its_ttl() -> None:
    pb = playbook(Mode.PROPOSE)
    (p,) = pb.on_signal(signal(), market(), NOW)
    assert isinstance(p, Proposal)
    assert pb.expire(NOW + 29 * S) == []
    (gone,) = pb.expire(NOW + 30 * S)
    assert gone.id == p.id
    assert gone.status is ProposalStatus.EXPIRED
    with pytest.raises(ProposalError, match="already expired"):
        pb.confirm(p.id, NOW + 31 * S)


def test_confirm_after_the_ttl_fails_even_before_expire_runs() -> None:
    pb = playbook(Mode.PROPOSE)
    (p,) = pb.on_signal(signal(), market(), NOW)
    assert isinstance(p, Proposal)
    with pytest.raises(ProposalError, match="expired"):
        pb.confirm(p.id, NOW + 30 * S)


def test_proposal_expires_when_its_signal_resolves() -> None:
    pb = playbook(Mode.PROPOSE)
    (p,) = pb.on_signal(signal(), market(), NOW)
    assert isinstance(p, Proposal)
    (gone,) = pb.on_signal(signal(status="resolved"), market(), NOW + S)
    assert isinstance(gone, Proposal)
    assert gone.id == p.id
    assert gone.status is ProposalStatus.EXPIRED
    assert "resolved" in gone.reason
    with pytest.raises(ProposalError, match="expired"):
        pb.confirm(p.id, NOW + 2 * S)


def test_proposal_expires_at_the_flatten_time_at_the_latest() -> None:
    pb = playbook(Mode.PROPOSE)
    late = to_ns(SESSION.at("15:49:50"))
    (p,) = pb.on_signal(signal(), market(), late)
    assert isinstance(p, Proposal)
    assert p.expires_ns == to_ns(SESSION.at("15:50"))


# ---------------------------------------------------------------- auto (risk applied by the caller)


def test_auto_returns_an_entry_that_the_risk_engine_then_checks() -> None:
    pb = playbook(Mode.AUTO)
    (plan,) = pb.on_signal(signal(), market(), NOW)
    assert isinstance(plan, PlannedOrder)
    assert plan.purpose is Purpose.ENTRY
    assert plan.side is Side.BUY
    assert [(lg.contract.strike, lg.side, lg.ratio) for lg in plan.legs] == [
        (590.0, Side.BUY, 1),
        (595.0, Side.SELL, 1),
    ]
    assert plan.limit_price == Decimal("1.64")  # mid by default
    intent = plan.intent("pb-20250317-000001")
    ctx = RiskContext(NOW, TradingState.ACTIVE, True, market(), PositionBook(), (), SESSION)
    assert RiskEngine().check(intent, ctx) == ()
    denied = RiskEngine().check(intent, dataclasses.replace(ctx, armed=False))
    assert {d.code for d in denied} == {"not_armed"}


def test_entry_is_skipped_outside_the_trading_window_and_for_another_expiry() -> None:
    pb = playbook()
    for when in (SESSION.open_ns - S, to_ns(SESSION.at("15:50"))):
        skip = pb.plan_entry(signal(), market(), when)
        assert isinstance(skip, Skip)
        assert "window" in skip.reason
    skip = pb.plan_entry(signal(expiry="20250318"), market(expiry="20250318"), NOW)
    assert isinstance(skip, Skip)


def test_entry_is_skipped_below_min_edge_and_without_quotes() -> None:
    pb = playbook(min_edge=10.0)
    skip = pb.plan_entry(signal(edge=9.0), market(), NOW)
    assert isinstance(skip, Skip)
    assert "min_edge" in skip.reason
    skip = playbook().plan_entry(signal(), market(q(590.0, 0.0, 2.00), MARKET[2]), NOW)
    assert isinstance(skip, Skip)
    assert "quote" in skip.reason


# ---------------------------------------------------------------- pricing on the tick


@pytest.mark.parametrize(
    ("pricing", "ticks", "side", "expected"),
    [
        (Pricing.TOUCH, 0, Side.BUY, "2.00"),  # pay the ask
        (Pricing.TOUCH, 0, Side.SELL, "1.90"),  # hit the bid
        (Pricing.MID, 0, Side.BUY, "1.95"),
        (Pricing.MID, 0, Side.SELL, "1.95"),
        (Pricing.IMPROVE, 2, Side.BUY, "1.98"),
        (Pricing.IMPROVE, 2, Side.SELL, "1.92"),
        (Pricing.IMPROVE, 20, Side.BUY, "1.95"),  # never past the mid
        (Pricing.IMPROVE, 20, Side.SELL, "1.95"),
    ],
)
def test_single_leg_prices(pricing: Pricing, ticks: int, side: Side, expected: str) -> None:
    legs = (OrderLeg(c(590.0), Side.BUY),)
    assert net(legs, side, pricing, market(), ticks) == Decimal(expected)


def test_a_half_tick_mid_rounds_toward_the_touch() -> None:
    legs = (OrderLeg(c(590.0), Side.BUY),)
    book = market(q(590.0, 1.00, 1.05))
    assert net(legs, Side.BUY, Pricing.MID, book) == Decimal("1.03")
    assert net(legs, Side.SELL, Pricing.MID, book) == Decimal("1.02")
    assert net(legs, Side.BUY, Pricing.IMPROVE, book, 5) == Decimal("1.03")


@pytest.mark.parametrize(
    ("pricing", "ticks", "expected"),
    [
        (Pricing.TOUCH, 0, "1.70"),  # 2.00 ask - 0.30 bid
        (Pricing.MID, 0, "1.64"),  # 1.95 - 0.31
        (Pricing.IMPROVE, 2, "1.68"),
        (Pricing.IMPROVE, 50, "1.64"),
    ],
)
def test_vertical_net_prices(pricing: Pricing, ticks: int, expected: str) -> None:
    plan = entry(playbook(pricing=pricing, improve_ticks=ticks))
    assert plan.limit_price == Decimal(expected)
    assert plan.limit_price % Decimal("0.01") == 0


def test_butterfly_net_price_counts_the_ratios() -> None:
    fly = (leg(585.0, "BUY", 5.10), leg(590.0, "SELL", 1.90, 2), leg(595.0, "BUY", 0.32))
    touch = entry(playbook(pricing=Pricing.TOUCH), signal("butterfly", fly))
    assert touch.limit_price == Decimal("1.62")  # 5.10 - 2 x 1.90 + 0.32
    assert [lg.ratio for lg in touch.legs] == [1, 2, 1]
    mid = entry(playbook(pricing=Pricing.MID), signal("butterfly", fly))
    assert mid.limit_price == Decimal("1.46")  # 5.05 - 2 x 1.95 + 0.31


def test_a_credit_combination_has_a_negative_net_price() -> None:
    credit = (leg(590.0, "SELL", 1.90), leg(595.0, "BUY", 0.32))
    assert entry(playbook(pricing=Pricing.TOUCH), signal(legs=credit)).limit_price == Decimal("-1.58")
    assert entry(playbook(pricing=Pricing.MID), signal(legs=credit)).limit_price == Decimal("-1.64")
    assert entry(
        playbook(pricing=Pricing.IMPROVE, improve_ticks=3), signal(legs=credit)
    ).limit_price == Decimal("-1.61")


def test_an_off_tick_net_mid_rounds_toward_the_touch() -> None:
    book = market(q(590.0, 1.90, 2.01), q(595.0, 0.30, 0.32))
    legs = (OrderLeg(c(590.0), Side.BUY), OrderLeg(c(595.0), Side.SELL))
    assert net(legs, Side.BUY, Pricing.MID, book) == Decimal("1.65")  # 1.955 - 0.31 = 1.645
    assert net(legs, Side.SELL, Pricing.MID, book) == Decimal("1.64")


def test_an_entry_never_pays_more_than_the_signal_found_its_edge_at() -> None:
    seen = (leg(590.0, "BUY", 1.95), leg(595.0, "SELL", 0.30))  # the ask has since moved up to 2.00
    plan = entry(playbook(pricing=Pricing.TOUCH), signal(legs=seen))
    assert plan.limit_price == Decimal("1.65")


# ---------------------------------------------------------------- sizing


def test_units_are_capped_by_the_signals_displayed_sizes() -> None:
    assert entry(playbook(units=5), signal(max_units=3)).quantity == 3
    assert entry(playbook(units=2), signal(max_units=3)).quantity == 2
    skip = playbook().plan_entry(signal(max_units=0), market(), NOW)
    assert isinstance(skip, Skip)


def test_units_are_capped_by_the_sizes_in_the_book_now() -> None:
    book = market(q(590.0, 1.90, 2.00, size=2), q(595.0, 0.30, 0.32))
    assert entry(playbook(units=5), book=book).quantity == 2
    fly = (leg(585.0, "BUY", 5.10), leg(590.0, "SELL", 1.90, 2), leg(595.0, "BUY", 0.32))
    fly_book = market(q(585.0, 5.00, 5.10), q(590.0, 1.90, 2.00, size=5), q(595.0, 0.30, 0.32))
    assert entry(playbook(units=5), signal("butterfly", fly), fly_book).quantity == 2  # 5 // 2


def test_units_are_capped_by_the_max_premium() -> None:
    plan = entry(playbook(units=5, pricing=Pricing.TOUCH, max_premium=Decimal("400")))
    assert plan.quantity == 2  # $170 a unit
    assert plan.premium() == Decimal("340.00")
    skip = playbook(max_premium=Decimal("100")).plan_entry(signal(), market(), NOW)
    assert isinstance(skip, Skip)
    assert "max_premium" in skip.reason


# ---------------------------------------------------------------- idempotency


def test_updates_of_one_signal_make_one_entry_per_cooldown() -> None:
    pb = playbook(Mode.AUTO)
    assert len(pb.on_signal(signal(), market(), NOW)) == 1
    for i in range(1, 5):
        assert pb.on_signal(signal(status="active", edge=8.0 + i), market(), NOW + i * S) == []
    assert pb.on_signal(signal(status="active"), market(), NOW + 299 * S) == []
    assert len(pb.on_signal(signal(status="active"), market(), NOW + 300 * S)) == 1


def test_a_new_generation_of_a_signal_is_a_new_signal() -> None:
    pb = playbook(Mode.AUTO)
    assert len(pb.on_signal(signal(), market(), NOW)) == 1
    assert len(pb.on_signal(signal(sid="vertical:20250317:590#2"), market(), NOW + S)) == 1


def test_one_pending_proposal_per_signal_even_after_the_cooldown() -> None:
    pb = Playbook(dataclasses.replace(config(Mode.PROPOSE), cooldown_s=5.0, proposal_ttl_s=60.0), SESSION)
    assert len(pb.on_signal(signal(), market(), NOW)) == 1
    assert pb.on_signal(signal(status="active"), market(), NOW + 10 * S) == []
    assert len(pb.proposals()) == 1


def test_a_skipped_update_does_not_start_the_cooldown() -> None:
    pb = playbook(Mode.AUTO)
    assert pb.on_signal(signal(max_units=0), market(), NOW) == []
    assert len(pb.on_signal(signal(status="active"), market(), NOW + S)) == 1


def test_restore_reseeds_the_cooldown_from_the_journal() -> None:
    first = playbook(Mode.AUTO)
    (plan,) = first.on_signal(signal(), market(), NOW)
    assert isinstance(plan, PlannedOrder)
    restarted = playbook(Mode.AUTO)
    restarted.restore([Order(plan.intent("pb-1"))])
    assert restarted.on_signal(signal(status="active"), market(), NOW + S) == []
    assert len(restarted.on_signal(signal(status="active"), market(), NOW + 300 * S)) == 1


# ---------------------------------------------------------------- exits


def opened(pb: Playbook, ts: int = NOW) -> tuple[PlannedOrder, Order]:
    plan = entry(pb, signal(max_units=1))
    return plan, filled(plan, "pb-1", ("2.00", "0.30"), ts)  # entry net 1.70 a unit


def test_trades_are_derived_from_the_orders() -> None:
    pb = playbook(exits=ExitRules())
    _, o = opened(pb)
    (t,) = pb.trades(blotter(o))
    assert (t.units, t.entry_price, t.side, t.opened_ns, t.exiting) == (1, Decimal("1.70"), Side.BUY, NOW, 0)


def test_no_exit_while_nothing_is_due() -> None:
    pb = playbook(exits=ExitRules(take_profit=Target.usd(10), stop_loss=Target.usd(10)))
    _, o = opened(pb)
    assert pb.on_tick(blotter(o), market(), NOW + S) == []  # marked at mid 1.64: -$6 a unit


def test_stop_loss_in_dollars_per_unit() -> None:
    pb = playbook(exits=ExitRules(stop_loss=Target.usd(5)))
    _, o = opened(pb)
    (ex,) = pb.on_tick(blotter(o), market(), NOW + S)
    assert isinstance(ex, PlannedOrder)
    assert ex.purpose is Purpose.STOP_LOSS
    assert ex.side is Side.SELL
    assert ex.quantity == 1
    assert ex.origin is Origin.STRATEGY
    assert ex.limit_price == Decimal("1.58")  # sell the vertical at the touch: 1.90 bid - 0.32 ask
    assert ex.intent("pb-2").signal_id == o.intent.signal_id


@pytest.mark.parametrize(("pct", "fires"), [("3", True), ("4", False)])
def test_stop_loss_in_percent_of_the_entry(pct: str, fires: bool) -> None:
    pb = playbook(exits=ExitRules(stop_loss=Target.pct(pct)))  # -$6 on $170: 3.5 %
    _, o = opened(pb)
    assert bool(pb.on_tick(blotter(o), market(), NOW + S)) is fires


def test_take_profit() -> None:
    pb = playbook(exits=ExitRules(take_profit=Target.usd(10), stop_loss=Target.usd(50)))
    _, o = opened(pb)
    up = market(q(590.0, 2.10, 2.20), q(595.0, 0.30, 0.32))  # mid 1.84: +$14 a unit
    (ex,) = pb.on_tick(blotter(o), up, NOW + S)
    assert isinstance(ex, PlannedOrder)
    assert ex.purpose is Purpose.TAKE_PROFIT
    assert ex.limit_price == Decimal("1.78")
    pct = playbook(exits=ExitRules(take_profit=Target.pct(10)))  # $17 needed
    assert pct.on_tick(blotter(o), up, NOW + S) == []


def test_time_exit_after_max_hold() -> None:
    pb = playbook(exits=ExitRules(max_hold_s=600))
    _, o = opened(pb)
    assert pb.on_tick(blotter(o), market(), NOW + 599 * S) == []
    (ex,) = pb.on_tick(blotter(o), market(), NOW + 600 * S)
    assert isinstance(ex, PlannedOrder)
    assert ex.purpose is Purpose.TIME_EXIT


def test_exit_pricing_can_improve_from_the_touch() -> None:
    pb = playbook(exits=ExitRules(max_hold_s=1, pricing=Pricing.IMPROVE, improve_ticks=2))
    _, o = opened(pb)
    (ex,) = pb.on_tick(blotter(o), market(), NOW + 2 * S)
    assert isinstance(ex, PlannedOrder)
    assert ex.limit_price == Decimal("1.60")


def test_a_working_exit_is_not_sent_twice_and_is_repriced_when_stale() -> None:
    pb = playbook(exits=ExitRules(stop_loss=Target.usd(5), reprice_after_s=5, retry_after_s=2))
    _, o = opened(pb)
    (ex,) = pb.on_tick(blotter(o), market(), NOW + S)
    assert isinstance(ex, PlannedOrder)
    working = Order(ex.intent("pb-2"))
    assert pb.on_tick(blotter(o, working), market(), NOW + 2 * S) == []
    assert pb.on_tick(blotter(o, working), market(), NOW + 4 * S) == []
    (cancel,) = pb.on_tick(blotter(o, working), market(), NOW + 6 * S)
    assert cancel == CancelOrder("pb-2", "re-price an exit working for 5 s")
    working.apply(OrderAccepted("pb-2", "B2", NOW))
    working.apply(OrderCancelled("pb-2", NOW + 7 * S))
    (again,) = pb.on_tick(blotter(o, working), market(), NOW + 8 * S)
    assert isinstance(again, PlannedOrder)
    assert again.purpose is Purpose.STOP_LOSS


def test_an_exit_that_was_not_placed_is_retried_after_a_pause() -> None:
    pb = playbook(exits=ExitRules(stop_loss=Target.usd(5), retry_after_s=2))
    _, o = opened(pb)
    assert len(pb.on_tick(blotter(o), market(), NOW + S)) == 1  # say risk denied it
    assert pb.on_tick(blotter(o), market(), NOW + 2 * S) == []
    assert len(pb.on_tick(blotter(o), market(), NOW + 3 * S)) == 1


def test_a_filled_exit_closes_the_trade() -> None:
    pb = playbook(exits=ExitRules(stop_loss=Target.usd(5)))
    _, o = opened(pb)
    (ex,) = pb.on_tick(blotter(o), market(), NOW + S)
    assert isinstance(ex, PlannedOrder)
    closed = filled(ex, "pb-2", ("1.90", "0.32"), NOW + 2 * S)
    assert pb.trades(blotter(o, closed)) == []
    assert pb.on_tick(blotter(o, closed), market(), NOW + 10 * S) == []


def sold_by_hand(cid: str, contract: Contract, qty: int = 1, price: str = "1.90") -> Order:
    """An operator's manual order that sold ``qty`` of ``contract``."""
    intent = single_leg(cid, contract, Side.SELL, qty, Decimal(price), NOW, origin=Origin.MANUAL)
    o = Order(intent)
    o.apply(OrderFilled(Fill(f"{cid}.0", cid, 0, Side.SELL, qty, Decimal(price), ZERO, NOW)))
    return o


def test_trades_hold_their_own_legs_whatever_the_book_nets() -> None:
    pb = playbook()
    _, o = opened(pb)
    (t,) = pb.trades(blotter(o))
    assert (t.held, t.closable, t.reduced, t.crossed) == ((1, -1), (1, -1), (0, 0), (0, 0))
    assert t.closable_units == 1
    assert t.order_ids == ("pb-1",)


def test_exits_never_sell_more_than_the_book_holds() -> None:
    """An operator sold the vertical's 590 call by hand: the trade still holds its legs by its own
    fills, but no exit sells the call again; the flatten buys back the 595 call alone."""
    pb = playbook(exits=ExitRules(stop_loss=Target.usd(5)))
    _, o = opened(pb)
    manual = sold_by_hand("m-1", c(590.0))
    (t,) = pb.trades(blotter(o, manual))
    assert (t.units, t.held, t.closable, t.reduced) == (1, (1, -1), (0, -1), (1, 0))
    assert t.closable_units == 0
    assert "holds less" in t.shortfall()
    assert "1 590C" in t.shortfall()
    assert pb.on_tick(blotter(o, manual), market(), NOW + S) == []  # the stop is due, but no whole unit
    flat = to_ns(SESSION.at("15:50"))
    (ex,) = pb.on_tick(blotter(o, manual), market(), flat)
    assert isinstance(ex, PlannedOrder)
    assert (ex.purpose, ex.origin, ex.side, ex.quantity) == (Purpose.FLATTEN, Origin.FLATTEN, Side.BUY, 1)
    assert [lg.contract.strike for lg in ex.legs] == [595.0]
    assert ex.limit_price == Decimal("0.32")
    assert "holds less than the playbook's trades (1 590C not closed" in ex.reason
    closed = filled(ex, "pb-2", ("0.32",), flat + S)
    b = blotter(o, manual, closed)
    assert b.positions.net_quantities() == {}
    (t,) = pb.trades(b)  # the flatten belongs to the trade: what it holds is the call sold by hand
    assert (t.held, t.closable, t.remaining) == ((1, 0), (0, 0), (0, 0))
    assert t.order_ids == ("pb-1", "pb-2")
    assert pb.on_tick(b, market(), flat + 10 * S) == []


def test_a_manual_close_reduces_the_newest_trade_first() -> None:
    pb = playbook(exits=ExitRules(stop_loss=Target.usd(5)))
    plan = entry(pb, signal(max_units=1))
    first = filled(plan, "pb-1", ("2.00", "0.30"))
    second = filled(dataclasses.replace(plan, signal_id="vertical:20250317:590#2"), "pb-2", ("2.00", "0.30"))
    manual = sold_by_hand("m-1", c(590.0))
    b = blotter(first, second, manual)
    old, new = pb.trades(b)
    assert (old.closable, old.reduced) == ((1, -1), (0, 0))
    assert (new.closable, new.reduced) == ((0, -1), (1, 0))
    (ex,) = pb.on_tick(b, market(), NOW + S)
    assert isinstance(ex, PlannedOrder)
    assert (ex.signal_id, ex.purpose, ex.quantity) == (old.signal_id, Purpose.STOP_LOSS, 1)
    # flatten: the old trade whole, the new one only the leg the book still backs
    flat = to_ns(SESSION.at("15:50"))
    a, z = pb.on_tick(b, market(), flat)
    assert isinstance(a, PlannedOrder)
    assert isinstance(z, PlannedOrder)
    assert (a.signal_id, a.legs, a.side) == (old.signal_id, old.legs, Side.SELL)
    assert "holds less" not in a.reason
    assert (z.signal_id, [lg.contract.strike for lg in z.legs], z.side) == (new.signal_id, [595.0], Side.BUY)
    assert "holds less" in z.reason
    done = blotter(first, second, manual, filled(a, "pb-3", ("1.90", "0.32")), filled(z, "pb-4", ("0.32",)))
    assert done.positions.net_quantities() == {}


# ---------------------------------------------------------------- two trades on one contract

PUT590 = q(590.0, 1.85, 1.95, Right.PUT)
OVERLAP_MARKET = (*MARKET, PUT590)
PARITY = (leg(590.0, "SELL", 1.90), leg(590.0, "BUY", 1.95, right=Right.PUT))  # short the 590 call
SHORT_FLY = (leg(585.0, "SELL", 5.00), leg(590.0, "BUY", 2.00, 2), leg(595.0, "SELL", 0.30))  # long it


def overlapping(pb: Playbook) -> tuple[Order, Order]:
    book = market(*OVERLAP_MARKET)
    parity = pb.plan_entry(signal("parity", PARITY, max_units=1), book, NOW)
    fly = pb.plan_entry(signal("butterfly", SHORT_FLY, max_units=1), book, NOW + S)
    assert isinstance(parity, PlannedOrder)
    assert isinstance(fly, PlannedOrder)
    return (
        filled(parity, "pb-1", ("1.90", "1.95"), NOW),
        filled(fly, "pb-2", ("5.00", "2.00", "0.30"), NOW + S),
    )


def test_opposite_holdings_of_two_trades_are_both_flattened_and_the_book_ends_flat() -> None:
    pb = playbook()
    p_in, f_in = overlapping(pb)
    book = market(*OVERLAP_MARKET)
    b = blotter(p_in, f_in)
    assert b.positions.net_quantities() == {
        c(585.0).osi: -1,
        c(590.0).osi: 1,  # the parity's -1 and the butterfly's +2
        c(595.0).osi: -1,
        c(590.0, Right.PUT).osi: 1,
    }
    parity, fly = pb.trades(b)  # both trades, each with its own legs (the old netting lost the parity)
    assert (parity.units, parity.held, fly.units, fly.held) == (1, (-1, 1), 1, (-1, 2, -1))
    assert (parity.crossed, fly.crossed) == ((-1, 0), (0, 1, 0))
    flat = to_ns(SESSION.at("15:50"))
    orders = pb.on_tick(b, book, flat)
    assert len(orders) == 2
    put, rest = orders
    assert isinstance(put, PlannedOrder)
    assert isinstance(rest, PlannedOrder)
    # the parity: the 590 call is netted against the butterfly's, the put is sold alone
    assert (put.signal_id, put.purpose, put.origin) == (parity.signal_id, Purpose.FLATTEN, Origin.FLATTEN)
    assert (put.side, put.quantity, put.limit_price) == (Side.SELL, 1, Decimal("1.85"))
    assert [(lg.contract.key, lg.side) for lg in put.legs] == [((590.0, Right.PUT), Side.BUY)]
    assert "netted against other playbook trades' opposite holdings: 1 590C" in put.reason
    # the butterfly: what it holds beyond the netted call, as one order
    assert (rest.signal_id, rest.origin, rest.quantity) == (fly.signal_id, Origin.FLATTEN, 1)
    closing = {lg.contract.strike: (lg.side_for(rest.side), lg.ratio) for lg in rest.legs}
    assert closing == {585.0: (Side.BUY, 1), 590.0: (Side.SELL, 1), 595.0: (Side.BUY, 1)}
    assert (rest.side, rest.limit_price) == (Side.SELL, Decimal("-3.52"))  # pays 5.10 + 0.32 - 1.90
    # every order reduces the book, so the risk engine lets it through after the opening cutoff,
    # where a whole-trade order touching the netted call would open and be denied
    ctx = RiskContext(flat, TradingState.ACTIVE, True, book, b.positions, (), SESSION, book_ts_ns=flat)
    for state in (TradingState.ACTIVE, TradingState.REDUCING, TradingState.HALTED):
        assert RiskEngine().check(put.intent("x-1"), dataclasses.replace(ctx, state=state)) == ()
        assert RiskEngine().check(rest.intent("x-2"), dataclasses.replace(ctx, state=state)) == ()
    whole = PlannedOrder(
        Purpose.FLATTEN, Side.SELL, 1, Decimal("-0.05"), parity.legs, "p", flat, Origin.FLATTEN
    )
    assert "opening_cutoff" in {d.code for d in RiskEngine().check(whole.intent("x-3"), ctx)}
    # while they work nothing is sent again
    working = blotter(p_in, f_in, Order(put.intent("pb-3")), Order(rest.intent("pb-4")))
    assert pb.on_tick(working, book, flat + 3 * S) == []
    # filled: the book is flat and nothing more is due
    p_out = filled(put, "pb-3", ("1.85",), flat + S)
    f_out = filled(rest, "pb-4", ("5.10", "1.90", "0.32"), flat + S)
    done = blotter(p_in, f_in, p_out, f_out)
    assert done.positions.net_quantities() == {}
    assert pb.on_tick(done, book, flat + 10 * S) == []
    parity, fly = pb.trades(done)
    assert parity.order_ids == ("pb-1", "pb-3")
    assert fly.order_ids == ("pb-2", "pb-4")
    assert (parity.held, parity.remaining, fly.held, fly.remaining) == ((-1, 0), (0, 0), (0, 1, 0), (0, 0, 0))
    # per-trade P&L (each trade's own fills, the netted call marked at mid) adds up to the book's
    total = done.positions.pnl(book)
    assert total.unrealized == 0.0
    per_trade = [
        PositionBook.from_orders(done.orders[cid] for cid in t.order_ids).pnl(book) for t in (parity, fly)
    ]
    assert sum(float(p.realized) + p.unrealized for p in per_trade) == pytest.approx(
        float(total.realized) + total.unrealized
    )
    # the netted call stays on both sides: short 1 at 1.90 and long 1 at 2.00, both marked at mid 1.95
    assert per_trade[0].unrealized == pytest.approx(-5.0)
    assert per_trade[1].unrealized == pytest.approx(-5.0)
    assert sum(p.fees for p in per_trade) == total.fees


def test_opposite_holdings_are_not_netted_before_the_flatten() -> None:
    """Stop-loss, take-profit and time exits close a trade's own combination, whole units."""
    pb = playbook(exits=ExitRules(max_hold_s=60))
    p_in, f_in = overlapping(pb)
    book = market(*OVERLAP_MARKET)
    ex = pb.on_tick(blotter(p_in, f_in), book, NOW + 61 * S)
    assert [(e.signal_id, e.legs, e.quantity) for e in ex if isinstance(e, PlannedOrder)] == [
        (p_in.intent.signal_id, p_in.intent.legs, 1),
        (f_in.intent.signal_id, f_in.intent.legs, 1),
    ]


def test_a_stale_entry_order_is_cancelled() -> None:
    pb = playbook()
    plan = entry(pb)
    working = Order(plan.intent("pb-1"))
    assert pb.on_tick(blotter(working), market(), NOW + 29 * S) == []
    (cancel,) = pb.on_tick(blotter(working), market(), NOW + 30 * S)
    assert isinstance(cancel, CancelOrder)
    assert cancel.client_order_id == "pb-1"


# ---------------------------------------------------------------- flatten before close


def test_flatten_at_1550_new_york_by_default() -> None:
    pb = playbook(exits=ExitRules())
    _, o = opened(pb)
    assert pb.flatten_ns == to_ns(SESSION.at("15:50"))
    assert pb.on_tick(blotter(o), market(), to_ns(SESSION.at("15:49:59"))) == []
    (ex,) = pb.on_tick(blotter(o), market(), to_ns(SESSION.at("15:50")))
    assert isinstance(ex, PlannedOrder)
    assert ex.purpose is Purpose.FLATTEN
    assert ex.origin is Origin.FLATTEN
    assert ex.limit_price == Decimal("1.58")  # at the touch, whatever the exit pricing
    assert ex.quantity == 1


def test_flatten_also_cancels_working_entries() -> None:
    pb = playbook()
    plan = entry(pb)
    late = dataclasses.replace(plan, created_ns=to_ns(SESSION.at("15:49:58")))
    working = Order(late.intent("pb-1"))
    (cancel,) = pb.on_tick(blotter(working), market(), to_ns(SESSION.at("15:50")))
    assert cancel == CancelOrder("pb-1", "flatten before close")


def test_flatten_on_a_half_day_is_relative_to_the_1300_close() -> None:
    assert HALF_DAY.half_day
    expiry = HALF_DAY.expiry
    pb = Playbook(config(Mode.AUTO), HALF_DAY)
    assert pb.flatten_ns == to_ns(HALF_DAY.at("12:50"))
    book = market(expiry=expiry)
    t = to_ns(HALF_DAY.at("11:00"))
    plan = pb.plan_entry(signal(expiry=expiry, max_units=1), book, t)
    assert isinstance(plan, PlannedOrder)
    o = filled(plan, "pb-1", ("2.00", "0.30"), t)
    assert pb.on_tick(blotter(o), book, to_ns(HALF_DAY.at("12:49:59"))) == []
    (ex,) = pb.on_tick(blotter(o), book, to_ns(HALF_DAY.at("12:50")))
    assert isinstance(ex, PlannedOrder)
    assert ex.purpose is Purpose.FLATTEN
    # and no new entries from then on
    skip = pb.plan_entry(signal(expiry=expiry), book, to_ns(HALF_DAY.at("12:55")))
    assert isinstance(skip, Skip)


def test_flatten_lead_time_is_configurable() -> None:
    pb = playbook(exits=ExitRules(flatten_before_close_min=5))
    assert pb.flatten_ns == to_ns(SESSION.at("15:55"))


def test_an_exit_without_quotes_waits_for_them(caplog: pytest.LogCaptureFixture) -> None:
    pb = playbook(exits=ExitRules())
    _, o = opened(pb)
    flat = to_ns(SESSION.at("15:50"))
    no_quote = market(q(590.0, 1.90, 2.00))
    assert pb.on_tick(blotter(o), no_quote, flat) == []
    assert pb.on_tick(blotter(o), no_quote, flat + S // 2) == []
    assert sum("cannot price" in r.getMessage() for r in caplog.records) == 1
    (ex,) = pb.on_tick(blotter(o), market(), flat + S)
    assert isinstance(ex, PlannedOrder)
