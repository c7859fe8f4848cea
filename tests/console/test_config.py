"""console.config: the console config file, --agent values and their merging, every error named."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.config import (
    DEFAULT_AGENT,
    AgentTarget,
    ConfigError,
    load_console_config,
    parse_agent_arg,
    select_agents,
)

TWO_AGENTS = """
operator = "alice"
heartbeat_s = 2.5
[[agents]]
name = "exec"
address = "10.8.0.2:50051"
[[agents]]
name = "feed"
address = "feed.vpn:50052"
"""


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never read the developer's ~/.config/spyops/console.toml."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("SPY_CONSOLE_CONFIG", raising=False)
    monkeypatch.delenv("SPY_OPERATOR", raising=False)


def write(tmp_path: Path, text: str, name: str = "console.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPY_OPERATOR", "bob")
    cfg = load_console_config()
    assert cfg.agents == (AgentTarget(DEFAULT_AGENT, DEFAULT_AGENT),)
    assert cfg.operator == "bob"
    assert cfg.heartbeat_s == 5.0
    assert cfg.source is None


def test_file_agents_operator_and_heartbeat(tmp_path: Path) -> None:
    cfg = load_console_config(config=write(tmp_path, TWO_AGENTS))
    assert cfg.agents == (AgentTarget("exec", "10.8.0.2:50051"), AgentTarget("feed", "feed.vpn:50052"))
    assert cfg.operator == "alice"
    assert cfg.heartbeat_s == 2.5
    assert cfg.agent("feed").address == "feed.vpn:50052"
    with pytest.raises(ConfigError, match="no agent named 'nope'"):
        cfg.agent("nope")


def test_agent_values_override_and_extend_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_AGENTS)
    cfg = load_console_config(["exec=127.0.0.1:6000", "127.0.0.1:7000", "feed", "risk=[::1]:7001"], path)
    assert cfg.agents == (
        AgentTarget("exec", "127.0.0.1:6000"),  # replaced by name, keeps its place
        AgentTarget("feed", "feed.vpn:50052"),  # named: already there
        AgentTarget("127.0.0.1:7000", "127.0.0.1:7000"),  # added, named by its address
        AgentTarget("risk", "[::1]:7001"),
    )
    # the same address twice is one agent
    again = load_console_config(["127.0.0.1:7000", "127.0.0.1:7000"])
    assert again.agents == (AgentTarget("127.0.0.1:7000", "127.0.0.1:7000"),)


def test_default_file_from_environment_and_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = write(tmp_path, 'operator = "carol"\n[[agents]]\naddress = "h:1"\n', "env.toml")
    monkeypatch.setenv("SPY_CONSOLE_CONFIG", str(env_file))
    cfg = load_console_config()
    assert (cfg.operator, cfg.agents, cfg.source) == ("carol", (AgentTarget("h:1", "h:1"),), env_file)
    monkeypatch.delenv("SPY_CONSOLE_CONFIG")
    xdg = tmp_path / "xdg" / "spyops"
    xdg.mkdir(parents=True)
    (xdg / "console.toml").write_text('[[agents]]\nname = "x"\naddress = "h:2"\n')
    assert load_console_config().agents == (AgentTarget("x", "h:2"),)
    # an explicit file wins over both
    explicit = write(tmp_path, '[[agents]]\nname = "y"\naddress = "h:3"\n', "explicit.toml")
    assert load_console_config(config=explicit).agents == (AgentTarget("y", "h:3"),)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("operator = \n", "invalid TOML"),
        ("colour = 'red'\n", "unknown key(s) colour"),
        ("operator = 3\n", "key 'operator': expected a string"),
        ("heartbeat_s = 'fast'\n", "key 'heartbeat_s': expected a number"),
        ("heartbeat_s = 0\n", "key 'heartbeat_s': 0 is out of range"),
        ("heartbeat_s = nan\n", "key 'heartbeat_s': nan is out of range"),
        ("heartbeat_s = true\n", "key 'heartbeat_s': expected a number"),
        ("agents = 'h:1'\n", "key 'agents': expected a list"),
        ("[[agents]]\nname = 'a'\n", "key 'agents[0]'.address: missing"),
        ("[[agents]]\naddress = 'nohost'\n", "key 'agents[0]'.address: 'nohost' is not host:port"),
        ("[[agents]]\naddress = 'h:99999'\n", "bad port '99999'"),
        ("[[agents]]\naddress = 'h:x'\n", "bad port 'x'"),
        ("[[agents]]\naddress = 5\n", "expected a string"),
        ("[[agents]]\naddress = 'h:1'\nport = 3\n", "key 'agents[0]': unknown key(s) port"),
        ("[[agents]]\nname = 'a b'\naddress = 'h:1'\n", "key 'agents[0]'.name: bad name 'a b'"),
        (
            "[[agents]]\nname = 'a'\naddress = 'h:1'\n[[agents]]\nname = 'a'\naddress = 'h:2'\n",
            "key 'agents[1]'.name: duplicate agent name 'a'",
        ),
    ],
)
def test_every_file_error_names_the_file_and_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_console_config(config=path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_console_config(config=tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_console_config(config=tmp_path)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00operator")
    with pytest.raises(ConfigError, match=str(binary)):
        load_console_config(config=binary)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("nonsense", "no agent has that name"),
        ("h:0", "bad port '0'"),
        ("bad name=h:1", "bad name 'bad name'"),
        ("x=", "is not host:port"),
        (":50051", "is not host:port"),
        ("ho st:1", "bad host 'ho st'"),
    ],
)
def test_bad_agent_values(value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_console_config([value])


def test_parse_agent_arg() -> None:
    assert parse_agent_arg("a=h:1") == AgentTarget("a", "h:1")
    assert parse_agent_arg(" h:1 ") == AgentTarget("h:1", "h:1")


def test_select_agents(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_AGENTS)
    cfg = load_console_config(config=path)
    assert select_agents(cfg, []) == cfg.agents  # no --agent: every configured agent
    assert select_agents(cfg, ["feed"]) == (AgentTarget("feed", "feed.vpn:50052"),)
    # an address of a configured agent keeps its name; duplicates collapse
    assert select_agents(cfg, ["10.8.0.2:50051", "exec"]) == (AgentTarget("exec", "10.8.0.2:50051"),)
    assert select_agents(cfg, ["other:1"]) == (AgentTarget("other:1", "other:1"),)
    with pytest.raises(
        ConfigError, match=r"no agent has that name in .*console.toml \(configured: exec, feed\)"
    ):
        select_agents(cfg, ["risk"])
