"""spyctl backtest: trades and totals as JSON lines and as tables; exit code 2 for what cannot run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from console.cli.main import app
from console.cli.output import USAGE
from tests.agent.test_backtest import write_sim_recording
from tests.conftest import CSV_0317, DATA

runner = CliRunner()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sim_recording(tmp_path_factory.mktemp("cli") / "anomalous.spyrec", steps=320)


def lines(*args: str) -> list[dict[str, Any]]:
    res = runner.invoke(app, ["backtest", *args, "--json"])
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_json_lines_are_trades_then_a_summary(recording: Path) -> None:
    out = lines(str(recording))
    *trades, summary = out
    assert summary["type"] == "summary"
    assert all(t["type"] == "trade" for t in trades)
    assert trades
    assert summary["orders"] == len(trades)
    assert summary["fees"] == pytest.approx(summary["contracts"] * 0.65)
    assert sum(t["fees"] for t in trades) == pytest.approx(summary["fees"])
    assert summary["net"] == pytest.approx(
        summary["realized"] + summary["unrealized"] - summary["fees"], abs=0.01
    )
    first = trades[0]
    assert first["entry_time"].startswith("2026-03-17T11:")
    assert first["legs"]
    assert {"entry_price", "exit_price", "entry_units", "realized", "unrealized", "net"} <= set(first)


def test_options_reach_the_run(recording: Path) -> None:
    free = lines(str(recording), "--commission", "0", "--units", "2", "--pricing", "touch")[-1]
    assert free["fees"] == 0
    assert free["contracts"] > 0
    proposed = lines(str(recording), "--mode", "propose-all-confirmed")[-1]
    assert proposed["proposals"] == proposed["orders"] > 0


def test_tables_for_people(recording: Path) -> None:
    res = runner.invoke(app, ["backtest", str(recording)])
    assert res.exit_code == 0, res.output
    assert "trades in anomalous.spyrec" in res.stdout
    assert "backtest totals" in res.stdout
    assert "realized" in res.stdout


def test_real_snapshots_give_no_trades() -> None:
    for csv in sorted(DATA.glob("*.csv")):
        out = lines(str(csv))
        assert len(out) == 1
        assert out[0]["orders"] == 0
        assert out[0]["source"] == "ib_csv"


def said(res: Any) -> str:
    """The output with Rich's line wrapping undone."""
    return " ".join(str(res.output).split())


def test_what_cannot_run_exits_2(tmp_path: Path, recording: Path) -> None:
    junk = tmp_path / "junk.csv"
    junk.write_text("a,b,c\n1,2,3\n")
    res = runner.invoke(app, ["backtest", str(junk)])
    assert res.exit_code == USAGE
    assert "neither a recording nor an IB chain CSV" in said(res)
    res = runner.invoke(app, ["backtest", str(tmp_path / "missing.spyrec")])
    assert res.exit_code == USAGE
    assert "does not exist" in said(res)
    for bad in (["--units", "0"], ["--commission", "abc"], ["--commission", "-1"]):
        res = runner.invoke(app, ["backtest", str(CSV_0317), *bad])
        assert res.exit_code == USAGE, bad
        assert "--units" in said(res) or "--commission" in said(res)
    state = tmp_path / "state"
    assert runner.invoke(app, ["backtest", str(CSV_0317), "--state-dir", str(state)]).exit_code == 0
    res = runner.invoke(app, ["backtest", str(CSV_0317), "--state-dir", str(state)])
    assert res.exit_code == USAGE
    assert "already holds a backtest" in said(res)
