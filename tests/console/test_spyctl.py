"""spyctl commands against real agents: output, JSON, recordings and exit codes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from typer.testing import CliRunner

from console.cli.main import app
from console.cli.output import REFUSED, UNREACHABLE, USAGE
from proto.recording import read_recording
from tests.console.conftest import StartAgent

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_status_human_and_json(console_agent: StartAgent) -> None:
    agent = console_agent()
    human = runner.invoke(app, ["status", "--agent", agent.address])
    assert human.exit_code == 0, human.output
    assert "SERVING" in human.output
    assert "2025-03-17" in human.output
    assert "sim" in human.output
    res = runner.invoke(app, ["status", "--agent", agent.address, "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["agent_id"] == "test"
    assert info["roles"] == ["feed"]
    assert info["session_date"] == "2025-03-17"
    assert info["health"] == "SERVING"
    assert int(info["last_seq"]) >= 1


def test_stream_json_lines_resume_from_seq_and_topics(console_agent: StartAgent) -> None:
    agent = console_agent()
    res = runner.invoke(app, ["stream", "--agent", agent.address, "--json", "--count", "6"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(lines) == 6
    assert "snapshot" in lines[0]  # from_seq 0: a snapshot first
    seqs = [int(x["seq"]) for x in lines]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 6
    # resume exactly where we stopped: the next events, no gap, no duplicate
    nxt = seqs[-1] + 1
    res2 = runner.invoke(
        app, ["stream", "-a", agent.address, "--json", "--count", "3", "--from-seq", str(nxt)]
    )
    assert res2.exit_code == 0, res2.output
    resumed = [json.loads(x) for x in res2.stdout.splitlines()]
    # replayed market events may arrive conflated (first_seq..seq); together they cover nxt.. exactly
    expected = nxt
    for env in resumed:
        assert int(env.get("first_seq", env["seq"])) == expected
        expected = int(env["seq"]) + 1
    notices = runner.invoke(app, ["stream", "-a", agent.address, "--json", "--count", "2", "-t", "market"])
    kinds = [
        next(k for k in ("snapshot", "chain", "underlying") if k in json.loads(x))
        for x in notices.stdout.splitlines()
    ]
    assert kinds[0] == "snapshot"
    assert set(kinds[1:]) <= {"chain", "underlying"}


def test_stream_bad_arguments_exit_codes(console_agent: StartAgent) -> None:
    agent = console_agent()
    bad_topic = runner.invoke(app, ["stream", "-a", agent.address, "-t", "bogus", "--count", "1"])
    assert bad_topic.exit_code == REFUSED
    assert "unknown topic" in bad_topic.output
    assert "market" in bad_topic.output
    assert runner.invoke(app, ["stream", "-a", agent.address, "--from-seq", "-3"]).exit_code == USAGE
    assert runner.invoke(app, ["status", "-a", "nonsense"]).exit_code == USAGE


def test_unreachable_agent_is_a_clear_error() -> None:
    res = runner.invoke(app, ["status", "--agent", f"127.0.0.1:{free_port()}"])
    assert res.exit_code == UNREACHABLE
    assert "unreachable" in res.output


def test_record_writes_a_lossless_replayable_recording(console_agent: StartAgent, tmp_path: Path) -> None:
    agent = console_agent()
    out = tmp_path / "session.spyrec"
    res = runner.invoke(app, ["record", str(out), "--agent", agent.address, "--count", "40"])
    assert res.exit_code == 0, res.output
    envs = list(read_recording(out))
    assert len(envs) == 40
    assert envs[0].HasField("snapshot")
    seqs = [e.seq for e in envs]
    assert seqs == list(range(seqs[0], seqs[0] + 40))  # lossless: every seq, none conflated
    assert all(e.first_seq == 0 for e in envs)


def test_agent_command_refuses_bad_configuration(tmp_path: Path) -> None:
    res = runner.invoke(app, ["agent", "--feed", "upstream"])
    assert res.exit_code == USAGE
    assert "upstream" in res.output
    cfg = tmp_path / "agent.toml"
    cfg.write_text('feed = "sim"\n[sim]\nspot = -4\n')
    res = runner.invoke(app, ["agent", "--config", str(cfg)])
    assert res.exit_code == USAGE
    assert "sim.spot" in res.output
    res = runner.invoke(app, ["agent", "--replay", str(tmp_path / "missing.csv")])
    assert res.exit_code == USAGE
    assert "does not exist" in res.output


def test_agent_command_reports_port_in_use(console_agent: StartAgent) -> None:
    agent = console_agent()
    res = runner.invoke(app, ["agent", "--port", str(agent.port), "--start", "10:30"])
    assert res.exit_code == 3
    assert "cannot listen" in res.output
