"""spyctl detect and score: the detector offline over real snapshots and over a labelled recording."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from agent.detector.signals import ARBITRAGE_KINDS
from agent.feeds.anomalies import ANOMALY_KINDS
from console.cli.main import app
from console.cli.output import USAGE
from tests.conftest import DATA, AgentFactory

runner = CliRunner()


def test_detect_real_snapshots_finds_no_arbitrage() -> None:
    """Neither IB snapshot holds an executable arbitrage after $0.65 a contract a leg (tests/data/README)."""
    for csv in sorted(DATA.glob("*.csv")):
        res = runner.invoke(app, ["detect", str(csv), "--json"])
        assert res.exit_code == 0, res.output
        signals = [json.loads(line) for line in res.stdout.splitlines()]
        assert all(s["expiry"] == csv.name.split("_")[3].replace("-", "") for s in signals)
        assert [s for s in signals if s["kind"] in ARBITRAGE_KINDS] == []
    human = runner.invoke(app, ["detect", str(DATA / "ib_spy_chain_2025-03-17_1355ET.csv")])
    assert human.exit_code == 0
    assert "signals in ib_spy_chain_2025-03-17_1355ET.csv" in human.stdout


def test_detect_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    junk = tmp_path / "junk.csv"
    junk.write_text("a,b,c\n1,2,3\n")
    res = runner.invoke(app, ["detect", str(junk)])
    assert res.exit_code == USAGE
    assert "neither a recording nor an IB chain CSV" in res.output
    assert runner.invoke(app, ["detect", str(tmp_path / "missing.spyrec")]).exit_code == USAGE


def test_score_a_labelled_recording(start_agent: AgentFactory, tmp_path: Path) -> None:
    recording = tmp_path / "run.spyrec"
    labels = tmp_path / "run.labels.jsonl"
    agent = start_agent(sim={"anomaly_rate_per_min": 30.0, "labels_path": labels})
    res = runner.invoke(app, ["record", str(recording), "-a", agent.address, "--count", "1500"])
    assert res.exit_code == 0, res.output
    agent.stop()  # the label sink is closed with the market
    scored = runner.invoke(app, ["score", str(recording), "--json"])
    assert scored.exit_code == 0, scored.output
    rows = {r["kind"]: r for r in map(json.loads, scored.stdout.splitlines())}
    assert set(rows) >= set(ANOMALY_KINDS)
    assert sum(r["labels"] for r in rows.values()) > 5
    assert sum(r["found_labels"] for r in rows.values()) > 0
    human = runner.invoke(app, ["score", str(recording), "--labels", str(labels)])
    assert human.exit_code == 0
    assert "precision" in human.stdout
    missing = runner.invoke(app, ["score", str(recording), "--labels", str(tmp_path / "none.jsonl")])
    assert missing.exit_code == USAGE
