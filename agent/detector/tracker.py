"""Signal identity and hysteresis: findings of successive evaluations become tracked signals.

* Id: ``kind:expiry:anchor`` (the anchor is the culprit contract or strike chosen by the rule), so
  the same anomaly keeps one id while its legs, prices and edge move. An anomaly that comes back
  after it was resolved gets a new generation: ``...#2``.
* Status: ``new`` on the first evaluation that finds it, ``active`` from the next one that still
  does, ``resolved`` once it has been absent for ``resolve_after_evals`` consecutive evaluations
  *and* ``resolve_after_ns`` of market time. Re-appearing before that keeps it active, same id.
* Emission: a signal is reported as changed when it is new, when its status changes, when its legs
  change (contract, side, quantity or price) or when its edge moves by more than $1 and 10%.
  Refreshing ``last_seen_ns`` alone is not a change (no flood).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agent.detector.signals import Finding, Signal


@dataclass(slots=True)
class _Track:
    signal: Signal
    absent: int = 0


def _material(old: Signal, new: Finding) -> bool:
    if len(old.legs) != len(new.legs):
        return True
    for a, b in zip(old.legs, new.legs, strict=True):
        if (a.strike, a.right, a.side, a.quantity, a.price) != (
            b.strike,
            b.right,
            b.side,
            b.quantity,
            b.price,
        ):
            return True
    diff = abs(new.edge - old.edge)
    return diff > 1.0 and diff > 0.1 * abs(old.edge)


class SignalTracker:
    def __init__(self, resolve_after_evals: int, resolve_after_ns: int) -> None:
        self._evals = resolve_after_evals
        self._hold_ns = resolve_after_ns
        self._tracks: dict[str, _Track] = {}
        self._generation: dict[str, int] = {}

    def active(self) -> list[Signal]:
        return [t.signal for t in self._tracks.values()]

    def update(self, findings: list[Finding], expiry: str, now_ns: int) -> list[Signal]:
        changed: list[Signal] = []
        seen: set[str] = set()
        for f in findings:
            base = f"{f.kind}:{expiry}:{f.anchor}"
            if base in seen:
                continue
            seen.add(base)
            track = self._tracks.get(base)
            if track is None:
                gen = self._generation.get(base, 0) + 1
                self._generation[base] = gen
                sig = Signal(
                    id=base if gen == 1 else f"{base}#{gen}",
                    kind=f.kind,
                    expiry=expiry,
                    legs=f.legs,
                    edge=f.edge,
                    score=f.score,
                    first_seen_ns=now_ns,
                    last_seen_ns=now_ns,
                    status="new",
                    explanation=f.explanation,
                    severity=f.severity,
                    max_units=f.max_units,
                    contracts=f.contracts or tuple(leg.key for leg in f.legs),
                )
                self._tracks[base] = _Track(sig)
                changed.append(sig)
                continue
            old = track.signal
            emit = old.status == "new" or _material(old, f)
            sig = replace(
                old,
                legs=f.legs,
                edge=f.edge,
                score=f.score,
                last_seen_ns=now_ns,
                status="active",
                explanation=f.explanation,
                severity=f.severity,
                max_units=f.max_units,
                contracts=f.contracts or tuple(leg.key for leg in f.legs),
            )
            track.signal, track.absent = sig, 0
            if emit:
                changed.append(sig)
        for base in [b for b in self._tracks if b not in seen]:
            track = self._tracks[base]
            track.absent += 1
            if track.absent >= self._evals and now_ns - track.signal.last_seen_ns >= self._hold_ns:
                changed.append(replace(track.signal, status="resolved"))
                del self._tracks[base]
        return changed

    def resolve_all(self) -> list[Signal]:
        """Resolve every open signal at once (a new expiry, the session close)."""
        out = [replace(t.signal, status="resolved") for t in self._tracks.values()]
        self._tracks.clear()
        return out
