"""The compiled implied-volatility kernels against the numpy reference (same reasons, same vols and
greeks to round-off), and the numpy path when numba is not usable."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.pricing import _jit, _kernels, black76_price, implied_vol, implied_vol_and_greeks
from agent.pricing import iv as iv_module
from agent.session import TRADING_MINUTES_PER_YEAR

pytestmark = pytest.mark.skipif(
    not _kernels.pricing_kernels_ready(), reason="numba kernels not available here"
)


def _random(n: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    f = rng.uniform(400.0, 700.0, n)
    tau = rng.integers(1, 391, n) / TRADING_MINUTES_PER_YEAR
    sigma = rng.uniform(0.01, 4.0, n)
    k = f * np.exp(rng.uniform(-9.0, 9.0, n) * sigma * np.sqrt(tau))
    call = rng.random(n) < 0.5
    df = np.exp(-0.05 * tau)
    price = black76_price(f, k, tau, sigma, call, df)
    return price, f, k, tau, call, df, sigma


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_compiled_iv_and_greeks_match_the_numpy_reference(seed: int) -> None:
    price, f, k, tau, call, df, sigma = _random(20_000, seed)
    a = implied_vol_and_greeks(price, f, k, tau, call, df)
    b = implied_vol_and_greeks(price, f, k, tau, call, df, compiled=False)
    np.testing.assert_array_equal(a.reason, b.reason)
    np.testing.assert_allclose(a.vol, b.vol, rtol=1e-10, equal_nan=True)
    for name in ("price", "delta", "gamma", "vega"):
        np.testing.assert_allclose(
            getattr(a.greeks, name), getattr(b.greeks, name), rtol=1e-9, atol=1e-14, equal_nan=True
        )
    np.testing.assert_allclose(a.greeks.theta, b.greeks.theta, rtol=1e-7, atol=1e-12, equal_nan=True)
    guess = sigma * (1.0 + 0.01 * np.sin(np.arange(sigma.size)))
    g_a = implied_vol(price, f, k, tau, call, df, guess=guess)
    g_b = implied_vol(price, f, k, tau, call, df, guess=guess, compiled=False)
    np.testing.assert_array_equal(g_a.reason, g_b.reason)
    np.testing.assert_allclose(g_a.vol, g_b.vol, rtol=1e-10, equal_nan=True)


def test_undefined_cases_give_the_same_reasons_and_shapes() -> None:
    price = np.array([[math.nan, -1.0, 0.0, 5.0], [10.0, 1e-300, 2.0, 99.9]])
    f, k = 100.0, np.array([90.0, 100.0, 110.0, 95.0])
    tau = np.array([[0.001], [0.0]])
    a = implied_vol_and_greeks(price, f, k, tau, True, 0.999)
    b = implied_vol_and_greeks(price, f, k, tau, True, 0.999, compiled=False)
    assert a.vol.shape == b.vol.shape == (2, 4)
    np.testing.assert_array_equal(a.reason, b.reason)
    np.testing.assert_allclose(a.vol, b.vol, rtol=1e-12, equal_nan=True)
    s = implied_vol(2.0, 100.0, 100.0, 1e-9, False)
    assert s.vol.shape == ()
    assert s.reason == implied_vol(2.0, 100.0, 100.0, 1e-9, False, compiled=False).reason


def test_numpy_path_when_numba_is_not_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_jit, "_state", {"pricing": False})
    monkeypatch.setattr(iv_module._kernels, "iv_greeks_kernel", None)  # would fail if called
    out = implied_vol(1.0, 100.0, 100.0, 60 / TRADING_MINUTES_PER_YEAR, True)
    assert out.reason == 0
    assert out.vol > 0
