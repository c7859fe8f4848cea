"""Display formatting shared by the console and spyctl (times in New York, prices, states)."""

from __future__ import annotations

import datetime as dt
import math
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
