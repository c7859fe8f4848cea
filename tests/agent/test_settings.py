"""Typed settings: layering (defaults < file < env < command line) and errors a user can act on."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.settings import ConfigError, load_settings


def test_defaults_are_a_local_simulated_feed() -> None:
    s = load_settings()
    assert s.roles == ("feed",)
    assert s.feed == "sim"
    assert s.server.host == "127.0.0.1"
    assert s.sim.anomaly_rate_per_min == 0.0


def test_layers_file_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('agent_id = "edge-1"\n[sim]\nseed = 1\nspot = 500.0\n[server]\nport = 6000\n')
    s = load_settings(cfg)
    assert (s.agent_id, s.sim.seed, s.sim.spot, s.server.port) == ("edge-1", 1, 500.0, 6000)
    monkeypatch.setenv("SPY_SIM__SEED", "2")
    monkeypatch.setenv("SPY_ROLES", "feed,detector")
    s = load_settings(cfg)
    assert s.sim.seed == 2
    assert s.sim.spot == 500.0  # a nested env value keeps the file's other fields
    assert s.roles == ("feed", "detector")
    s = load_settings(cfg, sim={"seed": 3, "spot": None}, server={"port": None})
    assert (s.sim.seed, s.sim.spot, s.server.port) == (3, 500.0, 6000)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sim": {"spot": -1}}, "sim.spot"),
        ({"roles": "feed,trader"}, "roles"),
        ({"roles": "feed,feed"}, "listed twice"),
        ({"feed": "upstream"}, "needs --upstream"),
        ({"feed": "upstream", "upstream": "nohost"}, "expected host:port"),
        ({"feed": "replay"}, "needs a file"),
        ({"clock": {"start": "25:99"}}, "HH:MM"),
        ({"clock": {"speed": 0}}, "clock.speed"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_settings_name_the_setting(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        load_settings(**overrides)
    assert message in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("feed = \n")
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_settings(broken)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(replay={"path": tmp_path / "missing.spyrec"})
