"""The detector: folds chain updates into its book and evaluates every rule on each update.

``Detector.on_chain`` takes one chain update, several (coalesced: folded, then evaluated once),
or a whole :class:`~agent.domain.ChainBook`, with the underlying at that moment and the market
time, and returns the signals that changed (see :mod:`agent.detector.tracker`), the smile fit and
its own timings. It is a pure library: no I/O, no clock except ``time.perf_counter_ns`` to report
how long it took.

Order of one evaluation:

1. quote quality first: malformed (NaN, negative), crossed or locked, halted or feed-stale quotes,
   and quotes found stale here (the underlying moved enough that the quote should have moved by
   ``stale_min_move_ticks`` and it did not for ``stale_grace_ns``) are findings of their own and are
   removed from everything below: no arbitrage signal is ever built on them;
2. the forward from put-call parity across strikes (weighted median and a Tukey pass, at a fixed
   discount), falling back to the underlying when fewer than three strikes are two-sided;
3. implied vols of the out-of-the-money mids and a robust SVI fit (:mod:`agent.detector.smile`);
   model prices and greeks of every contract at the fitted vol;
4. static arbitrage (:mod:`agent.detector.rules`), then smile outliers on the contracts that are
   not legs of an arbitrage, wide spreads, meaningful zero bids, volume spikes, trades through the
   touch, and IV jumps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.detector import _kernels
from agent.detector.config import DetectorConfig
from agent.detector.rules import Book, find_arbitrage
from agent.detector.signals import Finding, Leg, Severity, Side, Signal, SmileFit
from agent.detector.smile import SviFitter, SviParams, SviResult, median
from agent.detector.state import RIGHTS, ChainState
from agent.detector.tracker import SignalTracker
from agent.domain import ChainBook, ChainUpdate, QuoteFlag, Right, UnderlyingTick
from agent.pricing import MIN_TAU_YEARS, black76_greeks, black76_price, implied_vol_and_greeks
from agent.session import Session

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

NS_PER_CALENDAR_YEAR = 365 * 24 * 3600 * 1_000_000_000
_TUKEY_C = 4.685
_SVI_MIN_USED = 5
"""A smile needs ``smile_min_points`` quotes to be fitted on, and at least this many of them kept by
the robust fit (SVI's five parameters): late in the day, on six quotes, the one a fit sets aside
is often the rich or cheap strike it exists to find."""
_FEED_BAD = int(QuoteFlag.HALTED | QuoteFlag.STALE)
_CALL_ROW = np.array([[True], [False]])
_BAD_VALUE = int(QuoteFlag.BAD_VALUE)
_UNUSABLE_BID = int(QuoteFlag.NO_BID | QuoteFlag.BAD_VALUE | QuoteFlag.HALTED)
_UNUSABLE_ASK = int(QuoteFlag.NO_ASK | QuoteFlag.BAD_VALUE | QuoteFlag.HALTED)


@dataclass(frozen=True, slots=True)
class DetectorOutput:
    """What one evaluation produced.

    ``eval_ns`` is the time spent in ``on_chain``; ``lag_ns`` the time from ``received_ns`` (the
    ``perf_counter_ns`` stamp taken when the first coalesced update arrived) to the end of the
    evaluation, or ``eval_ns`` when no stamp was given. ``forward`` is ``nan`` when unknown.
    """

    signals_changed: list[Signal]
    smile: SmileFit | None
    eval_ns: int
    lag_ns: int
    updates: int
    forward: float
    forward_method: str
    arbitrage_combinations: int = 0


def _published_fit(
    res: SviResult,
    tau: float,
    forward: float,
    strikes: tuple[float, ...],
    fit_iv: FloatArray,
    method: str,
    fitted: tuple[float, float],
) -> SmileFit:
    """The fit as the detector publishes it: SVI parameters and the curve sampled at the strikes
    inside the fitted range ``fitted`` (beyond it the detector holds the vol flat for its own use,
    which is no smile to draw)."""
    p = res.params
    inside = [i for i, k in enumerate(strikes) if fitted[0] <= k <= fitted[1]]
    strikes = tuple(strikes[i] for i in inside)
    fit_iv = fit_iv[inside]
    return SmileFit(
        model="svi",
        params={"a": p.a, "b": p.b, "rho": p.rho, "m": p.m, "sigma": p.sigma, "tau": tau},
        forward=forward,
        strikes=strikes,
        ivs=tuple(fit_iv.tolist()),
        rmse=res.rmse_vol,
        n_used=res.n_used,
        forward_method=method,
    )


def _und_quote(underlying: UnderlyingTick | float | None, fallback: float) -> tuple[float, float, float]:
    """``(bid, ask, mid)`` of the underlying; a lone price counts for both sides; NaN if unknown."""
    if isinstance(underlying, UnderlyingTick):
        b, a, last = underlying.bid, underlying.ask, underlying.last
        if math.isfinite(b) and math.isfinite(a) and 0 < b <= a:
            return b, a, 0.5 * (b + a)
        if math.isfinite(last) and last > 0:
            return last, last, last
    elif isinstance(underlying, float | int) and math.isfinite(underlying) and underlying > 0:
        v = float(underlying)
        return v, v, v
    if math.isfinite(fallback) and fallback > 0:
        return fallback, fallback, fallback
    return math.nan, math.nan, math.nan


class Detector:
    """Incremental anomaly detector of one underlying's 0DTE chain (see the module docstring)."""

    def __init__(self, config: DetectorConfig, session: Session, *, compiled: bool | None = None) -> None:
        """``compiled``: evaluate with the numba kernels (:mod:`agent.detector._kernels`; same
        signals, a fraction of the time). ``None`` (default): when they compile (a warning and
        the numpy path otherwise); ``False``: always the numpy path."""
        self.config = config
        self.session = session
        self.compiled = compiled is not False and _kernels.detector_kernels_ready()
        if compiled and not self.compiled:
            raise RuntimeError("the compiled detector kernels are not available (see the warning logged)")
        self._state = ChainState()
        self._smile = SviFitter(config.smile_refit_grid, config.smile_full_refit_every)
        self._tracker = SignalTracker(config.resolve_after_evals, config.resolve_after_ns)
        self._last_eval_ns: int | None = None
        self._strikes_cache: tuple[FloatArray, tuple[float, ...]] = (np.zeros(0), ())
        self._arb_strikes: FloatArray = np.zeros(0)
        """Strikes of the legs of the previous evaluation's arbitrage findings: left out of the
        smile fit (a handful of points at the close would bend towards a broken quote)."""

    def _strikes_of(self, strikes: FloatArray) -> tuple[float, ...]:
        """``strikes`` as a tuple, reused while the book's strike array is the same object (the
        book replaces it on every layout change and never writes into it)."""
        if self._strikes_cache[0] is not strikes:
            self._strikes_cache = (strikes, tuple(strikes.tolist()))
        return self._strikes_cache[1]

    def active_signals(self) -> list[Signal]:
        """Every signal that is new or active (not resolved) after the last evaluation."""
        return self._tracker.active()

    def on_chain(
        self,
        chain: ChainUpdate | ChainBook | Sequence[ChainUpdate],
        underlying: UnderlyingTick | float | None,
        now_ns: int,
        *,
        received_ns: int | None = None,
    ) -> DetectorOutput:
        t0 = time.perf_counter_ns()
        if isinstance(chain, ChainBook):
            updates: Sequence[ChainUpdate] = (chain.as_update(),)
        elif isinstance(chain, ChainUpdate):
            updates = (chain,)
        else:
            updates = chain
        st = self._state
        old_expiry = st.expiry
        und_fallback = next(
            (u.underlying for u in reversed(updates) if math.isfinite(u.underlying) and u.underlying > 0),
            st.underlying,
        )
        s_bid, s_ask, s_mid = _und_quote(underlying, und_fallback)
        # the reference of "the underlying moved" is the level the chain was quoted against when the
        # feed says so (the simulator, conflated streams), else the underlying quote's mid
        ref = und_fallback if math.isfinite(und_fallback) and und_fallback > 0 else s_mid
        st.apply(updates, now_ns, ref)
        changed: list[Signal] = []
        if old_expiry and st.expiry != old_expiry:
            changed.extend(self._tracker.resolve_all())
            self._smile.reset()
            self._arb_strikes = np.zeros(0)
        if st.layout_changed:
            self._smile.reset() if st.n < 3 else None
        evaluate = self._evaluate_compiled if self.compiled else self._evaluate
        findings, smile, forward, method, n_combos = evaluate(now_ns, s_bid, s_ask, s_mid, ref)
        changed.extend(self._tracker.update(findings, st.expiry, now_ns))
        self._last_eval_ns = now_ns
        t1 = time.perf_counter_ns()
        return DetectorOutput(
            signals_changed=changed,
            smile=smile,
            eval_ns=t1 - t0,
            lag_ns=t1 - (received_ns if received_ns is not None else t0),
            updates=len(updates),
            forward=forward,
            forward_method=method,
            arbitrage_combinations=n_combos,
        )

    # ------------------------------------------------------------------ evaluation

    def _costs_and_time(self, now_ns: int, multiplier: int) -> tuple[float, float, float]:
        """Commission per share, time to expiry (trading years) and the bounds' discount factor."""
        t_cal = max(self.session.close_ns - now_ns, 0) / NS_PER_CALENDAR_YEAR
        return (
            self.config.commission_per_contract / multiplier,
            self.session.tau(now_ns),
            math.exp(-self.config.max_rate * t_cal),
        )

    def _evaluate(
        self, now_ns: int, s_bid: float, s_ask: float, s_mid: float, s_ref: float
    ) -> tuple[list[Finding], SmileFit | None, float, str, int]:
        cfg, st = self.config, self._state
        n = st.n
        if n == 0 or now_ns >= self.session.close_ns:
            return [], None, math.nan, "none", 0
        mult = st.multiplier
        com, tau, disc = self._costs_and_time(now_ns, mult)
        k = st.strikes
        findings: list[Finding] = []

        # 1. quote quality
        bid_ok, ask_ok, bad = st.usable()
        with np.errstate(invalid="ignore"):
            two = bid_ok & ask_ok
            crossed = (two & (st.bid > st.ask)) | (st.present & ((st.flags & int(QuoteFlag.CROSSED)) != 0))
            locked = (two & (st.bid == st.ask)) | (st.present & ((st.flags & int(QuoteFlag.LOCKED)) != 0))
        feed_bad = st.present & ((st.flags & _FEED_BAD) != 0)
        unclean = bad | crossed | locked | feed_bad
        clean_two = two & ~unclean
        for r, i in zip(*np.nonzero(bad), strict=True):
            findings.append(self._bad_quote(int(r), int(i)))
        for r, i in zip(*np.nonzero((crossed | locked) & ~bad), strict=True):
            findings.append(self._crossed(int(r), int(i), com))

        # 2. forward
        forward, method = self._forward(clean_two, disc, s_mid)
        # 3. implied vols (OTM mids) and smile
        greeks = None
        smile: SmileFit | None = None
        fit_iv: FloatArray | None = None
        inside = np.zeros(n, bool)
        k_lo, k_hi = -math.inf, math.inf
        iv_otm = np.full(n, np.nan)
        if math.isfinite(forward):
            otm_row = np.where(k >= forward, 0, 1)
            cols = np.arange(n)
            ok_otm = clean_two[otm_row, cols]
            mid = 0.5 * (st.bid[otm_row, cols] + st.ask[otm_row, cols])
            idx = np.flatnonzero(ok_otm)
            if idx.size:
                # warm start from the previous evaluation's vols (same answer, a fifth of the cost)
                guess = st.history.iv_prev[otm_row[idx], idx]
                ca = implied_vol_and_greeks(
                    mid[idx], forward, k[idx], tau, otm_row[idx] == 0, disc, guess=guess
                )
                good = ca.reason == 0
                iv_otm[idx[good]] = ca.vol[good]
                in_fit = good & ~self._fit_excluded(k)[idx]
                fit_idx = idx[in_fit]
                if fit_idx.size >= cfg.smile_min_points:
                    half = np.maximum(
                        0.5 * (st.ask[otm_row[fit_idx], fit_idx] - st.bid[otm_row[fit_idx], fit_idx]),
                        0.5 * st.tick,
                    )
                    x = np.log(k[fit_idx] / forward)
                    res = self._smile.fit(x, iv_otm[fit_idx], tau, ca.greeks.vega[in_fit], half)
                    if res is not None and res.n_used >= _SVI_MIN_USED:
                        used_k = k[fit_idx][res.weights > 0]
                        k_lo, k_hi = float(used_k.min()), float(used_k.max())
                        inside = (k >= k_lo) & (k <= k_hi)  # no extrapolation
                        # flat beyond the fitted strikes: a few points at the close leave the wings
                        # of the curve free to steepen, and a steep wing gives a far, nearly
                        # worthless quote a delta large enough to be "stale" on a cent's move
                        x_all = np.log(np.clip(k, k_lo, k_hi) / forward)
                        w_all = np.maximum(res.params.total_variance(x_all), 1e-300)
                        fit_iv = np.sqrt(w_all / tau)
                        smile = _published_fit(
                            res, tau, forward, self._strikes_of(k), fit_iv, method, (k_lo, k_hi)
                        )
                if fit_iv is None and good.any():
                    fit_iv = np.full(n, float(np.median(ca.vol[good])))
            if fit_iv is not None:
                greeks = black76_greeks(forward, k[None, :], tau, fit_iv[None, :], _CALL_ROW, disc)

        # stale quotes (need the fitted vols): the value each unchanged quote should have now, against
        # its value when it last changed (a full revaluation with the smile moving with the forward,
        # so the skew's effect on an out-of-the-money delta and a jump's gamma are both in it)
        stale = np.zeros((2, n), bool)
        suspect = np.zeros((2, n), bool)
        h = st.history
        if greeks is not None and fit_iv is not None and math.isfinite(s_ref) and s_ref > 0:
            ds = s_ref - h.ref_und
            with np.errstate(invalid="ignore", divide="ignore"):
                cand = st.present & ~st.price_changed & (np.abs(ds) > 0)
                move = np.zeros((2, n))
                if cand.any():
                    f_ref = forward * h.ref_und / s_ref
                    if smile is not None:
                        sp = smile.params
                        # the smile as it was, in moneyness (flat beyond the fitted strikes as now)
                        k_then = np.clip(k[None, :] * forward / f_ref, k_lo, k_hi)
                        w_ref = SviParams(sp["a"], sp["b"], sp["rho"], sp["m"], sp["sigma"]).total_variance(
                            np.log(k_then / forward)
                        )
                        vol_ref = np.sqrt(np.maximum(w_ref, 1e-300) / tau)
                    else:
                        vol_ref = np.broadcast_to(fit_iv[None, :], (2, n))
                    then = black76_price(f_ref, k[None, :], tau, vol_ref, _CALL_ROW, disc)
                    move = np.where(cand, np.abs(greeks.price - then), 0.0)
                should = cand & (move >= cfg.stale_min_move_ticks * st.tick)
            start = should & (h.moved_since_ns < 0)
            h.moved_since_ns[start] = now_ns
            h.moved_since_ns[~should] = -1
            stale = should & (now_ns - h.moved_since_ns >= cfg.stale_grace_ns) & ~unclean
            # a quote that should have moved is no leg of an arbitrage even before it is reported
            suspect = should & ~stale
            for r, i in zip(*np.nonzero(stale), strict=True):
                findings.append(self._stale(int(r), int(i), float(move[r, i]), float(ds[r, i]), now_ns))
        good_mask = ~(unclean | stale)
        trade_mask = good_mask & ~suspect

        # 4. arbitrage on clean executable quotes
        book = Book(
            strikes=k,
            bid=np.where(bid_ok & trade_mask, st.bid, -np.inf),
            ask=np.where(ask_ok & trade_mask, st.ask, np.inf),
            bid_size=st.bid_size,
            ask_size=st.ask_size,
            multiplier=mult,
            commission=cfg.commission_per_contract,
            stock_cost=cfg.stock_cost_per_share,
            min_edge=cfg.min_edge_per_unit,
            discount=disc,
            und_bid=s_bid,
            und_ask=s_ask,
            forward_spot=forward * disc if math.isfinite(forward) else math.nan,
            quote_ts=st.asof,
            max_leg_skew_ns=cfg.max_leg_skew_ns,
        )
        arb, n_combos = find_arbitrage(book, fold=cfg.fold_related)
        findings.extend(arb)
        in_arb = np.zeros((2, n), bool)
        for f in arb:
            for leg in f.legs:
                in_arb[0 if leg.right is Right.CALL else 1, int(np.searchsorted(k, leg.strike))] = True
        self._arb_strikes = k[in_arb.any(axis=0)]

        if greeks is not None:
            # out-of-the-money options only: an in-the-money price adds nothing to the smile but the
            # forward's noise (its deviation from the OTM one is a parity question)
            otm = np.stack([k >= forward, k <= forward])
            within = inside[None, :] & otm & good_mask & ~in_arb
            findings.extend(
                self._smile_outliers(greeks.price, greeks.vega, bid_ok & within, ask_ok & within, com)
            )
            findings.extend(self._zero_bids(greeks.price, bid_ok, ask_ok & good_mask))
        findings.extend(self._wide_spreads(clean_two))
        quiet = unclean | stale | in_arb  # already explained: no relative or flow finding on them
        findings.extend(self._flow(now_ns, quiet))
        findings.extend(self._iv_jumps(iv_otm, forward, quiet))
        return findings, smile, forward, method, n_combos

    def _evaluate_compiled(
        self, now_ns: int, s_bid: float, s_ask: float, s_mid: float, s_ref: float
    ) -> tuple[list[Finding], SmileFit | None, float, str, int]:
        """:meth:`_evaluate` on the compiled kernels: the same steps, masks and state updates in a
        handful of fused passes; findings are built by the same code (arbitrage by the rules'
        own numpy code, run only for the families the screen says can fire)."""
        cfg, st = self.config, self._state
        n = st.n
        if n == 0 or now_ns >= self.session.close_ns:
            return [], None, math.nan, "none", 0
        mult = st.multiplier
        com, tau, disc = self._costs_and_time(now_ns, mult)
        k = st.strikes
        K = _kernels
        findings: list[Finding] = []

        # 1. quote quality
        bid_ok, ask_ok, bad, xl, unclean, clean_two, n_bad, n_xl = K.quote_masks(
            st.present,
            st.bid,
            st.ask,
            st.bid_size,
            st.ask_size,
            st.flags,
            _BAD_VALUE,
            _UNUSABLE_BID,
            _UNUSABLE_ASK,
            int(QuoteFlag.CROSSED),
            int(QuoteFlag.LOCKED),
            _FEED_BAD,
        )
        if n_bad:
            for r, i in zip(*np.nonzero(bad), strict=True):
                findings.append(self._bad_quote(int(r), int(i)))
        if n_xl:
            for r, i in zip(*np.nonzero(xl), strict=True):
                findings.append(self._crossed(int(r), int(i), com))

        # 2. forward
        forward = float(K.parity_forward(clean_two, k, st.bid, st.ask, disc, _TUKEY_C))
        if math.isfinite(forward):
            method = "parity"
        else:
            forward = s_mid / disc if math.isfinite(s_mid) else math.nan
            method = "underlying" if math.isfinite(forward) else "none"

        # 3. implied vols (OTM mids) and smile
        smile: SmileFit | None = None
        fit_iv: FloatArray | None = None
        params = np.zeros(5)
        inside = np.zeros(n, bool)
        k_lo, k_hi = -math.inf, math.inf
        iv_otm = np.full(n, np.nan)
        if math.isfinite(forward):
            iv_otm, fit_idx, x, vega_fit, half, n_iv = K.otm_iv(
                clean_two,
                st.bid,
                st.ask,
                k,
                forward,
                tau,
                disc,
                st.history.iv_prev,
                st.tick,
                self._fit_excluded(k),
            )
            if fit_idx.size >= cfg.smile_min_points:
                res = self._smile.fit_compiled(x, iv_otm[fit_idx], tau, vega_fit, half)
                if res is not None and res.n_used >= _SVI_MIN_USED:
                    used_k = k[fit_idx][res.weights > 0]
                    k_lo, k_hi = float(used_k.min()), float(used_k.max())
                    inside = (k >= k_lo) & (k <= k_hi)  # no extrapolation
                    p = res.params
                    params = np.array([p.a, p.b, p.rho, p.m, p.sigma])
                    fit_iv = K.svi_vols(k, forward, tau, params, k_lo, k_hi)  # flat beyond the fit
                    smile = _published_fit(
                        res, tau, forward, self._strikes_of(k), fit_iv, method, (k_lo, k_hi)
                    )
            if fit_iv is None and n_iv:
                fit_iv = np.full(n, float(np.median(iv_otm[np.isfinite(iv_otm)])))

        # model values at the fitted vols, and stale quotes
        h = st.history
        model = vega = None
        stale = suspect = np.zeros((2, n), bool)
        if fit_iv is not None:
            check = math.isfinite(s_ref) and s_ref > 0
            model, vega, stale, suspect, move, ds, n_stale = K.model_and_stale(
                k,
                forward,
                max(tau, MIN_TAU_YEARS),
                tau,
                fit_iv,
                disc,
                smile is not None,
                params,
                k_lo,
                k_hi,
                check,
                s_ref if check else 1.0,
                h.ref_und,
                st.present,
                st.price_changed,
                unclean,
                h.moved_since_ns,
                now_ns,
                cfg.stale_min_move_ticks * st.tick,
                cfg.stale_grace_ns,
            )
            if n_stale:
                for r, i in zip(*np.nonzero(stale), strict=True):
                    findings.append(self._stale(int(r), int(i), float(move[r, i]), float(ds[r, i]), now_ns))
        good_mask = ~(unclean | stale)

        # 4. arbitrage on clean executable quotes (the rules' own code, for the families that can fire)
        bid_x, ask_x = K.exec_book(st.bid, st.ask, bid_ok, ask_ok, good_mask & ~suspect)
        fs = forward * disc if math.isfinite(forward) else math.nan
        families = K.arbitrage_screen(
            k,
            bid_x,
            ask_x,
            cfg.commission_per_contract,
            float(mult),
            cfg.stock_cost_per_share,
            cfg.min_edge_per_unit,
            disc,
            s_bid,
            s_ask,
            fs,
        )
        in_arb = np.zeros((2, n), bool)
        n_combos = 0
        if any(families):
            book = Book(
                strikes=k,
                bid=bid_x,
                ask=ask_x,
                bid_size=st.bid_size,
                ask_size=st.ask_size,
                multiplier=mult,
                commission=cfg.commission_per_contract,
                stock_cost=cfg.stock_cost_per_share,
                min_edge=cfg.min_edge_per_unit,
                discount=disc,
                und_bid=s_bid,
                und_ask=s_ask,
                forward_spot=fs,
                quote_ts=st.asof,
                max_leg_skew_ns=cfg.max_leg_skew_ns,
            )
            arb, n_combos = find_arbitrage(
                book, fold=cfg.fold_related, families=families, wings=K.butterfly_wings
            )
            findings.extend(arb)
            for f in arb:
                for leg in f.legs:
                    in_arb[0 if leg.right is Right.CALL else 1, int(np.searchsorted(k, leg.strike))] = True
        self._arb_strikes = k[in_arb.any(axis=0)]

        if model is not None and vega is not None:
            rich, cheap, zero, n_rel = K.outlier_masks(
                k,
                forward,
                inside,
                model,
                vega,
                st.bid,
                st.ask,
                bid_ok,
                ask_ok,
                good_mask,
                in_arb,
                st.present,
                cfg.smile_rich_cheap_vol_pts,
                cfg.smile_rich_cheap_min_dollars,
                com,
                cfg.zero_bid_min_value,
            )
            if n_rel:
                findings.extend(self._outlier_findings(model, vega, rich, cheap, com))
                findings.extend(self._zero_bid_findings(model, zero))
        if K.wide_spread_possible(
            clean_two, st.bid, st.ask, cfg.wide_spread_min_dollars, cfg.wide_spread_mult
        ):
            findings.extend(self._wide_spreads(clean_two))
        quiet = unclean | stale | in_arb  # already explained: no relative or flow finding on them
        findings.extend(self._flow_compiled(now_ns, quiet))
        if math.isfinite(forward):
            jump, d, z, row, n_jumps = K.iv_jumps(
                k,
                forward,
                iv_otm,
                quiet,
                h.iv_prev,
                h.iv_dvar,
                h.iv_n,
                cfg.iv_jump_z,
                cfg.iv_jump_min_vol_pts / 100.0,
                1.0 - 0.5 ** (1.0 / cfg.iv_history_half_life),
            )
            if n_jumps:
                findings.extend(self._jump_findings(jump, row, d, z))
        return findings, smile, forward, method, n_combos

    def _flow_compiled(self, now_ns: int, quiet: BoolArray) -> list[Finding]:
        """:meth:`_flow` on the compiled kernels (same marks, same state updates)."""
        cfg, st = self.config, self._state
        h = st.history
        out: list[Finding] = []
        marks = h.vol_marks
        empty = np.zeros((2, 0), np.int64)
        has_prev, v_prev, dt, alpha = False, empty, 1.0, 0.0
        if marks:
            t_prev, v_prev = marks[-1]
            dt = (now_ns - t_prev) / 1e9
            if dt > 0:
                has_prev = True
                alpha = 1.0 - math.exp(-dt * math.log(2.0) * 1e9 / cfg.volume_baseline_half_life_ns)
        base_mark = None
        for t_m, v_m in marks:
            if now_ns - t_m >= cfg.volume_window_ns:
                base_mark = (t_m, v_m)
            else:
                break
        win_s, v_base = 1.0, empty
        if base_mark is not None:
            win_s, v_base = (now_ns - base_mark[0]) / 1e9, base_mark[1]
        vol, spiking, window_vol, expected, n_spikes = _kernels.flow_volume(
            st.present,
            st.volume,
            has_prev,
            v_prev if has_prev else st.volume,
            dt,
            alpha,
            h.spike_on,
            h.vol_first_ns,
            h.vol_rate,
            now_ns,
            base_mark is not None,
            v_base if base_mark is not None else st.volume,
            win_s,
            20 * cfg.volume_window_ns,
            cfg.volume_floor_per_s,
            cfg.volume_spike_mult,
            float(cfg.volume_spike_min_contracts),
        )
        if n_spikes:
            out.extend(self._spike_findings(spiking, window_vol, expected, win_s))
        h.spike_on = spiking
        marks.append((now_ns, vol))
        while len(marks) > 2 and now_ns - marks[1][0] >= cfg.volume_window_ns:
            marks.pop(0)
        two = len(marks) >= 2
        through, n_through = _kernels.trades_through(
            st.touched,
            st.last,
            st.last_size,
            vol,
            two,
            marks[-2][1] if two else vol,
            quiet,
            st.bid,
            st.ask,
            st.prev_bid,
            st.prev_ask,
            cfg.trade_through_ticks * st.tick - 1e-9,
        )
        if n_through:
            with np.errstate(invalid="ignore"):
                hi = np.fmax(st.ask, st.prev_ask)
                lo = np.fmin(st.bid, st.prev_bid)
            out.extend(self._through_findings(through, lo, hi))
        return out

    def _fit_excluded(self, k: FloatArray) -> BoolArray:
        """Strikes left out of the smile fit: those of the previous evaluation's arbitrage legs."""
        if self._arb_strikes.size == 0:
            return np.zeros(k.size, bool)
        return np.isin(k, self._arb_strikes)

    def _forward(self, clean_two: BoolArray, disc: float, s_mid: float) -> tuple[float, str]:
        st = self._state
        both = clean_two[0] & clean_two[1]
        idx = np.flatnonzero(both)
        fallback = s_mid / disc if math.isfinite(s_mid) else math.nan
        if idx.size < 3:
            return fallback, "underlying" if math.isfinite(fallback) else "none"
        k = st.strikes[idx]
        y = 0.5 * (st.bid[0, idx] + st.ask[0, idx]) - 0.5 * (st.bid[1, idx] + st.ask[1, idx])
        noise = np.maximum(
            0.25 * ((st.ask[0, idx] - st.bid[0, idx]) + (st.ask[1, idx] - st.bid[1, idx])), 0.005
        )
        f_i = k + y / disc
        wt = 1.0 / noise
        order = np.argsort(f_i)
        cw = np.cumsum(wt[order])
        f = float(f_i[order][min(int(np.searchsorted(cw, 0.5 * cw[-1])), idx.size - 1)])
        for _ in range(2):
            r = (f_i - f) * disc / noise
            scale = max(1.4826 * median(np.abs(r)), 1.0)
            u = r / (_TUKEY_C * scale)
            w = np.where(np.abs(u) < 1.0, (1.0 - u * u) ** 2, 0.0) / (noise * noise)
            if not w.any():
                break
            f = float(np.sum(w * f_i) / np.sum(w))
        return f, "parity"

    # ------------------------------------------------------------------ findings

    def _contract(self, r: int, i: int) -> tuple[float, Right, str]:
        k = float(self._state.strikes[i])
        return k, RIGHTS[r], f"{k:g}{'CP'[r]}"

    def _leg(self, r: int, i: int, side: Side) -> Leg:
        st = self._state
        k, right, _ = self._contract(r, i)
        buy = side == "BUY"
        price = float(st.ask[r, i] if buy else st.bid[r, i])
        size = int(st.ask_size[r, i] if buy else st.bid_size[r, i])
        return Leg(k, right, side, price if math.isfinite(price) else math.nan, 1, max(size, 0))

    def _bad_quote(self, r: int, i: int) -> Finding:
        st = self._state
        k, right, name = self._contract(r, i)
        why = (
            f"{name} quote is malformed (bid {st.bid[r, i]}, ask {st.ask[r, i]}, sizes "
            f"{st.bid_size[r, i]}x{st.ask_size[r, i]}): excluded from every rule"
        )
        return Finding("bad_quote", name, (), 0.0, 0.0, why, Severity.WARN, 0, ((k, right),))

    def _crossed(self, r: int, i: int, com: float) -> Finding:
        st = self._state
        _, _, name = self._contract(r, i)
        b, a = float(st.bid[r, i]), float(st.ask[r, i])
        edge = (b - a - 2 * com) * st.multiplier
        what = "locked" if b == a else "crossed"
        why = f"{name} {what}: bid {b:.2f} {'=' if b == a else '>'} ask {a:.2f}; edge ${edge:.2f} after costs"
        legs = (self._leg(r, i, "BUY"), self._leg(r, i, "SELL"))
        return Finding("crossed", name, legs, edge, max(edge, 0.0), why, Severity.WARN, 1)

    def _stale(self, r: int, i: int, move: float, ds: float, now_ns: int) -> Finding:
        st = self._state
        k, right, name = self._contract(r, i)
        age_s = (now_ns - int(st.history.price_change_ns[r, i])) / 1e9
        why = (
            f"{name} bid/ask unchanged for {age_s:.1f}s while the underlying moved {ds:+.2f}: "
            f"its value should have moved ${move:.2f}"
        )
        edge = move * st.multiplier
        return Finding("stale", name, (), edge, edge, why, Severity.WARN, 0, ((k, right),))

    def _smile_outliers(
        self, model: FloatArray, vega: FloatArray, bid_ok: BoolArray, ask_ok: BoolArray, com: float
    ) -> list[Finding]:
        cfg, st = self.config, self._state
        with np.errstate(invalid="ignore"):
            thr = (
                np.maximum(cfg.smile_rich_cheap_vol_pts / 100.0 * vega, cfg.smile_rich_cheap_min_dollars)
                + com
            )
            rich = bid_ok & (st.bid - model > thr)
            cheap = ask_ok & (model - st.ask > thr)
        return self._outlier_findings(model, vega, rich, cheap, com)

    def _outlier_findings(
        self, model: FloatArray, vega: FloatArray, rich: BoolArray, cheap: BoolArray, com: float
    ) -> list[Finding]:
        st = self._state
        out: list[Finding] = []
        sides: tuple[tuple[BoolArray, Side, str], ...] = ((rich, "SELL", "rich"), (cheap, "BUY", "cheap"))
        for mask, side, word in sides:
            for r, i in zip(*np.nonzero(mask), strict=True):
                r_, i_ = int(r), int(i)
                _, _, name = self._contract(r_, i_)
                px = float(st.bid[r_, i_] if side == "SELL" else st.ask[r_, i_])
                dist = abs(px - float(model[r_, i_]))
                vol_pts = dist / float(vega[r_, i_]) * 100.0 if vega[r_, i_] > 0 else math.inf
                edge = (dist - com) * st.multiplier
                why = (
                    f"{name} {word}: {'bid' if side == 'SELL' else 'ask'} {px:.2f} vs smile value "
                    f"{float(model[r_, i_]):.2f} ({vol_pts:.1f} vol points)"
                )
                out.append(
                    Finding(
                        "smile_outlier", name, (self._leg(r_, i_, side),), edge, vol_pts, why, Severity.WARN
                    )
                )
        return out

    def _zero_bids(self, model: FloatArray, bid_ok: BoolArray, ask_ok: BoolArray) -> list[Finding]:
        cfg, st = self.config, self._state
        with np.errstate(invalid="ignore"):
            mask = st.present & ~bid_ok & ask_ok & (model >= cfg.zero_bid_min_value)
        return self._zero_bid_findings(model, mask)

    def _zero_bid_findings(self, model: FloatArray, mask: BoolArray) -> list[Finding]:
        st = self._state
        out: list[Finding] = []
        for r, i in zip(*np.nonzero(mask), strict=True):
            k, right, name = self._contract(int(r), int(i))
            v = float(model[r, i])
            why = f"{name} has no bid although it is worth about {v:.2f}"
            out.append(
                Finding("zero_bid", name, (), v * st.multiplier, v, why, Severity.INFO, 0, ((k, right),))
            )
        return out

    def _wide_spreads(self, clean_two: BoolArray) -> list[Finding]:
        cfg, st = self.config, self._state
        n = st.n
        if n < 3:
            return []
        spread = np.where(clean_two, st.ask - st.bid, np.nan)
        pad = np.pad(spread, ((0, 0), (3, 3)), constant_values=np.nan)
        with np.errstate(invalid="ignore"):
            # necessary condition first: wider than the narrowest neighbour (<= the median) times
            # the multiple; the median of up to six neighbours only for those
            low = np.fmin.reduce([pad[:, 3 + d : 3 + d + n] for d in (-3, -2, -1, 1, 2, 3)])
            cand = clean_two & (spread > cfg.wide_spread_min_dollars) & (spread > cfg.wide_spread_mult * low)
        if not cand.any():
            return []
        rr, ii = np.nonzero(cand)
        neigh = np.stack([pad[rr, ii + 3 + d] for d in (-3, -2, -1, 1, 2, 3)], axis=1)  # (m, 6)
        cnt = np.sum(np.isfinite(neigh), axis=1)
        ref = np.sort(np.where(np.isfinite(neigh), neigh, np.inf), axis=1)
        med_c = np.take_along_axis(ref, np.maximum((cnt - 1) // 2, 0)[:, None], axis=1)[:, 0]
        med = np.full((2, n), np.nan)
        med[rr, ii] = med_c
        ok = np.zeros((2, n), bool)
        ok[rr, ii] = (cnt >= 2) & (spread[rr, ii] > cfg.wide_spread_mult * med_c)
        mask = ok
        out: list[Finding] = []
        for r, i in zip(*np.nonzero(mask), strict=True):
            k, right, name = self._contract(int(r), int(i))
            why = f"{name} spread {float(spread[r, i]):.2f} is {float(spread[r, i] / med[r, i]):.0f}x its neighbours' ({float(med[r, i]):.2f})"
            out.append(
                Finding(
                    "wide_spread",
                    name,
                    (),
                    float(spread[r, i]) * st.multiplier,
                    float(spread[r, i] / med[r, i]),
                    why,
                    Severity.INFO,
                    0,
                    ((k, right),),
                )
            )
        return out

    def _flow(self, now_ns: int, quiet: BoolArray) -> list[Finding]:
        cfg, st = self.config, self._state
        h = st.history
        out: list[Finding] = []
        vol = np.where(st.present, st.volume, -1)
        # baseline rate (EWMA, contracts per second) from the increments since the last evaluation
        marks = h.vol_marks
        if marks:
            t_prev, v_prev = marks[-1]
            dt = (now_ns - t_prev) / 1e9
            if dt > 0:
                inc = np.where((v_prev >= 0) & (vol >= 0), np.maximum(vol - v_prev, 0), 0)
                alpha = 1.0 - math.exp(-dt * math.log(2.0) * 1e9 / cfg.volume_baseline_half_life_ns)
                upd = ~h.spike_on & (h.vol_first_ns >= 0)
                h.vol_rate[upd] += alpha * (inc[upd] / dt - h.vol_rate[upd])
        h.vol_first_ns[(h.vol_first_ns < 0) & (vol >= 0)] = now_ns
        # window volume against the baseline
        base_mark = None
        for t_m, v_m in marks:
            if now_ns - t_m >= cfg.volume_window_ns:
                base_mark = (t_m, v_m)
            else:
                break
        spiking = np.zeros_like(h.spike_on)
        if base_mark is not None:
            t_m, v_m = base_mark
            win_s = (now_ns - t_m) / 1e9
            window_vol = np.where((v_m >= 0) & (vol >= 0), vol - v_m, 0)
            warm = (h.vol_first_ns >= 0) & (now_ns - h.vol_first_ns >= 20 * cfg.volume_window_ns)
            expected = np.maximum(h.vol_rate, cfg.volume_floor_per_s) * win_s
            spiking = warm & (
                window_vol >= np.maximum(cfg.volume_spike_mult * expected, cfg.volume_spike_min_contracts)
            )
            out.extend(self._spike_findings(spiking, window_vol, expected, win_s))
        h.spike_on = spiking
        marks.append((now_ns, vol))
        while len(marks) > 2 and now_ns - marks[1][0] >= cfg.volume_window_ns:
            marks.pop(0)
        # trades through the touch: traded this batch at a price outside both the old and new quote
        traded = st.touched & (st.last_size > 0) & (st.last > 0)
        if marks and len(marks) >= 2:
            prev_vol = marks[-2][1]
            traded &= (prev_vol >= 0) & (vol > prev_vol)
        else:
            traded &= False
        tt = cfg.trade_through_ticks * st.tick - 1e-9
        with np.errstate(invalid="ignore"):
            hi = np.fmax(st.ask, st.prev_ask)
            lo = np.fmin(st.bid, st.prev_bid)
            through = traded & ~quiet & ((st.last >= hi + tt) | ((st.last <= lo - tt) & (lo > 0)))
            through &= np.fmax(st.bid, st.prev_bid) < np.fmin(
                st.ask, st.prev_ask
            )  # old and new quotes uncrossed
        out.extend(self._through_findings(through, lo, hi))
        return out

    def _spike_findings(
        self, spiking: BoolArray, window_vol: IntArray, expected: FloatArray, win_s: float
    ) -> list[Finding]:
        out: list[Finding] = []
        for r, i in zip(*np.nonzero(spiking), strict=True):
            k, right, name = self._contract(int(r), int(i))
            wv, ex = int(window_vol[r, i]), float(expected[r, i])
            why = f"{name} traded {wv} contracts in {win_s:.1f}s, {wv / max(ex, 1e-9):.0f}x its baseline ({ex:.1f})"
            out.append(
                Finding(
                    "volume_spike",
                    name,
                    (),
                    float(wv),
                    wv / max(ex, 1e-9),
                    why,
                    Severity.INFO,
                    0,
                    ((k, right),),
                )
            )
        return out

    def _through_findings(self, through: BoolArray, lo: FloatArray, hi: FloatArray) -> list[Finding]:
        st = self._state
        out: list[Finding] = []
        for r, i in zip(*np.nonzero(through), strict=True):
            k, right, name = self._contract(int(r), int(i))
            px = float(st.last[r, i])
            why = f"{name} traded {int(st.last_size[r, i])} at {px:.2f} through the touch ({float(lo[r, i]):.2f} x {float(hi[r, i]):.2f})"
            out.append(
                Finding(
                    "trade_through",
                    name,
                    (),
                    float(st.last_size[r, i]),
                    1.0,
                    why,
                    Severity.INFO,
                    0,
                    ((k, right),),
                )
            )
        return out

    def _iv_jumps(self, iv: FloatArray, forward: float, quiet: BoolArray) -> list[Finding]:
        cfg, st = self.config, self._state
        h = st.history
        out: list[Finding] = []
        if not math.isfinite(forward):
            return out
        row = np.where(st.strikes >= forward, 0, 1)
        cols = np.arange(st.n)
        prev = h.iv_prev[row, cols]
        d = iv - prev
        ok = np.isfinite(d)
        var = h.iv_dvar[row, cols]
        cnt = h.iv_n[row, cols]
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.abs(d) / np.sqrt(var)
            jump = (
                ok
                & ~quiet[row, cols]
                & (cnt >= 20)
                & (z >= cfg.iv_jump_z)
                & (np.abs(d) >= cfg.iv_jump_min_vol_pts / 100.0)
            )
        out.extend(self._jump_findings(jump, row, d, z))
        alpha = 1.0 - 0.5 ** (1.0 / cfg.iv_history_half_life)
        capped = np.where(jump, var, np.minimum(d * d, 25.0 * np.where(cnt > 0, var, d * d)))
        new_var = np.where(cnt > 0, var + alpha * (capped - var), d * d)
        h.iv_dvar[row[ok], cols[ok]] = new_var[ok]
        h.iv_n[row[ok], cols[ok]] = cnt[ok] + 1
        h.iv_prev[row, cols] = iv
        return out

    def _jump_findings(self, jump: BoolArray, row: IntArray, d: FloatArray, z: FloatArray) -> list[Finding]:
        out: list[Finding] = []
        for i in np.flatnonzero(jump).tolist():
            k, right, name = self._contract(int(row[i]), i)
            why = f"{name} implied vol moved {d[i] * 100:+.1f} points in one update ({z[i]:.0f} sd of its recent changes)"
            out.append(
                Finding(
                    "iv_jump",
                    name,
                    (),
                    float(abs(d[i]) * 100),
                    float(z[i]),
                    why,
                    Severity.INFO,
                    0,
                    ((k, right),),
                )
            )
        return out
