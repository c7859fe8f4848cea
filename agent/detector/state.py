"""The detector's book: the latest quote of every contract as (right, strike) arrays, kept incrementally.

Row 0 holds calls, row 1 puts; columns are strikes ascending. A chain update that only changes
quotes of known strikes is written into the arrays in place; a new strike, a removed strike, a
``full`` update or a new expiry rebuilds the layout and carries every per-contract history (price
change time, baselines) over to the strikes that remain.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
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


class ChainState:
    """Arrays of the latest quotes of one expiry plus per-contract histories."""

    def __init__(self) -> None:
        self.symbol = ""
        self.expiry = ""
        self.multiplier = 100
        self.tick = 0.01
        self.underlying = math.nan
        self.quotes: dict[tuple[float, Right], OptionQuote] = {}
        self.strikes: FloatArray = np.zeros(0)
        self.index: dict[float, int] = {}
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

    @property
    def n(self) -> int:
        return int(self.strikes.size)

    def apply(self, updates: Iterable[ChainUpdate], now_ns: int, und: float) -> None:
        """Fold updates (oldest first) into the book; marks what they touched."""
        self.prev_bid = self.bid.copy()
        self.prev_ask = self.ask.copy()
        rebuild = False
        rows: list[tuple[int, int, float, float, int, int, int, float, int, int]] = []
        for u in updates:
            if u.full or (self.expiry and u.expiry != self.expiry):
                self.quotes.clear()
                rebuild = True
            self.symbol, self.expiry = u.symbol, u.expiry
            self.multiplier = u.multiplier if u.multiplier > 0 else 100
            self.tick = u.tick if u.tick > 0 and math.isfinite(u.tick) else 0.01
            if math.isfinite(u.underlying) and u.underlying > 0:
                self.underlying = u.underlying
            for k in u.removed_strikes:
                self.quotes.pop((k, Right.CALL), None)
                self.quotes.pop((k, Right.PUT), None)
                rebuild = True
            index = self.index
            for q in u.quotes:
                k = q.strike
                if not (isinstance(k, float | int) and math.isfinite(k) and k > 0):
                    continue  # a contract that cannot be placed on a strike axis is ignored
                self.quotes[q.key] = q
                if rebuild:
                    continue
                i = index.get(k)
                if i is None:
                    rebuild = True
                    continue
                rows.append(
                    (
                        0 if q.right is Right.CALL else 1,
                        i,
                        q.bid,
                        q.ask,
                        q.bid_size,
                        q.ask_size,
                        int(q.flags),
                        q.last,
                        q.last_size,
                        q.volume,
                    )
                )
        if rebuild:
            self._rebuild(now_ns, und)
            return
        self.layout_changed = False
        touched = np.zeros((2, self.n), bool)
        if rows:
            cols = list(zip(*rows, strict=True))
            r = np.asarray(cols[0], np.int64)
            ci = np.asarray(cols[1], np.int64)
            self.present[r, ci] = True
            self.bid[r, ci] = np.asarray(cols[2], np.float64)
            self.ask[r, ci] = np.asarray(cols[3], np.float64)
            self.bid_size[r, ci] = np.asarray(cols[4], np.float64).astype(np.int64)
            self.ask_size[r, ci] = np.asarray(cols[5], np.float64).astype(np.int64)
            self.flags[r, ci] = np.asarray(cols[6], np.int64)
            self.last[r, ci] = np.asarray(cols[7], np.float64)
            self.last_size[r, ci] = np.asarray(cols[8], np.float64).astype(np.int64)
            self.volume[r, ci] = np.asarray(cols[9], np.float64).astype(np.int64)
            touched[r, ci] = True
        self.touched = touched
        with np.errstate(invalid="ignore"):
            changed = touched & ~((self.bid == self.prev_bid) & (self.ask == self.prev_ask))
        self.price_changed = changed
        h = self.history
        h.price_change_ns[changed] = now_ns
        h.ref_und[changed] = und
        h.moved_since_ns[changed] = -1

    def _rebuild(self, now_ns: int, und: float) -> None:
        old_strikes, old_bid, old_ask = self.strikes, self.bid, self.ask
        strikes = np.array(sorted({k for k, _ in self.quotes}), dtype=np.float64)
        n = strikes.size
        self.strikes = strikes
        self.index = {float(k): j for j, k in enumerate(strikes.tolist())}
        self._alloc(n)
        for q in self.quotes.values():
            r, i = (0 if q.right is Right.CALL else 1), self.index[float(q.strike)]
            self.present[r, i] = True
            self.bid[r, i], self.ask[r, i] = q.bid, q.ask
            self.bid_size[r, i], self.ask_size[r, i] = int(q.bid_size), int(q.ask_size)
            self.flags[r, i] = int(q.flags)
            self.last[r, i], self.last_size[r, i], self.volume[r, i] = q.last, int(q.last_size), int(q.volume)
        common, old_cols, new_cols = np.intersect1d(old_strikes, strikes, return_indices=True)
        del common
        self.history = self.history.remap(
            old_cols.astype(np.int64), new_cols.astype(np.int64), n, now_ns, und
        )
        pb, pa = np.full((2, n), np.nan), np.full((2, n), np.nan)
        pb[:, new_cols], pa[:, new_cols] = old_bid[:, old_cols], old_ask[:, old_cols]
        self.prev_bid, self.prev_ask = pb, pa
        self.touched = self.present.copy()
        with np.errstate(invalid="ignore"):
            changed = self.present & ~((self.bid == pb) & (self.ask == pa))
        self.price_changed = changed
        h = self.history
        h.price_change_ns[changed] = now_ns
        h.ref_und[changed] = und
        h.moved_since_ns[changed] = -1
        self.layout_changed = True

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
