"""``spyctl backtest FILE``: the detector and the executor over a recording with the paper broker.

A thin command: parse, call ``agent.backtest.run_backtest``, print the trades and the totals (a Rich
table, or JSON lines with ``--json``: one object per trade, then a summary object). The agent code is
imported lazily, as for ``spyctl detect``, so that the console does not load it for other commands.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from console.cli import output
from console.format import ny_time

if TYPE_CHECKING:
    from agent.backtest import BacktestResult, BacktestTrade


class ModeChoice(StrEnum):
    AUTO = "auto"
    PROPOSE_ALL_CONFIRMED = "propose-all-confirmed"


class PricingChoice(StrEnum):
    TOUCH = "touch"
    MID = "mid"
    IMPROVE = "improve"


def register(app: typer.Typer) -> None:
    @app.command()
    def backtest(
        file: Annotated[Path, typer.Argument(help="a recording (spyctl record) or an IB chain CSV")],
        mode: Annotated[
            ModeChoice,
            typer.Option(help="auto: signals become orders; propose-all-confirmed: proposals, all confirmed"),
        ] = ModeChoice.AUTO,
        units: Annotated[int, typer.Option(help="combinations per entry (capped by sizes and premium)")] = 1,
        pricing: Annotated[
            PricingChoice, typer.Option(help="entry price: touch, mid, or improve (one tick from the touch)")
        ] = PricingChoice.TOUCH,
        commission: Annotated[
            str, typer.Option(help="paper broker commission per contract, dollars")
        ] = "0.65",
        state_dir: Annotated[
            Path | None,
            typer.Option(help="keep the journal and the paper book here (an empty directory)"),
        ] = None,
        json_out: Annotated[
            bool, typer.Option("--json", help="one JSON object per trade, then a summary object")
        ] = False,
    ) -> None:
        """Run the detector and the executor over FILE with the paper broker; print trades and P&L."""
        from agent.backtest import BacktestConfig, BacktestError, EntryMode, run_backtest
        from agent.executor.playbook import Pricing

        if units <= 0:
            output.fail(f"--units must be a positive whole number (got {units})")
            raise typer.Exit(output.USAGE)
        try:
            fee = Decimal(commission)
        except InvalidOperation:
            fee = Decimal("NaN")
        if not fee.is_finite() or fee < 0:
            output.fail(f"--commission must be dollars per contract, >= 0 (got {commission!r})")
            raise typer.Exit(output.USAGE)
        config = BacktestConfig(
            mode=EntryMode(mode.value),
            units=units,
            pricing=Pricing(pricing.value),
            commission_per_contract=fee,
        )
        try:
            result = run_backtest(file, config, state_dir)
        except (BacktestError, OSError) as exc:
            output.fail(str(exc))
            raise typer.Exit(output.USAGE) from None
        if json_out:
            _print_json(result)
        else:
            _print_tables(result)


def _print_json(result: BacktestResult) -> None:
    from agent.backtest import summary_dict, trade_dict

    for t in result.trades:
        output.print_json_line(trade_dict(t))
    output.print_json_line(summary_dict(result.summary))


def _usd(x: Decimal | float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{float(x):,.2f}"


def _price(x: Decimal | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}" if x == x.quantize(Decimal("0.01")) else f"{x:.4f}"


def _legs(t: BacktestTrade) -> str:
    """``+590P -2x589P``: + bought, - sold by the entry."""
    out = []
    for leg in t.legs:
        sign = "+" if leg.side_for(t.side).value == "BUY" else "-"
        ratio = f"{leg.ratio}x" if leg.ratio > 1 else ""
        out.append(f"{sign}{ratio}{leg.contract.strike:g}{leg.contract.right.value}")
    return " ".join(out)


def _fill(ns: int, px: Decimal | None, units: int) -> str:
    return f"{ny_time(ns)} {_price(px)} x{units}" if ns else "-"


def _print_tables(result: BacktestResult) -> None:
    s = result.summary
    output.print_table(
        f"{len(result.trades)} trades in {s.file} ({s.session_date})",
        ["signal", "legs", "entry", "exit", "why", "realized $", "unreal. $", "fees $", "net $"],
        [
            [
                t.signal_id,
                _legs(t),
                _fill(t.entry_ns, t.entry_price, t.entry_units),
                _fill(t.exit_ns, t.exit_price, t.exit_units),
                t.exit_reason or ("held" if t.held_units else "-"),
                _usd(t.realized),
                _usd(t.unrealized) + ("*" if t.unmarked else ""),
                _usd(t.fees),
                _usd(t.net),
            ]
            for t in result.trades
        ],
    )
    denials = ", ".join(f"{code} {n}" for code, n in s.denials) or "none"
    rows = [
        ("replayed", f"{ny_time(s.start_ns)} .. {ny_time(s.end_ns)} NY, {s.chain_updates} chain updates"),
        ("signals", f"{s.signals} (proposals {s.proposals})"),
        ("orders", f"{s.orders} sent, {s.cancels} cancelled, {s.expired} expired at the end"),
        ("fills", f"{s.fills} ({s.contracts} contracts)"),
        ("risk denials", denials),
        ("realized", _usd(s.realized)),
        ("unrealized", _usd(s.unrealized) + " (at the last mid)"),
        ("fees", _usd(s.fees)),
        ("net", _usd(s.net)),
        ("trading state", s.trading_state),
    ]
    if s.unmarked:
        rows.append(("unmarked", ", ".join(s.unmarked)))
    rows.extend(("note", n) for n in s.notes)
    output.print_kv(f"backtest totals, session {s.session_date}", rows)
