"""Static no-arbitrage rules on executable quotes (bid when selling, ask when buying), after costs.

Every rule is exact over *all* strike combinations yet linear (or near-linear) in the number of
strikes, so that a 300-strike chain is checked in well under a millisecond:

* put-call parity (American, no dividend before expiry): ``S - K <= C - P <= S - K D``;
* box (American, from the parity bounds at two strikes): ``K2 D - K1 <= box <= K2 - K1 D``; the
  conditions separate into a term of ``K1`` and one of ``K2``, so a prefix maximum finds the best
  partner of every strike;
* verticals: monotonicity ``C(K1) >= C(K2)``, ``P(K2) >= P(K1)`` and slope bounds
  ``C(K1) - C(K2) <= K2 - K1``, ``P(K2) - P(K1) <= K2 - K1`` (valid for American options), for every
  pair, by prefix minima/maxima;
* butterflies (convexity in strike, American too): the body is sold at its bid against the cheapest
  pair of wings around it, i.e. the lower convex hull of the other strikes' asks evaluated at the
  body's strike (one hull per right, rebuilt without the body only where the body is a vertex);
* exercise value: a call offered below ``S_bid - K`` or a put below ``K - S_ask``.

``D`` is a conservative discount factor (``max_rate`` over the calendar time to the close): a
smaller ``D`` loosens the bounds. Violations against the underlying's quote (parity, exercise)
must also hold against the chain-implied forward (``S ~ D F``), because the underlying tick can lag the option quotes; the reported edge is the smaller of the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from agent.detector.signals import Finding, Leg, Severity, Side
from agent.domain import Right

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Book:
    """Executable quotes per strike: bids ``-inf`` where they cannot be hit, asks ``+inf`` where they
    cannot be lifted (missing, flagged or bad sides). Shape (2, n): row 0 calls, row 1 puts."""

    strikes: FloatArray
    bid: FloatArray
    ask: FloatArray
    bid_size: IntArray
    ask_size: IntArray
    multiplier: int
    commission: float  # per contract per leg, dollars
    stock_cost: float  # per share, dollars
    min_edge: float  # per unit, dollars
    discount: float  # conservative discount factor to expiry
    und_bid: float = math.nan
    und_ask: float = math.nan
    forward_spot: float = math.nan  # D * F from the chain, NaN if unknown
    quote_ts: IntArray | None = None  # quote_ts_ns per contract (0: unknown)
    max_leg_skew_ns: int = 0  # legs quoted further apart than this are not one trade (0: no check)


class _Combo(NamedTuple):  # a tuple: built by the hundred when one quote breaks a bound
    kind: str
    legs: tuple[tuple[int, int, Side, int], ...]  # (right row, strike index, side, quantity)
    edge: float  # per unit, dollars, after costs
    why_format: str
    why_args: tuple[object, ...]
    """The explanation, formatted only for the combinations that are reported (a broken quote can
    violate a bound with a hundred partners, and formatting them all was most of the cost)."""

    @property
    def why(self) -> str:
        return self.why_format.format(*self.why_args)


def _prefix_argmin(v: FloatArray) -> tuple[FloatArray, IntArray]:
    """For each j: ``min(v[:j])`` and its index (``inf``/-1 for j = 0)."""
    n = v.size
    out = np.full(n, np.inf)
    arg = np.full(n, -1, np.int64)
    if n < 2:
        return out, arg
    m = np.minimum.accumulate(v)
    idx = np.maximum.accumulate(np.where(v == m, np.arange(n), 0))
    out[1:], arg[1:] = m[:-1], idx[:-1]
    return out, arg


def _prefix_argmax(v: FloatArray) -> tuple[FloatArray, IntArray]:
    m, arg = _prefix_argmin(-v)
    return -m, arg


def _combos_parity_intrinsic(b: Book) -> list[_Combo]:
    out: list[_Combo] = []
    if not (math.isfinite(b.und_bid) and math.isfinite(b.und_ask) and math.isfinite(b.forward_spot)):
        return out
    m = b.multiplier
    c = b.commission / m
    s_cost = b.stock_cost
    k = b.strikes
    d = b.discount
    cb, pb = b.bid
    ca, pa = b.ask
    fs = b.forward_spot
    with np.errstate(invalid="ignore"):
        # conversion: sell call, buy put, buy stock: C - P <= S - K D (at the quote and the forward)
        e_rich = (cb - pa) - (max(b.und_ask, fs) - k * d) - 2 * c - s_cost
        # reversal: buy call, sell put, sell stock: C - P >= S - K
        e_cheap = (min(b.und_bid, fs) - k) - (ca - pb) - 2 * c - s_cost
        # exercise value: buy the option and exercise against the stock
        call_ex = (min(b.und_bid, fs) - k) - ca - c - s_cost
        put_ex = (k - max(b.und_ask, fs)) - pa - c - s_cost
    thr = b.min_edge / m
    for j in np.flatnonzero(e_rich > thr).tolist():
        why = "synthetic rich at {:g}: call bid {:.2f} - put ask {:.2f} exceeds S ask {:.2f} - K*D (forward S~{:.2f})"
        args: tuple[object, ...] = (k[j], cb[j], pa[j], b.und_ask, fs)
        out.append(_Combo("parity", ((0, j, "SELL", 1), (1, j, "BUY", 1)), float(e_rich[j]) * m, why, args))
    for j in np.flatnonzero(e_cheap > thr).tolist():
        why = "synthetic cheap at {:g}: call ask {:.2f} - put bid {:.2f} below S bid {:.2f} - K (forward S~{:.2f})"
        args = (k[j], ca[j], pb[j], b.und_bid, fs)
        out.append(_Combo("parity", ((0, j, "BUY", 1), (1, j, "SELL", 1)), float(e_cheap[j]) * m, why, args))
    for j in np.flatnonzero(call_ex > thr).tolist():
        why = "call {:g} offered at {:.2f}, below its exercise value {:.2f}"
        args = (k[j], ca[j], b.und_bid - k[j])
        out.append(_Combo("intrinsic", ((0, j, "BUY", 1),), float(call_ex[j]) * m, why, args))
    for j in np.flatnonzero(put_ex > thr).tolist():
        why = "put {:g} offered at {:.2f}, below its exercise value {:.2f}"
        args = (k[j], pa[j], k[j] - b.und_ask)
        out.append(_Combo("intrinsic", ((1, j, "BUY", 1),), float(put_ex[j]) * m, why, args))
    return out


def _combos_box(b: Book) -> list[_Combo]:
    m, k, d = b.multiplier, b.strikes, b.discount
    c4 = 4 * b.commission / m
    cb, pb = b.bid
    ca, pa = b.ask
    thr = b.min_edge / m
    out: list[_Combo] = []
    with np.errstate(invalid="ignore"):
        # long box (buy C1, sell C2, buy P2, sell P1) costs at least K2 D - K1
        left_long, arg_long = _prefix_argmax(pb - ca - k)
        e_long = left_long + (cb - pa + k * d) - c4
        # short box (sell C1, buy C2, sell P2, buy P1) pays at most K2 - K1 D
        left_short, arg_short = _prefix_argmax(cb - pa + k * d)
        e_short = left_short + (pb - ca - k) - c4
    # a broken quote can make a box with every other strike: plain Python values in the loops
    kl = k.tolist()
    js = np.flatnonzero(e_long > thr)
    why = "long box {:g}/{:g} costs less than its American floor K2*D - K1"
    for j, i, e in zip(js.tolist(), arg_long[js].tolist(), e_long[js].tolist(), strict=True):
        legs: tuple[tuple[int, int, Side, int], ...] = (
            (0, i, "BUY", 1),
            (0, j, "SELL", 1),
            (1, j, "BUY", 1),
            (1, i, "SELL", 1),
        )
        out.append(_Combo("box", legs, e * m, why, (kl[i], kl[j])))
    js = np.flatnonzero(e_short > thr)
    why = "short box {:g}/{:g} pays more than its American cap K2 - K1*D"
    for j, i, e in zip(js.tolist(), arg_short[js].tolist(), e_short[js].tolist(), strict=True):
        legs = ((0, i, "SELL", 1), (0, j, "BUY", 1), (1, j, "SELL", 1), (1, i, "BUY", 1))
        out.append(_Combo("box", legs, e * m, why, (kl[i], kl[j])))
    return out


def _combos_vertical(b: Book) -> list[_Combo]:
    m, k = b.multiplier, b.strikes
    c2 = 2 * b.commission / m
    thr = b.min_edge / m
    out: list[_Combo] = []
    cb, pb = b.bid
    ca, pa = b.ask
    with np.errstate(invalid="ignore"):
        # calls, i < j: C(i) >= C(j): buy C(i) at ask, sell C(j) at bid
        best, arg = _prefix_argmin(ca)
        e = cb - best - c2
        for j in np.flatnonzero(e > thr):
            i = int(arg[j])
            why = "call {:g} bid {:.2f} above call {:g} ask {:.2f} (calls must fall with strike)"
            args: tuple[object, ...] = (k[j], cb[j], k[i], ca[i])
            out.append(
                _Combo("vertical", ((0, int(j), "SELL", 1), (0, i, "BUY", 1)), float(e[j]) * m, why, args)
            )
        # calls, i < j: C(i) - C(j) <= K(j) - K(i): sell C(i), buy C(j)
        best, arg = _prefix_argmax(cb + k)
        e = best - (ca + k) - c2
        for j in np.flatnonzero(e > thr):
            i = int(arg[j])
            why = "call spread {:g}/{:g} bid {:.2f} above its width {:g}"
            args = (k[i], k[j], cb[i] - ca[j], k[j] - k[i])
            out.append(
                _Combo("vertical", ((0, i, "SELL", 1), (0, int(j), "BUY", 1)), float(e[j]) * m, why, args)
            )
        # puts, i < j: P(j) >= P(i): sell P(i) at bid, buy P(j) at ask
        best, arg = _prefix_argmax(pb)
        e = best - pa - c2
        for j in np.flatnonzero(e > thr):
            i = int(arg[j])
            why = "put {:g} bid {:.2f} above put {:g} ask {:.2f} (puts must rise with strike)"
            args = (k[i], pb[i], k[j], pa[j])
            out.append(
                _Combo("vertical", ((1, i, "SELL", 1), (1, int(j), "BUY", 1)), float(e[j]) * m, why, args)
            )
        # puts, i < j: P(j) - P(i) <= K(j) - K(i): sell P(j), buy P(i)
        best, arg = _prefix_argmin(pa - k)
        e = (pb - k) - best - c2
        for j in np.flatnonzero(e > thr):
            i = int(arg[j])
            why = "put spread {:g}/{:g} bid {:.2f} above its width {:g}"
            args = (k[i], k[j], pb[j] - pa[i], k[j] - k[i])
            out.append(
                _Combo("vertical", ((1, int(j), "SELL", 1), (1, i, "BUY", 1)), float(e[j]) * m, why, args)
            )
    return out


def lower_hull(x: FloatArray, y: FloatArray, idx: IntArray) -> IntArray:
    """Vertices (from ``idx``, ascending ``x``) of the lower convex hull of the points ``idx``.

    Points on or above the chord of their neighbours are dropped, all at once, until none is:
    a point above a chord of two others is never a vertex, so each pass keeps the same hull.
    """
    cur = idx
    while cur.size > 2:
        xs, ys = x[cur], y[cur]
        xl, xm, xr = xs[:-2], xs[1:-1], xs[2:]
        yl, ym, yr = ys[:-2], ys[1:-1], ys[2:]
        chord = yl + (yr - yl) * (xm - xl) / (xr - xl)
        drop = ym >= chord - 1e-12 * (1.0 + np.abs(chord))
        if not drop.any():
            break
        keep = np.ones(cur.size, bool)
        keep[1:-1] = ~drop
        cur = cur[keep]
    return cur


def _best_chord(k: FloatArray, ask: FloatArray, pts: IntArray, j: int) -> tuple[int, int, float]:
    """The wings ``i < j < m`` among ``pts`` (excluding ``j``) whose ask chord at ``K_j`` is lowest.

    The lowest chord joins a vertex of the lower hull of the points left of ``K_j`` to one of the
    points right of it, so only those hull vertices are paired. ``(-1, -1, inf)`` if none."""
    kj = k[j]
    lc = lower_hull(k, ask, pts[k[pts] < kj])
    rc = lower_hull(k, ask, pts[k[pts] > kj])
    if lc.size == 0 or rc.size == 0:
        return -1, -1, math.inf
    kl, kr = k[lc][:, None], k[rc][None, :]
    al, ar = ask[lc][:, None], ask[rc][None, :]
    chords = al + (ar - al) * (kj - kl) / (kr - kl)
    a, bb = np.unravel_index(int(np.argmin(chords)), chords.shape)
    return int(lc[a]), int(rc[bb]), float(chords[a, bb])


def cheapest_wings(
    k: FloatArray, ask: FloatArray, bodies: IntArray | None = None
) -> tuple[IntArray, IntArray, FloatArray]:
    """For every strike j (or those in ``bodies``): the wings ``i < j < m`` whose ask chord at
    ``K_j`` is lowest, and that value (``inf``/-1 where no pair exists). Asks of ``inf`` are absent."""
    n = k.size
    left = np.full(n, -1, np.int64)
    right = np.full(n, -1, np.int64)
    val = np.full(n, np.inf)
    pts = np.flatnonzero(np.isfinite(ask))
    if pts.size < 2:
        return left, right, val
    for j in range(n) if bodies is None else bodies.tolist():
        left[j], right[j], val[j] = _best_chord(k, ask, pts, int(j))
    return left, right, val


def butterfly_candidates(k: FloatArray, bid: FloatArray, ask: FloatArray, need: float) -> IntArray:
    """Bodies ``j`` that may sell at ``bid - need`` above some pair of wings' asks: those above the
    lower convex hull of *all* asks (one hull, evaluated at every strike by interpolation).

    The hull of all asks lies below the hull of the asks without ``j``, so this is a necessary
    condition; it is exact for bodies that are not hull vertices. On a clean chain it is empty."""
    pts = np.flatnonzero(np.isfinite(ask))
    if pts.size < 2:
        return np.zeros(0, np.int64)
    hull = lower_hull(k, ask, pts)
    hk = k[hull]
    env = np.interp(k, hk, ask[hull])
    with np.errstate(invalid="ignore"):
        cand = (k > hk[0]) & (k < hk[-1]) & (bid - need > env)
    return np.flatnonzero(cand)


WingsFn = Callable[
    [FloatArray, FloatArray, FloatArray, float], tuple[IntArray, IntArray, IntArray, FloatArray]
]
"""``(strikes, bids, asks, need) -> (bodies, left, right, chord)``: the butterfly bodies that may
sell at ``bid - need`` above a pair of wings, and for each (indexed by strike) the wings whose
ask chord at the body's strike is lowest, and that chord."""


def butterfly_wings(
    k: FloatArray, bid: FloatArray, ask: FloatArray, need: float
) -> tuple[IntArray, IntArray, IntArray, FloatArray]:
    """:func:`butterfly_candidates`, then :func:`cheapest_wings` of those bodies (a :data:`WingsFn`;
    ``agent.detector._kernels.butterfly_wings`` is the compiled one)."""
    bodies = butterfly_candidates(k, bid, ask, need)
    if bodies.size == 0:
        n = k.size
        return bodies, np.full(n, -1, np.int64), np.full(n, -1, np.int64), np.full(n, np.inf)
    li, ri, chord = cheapest_wings(k, ask, bodies)
    return bodies, li, ri, chord


def _combos_butterfly(b: Book, wings: WingsFn = butterfly_wings) -> list[_Combo]:
    m, k = b.multiplier, b.strikes
    c = b.commission / m
    thr = b.min_edge / m
    out: list[_Combo] = []
    cents = np.rint(k * 100.0).astype(np.int64)
    for r, name in ((0, "call"), (1, "put")):
        bid, ask = b.bid[r], b.ask[r]
        bodies, li, ri, chord = wings(k, bid, ask, 2 * c + thr)
        if bodies.size == 0:
            continue
        for j in bodies.tolist():
            if not bid[j] - chord[j] - 2 * c > thr:
                continue
            i, mm = int(li[j]), int(ri[j])
            qi, qm = int(cents[mm] - cents[j]), int(cents[j] - cents[i])
            g = math.gcd(qi, qm)
            qi, qm = qi // g, qm // g
            qj = qi + qm
            edge = (qj * bid[j] - qi * ask[i] - qm * ask[mm] - 2 * qj * c) * m
            if edge <= b.min_edge:
                continue
            why = (
                "{} butterfly {:g}/{:g}/{:g}: body bid {:.2f} above the wings' "
                "ask {:.2f} at that strike (prices must be convex in strike)"
            )
            legs: tuple[tuple[int, int, Side, int], ...] = (
                (r, j, "SELL", qj),
                (r, i, "BUY", qi),
                (r, mm, "BUY", qm),
            )
            args = (name, k[i], k[j], k[mm], bid[j], chord[j])
            out.append(_Combo("butterfly", legs, float(edge), why, args))
    return out


_SIMPLICITY = {"intrinsic": 0, "vertical": 1, "parity": 2, "butterfly": 3, "box": 4}


def _group(
    b: Book, combos: list[_Combo], covered: set[tuple[int, int]], fold: bool
) -> list[tuple[str, str, _Combo]]:
    """One combination per culprit contract and kind (see :func:`find_arbitrage`); ``covered``
    collects the legs of what is kept."""
    k = b.strikes
    by_kind: dict[str, list[_Combo]] = {}
    for cmb in combos:
        by_kind.setdefault(cmb.kind, []).append(cmb)
    kept: list[tuple[str, str, _Combo]] = []
    for kind in sorted(by_kind, key=lambda kd: _SIMPLICITY[kd]):
        items = by_kind[kind]
        counts: dict[tuple[int, int], int] = {}
        for cmb in items:
            for r, i, _, _ in cmb.legs:
                counts[(r, i)] = counts.get((r, i), 0) + 1
        # grouped by the culprit's (row, strike index); a parity anchor names the strike alone
        groups: dict[tuple[int, int], tuple[_Combo, tuple[int, int]]] = {}
        for cmb in items:
            # the first leg with the largest (count, already covered, sold): max() without a key call
            culprit, top = (-1, -1), (-1, False, False)
            for r, i, side, _ in cmb.legs:
                ri = (r, i)
                rank = (counts[ri], ri in covered, side == "SELL")
                if rank > top:
                    culprit, top = ri, rank
            key = (-1, culprit[1]) if kind == "parity" else culprit
            if key not in groups or cmb.edge > groups[key][0].edge:
                groups[key] = (cmb, culprit)
        new_cover: set[tuple[int, int]] = set()
        for key, (cmb, culprit) in sorted(groups.items(), key=lambda item: -item[1][0].edge):
            if fold and culprit in covered:
                continue
            anchor = f"{k[key[1]]:g}" if key[0] < 0 else f"{k[key[1]]:g}{'CP'[key[0]]}"
            kept.append((kind, anchor, cmb))
            new_cover.update((r, i) for r, i, _, _ in cmb.legs)
        covered |= new_cover
    return kept


def leg_skew_ns(b: Book, legs: tuple[tuple[int, int, Side, int], ...]) -> int:
    """Largest difference of the legs' quote stamps (stamps of 0, unknown, are left out)."""
    if b.quote_ts is None:
        return 0
    stamps = [int(b.quote_ts[r, i]) for r, i, _, _ in legs if b.quote_ts[r, i] > 0]
    return max(stamps) - min(stamps) if len(stamps) > 1 else 0


def _skew(stamps: list[list[int]], legs: tuple[tuple[int, int, Side, int], ...]) -> int:
    """:func:`leg_skew_ns` on the stamps as nested lists."""
    ts = [t for t in (stamps[r][i] for r, i, _, _ in legs) if t > 0]
    return max(ts) - min(ts) if len(ts) > 1 else 0


def find_arbitrage(
    b: Book,
    *,
    fold: bool = True,
    families: tuple[bool, bool, bool, bool] = (True, True, True, True),
    wings: WingsFn = butterfly_wings,
) -> tuple[list[Finding], int]:
    """Every static arbitrage of the book, one finding per culprit contract and kind.

    Combinations of a kind are grouped by the contract that appears in most of them (ties: the
    first sold leg), keeping the best edge per group. With ``fold``, a finding whose culprit is a
    leg of a finding of a simpler kind (intrinsic < vertical < parity < butterfly < box) is dropped:
    one mispriced contract is one signal. Returns the findings and the number of violating
    combinations before grouping.

    A combination whose legs were quoted more than ``b.max_leg_skew_ns`` apart (``quote_ts_ns``)
    is not an arbitrage: the quotes never stood at the same moment as far as the book knows. It is
    reported as a ``leg_skew`` quote-quality finding instead (anchor ``kind:culprit``), with the
    legs and the edge they *would* have.

    ``families`` (parity and exercise value, vertical, butterfly, box) skips the families a screen
    (``agent.detector._kernels.arbitrage_screen``) has shown to have no violating combination;
    ``wings`` finds the butterflies' bodies and wings (:data:`WingsFn`).
    """
    parity, vertical, butterfly, box = families
    combos = (
        (_combos_parity_intrinsic(b) if parity else [])
        + (_combos_vertical(b) if vertical else [])
        + (_combos_butterfly(b, wings) if butterfly else [])
        + (_combos_box(b) if box else [])
    )
    if not combos:
        return [], 0
    skewed: list[tuple[_Combo, int]] = []
    if b.quote_ts is not None and b.max_leg_skew_ns > 0:
        synced: list[_Combo] = []
        stamps = b.quote_ts.tolist()  # plain ints: indexing them is a fraction of numpy's cost
        for cmb in combos:
            gap = _skew(stamps, cmb.legs)
            if gap > b.max_leg_skew_ns:
                skewed.append((cmb, gap))
            else:
                synced.append(cmb)
        combos = synced
    covered: set[tuple[int, int]] = set()  # contracts that are legs of simpler findings
    findings: list[Finding] = []
    for kind, anchor, cmb in _group(b, combos, covered, fold):
        legs = tuple(_leg(b, r, i, side, q) for r, i, side, q in cmb.legs)
        units = min((leg.displayed_size // max(leg.quantity, 1) for leg in legs), default=0)
        findings.append(
            Finding(
                kind=kind,
                anchor=anchor,
                legs=legs,
                edge=cmb.edge,
                score=cmb.edge * max(units, 1),
                explanation=f"{cmb.why}; edge ${cmb.edge:.2f}/unit after costs, {units} unit(s) shown",
                severity=Severity.CRITICAL,
                max_units=units,
            )
        )
    if skewed:
        gaps = {id(cmb): gap for cmb, gap in skewed}
        for kind, anchor, cmb in _group(b, [cmb for cmb, _ in skewed], covered, fold):
            legs = tuple(_leg(b, r, i, side, q) for r, i, side, q in cmb.legs)
            gap_s = gaps[id(cmb)] / 1e9
            findings.append(
                Finding(
                    kind="leg_skew",
                    anchor=f"{kind}:{anchor}",
                    legs=legs,
                    edge=cmb.edge,
                    score=gap_s,
                    explanation=(
                        f"not an arbitrage: {cmb.why}, but its legs were quoted {gap_s:.1f}s apart "
                        f"(apparent edge ${cmb.edge:.2f}/unit); quotes of different moments"
                    ),
                    severity=Severity.WARN,
                    contracts=tuple(leg.key for leg in legs),
                )
            )
    return findings, len(combos) + len(skewed)


def _leg(b: Book, r: int, i: int, side: Side, qty: int) -> Leg:
    buy = side == "BUY"
    price = float(b.ask[r, i] if buy else b.bid[r, i])
    size = int(b.ask_size[r, i] if buy else b.bid_size[r, i])
    return Leg(float(b.strikes[i]), Right.CALL if r == 0 else Right.PUT, side, price, qty, size)
