"""The chart screens: the volatility smile (IV against strike) and the underlying's intraday chart.

Both are terminal plots (textual-plotext). A plot is recomputed at most twice a second, only while its
screen is visible and only when its data changed."""

from __future__ import annotations

import datetime as dt
import math
import time

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static
from textual_plotext import PlotextPlot

from console.format import NEW_YORK, money, ny_time, price
from console.model import CALL, PUT, ConsoleModel
from console.screens.base import ConsoleScreen
from console.screens.chain import forward_of, quote_analytics

PLOT_EVERY_S = 0.5


class SmileScreen(ConsoleScreen):
    """IV against strike: bid, ask and mid IV of the out-of-the-money options (calls above the forward,
    puts below), the detector's fitted smile, and the strikes the detector calls outliers."""

    TITLE = "Smile"

    def __init__(self, model: ConsoleModel) -> None:
        super().__init__(model)
        self._drawn_revs: tuple[int, int, int] = (-1, -1, -1)
        self._last_plot = 0.0
        self.points: dict[str, list[tuple[float, float]]] = {}  # what the last plot showed, by series

    def body(self) -> ComposeResult:
        yield Static("", id="smile-caption", classes="caption")
        yield PlotextPlot(id="smile-plot")

    def draw(self, force: bool) -> None:
        revs = (self.model.rev("chain"), self.model.rev("smile"), self.model.rev("signals"))
        now = time.monotonic()
        if not force and (revs == self._drawn_revs or now - self._last_plot < PLOT_EVERY_S):
            return
        self._drawn_revs, self._last_plot = revs, now
        self.points = self.series()
        self._plot()

    def series(self) -> dict[str, list[tuple[float, float]]]:
        """The plotted points: "bid", "ask", "mid", "fit" and "outlier" as (strike, IV in percent)."""
        view = self.model.market()
        smile = self.model.smile()
        fwd = forward_of(view, smile)
        out: dict[str, list[tuple[float, float]]] = {
            "bid": [],
            "ask": [],
            "mid": [],
            "fit": [],
            "outlier": [],
        }
        if math.isfinite(fwd) and view.quotes:
            keys = [(k, CALL if k >= fwd else PUT) for k in view.strikes()]
            for which in ("bid", "ask", "mid"):
                iv, _ = quote_analytics(view, keys, smile, which)
                out[which] = [(k[0], float(v) * 100) for k, v in zip(keys, iv, strict=True) if np.isfinite(v)]
            outliers = {
                c.strike
                for sig in self.model.open_signals().values()
                if sig.kind == "smile_outlier"
                for c in sig.contracts
            }
            out["outlier"] = [(k, v) for k, v in out["mid"] if k in outliers]
        if smile is not None and (not smile.expiry or smile.expiry == view.expiry or not view.expiry):
            out["fit"] = [
                (float(k), float(v) * 100)
                for k, v in zip(smile.strikes, smile.ivs, strict=False)
                if math.isfinite(v) and v > 0
            ]
        return out

    def _plot(self) -> None:
        widget = self.query_one("#smile-plot", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        pts = self.points
        plt.title("Implied volatility (%) against strike")
        plt.xlabel("strike")
        for name, marker, color in (("bid", "v", "red"), ("ask", "^", "green"), ("mid", "dot", "cyan")):
            if pts[name]:
                xs, ys = zip(*pts[name], strict=True)
                plt.scatter(list(xs), list(ys), marker=marker, color=color, label=f"{name} IV")
        if pts["fit"]:
            xs, ys = zip(*pts["fit"], strict=True)
            plt.plot(list(xs), list(ys), color="yellow", label="fitted smile")
        if pts["outlier"]:
            xs, ys = zip(*pts["outlier"], strict=True)
            plt.scatter(list(xs), list(ys), marker="X", color="magenta", label="outlier")
        widget.refresh()
        smile = self.model.smile()
        view = self.model.market()
        if smile is None:
            caption = Text(" no smile fit from a detector yet", "dim")
        else:
            caption = Text.assemble(
                (f" {smile.model or 'fit'}", "bold"),
                f"  forward {price(smile.forward)} ({smile.forward_method or '?'})",
                f"  rmse {smile.rmse * 100:.2f} vol pts" if math.isfinite(smile.rmse) else "",
                f"  {smile.n_used} points used",
                (f"  outliers: {', '.join(f'{k:g}' for k, _ in pts['outlier']) or 'none'}", "magenta"),
                f"   as of {ny_time(view.last_ts_ns)} NY",
            )
        self.query_one("#smile-caption", Static).update(caption)


def _ny_hours(ts_ns: int) -> float:
    t = dt.datetime.fromtimestamp(ts_ns / 1e9, dt.UTC).astimezone(NEW_YORK)
    return t.hour + t.minute / 60 + t.second / 3600


class UnderlyingScreen(ConsoleScreen):
    """The underlying: last, bid/ask, change on the previous close, session range and volume, and the
    intraday chart (one point per 5 market seconds, bounded)."""

    TITLE = "Underlying"

    def __init__(self, model: ConsoleModel) -> None:
        super().__init__(model)
        self._drawn_rev = -1
        self._last_plot = 0.0
        self.plotted_points = 0

    def body(self) -> ComposeResult:
        yield Static("", id="und-summary", classes="caption")
        yield PlotextPlot(id="und-plot")

    def draw(self, force: bool) -> None:
        view = self.model.market()
        rev = view.rev.get("underlying", 0) + id(view)
        now = time.monotonic()
        if not force and (rev == self._drawn_rev or now - self._last_plot < PLOT_EVERY_S):
            return
        self._drawn_rev, self._last_plot = rev, now
        self.query_one("#und-summary", Static).update(self.summary())
        widget = self.query_one("#und-plot", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        points = list(view.history)
        self.plotted_points = len(points)
        plt.title(f"{view.symbol} intraday (New York time, hours)")
        if points:
            xs = [_ny_hours(ts) for ts, _ in points]
            ys = [px for _, px in points]
            plt.plot(xs, ys, color="cyan")
            tick = view.underlying_tick
            if tick is not None and tick.prev_close > 0:
                plt.horizontal_line(tick.prev_close, color="gray")
        widget.refresh()

    def summary(self) -> Text:
        v = self.model.market()
        t = v.underlying_tick
        last = v.underlying
        text = Text.assemble((f" {v.symbol} ", "bold"), (price(last, math.isfinite(last)), "bold cyan"))
        if t is not None and t.prev_close > 0 and math.isfinite(last):
            d = last - t.prev_close
            text.append(f"  {d:+.2f} ({d / t.prev_close:+.2%})", "green" if d >= 0 else "red")
            text.append(f"  prev close {price(t.prev_close)}")
        if t is not None:
            text.append(f"\n bid {price(t.bid, t.bid > 0)}  ask {price(t.ask, t.ask > 0)}")
            text.append(f"  volume {t.volume:,}")
        if math.isfinite(v.session_open):
            text.append(
                f"  open {price(v.session_open)}  high {price(v.session_high)}  low {price(v.session_low)}"
            )
            if math.isfinite(last):
                text.append(f"  since open {money(last - v.session_open)}")
        text.append(f"\n as of {ny_time(v.last_ts_ns, with_date=True)} NY", "dim")
        return text
