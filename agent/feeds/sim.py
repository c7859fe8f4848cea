"""The simulated SPY 0DTE market: the embedded default feed, seeded and reproducible bit for bit.

Conventions
-----------
- Market time only: the simulator advances its own clock by ``step_ms`` per :meth:`SimulatedMarket.step`
  from ``start_ns``; nothing reads the wall clock. Same config + session + start => identical events.
- Randomness: one ``numpy.random.Generator`` for the market (underlying, sizes, trades) and an
  independent one for anomaly injection, both spawned from ``SeedSequence(seed)``; so a run with
  injection has the *same* clean market underneath as a run without.
- Underlying: efficient log price with diffusion (vol = smile level x ``realized_vol_ratio``) and
  compound-Poisson jumps, plus mean-reverting (OU) microstructure noise. ``S`` is the resulting mid;
  the published underlying quote is ``bid = floor(S, cent)``, ``ask = bid + 0.01``, so
  ``bid <= S < ask``.
- Time to expiry: ``Session.tau`` (trading minutes / (252*390), floored at one second). Carry uses
  calendar time to the close at ``rate``: ``df = exp(-rate * t_cal)``, forward ``F = S / df``
  (no dividends), so forward ~ spot and discount ~ 1.
- Pricing: Black-76 on a two-lognormal mixture (a "crash" component with weight ``skew_weight``,
  volatility ``skew_vol_mult`` times the level and a forward shifted down by ``skew_shift`` standard
  deviations). That gives a skewed smile and is free of static arbitrage by construction (it is a
  density). The level has a day shape: higher at the open, an afternoon drift, a bump near the
  close, plus slow noise and a shock after jumps. Puts are floored at exercise value (American).
- Quotes: cents on the $0.01 tick; ``bid = floor(theo - h)``, ``ask = ceil(theo + h)`` with a
  half-spread ``h >= min_half_spread`` that widens away from the money and near the close; so
  ``bid <= theo <= ask`` and the clean chain has no static arbitrage on executable quotes. A bid of
  0 is published as 0.0 with size 0 (flag NO_BID); the ask is at least 0.01.
- Expiry: the session close (16:00 New York, 13:00 on half days). The first step at or after the
  close emits one ``Notice`` (code ``session.closed``) and no quotes; later steps emit nothing.
- Anomalies: see :mod:`agent.feeds.anomalies`. Each lasts ``anomaly_duration_s`` of market time and
  reverts; labels are returned in :class:`SimStep` ``labels``, never in ``events``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Final

import numpy as np
import numpy.typing as npt

from agent.domain import ChainUpdate, Notice, NoticeLevel, OptionQuote, QuoteFlag, Right, UnderlyingTick
from agent.feeds.anomalies import (
    ANOMALY_KINDS,
    COMMISSION_PER_CONTRACT,
    AnomalyLabel,
    Contract,
    find_static_arbitrage,
)
from agent.pricing.black import black76_price
from agent.session import NS_PER_MINUTE, TRADING_MINUTES_PER_YEAR, Session

log = logging.getLogger(__name__)

SYMBOL: Final = "SPY"
MULTIPLIER: Final = 100
TICK: Final = 0.01
NS_PER_CALENDAR_YEAR: Final = 365 * 24 * 3600 * 1_000_000_000
_RIGHTS: Final = (Right.CALL, Right.PUT)
_FLAGS: Final = tuple(QuoteFlag(v) for v in range(16))

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
SimEvent = UnderlyingTick | ChainUpdate | Notice


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Parameters of the simulated market. Volatilities are per trading year (see ``agent.session``)."""

    seed: int = 7
    spot: float = 590.0  # starting SPY level
    strikes_each_side: int = 25  # $1 strikes around the money, window follows the underlying
    step_ms: int = 250  # market-time step
    anomaly_rate_per_min: float = 0.0  # expected injected anomalies per market minute (0 = clean)
    anomaly_kinds: tuple[str, ...] = ANOMALY_KINDS
    # volatility level of the smile and its day shape
    vol: float = 0.16
    open_vol_boost: float = 0.35  # +35% at the open, decaying over ~30 minutes
    afternoon_vol_drift: float = -0.10  # linear drift over the session (fraction of the level)
    close_vol_bump: float = 0.30  # +30% in the last ~20 minutes
    vol_of_vol: float = 0.05  # stdev of the slow log-level noise
    # smile shape (two-lognormal mixture)
    skew_weight: float = 0.12
    skew_vol_mult: float = 2.2
    skew_shift: float = 1.0
    # underlying dynamics
    realized_vol_ratio: float = 0.85
    jump_rate_per_hour: float = 0.5
    jump_mean: float = -0.0005  # log size
    jump_sd: float = 0.0025
    noise_sd: float = 0.00003  # microstructure noise, log units
    noise_half_life_s: float = 2.0
    rate: float = 0.04  # continuously compounded, calendar time
    # chain and quotes
    window_hysteresis: float = 3.0  # re-centre the window when spot is this far from its centre
    min_half_spread: float = 0.01
    trade_rate_atm_per_min: float = 30.0
    trade_size_p: float = 0.25  # trade sizes are geometric with this p (mean 1/p contracts)
    max_ordinary_contracts_per_s: float = 30.0
    """Ordinary flow on one contract never exceeds this many contracts per second (per step:
    ``floor(rate * step)``, at least 1): a clean run has no volume spike (a spike is >= 50 contracts
    in a second, see ``DetectorConfig.volume_spike_min_contracts``)."""
    # anomalies
    anomaly_duration_s: tuple[float, float] = (3.0, 8.0)
    anomaly_edge: float = 0.05  # executable edge per share of arbitrage kinds, after commission
    commission_per_contract: float = COMMISSION_PER_CONTRACT  # per contract per leg
    smile_outlier_vol_pts: float = 3.0  # largest size (the smallest observable one is used)
    smile_outlier_min_vol_pts: float = 0.5
    smile_outlier_min_dollars: float = 0.03
    """An injected smile outlier is shown only while its executable side (bid when rich, ask when
    cheap) of the out-of-the-money contract is beyond the clean model value by at least
    ``max(min_vol_pts x vega, min_dollars)`` plus the commission, with no static arbitrage."""
    stale_observable_ticks: float = 2.0
    stale_observable_s: float = 0.5
    """A frozen quote is labelled stale once its value (repriced for the underlying's move since the
    quote last changed) has been at least ``stale_observable_ticks`` ticks away for
    ``stale_observable_s`` (the detector's ``stale_min_move_ticks`` and ``stale_grace_ns``), and
    stays frozen and labelled for ``anomaly_duration_s`` more; then it is refreshed."""
    stale_max_wait_s: float = 30.0  # a freeze that never becomes observable ends unlabelled
    anomaly_cooldown_s: float = 2.0  # a strike is not reused this soon after an anomaly on it ended
    volume_spike_mult: tuple[float, float] = (20.0, 50.0)  # x the contract's usual volume rate
    volume_spike_min_per_s: float = 100.0  # and at least this many contracts per second

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not (math.isfinite(self.spot) and self.spot >= 10.0):
            problems.append(f"spot must be a price >= 10, got {self.spot}")
        if self.strikes_each_side < 3:
            problems.append(f"strikes_each_side must be >= 3, got {self.strikes_each_side}")
        if self.step_ms <= 0:
            problems.append(f"step_ms must be > 0, got {self.step_ms}")
        if not (self.anomaly_rate_per_min >= 0.0):
            problems.append(f"anomaly_rate_per_min must be >= 0, got {self.anomaly_rate_per_min}")
        unknown = [k for k in self.anomaly_kinds if k not in ANOMALY_KINDS]
        if unknown:
            problems.append(f"unknown anomaly kinds {unknown}; choose from {list(ANOMALY_KINDS)}")
        if not (0.01 <= self.vol <= 3.0):
            problems.append(f"vol must be within [0.01, 3.0] per trading year, got {self.vol}")
        if not (0.0 <= self.skew_weight < 0.5):
            problems.append(f"skew_weight must be within [0, 0.5), got {self.skew_weight}")
        if self.min_half_spread < 0.005:
            problems.append(f"min_half_spread must be >= 0.005, got {self.min_half_spread}")
        lo, hi = self.anomaly_duration_s
        if not (0.0 < lo <= hi):
            problems.append(f"anomaly_duration_s must be (min, max) with 0 < min <= max, got {lo, hi}")
        if not (0.0 < self.trade_size_p <= 1.0):
            problems.append(f"trade_size_p must be within (0, 1], got {self.trade_size_p}")
        if not (self.max_ordinary_contracts_per_s > 0.0):
            problems.append(
                f"max_ordinary_contracts_per_s must be > 0, got {self.max_ordinary_contracts_per_s}"
            )
        if not (self.stale_observable_ticks > 0.0 and self.stale_max_wait_s > 0.0):
            problems.append("stale_observable_ticks and stale_max_wait_s must be > 0")
        if not (self.stale_observable_s >= 0.0):
            problems.append(f"stale_observable_s must be >= 0, got {self.stale_observable_s}")
        if problems:
            raise ValueError("bad simulator config: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class SimStep:
    """What one step produced: market events to publish, and ground-truth labels to keep apart."""

    ts_ns: int
    events: tuple[SimEvent, ...]
    labels: tuple[AnomalyLabel, ...]


@dataclass(slots=True)
class _Active:
    """An anomaly being shown. ``idx`` is a strike index in the universe; ``right`` 0=C, 1=P, -1=both.

    ``shown`` is False while a stale freeze is not yet observable: its label has not been emitted
    (``end_ns`` is then the deadline to become observable, ``hold_ns`` how long it stays frozen
    once it is, ``ref_spot`` the underlying when the frozen quote last changed, ``moved_ns`` when
    its value last came to be off by the observable move, -1 while it is not)."""

    label: AnomalyLabel
    idx: int
    right: int
    sign: int
    end_ns: int
    size: float = 0.0
    strikes: tuple[int, ...] = field(default_factory=tuple)
    shown: bool = True
    hold_ns: int = 0
    ref_spot: float = math.nan
    moved_ns: int = -1


@dataclass(frozen=True, slots=True)
class _Quotes:
    """One step's window quotes while anomalies are applied (cents; ``h`` half-spreads in dollars)."""

    t: int
    strikes: FloatArray
    bid: IntArray
    ask: IntArray
    h: FloatArray
    df: float
    level: float
    s_bid: float
    s_ask: float


_SMILE_SIZES: Final = (0.16, 0.22, 0.3, 0.4, 0.55, 0.75, 1.0)
"""Smile outlier sizes tried, as fractions of ``smile_outlier_vol_pts`` (smallest first)."""


class SimulatedMarket:
    """A seeded SPY 0DTE market stepping in market time (see the module docstring)."""

    def __init__(self, config: SimConfig, session: Session, start_ns: int) -> None:
        self._cfg = config
        self._session = session
        self._t = int(start_ns)
        self._step_ns = config.step_ms * 1_000_000
        self._expiry = session.expiry
        self._close_noticed = False
        market_ss, anomaly_ss = np.random.SeedSequence(config.seed).spawn(2)
        self._rng = np.random.Generator(np.random.PCG64(market_ss))
        self._arng = np.random.Generator(np.random.PCG64(anomaly_ss))

        # underlying state
        self._log_eff = math.log(config.spot)
        self._noise = 0.0
        self._spot = config.spot
        self._und_volume = 0
        self._vol_y = 0.0
        self._vol_shock = 0.0

        # strike universe (integer dollars) and the window of quoted strikes inside it
        n_side = config.strikes_each_side
        self._k0 = max(1, math.floor(config.spot * 0.5))
        u = math.ceil(config.spot * 1.5) - self._k0 + 1
        self._strikes = (self._k0 + np.arange(u)).astype(np.float64)
        self._n = 2 * n_side + 1
        self._lo = self._clamp_lo(round(config.spot) - self._k0 - n_side)

        # per-contract state over the universe, shape (2, U): row 0 calls, row 1 puts
        self._volume = np.zeros((2, u), np.int64)
        self._last = np.zeros((2, u), np.int64)  # cents
        self._last_size = np.zeros((2, u), np.int64)
        self._bsz = np.zeros((2, u), np.int64)
        self._asz = np.zeros((2, u), np.int64)
        # published state (cents; -1 = not published)
        self._pub = np.full((7, 2, u), -1, np.int64)  # bid, ask, bsz, asz, last, last_size, volume
        self._chg_spot = np.full((2, u), config.spot)  # underlying when the published bid/ask last changed
        self._book: dict[tuple[float, Right], OptionQuote] = {}
        self._active: list[_Active] = []
        self._ending: list[_Active] = []  # active anomalies whose strikes left the window
        self._recent: list[tuple[int, tuple[int, ...]]] = []  # (end time, strikes) of ended anomalies
        self._pending_kinds: list[str] = []
        self._label_seq = 0
        self._fair: tuple[FloatArray, FloatArray] = (np.zeros(0), np.zeros(0))

        self._draw_sizes(np.ones((2, self._n), bool))
        if not self.closed:
            self._quote_window(self._t, [], force=True)

    # ----------------------------------------------------------------- public API

    @property
    def now_ns(self) -> int:
        return self._t

    @property
    def closed(self) -> bool:
        """True once market time reached the session close (the options have expired)."""
        return self._t >= self._session.close_ns

    @property
    def spot(self) -> float:
        """The underlying mid ``S`` the chain is priced from."""
        return self._spot

    @property
    def config(self) -> SimConfig:
        return self._cfg

    @property
    def active_labels(self) -> tuple[AnomalyLabel, ...]:
        return tuple(a.label for a in self._active if a.shown)

    def window_strikes(self) -> tuple[float, ...]:
        return tuple(float(k) for k in self._strikes[self._lo : self._lo + self._n])

    def fair_values(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """``(strikes, call theo, put theo)`` of the window at the current step (clean model values)."""
        return self._strikes[self._lo : self._lo + self._n].copy(), self._fair[0].copy(), self._fair[1].copy()

    def discount(self) -> float:
        """Discount factor from now to the close (calendar time at ``rate``)."""
        t_cal = max(self._session.close_ns - self._t, 0) / NS_PER_CALENDAR_YEAR
        return math.exp(-self._cfg.rate * t_cal)

    def initial(self) -> list[SimEvent]:
        """The current state in full: the underlying and the whole window (``ChainUpdate.full``)."""
        if self.closed:
            return [self._closed_notice()]
        ordered = sorted(self._book.values(), key=lambda q: (q.strike, q.right is Right.PUT))
        return [self._underlying_tick(), self._chain_update(tuple(ordered), (), full=True)]

    def step(self) -> SimStep:
        """Advance market time by ``step_ms``; re-price the whole window; publish what changed."""
        self._t += self._step_ns
        t = self._t
        if self.closed:
            if self._close_noticed:
                return SimStep(t, (), ())
            self._close_noticed = True
            ended = tuple(self._end(a, t) for a in self._active if a.shown)
            self._active.clear()
            return SimStep(t, (self._closed_notice(),), ended)
        self._evolve_underlying()
        removed = self._move_window()
        labels: list[AnomalyLabel] = []
        changed = self._quote_window(t, labels, force=False)
        events: list[SimEvent] = [self._underlying_tick()]
        if changed or removed:
            events.append(self._chain_update(tuple(changed), removed, full=False))
        return SimStep(t, tuple(events), tuple(labels))

    def inject(self, kind: str) -> None:
        """Ask for an anomaly of ``kind`` at the next step (its label comes with that step; it is
        skipped if no suitable contract is free then)."""
        if kind not in ANOMALY_KINDS:
            raise ValueError(f"unknown anomaly kind {kind!r}; choose from {list(ANOMALY_KINDS)}")
        self._pending_kinds.append(kind)

    # ----------------------------------------------------------------- underlying and window

    def _vol_level(self, t: int) -> float:
        cfg, s = self._cfg, self._session
        length = (s.close_ns - s.open_ns) / NS_PER_MINUTE
        m = min(max((t - s.open_ns) / NS_PER_MINUTE, 0.0), length)
        rem = max(s.minutes_to_close(t), 0.0)
        shape = (
            1.0
            + cfg.open_vol_boost * math.exp(-m / 30.0)
            + cfg.afternoon_vol_drift * (m / length)
            + cfg.close_vol_bump * math.exp(-rem / 20.0)
        )
        return cfg.vol * max(shape, 0.2) * math.exp(self._vol_y) * (1.0 + self._vol_shock)

    def _evolve_underlying(self) -> None:
        cfg, rng = self._cfg, self._rng
        dt_min = self._step_ns / NS_PER_MINUTE
        dt_yr = dt_min / TRADING_MINUTES_PER_YEAR
        z, zn, zv = rng.standard_normal(3)
        n_jumps = int(rng.poisson(cfg.jump_rate_per_hour / 60.0 * dt_min))
        jump = (
            float(rng.normal(cfg.jump_mean * n_jumps, cfg.jump_sd * math.sqrt(n_jumps))) if n_jumps else 0.0
        )
        sigma = self._vol_level(self._t) * cfg.realized_vol_ratio
        self._log_eff += -0.5 * sigma * sigma * dt_yr + sigma * math.sqrt(dt_yr) * z + jump
        phi = math.exp(-(self._step_ns / 1e9) * math.log(2.0) / cfg.noise_half_life_s)
        self._noise = self._noise * phi + cfg.noise_sd * math.sqrt(1.0 - phi * phi) * zn
        self._spot = math.exp(self._log_eff + self._noise)
        phi_v = math.exp(-dt_min / 20.0)
        self._vol_y = self._vol_y * phi_v + cfg.vol_of_vol * math.sqrt(1.0 - phi_v * phi_v) * zv
        self._vol_shock = self._vol_shock * math.exp(-dt_min / 15.0) + 15.0 * abs(jump)
        self._und_volume += int(rng.poisson(2500.0 * self._step_ns / 1e9))

    def _clamp_lo(self, lo: int) -> int:
        return min(max(lo, 0), self._strikes.size - self._n)

    def _move_window(self) -> tuple[float, ...]:
        """Re-centre the window when spot left the hysteresis band; return the strikes removed."""
        centre = self._strikes[self._lo + self._n // 2]
        if abs(self._spot - centre) <= self._cfg.window_hysteresis:
            return ()
        new_lo = self._clamp_lo(round(self._spot) - self._k0 - self._n // 2)
        if new_lo == self._lo:
            return ()
        old = set(range(self._lo, self._lo + self._n))
        new = set(range(new_lo, new_lo + self._n))
        gone = sorted(old - new)
        for idx in gone:
            strike = float(self._strikes[idx])
            self._pub[:, :, idx] = -1
            self._book.pop((strike, Right.CALL), None)
            self._book.pop((strike, Right.PUT), None)
        entered = np.zeros((2, self._n), bool)
        entered[:, [i - new_lo for i in sorted(new - old)]] = True
        self._lo = new_lo
        self._draw_sizes(entered)
        for a in list(self._active):
            if any(not (new_lo + 1 <= i < new_lo + self._n - 1) for i in a.strikes):
                self._ending.append(a)
        return tuple(float(self._strikes[i]) for i in gone)

    # ----------------------------------------------------------------- pricing and quoting

    def _theo(
        self, strikes: FloatArray, t: int, level: float, spot: float | None = None
    ) -> tuple[FloatArray, FloatArray, FloatArray, float]:
        """Clean model values ``(calls, puts, standardized moneyness, df)`` at time ``t`` (with the
        underlying at ``spot``, the current one by default)."""
        cfg = self._cfg
        spot = self._spot if spot is None else spot
        tau = self._session.tau(t)
        df = math.exp(-cfg.rate * max(self._session.close_ns - t, 0) / NS_PER_CALENDAR_YEAR)
        fwd = spot / df
        sd = level * math.sqrt(tau)
        w2 = cfg.skew_weight
        f2 = fwd * math.exp(-cfg.skew_shift * sd)
        f1 = (fwd - w2 * f2) / (1.0 - w2)
        is_call = np.array([[True], [False]])
        k = strikes[None, :]
        mix = (1.0 - w2) * black76_price(f1, k, tau, level, is_call) + w2 * black76_price(
            f2, k, tau, level * cfg.skew_vol_mult, is_call
        )
        calls = np.maximum(df * mix[0], 0.0)
        puts = np.maximum(df * mix[1], np.maximum(strikes - spot, 0.0))
        x = np.log(strikes / fwd) / sd
        return calls, puts, x, df

    def _half_spread(self, theo: FloatArray, x: FloatArray, t: int) -> FloatArray:
        rem = max(self._session.minutes_to_close(t), 0.0)
        away = 0.0025 * np.minimum(np.abs(x), 6.0)
        h: FloatArray = (self._cfg.min_half_spread + away[None, :] + 0.002 * theo) * (
            1.0 + 1.5 * math.exp(-rem / 15.0)
        )
        return h

    @staticmethod
    def _to_quotes(theo: FloatArray, h: FloatArray) -> tuple[IntArray, IntArray]:
        """Cents: bid rounded down from ``theo - h`` (>= 0), ask rounded up from ``theo + h`` (>= 1)."""
        bid = np.maximum(np.floor((theo - h) * 100.0 + 1e-7), 0.0).astype(np.int64)
        ask = np.maximum(np.ceil((theo + h) * 100.0 - 1e-7), 1.0).astype(np.int64)
        return bid, ask

    def _draw_sizes(self, mask: BoolArray) -> None:
        rng = self._rng
        sl = slice(self._lo, self._lo + self._n)
        k = self._strikes[sl]
        away = np.minimum(np.abs(k - self._spot) / 3.0, 8.0)
        base = 10.0 + 25.0 * away
        draw_b = np.maximum(np.round(base[None, :] * rng.lognormal(0.0, 0.5, (2, self._n))), 1).astype(
            np.int64
        )
        draw_a = np.maximum(np.round(base[None, :] * rng.lognormal(0.0, 0.5, (2, self._n))), 1).astype(
            np.int64
        )
        self._bsz[:, sl] = np.where(mask, draw_b, self._bsz[:, sl])
        self._asz[:, sl] = np.where(mask, draw_a, self._asz[:, sl])

    def _quote_window(self, t: int, labels: list[AnomalyLabel], *, force: bool) -> list[OptionQuote]:
        """Price the window at ``t``, apply anomalies, trade, and publish the quotes that changed."""
        sl = slice(self._lo, self._lo + self._n)
        strikes = self._strikes[sl]
        level = self._vol_level(t)
        calls, puts, x, df = self._theo(strikes, t, level)
        theo = np.stack([calls, puts])
        self._fair = (calls, puts)
        h = self._half_spread(theo, x, t)
        bid, ask = self._to_quotes(theo, h)
        if not force:
            self._draw_sizes(self._rng.random((2, self._n)) < 0.2)
        bsz, asz = self._bsz[:, sl].copy(), self._asz[:, sl].copy()

        frozen = np.zeros((2, self._n), bool)
        spike = np.zeros((2, self._n))
        if not force:
            self._run_anomalies(t, labels, bid, ask, h, df, level, frozen, spike)
            self._trade(t, bid, ask, strikes, spike, frozen)
        bsz = np.where(bid > 0, np.maximum(bsz, 1), 0)

        vol, last, last_size = self._volume[:, sl], self._last[:, sl], self._last_size[:, sl]
        new = np.stack([bid, ask, bsz, asz, last, last_size, vol])
        pub = self._pub[:, :, sl]
        changed = np.any(new != pub, axis=0) & ~frozen
        price_changed = changed & ((new[0] != pub[0]) | (new[1] != pub[1]))
        self._chg_spot[:, sl] = np.where(price_changed, self._spot, self._chg_spot[:, sl])
        self._pub[:, :, sl] = np.where(changed[None], new, pub)
        # flags as classify_quote would set them (the same rules, vectorized)
        no_bid, no_ask = (bid <= 0) | (bsz == 0), (ask <= 0) | (asz == 0)
        both = ~no_bid & ~no_ask
        flag_bits = (
            no_bid * int(QuoteFlag.NO_BID)
            + no_ask * int(QuoteFlag.NO_ASK)
            + (both & (bid > ask)) * int(QuoteFlag.CROSSED)
            + (both & (bid == ask)) * int(QuoteFlag.LOCKED)
        )
        ii, rr = np.nonzero(changed.T)  # strike ascending, call before put
        cols = [a[rr, ii].tolist() for a in (bid, ask, bsz, asz, last, last_size, vol, flag_bits)]
        quotes: list[OptionQuote] = []
        for i, r, b, a, bs, as_, lp, ls, v, fl in zip(ii.tolist(), rr.tolist(), *cols, strict=True):
            k = int(self._strikes[self._lo + i])
            q = OptionQuote(
                strike=float(k),
                right=_RIGHTS[r],
                bid=b / 100.0,
                ask=a / 100.0,
                bid_size=bs,
                ask_size=as_,
                last=lp / 100.0,
                last_size=ls,
                volume=v,
                quote_ts_ns=t,
                flags=_FLAGS[fl],
                con_id=self._con_id(k, r),
            )
            self._book[q.key] = q
            quotes.append(q)
        return quotes

    def _trade(
        self,
        t: int,
        bid: IntArray,
        ask: IntArray,
        strikes: FloatArray,
        spike: FloatArray,
        frozen: BoolArray,
    ) -> None:
        """Poisson trades per contract, most intense near the money; volume is cumulative.

        Distance from the money is in dollars over ``max(expected move, $1.50)``, so the wings keep
        trading into the close. Trade sizes are geometric; the ordinary volume of one contract is
        capped at ``max_ordinary_contracts_per_s`` (no spike in a clean run). An injected spike adds
        ``mult`` times the contract's usual volume rate, and at least ``volume_spike_min_per_s``.
        A frozen (stale) contract does not trade: nothing accumulates to be released at once."""
        cfg, rng = self._cfg, self._rng
        s = self._session
        sl = slice(self._lo, self._lo + self._n)
        step_s = self._step_ns / 1e9
        dt_min = self._step_ns / NS_PER_MINUTE
        m = max((t - s.open_ns) / NS_PER_MINUTE, 0.0)
        rem = max(s.minutes_to_close(t), 0.0)
        tod = 1.0 + 0.8 * math.exp(-m / 30.0) + 1.0 * math.exp(-rem / 30.0)
        scale = max(self._spot * self._vol_level(t) * math.sqrt(s.tau(t)), 1.5)
        d = (strikes - self._spot) / scale
        lam = (cfg.trade_rate_atm_per_min * np.exp(-0.5 * (d / 1.5) ** 2) + 0.2) * tod * dt_min
        cap = max(int(cfg.max_ordinary_contracts_per_s * step_s), 1)
        n = rng.poisson(np.broadcast_to(lam, (2, self._n)))
        last_size = np.minimum(rng.geometric(cfg.trade_size_p, (2, self._n)), cap).astype(np.int64)
        others = rng.negative_binomial(np.maximum(n - 1, 1), cfg.trade_size_p) + (n - 1)
        buy = rng.random((2, self._n)) < 0.5
        traded = (n > 0) & ~frozen
        step_vol = np.where(traded, np.minimum(last_size + np.where(n > 1, others, 0), cap), 0)
        if spike.any():  # injected volume spike: extra volume from the anomaly generator
            usual_per_s = lam / step_s / cfg.trade_size_p
            rate = np.maximum(spike * usual_per_s, cfg.volume_spike_min_per_s) * step_s
            extra_vol = np.where(
                spike > 0, self._arng.poisson(np.broadcast_to(rate, (2, self._n))), 0
            ).astype(np.int64)
            block = np.maximum(np.minimum(extra_vol, 10 * last_size), 1)
            last_size = np.where(traded, last_size, block)
            step_vol = step_vol + extra_vol
            traded = traded | (extra_vol > 0)
        price = np.where(buy | (bid <= 0), ask, bid)
        self._volume[:, sl] += step_vol
        self._last[:, sl] = np.where(traded, price, self._last[:, sl])
        self._last_size[:, sl] = np.where(traded, last_size, self._last_size[:, sl])

    # ----------------------------------------------------------------- anomalies

    def _run_anomalies(
        self,
        t: int,
        labels: list[AnomalyLabel],
        bid: IntArray,
        ask: IntArray,
        h: FloatArray,
        df: float,
        level: float,
        frozen: BoolArray,
        spike: FloatArray,
    ) -> None:
        cfg = self._cfg
        # end what expired (or left the window)
        keep: list[_Active] = []
        for a in self._active:
            if t >= a.end_ns or a in self._ending:
                self._retire(a, t, labels)
            else:
                keep.append(a)
        self._active = keep
        self._ending.clear()
        horizon = t - int(cfg.anomaly_cooldown_s * 1e9)
        self._recent = [(e, ks) for e, ks in self._recent if e > horizon]
        s_bid, s_ask = self._und_quote()
        q = _Quotes(t, self._strikes[self._lo : self._lo + self._n], bid, ask, h, df, level, s_bid, s_ask)
        # show the running ones on this step's quotes, then start new ones against those quotes
        gone = [a for a in self._active if not self._apply(a, q, frozen, spike, labels)]
        for a in gone:
            self._active.remove(a)
            self._retire(a, t, labels)
        kinds: list[str] = list(self._pending_kinds)
        self._pending_kinds.clear()
        if cfg.anomaly_rate_per_min > 0.0 and cfg.anomaly_kinds:
            p = 1.0 - math.exp(-cfg.anomaly_rate_per_min * self._step_ns / NS_PER_MINUTE)
            if self._arng.random() < p:
                kinds.append(cfg.anomaly_kinds[int(self._arng.integers(len(cfg.anomaly_kinds)))])
        for kind in kinds:
            started = self._start(kind, q)
            if started is None:
                continue
            self._active.append(started)
            if started.shown:
                labels.append(started.label)
            if not self._apply(started, q, frozen, spike, labels):  # pragma: no cover - checked in _start
                self._active.remove(started)
                self._retire(started, t, labels)

    def _apply(
        self, a: _Active, q: _Quotes, frozen: BoolArray, spike: FloatArray, labels: list[AnomalyLabel]
    ) -> bool:
        """Show ``a`` on this step's quotes (in place); False if it can no longer be shown."""
        cfg = self._cfg
        bid, ask, df, t = q.bid, q.ask, q.df, q.t
        com = cfg.commission_per_contract / MULTIPLIER
        need = cfg.anomaly_edge
        j = a.idx - self._lo
        k = float(q.strikes[j])
        if a.label.kind == "parity":
            if a.sign > 0:  # synthetic rich: C_bid - P_ask > S_ask - K df
                target = (q.s_ask - k * df + 2 * com + need) * 100.0
                d = max(math.ceil(target - (bid[0, j] - ask[1, j])), 0)
                put_move = min(d // 2, int(bid[1, j]))
                self._shift(bid, ask, 0, j, d - put_move)
                self._shift(bid, ask, 1, j, -put_move)
            else:  # synthetic cheap: C_ask - P_bid < S_bid - K
                target = (q.s_bid - k - 2 * com - need) * 100.0
                d = max(math.ceil((ask[0, j] - bid[1, j]) - target), 0)
                call_move = min(d // 2, int(bid[0, j]))
                self._shift(bid, ask, 0, j, -call_move)
                self._shift(bid, ask, 1, j, d - call_move)
        elif a.label.kind == "vertical":
            if a.right == 0:  # call K+1 bid above call K ask
                d = math.ceil(ask[0, j] - bid[0, j + 1] + (2 * com + need) * 100.0)
                self._shift(bid, ask, 0, j + 1, max(d, 0))
            else:  # put K bid above put K+1 ask
                d = math.ceil(ask[1, j + 1] - bid[1, j] + (2 * com + need) * 100.0)
                self._shift(bid, ask, 1, j, max(d, 0))
        elif a.label.kind == "butterfly":
            d = max(
                math.ceil((ask[r, j - 1] + ask[r, j + 1] + (4 * com + need) * 100.0 - 2 * bid[r, j]) / 2.0)
                for r in (0, 1)
            )
            self._shift(bid, ask, 0, j, max(d, 0))
            self._shift(bid, ask, 1, j, max(d, 0))
        elif a.label.kind == "smile_outlier":
            shown = self._smile_quotes(j, a.sign, a.size, q)
            if shown is None:  # no observable outlier fits here now: the strike is clean again
                return False
            bid[:, j], ask[:, j] = shown
        elif a.label.kind == "crossed":
            bid[a.right, j] = ask[a.right, j] + int(a.size)
        elif a.label.kind == "stale":
            frozen[a.right, j] = True
            if not a.shown:
                if self._stale_move(a, j, q) < cfg.stale_observable_ticks * TICK - 1e-9:
                    a.moved_ns = -1
                else:
                    a.moved_ns = t if a.moved_ns < 0 else a.moved_ns
                    if t - a.moved_ns >= int(cfg.stale_observable_s * 1e9):
                        self._show(a, t, labels)
        elif a.label.kind == "volume_spike":
            spike[a.right, j] = a.size
        return True

    @staticmethod
    def _shift(bid: IntArray, ask: IntArray, r: int, j: int, cents: int) -> None:
        bid[r, j] = max(int(bid[r, j]) + cents, 0)
        ask[r, j] = max(int(ask[r, j]) + cents, int(bid[r, j]) + 1, 1)

    def _smile_quotes(self, j: int, sign: int, size: float, q: _Quotes) -> tuple[IntArray, IntArray] | None:
        """Quotes (cents, call and put) of strike ``j`` re-priced at ``level +- vol points`` so that the
        strike is an observable outlier free of static arbitrage, or None if no size does that.

        Call and put move alike (parity holds). The smallest size of a grid up to ``size`` that is
        observable is taken, if it leaves no static arbitrage (convexity bounds a single strike: on $1
        strikes a rich bid can only exceed the value by the butterfly slack plus the wings'
        half-spread, a fraction of a vol point before the afternoon; a bigger outlier would also bend
        a smile fitted on few quotes). Observable: the strike is at least $1 from the forward (the
        strikes at the money set the smile's level), its out-of-the-money contract has the executable
        side (bid when rich, ask when cheap) beyond the clean value by ``max(min_vol_pts x vega,
        min_dollars)`` plus the commission, and the out-of-the-money strike two further out has a bid
        (a smile fitted on two-sided quotes covers the strike on both sides)."""
        cfg = self._cfg
        k = q.strikes[j : j + 1]
        kk = float(k[0])
        fwd = self._spot / q.df
        theo = np.array([self._fair[0][j], self._fair[1][j]]) * 100.0
        com = cfg.commission_per_contract / MULTIPLIER
        if abs(kk - fwd) < 1.0:
            return None  # the strikes at the money set the smile's level: not a single-strike outlier
        rows = [0] if kk > fwd else [1]
        for r in rows:  # the strike must lie well inside the two-sided out-of-the-money range
            out = j + 2 if r == 0 else j - 2
            if not (0 <= out < self._n and q.bid[r, out] > 0):
                return None
        for frac in _SMILE_SIZES:
            vp = size * frac
            bumped = max(q.level + sign * vp / 100.0, 0.2 * q.level)
            c, p, _, _ = self._theo(k, q.t, bumped)
            cb, ca = self._to_quotes(np.array([[c[0]], [p[0]]]), q.h[:, j : j + 1])
            cb, ca = cb[:, 0], ca[:, 0]
            vega = abs(float(c[0]) * 100.0 - theo[0]) / vp  # cents per vol point of the level
            margin = max(cfg.smile_outlier_min_vol_pts * vega, cfg.smile_outlier_min_dollars * 100.0)
            dist = (cb - theo) if sign > 0 else (theo - ca)
            if not all(dist[r] >= margin + com * 100.0 - 1e-9 for r in rows):
                continue
            trial_b, trial_a = q.bid.copy(), q.ask.copy()
            trial_b[:, j], trial_a[:, j] = cb, ca
            found = find_static_arbitrage(
                q.strikes,
                trial_b[0] / 100.0,
                trial_a[0] / 100.0,
                trial_b[1] / 100.0,
                trial_a[1] / 100.0,
                q.s_bid,
                q.s_ask,
                discount=q.df,
                involving=j,
            )
            return None if found else (cb, ca)  # larger sizes only come closer to arbitrage
        return None

    def _stale_move(self, a: _Active, j: int, q: _Quotes) -> float:
        """How far (dollars) the frozen contract's value moved with the underlying since its quote
        last changed: its clean value now against the same model at the spot of that change."""
        k = q.strikes[j : j + 1]
        c, p, _, _ = self._theo(k, q.t, q.level, spot=a.ref_spot)
        then = float((c if a.right == 0 else p)[0])
        return abs(float(self._fair[a.right][j]) - then)

    def _start(self, kind: str, q: _Quotes) -> _Active | None:
        """Pick contracts for a new anomaly of ``kind`` (None if none is suitable right now).

        Strikes of running anomalies, their neighbours and strikes whose anomaly ended less than
        ``anomaly_cooldown_s`` ago are not used (a quote must be clean before it is tampered with)."""
        cfg, rng = self._cfg, self._arng
        t, strikes = q.t, q.strikes
        atm = int(np.argmin(np.abs(strikes - self._spot)))
        right = int(rng.integers(2))
        sign = 1 if rng.random() < 0.5 else -1
        lo_s, hi_s = cfg.anomaly_duration_s
        end = t + int(float(rng.uniform(lo_s, hi_s)) * 1e9)
        busy = {i - self._lo for a in self._active for i in a.strikes}
        busy |= {i - self._lo for _, ks in self._recent for i in ks}

        def free(span: tuple[int, ...]) -> bool:
            guard = {i + d for i in span for d in (-1, 0, 1)}
            return min(span) >= 1 and max(span) <= self._n - 2 and not guard & busy

        size = 0.0
        shown, hold_ns, ref_spot = True, 0, math.nan
        span: tuple[int, ...]
        rights: tuple[str, ...]
        if kind == "parity":
            j = atm + int(rng.integers(-2, 3))
            span, rights, r_lab = (j,), ("C", "P"), -1
            detail = "synthetic rich: C_bid - P_ask > S_ask - K*df" if sign > 0 else "synthetic cheap"
        elif kind == "vertical":
            j = atm + int(rng.integers(0, 4)) if right == 0 else atm - 1 - int(rng.integers(0, 4))
            span, rights, r_lab = (j, j + 1), ("CP"[right],), right
            detail = "call K+1 bid > call K ask" if right == 0 else "put K bid > put K+1 ask"
        elif kind == "butterfly":
            j = atm + int(rng.integers(-2, 3))
            span, rights, r_lab = (j - 1, j, j + 1), ("C", "P"), -1
            detail = "middle bid above the wings' ask average (calls and puts)"
        elif kind == "smile_outlier":
            if any(a.label.kind == kind for a in self._active):
                return None  # one at a time: two outliers among the few quotes of a late smile blur it
            # the first strike (random order) and side where an observable outlier fits now
            offsets = rng.permutation(np.array([1, -1, 2, -2, 3, -3, 4, -4, 5, -5]))
            size = cfg.smile_outlier_vol_pts
            pick = next(
                (
                    (atm + off, sg)
                    for off in offsets.tolist()
                    for sg in (sign, -sign)
                    if free((atm + off,)) and self._smile_quotes(atm + off, sg, size, q) is not None
                ),
                None,
            )
            if pick is None:
                return None
            j, sign = pick
            span, rights, r_lab = (j,), ("C", "P"), -1
            detail = (
                f"{'rich' if sign > 0 else 'cheap'}: about {size:.1f} vol points off the smile, "
                "observable and below arbitrage"
            )
        elif kind == "crossed":
            j = atm + int(rng.integers(-4, 5))
            size = float(rng.integers(0, 3))
            span, rights, r_lab = (j,), ("CP"[right],), right
            detail = "locked (bid == ask)" if size == 0 else f"crossed by {int(size)} tick(s)"
        elif kind == "stale":
            j = atm + int(rng.integers(-3, 4))
            span, rights, r_lab = (j,), ("CP"[right],), right
            detail = (
                f"quote stopped updating; labelled once its value is {cfg.stale_observable_ticks:g} "
                f"ticks off for {cfg.stale_observable_s:g}s, until refreshed"
            )
            # frozen now, labelled once observable (see _stale_move), then held for the duration
            shown, hold_ns = False, end - t
            end = t + int(cfg.stale_max_wait_s * 1e9)
            if 0 <= j < self._n:
                ref_spot = float(self._chg_spot[right, self._lo + j])
        elif kind == "volume_spike":
            j = atm + int(rng.integers(-6, 7))
            size = float(rng.uniform(*cfg.volume_spike_mult))
            span, rights, r_lab = (j,), ("CP"[right],), right
            detail = f"volume x{size:.0f} its usual rate (at least {cfg.volume_spike_min_per_s:g}/s)"
        else:  # pragma: no cover - validated in SimConfig / inject
            raise ValueError(f"unknown anomaly kind {kind!r}")
        if not free(span):
            return None
        contracts: tuple[Contract, ...] = tuple((float(strikes[i]), r) for i in span for r in rights)
        if kind == "butterfly":
            contracts = tuple(sorted(contracts, key=lambda c: (c[1], c[0])))
        label = AnomalyLabel(
            id="",
            kind=kind,
            expiry=self._expiry,
            contracts=contracts,
            start_ns=t,
            end_ns=None,
            detail=detail,
        )
        a = _Active(
            label=label,
            idx=self._lo + j,  # the strike an anomaly is anchored on (the middle of a butterfly)
            right=r_lab,
            sign=sign,
            end_ns=end,
            size=size,
            strikes=tuple(self._lo + i for i in span),
            shown=False,
            hold_ns=hold_ns,
            ref_spot=ref_spot,
        )
        if shown:
            self._show(a, t, None)
        return a

    def _show(self, a: _Active, t: int, labels: list[AnomalyLabel] | None) -> None:
        """Give ``a`` its label (id, start now) and, for a stale freeze, its end."""
        self._label_seq += 1
        a.label = replace(a.label, id=f"sim-{self._cfg.seed}-{self._label_seq}", start_ns=t)
        if not a.shown and a.hold_ns:
            a.end_ns = t + a.hold_ns
        a.shown = True
        log.debug("anomaly started: %s %s %s", a.label.id, a.label.kind, a.label.contracts)
        if labels is not None:
            labels.append(a.label)

    def _retire(self, a: _Active, t: int, labels: list[AnomalyLabel]) -> None:
        """End ``a`` at ``t``: its end label if it was shown; its strikes cool down."""
        if a.shown:
            labels.append(self._end(a, t))
        self._recent.append((t, a.strikes))

    def _end(self, a: _Active, t: int) -> AnomalyLabel:
        lab = a.label
        log.debug("anomaly ended: %s", lab.id)
        return replace(lab, end_ns=t)

    # ----------------------------------------------------------------- events

    def _und_quote(self) -> tuple[float, float]:
        b = math.floor(self._spot * 100.0) / 100.0
        return b, round(b + 0.01, 2)

    def _underlying_tick(self) -> UnderlyingTick:
        b, a = self._und_quote()
        return UnderlyingTick(
            symbol=SYMBOL,
            last=round(self._spot, 2),
            bid=b,
            ask=a,
            volume=self._und_volume,
            prev_close=self._cfg.spot,
            quote_ts_ns=self._t,
        )

    def _chain_update(
        self, quotes: tuple[OptionQuote, ...], removed: tuple[float, ...], *, full: bool
    ) -> ChainUpdate:
        return ChainUpdate(
            symbol=SYMBOL,
            expiry=self._expiry,
            quotes=quotes,
            full=full,
            multiplier=MULTIPLIER,
            tick=TICK,
            underlying=self._spot,
            removed_strikes=removed,
            trading_class=SYMBOL,
        )

    def _closed_notice(self) -> Notice:
        close = self._session.close_utc.strftime("%H:%M UTC")
        return Notice(
            level=NoticeLevel.INFO,
            code="session.closed",
            message=f"session closed at {close}: the {self._expiry} options expired; no more quotes",
            source="sim",
            attributes=(("expiry", self._expiry),),
        )

    def _con_id(self, strike: int, r: int) -> int:
        return 900_000_000 + (int(self._expiry) % 10_000) * 10_000 + strike * 2 + r
