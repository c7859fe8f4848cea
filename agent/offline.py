"""The detector run offline over a file: ``spyctl detect`` and ``spyctl score``.

The same engine and thresholds as the detector role, fed from a recording or an IB chain CSV, one
evaluation per chain update (no coalescing: offline there is no hurry).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from pathlib import Path

from agent.detector.engine import Detector
from agent.detector.scoring import KindScore, score
from agent.detector.signals import Signal
from agent.domain import ChainUpdate, UnderlyingTick
from agent.feeds.anomalies import read_labels
from agent.feeds.replay import TimedPayload, open_replay
from agent.roles.detector import detector_config
from agent.session import NEW_YORK, session_on_or_after, today_new_york
from agent.settings import DetectorSettings


def _signals(
    items: Iterable[TimedPayload], first_ts_ns: int, settings: DetectorSettings | None
) -> Iterator[Signal]:
    day = (
        dt.datetime.fromtimestamp(first_ts_ns / 1e9, dt.UTC).astimezone(NEW_YORK).date()
        if first_ts_ns
        else today_new_york()
    )
    detector = Detector(detector_config(settings or DetectorSettings()), session_on_or_after(day))
    tick: UnderlyingTick | None = None
    for item in items:
        p = item.payload
        if isinstance(p, UnderlyingTick):
            tick = p
        elif isinstance(p, ChainUpdate):
            if p.underlying_tick is not None:
                tick = p.underlying_tick
            yield from detector.on_chain(p, tick, item.ts_ns).signals_changed


def detect_file(path: Path, settings: DetectorSettings | None = None) -> Iterator[Signal]:
    """Signals (every new version) found in a recording or an IB chain CSV, in order."""
    source = open_replay(path)
    yield from _signals(source.items(), source.first_ts_ns, settings)


def labels_path_for(recording: Path) -> Path:
    """Where ``spyctl score`` looks for labels by default: ``session.spyrec`` -> ``session.labels.jsonl``."""
    return recording.with_suffix(".labels.jsonl")


def score_recording(
    recording: Path, labels: Path, settings: DetectorSettings | None = None, slack_ms: float = 500.0
) -> dict[str, KindScore]:
    """Per-kind precision and recall of the detector over a recording, against its labels."""
    source = open_replay(recording)
    end_ns = 0

    def tracked() -> Iterator[TimedPayload]:
        nonlocal end_ns
        for item in source.items():
            end_ns = max(end_ns, item.ts_ns)
            yield item

    signals = list(_signals(tracked(), source.first_ts_ns, settings))
    return score(signals, read_labels(labels), end_ns=end_ns, slack_ns=int(slack_ms * 1e6))
