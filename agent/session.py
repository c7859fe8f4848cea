"""Exchange sessions and the 0DTE time-to-expiry convention.

Holidays and 13:00 half days come from ``exchange_calendars`` (XNYS), never from hand-written dates.

Time-to-expiry convention (used by every pricing formula in this project): *trading time*.
``tau`` is the number of trading minutes left until today's close, divided by
``TRADING_MINUTES_PER_YEAR`` (252 sessions x 390 minutes). Volatilities are therefore per trading
year, overnight and weekends count for nothing, and a 13:00 half day simply has fewer minutes left.
``tau`` is floored at ``MIN_TAU_MINUTES`` (one second), so it is never zero or negative in a formula;
after the close an option has expired and is not priced at all.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import pandas as pd

NEW_YORK = ZoneInfo("America/New_York")
UTC = dt.UTC
TRADING_MINUTES_PER_YEAR = 252 * 390
MIN_TAU_MINUTES = 1.0 / 60.0
NS_PER_MINUTE = 60_000_000_000


class CalendarError(ValueError):
    """A date the market calendar cannot answer for (not a session, or outside its range)."""


@dataclass(frozen=True, slots=True)
class Session:
    """One regular trading session of the NYSE, in UTC and New York time."""

    date: dt.date
    open_utc: dt.datetime
    close_utc: dt.datetime

    @property
    def half_day(self) -> bool:
        return self.close_utc.astimezone(NEW_YORK).hour < 16

    @property
    def open_ns(self) -> int:
        return to_ns(self.open_utc)

    @property
    def close_ns(self) -> int:
        return to_ns(self.close_utc)

    @property
    def expiry(self) -> str:
        """The 0DTE expiry of this session as YYYYMMDD."""
        return self.date.strftime("%Y%m%d")

    def at(self, hhmm: str) -> dt.datetime:
        """This session's date at a New York wall time ``HH:MM`` (or ``HH:MM:SS``), in UTC."""
        try:
            t = dt.time.fromisoformat(hhmm)
        except ValueError:
            raise CalendarError(f"bad time of day {hhmm!r}: expected HH:MM in New York time") from None
        return dt.datetime.combine(self.date, t, NEW_YORK).astimezone(UTC)

    def minutes_to_close(self, now_ns: int) -> float:
        return (self.close_ns - now_ns) / NS_PER_MINUTE

    def tau(self, now_ns: int) -> float:
        """Time to expiry in trading years (see module docstring); never below one second."""
        minutes = min(self.minutes_to_close(now_ns), (self.close_ns - self.open_ns) / NS_PER_MINUTE)
        return max(minutes, MIN_TAU_MINUTES) / TRADING_MINUTES_PER_YEAR

    def is_open(self, now_ns: int) -> bool:
        return self.open_ns <= now_ns < self.close_ns


def to_ns(t: dt.datetime) -> int:
    if t.tzinfo is None:
        raise ValueError("naive datetime: use timezone-aware UTC")
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


@lru_cache(maxsize=1)
def _xnys() -> xcals.ExchangeCalendar:
    return xcals.get_calendar("XNYS")


def session(date: dt.date) -> Session:
    """The session on ``date``; CalendarError if the exchange is closed that day."""
    cal = _xnys()
    ts = pd.Timestamp(date)
    if not (cal.first_session <= ts <= cal.last_session):
        raise CalendarError(
            f"{date} is outside the market calendar's range ({cal.first_session.date()} .. "
            f"{cal.last_session.date()})"
        )
    if not cal.is_session(ts):
        raise CalendarError(f"{date} is not a trading day on the NYSE (weekend or holiday)")
    return Session(
        date=date,
        open_utc=cal.session_open(ts).to_pydatetime(),
        close_utc=cal.session_close(ts).to_pydatetime(),
    )


def session_on_or_after(date: dt.date) -> Session:
    """The session on ``date`` if it is one, else the next trading day's."""
    cal = _xnys()
    ts = pd.Timestamp(date)
    if cal.is_session(ts):
        return session(date)
    return session(cal.date_to_session(ts, direction="next").date())


def today_new_york(now: dt.datetime | None = None) -> dt.date:
    return (now or dt.datetime.now(UTC)).astimezone(NEW_YORK).date()
