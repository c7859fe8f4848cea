"""Compiled (numba) kernels of one detector evaluation (see :mod:`agent.detector.engine`).

Each kernel is one fused pass over the chain doing what a block of numpy array operations of the
engine does, with the same arithmetic in the same order, so the masks, prices and state updates
are the same (the normal CDF and ``exp`` come from the C library instead of scipy/numpy: values
agree to a few units in the last place). Arbitrage, wide-spread and outlier findings are *not*
rebuilt here: the kernels only say whether a rule can fire at all (with a little slack, so never
less often than the rule itself), and the engine then runs the rule's own numpy code, so the
findings are those of the numpy path by construction.

Loaded through :func:`agent.pricing._jit.njit`; use only when :func:`detector_kernels_ready`.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from agent.pricing._jit import njit, warm
from agent.pricing._kernels import (
    ONE_OVER_SQRT_TWO_PI,
    black_price,
    black_price_vega,
    iv_one,
    pricing_kernels_ready,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_TUKEY_C = 4.685
_SVI_SCALE_FLOOR = 0.5
"""``agent.detector.smile``'s least scale of the SVI robust weights, in half-spreads."""
SLACK = 1e-9
"""Dollars by which a kernel's "can this rule fire" test is looser than the rule itself."""


@njit
def quote_masks(
    present: BoolArray,
    bid: FloatArray,
    ask: FloatArray,
    bid_size: IntArray,
    ask_size: IntArray,
    flags: IntArray,
    bad_value: int,
    unusable_bid: int,
    unusable_ask: int,
    crossed_flag: int,
    locked_flag: int,
    feed_bad: int,
) -> tuple[BoolArray, BoolArray, BoolArray, BoolArray, BoolArray, BoolArray, int, int]:
    """``(bid_ok, ask_ok, bad, crossed_or_locked, unclean, clean_two, n_bad, n_crossed_or_locked)``
    as ``ChainState.usable`` and the engine's step 1 compute them."""
    n = bid.shape[1]
    bid_ok = np.zeros((2, n), np.bool_)
    ask_ok = np.zeros((2, n), np.bool_)
    bad = np.zeros((2, n), np.bool_)
    xl = np.zeros((2, n), np.bool_)
    unclean = np.zeros((2, n), np.bool_)
    clean_two = np.zeros((2, n), np.bool_)
    n_bad = 0
    n_xl = 0
    for r in range(2):
        for i in range(n):
            if not present[r, i]:
                continue
            b, a, fl = bid[r, i], ask[r, i], flags[r, i]
            fin_b, fin_a = math.isfinite(b), math.isfinite(a)
            is_bad = (
                (not fin_b)
                or (not fin_a)
                or b < 0
                or a < 0
                or bid_size[r, i] < 0
                or ask_size[r, i] < 0
                or (fl & bad_value) != 0
            )
            bo = fin_b and b > 0 and bid_size[r, i] > 0 and (fl & unusable_bid) == 0 and not is_bad
            ao = fin_a and a > 0 and ask_size[r, i] > 0 and (fl & unusable_ask) == 0 and not is_bad
            two = bo and ao
            crossed = (two and b > a) or (fl & crossed_flag) != 0
            locked = (two and b == a) or (fl & locked_flag) != 0
            unc = is_bad or crossed or locked or (fl & feed_bad) != 0
            bid_ok[r, i] = bo
            ask_ok[r, i] = ao
            bad[r, i] = is_bad
            unclean[r, i] = unc
            clean_two[r, i] = two and not unc
            if is_bad:
                n_bad += 1
            if (crossed or locked) and not is_bad:
                xl[r, i] = True
                n_xl += 1
    return bid_ok, ask_ok, bad, xl, unclean, clean_two, n_bad, n_xl


@njit
def _shell_argsort(key: FloatArray) -> IntArray:
    """Indices that sort ``key`` ascending (Shell sort: small arrays, and far quicker to compile
    than numba's generic sort)."""
    n = key.size
    idx = np.arange(n)
    gap = 1
    while gap < n // 3:
        gap = 3 * gap + 1
    while gap > 0:
        for i in range(gap, n):
            v = idx[i]
            kv = key[v]
            j = i
            while j >= gap and key[idx[j - gap]] > kv:
                idx[j] = idx[j - gap]
                j -= gap
            idx[j] = v
        gap //= 3
    return idx


@njit
def _median(a: FloatArray) -> float:
    s = a[_shell_argsort(a)]
    n = s.size
    h = n // 2
    if n % 2:
        return float(s[h])
    return 0.5 * float(s[h - 1] + s[h])


@njit
def parity_forward(
    clean_two: BoolArray, strikes: FloatArray, bid: FloatArray, ask: FloatArray, disc: float, tukey_c: float
) -> float:
    """The engine's ``_forward`` on strikes with both sides clean; NaN when fewer than three."""
    n = strikes.size
    m = 0
    for i in range(n):
        if clean_two[0, i] and clean_two[1, i]:
            m += 1
    if m < 3:
        return math.nan
    f_i = np.empty(m)
    noise = np.empty(m)
    j = 0
    for i in range(n):
        if clean_two[0, i] and clean_two[1, i]:
            y = 0.5 * (bid[0, i] + ask[0, i]) - 0.5 * (bid[1, i] + ask[1, i])
            nz = 0.25 * ((ask[0, i] - bid[0, i]) + (ask[1, i] - bid[1, i]))
            noise[j] = nz if nz >= 0.005 else 0.005
            f_i[j] = strikes[i] + y / disc
            j += 1
    order = _shell_argsort(f_i)
    cw = np.empty(m)
    acc = 0.0
    for j in range(m):
        acc += 1.0 / noise[order[j]]
        cw[j] = acc
    half = 0.5 * cw[m - 1]
    pos = m - 1
    for j in range(m):
        if cw[j] >= half:
            pos = j
            break
    f = f_i[order[pos]]
    r = np.empty(m)
    for _ in range(2):
        for j in range(m):
            r[j] = abs((f_i[j] - f) * disc / noise[j])
        scale = max(1.4826 * _median(r), 1.0)
        sw = 0.0
        swf = 0.0
        for j in range(m):
            u = (f_i[j] - f) * disc / noise[j] / (tukey_c * scale)
            w = (1.0 - u * u) ** 2 / (noise[j] * noise[j]) if abs(u) < 1.0 else 0.0
            sw += w
            swf += w * f_i[j]
        if sw == 0.0:
            break
        f = swf / sw
    return float(f)


@njit
def otm_iv(
    clean_two: BoolArray,
    bid: FloatArray,
    ask: FloatArray,
    strikes: FloatArray,
    forward: float,
    tau: float,
    disc: float,
    iv_prev: FloatArray,
    tick: float,
    exclude: BoolArray,
) -> tuple[FloatArray, IntArray, FloatArray, FloatArray, FloatArray, int]:
    """Implied vols of the out-of-the-money mids (warm-started from ``iv_prev``), as the engine's
    step 3: ``(iv_otm per strike, fit_idx, x, vega, half_spread, n_iv)``; the fit arrays are of
    the strikes with an IV that are not in ``exclude``, ``n_iv`` counts every strike with an IV."""
    n = strikes.size
    iv_otm = np.full(n, np.nan)
    vega_all = np.empty(n)
    good = np.zeros(n, np.bool_)
    cnt = 0
    n_iv = 0
    for i in range(n):
        r = 0 if strikes[i] >= forward else 1
        if not clean_two[r, i]:
            continue
        mid = 0.5 * (bid[r, i] + ask[r, i])
        s, why, t = iv_one(mid, forward, strikes[i], tau, r == 0, disc, iv_prev[r, i])
        if why != 0:
            continue
        iv_otm[i] = s / math.sqrt(t)
        x = math.log(forward / strikes[i])
        d1 = x / s + 0.5 * s
        vega_all[i] = (disc * ONE_OVER_SQRT_TWO_PI) * forward * math.exp(-0.5 * d1 * d1) * math.sqrt(t)
        n_iv += 1
        if not exclude[i]:
            good[i] = True
            cnt += 1
    idx = np.empty(cnt, np.int64)
    xs = np.empty(cnt)
    vega = np.empty(cnt)
    half = np.empty(cnt)
    j = 0
    for i in range(n):
        if good[i]:
            r = 0 if strikes[i] >= forward else 1
            idx[j] = i
            xs[j] = math.log(strikes[i] / forward)
            vega[j] = vega_all[i]
            h = 0.5 * (ask[r, i] - bid[r, i])
            half[j] = h if h >= 0.5 * tick else 0.5 * tick
            j += 1
    return iv_otm, idx, xs, vega, half, n_iv


# --------------------------------------------------------------------------- SVI fit


@njit
def _svi_weights(resid: FloatArray, base: FloatArray) -> FloatArray:
    n = resid.size
    r = np.empty(n)
    m = 0
    for i in range(n):
        r[i] = math.sqrt(base[i]) * resid[i]
        if base[i] > 0:
            m += 1
    used = np.empty(m)
    j = 0
    for i in range(n):
        if base[i] > 0:
            used[j] = abs(r[i])
            j += 1
    scale = max(1.4826 * _median(used), _SVI_SCALE_FLOOR) if m else _SVI_SCALE_FLOOR
    out = np.empty(n)
    for i in range(n):
        u = r[i] / (_TUKEY_C * scale)
        out[i] = base[i] * ((1.0 - u * u) ** 2 if abs(u) < 1.0 else 0.0)
    return out


@njit
def _solve3(a: FloatArray, b: FloatArray) -> bool:
    """Gaussian elimination with partial pivoting in place (``b`` becomes the solution);
    False when singular."""
    for c in range(3):
        p = c
        for r in range(c + 1, 3):
            if abs(a[r, c]) > abs(a[p, c]):
                p = r
        if a[p, c] == 0.0:
            return False
        if p != c:
            for q in range(3):
                tmp = a[c, q]
                a[c, q] = a[p, q]
                a[p, q] = tmp
            tmp = b[c]
            b[c] = b[p]
            b[p] = tmp
        inv = 1.0 / a[c, c]
        for r in range(c + 1, 3):
            f = a[r, c] * inv
            for q in range(c + 1, 3):
                a[r, q] -= f * a[c, q]
            b[r] -= f * b[c]
    for c in range(2, -1, -1):
        acc = b[c]
        for q in range(c + 1, 3):
            acc -= a[c, q] * b[q]
        b[c] = acc / a[c, c]
    return True


@njit
def _svi_solve(
    z: FloatArray, y: FloatArray, w: FloatArray, cand_m: FloatArray, cand_s: FloatArray
) -> tuple[float, float, float, float, float]:
    """``SviFitter._solve``: best (a, c1, c2, m, s) over the candidates."""
    g = cand_m.size
    n = z.size
    sol = np.empty((g, 3))
    sums = np.empty((g, 5))
    singular = False
    sw = 0.0
    ty = 0.0
    for i in range(n):
        sw += w[i]
        ty += w[i] * y[i]
    A = np.empty((3, 3))
    rhs = np.empty(3)
    for c in range(g):
        m, s = cand_m[c], cand_s[c]
        s1 = s2 = s11 = s12 = s22 = t1 = t2 = 0.0
        for i in range(n):
            d = z[i] - m
            root = math.sqrt(d * d + s * s)
            wi = w[i]
            wy = wi * y[i]
            s1 += d * wi
            s2 += root * wi
            s11 += d * d * wi
            s12 += d * root * wi
            s22 += root * root * wi
            t1 += d * wy
            t2 += root * wy
        A[0, 0] = sw
        A[0, 1] = A[1, 0] = s1
        A[0, 2] = A[2, 0] = s2
        A[1, 1] = s11
        A[1, 2] = A[2, 1] = s12
        A[2, 2] = s22
        for q in range(3):
            A[q, q] += 1e-12 * (1.0 + abs(A[q, q]))
        rhs[0], rhs[1], rhs[2] = ty, t1, t2
        if not _solve3(A, rhs):
            singular = True
        sol[c, 0], sol[c, 1], sol[c, 2] = rhs[0], rhs[1], rhs[2]
        sums[c, 0], sums[c, 1] = s1, s2
    if singular:
        for c in range(g):
            sol[c, 0] = ty / max(sw, 1e-300)
            sol[c, 1] = 0.0
            sol[c, 2] = 0.0
    best = -1
    best_sse = math.inf
    ba = bc1 = bc2 = 0.0
    for c in range(g):
        a, c1, c2 = sol[c, 0], sol[c, 1], sol[c, 2]
        c2n = max(c2, 0.0)
        c1n = min(max(c1, -0.999 * c2n), 0.999 * c2n)
        if c2n != c2 or c1n != c1:
            a = (ty - c1n * sums[c, 0] - c2n * sums[c, 1]) / max(sw, 1e-300)
        c1, c2 = c1n, c2n
        q = c1 / (c2 if c2 > 0 else 1.0)
        floor = -c2 * cand_s[c] * math.sqrt(max(1.0 - q * q, 0.0))
        a = max(a, floor)
        m, s = cand_m[c], cand_s[c]
        sse = 0.0
        for i in range(n):
            d = z[i] - m
            res = y[i] - (a + c1 * d + c2 * math.sqrt(d * d + s * s))
            sse += res * res * w[i]
        if sse != sse:
            if best < 0 or best_sse == best_sse:
                best, best_sse, ba, bc1, bc2 = c, sse, a, c1, c2
            break
        if best < 0 or sse < best_sse:
            best, best_sse, ba, bc1, bc2 = c, sse, a, c1, c2
    return ba, bc1, bc2, cand_m[best], cand_s[best]


@njit
def _count(w: FloatArray) -> int:
    c = 0
    for v in w:
        if v != 0:
            c += 1
    return c


@njit
def _local_grid(m0: float, s0: float, g: int, dm: float, ds: float) -> tuple[FloatArray, FloatArray]:
    k = 2 * g + 1
    cm = np.empty(k * k)
    cs = np.empty(k * k)
    for i in range(k):
        for j in range(k):
            cm[i * k + j] = m0 + (i - g) * dm
            cs[i * k + j] = min(max(s0 * math.exp((j - g) * ds), 1e-3), 50.0)
    return cm, cs


@njit
def svi_fit(
    x: FloatArray,
    iv: FloatArray,
    tau: float,
    vega: FloatArray,
    half_spread: FloatArray,
    state: FloatArray,
    grid_m: FloatArray,
    grid_s: FloatArray,
    local_grid: int,
    full_every: int,
) -> tuple[bool, FloatArray, FloatArray, float, int]:
    """``SviFitter.fit`` in one pass. ``state`` (updated in place): ``[has_mx, m_x, s_x, dm, ds,
    since_full, has_prev, a, b, rho, m, sigma]``. Returns ``(ok, params (a, b, rho, m, sigma),
    weights, rmse_vol, n_used)``."""
    n = x.size
    params = np.zeros(5)
    if n < 5 or not (tau > 0):
        return False, params, np.zeros(0), math.nan, 0
    w_obs = iv * iv * tau
    near = _shell_argsort(np.abs(x))[: min(4, n)]
    theta = math.sqrt(_median(w_obs[near]))
    if not (theta > 0 and math.isfinite(theta)):
        return False, params, np.zeros(0), math.nan, 0
    z = x / theta
    y = w_obs / (theta * theta)
    base = np.empty(n)
    npos = 0
    for i in range(n):
        sy = vega[i] * theta * theta / (2.0 * iv[i] * tau * half_spread[i])
        bi = sy * sy
        base[i] = bi if math.isfinite(bi) else 0.0
        if base[i] > 0:
            npos += 1
    if npos < 5:
        return False, params, np.zeros(0), math.nan, 0
    has_mx = state[0] != 0.0
    dm, ds = state[3], state[4]
    since_full = int(state[5])
    has_prev = state[6] != 0.0
    warm = has_prev and since_full < full_every - 1
    m0 = s0 = 0.0
    if not has_mx:
        cand_m, cand_s = grid_m, grid_s
        dm, ds = 0.25, 0.35
    else:
        m0, s0 = state[1] / theta, state[2] / theta
        cand_m, cand_s = _local_grid(m0, s0, 1 if warm else local_grid, dm, ds)
    w = base
    if has_prev:
        # robust weights against the previous fit: a strike that turns rich or cheap is weighed
        # against the smile as it was, not against a least-squares fit that already bent to it
        pa, pb, prho, pm, psig = state[7], state[8], state[9], state[10], state[11]
        resid = np.empty(n)
        for i in range(n):
            d = x[i] - pm
            resid[i] = y[i] - (pa + pb * (prho * d + math.sqrt(d * d + psig * psig))) / (theta * theta)
        w = _svi_weights(resid, base)
        if _count(w) < 5:
            w = base
    if warm:
        best = _svi_solve(z, y, w, cand_m, cand_s)
        moved = (best[3] != m0) or (best[4] != s0)
        f = 1.5 if moved else 0.6
        dm = min(max(dm * f, 0.005), 0.5)
        ds = min(max(ds * f, 0.005), 0.7)
        since_full += 1
    else:
        best = _svi_solve(z, y, w, cand_m, cand_s)
        one_m = np.empty(1)
        one_s = np.empty(1)
        for _ in range(3):
            a, c1, c2, m, s = best
            resid = np.empty(n)
            for i in range(n):
                d = z[i] - m
                resid[i] = y[i] - (a + c1 * d + c2 * math.sqrt(d * d + s * s))
            w = _svi_weights(resid, base)
            if _count(w) < 5:
                w = base
                break
            one_m[0], one_s[0] = best[3], best[4]
            best = _svi_solve(z, y, w, one_m, one_s)
        if has_mx:
            cm, cs = _local_grid(best[3], best[4], local_grid, dm, ds)
            new = _svi_solve(z, y, w, cm, cs)
            moved = (new[3] != best[3]) or (new[4] != best[4])
            best = new
            f = 1.5 if moved else 0.6
            dm = min(max(dm * f, 0.005), 0.5)
            ds = min(max(ds * f, 0.005), 0.7)
        since_full = 0
    a, c1, c2, m, s = best
    rho = c1 / c2 if c2 > 0 else 0.0
    params[0] = a * theta * theta
    params[1] = c2 * theta
    params[2] = rho
    params[3] = m * theta
    params[4] = s * theta
    state[0] = 1.0
    state[1] = m * theta
    state[2] = s * theta
    state[3] = dm
    state[4] = ds
    state[5] = since_full
    state[6] = 1.0
    state[7:12] = params
    num = 0.0
    den = 0.0
    used = 0
    for i in range(n):
        if w[i] > 0:
            d = x[i] - params[3]
            tv = params[0] + params[1] * (params[2] * d + math.sqrt(d * d + params[4] * params[4]))
            fit_iv = math.sqrt(max(tv, 1e-300) / tau)
            d_iv = (iv[i] - fit_iv) * math.sqrt(base[i])
            num += d_iv * d_iv
            den += base[i]
            used += 1
    rmse = math.sqrt(num / den) if used else math.nan
    return True, params, w, rmse, used


# --------------------------------------------------------------------------- model values, stale


@njit
def svi_vols(
    strikes: FloatArray, forward: float, tau: float, params: FloatArray, k_lo: float, k_hi: float
) -> FloatArray:
    """Fitted vols at every strike: ``sqrt(max(w(ln(K/F)), 1e-300) / tau)``, with ``K`` clipped
    to the fitted strikes ``[k_lo, k_hi]`` (flat beyond them)."""
    n = strikes.size
    out = np.empty(n)
    a, b, rho, m, sig = params[0], params[1], params[2], params[3], params[4]
    for i in range(n):
        kk = min(max(strikes[i], k_lo), k_hi)
        d = math.log(kk / forward) - m
        out[i] = math.sqrt(max(a + b * (rho * d + math.sqrt(d * d + sig * sig)), 1e-300) / tau)
    return out


@njit
def model_and_stale(
    strikes: FloatArray,
    forward: float,
    tau: float,
    tau_raw: float,
    fit_iv: FloatArray,
    disc: float,
    has_smile: bool,
    params: FloatArray,
    k_lo: float,
    k_hi: float,
    check_stale: bool,
    s_ref: float,
    ref_und: FloatArray,
    present: BoolArray,
    price_changed: BoolArray,
    unclean: BoolArray,
    moved_since_ns: IntArray,
    now_ns: int,
    min_move: float,
    grace_ns: int,
) -> tuple[FloatArray, FloatArray, BoolArray, BoolArray, FloatArray, FloatArray, int]:
    """Model price and vega of every contract at the fitted vol, then the stale-quote rule
    (``moved_since_ns`` updated in place as the engine does). Returns ``(price, vega, stale,
    suspect, move, ds, n_stale)``; ``tau`` is floored (prices), ``tau_raw`` not (vols from the smile,
    flat beyond the fitted strikes ``[k_lo, k_hi]`` in moneyness)."""
    n = strikes.size
    price = np.empty((2, n))
    vega = np.empty((2, n))
    stale = np.zeros((2, n), np.bool_)
    suspect = np.zeros((2, n), np.bool_)
    move = np.zeros((2, n))
    dsa = np.zeros((2, n))
    for i in range(n):
        for r in range(2):
            price[r, i], vega[r, i] = black_price_vega(forward, strikes[i], tau, fit_iv[i], r == 0, disc)
    if not check_stale:
        return price, vega, stale, suspect, move, dsa, 0
    a, b, rho, m, sig = params[0], params[1], params[2], params[3], params[4]
    n_stale = 0
    for r in range(2):
        for i in range(n):
            ds = s_ref - ref_und[r, i]
            dsa[r, i] = ds
            cand = present[r, i] and not price_changed[r, i] and abs(ds) > 0
            should = False
            if cand:
                f_ref = forward * ref_und[r, i] / s_ref
                if has_smile:
                    kk = min(max(strikes[i] * forward / f_ref, k_lo), k_hi)
                    d = math.log(kk / forward) - m
                    w_ref = a + b * (rho * d + math.sqrt(d * d + sig * sig))
                    vol_ref = math.sqrt(max(w_ref, 1e-300) / tau_raw)
                else:
                    vol_ref = fit_iv[i]
                then = black_price(f_ref, strikes[i], tau, vol_ref, r == 0, disc)
                mv = abs(price[r, i] - then)
                move[r, i] = mv
                should = mv >= min_move
            if should:
                if moved_since_ns[r, i] < 0:
                    moved_since_ns[r, i] = now_ns
                st = (now_ns - moved_since_ns[r, i] >= grace_ns) and not unclean[r, i]
                stale[r, i] = st
                suspect[r, i] = not st
                if st:
                    n_stale += 1
            else:
                moved_since_ns[r, i] = -1
    return price, vega, stale, suspect, move, dsa, n_stale


# --------------------------------------------------------------------------- arbitrage screens


@njit
def exec_book(
    bid: FloatArray, ask: FloatArray, bid_ok: BoolArray, ask_ok: BoolArray, trade: BoolArray
) -> tuple[FloatArray, FloatArray]:
    """Executable bids (``-inf`` where not) and asks (``inf`` where not)."""
    n = bid.shape[1]
    bx = np.empty((2, n))
    ax = np.empty((2, n))
    for r in range(2):
        for i in range(n):
            bx[r, i] = bid[r, i] if (bid_ok[r, i] and trade[r, i]) else -math.inf
            ax[r, i] = ask[r, i] if (ask_ok[r, i] and trade[r, i]) else math.inf
    return bx, ax


@njit
def _gt(v: float, thr: float) -> bool:
    """``v > thr - SLACK``, and True for NaN (then the rule itself decides)."""
    return v != v or v > thr - SLACK


@njit
def _cross(ox: float, oy: float, ax: float, ay: float, bx: float, by: float) -> float:
    return (ax - ox) * (by - oy) - (ay - oy) * (bx - ox)


@njit
def _butterfly_possible(k: FloatArray, bid: FloatArray, ask: FloatArray, need: float) -> bool:
    """Whether some body's bid minus ``need`` is above the lower convex hull of all asks (the
    necessary condition of ``rules.butterfly_candidates``), with slack."""
    n = k.size
    hull = np.empty(n, np.int64)
    h = 0
    for i in range(n):
        if not math.isfinite(ask[i]):
            continue
        while (
            h >= 2
            and _cross(k[hull[h - 2]], ask[hull[h - 2]], k[hull[h - 1]], ask[hull[h - 1]], k[i], ask[i]) <= 0
        ):
            h -= 1
        hull[h] = i
        h += 1
    if h < 2:
        return False
    seg = 0
    for i in range(n):
        if not (k[i] > k[hull[0]] and k[i] < k[hull[h - 1]]):
            continue
        while k[hull[seg + 1]] < k[i]:
            seg += 1
        i0, i1 = hull[seg], hull[seg + 1]
        env = ask[i0] + (ask[i1] - ask[i0]) * (k[i] - k[i0]) / (k[i1] - k[i0])
        v = bid[i] - need - env
        if v != v or v > -SLACK - 1e-9 * (1.0 + abs(env)):
            return True
    return False


@njit
def arbitrage_screen(
    k: FloatArray,
    bid: FloatArray,
    ask: FloatArray,
    commission: float,
    mult: float,
    stock_cost: float,
    min_edge: float,
    d: float,
    und_bid: float,
    und_ask: float,
    fs: float,
) -> tuple[bool, bool, bool, bool]:
    """``(parity or intrinsic, vertical, butterfly, box)``: whether each family of
    ``rules.find_arbitrage`` can have a violating combination (never False when it has one)."""
    n = k.size
    thr = min_edge / mult
    c = commission / mult
    parity = False
    if math.isfinite(und_bid) and math.isfinite(und_ask) and math.isfinite(fs):
        hi = max(und_ask, fs)
        lo = min(und_bid, fs)
        for j in range(n):
            cb, pb, ca, pa = bid[0, j], bid[1, j], ask[0, j], ask[1, j]
            if (
                _gt((cb - pa) - (hi - k[j] * d) - 2 * c - stock_cost, thr)
                or _gt((lo - k[j]) - (ca - pb) - 2 * c - stock_cost, thr)
                or _gt((lo - k[j]) - ca - c - stock_cost, thr)
                or _gt((k[j] - hi) - pa - c - stock_cost, thr)
            ):
                parity = True
                break
    c2 = 2 * commission / mult
    c4 = 4 * commission / mult
    vertical = False
    box = False
    min_ca = math.inf
    max_cbk = -math.inf
    max_pb = -math.inf
    min_pak = math.inf
    max_long = -math.inf
    max_short = -math.inf
    for j in range(n):
        cb, pb, ca, pa = bid[0, j], bid[1, j], ask[0, j], ask[1, j]
        if j > 0 and not vertical:
            vertical = (
                _gt(cb - min_ca - c2, thr)
                or _gt(max_cbk - (ca + k[j]) - c2, thr)
                or _gt(max_pb - pa - c2, thr)
                or _gt((pb - k[j]) - min_pak - c2, thr)
            )
        if j > 0 and not box:
            box = _gt(max_long + (cb - pa + k[j] * d) - c4, thr) or _gt(
                max_short + (pb - ca - k[j]) - c4, thr
            )
        min_ca = min(min_ca, ca)
        max_cbk = max(max_cbk, cb + k[j])
        max_pb = max(max_pb, pb)
        min_pak = min(min_pak, pa - k[j])
        max_long = max(max_long, pb - ca - k[j])
        max_short = max(max_short, cb - pa + k[j] * d)
    need = 2 * c + thr
    fly = _butterfly_possible(k, bid[0], ask[0], need) or _butterfly_possible(k, bid[1], ask[1], need)
    return parity, vertical, fly, box


@njit
def _lower_hull(x: FloatArray, y: FloatArray, idx: IntArray) -> IntArray:
    """``rules.lower_hull`` step for step (the same passes, the same arithmetic)."""
    cur = idx.copy()
    while cur.size > 2:
        m = cur.size
        keep = np.ones(m, np.bool_)
        any_drop = False
        for t in range(1, m - 1):
            xl, xm, xr = x[cur[t - 1]], x[cur[t]], x[cur[t + 1]]
            yl, ym, yr = y[cur[t - 1]], y[cur[t]], y[cur[t + 1]]
            chord = yl + (yr - yl) * (xm - xl) / (xr - xl)
            if ym >= chord - 1e-12 * (1.0 + abs(chord)):
                keep[t] = False
                any_drop = True
        if not any_drop:
            break
        cur = cur[keep]
    return cur


@njit
def butterfly_wings(
    k: FloatArray, bid: FloatArray, ask: FloatArray, need: float
) -> tuple[IntArray, IntArray, IntArray, FloatArray]:
    """``rules.butterfly_candidates`` then ``rules.cheapest_wings`` for those bodies, compiled:
    ``(bodies, left, right, chord)`` with ``left``/``right``/``chord`` indexed by strike."""
    n = k.size
    left = np.full(n, -1, np.int64)
    right = np.full(n, -1, np.int64)
    val = np.full(n, np.inf)
    cnt = 0
    for i in range(n):
        if math.isfinite(ask[i]):
            cnt += 1
    if cnt < 2:
        return np.zeros(0, np.int64), left, right, val
    pts = np.empty(cnt, np.int64)
    j = 0
    for i in range(n):
        if math.isfinite(ask[i]):
            pts[j] = i
            j += 1
    hull = _lower_hull(k, ask, pts)
    hk = k[hull]
    env = np.interp(k, hk, ask[hull])
    nb = 0
    cand = np.zeros(n, np.bool_)
    for i in range(n):
        if k[i] > hk[0] and k[i] < hk[-1] and bid[i] - need > env[i]:
            cand[i] = True
            nb += 1
    bodies = np.flatnonzero(cand)
    for jj in range(nb):
        b = bodies[jj]
        kj = k[b]
        lc = _lower_hull(k, ask, pts[k[pts] < kj])
        rc = _lower_hull(k, ask, pts[k[pts] > kj])
        if lc.size == 0 or rc.size == 0:
            continue
        best = np.inf
        bl = -1
        br = -1
        for a in range(lc.size):  # row-major, first minimum: np.argmin over the chord matrix
            kl, al = k[lc[a]], ask[lc[a]]
            for c in range(rc.size):
                kr, ar = k[rc[c]], ask[rc[c]]
                ch = al + (ar - al) * (kj - kl) / (kr - kl)
                if ch < best or bl < 0:
                    best, bl, br = ch, lc[a], rc[c]
        left[b], right[b], val[b] = bl, br, best
    return bodies, left, right, val


# --------------------------------------------------------------------------- relative rules


@njit
def outlier_masks(
    strikes: FloatArray,
    forward: float,
    inside: BoolArray,
    model: FloatArray,
    vega: FloatArray,
    bid: FloatArray,
    ask: FloatArray,
    bid_ok: BoolArray,
    ask_ok: BoolArray,
    good: BoolArray,
    in_arb: BoolArray,
    present: BoolArray,
    vol_pts: float,
    min_dollars: float,
    com: float,
    zero_min: float,
) -> tuple[BoolArray, BoolArray, BoolArray, int]:
    """``(rich, cheap, zero_bid, count)`` as ``_smile_outliers`` and ``_zero_bids`` compute them."""
    n = strikes.size
    rich = np.zeros((2, n), np.bool_)
    cheap = np.zeros((2, n), np.bool_)
    zero = np.zeros((2, n), np.bool_)
    cnt = 0
    for r in range(2):
        for i in range(n):
            otm = strikes[i] >= forward if r == 0 else strikes[i] <= forward
            within = inside[i] and otm and good[r, i] and not in_arb[r, i]
            thr = max(vol_pts / 100.0 * vega[r, i], min_dollars) + com
            if vega[r, i] != vega[r, i]:
                thr = math.nan
            if within and bid_ok[r, i] and bid[r, i] - model[r, i] > thr:
                rich[r, i] = True
                cnt += 1
            if within and ask_ok[r, i] and model[r, i] - ask[r, i] > thr:
                cheap[r, i] = True
                cnt += 1
            if present[r, i] and not bid_ok[r, i] and ask_ok[r, i] and good[r, i] and model[r, i] >= zero_min:
                zero[r, i] = True
                cnt += 1
    return rich, cheap, zero, cnt


@njit
def wide_spread_possible(
    clean_two: BoolArray, bid: FloatArray, ask: FloatArray, min_dollars: float, mult: float
) -> bool:
    """Whether ``_wide_spreads``' necessary condition holds anywhere (spread above the minimum and
    above ``mult`` times the narrowest of its up-to-six neighbours)."""
    n = bid.shape[1]
    if n < 3:
        return False
    for r in range(2):
        for i in range(n):
            if not clean_two[r, i]:
                continue
            sp = ask[r, i] - bid[r, i]
            if not sp > min_dollars:
                continue
            low = math.nan
            for dd in range(-3, 4):
                j = i + dd
                if dd == 0 or j < 0 or j >= n or not clean_two[r, j]:
                    continue
                v = ask[r, j] - bid[r, j]
                if low != low or v < low:
                    low = v
            if sp > mult * low:
                return True
    return False


@njit
def flow_volume(
    present: BoolArray,
    volume: IntArray,
    has_prev: bool,
    v_prev: IntArray,
    dt: float,
    alpha: float,
    spike_on: BoolArray,
    vol_first: IntArray,
    vol_rate: FloatArray,
    now_ns: int,
    has_base: bool,
    v_base: IntArray,
    win_s: float,
    warm_ns: int,
    floor: float,
    mult: float,
    min_contracts: float,
) -> tuple[IntArray, BoolArray, IntArray, FloatArray, int]:
    """The volume part of ``_flow`` (baseline rate and first-seen updated in place):
    ``(vol, spiking, window_vol, expected, n_spiking)``."""
    n = volume.shape[1]
    vol = np.empty((2, n), np.int64)
    spiking = np.zeros((2, n), np.bool_)
    window = np.zeros((2, n), np.int64)
    expected = np.zeros((2, n))
    cnt = 0
    for r in range(2):
        for i in range(n):
            v = volume[r, i] if present[r, i] else -1
            vol[r, i] = v
            if has_prev and not spike_on[r, i] and vol_first[r, i] >= 0:
                inc = max(v - v_prev[r, i], 0) if (v_prev[r, i] >= 0 and v >= 0) else 0
                vol_rate[r, i] += alpha * (inc / dt - vol_rate[r, i])
            if vol_first[r, i] < 0 and v >= 0:
                vol_first[r, i] = now_ns
            if has_base:
                wv = v - v_base[r, i] if (v_base[r, i] >= 0 and v >= 0) else 0
                window[r, i] = wv
                warm = vol_first[r, i] >= 0 and now_ns - vol_first[r, i] >= warm_ns
                ex = max(vol_rate[r, i], floor) * win_s
                expected[r, i] = ex
                if warm and wv >= max(mult * ex, min_contracts):
                    spiking[r, i] = True
                    cnt += 1
    return vol, spiking, window, expected, cnt


@njit
def trades_through(
    touched: BoolArray,
    last: FloatArray,
    last_size: IntArray,
    vol: IntArray,
    has_prev: bool,
    prev_vol: IntArray,
    quiet: BoolArray,
    bid: FloatArray,
    ask: FloatArray,
    prev_bid: FloatArray,
    prev_ask: FloatArray,
    tt: float,
) -> tuple[BoolArray, int]:
    """The trade-through mask of ``_flow`` and its count."""
    n = last.shape[1]
    out = np.zeros((2, n), np.bool_)
    cnt = 0
    if not has_prev:
        return out, 0
    for r in range(2):
        for i in range(n):
            if not (touched[r, i] and last_size[r, i] > 0 and last[r, i] > 0):
                continue
            if not (prev_vol[r, i] >= 0 and vol[r, i] > prev_vol[r, i]) or quiet[r, i]:
                continue
            hi = np.fmax(ask[r, i], prev_ask[r, i])
            lo = np.fmin(bid[r, i], prev_bid[r, i])
            px = last[r, i]
            if not ((px >= hi + tt) or ((px <= lo - tt) and (lo > 0))):
                continue
            if np.fmax(bid[r, i], prev_bid[r, i]) < np.fmin(ask[r, i], prev_ask[r, i]):
                out[r, i] = True
                cnt += 1
    return out, cnt


@njit
def iv_jumps(
    strikes: FloatArray,
    forward: float,
    iv: FloatArray,
    quiet: BoolArray,
    iv_prev: FloatArray,
    iv_dvar: FloatArray,
    iv_n: IntArray,
    z_thr: float,
    min_move: float,
    alpha: float,
) -> tuple[BoolArray, FloatArray, FloatArray, IntArray, int]:
    """``_iv_jumps`` (histories updated in place): ``(jump, d, z, row, n_jumps)`` per strike."""
    n = strikes.size
    jump = np.zeros(n, np.bool_)
    dd = np.empty(n)
    zz = np.empty(n)
    rows = np.empty(n, np.int64)
    cnt = 0
    for i in range(n):
        r = 0 if strikes[i] >= forward else 1
        rows[i] = r
        d = iv[i] - iv_prev[r, i]
        var = iv_dvar[r, i]
        c = iv_n[r, i]
        z = abs(d) / math.sqrt(var)
        dd[i] = d
        zz[i] = z
        ok = math.isfinite(d)
        j = ok and not quiet[r, i] and c >= 20 and z >= z_thr and abs(d) >= min_move
        if j:
            jump[i] = True
            cnt += 1
        if ok:
            if c > 0:
                capped = var if j else min(d * d, 25.0 * var)
                iv_dvar[r, i] = var + alpha * (capped - var)
            else:
                iv_dvar[r, i] = d * d
            iv_n[r, i] = c + 1
        iv_prev[r, i] = iv[i]
    return jump, dd, zz, rows, cnt


def _warm_up() -> None:
    n = 8
    k = np.arange(95.0, 103.0)
    f, t, df = 99.0, 0.001, 1.0
    bid = np.vstack([np.maximum(f - k, 0) + 0.5, np.maximum(k - f, 0) + 0.5])
    ask = bid + 0.02
    b2 = np.ones((2, n), np.bool_)
    i2 = np.ones((2, n), np.int64)
    quote_masks(b2, bid, ask, i2, i2, i2 * 0, 1, 2, 4, 8, 16, 32)
    parity_forward(b2, k, bid, ask, 1.0, _TUKEY_C)
    iv_otm, idx, x, vega, half, _n_iv = otm_iv(
        b2, bid, ask, k, f, t, df, np.full((2, n), np.nan), 0.01, np.zeros(n, np.bool_)
    )
    st = np.zeros(12)
    gm = np.linspace(-1.5, 1.5, 3)
    gs = np.geomspace(0.05, 4.0, 3)
    _ok, params, _w, _rmse, _used = svi_fit(x, iv_otm[idx], t, vega, half, st, gm, gs, 1, 2)
    fit_iv = svi_vols(k, f, t, params, k[0], k[-1])
    ms = np.full((2, n), -1, np.int64)
    model_and_stale(
        k,
        f,
        t,
        t,
        fit_iv,
        df,
        True,
        params,
        k[0],
        k[-1],
        True,
        f,
        np.full((2, n), f - 1),
        b2,
        ~b2,
        ~b2,
        ms,
        1,
        0.02,
        1,
    )
    bx, ax = exec_book(bid, ask, b2, b2, b2)
    arbitrage_screen(k, bx, ax, 0.65, 100.0, 0.005, 0.01, 1.0, f, f, f)
    butterfly_wings(k, bid[0], ask[0], 0.0)
    outlier_masks(
        k, f, np.ones(n, np.bool_), bid, bid, bid, ask, b2, b2, b2, ~b2, b2, 0.3, 0.015, 0.0065, 0.15
    )
    wide_spread_possible(b2, bid, ask, 0.25, 5.0)
    flow_volume(b2, i2, True, i2, 1.0, 0.1, ~b2, i2, np.zeros((2, n)), 1, True, i2, 1.0, 1, 0.5, 8.0, 50.0)
    trades_through(b2, bid, i2, i2, True, i2, ~b2, bid, ask, bid, ask, 0.01)
    iv_jumps(
        k, f, iv_otm, ~b2, np.zeros((2, n)), np.zeros((2, n)), np.zeros((2, n), np.int64), 8.0, 0.02, 0.01
    )


def detector_kernels_ready() -> bool:
    """True when the compiled detector kernels are usable (compiled or loaded once per process)."""
    return pricing_kernels_ready() and warm("detector", _warm_up)
