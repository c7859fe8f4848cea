"""Black-76 prices and greeks: parity, finite differences, conventions."""

from __future__ import annotations

import numpy as np
import pytest

from agent.pricing import black76_greeks, black76_price
from agent.session import TRADING_MINUTES_PER_YEAR

RNG = np.random.default_rng(11)
N = 500
F = RNG.uniform(500.0, 650.0, N)
K = F * np.exp(RNG.uniform(-0.06, 0.06, N))
TAU = RNG.integers(1, 391, N) / TRADING_MINUTES_PER_YEAR
SIG = RNG.uniform(0.05, 1.5, N)
DF = np.exp(-0.05 * TAU)
CALL = RNG.random(N) < 0.5


def test_put_call_parity_on_the_forward() -> None:
    c = black76_price(F, K, TAU, SIG, True, DF)
    p = black76_price(F, K, TAU, SIG, False, DF)
    np.testing.assert_allclose(c - p, DF * (F - K), rtol=0, atol=1e-10)


def test_known_value() -> None:
    # ATM: D * F * (2 N(v/2) - 1)
    from scipy.special import ndtr

    v = 0.2 * np.sqrt(60 / TRADING_MINUTES_PER_YEAR)
    expected = 0.999 * 570.0 * (2 * ndtr(v / 2) - 1)
    assert float(
        black76_price(570.0, 570.0, 60 / TRADING_MINUTES_PER_YEAR, 0.2, True, 0.999)
    ) == pytest.approx(expected, rel=1e-14)


def test_greeks_match_finite_differences() -> None:
    g = black76_greeks(F, K, TAU, SIG, CALL, DF)
    np.testing.assert_allclose(g.price, black76_price(F, K, TAU, SIG, CALL, DF), rtol=1e-14, atol=1e-14)

    h = 1e-6 * F
    up = black76_price(F + h, K, TAU, SIG, CALL, DF)
    dn = black76_price(F - h, K, TAU, SIG, CALL, DF)
    np.testing.assert_allclose(g.delta, (up - dn) / (2 * h), atol=1e-7)
    h = 1e-4 * F
    up = black76_price(F + h, K, TAU, SIG, CALL, DF)
    dn = black76_price(F - h, K, TAU, SIG, CALL, DF)
    mid = black76_price(F, K, TAU, SIG, CALL, DF)
    fd_gamma = (up - 2 * mid + dn) / (h * h)
    np.testing.assert_allclose(g.gamma, fd_gamma, rtol=1e-3, atol=1e-6)

    dv = 1e-5
    fd_vega = (
        black76_price(F, K, TAU, SIG + dv, CALL, DF) - black76_price(F, K, TAU, SIG - dv, CALL, DF)
    ) / (2 * dv)
    np.testing.assert_allclose(g.vega, fd_vega, rtol=1e-6, atol=1e-8)

    # theta: one trading minute passes; forward and rate fixed, so the discount moves with tau
    rate = -np.log(DF) / TAU
    dt = 1e-3 / TRADING_MINUTES_PER_YEAR  # a thousandth of a minute, in years
    later = black76_price(F, K, TAU - dt, SIG, CALL, np.exp(-rate * (TAU - dt)))
    earlier = black76_price(F, K, TAU + dt, SIG, CALL, np.exp(-rate * (TAU + dt)))
    fd_theta_per_minute = (later - earlier) / (2 * dt) / TRADING_MINUTES_PER_YEAR
    np.testing.assert_allclose(g.theta, fd_theta_per_minute, rtol=1e-5, atol=1e-9)


def test_greek_signs_and_units() -> None:
    g = black76_greeks(570.0, [560.0, 580.0], 60 / TRADING_MINUTES_PER_YEAR, 0.2, [True, False])
    assert 0.5 < g.delta[0] < 1.0
    assert -1.0 < g.delta[1] < -0.5
    assert np.all(g.gamma > 0)
    assert np.all(g.vega > 0)
    assert np.all(g.theta < 0)
    # theta per trading minute: an ATM 0DTE option loses of order cents per minute, not dollars
    atm = black76_greeks(570.0, 570.0, 60 / TRADING_MINUTES_PER_YEAR, 0.2, True)
    assert -0.05 < float(atm.theta) < -0.001
