"""The detector's book: the latest quote of every contract as (right, strike) arrays, kept incrementally.

Row 0 holds calls, row 1 puts; columns are strikes ascending. A chain update that only changes
quotes of known strikes is written into the arrays in place; a new strike, a removed strike, a
``full`` update or a new expiry rebuilds the layout and carries every per-contract history (price
change time, baselines) over to the strikes that remain.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agent.domain import ChainUpdate, OptionQuote, QuoteFlag, Right

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_UNUSABLE_BID = int(QuoteFlag.NO_BID | QuoteFlag.BAD_VALUE | QuoteFlag.HALTED)
_UNUSABLE_ASK = int(QuoteFlag.NO_ASK | QuoteFlag.BAD_VALUE | QuoteFlag.HALTED)
RIGHTS = (Right.CALL, Right.PUT)


@dataclass(slots=True)
class History:
    """Per-contract state that outlives a layout change (shape (2, n), remapped by strike)."""

    price_change_ns: IntArray
    ref_und: FloatArray
    moved_since_ns: IntArray
    vol_rate: FloatArray  # EWMA contracts per second
    vol_first_ns: IntArray  # first evaluation that saw the contract's volume (-1: never)
    iv_prev: FloatArray
    iv_dvar: FloatArray  # EWMA of squared IV changes
    iv_n: IntArray
    spread_ewma: FloatArray
    spike_on: BoolArray = field(default_factory=lambda: np.zeros((2, 0), bool))
    vol_marks: list[tuple[int, IntArray]] = field(default_factory=list)

    @classmethod
    def empty(cls, n: int) -> History:
        return cls(
            price_change_ns=np.zeros((2, n), np.int64),
            ref_und=np.full((2, n), np.nan),
            moved_since_ns=np.full((2, n), -1, np.int64),
            vol_rate=np.zeros((2, n)),
            vol_first_ns=np.full((2, n), -1, np.int64),
            iv_prev=np.full((2, n), np.nan),
            iv_dvar=np.zeros((2, n)),
            iv_n=np.zeros((2, n), np.int64),
            spread_ewma=np.full((2, n), np.nan),
            spike_on=np.zeros((2, n), bool),
        )

    def remap(self, old_cols: IntArray, new_cols: IntArray, n: int, now_ns: int, und: float) -> History:
        """A history for ``n`` strikes keeping columns ``old_cols`` at ``new_cols``."""
        h = History.empty(n)
        h.spike_on = np.zeros((2, n), bool)
        h.spike_on[:, new_cols] = self.spike_on[:, old_cols]
        h.price_change_ns[:] = now_ns
        h.ref_und[:] = und
        for name in (
            "price_change_ns",
            "ref_und",
            "moved_since_ns",
            "vol_rate",
            "vol_first_ns",
            "iv_prev",
            "iv_dvar",
            "iv_n",
            "spread_ewma",
        ):
            getattr(h, name)[:, new_cols] = getattr(self, name)[:, old_cols]
        for ts, vol in self.vol_marks:
            v = np.full((2, n), -1, np.int64)
            v[:, new_cols] = vol[:, old_cols]
            h.vol_marks.append((ts, v))
        return h


@dataclass(frozen=True, slots=True)
class _Columns:
    """The quotes of one update as arrays (one entry per quote, update order)."""

    strike: FloatArray
    row: IntArray
    bid: FloatArray
    ask: FloatArray
    bid_size: IntArray
    ask_size: IntArray
    flags: IntArray
    last: FloatArray
    last_size: IntArray
    volume: IntArray
    ts: IntArray

    @classmethod
    def of(cls, quotes: Sequence[OptionQuote]) -> _Columns:
        try:
            return cls._extract(quotes)
        except (TypeError, ValueError, OverflowError):
            # a malformed field somewhere (a strike that is not a number, a size that is NaN, ...):
            # keep the quotes that can be placed, with their sizes cleaned, and extract again
            kept = [q for q in quotes if isinstance(q.strike, float | int)]
            return cls._extract([_clean(q) for q in kept])

    @classmethod
    def _extract(cls, qs: Sequence[OptionQuote]) -> _Columns:
        n = len(qs)
        f64, i64 = np.float64, np.int64
        call = Right.CALL
        strike = np.fromiter([q.strike for q in qs], f64, n)
        row = np.fromiter([q.right is not call for q in qs], i64, n)
        cols = cls(
            strike=strike,
            row=row,
            bid=np.fromiter([q.bid for q in qs], f64, n),
            ask=np.fromiter([q.ask for q in qs], f64, n),
            bid_size=np.fromiter([q.bid_size for q in qs], i64, n),
            ask_size=np.fromiter([q.ask_size for q in qs], i64, n),
            flags=np.fromiter([q.flags for q in qs], i64, n),
            last=np.fromiter([q.last for q in qs], f64, n),
            last_size=np.fromiter([q.last_size for q in qs], i64, n),
            volume=np.fromiter([q.volume for q in qs], i64, n),
            ts=np.fromiter([q.quote_ts_ns for q in qs], i64, n),
        )
        with np.errstate(invalid="ignore"):
            placeable = np.isfinite(strike) & (strike > 0)
        if not placeable.all():  # a contract that cannot be placed on a strike axis is ignored
            cols = cols.take(np.flatnonzero(placeable))
        return cols

    def take(self, idx: IntArray) -> _Columns:
        return _Columns(*(getattr(self, f)[idx] for f in _COLUMN_FIELDS))

    def last_per_contract(self) -> _Columns:
        """One entry per (strike, right): the last one of the update (a later quote wins)."""
        n = self.strike.size
        if n < 2:
            return self
        key = self.strike * 2.0 + self.row
        order = np.argsort(key, kind="stable")  # equal keys keep update order: the last one wins
        ks = key[order]
        last = np.empty(n, bool)
        last[-1] = True
        np.not_equal(ks[1:], ks[:-1], out=last[:-1])
        if last.all():
            return self
        return self.take(np.sort(order[last]))


_COLUMN_FIELDS = (
    "strike",
    "row",
    "bid",
    "ask",
    "bid_size",
    "ask_size",
    "flags",
    "last",
    "last_size",
    "volume",
    "ts",
)


def _int_or(v: object, default: int) -> int:
    try:
        out: int = int(v)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return default
    return out


def _clean(q: OptionQuote) -> OptionQuote:
    """A quote whose integer fields are integers (a bad size becomes -1: flagged as bad below)."""
    return OptionQuote(
        strike=float(q.strike),
        right=q.right,
        bid=q.bid,
        ask=q.ask,
        bid_size=_int_or(q.bid_size, -1),
        ask_size=_int_or(q.ask_size, -1),
        last=q.last,
        last_size=_int_or(q.last_size, 0),
        volume=_int_or(q.volume, 0),
        quote_ts_ns=_int_or(q.quote_ts_ns, 0),
        flags=QuoteFlag(_int_or(q.flags, int(QuoteFlag.BAD_VALUE))),
    )


_BOOK_FIELDS = ("bid", "ask", "bid_size", "ask_size", "flags", "last", "last_size", "volume", "ts", "asof")


def _same_strikes(quoted: FloatArray, laid_out: FloatArray) -> bool:
    """Whether the distinct strikes of ``quoted`` are exactly ``laid_out`` (ascending)."""
    if quoted.size < laid_out.size or laid_out.size == 0:
        return False
    return bool(np.array_equal(np.unique(quoted), laid_out))


def _flat(a: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    """A 1-D view of a C-contiguous array (an error, never a silent copy, if it is not one)."""
    v = a.view()
    v.shape = (a.size,)
    return v


class ChainState:
    """Arrays of the latest quotes of one expiry plus per-contract histories."""

    def __init__(self) -> None:
        self.symbol = ""
        self.expiry = ""
        self.multiplier = 100
        self.tick = 0.01
        self.underlying = math.nan
        self.strikes: FloatArray = np.zeros(0)
        self._alloc(0)
        self.history = History.empty(0)
        self.touched: BoolArray = np.zeros((2, 0), bool)
        self.price_changed: BoolArray = np.zeros((2, 0), bool)
        self.prev_bid: FloatArray = np.zeros((2, 0))
        self.prev_ask: FloatArray = np.zeros((2, 0))
        self.layout_changed = False

    def _alloc(self, n: int) -> None:
        self.present: BoolArray = np.zeros((2, n), bool)
        self.bid: FloatArray = np.full((2, n), np.nan)
        self.ask: FloatArray = np.full((2, n), np.nan)
        self.bid_size: IntArray = np.zeros((2, n), np.int64)
        self.ask_size: IntArray = np.zeros((2, n), np.int64)
        self.flags: IntArray = np.zeros((2, n), np.int64)
        self.last: FloatArray = np.zeros((2, n))
        self.last_size: IntArray = np.zeros((2, n), np.int64)
        self.volume: IntArray = np.zeros((2, n), np.int64)
        self.ts: IntArray = np.zeros((2, n), np.int64)
        """``quote_ts_ns`` of each contract's latest quote (0: not stamped)."""
        self.asof: IntArray = np.zeros((2, n), np.int64)
        """When each quote was last known to stand (0: unknown): its stamp when it arrives; then, on
        a stream of incremental updates, the time of every later update that did not change it (a
        live stream would have sent the change). A ``full`` update (a snapshot) vouches only for
        its stamps: quotes of a snapshot taken over several seconds keep their different times."""

    @property
    def n(self) -> int:
        return int(self.strikes.size)

    def apply(self, updates: Iterable[ChainUpdate], now_ns: int, und: float) -> None:
        """Fold updates (oldest first) into the book; marks what they touched.

        Quotes are written into the arrays with numpy (no per-quote Python work beyond reading the
        fields); a new strike, a removed strike, a ``full`` update or a new expiry changes the
        layout (strikes ascending) and remaps every array and history to it.
        """
        old_strikes = self.strikes
        prev_bid, prev_ask = self.bid.copy(), self.ask.copy()
        touched = np.zeros((2, self.n), bool)
        layout_changed = snapshot = False
        for u in updates:
            snapshot |= u.full
            c = _Columns.of(u.quotes).last_per_contract() if u.quotes else None
            new_expiry = bool(self.expiry) and u.expiry != self.expiry
            if u.full and not new_expiry and c is not None and _same_strikes(c.strike, self.strikes):
                # a snapshot of the strikes already laid out (a replay of full snapshots, a feed's
                # periodic refresh): a fresh book on the same layout, histories untouched (the
                # general path below would rebuild the layout and remap every history onto itself)
                self._alloc(self.n)
                touched = np.zeros((2, self.n), bool)
            elif u.full or new_expiry:
                self._relayout(np.zeros(0), keep=False)
                touched = np.zeros((2, 0), bool)
                layout_changed = True
            self.symbol, self.expiry = u.symbol, u.expiry
            self.multiplier = u.multiplier if u.multiplier > 0 else 100
            self.tick = u.tick if u.tick > 0 and math.isfinite(u.tick) else 0.01
            if math.isfinite(u.underlying) and u.underlying > 0:
                self.underlying = u.underlying
            if u.removed_strikes:
                gone = np.asarray(u.removed_strikes, np.float64)
                keep = ~np.isin(self.strikes, gone)
                if not keep.all():
                    touched = touched[:, keep]
                    self._relayout(self.strikes[keep], keep=True)
                    layout_changed = True
            if c is None or c.strike.size == 0:
                continue
            k = self.strikes
            pos = np.searchsorted(k, c.strike)
            known = pos < k.size
            known[known] = k[pos[known]] == c.strike[known]
            if not known.all():
                new_k = np.union1d(k, c.strike[~known])
                grown = np.zeros((2, new_k.size), bool)
                grown[:, np.searchsorted(new_k, k)] = touched
                touched = grown
                self._relayout(new_k, keep=True)
                layout_changed = True
                pos = np.searchsorted(self.strikes, c.strike)
            # one flat index per quote: a 1-D scatter is ten times cheaper than a (row, col) one
            flat = c.row * self.n + pos
            _flat(self.present)[flat] = True
            for name in _BOOK_FIELDS[:-1]:
                _flat(getattr(self, name))[flat] = getattr(c, name)
            _flat(self.asof)[flat] = c.ts
            _flat(touched)[flat] = True
        self.layout_changed = layout_changed
        if not snapshot:
            self.asof[self.present & ~touched] = now_ns
        if layout_changed:
            n = self.n
            common, old_cols, new_cols = np.intersect1d(old_strikes, self.strikes, return_indices=True)
            del common
            self.history = self.history.remap(
                old_cols.astype(np.int64), new_cols.astype(np.int64), n, now_ns, und
            )
            pb, pa = np.full((2, n), np.nan), np.full((2, n), np.nan)
            pb[:, new_cols], pa[:, new_cols] = prev_bid[:, old_cols], prev_ask[:, old_cols]
            prev_bid, prev_ask = pb, pa
        self.prev_bid, self.prev_ask = prev_bid, prev_ask
        self.touched = touched
        with np.errstate(invalid="ignore"):
            changed = touched & ~((self.bid == prev_bid) & (self.ask == prev_ask))
        self.price_changed = changed
        h = self.history
        h.price_change_ns[changed] = now_ns
        h.ref_und[changed] = und
        h.moved_since_ns[changed] = -1

    def _relayout(self, strikes: FloatArray, *, keep: bool) -> None:
        """Arrays for ``strikes`` (ascending), carrying over the quotes of the strikes kept when
        ``keep`` (histories are remapped once, at the end of :meth:`apply`)."""
        old_k = self.strikes
        old = {name: getattr(self, name) for name in ("present", *_BOOK_FIELDS)}
        self.strikes = strikes
        self._alloc(strikes.size)
        if keep and old_k.size and strikes.size:
            _, old_cols, new_cols = np.intersect1d(old_k, strikes, return_indices=True)
            for name, arr in old.items():
                getattr(self, name)[:, new_cols] = arr[:, old_cols]

    def usable(self) -> tuple[BoolArray, BoolArray, BoolArray]:
        """``(bid_ok, ask_ok, bad_value)``: sides that can be traded, and malformed quotes.

        A side is usable when present, finite, positive, with a positive displayed size and no flag
        against it. ``bad_value`` marks NaN/inf/negative prices or sizes (whatever the feed flagged).
        """
        with np.errstate(invalid="ignore"):
            fin_b, fin_a = np.isfinite(self.bid), np.isfinite(self.ask)
            bad = self.present & (
                ~fin_b
                | ~fin_a
                | (self.bid < 0)
                | (self.ask < 0)
                | (self.bid_size < 0)
                | (self.ask_size < 0)
                | ((self.flags & int(QuoteFlag.BAD_VALUE)) != 0)
            )
            bid_ok = (
                self.present
                & fin_b
                & (self.bid > 0)
                & (self.bid_size > 0)
                & ((self.flags & _UNUSABLE_BID) == 0)
            )
            ask_ok = (
                self.present
                & fin_a
                & (self.ask > 0)
                & (self.ask_size > 0)
                & ((self.flags & _UNUSABLE_ASK) == 0)
            )
        return bid_ok & ~bad, ask_ok & ~bad, bad
