"""A robust, vega-weighted SVI fit of one expiry's smile, refreshed on every chain update.

The fit is raw SVI in total variance, ``w(x) = a + b (rho (x - m) + sqrt((x - m)^2 + sigma^2))``
with ``x = ln(K / F)`` and ``w = iv^2 tau``, on the out-of-the-money options' mid implied vols
(puts below the forward, calls above). It is solved by variable projection: for fixed ``(m,
sigma)`` the other three parameters are a weighted linear least-squares problem, so a batch of
candidate ``(m, sigma)`` is solved at once (3x3 normal equations per candidate). The first fit
searches a wide grid; each later update searches a small grid around the previous solution, so a
fit costs tens of microseconds and tracks the smile through the day.

Weights: residuals are measured in *half-spreads of price* (``vega * d_iv / half_spread``), so a
tight near-the-money quote counts more than a wide wing, and Tukey's biweight on those residuals
(scale: MAD, at least half a half-spread) gives an outlier zero weight: a rich or cheap strike does
not bend the curve it is measured against. Two details make that hold late in the day, when the
smile rests on six to nine two-sided strikes and five parameters could follow any one of them:

* the first robust weights of every update are taken against the *previous* fit (a strike that
  has just turned rich or cheap is weighed against the smile as it was), not against an unweighted
  least-squares fit that has already bent towards it;
* the scale's floor is half a half-spread (Tukey's cut at about 2.3 half-spreads): an outlier
  the detector can report has its executable side beyond the smile, so its mid is beyond it by a
  half-spread plus the margin, two to three half-spreads; a floor of one half-spread (cut at 4.7)
  never rejected it. Clean mids sit well inside a half-spread of a good fit.

Arbitrage awareness: ``b >= 0``, ``|rho| < 1`` and ``a + b sigma sqrt(1 - rho^2) >= 0`` (no negative
variance) are enforced on every candidate. The curve is computed in ``z = x / theta`` with
``theta`` the at-the-money total volatility, so the grid has the same meaning at 9:31 and 15:59.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

_TUKEY_C = 4.685
_SCALE_FLOOR = 0.5
"""Least scale of the robust weights, in half-spreads (see the module docstring)."""
# the first fit's (m, sigma) grid, flattened as np.meshgrid(..., indexing="ij").ravel() lays it out
_GRID_M = np.repeat(np.linspace(-1.5, 1.5, 13), 13)
_GRID_S = np.tile(np.geomspace(0.05, 4.0, 13), 13)


def median(a: FloatArray) -> float:
    """Median of a non-empty 1-D array (``np.partition``: a fraction of ``np.median``'s overhead)."""
    n = a.size
    h = n // 2
    if n % 2:
        return float(np.partition(a, h)[h])
    p = np.partition(a, (h - 1, h))
    return 0.5 * float(p[h - 1] + p[h])


@dataclass(frozen=True, slots=True)
class SviParams:
    """Raw SVI in ``x = ln(K/F)`` and total variance."""

    a: float
    b: float
    rho: float
    m: float
    sigma: float

    def total_variance(self, x: FloatArray) -> FloatArray:
        d = x - self.m
        out: FloatArray = self.a + self.b * (self.rho * d + np.sqrt(d * d + self.sigma * self.sigma))
        return out


@dataclass(frozen=True, slots=True)
class SviResult:
    params: SviParams
    weights: FloatArray  # final robust weights of the input points (0 = rejected)
    rmse_vol: float  # weighted RMS residual in volatility
    n_used: int


class SviFitter:
    """Keeps the previous solution to warm-start the next update."""

    def __init__(self, local_grid: int = 1, full_every: int = 1) -> None:
        self._m_x: float | None = None
        self._s_x: float | None = None
        self._dm = 0.25
        self._ds = 0.35
        self._g = local_grid
        self._full_every = max(full_every, 1)
        self._since_full = 0
        self._prev: SviParams | None = None

    def reset(self) -> None:
        self._m_x = self._s_x = None
        self._prev = None
        self._since_full = 0

    def _adapt(self, moved: bool) -> None:
        f = 1.5 if moved else 0.6
        self._dm = min(max(self._dm * f, 0.005), 0.5)
        self._ds = min(max(self._ds * f, 0.005), 0.7)

    def _robust(
        self, z: FloatArray, y: FloatArray, base: FloatArray, p: tuple[float, float, float, float, float]
    ) -> FloatArray:
        """Tukey biweights of the residuals (in half-spreads) against ``p``; scale MAD, >= 0.5."""
        return self._weights(y - self._eval(z, p), base)

    @staticmethod
    def _weights(resid: FloatArray, base: FloatArray) -> FloatArray:
        r = np.sqrt(base) * resid
        used = np.abs(r[base > 0])
        scale = max(1.4826 * median(used), _SCALE_FLOOR) if used.size else _SCALE_FLOOR
        u = r / (_TUKEY_C * scale)
        out: FloatArray = base * np.where(np.abs(u) < 1.0, (1.0 - u * u) ** 2, 0.0)
        return out

    def fit_compiled(
        self, x: FloatArray, iv: FloatArray, tau: float, vega: FloatArray, half_spread: FloatArray
    ) -> SviResult | None:
        """:meth:`fit` by the compiled kernel (:func:`agent.detector._kernels.svi_fit`): same
        steps, same state; use only when the detector kernels are ready."""
        from agent.detector import _kernels

        p = self._prev
        state = np.array(
            [
                self._m_x is not None,
                self._m_x or 0.0,
                self._s_x or 0.0,
                self._dm,
                self._ds,
                self._since_full,
                p is not None,
                *((p.a, p.b, p.rho, p.m, p.sigma) if p is not None else (0.0,) * 5),
            ],
            dtype=np.float64,
        )
        ok, params, w, rmse, n_used = _kernels.svi_fit(
            x, iv, tau, vega, half_spread, state, _GRID_M, _GRID_S, self._g, self._full_every
        )
        if not ok:
            return None
        self._m_x, self._s_x = float(state[1]), float(state[2])
        self._dm, self._ds, self._since_full = float(state[3]), float(state[4]), int(state[5])
        a, b, rho, m, sigma = params.tolist()
        self._prev = SviParams(a=a, b=b, rho=rho, m=m, sigma=sigma)
        return SviResult(self._prev, w, float(rmse), int(n_used))

    def fit(
        self, x: FloatArray, iv: FloatArray, tau: float, vega: FloatArray, half_spread: FloatArray
    ) -> SviResult | None:
        """Fit ``iv(x)``; ``vega`` per 1.00 vol and ``half_spread`` in dollars weight the points."""
        n = x.size
        if n < 5 or not (tau > 0):
            return None
        w_obs = iv * iv * tau
        near = np.argsort(np.abs(x))[: min(4, n)]
        theta = math.sqrt(median(w_obs[near]))
        if not (theta > 0 and math.isfinite(theta)):
            return None
        z = x / theta
        y = w_obs / (theta * theta)
        # price residual = vega * d_iv = vega * theta^2 dy / (2 iv tau); in half-spreads
        scale_y = vega * theta * theta / (2.0 * iv * tau * half_spread)
        base = scale_y * scale_y
        base = np.where(np.isfinite(base), base, 0.0)
        if np.count_nonzero(base > 0) < 5:
            return None
        prev = self._prev
        warm = prev is not None and self._since_full < self._full_every - 1
        m0 = s0 = 0.0
        if self._m_x is None or self._s_x is None:
            cand_m, cand_s = _GRID_M, _GRID_S
            self._dm, self._ds = 0.25, 0.35
        else:
            m0, s0 = self._m_x / theta, self._s_x / theta
            g = 1 if warm else self._g
            off = np.arange(-g, g + 1, dtype=np.float64)
            mg, sg = np.meshgrid(m0 + off * self._dm, s0 * np.exp(off * self._ds), indexing="ij")
            cand_m, cand_s = mg.ravel(), np.clip(sg.ravel(), 1e-3, 50.0)
        w = base
        if prev is not None:
            # robust weights against the previous fit: a strike that turns rich or cheap is weighed
            # against the smile as it was, not against a least-squares fit that already bent to it
            w = self._weights(y - prev.total_variance(x) / (theta * theta), base)
            if np.count_nonzero(w) < 5:
                w = base
        if warm and prev is not None:
            # warm update: those weights, then one local search with them (two small solves
            # instead of a full robust fit)
            new = self._solve(z, y, w, cand_m, cand_s)
            moved = (new[3] != m0) or (new[4] != s0)
            best = new
            self._adapt(moved)
            self._since_full += 1
        else:
            best = self._solve(z, y, w, cand_m, cand_s)
            for _ in range(3):
                w = self._robust(z, y, base, best)
                if np.count_nonzero(w) < 5:
                    w = base
                    break
                best = self._solve(z, y, w, np.array([best[3]]), np.array([best[4]]))
            # a final local search with the robust weights, adapting the step for the next update
            if self._m_x is not None:
                off = np.arange(-self._g, self._g + 1, dtype=np.float64)
                mg, sg = np.meshgrid(
                    best[3] + off * self._dm, best[4] * np.exp(off * self._ds), indexing="ij"
                )
                new = self._solve(z, y, w, mg.ravel(), np.clip(sg.ravel(), 1e-3, 50.0))
                moved = (new[3] != best[3]) or (new[4] != best[4])
                best = new
                self._adapt(moved)
            self._since_full = 0
        a, c1, c2, m, s = best
        self._m_x, self._s_x = m * theta, s * theta
        rho = c1 / c2 if c2 > 0 else 0.0
        params = SviParams(a=a * theta * theta, b=c2 * theta, rho=rho, m=m * theta, sigma=s * theta)
        self._prev = params
        fit_w = np.maximum(params.total_variance(x), 1e-300)
        fit_iv = np.sqrt(fit_w / tau)
        used = w > 0
        ww = base[used]
        d_iv = (iv - fit_iv)[used] * np.sqrt(ww)
        rmse = float(np.sqrt(np.sum(d_iv * d_iv) / np.sum(ww))) if ww.size else math.nan
        return SviResult(params, w, rmse, int(np.count_nonzero(used)))

    @staticmethod
    def _eval(z: FloatArray, p: tuple[float, float, float, float, float]) -> FloatArray:
        a, c1, c2, m, s = p
        d = z - m
        out: FloatArray = a + c1 * d + c2 * np.sqrt(d * d + s * s)
        return out

    @staticmethod
    def _solve(
        z: FloatArray, y: FloatArray, w: FloatArray, cand_m: FloatArray, cand_s: FloatArray
    ) -> tuple[float, float, float, float, float]:
        """Best (a, c1, c2, m, s) over the candidates (weighted least squares, constrained)."""
        d = z[None, :] - cand_m[:, None]  # (G, N)
        root = np.sqrt(d * d + (cand_s * cand_s)[:, None])
        sw = np.sum(w)
        s1 = d @ w
        s2 = root @ w
        s11 = (d * d) @ w
        s12 = (d * root) @ w
        s22 = (root * root) @ w
        ty = float(np.dot(w, y))
        t1 = d @ (w * y)
        t2 = root @ (w * y)
        g = cand_m.size
        A = np.empty((g, 3, 3))
        A[:, 0, 0] = sw
        A[:, 0, 1] = A[:, 1, 0] = s1
        A[:, 0, 2] = A[:, 2, 0] = s2
        A[:, 1, 1] = s11
        A[:, 1, 2] = A[:, 2, 1] = s12
        A[:, 2, 2] = s22
        rhs = np.stack([np.full(g, ty), t1, t2], axis=1)
        A[:, [0, 1, 2], [0, 1, 2]] += 1e-12 * (1.0 + np.abs(A[:, [0, 1, 2], [0, 1, 2]]))
        try:
            sol = np.linalg.solve(A, rhs[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            sol = np.stack([np.full(g, ty / max(sw, 1e-300)), np.zeros(g), np.zeros(g)], axis=1)
        a, c1, c2 = sol[:, 0], sol[:, 1], sol[:, 2]
        # constraints: b >= 0, |rho| <= 0.999, minimum variance >= 0; a re-solved when clamped
        c2 = np.maximum(c2, 0.0)
        c1 = np.clip(c1, -0.999 * c2, 0.999 * c2)
        clamped = (c2 != sol[:, 2]) | (c1 != sol[:, 1])
        if clamped.any():
            a = np.where(clamped, (ty - c1 * s1 - c2 * s2) / max(sw, 1e-300), a)
        floor = -c2 * cand_s * np.sqrt(np.maximum(1.0 - (c1 / np.where(c2 > 0, c2, 1.0)) ** 2, 0.0))
        a = np.maximum(a, floor)
        # weighted SSE per candidate
        resid = y[None, :] - (a[:, None] + c1[:, None] * d + c2[:, None] * root)
        sse = (resid * resid) @ w
        i = int(np.argmin(sse))
        return float(a[i]), float(c1[i]), float(c2[i]), float(cand_m[i]), float(cand_s[i])
