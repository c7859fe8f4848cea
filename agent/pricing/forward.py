"""The forward and the discount factor implied by the chain itself (put-call parity across strikes).

For European options ``C - P = D (F - K)``: across strikes the call-minus-put mids lie on a line of
slope ``-D`` and intercept ``D F``. Real quotes are noisy (spreads of one to several ticks, stale
ticks, the odd garbage quote), so the fit

* uses only strikes where both the call and the put have a two-sided, uncrossed quote, at the mids;
* weights each strike by the tightness of its quotes (``1 / e^2`` with ``e`` the mean half-spread of
  the pair, floored at half a cent), so near-the-money strikes count most;
* starts from a weighted median (robust to any minority of bad strikes) and refines with iteratively
  reweighted least squares under Tukey's biweight, on residuals measured in half-spreads, so a quote
  that sits many spreads off the line gets weight zero and is reported as not used.

The discount factor is poorly determined by a 0DTE chain (``1 - D`` is of order 1e-5, the slope's
noise is larger), so it is taken from the chain only when the fitted slope is within
``discount_tolerance`` of the fallback discount; otherwise the fit keeps the fallback discount and
estimates the forward alone (``method = "parity_fixed_discount"``). With fewer than ``min_strikes``
usable strikes the fallback forward and discount (from the rate and dividends: see
:func:`carry_forward`) are returned with ``method = "fallback"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from agent.pricing.black import ArrayLike, FloatArray

ForwardMethod = Literal["parity", "parity_fixed_discount", "fallback"]

MIN_HALF_SPREAD: Final = 0.005
"""Floor of the per-strike noise (dollars): a locked or one-tick market is not infinitely precise."""
TUKEY_C: Final = 4.685
"""Tukey biweight constant (95% efficiency under normal noise), in units of the robust scale."""


@dataclass(frozen=True, slots=True)
class ForwardFit:
    """Result of :func:`implied_forward`.

    ``n_used`` counts strikes with non-zero weight in the final fit; ``used`` marks them (same order
    as the input); ``residual_rms`` is the weighted RMS residual of ``C - P`` in dollars.
    """

    forward: float
    discount: float
    n_used: int
    method: ForwardMethod
    used: npt.NDArray[np.bool_]
    residual_rms: float = math.nan


def carry_forward(
    spot: float, rate: float, tau_years: float, dividend_yield: float = 0.0, pv_dividends: float = 0.0
) -> tuple[float, float]:
    """Fallback ``(forward, discount)`` from spot, a continuous rate and dividends.

    ``F = (S - PV(divs)) e^{(r - q) tau}``, ``D = e^{-r tau}``; ``tau`` in the same years as the rate.
    """
    discount = math.exp(-rate * tau_years)
    forward = (spot - pv_dividends) * math.exp((rate - dividend_yield) * tau_years)
    return forward, discount


def _weighted_median(values: FloatArray, weights: FloatArray) -> float:
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cw = np.cumsum(w)
    i = int(np.searchsorted(cw, 0.5 * cw[-1]))
    return float(v[min(i, v.size - 1)])


def _two_sided(bid: FloatArray, ask: FloatArray) -> npt.NDArray[np.bool_]:
    out: npt.NDArray[np.bool_] = np.isfinite(bid) & np.isfinite(ask) & (bid > 0) & (ask >= bid)
    return out


def implied_forward(
    strikes: ArrayLike,
    call_bid: ArrayLike,
    call_ask: ArrayLike,
    put_bid: ArrayLike,
    put_ask: ArrayLike,
    tau_years: float,
    fallback_forward: float,
    fallback_discount: float,
    *,
    min_strikes: int = 3,
    min_strikes_for_discount: int = 6,
    discount_tolerance: float = 2e-4,
    max_iterations: int = 50,
) -> ForwardFit:
    """Forward and discount from call/put quotes paired by strike (one expiry).

    Missing sides are NaN or non-positive bids (IB's ``-1``). ``tau_years`` is only used to sanity
    check the fallback; the parity fit itself needs no time.
    """
    k = np.asarray(strikes, dtype=np.float64).ravel()
    cb, ca, pb, pa = (np.asarray(a, dtype=np.float64).ravel() for a in (call_bid, call_ask, put_bid, put_ask))
    n = k.size
    if not all(a.size == n for a in (cb, ca, pb, pa)):
        raise ValueError("strikes, call_bid, call_ask, put_bid and put_ask must have the same length")
    if not (math.isfinite(fallback_forward) and fallback_forward > 0):
        raise ValueError(f"fallback_forward must be a positive number, got {fallback_forward!r}")
    if not (math.isfinite(fallback_discount) and 0 < fallback_discount <= 1.5):
        raise ValueError(f"fallback_discount must be in (0, 1.5], got {fallback_discount!r}")
    if not (math.isfinite(tau_years) and tau_years >= 0):
        raise ValueError(f"tau_years must be a non-negative number, got {tau_years!r}")

    with np.errstate(all="ignore"):
        usable = _two_sided(cb, ca) & _two_sided(pb, pa) & np.isfinite(k) & (k > 0)
    idx = np.flatnonzero(usable)
    none_used = np.zeros(n, dtype=bool)
    if idx.size < min_strikes:
        return ForwardFit(fallback_forward, fallback_discount, 0, "fallback", none_used)

    ku = k[idx]
    y = 0.5 * (ca[idx] + cb[idx]) - 0.5 * (pa[idx] + pb[idx])
    noise = np.maximum(0.25 * ((ca[idx] - cb[idx]) + (pa[idx] - pb[idx])), MIN_HALF_SPREAD)
    base_w = 1.0 / (noise * noise)

    # Robust start: every strike implies a forward at the fallback discount; take the weighted median.
    # Then Tukey-reweighted least squares for the forward at that discount (stable: one parameter).
    d = fallback_discount
    f = _weighted_median(ku + y / d, 1.0 / noise)
    w = _robust_weights(ku, y, noise, base_w, f, d, max_iterations)
    if np.count_nonzero(w) < min_strikes:
        return ForwardFit(fallback_forward, fallback_discount, 0, "fallback", none_used)
    f = _forward_at(ku, y, w, d)
    for _ in range(max_iterations):
        w = _robust_weights(ku, y, noise, base_w, f, d, 1)
        f_new = _forward_at(ku, y, w, d)
        if abs(f_new - f) <= 1e-12 * f:
            f = f_new
            break
        f = f_new

    # Then the discount: a two-parameter fit on the strikes the robust fit kept, accepted only if the
    # slope is plausible (close to the rate-implied discount).
    method: ForwardMethod = "parity_fixed_discount"
    if np.count_nonzero(w) >= min_strikes_for_discount:
        both = _forward_and_discount(ku, y, w)
        if both is not None and abs(both[1] - fallback_discount) <= discount_tolerance:
            f, d = both
            method = "parity"
    used = none_used.copy()
    used[idx] = w > 0
    resid = y - d * (f - ku)
    rms = float(np.sqrt(np.sum(w * resid * resid) / np.sum(w)))
    return ForwardFit(float(f), float(d), int(np.count_nonzero(w)), method, used, rms)


def _robust_weights(
    k: FloatArray, y: FloatArray, noise: FloatArray, base_w: FloatArray, f: float, d: float, rounds: int
) -> FloatArray:
    """Tukey biweight on residuals in half-spreads (scale: MAD, at least one half-spread)."""
    w = base_w
    for _ in range(rounds):
        resid = (y - d * (f - k)) / noise
        scale = max(1.4826 * float(np.median(np.abs(resid))), 1.0)
        u = resid / (TUKEY_C * scale)
        w = base_w * np.where(np.abs(u) < 1.0, (1.0 - u * u) ** 2, 0.0)
        if rounds > 1:
            f = _forward_at(k, y, w, d) if np.any(w > 0) else f
    return w


def _forward_at(k: FloatArray, y: FloatArray, w: FloatArray, d: float) -> float:
    """Weighted least squares of ``y = D (F - k)`` for F at a fixed D."""
    return float(np.sum(w * (k + y / d)) / np.sum(w))


def _forward_and_discount(k: FloatArray, y: FloatArray, w: FloatArray) -> tuple[float, float] | None:
    """Weighted least squares of ``y = D (F - k)`` for both; None when degenerate."""
    sw = float(np.sum(w))
    k_bar = float(np.sum(w * k)) / sw
    y_bar = float(np.sum(w * y)) / sw
    dk = k - k_bar
    sxx = float(np.sum(w * dk * dk))
    if not sxx > 0:
        return None
    d = -float(np.sum(w * dk * (y - y_bar))) / sxx
    if not d > 0:
        return None
    return (y_bar + d * k_bar) / d, d
