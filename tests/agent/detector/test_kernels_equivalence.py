"""The compiled detector (numba kernels) against the numpy reference: the same signals, smile and
forward on the simulator (with every kind of injected anomaly), on the real IB snapshots, and on
bad input; and the numpy path when the kernels are not available."""

from __future__ import annotations

import datetime as dt
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from agent.detector import Detector, DetectorConfig, Signal, _kernels
from agent.detector.engine import DetectorOutput
from agent.domain import ChainUpdate, OptionQuote, QuoteFlag, Right, UnderlyingTick
from agent.feeds.anomalies import ANOMALY_KINDS
from agent.feeds.ib_csv import load_ib_csv
from agent.feeds.sim import SimConfig, SimulatedMarket
from agent.pricing import _jit
from agent.session import session, to_ns
from tests.agent.detector.simrun import DAY

DATA = Path(__file__).resolve().parents[2] / "data"

pytestmark = pytest.mark.skipif(
    not _kernels.detector_kernels_ready(), reason="numba kernels not available here"
)


def _sig(s: Signal) -> tuple[object, ...]:
    legs = tuple(
        (leg.strike, leg.right, leg.side, leg.quantity, leg.price, leg.displayed_size) for leg in s.legs
    )
    return (s.id, s.kind, s.status, legs, s.max_units, s.explanation)


def _same(a: DetectorOutput, b: DetectorOutput) -> None:
    assert [_sig(s) for s in a.signals_changed] == [_sig(s) for s in b.signals_changed]
    for x, y in zip(a.signals_changed, b.signals_changed, strict=True):
        assert x.edge == pytest.approx(y.edge, rel=1e-9, abs=1e-9)
        assert x.score == pytest.approx(y.score, rel=1e-6, abs=1e-9)
    assert a.forward_method == b.forward_method
    assert a.arbitrage_combinations == b.arbitrage_combinations
    if math.isfinite(a.forward):
        assert b.forward == pytest.approx(a.forward, rel=1e-13)
    assert (a.smile is None) == (b.smile is None)
    if a.smile is not None and b.smile is not None:
        assert a.smile.n_used == b.smile.n_used
        assert a.smile.strikes == b.smile.strikes
        np.testing.assert_allclose(a.smile.ivs, b.smile.ivs, rtol=1e-9)


def _pair() -> tuple[Detector, Detector]:
    return Detector(DetectorConfig(), DAY, compiled=False), Detector(DetectorConfig(), DAY, compiled=True)


@pytest.mark.parametrize("seed", [11, 12])
def test_simulator_with_every_anomaly_kind_gives_the_same_signals(seed: int) -> None:
    market = SimulatedMarket(
        SimConfig(seed=seed, strikes_each_side=60, anomaly_rate_per_min=10.0), DAY, to_ns(DAY.at("10:30"))
    )
    ref, fast = _pair()
    und: UnderlyingTick | None = None
    n_signals = 0
    for e in market.initial():
        if isinstance(e, UnderlyingTick):
            und = e
        elif isinstance(e, ChainUpdate):
            _same(ref.on_chain(e, und, market.now_ns), fast.on_chain(e, und, market.now_ns))
    for step in range(250):
        if step % 15 == 5:
            market.inject(ANOMALY_KINDS[(step // 15) % len(ANOMALY_KINDS)])
        st = market.step()
        ups = [e for e in st.events if isinstance(e, ChainUpdate)]
        for e in st.events:
            if isinstance(e, UnderlyingTick):
                und = e
        if ups:
            a, b = ref.on_chain(ups, und, st.ts_ns), fast.on_chain(ups, und, st.ts_ns)
            _same(a, b)
            n_signals += len(a.signals_changed)
    assert n_signals > 20  # the comparison saw findings, not only quiet chains
    assert [_sig(s) for s in ref.active_signals()] == [_sig(s) for s in fast.active_signals()]


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.csv")))
def test_real_snapshots_give_the_same_signals(name: str) -> None:
    (snap,) = load_ib_csv(DATA / name)
    chain = snap.chains[0]
    day = session(dt.datetime.strptime(chain.expiry, "%Y%m%d").date())
    ref = Detector(DetectorConfig(), day, compiled=False)
    fast = Detector(DetectorConfig(), day, compiled=True)
    for i in range(3):  # first (cold) evaluation, then warm-started ones
        _same(
            ref.on_chain(chain, snap.underlying, snap.ts_ns + i),
            fast.on_chain(chain, snap.underlying, snap.ts_ns + i),
        )


def test_bad_input_gives_the_same_findings() -> None:
    now = to_ns(DAY.at("12:00"))
    quotes = []
    for k in np.arange(580.0, 601.0).tolist():
        for right in (Right.CALL, Right.PUT):
            intrinsic = max(590.0 - k, 0.0) if right is Right.CALL else max(k - 590.0, 0.0)
            bid = round(intrinsic + 0.5 * math.exp(-abs(k - 590.0) / 4), 2)
            quotes.append(OptionQuote(k, right, bid, bid + 0.02, 10, 10, quote_ts_ns=now))
    quotes[3] = OptionQuote(581.0, Right.PUT, math.nan, 0.5, 10, 10, quote_ts_ns=now)
    quotes[7] = OptionQuote(583.0, Right.PUT, 0.9, 0.7, 10, 10, quote_ts_ns=now, flags=QuoteFlag.CROSSED)
    quotes[9] = OptionQuote(584.0, Right.PUT, -1.0, 0.7, 10, -3, quote_ts_ns=now)
    quotes[12] = OptionQuote(586.0, Right.CALL, 0.0, 9.0, 0, 10, quote_ts_ns=now)
    update = ChainUpdate("SPY", DAY.expiry, tuple(quotes), full=True, underlying=590.0)
    ref, fast = _pair()
    tick = UnderlyingTick("SPY", 590.0, 589.99, 590.01)
    a, b = ref.on_chain(update, tick, now), fast.on_chain(update, tick, now)
    _same(a, b)
    assert {"bad_quote", "crossed"} <= {s.kind for s in a.signals_changed}
    tiny = ChainUpdate("SPY", DAY.expiry, tuple(quotes[:4]), full=True, underlying=590.0)
    _same(ref.on_chain(tiny, None, now + 1), fast.on_chain(tiny, None, now + 1))


def test_the_numpy_path_is_used_with_a_warning_when_the_kernels_do_not_compile(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise _jit.NumbaError("no compiler here")

    monkeypatch.setattr(_jit, "_state", {})
    with caplog.at_level(logging.WARNING):
        assert _jit.warm("detector-test", broken) is False
    assert "using the numpy path" in caplog.text
    monkeypatch.setattr(_kernels, "detector_kernels_ready", lambda: False)
    det = Detector(DetectorConfig(), DAY)
    assert det.compiled is False
    with pytest.raises(RuntimeError, match="not available"):
        Detector(DetectorConfig(), DAY, compiled=True)


@pytest.mark.parametrize("seed", range(6))
def test_compiled_butterfly_wings_match_the_rules(seed: int) -> None:
    """The compiled bodies-and-wings search against ``rules.butterfly_wings`` on random, mostly
    convex ask curves with holes (missing asks) and bids pushed above them here and there."""
    from agent.detector import rules

    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 60))
    k = np.sort(rng.choice(np.arange(500.0, 640.0, 0.5), n, replace=False))
    val = np.maximum(575.0 - k, 0.0) + 3.0 * np.exp(-(((k - 575.0) / 8.0) ** 2))
    ask = val + rng.uniform(0.01, 0.2, n)
    ask[rng.random(n) < 0.15] = np.inf
    bid = val - rng.uniform(0.0, 0.2, n)
    bumped = rng.random(n) < 0.2
    bid[bumped] += rng.uniform(0.0, 1.0, int(bumped.sum()))
    bid[rng.random(n) < 0.1] = -np.inf
    for need in (0.0, 0.0131):
        want = rules.butterfly_wings(k, bid, ask, need)
        got = _kernels.butterfly_wings(k, bid, ask, need)
        for w, g in zip(want, got, strict=True):
            np.testing.assert_array_equal(w, g)
