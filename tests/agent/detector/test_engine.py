"""Detector behaviour on hand-made chains: each rule, signal identity and hysteresis, bad input."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest

from agent.detector import ARBITRAGE_KINDS, Detector, DetectorConfig, Signal
from agent.detector.rules import cheapest_wings
from agent.domain import ChainUpdate, OptionQuote, QuoteFlag, Right, UnderlyingTick, classify_quote
from agent.pricing import black76_price
from agent.session import session, to_ns

DAY = session(dt.date(2026, 3, 17))
NOW = to_ns(DAY.at("12:00"))
S = 590.0


def fair_chain(
    strikes: np.ndarray, spot: float = S, now: int = NOW
) -> dict[tuple[float, Right], OptionQuote]:
    """Clean quotes around a smooth smile: bid/ask one or two cents around the model value."""
    tau = DAY.tau(now)
    x = np.log(strikes / spot)
    vol = 0.20 - 1.5 * x + 40 * x * x
    out: dict[tuple[float, Right], OptionQuote] = {}
    for is_call, right in ((True, Right.CALL), (False, Right.PUT)):
        theo = black76_price(spot, strikes, tau, vol, is_call)
        for k, v in zip(strikes.tolist(), theo.tolist(), strict=True):
            bid = max(math.floor((v - 0.015) * 100) / 100, 0.0)
            ask = max(math.ceil((v + 0.015) * 100) / 100, 0.01)
            out[(k, right)] = quote(k, right, bid, ask, now)
    return out


def quote(
    k: float, right: Right, bid: float, ask: float, ts: int = NOW, bs: int = 20, asz: int = 20
) -> OptionQuote:
    bs = bs if bid > 0 else 0
    return OptionQuote(k, right, bid, ask, bs, asz, quote_ts_ns=ts, flags=classify_quote(bid, ask, bs, asz))


def update(quotes: dict[tuple[float, Right], OptionQuote], full: bool = True, spot: float = S) -> ChainUpdate:
    return ChainUpdate("SPY", DAY.expiry, tuple(quotes.values()), full=full, underlying=spot)


def und(spot: float = S) -> UnderlyingTick:
    return UnderlyingTick("SPY", spot, spot - 0.005, spot + 0.005)


STRIKES = np.arange(575.0, 606.0)


def run_one(
    quotes: dict[tuple[float, Right], OptionQuote], cfg: DetectorConfig | None = None
) -> list[Signal]:
    det = Detector(cfg or DetectorConfig(), DAY)
    return det.on_chain(update(quotes), und(), NOW).signals_changed


def kinds(signals: list[Signal]) -> set[str]:
    return {s.kind for s in signals}


def test_clean_chain_is_quiet() -> None:
    out = run_one(fair_chain(STRIKES))
    assert [s for s in out if s.kind in (*ARBITRAGE_KINDS, "crossed", "smile_outlier")] == []


def test_vertical_monotonicity_across_non_neighbouring_strikes() -> None:
    q = fair_chain(STRIKES)
    c596 = q[(596.0, Right.CALL)]
    # the 600 call bid above the 596 call ask: a vertical four strikes wide
    q[(600.0, Right.CALL)] = quote(600.0, Right.CALL, c596.ask + 0.10, c596.ask + 0.12)
    out = run_one(q)
    vert = [s for s in out if s.kind == "vertical"]
    assert len(vert) == 1
    legs = {(leg.strike, leg.side) for leg in vert[0].legs}
    assert (600.0, "SELL") in legs
    buy = next(leg for leg in vert[0].legs if leg.side == "BUY")
    assert buy.strike < 600.0
    assert buy.price <= c596.ask
    assert vert[0].edge == pytest.approx((c596.ask + 0.10 - buy.price) * 100 - 1.30, abs=0.01)
    assert vert[0].id == "vertical:20260317:600C"
    assert vert[0].status == "new"


def test_butterfly_convexity_and_cheapest_wings() -> None:
    k = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    ask = np.array([4.0, 3.1, 2.0, 1.2, 0.5])
    left, right, val = cheapest_wings(k, ask)
    # body 3: the cheapest chord of the others at K=3 is (1, 4): 2.1333, not the neighbours (2, 4): 2.15
    assert (left[2], right[2]) == (0, 3)
    assert val[2] == pytest.approx(4.0 - 2.8 * 2 / 3)
    q = fair_chain(STRIKES)
    lo, mid, hi = q[(589.0, Right.PUT)], q[(590.0, Right.PUT)], q[(591.0, Right.PUT)]
    # raise the 590 call and put alike (parity intact): the body bids above the wings' asks
    d = round((lo.ask + hi.ask) / 2 + 0.05 - mid.bid, 2)
    for side in (Right.CALL, Right.PUT):
        old = q[(590.0, side)]
        q[(590.0, side)] = quote(590.0, side, round(old.bid + d, 2), round(old.ask + d, 2))
    out = run_one(q)
    fly = {s.id: s for s in out if s.kind == "butterfly"}
    assert "butterfly:20260317:590P" in fly
    assert {leg.quantity for leg in fly["butterfly:20260317:590P"].legs if leg.side == "SELL"} == {2}
    assert not [s for s in out if s.kind in ("parity", "box", "vertical")]


def test_parity_needs_the_underlying_and_the_forward_to_agree() -> None:
    q = fair_chain(STRIKES)
    c, p = q[(590.0, Right.CALL)], q[(590.0, Right.PUT)]
    q[(590.0, Right.CALL)] = quote(590.0, Right.CALL, c.bid + 0.15, c.ask + 0.15)
    q[(590.0, Right.PUT)] = quote(590.0, Right.PUT, p.bid - 0.15, p.ask - 0.15)
    out = run_one(q)
    assert "parity:20260317:590" in {s.id for s in out}
    # a lagging underlying 0.50 below the chain: the forward says no, so no parity / exercise signal
    det = Detector(DetectorConfig(), DAY)
    stale_und = det.on_chain(update(fair_chain(STRIKES)), und(S - 0.50), NOW).signals_changed
    assert not [s for s in stale_und if s.kind in ("parity", "intrinsic")]


def test_commission_decides() -> None:
    q = fair_chain(STRIKES)
    c596 = q[(596.0, Right.CALL)]
    q[(597.0, Right.CALL)] = quote(597.0, Right.CALL, c596.ask + 0.01, c596.ask + 0.03)  # $1 < 2 x $0.65
    assert "vertical" not in kinds(run_one(q))
    assert "vertical" in kinds(run_one(q, DetectorConfig(commission_per_contract=0.0)))


def test_same_anomaly_keeps_its_id_then_resolves_with_hysteresis_and_comes_back_as_a_new_generation() -> None:
    det = Detector(DetectorConfig(resolve_after_evals=3, resolve_after_ns=500_000_000), DAY)
    clean = fair_chain(STRIKES)
    bad = dict(clean)
    c596 = clean[(596.0, Right.CALL)]
    bad[(598.0, Right.CALL)] = quote(598.0, Right.CALL, c596.ask + 0.10, c596.ask + 0.12)
    t = NOW
    seen: list[Signal] = []
    for i, book in enumerate([bad, bad, clean, bad, clean, clean, clean, clean, bad]):
        t += 250_000_000
        seen += [s for s in det.on_chain(update(book), und(), t).signals_changed if s.kind == "vertical"]
        del i
    ids = [(s.id, s.status) for s in seen]
    assert ids[0] == ("vertical:20260317:598C", "new")
    assert ids[1] == ("vertical:20260317:598C", "active")
    # flapped back within the window: same id, no new signal; then resolved; then generation 2
    assert ("vertical:20260317:598C", "resolved") in ids
    assert ids[-1] == ("vertical:20260317:598C#2", "new")
    assert len([x for x in ids if x[1] == "new"]) == 2


def test_incremental_updates_match_a_full_rebuild() -> None:
    q = fair_chain(STRIKES)
    det = Detector(DetectorConfig(), DAY)
    det.on_chain(update(q), und(), NOW)
    c596 = q[(596.0, Right.CALL)]
    change = {(599.0, Right.CALL): quote(599.0, Right.CALL, c596.ask + 0.10, c596.ask + 0.12)}
    inc = det.on_chain(update(change, full=False), und(), NOW + 1).signals_changed
    q.update(change)
    full = Detector(DetectorConfig(), DAY).on_chain(update(q), und(), NOW + 1).signals_changed
    assert (
        {s.id for s in inc if s.is_arbitrage}
        == {s.id for s in full if s.is_arbitrage}
        == {"vertical:20260317:599C"}
    )


# ---- bad input ---------------------------------------------------------------------------------


def raw(
    k: float,
    right: Right,
    bid: float,
    ask: float,
    bs: int = 10,
    asz: int = 10,
    flags: QuoteFlag = QuoteFlag.NONE,
) -> OptionQuote:
    return OptionQuote(k, right, bid, ask, bs, asz, quote_ts_ns=NOW, flags=flags)


@pytest.mark.parametrize(
    "bad",
    [
        raw(590.0, Right.CALL, math.nan, 3.0),
        raw(590.0, Right.CALL, 9.0, math.inf),
        raw(590.0, Right.CALL, -4.0, 3.0),
        raw(590.0, Right.CALL, 50.0, 3.0),  # crossed far above everything (unflagged by the feed)
        raw(590.0, Right.CALL, 50.0, 50.0),  # locked
        raw(590.0, Right.CALL, 50.0, 51.0, bs=-5),
        raw(590.0, Right.CALL, 50.0, 51.0, flags=QuoteFlag.HALTED),
        raw(590.0, Right.CALL, 0.0, 0.0, 0, 0),  # missing sides
        raw(590.0, Right.CALL, 50.0, 51.0, 0, 0),  # zero sizes: nothing executable
    ],
)
def test_bad_quote_never_becomes_an_arbitrage_leg(bad: OptionQuote) -> None:
    q = fair_chain(STRIKES)
    q[bad.key] = bad
    out = run_one(q)
    for s in out:
        if s.is_arbitrage:
            assert (590.0, Right.CALL) not in s.contracts, s
    assert not [s for s in out if s.is_arbitrage]


def test_quality_findings_name_the_bad_quote() -> None:
    q = fair_chain(STRIKES)
    q[(590.0, Right.CALL)] = raw(590.0, Right.CALL, math.nan, 3.0)
    q[(591.0, Right.CALL)] = raw(591.0, Right.CALL, 5.0, 4.0)
    out = {s.id: s for s in run_one(q)}
    assert "bad_quote:20260317:590C" in out
    assert "crossed:20260317:591C" in out


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_chain_of_a_handful_of_strikes(n: int) -> None:
    q = fair_chain(np.arange(589.0, 589.0 + n))
    out = run_one(q)
    assert not [s for s in out if s.is_arbitrage]


def test_empty_update_strikes_out_of_order_unknown_underlying_and_after_the_close() -> None:
    det = Detector(DetectorConfig(), DAY)
    assert det.on_chain(ChainUpdate("SPY", DAY.expiry, ()), None, NOW).signals_changed == []
    q = fair_chain(STRIKES)
    shuffled = dict(reversed(list(q.items())))
    out = det.on_chain(update(shuffled, spot=math.nan), None, NOW)
    assert not [s for s in out.signals_changed if s.is_arbitrage]
    late = det.on_chain(update(q), und(), DAY.close_ns + 1)
    assert late.smile is None


def test_an_underlying_jump_ahead_of_the_chain_gives_no_arbitrage() -> None:
    det = Detector(DetectorConfig(), DAY)
    q = fair_chain(STRIKES)
    t = NOW
    for _ in range(3):
        t += 250_000_000
        det.on_chain(update(q), und(), t)
    signals: list[Signal] = []
    for _ in range(8):  # the underlying jumps $3, the chain does not follow for 2 seconds
        t += 250_000_000
        signals += det.on_chain(
            ChainUpdate("SPY", DAY.expiry, (), underlying=S + 3.0), und(S + 3.0), t
        ).signals_changed
    assert not [s for s in signals if s.is_arbitrage]
    assert "stale" in kinds(signals)  # the quotes that should have moved are flagged instead
    det.on_chain(update(fair_chain(STRIKES, spot=S + 3.0), spot=S + 3.0), und(S + 3.0), t + 1)


def test_coalesced_updates_are_one_evaluation() -> None:
    det = Detector(DetectorConfig(), DAY)
    q = fair_chain(STRIKES)
    items = list(q.values())
    parts = [ChainUpdate("SPY", DAY.expiry, tuple(items[i::3]), underlying=S) for i in range(3)]
    out = det.on_chain(parts, und(), NOW, received_ns=0)
    assert out.updates == 3
    assert out.lag_ns >= out.eval_ns > 0
    assert out.smile is not None


# ---- leg skew: quotes of different moments -----------------------------------------------------


def _parity_break(q: dict[tuple[float, Right], OptionQuote], call_ts: int, put_ts: int) -> None:
    """A synthetic 0.15 rich at 590 (as in the parity test), the call and put stamped apart."""
    c, p = q[(590.0, Right.CALL)], q[(590.0, Right.PUT)]
    q[(590.0, Right.CALL)] = quote(590.0, Right.CALL, c.bid + 0.15, c.ask + 0.15, call_ts)
    q[(590.0, Right.PUT)] = quote(590.0, Right.PUT, p.bid - 0.15, p.ask - 0.15, put_ts)


def test_a_snapshot_whose_legs_were_quoted_seconds_apart_is_a_leg_skew_finding_not_an_arbitrage() -> None:
    q = fair_chain(STRIKES)
    _parity_break(q, NOW - 3_000_000_000, NOW)
    out = run_one(q)
    assert not [s for s in out if s.is_arbitrage]
    skew = [s for s in out if s.kind == "leg_skew"]
    assert [s.id for s in skew] == ["leg_skew:20260317:parity:590"]
    assert "3.0s apart" in skew[0].explanation
    assert {leg.key for leg in skew[0].legs} == {(590.0, Right.CALL), (590.0, Right.PUT)}
    # within the limit (or with the check off) the same quotes are the parity arbitrage
    q2 = fair_chain(STRIKES)
    _parity_break(q2, NOW - 500_000_000, NOW)
    assert "parity:20260317:590" in {s.id for s in run_one(q2)}
    assert "parity:20260317:590" in {s.id for s in run_one(q, DetectorConfig(max_leg_skew_ns=0))}


def test_on_a_stream_an_unchanged_quote_still_stands_so_its_old_stamp_is_no_skew() -> None:
    """A live stream sends changes only: a quote it has not changed since is standing now. The
    first (full) update is a snapshot with legs 3 s apart; the next incremental update, even an
    empty one, vouches for every quote it leaves unchanged."""
    det = Detector(DetectorConfig(), DAY)
    q = fair_chain(STRIKES)
    _parity_break(q, NOW - 3_000_000_000, NOW)
    first = det.on_chain(update(q), und(), NOW).signals_changed
    assert "leg_skew:20260317:parity:590" in {s.id for s in first}
    assert not [s for s in first if s.is_arbitrage]
    later = det.on_chain(ChainUpdate("SPY", DAY.expiry, (), underlying=S), und(), NOW + 250_000_000)
    assert "parity:20260317:590" in {s.id for s in later.signals_changed if s.is_arbitrage}


# ---- the book fold ------------------------------------------------------------------------------


def test_folding_incremental_updates_gives_the_book_of_one_full_update() -> None:
    """New strikes, removed strikes, a contract quoted twice in one batch (the later quote wins),
    coalesced batches: the arrays end up as if the final book had come in one full update."""
    q = fair_chain(STRIKES)
    inc = Detector(DetectorConfig(), DAY)
    inc.on_chain(update({k: v for k, v in q.items() if k[0] <= 600.0}), und(), NOW)
    c599 = q[(599.0, Right.CALL)]
    stale_599 = quote(599.0, Right.CALL, c599.bid + 1, c599.ask + 1)
    batch = [
        ChainUpdate("SPY", DAY.expiry, (stale_599,), underlying=S),
        ChainUpdate(
            "SPY",
            DAY.expiry,
            (*(v for k, v in q.items() if k[0] > 600.0), c599, stale_599, c599),
            removed_strikes=(575.0, 576.0),
            underlying=S,
        ),
    ]
    inc.on_chain(batch, und(), NOW + 1)
    final = {k: v for k, v in q.items() if k[0] >= 577.0}
    full = Detector(DetectorConfig(), DAY)
    full.on_chain(update(final), und(), NOW + 1)
    a, b = inc._state, full._state
    assert np.array_equal(a.strikes, b.strikes)
    assert a.strikes[0] == 577.0
    for name in ("present", "bid", "ask", "bid_size", "ask_size", "flags", "ts"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name


def test_a_snapshot_of_the_same_strikes_replaces_the_book_without_a_relayout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full update quoting the strikes already laid out keeps the layout (no history remap) yet
    replaces the book: a contract it leaves out is gone, a changed quote is a change, an unchanged
    one keeps its price-change time; the same book and histories as the general path (rebuild the
    layout, remap every history onto it)."""
    from agent.detector import state as state_module

    q = fair_chain(STRIKES)
    second = dict(q)
    del second[(590.0, Right.PUT)]
    c585 = q[(585.0, Right.CALL)]
    second[(585.0, Right.CALL)] = quote(585.0, Right.CALL, c585.bid + 0.05, c585.ask + 0.05)
    det = Detector(DetectorConfig(), DAY)
    det.on_chain(update(q), und(), NOW)
    strikes_before = det._state.strikes
    det.on_chain(update(second), und(), NOW + 1_000_000)
    st = det._state
    assert st.strikes is strikes_before  # same layout object: no relayout
    assert not st.layout_changed
    i590 = int(np.searchsorted(st.strikes, 590.0))
    i585 = int(np.searchsorted(st.strikes, 585.0))
    assert not st.present[1, i590]
    assert math.isnan(st.bid[1, i590])
    assert st.present[0, i590]
    assert st.price_changed[0, i585]
    assert not st.price_changed[0, i590]
    assert st.history.price_change_ns[0, i585] == NOW + 1_000_000
    assert st.history.price_change_ns[0, i590] == NOW
    ref = Detector(DetectorConfig(), DAY)
    ref.on_chain(update(q), und(), NOW)
    monkeypatch.setattr(state_module, "_same_strikes", lambda quoted, laid_out: False)
    ref.on_chain(update(second), und(), NOW + 1_000_000)
    r = ref._state
    assert r.layout_changed  # the general path
    for name in ("present", "bid", "ask", "bid_size", "ask_size", "flags", "ts", "asof", "price_changed"):
        assert np.array_equal(getattr(st, name), getattr(r, name), equal_nan=True), name
    for name in ("price_change_ns", "ref_und", "moved_since_ns", "iv_prev", "iv_n", "vol_rate"):
        assert np.array_equal(getattr(st.history, name), getattr(r.history, name), equal_nan=True), name
