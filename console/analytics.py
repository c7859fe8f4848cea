"""Implied volatility and delta for display, vectorized (the console may not import the agent's pricing).

Same conventions as the agent: Black-76 on the forward with no discounting (0DTE), ``tau`` in trading
years (trading minutes to the close / (252 * 390)), floored at one second so it is never zero or negative
in a formula. Values that cannot be solved (a price outside the no-arbitrage bounds, NaN input) are NaN.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr

from console.format import NEW_YORK

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
TRADING_MINUTES_PER_YEAR = 252 * 390
MIN_TAU_YEARS = (1.0 / 60.0) / TRADING_MINUTES_PER_YEAR
_ITERATIONS = 40


def tau_years(now_ns: int, close_ns: int) -> float:
    """Trading years from ``now_ns`` to ``close_ns`` (floored at one second)."""
    minutes = (close_ns - now_ns) / 60e9
    return max(minutes / TRADING_MINUTES_PER_YEAR, MIN_TAU_YEARS)


def default_close_ns(expiry: str) -> int:
    """16:00 New York on ``expiry`` (YYYYMMDD); 0 if it is not a date."""
    try:
        day = dt.datetime.strptime(expiry, "%Y%m%d").date()
    except ValueError:
        return 0
    close = dt.datetime.combine(day, dt.time(16, 0), tzinfo=NEW_YORK)
    return int(close.timestamp() * 1e9)


def black76(forward: float, strike: FloatArray, tau: float, sigma: FloatArray, call: BoolArray) -> FloatArray:
    v = sigma * math.sqrt(tau)
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = (np.log(forward / strike) + 0.5 * v * v) / v
    d2 = d1 - v
    calls = forward * ndtr(d1) - strike * ndtr(d2)
    puts = strike * ndtr(-d2) - forward * ndtr(-d1)
    out: FloatArray = np.where(call, calls, puts)
    return out


def implied_vol(
    prices: FloatArray, forward: float, strike: FloatArray, tau: float, call: BoolArray
) -> FloatArray:
    """Black-76 implied vol of each price by bisection in log-vol (NaN where there is none)."""
    prices = np.asarray(prices, dtype=np.float64)
    strike = np.asarray(strike, dtype=np.float64)
    n = prices.shape[0]
    if n == 0 or not (math.isfinite(forward) and forward > 0):
        return np.full(n, np.nan)
    intrinsic = np.where(call, np.maximum(forward - strike, 0.0), np.maximum(strike - forward, 0.0))
    upper = np.where(call, forward, strike)
    ok = np.isfinite(prices) & (prices > intrinsic) & (prices < upper) & (strike > 0)
    # what does not move across iterations, once; calls and puts in one formula, s = +1 / -1:
    # s * (F N(s d1) - K N(s d2)), the same arithmetic as black76 with half its ndtr calls
    sign = np.where(call, 1.0, -1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_fk = np.log(forward / strike)
    sqrt_tau = math.sqrt(tau)
    lo = np.full(n, math.log(1e-3))
    hi = np.full(n, math.log(20.0))
    for _ in range(_ITERATIONS):
        mid = 0.5 * (lo + hi)
        v = np.exp(mid) * sqrt_tau
        with np.errstate(divide="ignore", invalid="ignore"):
            d1 = (log_fk + 0.5 * v * v) / v
        model = sign * (forward * ndtr(sign * d1) - strike * ndtr(sign * (d1 - v)))
        above = model > prices
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
    vol: FloatArray = np.where(ok, np.exp(0.5 * (lo + hi)), np.nan)
    return vol


def delta(forward: float, strike: FloatArray, tau: float, sigma: FloatArray, call: BoolArray) -> FloatArray:
    """Forward delta (NaN where sigma is)."""
    v = sigma * math.sqrt(tau)
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = (np.log(forward / strike) + 0.5 * v * v) / v
    out: FloatArray = np.where(call, ndtr(d1), ndtr(d1) - 1.0)
    return out
