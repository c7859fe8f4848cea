"""Detector output as domain values: legs, signals and the published smile fit.

Plain frozen dataclasses, no wire types (the gRPC edge translates them). Money is float dollars.

* A :class:`Leg` is one contract of a trade, bought at its ask or sold at its bid, with the integer
  number of contracts per unit of the combination and the size displayed at that price.
* A :class:`Signal` is one finding, tracked across chain updates under a stable ``id``. ``edge`` is
  the executable profit in dollars per unit of the combination (all legs at their quantities, times
  the contract multiplier) after commission; for findings that are not trades (quote quality, flow,
  smile outliers) it is the dollar distance that made the rule fire, per contract. ``score`` ranks
  signals of one kind: for arbitrage the edge times the units the displayed sizes allow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Literal

from agent.domain import Right

Side = Literal["BUY", "SELL"]
Status = Literal["new", "active", "resolved"]

ARBITRAGE_KINDS: Final = ("parity", "box", "vertical", "butterfly", "intrinsic")
"""Riskless trades on executable quotes after costs (static no-arbitrage bounds, American-valid)."""
QUALITY_KINDS: Final = ("crossed", "stale", "wide_spread", "zero_bid", "bad_quote", "leg_skew")
"""Quote-quality findings; a quote found bad here is never a leg of an arbitrage signal. ``leg_skew``
is a would-be arbitrage whose legs were quoted too far apart in time to be one trade."""
RELATIVE_KINDS: Final = ("smile_outlier", "iv_jump")
FLOW_KINDS: Final = ("volume_spike", "trade_through")
SIGNAL_KINDS: Final = ARBITRAGE_KINDS + QUALITY_KINDS + RELATIVE_KINDS + FLOW_KINDS


class Severity(Enum):
    INFO = "info"
    WARN = "warn"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class Leg:
    """One contract of a signal: ``side`` at ``price`` (ask when buying, bid when selling).

    ``quantity`` is contracts per unit of the combination (a 1x2x1 butterfly has 1, 2, 1);
    ``displayed_size`` the size shown at that price when the signal was (last) seen.
    """

    strike: float
    right: Right
    side: Side
    price: float
    quantity: int = 1
    displayed_size: int = 0

    @property
    def key(self) -> tuple[float, Right]:
        return (self.strike, self.right)

    def describe(self) -> str:
        qty = f"{self.quantity}x " if self.quantity != 1 else ""
        return f"{self.side.lower()} {qty}{self.strike:g}{self.right.value} @ {self.price:.2f}"


@dataclass(frozen=True, slots=True)
class Signal:
    """One finding, stable across updates (same ``id`` while the same anomaly persists)."""

    id: str
    kind: str
    expiry: str
    legs: tuple[Leg, ...]
    edge: float
    score: float
    first_seen_ns: int
    last_seen_ns: int
    status: Status
    explanation: str
    severity: Severity
    max_units: int = 0
    """Units of the combination the displayed sizes allow (0 when not a trade)."""
    contracts: tuple[tuple[float, Right], ...] = ()
    """The contracts concerned: the legs' for trades, the quote's for quality and flow findings."""

    @property
    def is_arbitrage(self) -> bool:
        return self.kind in ARBITRAGE_KINDS


@dataclass(frozen=True, slots=True)
class SmileFit:
    """The smile fitted on one update, for drawing and for the smile-outlier rule.

    ``model`` is ``"svi"`` (raw SVI in total variance ``w(x) = a + b (rho (x - m) + sqrt((x - m)^2 +
    sigma^2))`` with ``x = ln(K / F)``, ``w = iv^2 tau``); ``params`` holds ``a, b, rho, m, sigma``
    and ``tau`` (trading years, see ``agent.session``). ``strikes``/``ivs`` sample the fitted curve
    (volatility per trading year) over the quoted strikes; ``rmse`` is the vega-weighted RMS
    residual of the points used, in volatility; ``n_used`` how many points kept a non-zero weight.
    """

    model: str
    params: dict[str, float]
    forward: float
    strikes: tuple[float, ...]
    ivs: tuple[float, ...]
    rmse: float
    n_used: int = 0
    forward_method: str = ""
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Finding:
    """What a rule found on one evaluation, before tracking gives it an id and a status.

    ``anchor`` names the anomaly (the culprit contract, a strike, ...): with ``kind`` and the
    expiry it makes the signal id, so the same anomaly keeps one id while its legs and edge move.
    """

    kind: str
    anchor: str
    legs: tuple[Leg, ...]
    edge: float
    score: float
    explanation: str
    severity: Severity
    max_units: int = 0
    contracts: tuple[tuple[float, Right], ...] = ()
