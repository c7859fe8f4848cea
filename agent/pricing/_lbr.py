"""Normalised Black implied volatility, vectorized: Jäckel's "Let's Be Rational" in numpy.

The problem solved here is the normalised one: given ``x = ln(F/K) <= 0`` and the normalised price of
the out-of-the-money call ``beta = c / sqrt(F K)`` with ``0 < beta < exp(x/2)``, find the total
volatility ``s = sigma * sqrt(tau) > 0`` with ``b(x, s) = beta``, where

    b(x, s) = exp(x/2) N(x/s + s/2) - exp(-x/2) N(x/s - s/2).

Every option maps to this form (in-the-money through put-call parity, puts through the symmetry
``put(x) = call(-x)``), so there is no cancellation against the intrinsic value.

Method (P. Jäckel, "Let's Be Rational", Wilmott 2015, pp. 40-53; reference code 2013-2014,
Copyright © 2013-2014 Peter Jäckel, freely distributable with this notice): the four-branch
transformed rational-cubic initial guess, then Householder(3) steps on a branch-dependent objective
(``1/ln b`` in the lowest branch, ``b`` in the middle, ``ln(b_max - b)`` at the top). Two steps reach
machine accuracy; elements that have not settled after them continue on their own with a bracket
and bisection fallback, so a difficult element costs time only for itself.

Arrays are processed by branch: elements are sorted once by branch so that every branch works on a
contiguous slice (views, no copies) and the per-call numpy overhead stays small for chain-sized
inputs.
"""

from __future__ import annotations

import sys

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr, ndtri

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Index = slice | npt.NDArray[np.intp]

DBL_EPSILON = sys.float_info.epsilon
DBL_MIN = sys.float_info.min
DBL_MAX = sys.float_info.max
SQRT_DBL_MAX = float(np.sqrt(DBL_MAX))
ONE_OVER_SQRT_TWO_PI = 0.3989422804014326779399460599343818684758586311649
TWO_PI = 6.283185307179586476925286766559005768394338798750
SQRT_PI_OVER_TWO = 1.253314137315500251207882642405522626503493370305
SQRT_THREE = 1.732050807568877293527446341505872366942805253810
SQRT_ONE_OVER_THREE = 0.577350269189625764509148780501957455647601751270
TWO_PI_OVER_SQRT_TWENTY_SEVEN = 1.209199576156145233729385505094770488189377498728
PI_OVER_SIX = 0.523598775598298873077107230546583814032861566563

RC_MIN = -(1.0 - float(np.sqrt(DBL_EPSILON)))
RC_MAX = 2.0 / (DBL_EPSILON * DBL_EPSILON)

# Branches (sorted in this order).
_LOW, _MID_LEFT, _MID_RIGHT, _HIGH_MID_OBJECTIVE, _HIGH = 0, 1, 2, 3, 4
# Steps taken by every element before convergence is checked, then the most for stragglers.
_FIRST_STEPS = 2
_MAX_EXTRA_STEPS = 40
# A step this small (relative) lands within far less than 1e-15 of the root: the method is of fourth
# order, so the error after it is of order (1e-5)^4 relative.
_SETTLED = 1e-5


def normalised_black_otm(x: FloatArray, s: FloatArray, e_plus: FloatArray, e_minus: FloatArray) -> FloatArray:
    """``b(x, s)`` for ``x <= 0`` given ``e_plus = exp(x/2)`` and ``e_minus = exp(-x/2)``."""
    h = x / s
    t = 0.5 * s
    out: FloatArray = e_plus * ndtr(h + t) - e_minus * ndtr(h - t)
    return out


def normalised_vega(x: FloatArray, s: FloatArray) -> FloatArray:
    """``db/ds = phi(x/s + s/2) exp(x/2)``."""
    h = x / s
    t = 0.5 * s
    out: FloatArray = ONE_OVER_SQRT_TWO_PI * np.exp(-0.5 * (h * h + t * t))
    return out


# --- rational cubic interpolation (Delbourgo & Gregory), vectorized -----------------------------


def _rc_param_right(
    x_l: FloatArray | float,
    x_r: FloatArray,
    y_l: FloatArray | float,
    y_r: FloatArray,
    d_l: FloatArray | float,
    d_r: FloatArray,
    second_r: FloatArray | float,
) -> FloatArray:
    h = x_r - x_l
    num = 0.5 * h * second_r + (d_r - d_l)
    den = d_r - (y_r - y_l) / h
    r = np.where(np.abs(den) < DBL_MIN, np.where(num > 0, RC_MAX, RC_MIN), num / den)
    out: FloatArray = np.where(np.abs(num) < DBL_MIN, 0.0, r)
    return out


def _rc_param_left(
    x_l: FloatArray,
    x_r: FloatArray,
    y_l: FloatArray,
    y_r: FloatArray | float,
    d_l: FloatArray,
    d_r: FloatArray | float,
    second_l: FloatArray | float,
) -> FloatArray:
    h = x_r - x_l
    num = 0.5 * h * second_l + (d_r - d_l)
    den = (y_r - y_l) / h - d_l
    r = np.where(np.abs(den) < DBL_MIN, np.where(num > 0, RC_MAX, RC_MIN), num / den)
    out: FloatArray = np.where(np.abs(num) < DBL_MIN, 0.0, r)
    return out


def _rc_min_param(
    d_l: FloatArray | float, d_r: FloatArray | float, s: FloatArray, prefer_shape: bool
) -> FloatArray:
    monotonic = (d_l * s >= 0) & (d_r * s >= 0)
    convex = (d_l <= s) & (s <= d_r)
    concave = (d_l >= s) & (s >= d_r)
    d_r_m_d_l = d_r - d_l
    d_r_m_s = d_r - s
    s_m_d_l = s - d_l
    s_is_zero = np.abs(s) < DBL_MIN
    r1 = np.where(monotonic & ~s_is_zero, (d_r + d_l) / s, -DBL_MAX)
    if prefer_shape:
        r1 = np.where(monotonic & s_is_zero, RC_MAX, r1)
    degenerate = (np.abs(s_m_d_l) < DBL_MIN) | (np.abs(d_r_m_s) < DBL_MIN)
    cvx = convex | concave
    r2 = np.where(
        cvx & ~degenerate,
        np.maximum(np.abs(d_r_m_d_l / d_r_m_s), np.abs(d_r_m_d_l / s_m_d_l)),
        -DBL_MAX,
    )
    if prefer_shape:
        r2 = np.where((cvx & degenerate) | (~cvx & monotonic), RC_MAX, r2)
    r = np.maximum(RC_MIN, np.maximum(r1, r2))
    out: FloatArray = np.where(~monotonic & ~cvx, RC_MIN, r)
    return out


def _rc_interp(
    x: FloatArray,
    x_l: FloatArray | float,
    x_r: FloatArray,
    y_l: FloatArray | float,
    y_r: FloatArray | float,
    d_l: FloatArray | float,
    d_r: FloatArray | float,
    r: FloatArray,
) -> FloatArray:
    h = x_r - x_l
    t = (x - x_l) / h
    omt = 1.0 - t
    t2 = t * t
    omt2 = omt * omt
    cubic = (
        y_r * t2 * t + (r * y_r - h * d_r) * t2 * omt + (r * y_l + h * d_l) * t * omt2 + y_l * omt2 * omt
    ) / (1.0 + (r - 3.0) * t * omt)
    linear = y_r * t + y_l * omt
    out: FloatArray = np.where(r >= RC_MAX, linear, cubic)
    return out


# --- the four initial guesses ---------------------------------------------------------------------


def _guess_low(beta: FloatArray, x: FloatArray, s_l: FloatArray, b_l: FloatArray) -> FloatArray:
    ax = np.abs(x)
    z = SQRT_ONE_OVER_THREE * ax / s_l
    y = z * z
    s2 = s_l * s_l
    big_phi = ndtr(-z)
    phi = ONE_OVER_SQRT_TWO_PI * np.exp(-0.5 * y)
    fpp = (
        PI_OVER_SIX
        * y
        / (s2 * s_l)
        * big_phi
        * (8.0 * SQRT_THREE * s_l * ax + (3.0 * s2 * (s2 - 8.0) - 8.0 * x * x) * big_phi / phi)
        * np.exp(2.0 * y + 0.25 * s2)
    )
    phi2 = big_phi * big_phi
    fp = TWO_PI * y * phi2 * np.exp(y + 0.125 * s2)
    f_l = TWO_PI_OVER_SQRT_TWENTY_SEVEN * ax * (phi2 * big_phi)
    r = np.maximum(
        _rc_param_right(0.0, b_l, 0.0, f_l, 1.0, fp, fpp),
        _rc_min_param(1.0, fp, f_l / b_l, True),
    )
    f = _rc_interp(beta, 0.0, b_l, 0.0, f_l, 1.0, fp, r)
    t = beta / b_l
    f = np.where(f > 0, f, (f_l * t + b_l * (1.0 - t)) * t)
    out: FloatArray = np.abs(x / (SQRT_THREE * ndtri(np.cbrt(f / (TWO_PI_OVER_SQRT_TWENTY_SEVEN * ax)))))
    return out


def _guess_high(
    beta: FloatArray, x: FloatArray, s_h: FloatArray, b_h: FloatArray, b_max: FloatArray
) -> FloatArray:
    f_h = ndtr(-0.5 * s_h)
    w = (x / s_h) ** 2
    fp = -0.5 * np.exp(0.5 * w)
    fpp = SQRT_PI_OVER_TWO * np.exp(w + 0.125 * s_h * s_h) * w / s_h
    r = np.maximum(
        _rc_param_left(b_h, b_max, f_h, 0.0, fp, -0.5, fpp),
        _rc_min_param(fp, -0.5, -f_h / (b_max - b_h), True),
    )
    f = np.where(
        (fpp > -SQRT_DBL_MAX) & (fpp < SQRT_DBL_MAX),
        _rc_interp(beta, b_h, b_max, f_h, 0.0, fp, -0.5, r),
        -1.0,
    )
    h = b_max - b_h
    t = (beta - b_h) / h
    f = np.where(f > 0, f, (f_h * (1.0 - t) + 0.5 * h * t) * (1.0 - t))
    out: FloatArray = -2.0 * ndtri(f)
    return out


def _guess_middle(
    beta: FloatArray,
    x: FloatArray,
    b_0: FloatArray,
    b_1: FloatArray,
    s_0: FloatArray,
    s_1: FloatArray,
    fit_left: BoolArray,
) -> FloatArray:
    """Rational cubic through (b_0, s_0), (b_1, s_1) with slopes 1/vega and zero curvature at s_c.

    The curvature is fitted at the right end (``s_c``) of the middle-left branch and at the left end
    (``s_c`` again) of the middle-right branch (``fit_left``).
    """
    d_0 = 1.0 / normalised_vega(x, s_0)
    d_1 = 1.0 / normalised_vega(x, s_1)
    h = b_1 - b_0
    slope = (s_1 - s_0) / h
    num = d_1 - d_0
    den = np.where(fit_left, slope - d_0, d_1 - slope)
    r = np.where(np.abs(den) < DBL_MIN, np.where(num > 0, RC_MAX, RC_MIN), num / den)
    r = np.where(np.abs(num) < DBL_MIN, 0.0, r)
    r = np.maximum(r, _rc_min_param(d_0, d_1, slope, False))
    return _rc_interp(beta, b_0, b_1, s_0, s_1, d_0, d_1, r)


# --- Householder steps -----------------------------------------------------------------------------


def _householder(newton: FloatArray, halley: FloatArray, hh3: FloatArray) -> FloatArray:
    out: FloatArray = newton * (1.0 + 0.5 * halley * newton) / (1.0 + newton * (halley + hh3 * newton / 6.0))
    return out


def _step(
    x: FloatArray,
    beta: FloatArray,
    ln_beta: FloatArray,
    e_plus: FloatArray,
    e_minus: FloatArray,
    s: FloatArray,
    s_left: FloatArray,
    s_right: FloatArray,
    n_low: int,
    n_high: int,
    tighten: bool = True,
) -> FloatArray:
    """The next iterate after one Householder(3) step; tightens the bracket in place.

    The elements are laid out by objective: the first ``n_low`` use ``1/ln b``, the last ``n_high``
    use ``ln(b_max - b)``, the others ``b`` itself. A step that fails (under/overflow) or leaves the
    bracket is replaced by bisection.
    """
    n = s.size
    h = x / s
    t = 0.5 * s
    b = e_plus * ndtr(h + t) - e_minus * ndtr(h - t)
    bp = ONE_OVER_SQRT_TWO_PI * np.exp(-0.5 * (h * h + t * t))
    if tighten:
        np.copyto(s_right, np.minimum(s_right, s), where=b > beta)
        np.copyto(s_left, np.maximum(s_left, s), where=b < beta)
    b_halley = h * h / s - 0.25 * s
    h_s = h / s
    b_hh3 = b_halley * b_halley - 3.0 * h_s * h_s - 0.25
    ds = np.empty(n)
    mid = slice(n_low, n - n_high)
    if n_low == 0 and n_high == 0:
        ds[:] = _householder((beta - b) / bp, b_halley, b_hh3)
    elif mid.stop > mid.start:
        ds[mid] = _householder((beta[mid] - b[mid]) / bp[mid], b_halley[mid], b_hh3[mid])
    if n_low:
        lo = slice(0, n_low)
        bl, bph, bhh3 = b[lo], b_halley[lo], b_hh3[lo]
        ln_b = np.log(bl)
        bpob = bp[lo] / bl
        inv_ln_b = 1.0 / ln_b
        otl = 1.0 + 2.0 * inv_ln_b
        lnbt = ln_beta[lo]
        newton = (lnbt - ln_b) * ln_b / lnbt / bpob
        halley = bph - bpob * otl
        hh3 = bhh3 + 2.0 * bpob * bpob * (1.0 + 3.0 * inv_ln_b * (1.0 + inv_ln_b)) - 3.0 * bph * bpob * otl
        ds[lo] = _householder(newton, halley, hh3)
    if n_high:
        hi = slice(n - n_high, n)
        b_max = e_plus[hi]
        bmb = b_max - b[hi]
        g = np.log((b_max - beta[hi]) / bmb)
        gp = bp[hi] / bmb
        bph = b_halley[hi]
        ds[hi] = _householder(-g / gp, bph + gp, b_hh3[hi] + gp * (2.0 * gp + 3.0 * bph))
    new = s + np.maximum(-0.5 * s, ds)
    bad = ~((new >= s_left) & (new <= s_right))  # also catches NaN steps
    if bad.any():
        new = np.where(bad, _bisect(s_left, s_right, s), new)
    out: FloatArray = new
    return out


def _bisect(s_left: FloatArray, s_right: FloatArray, s: FloatArray) -> FloatArray:
    out: FloatArray = np.where(np.isinf(s_right), 2.0 * np.maximum(s_left, s), 0.5 * (s_left + s_right))
    return out


def solve_normalised(beta: FloatArray, x: FloatArray) -> tuple[FloatArray, BoolArray]:
    """Total volatility ``s`` with ``b(x, s) = beta`` for 1-D arrays with ``x <= 0``, ``0 < beta < e^{x/2}``.

    Returns ``(s, converged)``. Inputs outside the domain give NaN and ``converged`` False.
    """
    n = beta.size
    with np.errstate(all="ignore"):
        e_plus = np.exp(0.5 * x)
        e_minus = 1.0 / e_plus
        s_c = np.maximum(np.sqrt(-2.0 * x), DBL_MIN)
        b_c = normalised_black_otm(x, s_c, e_plus, e_minus)
        v_c = normalised_vega(x, s_c)
        # The outer branch point: s_l below s_c (where the tangent at s_c meets zero), s_h above it
        # (where it meets b_max); only the one on beta's side of b_c is ever needed.
        below_c = beta < b_c
        s_2 = np.where(
            below_c,
            np.maximum(s_c - b_c / v_c, DBL_MIN),
            np.where(v_c > DBL_MIN, s_c + (e_plus - b_c) / v_c, s_c),
        )
        b_2 = normalised_black_otm(x, s_2, e_plus, e_minus)

        above_h = ~below_c & (beta > b_2)
        kind = (
            (~below_c | (beta >= b_2)).view(np.int8)
            + (~below_c).view(np.int8)
            + above_h.view(np.int8)
            + (above_h & (beta > 0.5 * e_plus)).view(np.int8)
        )
        counts = np.bincount(kind, minlength=5).tolist()
        order: npt.NDArray[np.intp] | None = None
        if max(counts) < n:
            order = np.argsort(kind, kind="stable")
            beta, x, e_plus, e_minus = beta[order], x[order], e_plus[order], e_minus[order]
            s_c, b_c, s_2, b_2 = s_c[order], b_c[order], s_2[order], b_2[order]
        e = [0]
        for c in counts:
            e.append(e[-1] + c)

        s = np.empty(n)
        s_left = np.full(n, DBL_MIN)
        s_right = np.full(n, np.inf)
        if counts[_LOW]:
            lo = slice(0, e[1])
            s[lo] = _guess_low(beta[lo], x[lo], s_2[lo], b_2[lo])
            s_right[lo] = s_2[lo]
        if counts[_MID_LEFT] + counts[_MID_RIGHT]:
            mid = slice(e[1], e[3])
            right = np.arange(e[3] - e[1]) >= counts[_MID_LEFT]
            s_0 = np.where(right, s_c[mid], s_2[mid])
            s_1 = np.where(right, s_2[mid], s_c[mid])
            b_0 = np.where(right, b_c[mid], b_2[mid])
            b_1 = np.where(right, b_2[mid], b_c[mid])
            s[mid] = _guess_middle(beta[mid], x[mid], b_0, b_1, s_0, s_1, right)
            s_left[mid] = s_0
            s_right[mid] = s_1
        if counts[_HIGH_MID_OBJECTIVE] + counts[_HIGH]:
            high = slice(e[3], n)
            s[high] = _guess_high(beta[high], x[high], s_2[high], b_2[high], e_plus[high])
            s_left[high] = s_2[high]
        # A guess outside its bracket (round-off in extreme corners) starts from the bracket's middle.
        outside = ~((s >= s_left) & (s <= s_right))
        if outside.any():
            s = np.where(outside, _bisect(s_left, s_right, s), s)
        ln_beta = np.log(beta)

        n_low, n_high = counts[_LOW], counts[_HIGH]
        prev = s
        for _ in range(_FIRST_STEPS):
            prev = s
            # The first steps keep the branch's bracket (it already holds the root); stragglers below
            # tighten it with every evaluation.
            s = _step(x, beta, ln_beta, e_plus, e_minus, s, s_left, s_right, n_low, n_high, tighten=False)
        converged = np.abs(s - prev) <= _SETTLED * s
        if not converged.all():
            active = np.flatnonzero(~converged)
            for _ in range(_MAX_EXTRA_STEPS):
                if active.size == 0:
                    break
                sl, sr, sa = s_left[active], s_right[active], s[active]
                new = _step(
                    x[active],
                    beta[active],
                    ln_beta[active],
                    e_plus[active],
                    e_minus[active],
                    sa,
                    sl,
                    sr,
                    int(np.count_nonzero(active < e[1])),
                    int(np.count_nonzero(active >= e[4])),
                )
                s_left[active], s_right[active], s[active] = sl, sr, new
                done = np.abs(new - sa) <= _SETTLED * new
                done |= sr - sl <= 4.0 * DBL_EPSILON * new
                converged[active] = done
                active = active[~done]
        bad = ~np.isfinite(s) | (s <= 0)
        converged &= ~bad
        s = np.where(bad, np.nan, s)
        if order is not None:
            unsorted_s = np.empty(n)
            unsorted_s[order] = s
            unsorted_ok = np.empty(n, dtype=bool)
            unsorted_ok[order] = converged
            return unsorted_s, unsorted_ok
    return s, converged


def refine_normalised(
    beta: FloatArray, x: FloatArray, s: FloatArray, steps: int = 2
) -> tuple[FloatArray, BoolArray]:
    """Householder(3) steps on ``b(x, s) = beta`` from a close guess ``s`` (e.g. the previous update's).

    Same domain as :func:`solve_normalised`. An element is ``converged`` when its last step, and
    the plain Newton step it corrects, were below ``_SETTLED`` relative (the method is of fourth
    order: the error is then far below 1e-15 relative); otherwise (a guess far from the root, where
    the correction terms overflow and the step can vanish without ``b`` being near ``beta``) the
    caller solves it from scratch. ``b`` is monotone in ``s``, so a converged element is *the* root
    whatever the guess was.
    """
    with np.errstate(all="ignore"):
        e_plus = np.exp(0.5 * x)
        e_minus = 1.0 / e_plus
        ds = newton = np.full(s.shape, np.inf)
        for _ in range(steps):
            h = x / s
            t = 0.5 * s
            b = e_plus * ndtr(h + t) - e_minus * ndtr(h - t)
            bp = ONE_OVER_SQRT_TWO_PI * np.exp(-0.5 * (h * h + t * t))
            b_halley = h * h / s - 0.25 * s
            h_s = h / s
            newton = (beta - b) / bp
            ds = _householder(newton, b_halley, b_halley * b_halley - 3.0 * h_s * h_s - 0.25)
            s = s + np.maximum(ds, -0.5 * s)
        small = _SETTLED * s
        converged = np.isfinite(s) & (s > 0) & (np.abs(ds) <= small) & (np.abs(newton) <= small)
    return s, converged
