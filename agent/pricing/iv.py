"""Implied volatility of whole chains at once (Black-76 on the forward), with a reason per option.

``implied_vol`` inverts :func:`agent.pricing.black.black76_price` element by element. Each option is
mapped to its out-of-the-money equivalent (in-the-money through put-call parity on the forward,
``C - P = D (F - K)``), normalised, and solved with the vectorized "Let's Be Rational" method of
:mod:`agent.pricing._lbr`. Accuracy (tests/agent/pricing/test_iv.py, against QuantLib's
``blackFormulaImpliedStdDev`` at 1e-12): within 3e-10 in volatility, and within 2e-10 of the
volatility that generated the price, wherever the extrinsic value is at least $0.0001, for 1 to 390
trading minutes, 1% to 400% volatility and strikes out to +-9 standard deviations. What remains is
the conditioning of the input price (deep in-the-money prices carry ~1e-14 absolute round-off).

Where no volatility exists the answer is NaN with a reason, never a silent zero:
``BAD_INPUT`` (NaN/inf, non-positive forward, strike, discount or ``tau``, negative price),
``BELOW_INTRINSIC``, ``NO_EXTRINSIC`` (price equals the discounted forward intrinsic value),
``ABOVE_MAXIMUM`` (a call at or above ``D F``, a put at or above ``D K``), ``NO_VEGA`` (the extrinsic
value is so small, or so close to the maximum, that the price carries no volatility information in
double precision) and ``NOT_CONVERGED`` (should not happen; kept so that a failure is visible).

``tau`` is in trading years (``agent.session``); ``tau <= 0`` is ``BAD_INPUT`` and a positive ``tau``
below one second is floored at one second like everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr

from agent.pricing import _kernels
from agent.pricing._lbr import normalised_vega, refine_normalised, solve_normalised
from agent.pricing.black import MIN_TAU_YEARS, ONE_OVER_SQRT_TWO_PI, ArrayLike, FloatArray, Greeks
from agent.session import TRADING_MINUTES_PER_YEAR

IntArray = npt.NDArray[np.int8]

# Below this normalised OTM price (price / sqrt(F K)) the price has no usable vega (1e-280: far below
# anything quoted; the solver itself works down to the underflow limit).
_MIN_NORMALISED_PRICE = 1e-280
# Normalised vega at the solution below which the volatility is numerically undetermined.
_MIN_NORMALISED_VEGA = 1e-280


class IVReason(IntEnum):
    """Why an implied volatility is (or is not) available; stored as int8 per option."""

    OK = 0
    BAD_INPUT = 1
    BELOW_INTRINSIC = 2
    NO_EXTRINSIC = 3
    ABOVE_MAXIMUM = 4
    NO_VEGA = 5
    NOT_CONVERGED = 6


_OK, _BAD_INPUT, _BELOW_INTRINSIC, _NO_EXTRINSIC, _ABOVE_MAXIMUM, _NO_VEGA, _NOT_CONVERGED = (
    int(r) for r in IVReason
)


@dataclass(frozen=True, slots=True)
class ImpliedVol:
    """Implied volatilities (per trading year) and the reason code of each; NaN where not OK."""

    vol: FloatArray
    reason: IntArray

    @property
    def ok(self) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = self.reason == IVReason.OK
        return out


@dataclass(frozen=True, slots=True)
class ChainAnalytics:
    """Implied volatility and the greeks at it (``agent.pricing.black`` units); NaN where not OK."""

    vol: FloatArray
    reason: IntArray
    greeks: Greeks


@dataclass(frozen=True, slots=True)
class _Solved:
    shape: tuple[int, ...]
    vol: FloatArray
    reason: IntArray
    ok: npt.NDArray[np.bool_]
    price: FloatArray
    forward: FloatArray
    strike: FloatArray
    tau: FloatArray
    x: FloatArray
    s: FloatArray
    is_call: npt.NDArray[np.bool_]
    discount: FloatArray


def implied_vol(
    price: ArrayLike,
    forward: ArrayLike,
    strike: ArrayLike,
    tau: ArrayLike,
    is_call: ArrayLike,
    discount: ArrayLike = 1.0,
    *,
    guess: ArrayLike | None = None,
    compiled: bool = True,
) -> ImpliedVol:
    """Black-76 implied volatility of discounted option prices; broadcasts over all arguments.

    ``guess`` (volatilities, NaN where unknown) starts the solve near the answer, e.g. the previous
    update's vols of the same contracts: two Householder steps then replace the full method where
    they converge (same accuracy: the answer is the root, only the starting point differs).

    Runs the compiled kernels (:mod:`agent.pricing._kernels`) when numba is usable, the numpy
    reference otherwise (``compiled=False`` forces it); both give the same answers."""
    if compiled and _kernels.pricing_kernels_ready():
        out = _compiled(price, forward, strike, tau, is_call, discount, guess, with_greeks=False)
        return ImpliedVol(vol=out.vol, reason=out.reason)
    r = _solve(price, forward, strike, tau, is_call, discount, guess)
    return ImpliedVol(vol=r.vol.reshape(r.shape), reason=r.reason.reshape(r.shape))


def implied_vol_and_greeks(
    price: ArrayLike,
    forward: ArrayLike,
    strike: ArrayLike,
    tau: ArrayLike,
    is_call: ArrayLike,
    discount: ArrayLike = 1.0,
    *,
    guess: ArrayLike | None = None,
    compiled: bool = True,
) -> ChainAnalytics:
    """Implied volatility plus price, delta, gamma, vega and theta at it, in one pass (``guess``
    and ``compiled``: see :func:`implied_vol`)."""
    if compiled and _kernels.pricing_kernels_ready():
        return _compiled(price, forward, strike, tau, is_call, discount, guess, with_greeks=True)
    r = _solve(price, forward, strike, tau, is_call, discount, guess)
    f, v, df, t = r.forward, r.s, r.discount, r.tau
    with np.errstate(all="ignore"):
        # The price at the implied volatility is the input price (to ~1e-13 relative): reuse it.
        value = np.where(r.ok, r.price, np.nan)
        d1 = r.x / v + 0.5 * v
        nd1 = ndtr(d1)
        df_f_pdf = (df * ONE_OVER_SQRT_TWO_PI) * f * np.exp(-0.5 * d1 * d1)
        delta = df * np.where(r.is_call, nd1, nd1 - 1.0)
        gamma = df_f_pdf / (f * f * v)
        vega = df_f_pdf * np.sqrt(t)
        theta = (-np.log(df) * value - 0.5 * df_f_pdf * v) / (t * TRADING_MINUTES_PER_YEAR)
    shape = r.shape
    greeks = Greeks(
        price=value.reshape(shape),
        delta=delta.reshape(shape),
        gamma=gamma.reshape(shape),
        vega=vega.reshape(shape),
        theta=theta.reshape(shape),
    )
    return ChainAnalytics(vol=r.vol.reshape(shape), reason=r.reason.reshape(shape), greeks=greeks)


def _compiled(
    price: ArrayLike,
    forward: ArrayLike,
    strike: ArrayLike,
    tau: ArrayLike,
    is_call: ArrayLike,
    discount: ArrayLike,
    guess: ArrayLike | None,
    *,
    with_greeks: bool,
) -> ChainAnalytics:
    arrays = [
        np.asarray(price, dtype=np.float64),
        np.asarray(forward, dtype=np.float64),
        np.asarray(strike, dtype=np.float64),
        np.asarray(tau, dtype=np.float64),
        np.asarray(is_call, dtype=bool),
        np.asarray(discount, dtype=np.float64),
    ]
    if guess is not None:
        arrays.append(np.asarray(guess, dtype=np.float64))
    b = np.broadcast_arrays(*arrays)
    shape = b[0].shape
    p, f, k, t, c, d = (np.ascontiguousarray(a).ravel() for a in b[:6])
    g = np.ascontiguousarray(b[6]).ravel() if guess is not None else np.zeros(0)
    n = p.size
    vol, reason = np.empty(n), np.empty(n, np.int8)
    m = n if with_greeks else 0
    out = [np.empty(m) for _ in range(5)]
    _kernels.iv_greeks_kernel(p, f, k, t, c, d, g, with_greeks, vol, reason, *out)
    greeks = Greeks(*(a.reshape(shape) for a in out)) if with_greeks else Greeks(*out)
    return ChainAnalytics(vol=vol.reshape(shape), reason=reason.reshape(shape), greeks=greeks)


def _solve(
    price: ArrayLike,
    forward: ArrayLike,
    strike: ArrayLike,
    tau: ArrayLike,
    is_call: ArrayLike,
    discount: ArrayLike,
    guess: ArrayLike | None = None,
) -> _Solved:
    p, f, k, t, c, d = np.broadcast_arrays(
        np.asarray(price, dtype=np.float64),
        np.asarray(forward, dtype=np.float64),
        np.asarray(strike, dtype=np.float64),
        np.asarray(tau, dtype=np.float64),
        np.asarray(is_call, dtype=bool),
        np.asarray(discount, dtype=np.float64),
    )
    shape = p.shape
    p, f, k, t, c, d = (a.ravel() for a in (p, f, k, t, c, d))
    n = p.size
    with np.errstate(all="ignore"):
        # NaN/inf anywhere makes the sum non-finite; so does an absurd magnitude (also bad input).
        bad = ~np.isfinite(p + f + k + t + d)
        bad |= np.minimum(np.minimum(f, k), np.minimum(t, d)) <= 0
        bad |= p < 0
        t = np.maximum(t, MIN_TAU_YEARS)
        undiscounted = p / d
        x = np.log(f / k)
        # Extrinsic value on the forward, in dollars: the OTM-equivalent option's undiscounted price.
        extrinsic = undiscounted - np.maximum(np.where(c, f - k, k - f), 0.0)
        x_otm = -np.abs(x)
        beta = extrinsic / np.sqrt(f * k)
        b_max = np.exp(0.5 * x_otm)
        above = beta >= b_max
        tiny = (beta < _MIN_NORMALISED_PRICE) | (b_max - beta <= 4e-16 * b_max)
        todo = ~(bad | above | tiny)  # NaN extrinsic is caught by `bad`
        if todo.all():
            reason = np.zeros(n, dtype=np.int8)
            idx = None
        else:
            reason = np.select(
                [bad, extrinsic < 0, extrinsic == 0, above, tiny],
                [_BAD_INPUT, _BELOW_INTRINSIC, _NO_EXTRINSIC, _ABOVE_MAXIMUM, _NO_VEGA],
                _OK,
            ).astype(np.int8)
            idx = np.flatnonzero(todo)
        s = np.full(n, np.nan)
        converged = np.zeros(n, dtype=bool)
        sel: slice | npt.NDArray[np.intp] = slice(None) if idx is None else idx
        b_sel, x_sel = beta[sel], x_otm[sel]
        if b_sel.size:
            warm = np.zeros(0, np.intp)
            if guess is not None:
                g = np.broadcast_to(np.asarray(guess, dtype=np.float64), shape).ravel()[sel] * np.sqrt(t[sel])
                warm = np.flatnonzero(g > 0)  # NaN guesses are not > 0
            if warm.size:
                s_sel, ok_sel = np.full(b_sel.size, np.nan), np.zeros(b_sel.size, bool)
                s_sel[warm], ok_sel[warm] = refine_normalised(b_sel[warm], x_sel[warm], g[warm])
                cold = np.flatnonzero(~ok_sel)
                if cold.size:
                    s_sel[cold], ok_sel[cold] = solve_normalised(b_sel[cold], x_sel[cold])
            else:
                s_sel, ok_sel = solve_normalised(b_sel, x_sel)
            s[sel], converged[sel] = s_sel, ok_sel
        failed = todo & ~converged
        if failed.any():
            reason[failed] = _NOT_CONVERGED
        flat_vega = converged & (normalised_vega(x_otm, s) < _MIN_NORMALISED_VEGA)
        if flat_vega.any():
            reason[flat_vega] = _NO_VEGA
        ok = reason == _OK
        s = np.where(ok, s, np.nan)
        vol = s / np.sqrt(t)
    return _Solved(shape, vol, reason, ok, p, f, k, t, x, s, c, d)
