"""spyctl signals [--follow] against a real agent running the detector over a market with anomalies."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from console.cli.main import app
from console.cli.output import USAGE
from tests.console.conftest import StartAgent

runner = CliRunner()
SIGNAL_FIELDS = {"id", "kind", "severity", "edge", "legs", "explanation", "status", "agent", "age_s"}


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("SPYCTL_AGENT", raising=False)


def detector_agent(console_agent: StartAgent, name: str = "det") -> Any:
    return console_agent(name, roles="feed,detector", sim={"anomaly_rate_per_min": 60.0})


def test_follow_streams_new_updated_and_resolved_signals(console_agent: StartAgent) -> None:
    agent = detector_agent(console_agent)
    res = runner.invoke(app, ["signals", "--follow", "-a", f"det={agent.address}", "--json", "--count", "40"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(lines) == 40  # one JSON object per line
    for line in lines:
        assert set(line) >= SIGNAL_FIELDS, line
        assert line["agent"] == "det"
        assert line["event"] in ("open", "new", "updated", "resolved")
        assert line["legs"]
        assert line["explanation"]
        assert line["age_s"] is None or line["age_s"] >= 0
    events = [x["event"] for x in lines]
    assert "new" in events
    # a signal is announced before it is updated, and the stream is in order
    seqs = [int(x["seq"]) for x in lines]
    assert seqs == sorted(seqs)
    first_event: dict[str, str] = {}
    for line in lines:
        first_event.setdefault(line["id"], line["event"])
    assert set(first_event.values()) <= {"open", "new"}
    assert not any(x["event"] == "updated" and x["status"] != "active" for x in lines)

    human = runner.invoke(app, ["signals", "-f", "-a", agent.address, "--count", "5"])
    assert human.exit_code == 0, human.output
    out = human.stdout.splitlines()
    assert len(out) == 5
    assert all("edge $" in line and "[" in line for line in out)


def test_open_signals_table_and_json(console_agent: StartAgent) -> None:
    agent = detector_agent(console_agent)
    deadline = time.monotonic() + 30
    rows: list[dict[str, Any]] = []
    while not rows and time.monotonic() < deadline:
        res = runner.invoke(app, ["signals", "-a", agent.address, "--json"])
        assert res.exit_code == 0, res.output
        rows = [json.loads(x) for x in res.stdout.splitlines()]
        time.sleep(0.1)
    assert rows, "no open signal within 30 s"
    for row in rows:
        assert set(row) >= SIGNAL_FIELDS
        assert row["status"] in ("new", "active")  # only open ones
        assert row["age_s"] >= 0
        assert "event" not in row
    human = runner.invoke(app, ["signals", "-a", agent.address])
    assert human.exit_code == 0
    assert "open signals at" in human.stdout
    for column in ("kind", "severity", "edge $", "legs", "age", "explanation"):
        assert column in human.stdout


def test_signals_from_two_agents_and_bad_arguments(console_agent: StartAgent) -> None:
    one = detector_agent(console_agent, "one")
    two = console_agent("two")  # no detector: never any signal
    res = runner.invoke(app, ["signals", "-a", f"one={one.address}", "-a", f"two={two.address}"])
    assert res.exit_code == 0, res.output
    assert "one: " in res.stdout
    assert "two: 0 open signals" in res.stdout
    follow = runner.invoke(
        app, ["signals", "-f", "-a", f"one={one.address}", "-a", f"two={two.address}", "--count", "6"]
    )
    assert follow.exit_code == 0, follow.output
    assert all(line.split()[1] == "one" for line in follow.stdout.splitlines())  # agent named per line
    assert runner.invoke(app, ["signals", "-a", one.address, "--count", "-1"]).exit_code == USAGE
