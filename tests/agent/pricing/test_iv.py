"""Implied volatility: accuracy against QuantLib, reason codes, tau floor."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.pricing import MIN_TAU_YEARS, IVReason, black76_price, implied_vol, implied_vol_and_greeks
from agent.session import TRADING_MINUTES_PER_YEAR

ql = pytest.importorskip("QuantLib", reason="QuantLib is the reference for the IV accuracy test")


def _random_chain(n: int, seed: int) -> dict[str, np.ndarray]:
    """Random options: 1..390 trading minutes, 1%..400% vol, deep ITM to deep OTM, calls and puts."""
    rng = np.random.default_rng(seed)
    forward = rng.uniform(300.0, 800.0, n)
    minutes = rng.integers(1, 391, n).astype(float)
    tau = minutes / TRADING_MINUTES_PER_YEAR
    sigma = np.exp(rng.uniform(math.log(0.01), math.log(4.0), n))
    # moneyness in standard deviations of the option's own horizon, out to +-9 sd (deep ITM/OTM)
    sd = sigma * np.sqrt(tau)
    strike = forward * np.exp(rng.uniform(-9.0, 9.0, n) * sd)
    is_call = rng.random(n) < 0.5
    discount = np.exp(-rng.uniform(0.0, 0.08, n) * tau)
    return {
        "forward": forward,
        "strike": strike,
        "tau": tau,
        "sigma": sigma,
        "is_call": is_call,
        "discount": discount,
    }


def test_iv_matches_quantlib_to_1e9_wherever_extrinsic_is_at_least_a_hundredth_of_a_cent() -> None:
    c = _random_chain(6000, seed=20250317)
    prices = np.array(
        [
            ql.blackFormula(ql.Option.Call if cp else ql.Option.Put, k, f, s * math.sqrt(t), d)
            for f, k, t, s, cp, d in zip(
                c["forward"], c["strike"], c["tau"], c["sigma"], c["is_call"], c["discount"], strict=True
            )
        ]
    )
    intrinsic = c["discount"] * np.maximum(
        np.where(c["is_call"], c["forward"] - c["strike"], c["strike"] - c["forward"]), 0
    )
    keep = prices - intrinsic >= 1e-4
    assert keep.sum() > 2000  # the sample really covers the domain
    itm = keep & (np.where(c["is_call"], c["forward"] > c["strike"], c["forward"] < c["strike"]))
    assert itm.sum() > 700
    assert (keep & (c["tau"] * TRADING_MINUTES_PER_YEAR <= 5)).sum() > 20

    ours = implied_vol(
        prices[keep],
        c["forward"][keep],
        c["strike"][keep],
        c["tau"][keep],
        c["is_call"][keep],
        c["discount"][keep],
    )
    assert np.all(ours.reason == IVReason.OK)

    ref = np.array(
        [
            ql.blackFormulaImpliedStdDev(
                ql.Option.Call if cp else ql.Option.Put, k, f, p, d, 0.0, ql.nullDouble(), 1e-12, 200
            )
            / math.sqrt(t)
            for f, k, t, cp, d, p in zip(
                c["forward"][keep],
                c["strike"][keep],
                c["tau"][keep],
                c["is_call"][keep],
                c["discount"][keep],
                prices[keep],
                strict=True,
            )
        ]
    )
    err = np.abs(ours.vol - ref)
    assert err.max() < 1e-9, f"max |vol - QuantLib| = {err.max():.3e}"
    # and against the volatility that generated the price
    assert np.abs(ours.vol - c["sigma"][keep]).max() < 1e-9


def test_round_trip_through_our_own_black_price_on_a_large_sample() -> None:
    c = _random_chain(100_000, seed=7)
    price = black76_price(c["forward"], c["strike"], c["tau"], c["sigma"], c["is_call"], c["discount"])
    intrinsic = c["discount"] * np.maximum(
        np.where(c["is_call"], c["forward"] - c["strike"], c["strike"] - c["forward"]), 0
    )
    keep = price - intrinsic >= 1e-4
    r = implied_vol(
        price[keep],
        c["forward"][keep],
        c["strike"][keep],
        c["tau"][keep],
        c["is_call"][keep],
        c["discount"][keep],
    )
    assert np.all(r.reason == IVReason.OK)
    assert np.abs(r.vol - c["sigma"][keep]).max() < 1e-9


def test_a_guess_changes_the_start_not_the_answer() -> None:
    """Warm start (the detector passes the previous update's vols): close guesses converge in two
    Householder steps to the same root; far, zero, negative or NaN guesses fall back to the full
    method. Either way the vols agree with the cold solve and with the generating vol to 1e-9."""
    c = _random_chain(20_000, seed=11)
    price = black76_price(c["forward"], c["strike"], c["tau"], c["sigma"], c["is_call"], c["discount"])
    intrinsic = c["discount"] * np.maximum(
        np.where(c["is_call"], c["forward"] - c["strike"], c["strike"] - c["forward"]), 0
    )
    keep = price - intrinsic >= 1e-4
    args = (price[keep], c["forward"][keep], c["strike"][keep], c["tau"][keep], c["is_call"][keep])
    args_d = (*args, c["discount"][keep])
    sigma = c["sigma"][keep]
    cold = implied_vol(*args_d)
    rng = np.random.default_rng(3)
    n = sigma.size
    close = sigma * (1.0 + 0.01 * rng.standard_normal(n))
    wild = np.where(
        rng.random(n) < 0.5, sigma * rng.choice([0.01, 30.0], n), rng.choice([0.0, -1.0, np.nan], n)
    )
    for guess in (close, wild):
        warm = implied_vol(*args_d, guess=guess)
        assert np.array_equal(warm.reason, cold.reason)
        assert np.all(warm.reason == IVReason.OK)
        assert np.abs(warm.vol - sigma).max() < 1e-9
        assert np.abs(warm.vol - cold.vol).max() < 1e-9
    g = implied_vol_and_greeks(*args_d, guess=close)
    assert np.allclose(g.greeks.price, price[keep], rtol=1e-12, atol=1e-12)


def test_undefined_inputs_give_nan_and_a_reason_never_zero() -> None:
    f, k, t = 570.0, 560.0, 60 / TRADING_MINUTES_PER_YEAR
    price = np.array([9.0, 10.0, 12.0, 571.0, np.nan, 1.0, 1.0, 1.0, -0.5, 1e-300])
    tau = np.array([t, t, t, t, t, 0.0, -t, t, t, t])
    strike = np.array([k, k, k, k, k, k, k, np.inf, k, 600.0])
    r = implied_vol(price, f, strike, tau, True)
    expected = [
        IVReason.BELOW_INTRINSIC,
        IVReason.NO_EXTRINSIC,
        IVReason.OK,
        IVReason.ABOVE_MAXIMUM,
        IVReason.BAD_INPUT,
        IVReason.BAD_INPUT,
        IVReason.BAD_INPUT,
        IVReason.BAD_INPUT,
        IVReason.BAD_INPUT,
        IVReason.NO_VEGA,
    ]
    assert [IVReason(v) for v in r.reason] == expected
    assert np.isnan(r.vol[r.reason != IVReason.OK]).all()
    assert r.vol[2] > 0
    assert r.ok.tolist() == [e == IVReason.OK for e in expected]


def test_puts_and_zero_or_nan_forward_and_discount() -> None:
    r = implied_vol(
        [1.0, 1.0, 1.0, 1.0], [570.0, 0.0, 570.0, np.nan], 580.0, 0.001, False, [1.0, 1.0, 0.0, 1.0]
    )
    assert [IVReason(v) for v in r.reason] == [
        IVReason.BELOW_INTRINSIC,
        IVReason.BAD_INPUT,
        IVReason.BAD_INPUT,
        IVReason.BAD_INPUT,
    ]


def test_shapes_broadcast() -> None:
    strikes = np.arange(560.0, 581.0).reshape(3, 7)
    price = black76_price(570.0, strikes, 0.001, 0.2, True)
    r = implied_vol(price, 570.0, strikes, 0.001, True)
    assert r.vol.shape == (3, 7)
    assert r.reason.shape == (3, 7)
    np.testing.assert_allclose(r.vol, 0.2, atol=1e-12)


def test_tau_below_one_second_is_floored_not_divided_by() -> None:
    tiny = 1e-12
    p_tiny = black76_price(570.0, 570.0, tiny, 0.2, True)
    p_floor = black76_price(570.0, 570.0, MIN_TAU_YEARS, 0.2, True)
    assert p_tiny == p_floor > 0
    assert np.isfinite(black76_price(570.0, 570.0, 0.0, 0.2, True))
    r = implied_vol(p_floor, 570.0, 570.0, tiny, True)
    assert r.reason == IVReason.OK
    assert abs(float(r.vol) - 0.2) < 1e-12
    assert pytest.approx(1.0 / 60.0 / TRADING_MINUTES_PER_YEAR) == MIN_TAU_YEARS


def test_greeks_at_the_implied_vol_reproduce_the_price() -> None:
    c = _random_chain(2000, seed=3)
    price = black76_price(c["forward"], c["strike"], c["tau"], c["sigma"], c["is_call"], c["discount"])
    a = implied_vol_and_greeks(price, c["forward"], c["strike"], c["tau"], c["is_call"], c["discount"])
    ok = a.reason == IVReason.OK
    assert ok.sum() > 1000
    np.testing.assert_allclose(a.greeks.price[ok], price[ok], rtol=1e-12, atol=1e-12)
    assert np.isnan(a.greeks.delta[~ok]).all()
