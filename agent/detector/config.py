"""Detector thresholds, with defaults that are quiet on a clean chain (see ``agent.detector``)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Thresholds of every rule. Money is dollars; ``*_ns`` are nanoseconds of market time.

    Costs: ``commission_per_contract`` is charged per contract per leg; ``stock_cost_per_share``
    on the underlying leg of parity and exercise trades. Arbitrage signals need an edge of at
    least ``min_edge_per_unit`` dollars per unit after those costs.
    """

    # costs and arbitrage
    commission_per_contract: float = 0.65
    stock_cost_per_share: float = 0.005
    min_edge_per_unit: float = 0.01
    max_rate: float = 0.08
    """Upper bound of the short rate (calendar, continuous) used in the discount of the bounds:
    the larger the rate, the looser (more conservative) ``K * D`` bounds."""
    max_leg_skew_ns: int = 1_000_000_000
    """Legs of an arbitrage last known to stand more than this apart (``quote_ts_ns``, refreshed by
    every later incremental update that leaves the quote unchanged: see ``ChainState.asof``) were
    never quoted at the same moment as far as the book knows: the finding is ``leg_skew`` (quote
    quality) instead. Unknown times (stamp 0) are not compared; 0 turns the check off."""
    fold_related: bool = True
    """Report one signal per culprit contract: a butterfly/box/vertical whose culprit contract is a
    leg of a simpler signal (intrinsic < vertical < parity < butterfly < box) is folded into it."""

    # hysteresis
    resolve_after_evals: int = 3
    resolve_after_ns: int = 500_000_000
    """A signal is resolved once it has been absent for this many evaluations *and* this long."""

    # smile
    smile_min_points: int = 6
    smile_rich_cheap_vol_pts: float = 0.3
    smile_rich_cheap_min_dollars: float = 0.015
    smile_refit_grid: int = 3
    """On a full refit, (m, sigma) of the SVI fit move on a local grid of this size per side."""
    smile_full_refit_every: int = 8
    """A full robust SVI refit (three reweightings, two local searches) every this many
    evaluations; in between, a warm update (one reweighting against the previous fit, one 3x3
    local search), a fraction of the cost. 1: a full refit on every evaluation."""

    # quote quality
    stale_min_move_ticks: float = 2.0
    """A quote is stale when the underlying moved enough that its value should have moved by this
    many ticks (delta and gamma) while neither its bid nor its ask changed ..."""
    stale_grace_ns: int = 500_000_000
    """... for at least this long after the move."""
    wide_spread_mult: float = 5.0
    wide_spread_min_dollars: float = 0.25
    zero_bid_min_value: float = 0.15
    """A missing bid is a finding only when the fitted value is at least this (cheap wings often
    have no bid)."""

    # flow
    volume_window_ns: int = 1_000_000_000
    volume_baseline_half_life_ns: int = 60_000_000_000
    volume_spike_mult: float = 8.0
    volume_spike_min_contracts: int = 50
    volume_floor_per_s: float = 0.5
    trade_through_ticks: float = 1.0
    iv_jump_z: float = 8.0
    iv_jump_min_vol_pts: float = 2.0
    iv_history_half_life: float = 50.0
    """Evaluations over which the per-contract IV-change distribution decays by half."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in (
            "commission_per_contract",
            "stock_cost_per_share",
            "min_edge_per_unit",
            "max_rate",
        ):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                problems.append(f"{name} must be a non-negative number, got {v!r}")
        if self.resolve_after_evals < 1:
            problems.append(f"resolve_after_evals must be >= 1, got {self.resolve_after_evals}")
        if self.max_leg_skew_ns < 0:
            problems.append(f"max_leg_skew_ns must be >= 0 (0: no check), got {self.max_leg_skew_ns}")
        if self.resolve_after_ns < 0 or self.stale_grace_ns < 0:
            problems.append("resolve_after_ns and stale_grace_ns must be >= 0")
        if self.smile_min_points < 5:
            problems.append(
                f"smile_min_points must be >= 5 (SVI has 5 parameters), got {self.smile_min_points}"
            )
        if self.volume_window_ns <= 0 or self.volume_baseline_half_life_ns <= 0:
            problems.append("volume_window_ns and volume_baseline_half_life_ns must be > 0")
        if self.smile_full_refit_every < 1:
            problems.append(f"smile_full_refit_every must be >= 1, got {self.smile_full_refit_every}")
        if self.smile_refit_grid < 1:
            problems.append(f"smile_refit_grid must be >= 1, got {self.smile_refit_grid}")
        if problems:
            raise ValueError("bad detector config: " + "; ".join(problems))
