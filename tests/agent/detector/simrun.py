"""Runs the detector over the simulated market, the way the agent will: one evaluation per step."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from agent.detector import Detector, DetectorConfig, Signal
from agent.detector.engine import DetectorOutput
from agent.domain import ChainUpdate, UnderlyingTick
from agent.feeds.anomalies import AnomalyLabel
from agent.feeds.sim import SimConfig, SimulatedMarket
from agent.session import Session, session, to_ns

DAY = session(dt.date(2026, 3, 17))


@dataclass
class Run:
    signals: list[Signal] = field(default_factory=list)
    labels: dict[str, AnomalyLabel] = field(default_factory=dict)
    outputs: list[DetectorOutput] = field(default_factory=list)
    end_ns: int = 0
    detector: Detector | None = None


def run_sim(
    cfg: SimConfig,
    steps: int,
    *,
    start: str = "11:00",
    day: Session = DAY,
    detector_config: DetectorConfig | None = None,
    inject_every: int = 0,
    inject_kinds: tuple[str, ...] = (),
    keep_outputs: bool = False,
) -> Run:
    market = SimulatedMarket(cfg, day, to_ns(day.at(start)))
    det = Detector(detector_config or DetectorConfig(), day)
    run = Run(detector=det)
    und: UnderlyingTick | None = None
    chain: ChainUpdate | None = None
    for e in market.initial():
        if isinstance(e, UnderlyingTick):
            und = e
        elif isinstance(e, ChainUpdate):
            chain = e
    assert chain is not None
    out = det.on_chain(chain, und, market.now_ns)
    run.signals.extend(out.signals_changed)
    n_inj = 0
    for step in range(steps):
        if inject_every and inject_kinds and step % inject_every == inject_every // 2:
            market.inject(inject_kinds[n_inj % len(inject_kinds)])
            n_inj += 1
        st = market.step()
        for lab in st.labels:
            run.labels[lab.id] = lab
        updates = [e for e in st.events if isinstance(e, ChainUpdate)]
        for e in st.events:
            if isinstance(e, UnderlyingTick):
                und = e
        if not updates:
            continue
        out = det.on_chain(updates, und, st.ts_ns)
        run.signals.extend(out.signals_changed)
        if keep_outputs:
            run.outputs.append(out)
    run.end_ns = market.now_ns
    return run
