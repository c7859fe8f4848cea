"""Measured quality on the simulator: quiet on clean runs, per-kind precision and recall on injected ones.

The target of the issue, asserted as is: per kind, precision and recall of at least 0.95 over the
runs below (four seeds, each at another time of day, 1500 steps of 250 ms, one injection every 4 s
cycling through the kinds), and no arbitrage, crossed, smile-outlier or volume-spike signal on clean
runs. Figures are printed with ``-s``. The simulator labels only what is observable (a smile outlier
beyond the smile by a clear margin and free of static arbitrage, a stale quote once its value has
moved, a spike well above any ordinary flow). Smile outliers at 15:30 are the hard case (a smile
fitted on six to nine strikes); ``test_smile_outliers_late_in_the_day`` measures them apart.
"""

from __future__ import annotations

import pytest

from agent.detector import ARBITRAGE_KINDS
from agent.detector.scoring import KindScore, latest_by_id, score
from agent.feeds.anomalies import ANOMALY_KINDS
from agent.feeds.sim import SimConfig
from tests.agent.detector.simrun import run_sim

TARGET = 0.95
QUIET_KINDS = (*ARBITRAGE_KINDS, "crossed", "smile_outlier", "volume_spike")


@pytest.mark.parametrize(("seed", "start"), [(1, "09:45"), (2, "12:00"), (3, "15:30"), (4, "10:00")])
def test_clean_market_gives_no_arbitrage_signal(seed: int, start: str) -> None:
    run = run_sim(SimConfig(seed=seed), 600, start=start)
    loud = [s for s in latest_by_id(run.signals) if s.kind in QUIET_KINDS]
    assert loud == []


@pytest.fixture(scope="module")
def injected() -> dict[str, KindScore]:
    totals: dict[str, list[int]] = {k: [0, 0, 0, 0, 0] for k in ANOMALY_KINDS}
    for seed, start in ((11, "09:45"), (12, "12:00"), (13, "15:30"), (14, "11:00")):
        run = run_sim(SimConfig(seed=seed), 1500, start=start, inject_every=16, inject_kinds=ANOMALY_KINDS)
        for kind, ks in score(run.signals, run.labels.values(), end_ns=run.end_ns).items():
            t = totals[kind]
            t[0] += ks.signals
            t[1] += ks.true_signals
            t[2] += ks.labels
            t[3] += ks.found_labels
            t[4] += ks.collateral
    out = {k: KindScore(k, *v) for k, v in totals.items()}
    print("\nkind            signals  precision  labels  recall  collateral")
    for k, ks in out.items():
        print(
            f"{k:14s} {ks.signals:8d} {ks.precision:10.3f} {ks.labels:7d} {ks.recall:7.3f} {ks.collateral:11d}"
        )
    return out


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_injected_anomalies_are_found_per_kind(injected: dict[str, KindScore], kind: str) -> None:
    ks = injected[kind]
    assert ks.labels >= 20, f"too few {kind} labels to measure"
    assert ks.precision >= TARGET, ks
    assert ks.recall >= TARGET, ks


def test_smile_outliers_late_in_the_day() -> None:
    """15:30 alone, four more seeds: six to nine two-sided out-of-the-money strikes carry the fit,
    so five SVI parameters could follow a single rich or cheap strike (the fit's robust weights
    start from the previous fit, its Tukey scale may fall to half a half-spread, and a fit that
    sets one of six strikes aside still counts: see ``agent.detector.smile``).

    Measured over seeds 1-24 at 15:30 (``scoring.score`` as here): precision 0.937 and recall
    0.879 before those changes, 0.981 and 0.981 after; at 09:45 and 12:00 unchanged (0.996/1.000
    and 0.984/1.000 before, 0.996/1.000 and 0.981/1.000 after). These four seeds: 41 of 43
    signals true, 38 of 38 labels found."""
    tot = [0, 0, 0, 0]
    for seed in (21, 22, 23, 24):
        run = run_sim(SimConfig(seed=seed), 1500, start="15:30", inject_every=16, inject_kinds=ANOMALY_KINDS)
        ks = score(run.signals, run.labels.values(), end_ns=run.end_ns)["smile_outlier"]
        for i, v in enumerate((ks.signals, ks.true_signals, ks.labels, ks.found_labels)):
            tot[i] += v
    ks = KindScore("smile_outlier", tot[0], tot[1], tot[2], tot[3], 0)
    print(
        f"\n15:30 smile_outlier: {ks.signals} signals precision {ks.precision:.3f}, {ks.labels} labels recall {ks.recall:.3f}"
    )
    assert ks.labels >= 20
    assert ks.precision >= TARGET, ks
    assert ks.recall >= TARGET, ks
