"""Compiled (numba) scalar kernels of :mod:`agent.pricing`: "Let's Be Rational" per element, the
implied volatility of a chain with its greeks, Black-76 price and vega.

Element by element, the same arithmetic as the numpy reference (:mod:`agent.pricing._lbr`,
:mod:`agent.pricing.iv`, :mod:`agent.pricing.black`), in the same order: the same branches, the same
initial guesses, the same Householder(3) steps, the same convergence tests and reason codes. The
only differences are the normal distribution function (``erf``/``erfc`` of the C library here,
scipy's Cephes there) and its inverse (Wichura's AS241 here): both agree to a few units in the last
place, so the volatilities agree to ~1e-15 relative (tests/agent/pricing/test_kernels.py).

Loaded through :func:`agent.pricing._jit.njit`; use only when :func:`pricing_kernels_ready`.
"""

from __future__ import annotations

import math

import numpy as np

from agent.pricing._jit import njit, warm
from agent.pricing.black import MIN_TAU_YEARS, FloatArray
from agent.session import TRADING_MINUTES_PER_YEAR

DBL_EPSILON = 2.220446049250313e-16
DBL_MIN = 2.2250738585072014e-308
DBL_MAX = 1.7976931348623157e308
SQRT_DBL_MAX = 1.3407807929942596e154
ONE_OVER_SQRT_TWO_PI = 0.3989422804014326779399460599343818684758586311649
TWO_PI = 6.283185307179586476925286766559005768394338798750
SQRT_PI_OVER_TWO = 1.253314137315500251207882642405522626503493370305
SQRT_THREE = 1.732050807568877293527446341505872366942805253810
SQRT_ONE_OVER_THREE = 0.577350269189625764509148780501957455647601751270
TWO_PI_OVER_SQRT_TWENTY_SEVEN = 1.209199576156145233729385505094770488189377498728
PI_OVER_SIX = 0.523598775598298873077107230546583814032861566563
SQRT1_2 = 0.70710678118654752440
RC_MIN = -(1.0 - math.sqrt(DBL_EPSILON))
RC_MAX = 2.0 / (DBL_EPSILON * DBL_EPSILON)
SETTLED = 1e-5
MAX_EXTRA_STEPS = 40
MIN_NORMALISED_PRICE = 1e-280
MIN_NORMALISED_VEGA = 1e-280
MIN_TAU = MIN_TAU_YEARS
TMPY = float(TRADING_MINUTES_PER_YEAR)

OK, BAD_INPUT, BELOW_INTRINSIC, NO_EXTRINSIC, ABOVE_MAXIMUM, NO_VEGA, NOT_CONVERGED = 0, 1, 2, 3, 4, 5, 6


@njit
def ndtr(a: float) -> float:
    """Standard normal CDF (the Cephes formulation, on the C library's erf/erfc)."""
    x = a * SQRT1_2
    z = abs(x)
    if z < SQRT1_2:
        return 0.5 + 0.5 * math.erf(x)
    y = 0.5 * math.erfc(z)
    return 1.0 - y if x > 0 else y


@njit
def ndtri(p: float) -> float:
    """Inverse standard normal CDF (Wichura's AS241, relative accuracy ~1e-16)."""
    if not (p > 0.0 and p < 1.0):
        if p == 0.0:
            return -math.inf
        if p == 1.0:
            return math.inf
        return math.nan
    q = p - 0.5
    if abs(q) <= 0.425:
        r = 0.180625 - q * q
        num = (
            ((((((2509.0809287301226727 * r + 33430.575583588128105) * r + 67265.770927008700853) * r
                + 45921.953931549871457) * r + 13731.693765509461125) * r + 1971.5909503065514427) * r
             + 133.14166789178437745) * r + 3.387132872796366608
        )  # fmt: skip
        den = (
            ((((((5226.495278852545925 * r + 28729.085735721942674) * r + 39307.89580009271061) * r
                + 21213.794301586595867) * r + 5394.1960214247511077) * r + 687.1870074920579083) * r
             + 42.313330701600911252) * r + 1.0
        )  # fmt: skip
        return q * num / den
    r = p if q < 0 else 1.0 - p
    r = math.sqrt(-math.log(r))
    if r <= 5.0:
        r -= 1.6
        num = (
            ((((((7.7454501427834140764e-4 * r + 0.0227238449892691845833) * r + 0.24178072517745061177) * r
                + 1.27045825245236838258) * r + 3.64784832476320460504) * r + 5.7694972214606914055) * r
             + 4.6303378461565452959) * r + 1.42343711074968357734
        )  # fmt: skip
        den = (
            ((((((1.05075007164441684324e-9 * r + 5.475938084995344946e-4) * r + 0.0151986665636164571966) * r
                + 0.14810397642748007459) * r + 0.68976733498510000455) * r + 1.6763848301838038494) * r
             + 2.05319162663775882187) * r + 1.0
        )  # fmt: skip
    else:
        r -= 5.0
        num = (
            ((((((2.01033439929228813265e-7 * r + 2.71155556874348757815e-5) * r + 0.0012426609473880784386) * r
                + 0.026532189526576123093) * r + 0.29656057182850489123) * r + 1.7848265399172913358) * r
             + 5.4637849111641143699) * r + 6.6579046435011037772
        )  # fmt: skip
        den = (
            ((((((2.04426310338993978564e-15 * r + 1.4215117583164458887e-7) * r + 1.8463183175100546818e-5) * r
                + 7.868691311456132591e-4) * r + 0.0148753612908506148525) * r + 0.13692988092273580531) * r
             + 0.59983220655588793769) * r + 1.0
        )  # fmt: skip
    val = num / den
    return -val if q < 0 else val


@njit
def _nmax(a: float, b: float) -> float:
    """``np.maximum`` of two scalars (NaN propagates)."""
    if a != a:
        return a
    if b != b:
        return b
    return a if a >= b else b


@njit
def _nmin(a: float, b: float) -> float:
    if a != a:
        return a
    if b != b:
        return b
    return a if a <= b else b


@njit
def normalised_black_otm(x: float, s: float, e_plus: float, e_minus: float) -> float:
    h = x / s
    t = 0.5 * s
    return e_plus * ndtr(h + t) - e_minus * ndtr(h - t)


@njit
def normalised_vega(x: float, s: float) -> float:
    h = x / s
    t = 0.5 * s
    return ONE_OVER_SQRT_TWO_PI * math.exp(-0.5 * (h * h + t * t))


@njit
def _rc_r(num: float, den: float) -> float:
    if abs(num) < DBL_MIN:
        return 0.0
    if abs(den) < DBL_MIN:
        return RC_MAX if num > 0 else RC_MIN
    return num / den


@njit
def _rc_min_param(d_l: float, d_r: float, s: float, prefer_shape: bool) -> float:
    monotonic = (d_l * s >= 0) and (d_r * s >= 0)
    convex = (d_l <= s) and (s <= d_r)
    concave = (d_l >= s) and (s >= d_r)
    d_r_m_d_l = d_r - d_l
    d_r_m_s = d_r - s
    s_m_d_l = s - d_l
    s_is_zero = abs(s) < DBL_MIN
    r1 = (d_r + d_l) / s if (monotonic and not s_is_zero) else -DBL_MAX
    if prefer_shape and monotonic and s_is_zero:
        r1 = RC_MAX
    degenerate = (abs(s_m_d_l) < DBL_MIN) or (abs(d_r_m_s) < DBL_MIN)
    cvx = convex or concave
    r2 = _nmax(abs(d_r_m_d_l / d_r_m_s), abs(d_r_m_d_l / s_m_d_l)) if cvx and not degenerate else -DBL_MAX
    if prefer_shape and ((cvx and degenerate) or (not cvx and monotonic)):
        r2 = RC_MAX
    r = _nmax(RC_MIN, _nmax(r1, r2))
    if not monotonic and not cvx:
        return RC_MIN
    return r


@njit
def _rc_interp(
    x: float, x_l: float, x_r: float, y_l: float, y_r: float, d_l: float, d_r: float, r: float
) -> float:
    h = x_r - x_l
    t = (x - x_l) / h
    omt = 1.0 - t
    if r >= RC_MAX:
        return y_r * t + y_l * omt
    t2 = t * t
    omt2 = omt * omt
    return (
        y_r * t2 * t + (r * y_r - h * d_r) * t2 * omt + (r * y_l + h * d_l) * t * omt2 + y_l * omt2 * omt
    ) / (1.0 + (r - 3.0) * t * omt)


@njit
def _guess_low(beta: float, x: float, s_l: float, b_l: float) -> float:
    ax = abs(x)
    z = SQRT_ONE_OVER_THREE * ax / s_l
    y = z * z
    s2 = s_l * s_l
    big_phi = ndtr(-z)
    phi = ONE_OVER_SQRT_TWO_PI * math.exp(-0.5 * y)
    fpp = (
        PI_OVER_SIX
        * y
        / (s2 * s_l)
        * big_phi
        * (8.0 * SQRT_THREE * s_l * ax + (3.0 * s2 * (s2 - 8.0) - 8.0 * x * x) * big_phi / phi)
        * math.exp(2.0 * y + 0.25 * s2)
    )
    phi2 = big_phi * big_phi
    fp = TWO_PI * y * phi2 * math.exp(y + 0.125 * s2)
    f_l = TWO_PI_OVER_SQRT_TWENTY_SEVEN * ax * (phi2 * big_phi)
    # _rc_param_right(0, b_l, 0, f_l, 1, fp, fpp)
    h = b_l
    r_right = _rc_r(0.5 * h * fpp + (fp - 1.0), fp - f_l / h)
    r = _nmax(r_right, _rc_min_param(1.0, fp, f_l / b_l, True))
    f = _rc_interp(beta, 0.0, b_l, 0.0, f_l, 1.0, fp, r)
    t = beta / b_l
    if not f > 0:
        f = (f_l * t + b_l * (1.0 - t)) * t
    return abs(x / (SQRT_THREE * ndtri(np.cbrt(f / (TWO_PI_OVER_SQRT_TWENTY_SEVEN * ax)))))


@njit
def _guess_high(beta: float, x: float, s_h: float, b_h: float, b_max: float) -> float:
    f_h = ndtr(-0.5 * s_h)
    w = (x / s_h) ** 2
    fp = -0.5 * math.exp(0.5 * w)
    fpp = SQRT_PI_OVER_TWO * math.exp(w + 0.125 * s_h * s_h) * w / s_h
    # _rc_param_left(b_h, b_max, f_h, 0, fp, -0.5, fpp)
    h = b_max - b_h
    r_left = _rc_r(0.5 * h * fpp + (-0.5 - fp), (0.0 - f_h) / h - fp)
    r = _nmax(r_left, _rc_min_param(fp, -0.5, -f_h / (b_max - b_h), True))
    if fpp > -SQRT_DBL_MAX and fpp < SQRT_DBL_MAX:
        f = _rc_interp(beta, b_h, b_max, f_h, 0.0, fp, -0.5, r)
    else:
        f = -1.0
    t = (beta - b_h) / h
    if not f > 0:
        f = (f_h * (1.0 - t) + 0.5 * h * t) * (1.0 - t)
    return -2.0 * ndtri(f)


@njit
def _guess_middle(
    beta: float, x: float, b_0: float, b_1: float, s_0: float, s_1: float, fit_left: bool
) -> float:
    d_0 = 1.0 / normalised_vega(x, s_0)
    d_1 = 1.0 / normalised_vega(x, s_1)
    h = b_1 - b_0
    slope = (s_1 - s_0) / h
    num = d_1 - d_0
    den = slope - d_0 if fit_left else d_1 - slope
    r = _nmax(_rc_r(num, den), _rc_min_param(d_0, d_1, slope, False))
    return _rc_interp(beta, b_0, b_1, s_0, s_1, d_0, d_1, r)


@njit
def _householder(newton: float, halley: float, hh3: float) -> float:
    return newton * (1.0 + 0.5 * halley * newton) / (1.0 + newton * (halley + hh3 * newton / 6.0))


@njit
def _bisect(s_left: float, s_right: float, s: float) -> float:
    if math.isinf(s_right):
        return 2.0 * _nmax(s_left, s)
    return 0.5 * (s_left + s_right)


@njit
def _step(
    x: float,
    beta: float,
    ln_beta: float,
    e_plus: float,
    e_minus: float,
    s: float,
    s_left: float,
    s_right: float,
    objective: int,
    tighten: bool,
) -> tuple[float, float, float]:
    """One Householder(3) step (objective 0: ``1/ln b``, 1: ``b``, 2: ``ln(b_max - b)``);
    returns ``(new s, s_left, s_right)``."""
    h = x / s
    t = 0.5 * s
    b = e_plus * ndtr(h + t) - e_minus * ndtr(h - t)
    bp = ONE_OVER_SQRT_TWO_PI * math.exp(-0.5 * (h * h + t * t))
    if tighten:
        if b > beta:
            s_right = _nmin(s_right, s)
        if b < beta:
            s_left = _nmax(s_left, s)
    b_halley = h * h / s - 0.25 * s
    h_s = h / s
    b_hh3 = b_halley * b_halley - 3.0 * h_s * h_s - 0.25
    if objective == 1:
        ds = _householder((beta - b) / bp, b_halley, b_hh3)
    elif objective == 0:
        ln_b = math.log(b) if b > 0 else (-math.inf if b == 0 else math.nan)
        bpob = bp / b
        inv_ln_b = 1.0 / ln_b
        otl = 1.0 + 2.0 * inv_ln_b
        newton = (ln_beta - ln_b) * ln_b / ln_beta / bpob
        halley = b_halley - bpob * otl
        hh3 = (
            b_hh3
            + 2.0 * bpob * bpob * (1.0 + 3.0 * inv_ln_b * (1.0 + inv_ln_b))
            - 3.0 * b_halley * bpob * otl
        )
        ds = _householder(newton, halley, hh3)
    else:
        b_max = e_plus
        bmb = b_max - b
        q = (b_max - beta) / bmb
        g = math.log(q) if q > 0 else (-math.inf if q == 0 else math.nan)
        gp = bp / bmb
        ds = _householder(-g / gp, b_halley + gp, b_hh3 + gp * (2.0 * gp + 3.0 * b_halley))
    new = s + _nmax(-0.5 * s, ds)
    if not (new >= s_left and new <= s_right):
        new = _bisect(s_left, s_right, s)
    return new, s_left, s_right


@njit
def solve_normalised(beta: float, x: float) -> tuple[float, bool]:
    """Total volatility ``s`` with ``b(x, s) = beta`` (``x <= 0``, ``0 < beta < e^{x/2}``)."""
    e_plus = math.exp(0.5 * x)
    e_minus = 1.0 / e_plus
    s_c = _nmax(math.sqrt(-2.0 * x), DBL_MIN)
    b_c = normalised_black_otm(x, s_c, e_plus, e_minus)
    v_c = normalised_vega(x, s_c)
    below_c = beta < b_c
    if below_c:
        s_2 = _nmax(s_c - b_c / v_c, DBL_MIN)
    elif v_c > DBL_MIN:
        s_2 = s_c + (e_plus - b_c) / v_c
    else:
        s_2 = s_c
    b_2 = normalised_black_otm(x, s_2, e_plus, e_minus)
    above_h = (not below_c) and (beta > b_2)
    kind = (
        int((not below_c) or (beta >= b_2))
        + int(not below_c)
        + int(above_h)
        + int(above_h and beta > 0.5 * e_plus)
    )
    s_left = DBL_MIN
    s_right = math.inf
    if kind == 0:
        s = _guess_low(beta, x, s_2, b_2)
        s_right = s_2
    elif kind <= 2:
        right = kind == 2
        s_0 = s_c if right else s_2
        s_1 = s_2 if right else s_c
        b_0 = b_c if right else b_2
        b_1 = b_2 if right else b_c
        s = _guess_middle(beta, x, b_0, b_1, s_0, s_1, right)
        s_left = s_0
        s_right = s_1
    else:
        s = _guess_high(beta, x, s_2, b_2, e_plus)
        s_left = s_2
    if not (s >= s_left and s <= s_right):
        s = _bisect(s_left, s_right, s)
    ln_beta = math.log(beta) if beta > 0 else (-math.inf if beta == 0 else math.nan)
    objective = 0 if kind == 0 else (2 if kind == 4 else 1)
    prev = s
    for _ in range(2):
        prev = s
        s, s_left, s_right = _step(x, beta, ln_beta, e_plus, e_minus, s, s_left, s_right, objective, False)
    converged = abs(s - prev) <= SETTLED * s
    if not converged:
        for _ in range(MAX_EXTRA_STEPS):
            sa = s
            s, s_left, s_right = _step(x, beta, ln_beta, e_plus, e_minus, s, s_left, s_right, objective, True)
            if abs(s - sa) <= SETTLED * s or s_right - s_left <= 4.0 * DBL_EPSILON * s:
                converged = True
                break
    if not (math.isfinite(s) and s > 0):
        return math.nan, False
    return s, converged


@njit
def refine_normalised(beta: float, x: float, s: float) -> tuple[float, bool]:
    """Two Householder(3) steps from a close guess; ``converged`` as in the numpy reference."""
    e_plus = math.exp(0.5 * x)
    e_minus = 1.0 / e_plus
    ds = math.inf
    newton = math.inf
    for _ in range(2):
        h = x / s
        t = 0.5 * s
        b = e_plus * ndtr(h + t) - e_minus * ndtr(h - t)
        bp = ONE_OVER_SQRT_TWO_PI * math.exp(-0.5 * (h * h + t * t))
        b_halley = h * h / s - 0.25 * s
        h_s = h / s
        newton = (beta - b) / bp
        ds = _householder(newton, b_halley, b_halley * b_halley - 3.0 * h_s * h_s - 0.25)
        s = s + _nmax(ds, -0.5 * s)
    small = SETTLED * s
    return s, bool(math.isfinite(s) and s > 0 and abs(ds) <= small and abs(newton) <= small)


@njit
def iv_one(
    p: float, f: float, k: float, t: float, c: bool, d: float, guess: float
) -> tuple[float, int, float]:
    """``(total vol s, reason, floored tau)`` of one option (``guess``: a volatility or NaN)."""
    bad = not math.isfinite(p + f + k + t + d)
    bad = bad or min(min(f, k), min(t, d)) <= 0 or p < 0
    t = _nmax(t, MIN_TAU)
    undiscounted = p / d
    x = math.log(f / k) if f / k > 0 else (-math.inf if f / k == 0 else math.nan)
    extrinsic = undiscounted - _nmax(f - k if c else k - f, 0.0)
    x_otm = -abs(x)
    beta = extrinsic / math.sqrt(f * k) if f * k >= 0 else math.nan
    b_max = math.exp(0.5 * x_otm)
    above = beta >= b_max
    tiny = (beta < MIN_NORMALISED_PRICE) or (b_max - beta <= 4e-16 * b_max)
    if bad:
        return math.nan, BAD_INPUT, t
    if extrinsic < 0:
        return math.nan, BELOW_INTRINSIC, t
    if extrinsic == 0:
        return math.nan, NO_EXTRINSIC, t
    if above:
        return math.nan, ABOVE_MAXIMUM, t
    if tiny:
        return math.nan, NO_VEGA, t
    ok = False
    s = math.nan
    g = guess * math.sqrt(t)
    if g > 0:
        s, ok = refine_normalised(beta, x_otm, g)
    if not ok:
        s, ok = solve_normalised(beta, x_otm)
    if not ok:
        return math.nan, NOT_CONVERGED, t
    if normalised_vega(x_otm, s) < MIN_NORMALISED_VEGA:
        return math.nan, NO_VEGA, t
    return s, OK, t


@njit
def _log(v: float) -> float:
    if v > 0:
        return math.log(v)
    return -math.inf if v == 0 else math.nan


@njit
def iv_greeks_kernel(
    p: FloatArray,
    f: FloatArray,
    k: FloatArray,
    t: FloatArray,
    c: np.ndarray,
    d: FloatArray,
    guess: FloatArray,
    with_greeks: bool,
    vol: FloatArray,
    reason: np.ndarray,
    price: FloatArray,
    delta: FloatArray,
    gamma: FloatArray,
    vega: FloatArray,
    theta: FloatArray,
) -> None:
    """Implied vols (and greeks at them) of 1-D same-length arrays, into the output arrays.

    ``guess`` has length 0 (no guess) or the same length (NaN where unknown)."""
    n = p.size
    has_guess = guess.size == n
    for i in range(n):
        g = guess[i] if has_guess else math.nan
        s, why, ti = iv_one(p[i], f[i], k[i], t[i], c[i], d[i], g)
        vol[i] = s / math.sqrt(ti)
        reason[i] = why
        if with_greeks:
            fi, di = f[i], d[i]
            value = p[i] if why == OK else math.nan
            x = _log(fi / k[i])
            d1 = x / s + 0.5 * s
            nd1 = ndtr(d1)
            df_f_pdf = (di * ONE_OVER_SQRT_TWO_PI) * fi * math.exp(-0.5 * d1 * d1)
            price[i] = value
            delta[i] = di * (nd1 if c[i] else nd1 - 1.0)
            gamma[i] = df_f_pdf / (fi * fi * s)
            vega[i] = df_f_pdf * math.sqrt(ti)
            theta[i] = (-_log(di) * value - 0.5 * df_f_pdf * s) / (ti * TMPY)


@njit
def black_price_vega(f: float, k: float, t: float, sigma: float, c: bool, df: float) -> tuple[float, float]:
    """Black-76 discounted price and vega (per 1.00 vol) as :func:`agent.pricing.black.greeks_from_total_vol`
    computes them (``t`` already floored)."""
    sqrt_tau = math.sqrt(t)
    v = sigma * sqrt_tau
    d1 = _log(f / k) / v + 0.5 * v
    d2 = d1 - v
    pdf1 = ONE_OVER_SQRT_TWO_PI * math.exp(-0.5 * d1 * d1)
    und = f * ndtr(d1) - k * ndtr(d2) if c else k * ndtr(-d2) - f * ndtr(-d1)
    return df * und, df * f * pdf1 * sqrt_tau


@njit
def black_price(f: float, k: float, t: float, sigma: float, c: bool, df: float) -> float:
    """Black-76 discounted price as :func:`agent.pricing.black.black76_price` computes it."""
    v = sigma * math.sqrt(t)
    d1 = _log(f / k) / v + 0.5 * v
    d2 = d1 - v
    if c:
        return df * (f * ndtr(d1) - k * ndtr(d2))
    return df * (k * ndtr(-d2) - f * ndtr(-d1))


def _warm_up() -> None:
    one = np.ones(1)
    z = np.zeros(1)
    out = [np.empty(1) for _ in range(5)]
    reason = np.empty(1, np.int8)
    call = np.ones(1, np.bool_)
    iv_greeks_kernel(
        one * 0.5, one * 100.0, one * 100.0, one * 0.01, call, one, z[:0], True, out[0], reason, *out
    )
    iv_greeks_kernel(
        one * 0.5, one * 100.0, one * 100.0, one * 0.01, call, one, one * 0.2, True, out[0], reason, *out
    )
    black_price_vega(100.0, 100.0, 0.01, 0.2, True, 1.0)
    black_price(100.0, 100.0, 0.01, 0.2, True, 1.0)


def pricing_kernels_ready() -> bool:
    """True when the compiled kernels are usable (compiled or loaded from the cache once per process)."""
    return warm("pricing", _warm_up)
