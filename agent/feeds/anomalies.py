"""Injected market anomalies: their kinds, ground-truth labels, and a static-arbitrage checker.

Labels are the answer key of the simulated market. They go to a :class:`LabelSink` (JSON lines in a
file), never onto the event stream: the detector must never see them.

Static arbitrage on *executable* quotes (:func:`find_static_arbitrage`), per share, in dollars:

- long legs are bought at the ask, short legs sold at the bid; a missing bid sells for 0 (which
  never creates an arbitrage), a missing ask cannot be bought (``+inf``);
- ``commission`` is charged per contract per leg (``$0.65`` by default in the simulator) and divided
  by the multiplier to be per share;
- bounds are valid for American options on a non-dividend-paying underlying with a small positive
  rate and ``discount`` = the discount factor to expiry:
  ``S - K <= C - P <= S - K * discount`` (parity), long box cost ``>= (K2 - K1) * discount``,
  short box proceeds ``<= K2 - K1``, vertical spreads within ``[0, K2 - K1]``, butterflies
  ``>= 0``, and no option offered below its exercise value.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import IO, Final

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

ANOMALY_KINDS: Final = (
    "parity",
    "vertical",
    "butterfly",
    "smile_outlier",
    "crossed",
    "stale",
    "volume_spike",
)
ARBITRAGE_KINDS: Final = ("parity", "vertical", "butterfly")
COMMISSION_PER_CONTRACT: Final = 0.65

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Contract = tuple[float, str]


@dataclass(frozen=True, slots=True)
class AnomalyLabel:
    """Ground truth of one injected anomaly.

    ``contracts`` are ``(strike, "C"|"P")``; ``start_ns`` is the market time of the first step that
    shows it, ``end_ns`` the first step that no longer does (``None`` while it is still active).
    """

    id: str
    kind: str
    expiry: str
    contracts: tuple[Contract, ...]
    start_ns: int
    end_ns: int | None
    detail: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "kind": self.kind,
                "expiry": self.expiry,
                "contracts": [[k, r] for k, r in self.contracts],
                "start_ns": self.start_ns,
                "end_ns": self.end_ns,
                "detail": self.detail,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> AnomalyLabel:
        try:
            d = json.loads(text)
            end = d["end_ns"]
            return cls(
                id=str(d["id"]),
                kind=str(d["kind"]),
                expiry=str(d["expiry"]),
                contracts=tuple((float(k), str(r)) for k, r in d["contracts"]),
                start_ns=int(d["start_ns"]),
                end_ns=None if end is None else int(end),
                detail=str(d.get("detail", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not an anomaly label: {text[:80]!r} ({exc})") from None


class LabelSink:
    """Appends labels as JSON lines to ``path`` (one line per start and one per end of an anomaly)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = self.path.open("a", encoding="utf-8")

    def write(self, label: AnomalyLabel) -> None:
        if self._fh is None:
            raise ValueError(f"label sink {self.path} is closed")
        self._fh.write(label.to_json() + "\n")
        self._fh.flush()

    def write_all(self, labels: tuple[AnomalyLabel, ...] | list[AnomalyLabel]) -> None:
        for label in labels:
            self.write(label)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> LabelSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_labels(path: str | Path) -> list[AnomalyLabel]:
    """All labels of a sink file, merged by id (the end record wins over the start record)."""
    merged: dict[str, AnomalyLabel] = {}
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                label = AnomalyLabel.from_json(line)
                merged[label.id] = label
    return list(merged.values())


@dataclass(frozen=True, slots=True)
class Arbitrage:
    """One executable static arbitrage: ``edge`` is the riskless profit per share after commission."""

    kind: str  # crossed | intrinsic | vertical | butterfly | parity | box
    contracts: tuple[Contract, ...]
    edge: float


@lru_cache(maxsize=64)
def _pairs(n: int) -> tuple[IntArray, IntArray]:
    i, k = np.triu_indices(n, 1)
    return i.astype(np.int64), k.astype(np.int64)


@lru_cache(maxsize=64)
def _triples(n: int) -> tuple[IntArray, IntArray, IntArray]:
    idx = np.arange(n)
    i, j, k = np.meshgrid(idx, idx, idx, indexing="ij")
    m = (i < j) & (j < k)
    return i[m].astype(np.int64), j[m].astype(np.int64), k[m].astype(np.int64)


@lru_cache(maxsize=512)
def _triples_involving(n: int, f: int) -> tuple[IntArray, IntArray, IntArray]:
    i, j, k = _triples(n)
    m = (i == f) | (j == f) | (k == f)
    return i[m], j[m], k[m]


@lru_cache(maxsize=512)
def _pairs_involving(n: int, f: int) -> tuple[IntArray, IntArray]:
    i, k = _pairs(n)
    m = (i == f) | (k == f)
    return i[m], k[m]


def find_static_arbitrage(
    strikes: npt.ArrayLike,
    call_bid: npt.ArrayLike,
    call_ask: npt.ArrayLike,
    put_bid: npt.ArrayLike,
    put_ask: npt.ArrayLike,
    und_bid: float,
    und_ask: float,
    *,
    discount: float = 1.0,
    commission: float = 0.0,
    multiplier: int = 100,
    min_edge: float = 1e-9,
    involving: int | None = None,
) -> list[Arbitrage]:
    """Every static arbitrage on executable quotes of one expiry (see the module docstring).

    Arrays are per strike, strikes ascending and distinct; bids of 0/NaN mean no bid, asks of
    0/NaN no ask. ``commission`` is dollars per contract per leg. ``involving`` restricts the search
    to combinations that use the strike at that index (much faster). Results have ``edge > min_edge``.
    """
    k = np.asarray(strikes, dtype=np.float64)
    n = k.size
    c = commission / multiplier

    def bids(a: npt.ArrayLike) -> FloatArray:
        x = np.asarray(a, dtype=np.float64)
        return np.where(np.isfinite(x) & (x > 0.0), x, 0.0)

    def asks(a: npt.ArrayLike) -> FloatArray:
        x = np.asarray(a, dtype=np.float64)
        return np.where(np.isfinite(x) & (x > 0.0), x, np.inf)

    cb, ca, pb, pa = bids(call_bid), asks(call_ask), bids(put_bid), asks(put_ask)
    out: list[Arbitrage] = []

    def emit(kind: str, edge: FloatArray, legs: list[tuple[IntArray, str]]) -> None:
        for m in np.flatnonzero(edge > min_edge):
            contracts = tuple((float(k[idx[m]]), r) for idx, r in legs)
            out.append(Arbitrage(kind, contracts, float(edge[m])))

    one = np.arange(n) if involving is None else np.array([involving], dtype=np.int64)
    # crossed quotes and exercise value
    for b, a, r in ((cb, ca, "C"), (pb, pa, "P")):
        emit("crossed", b[one] - a[one] - 2 * c, [(one, r)])
    emit("intrinsic", (und_bid - k[one]) - ca[one] - c, [(one, "C")])
    emit("intrinsic", (k[one] - und_ask) - pa[one] - c, [(one, "P")])
    # parity (American, no dividends): S - K <= C - P <= S - K * discount
    emit("parity", (cb[one] - pa[one]) - (und_ask - k[one] * discount) - 2 * c, [(one, "C"), (one, "P")])
    emit("parity", (und_bid - k[one]) - (ca[one] - pb[one]) - 2 * c, [(one, "C"), (one, "P")])

    i, j = _pairs(n) if involving is None else _pairs_involving(n, involving)
    width = k[j] - k[i]
    # verticals: 0 <= C(i) - C(j) <= width and 0 <= P(j) - P(i) <= width
    emit("vertical", cb[j] - ca[i] - 2 * c, [(i, "C"), (j, "C")])
    emit("vertical", cb[i] - ca[j] - width - 2 * c, [(i, "C"), (j, "C")])
    emit("vertical", pb[i] - pa[j] - 2 * c, [(i, "P"), (j, "P")])
    emit("vertical", pb[j] - pa[i] - width - 2 * c, [(i, "P"), (j, "P")])
    # boxes: long box cost >= width * discount, short box proceeds <= width
    long_cost = ca[i] - cb[j] + pa[j] - pb[i]
    short_proceeds = cb[i] - ca[j] + pb[j] - pa[i]
    legs = [(i, "C"), (j, "C"), (i, "P"), (j, "P")]
    emit("box", width * discount - long_cost - 4 * c, legs)
    emit("box", short_proceeds - width - 4 * c, legs)

    # butterflies i < j < m: long (K_m - K_j) of i and (K_j - K_i) of m, short (K_m - K_i) of j
    i3, j3, m3 = _triples(n) if involving is None else _triples_involving(n, involving)
    qi, qm = k[m3] - k[j3], k[j3] - k[i3]
    qj = qi + qm
    with np.errstate(invalid="ignore"):
        for b, a, r in ((cb, ca, "C"), (pb, pa, "P")):
            edge = qj * b[j3] - qi * a[i3] - qm * a[m3] - 2 * qj * c
            emit("butterfly", np.nan_to_num(edge, nan=-np.inf), [(i3, r), (j3, r), (m3, r)])
    return out
