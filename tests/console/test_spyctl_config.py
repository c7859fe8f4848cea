"""spyctl config check: the console config and agent settings files, each error named, exit 0 or 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from console.cli.main import app
from console.cli.output import USAGE

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("SPYCTL_AGENT", raising=False)


def test_valid_console_and_agent_files(tmp_path: Path) -> None:
    console = tmp_path / "console.toml"
    console.write_text(
        'operator = "alice"\nheartbeat_s = 3\n[[agents]]\nname = "exec"\naddress = "10.8.0.2:50051"\n'
    )
    agent = tmp_path / "agent.toml"
    agent.write_text('agent_id = "edge-1"\nroles = ["feed", "detector"]\n[server]\nport = 6000\n')
    res = runner.invoke(app, ["config", "check", "--config", str(console), "--agent-config", str(agent)])
    assert res.exit_code == 0, res.output
    for shown in ("valid console config", "exec", "10.8.0.2:50051", "alice", "3 s", "valid agent settings"):
        assert shown in res.stdout
    assert "edge-1" in res.stdout
    assert "127.0.0.1:6000" in res.stdout
    js = runner.invoke(
        app, ["config", "check", "--config", str(console), "--agent-config", str(agent), "--json"]
    )
    assert js.exit_code == 0
    con, ag = (json.loads(x) for x in js.stdout.splitlines())
    assert con == {
        "check": "console",
        "file": str(console),
        "ok": True,
        "errors": [],
        "agents": [{"name": "exec", "address": "10.8.0.2:50051"}],
        "operator": "alice",
        "heartbeat_s": 3.0,
    }
    assert ag["ok"] is True
    assert (ag["agent_id"], ag["roles"], ag["feed"], ag["listen"]) == (
        "edge-1",
        ["feed", "detector"],
        "sim",
        "127.0.0.1:6000",
    )


def test_no_file_checks_the_defaults() -> None:
    res = runner.invoke(app, ["config", "check", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["file"] is None
    assert report["agents"] == [{"name": "127.0.0.1:50051", "address": "127.0.0.1:50051"}]
    human = runner.invoke(app, ["config", "check", "-a", "x=h:1"])
    assert "(no file: defaults)" in human.stdout
    assert "h:1" in human.stdout


def test_invalid_console_config(tmp_path: Path) -> None:
    console = tmp_path / "console.toml"
    console.write_text('heartbeat_s = -1\n[[agents]]\naddress = "h:1"\n')
    res = runner.invoke(app, ["config", "check", "--config", str(console)])
    assert res.exit_code == USAGE
    assert "invalid console config" in res.stdout
    assert "heartbeat_s" in res.stdout
    js = runner.invoke(app, ["config", "check", "--config", str(console), "--json"])
    report = json.loads(js.stdout)
    assert report["ok"] is False
    assert "heartbeat_s" in report["errors"][0]
    assert str(console) in report["errors"][0]
    missing = runner.invoke(app, ["config", "check", "--config", str(tmp_path / "none.toml")])
    assert missing.exit_code == USAGE
    assert "no such config file" in missing.stdout
    bad_agent_value = runner.invoke(app, ["config", "check", "-a", "h:0"])
    assert bad_agent_value.exit_code == USAGE


def test_invalid_agent_settings_name_each_setting(tmp_path: Path) -> None:
    agent = tmp_path / "agent.toml"
    agent.write_text('roles = ["feed", "trader"]\nbogus = 1\n[sim]\nspot = -4\n[server]\nport = 70000\n')
    res = runner.invoke(app, ["config", "check", "--agent-config", str(agent), "--json"])
    assert res.exit_code == USAGE
    con, ag = (json.loads(x) for x in res.stdout.splitlines())
    assert con["ok"] is True  # the console part (defaults) is fine, and still reported
    assert ag["ok"] is False
    text = "\n".join(ag["errors"])
    for setting in ("roles", "bogus", "sim.spot", "server.port"):
        assert setting in text, text
    assert len(ag["errors"]) >= 4  # one line per error
    human = runner.invoke(app, ["config", "check", "--agent-config", str(agent)])
    assert human.exit_code == USAGE
    assert "invalid agent settings" in human.stdout
    assert "sim.spot" in human.stdout
    broken = tmp_path / "broken.toml"
    broken.write_text("feed = \n")
    res = runner.invoke(app, ["config", "check", "--agent-config", str(broken)])
    assert res.exit_code == USAGE
    assert "cannot read configuration" in res.stdout
    res = runner.invoke(app, ["config", "check", "--agent-config", str(tmp_path / "none.toml")])
    assert res.exit_code == USAGE
    assert "does not exist" in res.stdout
