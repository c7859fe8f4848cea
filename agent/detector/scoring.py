"""Signals against the simulator's ground truth: per-kind precision and recall.

A signal and a label *match* when they have the same kind and expiry, their time windows overlap
(the signal's ``[first_seen, last_seen]`` against the label's ``[start, end)``, ``end`` = the end of
the run while open, widened by ``slack_ns`` on each side) and they share a contract. Precision of a
kind is the share of its signals (one per id, latest version) that match a label of that kind;
recall the share of its labels matched by at least one signal. Signals of a kind that has no labels
(the simulator does not inject box, intrinsic, ...) are counted, not scored. ``collateral`` counts
unmatched signals that match a label of *another* kind (the same injected quote tripping a second
rule): they are false positives for their own kind and reported apart so the cause is visible.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from agent.detector.signals import Signal
from agent.feeds.anomalies import ANOMALY_KINDS, AnomalyLabel


@dataclass(frozen=True, slots=True)
class KindScore:
    kind: str
    signals: int
    true_signals: int
    labels: int
    found_labels: int
    collateral: int

    @property
    def precision(self) -> float:
        return self.true_signals / self.signals if self.signals else math.nan

    @property
    def recall(self) -> float:
        return self.found_labels / self.labels if self.labels else math.nan


def latest_by_id(signals: Iterable[Signal]) -> list[Signal]:
    """One signal per id: its latest version (largest ``last_seen_ns``; resolved wins ties)."""
    out: dict[str, Signal] = {}
    for s in signals:
        old = out.get(s.id)
        if (
            old is None
            or s.last_seen_ns > old.last_seen_ns
            or (s.last_seen_ns == old.last_seen_ns and s.status == "resolved")
        ):
            out[s.id] = s
    return list(out.values())


def _matches(s: Signal, lab: AnomalyLabel, end_ns: int, slack_ns: int) -> bool:
    if s.expiry != lab.expiry:
        return False
    lab_end = lab.end_ns if lab.end_ns is not None else end_ns
    if s.first_seen_ns > lab_end + slack_ns or s.last_seen_ns < lab.start_ns - slack_ns:
        return False
    mine = {(float(k), r.value) for k, r in s.contracts}
    return any((float(k), r) in mine for k, r in lab.contracts)


def score(
    signals: Iterable[Signal],
    labels: Iterable[AnomalyLabel],
    *,
    end_ns: int,
    slack_ns: int = 0,
    kinds: Iterable[str] = ANOMALY_KINDS,
) -> dict[str, KindScore]:
    """Per-kind scores of ``signals`` (every emitted version, or one per id) against ``labels``."""
    sigs = latest_by_id(signals)
    labs = list({lab.id: lab for lab in labels}.values())
    out: dict[str, KindScore] = {}
    for kind in kinds:
        ks = [s for s in sigs if s.kind == kind]
        kl = [lab for lab in labs if lab.kind == kind]
        true = [s for s in ks if any(_matches(s, lab, end_ns, slack_ns) for lab in kl)]
        found = [lab for lab in kl if any(_matches(s, lab, end_ns, slack_ns) for s in ks)]
        true_ids = {s.id for s in true}
        collateral = sum(
            1
            for s in ks
            if s.id not in true_ids
            and any(_matches(s, lab, end_ns, slack_ns) for lab in labs if lab.kind != kind)
        )
        out[kind] = KindScore(kind, len(ks), len(true), len(kl), len(found), collateral)
    return out
