"""spyctl replay: recordings made by spyctl record and real IB chain CSVs, played like spyctl stream."""

from __future__ import annotations

import datetime as dt
import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from console.cli.envelopes import envelope_summary, topic_of
from console.cli.main import app
from console.cli.output import USAGE
from console.format import NEW_YORK, ny_time
from proto.recording import MAGIC, read_recording
from tests.conftest import CSV_0317

runner = CliRunner()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lossless recording of an agent with a detector: market, signals, health, notices."""
    from agent.runtime import AgentRuntime
    from tests.conftest import agent_settings

    out = tmp_path_factory.mktemp("rec") / "session.spyrec"
    th = AgentRuntime(
        agent_settings(
            "rec",
            0,
            roles="feed,detector",
            sim={"anomaly_rate_per_min": 60.0, "strikes_each_side": 10},
            clock={"date": "2025-03-17"},
        )
    ).start_in_thread()
    try:
        res = runner.invoke(app, ["record", str(out), "-a", th.address, "--count", "600"])
        assert res.exit_code == 0, res.output
    finally:
        th.stop()
    return out


def json_lines(text: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    lines = [json.loads(x) for x in text.splitlines()]
    assert "summary" in lines[-1]
    return lines[:-1], lines[-1]["summary"]


def test_replay_a_recording_as_json_and_for_people(recording: Path) -> None:
    recorded = list(read_recording(recording))
    res = runner.invoke(app, ["replay", str(recording), "--json"])
    assert res.exit_code == 0, res.output
    envs, summary = json_lines(res.stdout)
    assert [int(e["seq"]) for e in envs] == [e.seq for e in recorded]  # every envelope, in order
    assert "snapshot" in envs[0]
    assert summary["envelopes"] == summary["read"] == len(recorded)
    assert summary["first_ns"] == min(e.ts_ns for e in recorded if e.ts_ns)
    assert summary["last_ns"] == max(e.ts_ns for e in recorded)
    assert summary["span_s"] == pytest.approx((summary["last_ns"] - summary["first_ns"]) / 1e9)
    topics: dict[str, int] = {}
    for e in recorded:
        topics[topic_of(e)] = topics.get(topic_of(e), 0) + 1
    assert summary["topics"] == dict(sorted(topics.items()))
    assert summary["topics"]["market"] > 0
    assert summary["agents"] == ["rec"]

    human = runner.invoke(app, ["replay", str(recording)])
    assert human.exit_code == 0, human.output
    lines = human.stdout.splitlines()
    # the same lines as spyctl stream prints, then the summary
    assert lines[: len(recorded)] == [envelope_summary(e) for e in recorded]
    rest = "\n".join(lines[len(recorded) :])
    assert f"replay of {recording.name}" in rest
    assert f"{len(recorded)} shown of {len(recorded)} read" in rest
    assert "market" in rest


def test_topic_filter_and_count(recording: Path) -> None:
    res = runner.invoke(app, ["replay", str(recording), "--json", "-t", "signals", "-t", "notices"])
    assert res.exit_code == 0, res.output
    envs, summary = json_lines(res.stdout)
    kinds = {next(k for k in e if k in ("snapshot", "signal", "smile", "notice", "chain")) for e in envs}
    assert kinds <= {"snapshot", "signal", "smile", "notice"}
    assert "signal" in kinds
    assert set(summary["topics"]) <= {"snapshot", "signals", "notices"}
    assert summary["read"] > summary["envelopes"]
    first5 = runner.invoke(app, ["replay", str(recording), "--json", "--count", "5"])
    envs5, summary5 = json_lines(first5.stdout)
    assert len(envs5) == summary5["envelopes"] == 5


def test_time_window(recording: Path) -> None:
    recorded = [e for e in read_recording(recording) if e.ts_ns]
    # a window of whole seconds inside the recording
    start = ny_time(recorded[len(recorded) // 3].ts_ns)
    end = ny_time(recorded[2 * len(recorded) // 3].ts_ns)
    res = runner.invoke(app, ["replay", str(recording), "--json", "--from", start, "--to", end])
    assert res.exit_code == 0, res.output
    envs, summary = json_lines(res.stdout)
    assert envs
    day = ny_time(recorded[0].ts_ns, with_date=True)[:10]

    def instant(hms: str) -> int:
        t = dt.datetime.strptime(f"{day} {hms}", "%Y-%m-%d %H:%M:%S").replace(tzinfo=NEW_YORK)
        return int(t.timestamp()) * 1_000_000_000

    start_ns, end_ns = instant(start), instant(end)  # --to is an instant: HH:MM:SS.000
    assert all(start_ns <= int(e["ts_ns"]) <= end_ns for e in envs)
    inside = [e for e in recorded if start_ns <= e.ts_ns <= end_ns]
    assert [int(e["seq"]) for e in envs] == [e.seq for e in inside]
    assert summary["read"] == len(list(read_recording(recording)))
    # with a date too; an empty window is not an error
    dated = runner.invoke(app, ["replay", str(recording), "--json", "--from", f"{day} {start}", "--to", end])
    assert len(json_lines(dated.stdout)[0]) == len(envs)
    empty = runner.invoke(app, ["replay", str(recording), "--json", "--from", "15:59"])
    assert empty.exit_code == 0
    assert json_lines(empty.stdout)[1]["envelopes"] == 0


def test_speed_paces_the_replay(recording: Path) -> None:
    recorded = [e for e in read_recording(recording) if e.ts_ns]
    span = (recorded[-1].ts_ns - recorded[0].ts_ns) / 1e9
    assert span > 0.5
    speed = span / 0.6  # the whole recording in about 0.6 s of wall time
    t0 = time.monotonic()
    res = runner.invoke(app, ["replay", str(recording), "--json", "--speed", f"{speed}"])
    elapsed = time.monotonic() - t0
    assert res.exit_code == 0, res.output
    assert elapsed >= 0.55  # never faster than asked (a lower bound only: slow machines are fine)
    t0 = time.monotonic()
    fast = runner.invoke(app, ["replay", str(recording), "--json", "--speed", "0"])
    assert fast.exit_code == 0
    assert fast.stdout == res.stdout  # same content at any pace


def test_replay_an_ib_chain_csv() -> None:
    res = runner.invoke(app, ["replay", str(CSV_0317), "--json"])
    assert res.exit_code == 0, res.output
    envs, summary = json_lines(res.stdout)
    chains = [e for e in envs if "chain" in e]
    assert chains
    assert chains[0]["chain"]["expiry"] == "20250317"  # the 0DTE chain
    assert len(chains[0]["chain"]["quotes"]) > 100
    assert any("underlying" in e for e in envs)
    assert [int(e["seq"]) for e in envs] == list(range(1, len(envs) + 1))
    assert summary["first"].startswith("2025-03-17 13:5")
    assert summary["agents"] == [f"replay:{CSV_0317.name}"]
    human = runner.invoke(app, ["replay", str(CSV_0317), "-t", "market"])
    assert human.exit_code == 0
    assert "20250317" in human.stdout
    assert "replay of" in human.stdout
    late = runner.invoke(app, ["replay", str(CSV_0317), "--json", "--from", "14:30"])
    assert json_lines(late.stdout)[1]["envelopes"] == 0


def test_malformed_files_and_arguments(recording: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.csv"
    junk.write_text("a,b,c\n1,2,3\n")
    res = runner.invoke(app, ["replay", str(junk)])
    assert res.exit_code == USAGE
    assert "neither a recording nor an IB chain CSV" in res.output
    empty = tmp_path / "empty.spyrec"
    empty.write_bytes(b"")
    assert runner.invoke(app, ["replay", str(empty)]).exit_code == USAGE
    missing = runner.invoke(app, ["replay", str(tmp_path / "missing.spyrec")])
    assert missing.exit_code == USAGE
    assert "does not exist" in missing.output
    assert runner.invoke(app, ["replay", str(tmp_path)]).exit_code == USAGE

    # damaged in the middle: what came before is shown, then a clear error naming the place
    whole = recording.read_bytes()
    envs = list(read_recording(recording))
    first_len = struct.unpack("<I", whole[len(MAGIC) : len(MAGIC) + 4])[0]
    cut = len(MAGIC) + 4 + first_len
    corrupt = tmp_path / "corrupt.spyrec"
    corrupt.write_bytes(whole[:cut] + struct.pack("<I", 0xFFFFFFF0) + b"\x00" * 16)
    res = runner.invoke(app, ["replay", str(corrupt), "--json"])
    assert res.exit_code == USAGE
    assert "corrupt record length" in res.stderr
    assert [int(json.loads(x)["seq"]) for x in res.stdout.splitlines()] == [envs[0].seq]
    # cut short by a crash while writing: every whole envelope plays, no error
    truncated = tmp_path / "truncated.spyrec"
    truncated.write_bytes(whole[: cut + 10])
    res = runner.invoke(app, ["replay", str(truncated), "--json"])
    assert res.exit_code == 0
    assert json_lines(res.stdout)[1]["envelopes"] == 1

    for bad in (
        ["--speed", "-1"],
        ["--speed", "nan"],
        ["--topic", "bogus"],
        ["--from", "25:00"],
        ["--from", "soon"],
        ["--from", "11:00", "--to", "10:00"],
        ["--count", "-2"],
    ):
        res = runner.invoke(app, ["replay", str(recording), *bad])
        assert res.exit_code == USAGE, (bad, res.output)


def test_replay_help_lists_the_options() -> None:
    res = runner.invoke(app, ["replay", "--help"])
    assert res.exit_code == 0
    for option in ("--speed", "--from", "--to", "--topic", "--json"):
        assert option in res.stdout
