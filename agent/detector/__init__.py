"""The anomaly detector: executable static arbitrage, smile outliers, quote quality and flow.

A pure library (no I/O, no wire types): :class:`Detector` takes chain updates and returns tracked
:class:`Signal` values; :mod:`agent.detector.scoring` measures them against the simulator's labels.
"""

from agent.detector.config import DetectorConfig
from agent.detector.engine import Detector, DetectorOutput
from agent.detector.signals import (
    ARBITRAGE_KINDS,
    FLOW_KINDS,
    QUALITY_KINDS,
    RELATIVE_KINDS,
    SIGNAL_KINDS,
    Leg,
    Severity,
    Signal,
    SmileFit,
)

__all__ = [
    "ARBITRAGE_KINDS",
    "FLOW_KINDS",
    "QUALITY_KINDS",
    "RELATIVE_KINDS",
    "SIGNAL_KINDS",
    "Detector",
    "DetectorConfig",
    "DetectorOutput",
    "Leg",
    "Severity",
    "Signal",
    "SmileFit",
]
