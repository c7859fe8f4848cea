"""Injected anomalies: labels, the label sink, the static-arbitrage checker, and that the quotes show
exactly what the labels say (compared with the same seed run clean)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from agent.domain import ChainBook, ChainUpdate, OptionQuote, QuoteFlag, Right, UnderlyingTick
from agent.feeds.anomalies import (
    ANOMALY_KINDS,
    AnomalyLabel,
    LabelSink,
    find_static_arbitrage,
    read_labels,
)
from agent.feeds.sim import SimConfig, SimulatedMarket
from agent.session import session, to_ns

DAY = session(dt.date(2026, 3, 17))
START = to_ns(DAY.at("11:00"))
COMMISSION = 0.65


# ----------------------------------------------------------------------------- labels and sink


def label(end: int | None = None) -> AnomalyLabel:
    return AnomalyLabel(
        id="sim-7-1",
        kind="vertical",
        expiry="20260317",
        contracts=((590.0, "C"), (591.0, "C")),
        start_ns=1_773_756_000_000_000_000,
        end_ns=end,
        detail="call K+1 bid > call K ask",
    )


def test_label_json_round_trip() -> None:
    for lab in (label(), label(1_773_756_005_000_000_000)):
        assert AnomalyLabel.from_json(lab.to_json()) == lab


def test_label_from_bad_json_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not an anomaly label"):
        AnomalyLabel.from_json('{"id": "x"}')


def test_label_sink_appends_json_lines_and_reads_them_back_merged(tmp_path: Path) -> None:
    path = tmp_path / "labels" / "run.jsonl"
    with LabelSink(path) as sink:
        sink.write(label())
        sink.write_all([label(1_773_756_005_000_000_000)])
    assert len(path.read_text().splitlines()) == 2
    assert read_labels(path) == [label(1_773_756_005_000_000_000)]


# ----------------------------------------------------------------------------- the checker


def chain(**over: list[float]) -> dict[str, np.ndarray]:
    """A clean hand-made chain (S = 100, df = 1), with columns replaced by ``over``."""
    cols = {
        "k": [98.0, 99.0, 100.0, 101.0, 102.0],
        "cb": [2.30, 1.55, 0.95, 0.50, 0.22],
        "ca": [2.40, 1.62, 1.00, 0.55, 0.26],
        "pb": [0.28, 0.52, 0.93, 1.48, 2.20],
        "pa": [0.32, 0.58, 0.98, 1.56, 2.30],
    }
    cols.update(over)
    return {k: np.array(v) for k, v in cols.items()}


def arbs(c: dict[str, np.ndarray], commission: float = 0.0) -> list[tuple[str, float]]:
    found = find_static_arbitrage(
        c["k"], c["cb"], c["ca"], c["pb"], c["pa"], 99.99, 100.01, commission=commission
    )
    return [(a.kind, round(a.edge, 4)) for a in found]


def test_checker_finds_nothing_in_a_clean_chain() -> None:
    assert arbs(chain()) == []


def test_checker_finds_each_kind() -> None:
    assert ("vertical", 0.05) in arbs(chain(cb=[2.30, 1.55, 0.95, 0.50, 0.60]))  # C102 bid > C101 ask
    # butterfly across non-neighbouring strikes only: 98/100/102 with the middle rich
    fly = arbs(chain(cb=[2.30, 1.55, 1.40, 0.50, 0.22], ca=[2.40, 1.62, 1.45, 0.55, 0.26]))
    assert ("butterfly", 0.28) in fly  # 2*1.40 - 2.40 - 0.26 = 0.14 per 1x2x1, 2x2x2 here
    assert ("parity", 0.11) in arbs(
        chain(pa=[0.32, 0.58, 0.83, 1.56, 2.30], pb=[0.28, 0.52, 0.80, 1.48, 2.20])
    )
    assert any(k == "intrinsic" for k, _ in arbs(chain(ca=[1.90, 1.62, 1.00, 0.55, 0.26])))
    assert any(k == "crossed" for k, _ in arbs(chain(cb=[2.30, 1.55, 1.02, 0.50, 0.22])))


def test_commission_removes_thin_edges() -> None:
    thin = chain(cb=[2.30, 1.55, 0.95, 0.50, 0.56])  # C102 bid 0.56 > C101 ask 0.55: one cent
    assert ("vertical", 0.01) in arbs(thin)
    assert not [a for a in arbs(thin, commission=COMMISSION) if a[0] == "vertical"]


def test_checker_can_focus_on_one_strike() -> None:
    c = chain(cb=[2.30, 1.55, 0.95, 0.50, 0.60])
    every = find_static_arbitrage(c["k"], c["cb"], c["ca"], c["pb"], c["pa"], 99.99, 100.01)
    for i, strike in enumerate(c["k"]):
        focused = find_static_arbitrage(
            c["k"], c["cb"], c["ca"], c["pb"], c["pa"], 99.99, 100.01, involving=i
        )
        expected = [a for a in every if any(k == strike for k, _ in a.contracts)]
        assert sorted(focused, key=repr) == sorted(expected, key=repr)
    assert any(a.kind == "vertical" for a in every)


# ----------------------------------------------------------------------------- injection


class Tape:
    def __init__(self, market: SimulatedMarket) -> None:
        self.market = market
        self.book = ChainBook()
        self.und: UnderlyingTick | None = None
        self.fold(market.initial())

    def fold(self, events: Sequence[object]) -> None:
        for e in events:
            if isinstance(e, ChainUpdate):
                self.book.apply(e)
            elif isinstance(e, UnderlyingTick):
                self.und = e

    def q(self, contract: tuple[float, str]) -> OptionQuote:
        return self.book.quotes[(contract[0], Right.parse(contract[1]))]

    def arbitrage(self, commission: float) -> list[tuple[str, frozenset[tuple[float, str]], float]]:
        assert self.und is not None
        strikes = sorted({k for k, _ in self.book.quotes})
        c = [self.book.quotes[(k, Right.CALL)] for k in strikes]
        p = [self.book.quotes[(k, Right.PUT)] for k in strikes]
        found = find_static_arbitrage(
            strikes,
            [x.bid for x in c],
            [x.ask for x in c],
            [x.bid for x in p],
            [x.ask for x in p],
            self.und.bid,
            self.und.ask,
            discount=self.market.discount(),
            commission=commission,
        )
        return [(a.kind, frozenset(a.contracts), a.edge) for a in found]


def mid(q: OptionQuote) -> float:
    return 0.5 * (q.bid + q.ask)


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_injected_anomaly_is_labelled_shows_in_the_quotes_and_reverts(kind: str) -> None:
    seed = 21
    dirty = Tape(
        SimulatedMarket(SimConfig(seed=seed, anomaly_rate_per_min=24.0, anomaly_kinds=(kind,)), DAY, START)
    )
    clean = Tape(SimulatedMarket(SimConfig(seed=seed), DAY, START))
    active: dict[str, AnomalyLabel] = {}
    seen: dict[str, int] = {}  # label id -> steps on which the quotes showed it
    spike_start: dict[str, tuple[int, int]] = {}
    n_labels = 0
    for _ in range(360):
        st_d, st_c = dirty.market.step(), clean.market.step()
        assert st_c.labels == ()
        assert all(not isinstance(e, AnomalyLabel) for e in st_d.events)  # labels never on the stream
        dirty.fold(st_d.events)
        clean.fold(st_c.events)
        for lab in st_d.labels:
            assert lab.kind == kind
            assert lab.expiry == "20260317"
            assert lab.contracts
            if lab.end_ns is None:
                assert lab.start_ns == st_d.ts_ns
                active[lab.id] = lab
                n_labels += 1
                if kind == "volume_spike":
                    spike_start[lab.id] = (dirty.q(lab.contracts[0]).volume, clean.q(lab.contracts[0]).volume)
                if kind == "stale":  # labelled once observable: the clean quote has moved away
                    c = lab.contracts[0]
                    assert (dirty.q(c).bid, dirty.q(c).ask) != (clean.q(c).bid, clean.q(c).ask)
            else:
                assert lab.end_ns == st_d.ts_ns
                assert lab.start_ns < lab.end_ns
                start = active.pop(lab.id)
                assert lab.contracts == start.contracts
                if kind == "volume_spike":
                    d0, c0 = spike_start[lab.id]
                    d_vol = dirty.q(lab.contracts[0]).volume - d0
                    c_vol = clean.q(lab.contracts[0]).volume - c0
                    assert d_vol >= 5 * c_vol + 10, (d_vol, c_vol)
                    # well above a detector's 50 contracts in a second
                    assert d_vol - c_vol >= 60 * (lab.end_ns - lab.start_ns) / 1e9, (d_vol, c_vol)
                    seen[lab.id] = 1
        touched = {c for lab in active.values() for c in lab.contracts}
        # nothing outside the labelled contracts differs from the clean market, except a stale
        # freeze that is not observable yet (its quote is older than the clean one; not labelled)
        for key, qc in clean.book.quotes.items():
            qd = dirty.book.quotes[key]
            if (key[0], key[1].value) not in touched and kind != "volume_spike":
                pending = kind == "stale" and qd.quote_ts_ns < qc.quote_ts_ns
                assert pending or (qd.bid, qd.ask) == (qc.bid, qc.ask), (key, qd, qc)
        arbs = dirty.arbitrage(COMMISSION) if kind in ("parity", "vertical", "butterfly") else []
        for lab in active.values():
            contracts = set(lab.contracts)
            if kind in ("parity", "vertical", "butterfly"):
                hits = [e for k, legs, e in arbs if k == kind and legs <= contracts]
                assert hits, (lab, arbs)
                assert max(hits) >= 0.04, (lab, arbs)
                seen[lab.id] = seen.get(lab.id, 0) + 1
            elif kind == "smile_outlier":
                assert dirty.arbitrage(0.0) == [], lab
                sign = 1 if lab.detail.startswith("rich") else -1
                moves = [sign * (mid(dirty.q(c)) - mid(clean.q(c))) for c in lab.contracts]
                assert min(moves) > 0
                # observable: the out-of-the-money contract's executable side is off its clean value
                # by at least $0.03 plus the commission
                strikes, calls, puts = dirty.market.fair_values()
                k = lab.contracts[0][0]
                i = int(np.searchsorted(strikes, k))
                fwd = dirty.market.spot / dirty.market.discount()
                assert abs(k - fwd) >= 1.0
                otm, value = ((k, "C"), calls[i]) if k > fwd else ((k, "P"), puts[i])
                q = dirty.q(otm)
                off = q.bid - value if sign > 0 else value - q.ask
                assert off >= 0.03 + COMMISSION / 100 - 1e-9, (lab, q, value)
                seen[lab.id] = seen.get(lab.id, 0) + 1
            elif kind == "crossed":
                q = dirty.q(lab.contracts[0])
                assert q.flags & (QuoteFlag.CROSSED | QuoteFlag.LOCKED)
                assert q.bid >= q.ask
                seen[lab.id] = seen.get(lab.id, 0) + 1
            elif kind == "stale":
                q = dirty.q(lab.contracts[0])
                assert q.quote_ts_ns < lab.start_ns
                if (q.bid, q.ask) != (clean.q(lab.contracts[0]).bid, clean.q(lab.contracts[0]).ask):
                    seen[lab.id] = seen.get(lab.id, 0) + 1
    assert n_labels >= 3
    assert len(seen) >= min(3, n_labels)


def test_mixed_injection_at_a_realistic_rate_keeps_running_and_labels_pair_up() -> None:
    m = SimulatedMarket(SimConfig(seed=3, anomaly_rate_per_min=6.0, step_ms=500), DAY, START)
    starts: set[str] = set()
    ends: set[str] = set()
    kinds: set[str] = set()
    for _ in range(1200):
        for lab in m.step().labels:
            kinds.add(lab.kind)
            (starts if lab.end_ns is None else ends).add(lab.id)
    assert ends <= starts
    assert len(starts - ends) <= 2
    assert len(kinds) >= 5


def test_a_strike_cools_down_before_it_carries_another_anomaly() -> None:
    # a quote must be clean again before it is tampered with: e.g. a stale freeze starting as a
    # smile outlier ends on the same contract would freeze the outlier's quote (a real parity break)
    cfg = SimConfig(seed=4, anomaly_rate_per_min=40.0)
    m = SimulatedMarket(cfg, DAY, START)
    ended: dict[float, int] = {}
    n = 0
    for _ in range(2400):
        for lab in m.step().labels:
            strikes = {k for k, _ in lab.contracts}
            if lab.end_ns is None:
                n += 1
                for k in strikes:
                    assert lab.start_ns - ended.get(k, -(10**19)) >= cfg.anomaly_cooldown_s * 1e9, lab
            else:
                ended.update(dict.fromkeys(strikes, lab.end_ns))
    assert n >= 100
