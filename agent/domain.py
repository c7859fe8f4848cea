"""Domain values of the market side: contracts, quotes, chain updates, notices, health.

Plain frozen dataclasses: nothing here knows about gRPC, protobuf, Textual or a broker. The wire
format is translated in ``agent.wire``; broker formats in their adapters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum, IntFlag
from typing import Final

TOPICS: Final = ("market", "signals", "orders", "positions", "risk", "health", "notices", "audit")


class Right(Enum):
    CALL = "C"
    PUT = "P"

    @classmethod
    def parse(cls, text: str) -> Right:
        t = text.strip().upper()
        if t in ("C", "CALL"):
            return cls.CALL
        if t in ("P", "PUT"):
            return cls.PUT
        raise ValueError(f"unknown option right {text!r} (expected C/CALL or P/PUT)")


class QuoteFlag(IntFlag):
    """Data-quality bits carried on a quote (same values as ``spyops.v1.QuoteFlag``)."""

    NONE = 0
    NO_BID = 1
    NO_ASK = 2
    CROSSED = 4
    LOCKED = 8
    STALE = 16
    BAD_VALUE = 32
    HALTED = 64


@dataclass(frozen=True, slots=True)
class OptionQuote:
    """One option's top of book. ``bid``/``ask`` are 0.0 when flagged NO_BID / NO_ASK."""

    strike: float
    right: Right
    bid: float
    ask: float
    bid_size: int
    ask_size: int
    last: float = 0.0
    last_size: int = 0
    volume: int = 0
    quote_ts_ns: int = 0
    flags: QuoteFlag = QuoteFlag.NONE
    con_id: int = 0
    src_iv: float = math.nan
    src_delta: float = math.nan
    src_gamma: float = math.nan
    src_vega: float = math.nan
    src_theta: float = math.nan
    src_und_price: float = math.nan

    @property
    def key(self) -> tuple[float, Right]:
        return (self.strike, self.right)

    @property
    def has_bid(self) -> bool:
        return not (self.flags & (QuoteFlag.NO_BID | QuoteFlag.BAD_VALUE)) and self.bid > 0.0

    @property
    def has_ask(self) -> bool:
        return not (self.flags & (QuoteFlag.NO_ASK | QuoteFlag.BAD_VALUE)) and self.ask > 0.0

    @property
    def mid(self) -> float:
        """Mid price, NaN when either side is missing."""
        if self.has_bid and self.has_ask:
            return 0.5 * (self.bid + self.ask)
        return math.nan


def classify_quote(bid: float, ask: float, bid_size: int, ask_size: int) -> QuoteFlag:
    """Data-quality flags of a raw top of book (NaN, negative, missing, crossed, locked)."""
    flags = QuoteFlag.NONE
    bid_bad = not math.isfinite(bid) or (bid < -1e-12 and bid != -1.0)
    ask_bad = not math.isfinite(ask) or (ask < -1e-12 and ask != -1.0)
    if bid_bad or ask_bad or bid_size < 0 or ask_size < 0:
        flags |= QuoteFlag.BAD_VALUE
    if bid_bad or bid <= 0.0 or bid_size == 0:
        flags |= QuoteFlag.NO_BID
    if ask_bad or ask <= 0.0 or ask_size == 0:
        flags |= QuoteFlag.NO_ASK
    if not flags & (QuoteFlag.NO_BID | QuoteFlag.NO_ASK):
        if bid > ask:
            flags |= QuoteFlag.CROSSED
        elif bid == ask:
            flags |= QuoteFlag.LOCKED
    return flags


def osi_symbol(symbol: str, expiry: str, right: Right, strike: float) -> str:
    """OCC/OSI option symbol, e.g. ``SPY   250317C00539000`` (the key IB calls localSymbol)."""
    return f"{symbol:<6}{expiry[2:]}{right.value}{round(strike * 1000):08d}"


@dataclass(frozen=True, slots=True)
class UnderlyingTick:
    symbol: str
    last: float
    bid: float = math.nan
    ask: float = math.nan
    volume: int = 0
    prev_close: float = math.nan
    quote_ts_ns: int = 0


@dataclass(frozen=True, slots=True)
class ChainUpdate:
    """A batch of option quotes of one expiry: the whole window (``full``) or the ones that changed."""

    symbol: str
    expiry: str  # YYYYMMDD
    quotes: tuple[OptionQuote, ...]
    full: bool = False
    multiplier: int = 100
    tick: float = 0.01
    underlying: float = math.nan
    removed_strikes: tuple[float, ...] = ()
    trading_class: str = ""
    # The underlying tick that goes with this update, when one is carried along (conflated streams).
    underlying_tick: UnderlyingTick | None = None


class NoticeLevel(Enum):
    INFO = "info"
    WARN = "warn"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Notice:
    """Something an operator should read: data-quality findings, session events, feed problems."""

    level: NoticeLevel
    code: str
    message: str
    source: str = ""
    attributes: tuple[tuple[str, str], ...] = ()


class ComponentStatus(Enum):
    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class ComponentHealth:
    name: str
    status: ComponentStatus
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Health:
    components: tuple[ComponentHealth, ...]
    feed_lag_ms: float = 0.0
    clients: int = 0
    detector_lag_ms: float = 0.0
    detector_eval_ms: float = 0.0


@dataclass(slots=True)
class ChainBook:
    """The latest quote of every contract in the window, folded from chain updates."""

    symbol: str = ""
    expiry: str = ""
    multiplier: int = 100
    tick: float = 0.01
    trading_class: str = ""
    underlying: float = math.nan
    quotes: dict[tuple[float, Right], OptionQuote] = field(default_factory=dict)

    def apply(self, update: ChainUpdate) -> None:
        if update.full or (self.expiry and update.expiry != self.expiry):
            self.quotes.clear()
        self.symbol, self.expiry = update.symbol, update.expiry
        self.multiplier, self.tick, self.trading_class = update.multiplier, update.tick, update.trading_class
        if math.isfinite(update.underlying):
            self.underlying = update.underlying
        for strike in update.removed_strikes:
            self.quotes.pop((strike, Right.CALL), None)
            self.quotes.pop((strike, Right.PUT), None)
        for q in update.quotes:
            self.quotes[q.key] = q

    def as_update(self) -> ChainUpdate:
        """The whole book as one ``full`` chain update, strikes ascending, calls before puts."""
        ordered = sorted(self.quotes.values(), key=lambda q: (q.strike, q.right is Right.PUT))
        return ChainUpdate(
            symbol=self.symbol,
            expiry=self.expiry,
            quotes=tuple(ordered),
            full=True,
            multiplier=self.multiplier,
            tick=self.tick,
            underlying=self.underlying,
            trading_class=self.trading_class,
        )
