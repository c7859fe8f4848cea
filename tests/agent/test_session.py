"""Sessions from the exchange calendar, the 0DTE time-to-expiry convention and the market clock."""

from __future__ import annotations

import datetime as dt

import pytest

from agent.clock import MarketClock
from agent.runtime import choose_session_and_clock
from agent.session import (
    MIN_TAU_MINUTES,
    TRADING_MINUTES_PER_YEAR,
    CalendarError,
    session,
    session_on_or_after,
    to_ns,
)
from agent.settings import load_settings


def test_regular_day_closes_at_four_new_york() -> None:
    s = session(dt.date(2025, 3, 17))
    assert s.close_utc == dt.datetime(2025, 3, 17, 20, 0, tzinfo=dt.UTC)  # EDT
    assert not s.half_day
    assert s.expiry == "20250317"


def test_half_day_and_holiday() -> None:
    friday = session(dt.date(2026, 11, 27))  # the day after Thanksgiving
    assert friday.half_day
    assert friday.close_utc == dt.datetime(2026, 11, 27, 18, 0, tzinfo=dt.UTC)  # 13:00 EST
    with pytest.raises(CalendarError, match="not a trading day"):
        session(dt.date(2026, 11, 26))
    assert session_on_or_after(dt.date(2026, 11, 26)).date == dt.date(2026, 11, 27)
    assert session_on_or_after(dt.date(2026, 11, 28)).date == dt.date(2026, 11, 30)  # weekend


def test_tau_is_trading_minutes_and_never_zero() -> None:
    s = session(dt.date(2025, 3, 17))
    one_hour_before = to_ns(s.at("15:00"))
    assert s.tau(one_hour_before) == pytest.approx(60 / TRADING_MINUTES_PER_YEAR)
    assert s.tau(s.close_ns) == MIN_TAU_MINUTES / TRADING_MINUTES_PER_YEAR
    assert s.tau(s.close_ns + 10**12) > 0
    early = to_ns(dt.datetime(2025, 3, 17, 5, 0, tzinfo=dt.UTC))  # before the open: a full day at most
    assert s.tau(early) == pytest.approx(390 / TRADING_MINUTES_PER_YEAR)


def test_bad_time_of_day() -> None:
    with pytest.raises(CalendarError, match="HH:MM"):
        session(dt.date(2025, 3, 17)).at("noon")


def test_accelerated_clock_starts_where_asked() -> None:
    start = to_ns(session(dt.date(2025, 3, 17)).at("15:30"))
    clock = MarketClock(speed=60.0, anchor_market_ns=start)
    assert clock.simulated
    assert 0 <= clock.now_ns() - start < 60 * 10**9  # well under a market minute has passed
    assert clock.wall_delay(start + 60 * 10**9) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="speed"):
        MarketClock(speed=0)


def test_demo_clock_is_real_time_only_while_the_market_is_open() -> None:
    open_now = dt.datetime(2025, 3, 17, 15, 0, tzinfo=dt.UTC)  # 11:00 New York
    sess, clock, note = choose_session_and_clock(load_settings(), now=open_now)
    assert sess.date == dt.date(2025, 3, 17)
    assert not clock.simulated
    assert "real-time" in note
    evening = dt.datetime(2025, 3, 18, 1, 0, tzinfo=dt.UTC)  # 21:00 New York on the 17th
    sess, clock, note = choose_session_and_clock(load_settings(), now=evening)
    assert sess.date == dt.date(2025, 3, 17)  # the day's own session, replayed from 10:30
    assert clock.simulated
    assert "10:30" in note
    assert "market closed" in note
