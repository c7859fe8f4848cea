"""spyctl commands against real agents: output, JSON, recordings, several agents, the config file,
the exit codes and shell completion."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.domain import TOPICS
from console.cli import envelopes
from console.cli.main import app
from console.cli.output import EXIT_CODES, INTERRUPTED, REFUSED, STREAM_ENDED, UNREACHABLE, USAGE
from proto.recording import read_recording
from tests.console.conftest import StartAgent

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never read the developer's ~/.config/spyops/console.toml or SPYCTL_* variables."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for key in ("SPYCTL_AGENT", "SPYCTL_OPERATOR"):
        monkeypatch.delenv(key, raising=False)


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
    assert bad_topic.exit_code == USAGE  # checked before asking the agent
    assert "unknown topic" in bad_topic.output
    assert "market" in bad_topic.output
    assert runner.invoke(app, ["stream", "-a", agent.address, "--from-seq", "-3"]).exit_code == USAGE
    assert runner.invoke(app, ["status", "-a", "nonsense"]).exit_code == USAGE
    assert runner.invoke(app, ["status", "-a", "host:99999"]).exit_code == USAGE
    assert runner.invoke(app, ["status", "--bogus-option"]).exit_code == USAGE


def test_unreachable_agent_is_a_clear_error() -> None:
    dead = f"127.0.0.1:{free_port()}"
    for command in (["status"], ["risk", "--json"], ["signals"], ["stream", "--count", "1"]):
        res = runner.invoke(app, [*command, "--agent", dead])
        assert res.exit_code == UNREACHABLE, (command, res.output)
        assert "unreachable" in res.output
    # following commands fail at once instead of retrying forever
    res = runner.invoke(app, ["signals", "--follow", "--agent", dead])
    assert res.exit_code == UNREACHABLE
    assert runner.invoke(app, ["record", "/dev/null", "--agent", dead]).exit_code == UNREACHABLE


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


def test_several_agents_show_each_and_commands_need_one(console_agent: StartAgent, tmp_path: Path) -> None:
    one = console_agent("one")
    two = console_agent("two")
    cfg = tmp_path / "console.toml"
    cfg.write_text(
        f'operator = "alice"\n[[agents]]\nname = "one"\naddress = "{one.address}"\n'
        f'[[agents]]\nname = "two"\naddress = "{two.address}"\n'
    )
    both = runner.invoke(app, ["status", "--config", str(cfg), "--json"])
    assert both.exit_code == 0, both.output
    rows = [json.loads(x) for x in both.stdout.splitlines()]
    assert [(r["agent"], r["agent_id"], r["address"]) for r in rows] == [
        ("one", "one", one.address),
        ("two", "two", two.address),
    ]
    human = runner.invoke(app, ["status", "--config", str(cfg)])
    assert f"agent one at {one.address} (one)" in human.stdout
    assert f"agent two at {two.address} (two)" in human.stdout
    # --agent NAME picks one of the configured agents
    picked = runner.invoke(app, ["status", "--config", str(cfg), "-a", "two", "--json"])
    assert [json.loads(x)["agent_id"] for x in picked.stdout.splitlines()] == ["two"]
    unknown = runner.invoke(app, ["status", "--config", str(cfg), "-a", "three"])
    assert unknown.exit_code == USAGE
    assert "configured: one, two" in unknown.output
    # every read command shows each agent
    for command in (["risk"], ["pnl"], ["orders"], ["positions"], ["proposals"], ["limits", "show"]):
        res = runner.invoke(app, [*command, "--config", str(cfg), "--json"])
        assert res.exit_code == 0, (command, res.output)
    pnl = [
        json.loads(x) for x in runner.invoke(app, ["pnl", "--config", str(cfg), "--json"]).stdout.splitlines()
    ]
    assert [p["agent"] for p in pnl] == ["one", "two"]
    # a command changing something goes to exactly one agent: several configured -> choose
    halt = runner.invoke(app, ["halt", "--config", str(cfg)])
    assert halt.exit_code == USAGE
    assert "exactly one agent" in halt.output
    assert "--agent NAME" in halt.output
    assert "one, two" in halt.output
    record = runner.invoke(app, ["record", str(tmp_path / "r.spyrec"), "--config", str(cfg)])
    assert record.exit_code == USAGE
    chosen = runner.invoke(app, ["halt", "--config", str(cfg), "--agent", "one"])
    assert chosen.exit_code == REFUSED  # reached exactly that agent, which runs no executor
    assert "runs no executor" in chosen.output
    # the same options before the command (spyctl -a NAME halt); the command's own win
    before = runner.invoke(app, ["--config", str(cfg), "-a", "one", "halt"])
    assert before.exit_code == REFUSED
    assert "runs no executor" in before.output
    assert runner.invoke(app, ["--config", str(cfg), "halt"]).exit_code == USAGE
    mixed = runner.invoke(app, ["--config", str(cfg), "-a", "one", "status", "-a", "two", "--json"])
    assert [json.loads(x)["agent"] for x in mixed.stdout.splitlines()] == ["two"]
    # one agent down: the other is still shown, the exit code says something failed
    two.stop()
    partial = runner.invoke(app, ["status", "--config", str(cfg), "--json"])
    assert partial.exit_code == UNREACHABLE
    assert [json.loads(x)["agent"] for x in partial.stdout.splitlines()] == ["one"]
    assert "two:" in partial.stderr


def test_stream_from_several_agents_and_bad_config(console_agent: StartAgent, tmp_path: Path) -> None:
    one = console_agent("one")
    two = console_agent("two")
    res = runner.invoke(app, ["stream", "-a", f"a={one.address}", "-a", f"b={two.address}", "--count", "30"])
    assert res.exit_code == 0, res.output
    names = {line.split()[0] for line in res.stdout.splitlines()}
    assert names == {"a", "b"}  # each line says which agent it came from
    js = runner.invoke(app, ["stream", "-a", one.address, "-a", two.address, "--json", "--count", "30"])
    assert {json.loads(x)["agent_id"] for x in js.stdout.splitlines()} == {"one", "two"}
    resumed = runner.invoke(app, ["stream", "-a", one.address, "-a", two.address, "--from-seq", "5"])
    assert resumed.exit_code == USAGE
    bad = tmp_path / "bad.toml"
    bad.write_text("[[agents]]\naddress = 'nohost'\n")
    res = runner.invoke(app, ["status", "--config", str(bad)])
    assert res.exit_code == USAGE
    assert "agents[0]" in res.output
    assert runner.invoke(app, ["status", "--config", str(tmp_path / "none.toml")]).exit_code == USAGE


def test_config_file_from_the_environment(console_agent: StartAgent, tmp_path: Path) -> None:
    agent = console_agent("env")
    cfg = tmp_path / "console.toml"
    cfg.write_text(f'[[agents]]\nname = "e"\naddress = "{agent.address}"\n')
    res = runner.invoke(app, ["status", "--json"], env={"SPY_CONSOLE_CONFIG": str(cfg)})
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["agent"] == "e"


def test_exit_codes_are_documented() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    text = " ".join(res.stdout.split())
    assert "Exit codes" in text
    for code, meaning in EXIT_CODES:
        assert f"{code} {meaning}" in text
    assert [c for c, _ in EXIT_CODES] == [0, USAGE, UNREACHABLE, REFUSED, STREAM_ENDED, INTERRUPTED]
    assert {USAGE, UNREACHABLE, REFUSED, STREAM_ENDED} == {2, 3, 4, 5}


def test_topics_match_the_agent() -> None:
    assert envelopes.TOPICS == TOPICS


def _spyctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", "from console.cli.main import main; main()", *args],
        env=full,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_shell_completion(tmp_path: Path) -> None:
    """The Click/Typer completion protocol: the scripts, and completions of commands, options and names."""
    script = _spyctl({"_SPYCTL_COMPLETE": "source_bash"})
    assert script.returncode == 0, script.stderr
    assert "complete -o default -F _spyctl_completion spyctl" in script.stdout
    zsh = _spyctl({"_SPYCTL_COMPLETE": "source_zsh"})
    assert "#compdef spyctl" in zsh.stdout
    shown = _spyctl({"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}, "--show-completion", "fish")
    assert shown.returncode == 0, shown.stderr
    assert "complete --command spyctl" in shown.stdout

    def complete(words: str) -> list[str]:
        cword = len(words.split()) - (0 if words.endswith(" ") else 1)
        res = _spyctl({"_SPYCTL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)})
        assert res.returncode == 0, res.stderr
        return res.stdout.split()

    assert {"signals", "status", "stream"} <= set(complete("spyctl s"))
    assert set(complete("spyctl limits ")) == {"show", "set"}
    assert set(complete("spyctl config ")) == {"check"}
    assert "--follow" in complete("spyctl signals --f")
    assert set(complete("spyctl stream --topic m")) == {"market"}
    cfg = tmp_path / "console.toml"
    cfg.write_text('[[agents]]\nname = "exec"\naddress = "h:1"\n[[agents]]\nname = "feed"\naddress = "h:2"\n')
    res = _spyctl(
        {
            "_SPYCTL_COMPLETE": "complete_bash",
            "COMP_WORDS": "spyctl halt --agent ",
            "COMP_CWORD": "3",
            "SPY_CONSOLE_CONFIG": str(cfg),
        }
    )
    assert set(res.stdout.split()) == {"exec", "feed"}


def test_agent_command_is_forwarded_with_its_help() -> None:
    res = runner.invoke(app, ["agent", "--help"])
    assert res.exit_code == 0, res.output
    assert "--roles" in res.stdout
    assert "spyctl agent" in res.stdout


def test_client_errors_map_to_documented_codes() -> None:
    import grpc

    from console.cli.common import exit_code_of
    from console.client import AgentRequestError, AgentUnreachable, ClientError, GapError

    assert exit_code_of(AgentUnreachable("x")) == UNREACHABLE
    assert exit_code_of(AgentRequestError("x", grpc.StatusCode.INVALID_ARGUMENT)) == REFUSED
    assert exit_code_of(GapError("x")) == STREAM_ENDED
    assert exit_code_of(ClientError("x")) == USAGE
