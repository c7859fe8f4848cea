"""Display formatting shared by the console and spyctl (times in New York, prices, states)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from typing import Any
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")


def ny_time(ts_ns: int, with_date: bool = False) -> str:
    if ts_ns <= 0:
        return "--:--:--"
    t = dt.datetime.fromtimestamp(ts_ns / 1e9, dt.UTC).astimezone(NEW_YORK)
    return t.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def price(x: float, present: bool = True) -> str:
    if not present or not math.isfinite(x):
        return "-"
    return f"{x:,.2f}"


def size(n: int) -> str:
    return f"{n:,}" if n > 0 else ""


def money(x: float, signed: bool = True) -> str:
    """Dollars with thousands separators ("+1,234.50", "-12.00"); "-" when unknown."""
    if not math.isfinite(x):
        return "-"
    return f"{x:+,.2f}" if signed else f"{x:,.2f}"


def num(x: float, fmt: str = ".2f") -> str:
    """A float in ``fmt``, or "-" when it is NaN or infinite."""
    return format(x, fmt) if math.isfinite(x) else "-"


def pct_iv(x: float) -> str:
    """An implied volatility as percent ("23.4"), blank when unknown."""
    return f"{x * 100:.1f}" if math.isfinite(x) and x > 0 else ""


def expiry_date(expiry: str) -> str:
    """YYYYMMDD as YYYY-MM-DD ("-" when empty)."""
    return f"{expiry[:4]}-{expiry[4:6]}-{expiry[6:]}" if len(expiry) == 8 else (expiry or "-")


def right_letter(right: int) -> str:
    return {1: "C", 2: "P"}.get(right, "?")


def contract(strike: float, right: int) -> str:
    """ "562C", "560.5P"."""
    return f"{strike:g}{right_letter(right)}"


def legs_text(legs: Iterable[Any], units: int = 1) -> str:
    """Wire legs (``Leg`` or ``OrderLeg``) as typed in a ticket: ``590C,-591C``, ``-2x591C``. An order's
    legs carry contracts for the whole order: ``units`` (its quantity) turns them into ratios."""
    out = []
    for leg in legs:
        sign = "-" if str(leg.side).upper() == "SELL" else ""
        n = int(getattr(leg, "ratio", 0) or getattr(leg, "quantity", 0) or 1)
        if units > 1 and n % units == 0:
            n //= units
        out.append(f"{sign}{f'{n}x' if n > 1 else ''}{leg.strike:g}{right_letter(int(leg.right))}")
    return ",".join(out)


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters with an ellipsis (table cells: long text is slow to wrap)."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"
