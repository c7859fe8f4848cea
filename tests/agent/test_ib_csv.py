"""Reading real IB option-chain CSV exports (tests/data) into chain updates, and bad files."""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Sequence
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.domain import NoticeLevel, OptionQuote, QuoteFlag, Right
from agent.feeds.ib_csv import ChainFileError, CsvSnapshot, load_ib_csv

DATA = Path(__file__).resolve().parents[1] / "data"
FILE_0317 = DATA / "ib_spy_chain_2025-03-17_1355ET.csv"
FILE_0326 = DATA / "ib_spy_chain_2025-03-26_1555ET.csv"
NEW_YORK = ZoneInfo("America/New_York")


def utc_ns(year: int, month: int, day: int, hour: int, minute: int, second: int, micro: int = 0) -> int:
    stamp = dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=dt.UTC)
    return int((stamp - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) / dt.timedelta(microseconds=1)) * 1000


def quote(snapshot: CsvSnapshot, expiry: str, strike: float, right: Right) -> OptionQuote:
    chain = next(c for c in snapshot.chains if c.expiry == expiry)
    return next(q for q in chain.quotes if q.key == (strike, right))


def codes(snapshot: CsvSnapshot) -> list[str]:
    return [n.code for n in snapshot.notices]


@pytest.fixture(scope="module")
def snap_0317() -> CsvSnapshot:
    (snapshot,) = load_ib_csv(FILE_0317)
    return snapshot


@pytest.fixture(scope="module")
def snap_0326() -> CsvSnapshot:
    (snapshot,) = load_ib_csv(FILE_0326)
    return snapshot


# ---- the real files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "today", "tomorrow"),
    [(FILE_0317, "20250317", "20250318"), (FILE_0326, "20250326", "20250327")],
)
def test_real_file_has_a_0dte_and_a_next_day_chain_of_57_strikes(
    path: Path, today: str, tomorrow: str
) -> None:
    (snapshot,) = load_ib_csv(path)
    assert [c.expiry for c in snapshot.chains] == [today, tomorrow]
    ny_date = dt.datetime.fromtimestamp(snapshot.ts_ns / 1e9, dt.UTC).astimezone(NEW_YORK)
    assert snapshot.chains[0].expiry == ny_date.strftime("%Y%m%d")  # the 0DTE expiry is the file's date
    for chain in snapshot.chains:
        assert chain.full
        assert chain.symbol == "SPY"
        assert chain.trading_class == "SPY"
        assert chain.multiplier == 100
        assert chain.tick == 0.01
        assert len(chain.quotes) == 114
        assert sum(q.right is Right.CALL for q in chain.quotes) == 57
        assert chain.underlying == snapshot.underlying.last


def test_quotes_are_sorted_by_strike_then_call_before_put(snap_0317: CsvSnapshot) -> None:
    for chain in snap_0317.chains:
        keys = [(q.strike, q.right is Right.PUT) for q in chain.quotes]
        assert keys == sorted(keys)
        assert len(set(keys)) == len(keys)


def test_no_bid_is_a_flag_not_a_price_of_minus_one(snap_0317: CsvSnapshot, snap_0326: CsvSnapshot) -> None:
    # SPY 250317C00574000: bid -1.0 size 0, ask 0.01 x 31711
    q = quote(snap_0317, "20250317", 574.0, Right.CALL)
    assert q.flags == QuoteFlag.NO_BID
    assert (q.bid, q.ask, q.bid_size, q.ask_size) == (0.0, 0.01, 0, 31711)
    assert not q.has_bid
    assert q.has_ask
    assert math.isnan(q.mid)
    for snapshot, no_bid_rows in ((snap_0317, 47 + 7), (snap_0326, 55)):  # bid=-1 rows (+ empty rows)
        quotes = [q for c in snapshot.chains for q in c.quotes]
        assert all(q.bid >= 0.0 and q.ask >= 0.0 for q in quotes)
        assert sum(bool(q.flags & QuoteFlag.NO_BID) for q in quotes) == no_bid_rows
        assert not any(q.flags & (QuoteFlag.BAD_VALUE | QuoteFlag.CROSSED) for q in quotes)


def test_rows_without_any_quote_are_flagged_and_reported(snap_0317: CsvSnapshot) -> None:
    q = quote(snap_0317, "20250317", 571.0, Right.CALL)  # row 34: bid, ask and sizes empty
    assert q.flags == QuoteFlag.NO_BID | QuoteFlag.NO_ASK
    assert (q.bid, q.ask) == (0.0, 0.0)
    missing = [n for n in snap_0317.notices if n.code == "data_quality.missing_quote"]
    assert len(missing) == 7
    assert missing[0].level is NoticeLevel.WARN
    assert "row 34" in missing[0].message
    assert "SPY   250317C00571000" in missing[0].message
    assert ("row", "34") in missing[0].attributes
    assert codes(snap_0317) == ["data_quality.missing_quote"] * 7


def test_quote_fields_come_from_their_columns(snap_0317: CsvSnapshot) -> None:
    q = quote(snap_0317, "20250317", 541.0, Right.CALL)
    assert q.con_id == 767949271
    assert (q.bid, q.bid_size, q.ask, q.ask_size) == (25.63, 69, 27.47, 77)
    assert (q.last, q.last_size, q.volume) == (23.0, 3, 9)
    assert q.quote_ts_ns == utc_ns(2025, 3, 17, 17, 55, 4, 163832)
    assert q.flags == QuoteFlag.NONE
    assert q.mid == pytest.approx(26.55)


def test_model_greeks_are_read_and_not_computed_ones_are_nan(
    snap_0317: CsvSnapshot, snap_0326: CsvSnapshot
) -> None:
    q = quote(snap_0317, "20250317", 539.0, Right.CALL)
    assert q.src_iv == pytest.approx(1.858965870267858)
    assert q.src_delta == pytest.approx(0.99999999999999)
    assert q.src_und_price == pytest.approx(567.333740234375)
    # SPY 250317P00539000: model iv present, delta and gamma empty, vega and theta -2.0
    p = quote(snap_0317, "20250317", 539.0, Right.PUT)
    assert p.src_iv == pytest.approx(0.5539320795850815)
    assert all(math.isnan(v) for v in (p.src_delta, p.src_gamma, p.src_vega, p.src_theta))
    assert p.src_und_price == pytest.approx(567.333740234375)
    # 03-26 has 13 rows with an empty model block; the rest carry IB's model values
    quotes = [q for c in snap_0326.chains for q in c.quotes]
    assert sum(math.isnan(q.src_iv) for q in quotes) == 13
    assert all(math.isnan(q.src_theta) for q in quotes if math.isnan(q.src_iv))
    assert all(-1.0 - 1e-9 <= q.src_delta <= 1.0 + 1e-9 for q in quotes if not math.isnan(q.src_delta))


def test_snapshot_time_is_the_latest_ib_tick_time(snap_0317: CsvSnapshot, snap_0326: CsvSnapshot) -> None:
    assert snap_0317.ts_ns == utc_ns(2025, 3, 17, 17, 55, 9, 182009)  # 13:55 New York
    assert snap_0326.ts_ns == utc_ns(2025, 3, 26, 19, 55, 23, 736109)  # 15:55 New York
    # the collector wrote 22:55:23 (UTC+3): the same moment, not 22:55 UTC
    assert abs(snap_0326.ts_ns - utc_ns(2025, 3, 26, 19, 55, 23)) < 1_000_000_000
    assert all(0 < q.quote_ts_ns <= snap_0326.ts_ns for c in snap_0326.chains for q in c.quotes)


def test_underlying_is_und_price_at_the_snapshot_time(snap_0326: CsvSnapshot) -> None:
    und = snap_0326.underlying
    assert (und.symbol, und.last, und.quote_ts_ns) == ("SPY", 568.875, snap_0326.ts_ns)


# ---- bad input ------------------------------------------------------------------------------------


def real_rows() -> tuple[list[str], dict[str, list[str]]]:
    """Header and rows (by localSymbol) of the 03-17 file."""
    with FILE_0317.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        return header, {row[header.index("localSymbol")]: row for row in reader}


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def row_with(header: list[str], base: list[str], **changes: str) -> list[str]:
    row = list(base)
    for column, value in changes.items():
        row[header.index(column)] = value
    return row


def test_bad_rows_become_notices_and_the_rest_loads(tmp_path: Path) -> None:
    header, rows = real_rows()
    c541, c542 = rows["SPY   250317C00541000"], rows["SPY   250317C00542000"]
    p541, p542 = rows["SPY   250317P00541000"], rows["SPY   250317P00542000"]
    c543, p543 = rows["SPY   250317C00543000"], rows["SPY   250317P00543000"]
    lines = [
        c541,  # row 2: good
        c542[:-3],  # row 3: wrong field count
        row_with(header, p541, strike="abc"),  # row 4: unparseable strike
        row_with(header, p541, right="X"),  # row 5: unknown right
        row_with(header, p541, strike=""),  # row 6: no strike
        row_with(header, p541, bid="nan"),  # row 7: NaN bid
        row_with(header, p542, bid="2.00", bidSize="10", ask="1.50"),  # row 8: crossed
        row_with(header, c542, ask="-0.5"),  # row 9: negative price
        row_with(header, c543, bid="3.10", ask="3.10"),  # row 10: locked
        row_with(header, p543, bid="0.01", bidSize="-5"),  # row 11: negative size
        row_with(header, rows["SPY   250318C00541000"], model_delta="n/a"),  # row 12: bad greek only
    ]
    (snapshot,) = load_ib_csv(write_csv(tmp_path / "bad.csv", header, lines))

    by_code = {n.code: n for n in snapshot.notices}
    assert codes(snapshot) == [
        "data_quality.malformed_row",
        "data_quality.malformed_row",
        "data_quality.malformed_row",
        "data_quality.malformed_row",
        "data_quality.nan",
        "data_quality.crossed",
        "data_quality.negative",
        "data_quality.locked",
        "data_quality.negative",
        "data_quality.bad_value",
    ]
    malformed = [n.message for n in snapshot.notices if n.code == "data_quality.malformed_row"]
    assert "row 3" in malformed[0]
    assert "expected 57 fields, found 54" in malformed[0]
    assert "row 4" in malformed[1]
    assert "'abc'" in malformed[1]
    assert "SPY   250317P00541000" in malformed[1]
    assert "row 5" in malformed[2]
    assert "right" in malformed[2]
    assert "row 6" in malformed[3]
    assert "no strike" in malformed[3]
    assert "row 8" in by_code["data_quality.crossed"].message
    assert "SPY   250317P00542000" in by_code["data_quality.crossed"].message
    assert by_code["data_quality.crossed"].level is NoticeLevel.WARN

    chain0, chain1 = snapshot.chains
    assert [(q.strike, q.right.value) for q in chain0.quotes] == [
        (541.0, "C"),
        (541.0, "P"),
        (542.0, "C"),
        (542.0, "P"),
        (543.0, "C"),
        (543.0, "P"),
    ]
    nan_bid = quote(snapshot, "20250317", 541.0, Right.PUT)
    assert nan_bid.flags & QuoteFlag.BAD_VALUE
    assert nan_bid.flags & QuoteFlag.NO_BID
    assert nan_bid.bid == 0.0
    crossed = quote(snapshot, "20250317", 542.0, Right.PUT)
    assert crossed.flags == QuoteFlag.CROSSED
    assert (crossed.bid, crossed.ask) == (2.0, 1.5)
    negative = quote(snapshot, "20250317", 542.0, Right.CALL)
    assert negative.flags & QuoteFlag.BAD_VALUE
    assert negative.flags & QuoteFlag.NO_ASK
    assert negative.ask == 0.0
    assert quote(snapshot, "20250317", 543.0, Right.CALL).flags == QuoteFlag.LOCKED
    neg_size = quote(snapshot, "20250317", 543.0, Right.PUT)
    assert neg_size.flags & QuoteFlag.BAD_VALUE
    assert not neg_size.has_bid
    assert neg_size.bid_size == 0
    (greekless,) = chain1.quotes
    assert math.isnan(greekless.src_delta)
    assert not math.isnan(greekless.src_iv)
    assert greekless.flags == QuoteFlag.NONE


def test_duplicate_and_foreign_rows_are_reported(tmp_path: Path) -> None:
    header, rows = real_rows()
    c541 = rows["SPY   250317C00541000"]
    newer = row_with(header, c541, bid="25.70", time="2025-03-17 17:55:10+00:00")
    qqq = row_with(header, rows["SPY   250317C00542000"], symbol="QQQ")
    (snapshot,) = load_ib_csv(write_csv(tmp_path / "dup.csv", header, [newer, c541, qqq]))
    assert codes(snapshot) == ["data_quality.unknown_contract", "data_quality.duplicate"]
    (only,) = snapshot.chains[0].quotes
    assert only.bid == 25.70


def test_a_collector_timestamp_splits_snapshots_and_is_read_as_utc_plus_3(tmp_path: Path) -> None:
    header, rows = real_rows()
    header = ["timestamp", *header]
    c541, p541 = rows["SPY   250317C00541000"], rows["SPY   250317P00541000"]
    lines = [
        ["2025-03-17 20:55:10", *c541],
        ["2025-03-17 20:55:10", *p541],
        ["2025-03-17 20:56:10", *row_with(header[1:], c541, time="")],
        ["2025-03-17 20:56:10", *row_with(header[1:], p541, time="")],
    ]
    first, second = load_ib_csv(write_csv(tmp_path / "two.csv", header, lines))
    assert first.ts_ns == utc_ns(2025, 3, 17, 17, 55, 7, 172945)  # latest tick time wins
    assert second.ts_ns == utc_ns(2025, 3, 17, 17, 56, 10)  # only the collector clock: 20:56:10 UTC+3
    assert [len(c.quotes) for c in second.chains] == [2]
    assert codes(second) == ["data_quality.missing_time"] * 2


def test_a_wrong_collector_offset_is_reported(tmp_path: Path) -> None:
    header, rows = real_rows()
    lines = [["2025-03-17 17:55:10", *rows["SPY   250317C00541000"]]]  # written in UTC, read as UTC+3
    (snapshot,) = load_ib_csv(write_csv(tmp_path / "skew.csv", ["timestamp", *header], lines))
    assert codes(snapshot) == ["data_quality.clock_skew"]


def test_a_file_that_is_not_a_chain_export_names_the_missing_columns(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "trades.csv", ["conId", "symbol", "strike", "price"], [["1", "SPY", "5", "1"]]
    )
    with pytest.raises(ChainFileError, match="missing column") as info:
        load_ib_csv(path)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    for column in ("lastTradeDateOrContractMonth", "right", "bid", "bidSize", "ask", "askSize", "undPrice"):
        assert column in message
    assert "time" in info.value.missing
    assert "strike" not in info.value.missing


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_an_empty_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(ChainFileError, match="empty file"):
        load_ib_csv(path)


def test_a_file_without_usable_rows_is_a_clear_error(tmp_path: Path) -> None:
    header, rows = real_rows()
    bad = row_with(header, rows["SPY   250317C00541000"], right="Z")
    with pytest.raises(ChainFileError, match=r"no usable option rows \(1 data rows\).*row 2"):
        load_ib_csv(write_csv(tmp_path / "bad.csv", header, [bad]))
    with pytest.raises(ChainFileError, match=r"no usable option rows \(0 data rows\)"):
        load_ib_csv(write_csv(tmp_path / "header_only.csv", header, []))


def test_binary_junk_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.csv"
    path.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(ChainFileError, match="not UTF-8"):
        load_ib_csv(path)
