"""Read Interactive Brokers option-chain CSV exports (``reqTickers`` dumps) into domain chain updates.

The files are what a collector wrote from ``ib_async``/``ib_insync`` tickers: contract fields, the
tick ``time`` (UTC), top of book, ``undPrice`` and four blocks of IB option computations (``bid_``,
``ask_``, ``last_``, ``model_``). Some files start with a ``timestamp`` column: the collector's own
wall clock, naive and in UTC+3 (see ``tests/data/README.md``).

IB's sentinels are translated here and nowhere else:

* ``bid``/``ask`` of ``-1`` (size 0) means *no bid* / *no ask*: the quote gets ``NO_BID``/``NO_ASK``
  and a price of 0.0, never -1. An empty ``bid``/``ask`` means IB sent no quote at all: flagged the
  same way and reported as ``data_quality.missing_quote``.
* In the ``model_`` block ``-2.0`` (delta, gamma, vega, theta) and ``-1`` (implied vol, underlying)
  mean *not computed*: they become NaN, as do empty cells.

Bad input is data, not a crash. Rows that cannot be read (wrong number of fields, an unparseable
number in a contract or quote column, an unknown right, a missing strike or expiry) are skipped with
a ``data_quality.malformed_row`` notice. NaN and negative prices or sizes are flagged ``BAD_VALUE``
(through :func:`agent.domain.classify_quote`) and reported; crossed and locked quotes are kept with
their flag and reported. An unparseable number in a ``model_`` column only blanks that greek (NaN)
and is reported, because the quote itself is still good. Only a file that is not an IB chain export
at all (no header, missing required columns, not UTF-8 text, no usable row) raises
:class:`ChainFileError`.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO, TypeVar

from agent.domain import (
    ChainUpdate,
    Notice,
    NoticeLevel,
    OptionQuote,
    QuoteFlag,
    Right,
    UnderlyingTick,
    classify_quote,
    osi_symbol,
)

__all__ = [
    "COLLECTOR_TZ",
    "NOTICE_SOURCE",
    "REQUIRED_COLUMNS",
    "ChainFileError",
    "CsvSnapshot",
    "load_ib_csv",
]

log = logging.getLogger(__name__)

#: Columns without which a file is not an IB option-chain export (``time`` may be replaced by
#: the collector's ``timestamp``).
REQUIRED_COLUMNS: Final = (
    "conId",
    "lastTradeDateOrContractMonth",
    "strike",
    "right",
    "bid",
    "bidSize",
    "ask",
    "askSize",
    "undPrice",
)
TIME_COLUMN: Final = "time"
COLLECTOR_COLUMN: Final = "timestamp"
#: The collector that wrote the ``timestamp`` column ran on a UTC+3 wall clock (no DST).
COLLECTOR_TZ: Final = dt.timezone(dt.timedelta(hours=3), "UTC+03:00")
NOTICE_SOURCE: Final = "ib_csv"
#: Collector clock and IB tick times further apart than this suggest a wrong UTC offset.
MAX_CLOCK_SKEW_NS: Final = 120 * 1_000_000_000

_T = TypeVar("_T")
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MODEL_FIELDS: Final = ("impliedVol", "delta", "gamma", "vega", "theta", "undPrice")


class ChainFileError(ValueError):
    """The file is not a readable IB option-chain export (the message says what is wrong)."""

    def __init__(self, message: str, *, missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing: tuple[str, ...] = tuple(missing)


@dataclass(frozen=True, slots=True)
class CsvSnapshot:
    """One chain snapshot of an IB export: every expiry in it, the underlying and what was wrong.

    ``ts_ns`` (UTC ns) is the latest IB tick ``time`` among the snapshot's rows, or the collector's
    ``timestamp`` (converted from UTC+3) when no row has a tick time. Rows are not one atomic moment:
    many ticks are seconds older than ``ts_ns``; each quote keeps its own ``quote_ts_ns``.

    ``underlying`` is IB's ``undPrice`` stamped with ``ts_ns``, but it lags the option quotes (by
    seconds, and about $0.2 in the 2025-03-26 file): an intrinsic-value check against it finds
    violations that are not there. The ``src_und_price`` of each quote (IB's ``model_undPrice``)
    is usually closer to the market the option quotes saw.

    ``chains`` holds one ``full`` update per expiry, ascending; quotes by strike, call before put.
    ``notices`` are the data-quality findings, in row order, each naming the file, row and contract.
    """

    ts_ns: int
    underlying: UnderlyingTick
    chains: tuple[ChainUpdate, ...]
    notices: tuple[Notice, ...]


class _RowError(Exception):
    """A row that cannot be read; the message says why."""


@dataclass(slots=True)
class _Row:
    line: int
    label: str
    expiry: str
    quote: OptionQuote
    und_price: float
    multiplier: int | None
    tick: float | None
    trading_class: str


@dataclass(slots=True)
class _Group:
    """Rows of one snapshot while the file is read."""

    collector_ns: int | None
    collector_text: str
    rows: list[_Row] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)


class _Reader:
    """State of reading one file: column positions, caches and the notices being collected."""

    def __init__(self, path: Path, header: Sequence[str], symbol: str, collector_tz: dt.tzinfo) -> None:
        self.path = path
        self.name = path.name
        self.symbol = symbol
        self.collector_tz = collector_tz
        self.columns = [h.strip() for h in header]
        self.index: dict[str, int] = {}
        for i, name in enumerate(self.columns):
            if name and name not in self.index:
                self.index[name] = i
        self._time_cache: dict[str, int] = {}

    # ---- notices -------------------------------------------------------------------------------

    def notice(self, level: NoticeLevel, code: str, line: int | None, label: str, text: str) -> Notice:
        where = f"{self.name} row {line}" if line is not None else self.name
        if label:
            where += f" {label.strip()}"
        attributes: list[tuple[str, str]] = [("file", self.name)]
        if line is not None:
            attributes.append(("row", str(line)))
        if label:
            attributes.append(("contract", label.strip()))
        return Notice(
            level=level,
            code=f"data_quality.{code}",
            message=f"{where}: {text}",
            source=NOTICE_SOURCE,
            attributes=tuple(attributes),
        )

    # ---- cells ---------------------------------------------------------------------------------

    def cell(self, fields: Sequence[str], column: str) -> str:
        i = self.index.get(column)
        return fields[i].strip() if i is not None else ""

    def number(self, fields: Sequence[str], column: str) -> float | None:
        """The cell as a float (NaN/inf kept), None when empty; unparseable text is a row error."""
        text = self.cell(fields, column)
        if not text:
            return None
        try:
            return float(text)
        except ValueError:
            raise _RowError(f"column {column!r} is not a number: {text!r}") from None

    def integer(self, fields: Sequence[str], column: str) -> int | None:
        value = self.number(fields, column)
        if value is None:
            return None
        if not math.isfinite(value) or value != round(value):
            raise _RowError(f"column {column!r} is not a whole number: {self.cell(fields, column)!r}")
        return int(value)

    def tick_time_ns(self, text: str) -> int:
        cached = self._time_cache.get(text)
        if cached is None:
            try:
                stamp = dt.datetime.fromisoformat(text)
            except ValueError:
                raise _RowError(f"column 'time' is not a date-time: {text!r}") from None
            if stamp.tzinfo is None:  # IB tick times are UTC
                stamp = stamp.replace(tzinfo=dt.UTC)
            cached = _to_ns(stamp)
            self._time_cache[text] = cached
        return cached

    def collector_ns(self, text: str) -> int:
        try:
            stamp = dt.datetime.fromisoformat(text)
        except ValueError:
            raise _RowError(f"column 'timestamp' is not a date-time: {text!r}") from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=self.collector_tz)
        return _to_ns(stamp)

    # ---- one row -------------------------------------------------------------------------------

    def parse_row(self, fields: Sequence[str], line: int, notices: list[Notice]) -> _Row | None:
        """The row as a quote; appends its findings to ``notices``. Raises ``_RowError`` if unreadable."""
        local_symbol = self.cell(fields, "localSymbol")
        row_symbol = self.cell(fields, "symbol")
        if row_symbol and row_symbol.upper() != self.symbol.upper():
            notices.append(
                self.notice(
                    NoticeLevel.WARN,
                    "unknown_contract",
                    line,
                    local_symbol,
                    f"symbol {row_symbol!r} is not {self.symbol!r}; skipped",
                )
            )
            return None

        expiry = self.cell(fields, "lastTradeDateOrContractMonth").split(" ")[0]
        if not expiry:
            raise _RowError("no expiry (lastTradeDateOrContractMonth)")
        try:
            if len(expiry) != 8:
                raise ValueError(expiry)
            dt.datetime.strptime(expiry, "%Y%m%d")
        except ValueError:
            raise _RowError(f"expiry {expiry!r} is not YYYYMMDD") from None
        strike = self.number(fields, "strike")
        if strike is None:
            raise _RowError("no strike")
        if not (math.isfinite(strike) and strike > 0.0):
            raise _RowError(f"strike {self.cell(fields, 'strike')!r} is not a positive price")
        try:
            right = Right.parse(self.cell(fields, "right"))
        except ValueError as exc:
            raise _RowError(str(exc)) from None
        label = local_symbol or osi_symbol(self.symbol, expiry, right, strike)

        con_id = self.integer(fields, "conId") or 0
        multiplier = self.integer(fields, "multiplier")
        if multiplier is not None and multiplier <= 0:
            raise _RowError(f"multiplier {multiplier} is not positive")
        tick = self.number(fields, "minTick")
        if tick is not None and not (math.isfinite(tick) and tick > 0.0):
            tick = None

        time_text = self.cell(fields, TIME_COLUMN)
        quote_ts_ns = self.tick_time_ns(time_text) if time_text else 0

        bid = self.number(fields, "bid")
        ask = self.number(fields, "ask")
        bid_size = self.number(fields, "bidSize")
        ask_size = self.number(fields, "askSize")
        last = self.number(fields, "last")
        last_size = self.number(fields, "lastSize")
        volume = self.number(fields, "volume")
        und = self.number(fields, "undPrice")

        found: list[Notice] = []
        if bid is None or ask is None:
            sides = " and ".join(s for s, v in (("bid", bid), ("ask", ask)) if v is None)
            found.append(
                self.notice(NoticeLevel.WARN, "missing_quote", line, label, f"no {sides} in the row")
            )
        if not time_text:
            found.append(self.notice(NoticeLevel.INFO, "missing_time", line, label, "no tick time"))

        extra = QuoteFlag.NONE
        for column, value, sentinel_ok in (
            ("bid", bid, True),
            ("ask", ask, True),
            ("bidSize", bid_size, False),
            ("askSize", ask_size, False),
        ):
            if value is None:
                continue
            if not math.isfinite(value):
                found.append(
                    self.notice(
                        NoticeLevel.WARN, "nan", line, label, f"{column} is {value}; flagged BAD_VALUE"
                    )
                )
                extra |= QuoteFlag.BAD_VALUE
            elif value < 0.0 and not (sentinel_ok and value == -1.0):
                found.append(
                    self.notice(
                        NoticeLevel.WARN, "negative", line, label, f"{column} is {value:g}; flagged BAD_VALUE"
                    )
                )
                extra |= QuoteFlag.BAD_VALUE

        raw_bid = -1.0 if bid is None else bid
        raw_ask = -1.0 if ask is None else ask
        bsz = _size(bid_size)
        asz = _size(ask_size)
        flags = classify_quote(raw_bid, raw_ask, bsz, asz) | extra
        if extra & QuoteFlag.BAD_VALUE:
            if bid_size is not None and not (math.isfinite(bid_size) and bid_size >= 0.0):
                flags |= QuoteFlag.NO_BID
            if ask_size is not None and not (math.isfinite(ask_size) and ask_size >= 0.0):
                flags |= QuoteFlag.NO_ASK
        if flags & QuoteFlag.CROSSED:
            found.append(
                self.notice(
                    NoticeLevel.WARN,
                    "crossed",
                    line,
                    label,
                    f"crossed quote: bid {raw_bid:g} > ask {raw_ask:g}; kept, flagged CROSSED",
                )
            )
        elif flags & QuoteFlag.LOCKED:
            found.append(
                self.notice(
                    NoticeLevel.INFO,
                    "locked",
                    line,
                    label,
                    f"locked quote: bid = ask = {raw_bid:g}; kept, flagged LOCKED",
                )
            )

        greeks = self.model_greeks(fields, line, label, found)
        quote = OptionQuote(
            strike=strike,
            right=right,
            bid=0.0 if flags & QuoteFlag.NO_BID else raw_bid,
            ask=0.0 if flags & QuoteFlag.NO_ASK else raw_ask,
            bid_size=bsz,
            ask_size=asz,
            last=last if last is not None and math.isfinite(last) and last > 0.0 else 0.0,
            last_size=_size(last_size),
            volume=_size(volume),
            quote_ts_ns=quote_ts_ns,
            flags=flags,
            con_id=con_id,
            src_iv=greeks[0],
            src_delta=greeks[1],
            src_gamma=greeks[2],
            src_vega=greeks[3],
            src_theta=greeks[4],
            src_und_price=greeks[5],
        )
        notices.extend(found)
        return _Row(
            line=line,
            label=label,
            expiry=expiry,
            quote=quote,
            und_price=und if und is not None and math.isfinite(und) and und > 0.0 else math.nan,
            multiplier=multiplier,
            tick=tick,
            trading_class=self.cell(fields, "tradingClass"),
        )

    def model_greeks(
        self, fields: Sequence[str], line: int, label: str, found: list[Notice]
    ) -> tuple[float, float, float, float, float, float]:
        """IB's model computation (iv, delta, gamma, vega, theta, undPrice), NaN where not computed."""
        out: list[float] = []
        for name in _MODEL_FIELDS:
            column = f"model_{name}"
            text = self.cell(fields, column)
            if not text:
                out.append(math.nan)
                continue
            try:
                value = float(text)
            except ValueError:
                found.append(
                    self.notice(
                        NoticeLevel.WARN,
                        "bad_value",
                        line,
                        label,
                        f"{column} is not a number: {text!r}; read as not computed",
                    )
                )
                out.append(math.nan)
                continue
            out.append(_model_value(name, value))
        return (out[0], out[1], out[2], out[3], out[4], out[5])


def _model_value(name: str, value: float) -> float:
    """NaN for IB's "not computed" sentinels of one ``model_`` field."""
    if not math.isfinite(value):
        return math.nan
    if name in ("impliedVol", "undPrice"):
        return value if value >= 0.0 else math.nan  # -1: not computed
    if value == -2.0:  # delta, gamma, vega, theta
        return math.nan
    return value


def _size(value: float | None) -> int:
    """A size or count as a non-negative int (0 when empty, NaN or negative: flagged elsewhere)."""
    if value is None or not math.isfinite(value) or value < 0.0:
        return 0
    return round(value)


def _to_ns(stamp: dt.datetime) -> int:
    delta = stamp - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _most_common(values: Iterable[_T]) -> tuple[_T | None, int]:
    """The most frequent value (first seen on ties) and how many distinct values there were."""
    counts = Counter(values)
    if not counts:
        return None, 0
    return counts.most_common(1)[0][0], len(counts)


def load_ib_csv(
    path: str | Path, *, symbol: str = "SPY", collector_tz: dt.tzinfo = COLLECTOR_TZ
) -> list[CsvSnapshot]:
    """Read an IB option-chain CSV export into snapshots, oldest first.

    A file holds one snapshot, unless it has a collector ``timestamp`` column: then a new snapshot
    starts each time that value changes (an empty cell continues the current one). Naive collector
    timestamps are read in ``collector_tz`` (UTC+3 for the files this project ships).

    Raises :class:`ChainFileError` if the file is empty, is not UTF-8 CSV, lacks required columns or
    has no usable row; ``OSError`` if it cannot be opened. Everything else is a notice.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return _read(path, fh, symbol, collector_tz)
    except UnicodeDecodeError as exc:
        raise ChainFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise ChainFileError(f"{path}: not readable as CSV: {exc}") from None


def _read(path: Path, fh: TextIO, symbol: str, collector_tz: dt.tzinfo) -> list[CsvSnapshot]:
    reader = csv.reader(fh)
    header = next(reader, None)
    while header is not None and not any(h.strip() for h in header):
        header = next(reader, None)
    if header is None:
        raise ChainFileError(
            f"{path}: empty file; expected an IB option-chain export with a header row "
            f"({', '.join(REQUIRED_COLUMNS)}, time, ...)"
        )
    state = _Reader(path, header, symbol, collector_tz)
    missing = [c for c in REQUIRED_COLUMNS if c not in state.index]
    if TIME_COLUMN not in state.index and COLLECTOR_COLUMN not in state.index:
        missing.append(TIME_COLUMN)
    if missing:
        raise ChainFileError(
            f"{path}: not an IB option-chain export: missing column(s) {', '.join(missing)} "
            f"(found: {', '.join(c for c in state.columns if c) or 'none'})",
            missing=missing,
        )

    width = len(state.columns)
    collector_i = state.index.get(COLLECTOR_COLUMN)
    groups: list[_Group] = []
    pending: list[Notice] = []  # findings before the first snapshot starts
    n_data = 0
    end_of_previous = reader.line_num
    for fields in reader:
        # the physical line the record starts on (what an editor shows), even if a quoted field spans lines
        line, end_of_previous = end_of_previous + 1, reader.line_num
        if not any(f.strip() for f in fields):
            continue
        n_data += 1
        current = groups[-1] if groups else None
        sink = current.notices if current is not None else pending
        if len(fields) != width:
            sink.append(
                state.notice(
                    NoticeLevel.WARN,
                    "malformed_row",
                    line,
                    "",
                    f"expected {width} fields, found {len(fields)}; skipped",
                )
            )
            continue
        if collector_i is not None:
            text = fields[collector_i].strip()
            if text and (current is None or text != current.collector_text):
                try:
                    collector_ns = state.collector_ns(text)
                except _RowError as exc:
                    sink.append(state.notice(NoticeLevel.WARN, "malformed_row", line, "", f"{exc}; skipped"))
                    continue
                current = _Group(collector_ns=collector_ns, collector_text=text)
                groups.append(current)
        if current is None:
            current = _Group(collector_ns=None, collector_text="")
            groups.append(current)
        if pending:
            current.notices[:0] = pending
            pending = []
        try:
            row = state.parse_row(fields, line, current.notices)
        except _RowError as exc:
            label = state.cell(fields, "localSymbol")
            current.notices.append(
                state.notice(NoticeLevel.WARN, "malformed_row", line, label, f"{exc}; skipped")
            )
            continue
        if row is not None:
            current.rows.append(row)

    if not any(g.rows for g in groups):
        reasons = [n.message for g in groups for n in g.notices] + [n.message for n in pending]
        first = f"; first problem: {reasons[0]}" if reasons else ""
        raise ChainFileError(f"{path}: no usable option rows ({n_data} data rows){first}")
    # Findings of groups that produced nothing are kept on the next snapshot (or the last one).
    snapshots: list[CsvSnapshot] = []
    carry: list[Notice] = []
    for group in groups:
        if not group.rows and group.collector_ns is None:
            carry.extend(group.notices)
            continue
        group.notices[:0] = carry
        carry = []
        snapshots.append(_snapshot(state, group))
    if carry or pending:
        last = snapshots[-1]
        snapshots[-1] = CsvSnapshot(
            ts_ns=last.ts_ns,
            underlying=last.underlying,
            chains=last.chains,
            notices=(*last.notices, *carry, *pending),
        )
    log.debug("read %d snapshot(s) from %s", len(snapshots), path)
    return snapshots


def _snapshot(state: _Reader, group: _Group) -> CsvSnapshot:
    notices = group.notices
    # One quote per contract: a repeated contract keeps its latest tick (the later row on a tie).
    latest: dict[tuple[str, float, Right], _Row] = {}
    for row in group.rows:
        key = (row.expiry, row.quote.strike, row.quote.right)
        seen = latest.get(key)
        if seen is not None:
            keep = row if row.quote.quote_ts_ns >= seen.quote.quote_ts_ns else seen
            drop = seen if keep is row else row
            notices.append(
                state.notice(
                    NoticeLevel.WARN,
                    "duplicate",
                    row.line,
                    row.label,
                    f"same contract as row {seen.line}; kept row {keep.line}, dropped row {drop.line}",
                )
            )
            latest[key] = keep
        else:
            latest[key] = row
    rows = list(latest.values())

    tick_times = [r.quote.quote_ts_ns for r in rows if r.quote.quote_ts_ns > 0]
    if tick_times:
        ts_ns = max(tick_times)
        if group.collector_ns is not None and abs(group.collector_ns - ts_ns) > MAX_CLOCK_SKEW_NS:
            notices.append(
                state.notice(
                    NoticeLevel.WARN,
                    "clock_skew",
                    None,
                    "",
                    f"collector timestamp {group.collector_text!r} (read as "
                    f"{_iso(group.collector_ns)}) is {abs(group.collector_ns - ts_ns) / 1e9:.0f} s from the "
                    f"latest IB tick time {_iso(ts_ns)}; is the collector's UTC offset right?",
                )
            )
    elif group.collector_ns is not None:
        ts_ns = group.collector_ns
    else:
        ts_ns = 0
        notices.append(
            state.notice(
                NoticeLevel.ERROR, "missing_time", None, "", "no row has a tick time; snapshot time is 0"
            )
        )

    und, n_und = _most_common(r.und_price for r in rows if not math.isnan(r.und_price))
    underlying_price = math.nan if und is None else und
    if und is None and rows:
        notices.append(
            state.notice(NoticeLevel.WARN, "no_underlying", None, "", "no row has a usable undPrice")
        )
    elif n_und > 1:
        notices.append(
            state.notice(
                NoticeLevel.INFO,
                "underlying_mixed",
                None,
                "",
                f"rows disagree on undPrice ({n_und} values); using the most common, {underlying_price:g}",
            )
        )

    by_expiry: dict[str, list[_Row]] = {}
    for row in rows:
        by_expiry.setdefault(row.expiry, []).append(row)
    chains: list[ChainUpdate] = []
    for expiry in sorted(by_expiry):
        members = by_expiry[expiry]
        multiplier, n_mult = _most_common(r.multiplier for r in members if r.multiplier is not None)
        if n_mult > 1:
            notices.append(
                state.notice(
                    NoticeLevel.WARN,
                    "multiplier_mixed",
                    None,
                    "",
                    f"expiry {expiry}: rows disagree on the multiplier; using {multiplier}",
                )
            )
        tick, _ = _most_common(r.tick for r in members if r.tick is not None)
        trading_class, _ = _most_common(r.trading_class for r in members if r.trading_class)
        quotes = sorted((r.quote for r in members), key=lambda q: (q.strike, q.right is Right.PUT))
        chains.append(
            ChainUpdate(
                symbol=state.symbol,
                expiry=expiry,
                quotes=tuple(quotes),
                full=True,
                multiplier=100 if multiplier is None else multiplier,
                tick=0.01 if tick is None else tick,
                underlying=underlying_price,
                trading_class=trading_class or "",
            )
        )
    return CsvSnapshot(
        ts_ns=ts_ns,
        underlying=UnderlyingTick(symbol=state.symbol, last=underlying_price, quote_ts_ns=ts_ns),
        chains=tuple(chains),
        notices=tuple(notices),
    )


def _iso(ns: int) -> str:
    return (_EPOCH + dt.timedelta(microseconds=ns // 1_000)).isoformat()
