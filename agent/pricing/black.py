"""Black-76 prices and greeks of European options on the forward, vectorized.

``price = D * (F N(d1) - K N(d2))`` for a call, ``D * (K N(-d2) - F N(-d1))`` for a put, with
``d1 = (ln(F/K) + v^2/2) / v``, ``d2 = d1 - v``, ``v = sigma * sqrt(tau)`` and ``D`` the discount
factor to expiry.

Conventions (the whole ``agent.pricing`` package follows them):

* ``tau`` is in *trading years* (``agent.session``: trading minutes left / (252 * 390)). It is
  floored at ``MIN_TAU_YEARS`` (one second) before it enters a formula, so ``tau <= 0`` never
  produces an inf or a NaN here. Volatilities are per trading year.
* Money is float dollars per share (multiply by the contract multiplier for a contract's value).
* Greeks are taken on the forward with the discount factor held as a rate:
  ``delta = dV/dF`` and ``gamma = d2V/dF2`` (forward delta and gamma; for 0DTE the spot delta is
  ``delta * F / S``, a relative difference of order ``(r - q) * tau``, about 1e-5),
  ``vega = dV/dsigma`` per 1.00 of volatility (divide by 100 for "per vol point"),
  ``theta = dV/dt`` in dollars **per trading minute** (negative for a long option that loses time
  value): the forward and the rate ``r = -ln(D) / tau`` are held fixed while a trading minute passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr

from agent.session import MIN_TAU_MINUTES, TRADING_MINUTES_PER_YEAR

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
ArrayLike = npt.ArrayLike

MIN_TAU_YEARS: float = MIN_TAU_MINUTES / TRADING_MINUTES_PER_YEAR
"""The floor of ``tau`` in every formula: one second of trading time, in trading years."""

ONE_OVER_SQRT_TWO_PI = 0.3989422804014326779399460599343818684758586311649


def floor_tau(tau: ArrayLike) -> FloatArray:
    """``tau`` as float64 with the one-second floor applied (NaN stays NaN)."""
    t = np.asarray(tau, dtype=np.float64)
    out: FloatArray = np.fmax(t, MIN_TAU_YEARS)
    # fmax turns NaN into the floor; keep NaN visible so that bad input stays bad.
    return np.where(np.isnan(t), np.nan, out)


def black76_price(
    forward: ArrayLike,
    strike: ArrayLike,
    tau: ArrayLike,
    sigma: ArrayLike,
    is_call: ArrayLike,
    discount: ArrayLike = 1.0,
) -> FloatArray:
    """Discounted Black-76 price; broadcasts over all arguments; ``tau`` floored at one second.

    ``sigma == 0`` gives the discounted intrinsic value of the forward.
    """
    f = np.asarray(forward, dtype=np.float64)
    k = np.asarray(strike, dtype=np.float64)
    v = np.asarray(sigma, dtype=np.float64) * np.sqrt(floor_tau(tau))
    call = np.asarray(is_call, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = np.log(f / k) / v + 0.5 * v
        d2 = d1 - v
        c = f * ndtr(d1) - k * ndtr(d2)
        p = k * ndtr(-d2) - f * ndtr(-d1)
    out: FloatArray = np.asarray(discount, dtype=np.float64) * np.where(call, c, p)
    return out


@dataclass(frozen=True, slots=True)
class Greeks:
    """Black-76 price and greeks, one array each (see the module docstring for the units)."""

    price: FloatArray
    delta: FloatArray
    gamma: FloatArray
    vega: FloatArray
    theta: FloatArray


def black76_greeks(
    forward: ArrayLike,
    strike: ArrayLike,
    tau: ArrayLike,
    sigma: ArrayLike,
    is_call: ArrayLike,
    discount: ArrayLike = 1.0,
) -> Greeks:
    """Price, forward delta, gamma, vega (per 1.00 vol) and theta (per trading minute)."""
    f, k, t, sig, call, df = np.broadcast_arrays(
        np.asarray(forward, dtype=np.float64),
        np.asarray(strike, dtype=np.float64),
        floor_tau(tau),
        np.asarray(sigma, dtype=np.float64),
        np.asarray(is_call, dtype=bool),
        np.asarray(discount, dtype=np.float64),
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        return greeks_from_total_vol(f, k, t, np.log(f / k), sig * np.sqrt(t), call, df)


def greeks_from_total_vol(
    forward: FloatArray,
    strike: FloatArray,
    tau: FloatArray,
    log_moneyness: FloatArray,
    total_vol: FloatArray,
    is_call: BoolArray,
    discount: FloatArray,
) -> Greeks:
    """Greeks from ``x = ln(F/K)`` and ``v = sigma * sqrt(tau)`` (same-shape arrays, tau floored).

    The building block of :func:`black76_greeks` and of the chain analytics, which already hold
    ``x`` and ``v`` from the implied-volatility solve.
    """
    f, k, v, df = forward, strike, total_vol, discount
    sqrt_tau = np.sqrt(tau)
    d1 = log_moneyness / v + 0.5 * v
    d2 = d1 - v
    nd1 = ndtr(d1)
    nd2 = ndtr(d2)
    pdf1 = ONE_OVER_SQRT_TWO_PI * np.exp(-0.5 * d1 * d1)
    call_price = f * nd1 - k * nd2
    # the put through its own tails (no cancellation for OTM puts)
    put_price = k * ndtr(-d2) - f * ndtr(-d1)
    undiscounted = np.where(is_call, call_price, put_price)
    price = df * undiscounted
    delta = df * np.where(is_call, nd1, nd1 - 1.0)
    df_f_pdf = df * f * pdf1
    gamma = df_f_pdf / (f * f * v)
    vega = df_f_pdf * sqrt_tau
    rate = -np.log(df) / tau
    theta_per_year = rate * price - df_f_pdf * v / (2.0 * tau)
    theta = theta_per_year / TRADING_MINUTES_PER_YEAR
    return Greeks(price=price, delta=delta, gamma=gamma, vega=vega, theta=theta)
