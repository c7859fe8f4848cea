"""IB settings: defaults, environment and command line, and the errors a user can act on."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.settings import ConfigError, load_settings


def test_ib_defaults_are_a_paper_gateway_on_localhost() -> None:
    s = load_settings()
    assert (s.ib.host, s.ib.port, s.ib.read_only) == ("127.0.0.1", 4002, False)
    assert s.ib.line_budget == 100
    assert s.ib.request_rate == 45
    assert s.ib.market_data_type == 1
    assert s.executor.broker == "paper"


def test_ib_settings_from_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        'feed = "ib"\nroles = "feed,executor"\n[executor]\nbroker = "ib"\n'
        "[ib]\nport = 4001\nclient_id = 21\nclient_id_pool = [22, 23]\nmarket_data_type = 3\n"
    )
    s = load_settings(cfg)
    assert (s.feed, s.executor.broker, s.ib.port, s.ib.client_id_pool) == ("ib", "ib", 4001, (22, 23))
    monkeypatch.setenv("SPY_IB__LINE_BUDGET", "60")
    monkeypatch.setenv("SPY_IB__HOST", "gateway.local")
    s = load_settings(cfg)
    assert (s.ib.line_budget, s.ib.host, s.ib.market_data_type) == (60, "gateway.local", 3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ib": {"market_data_type": 5}}, "ib.market_data_type"),
        ({"ib": {"request_rate": 60}}, "ib.request_rate"),
        ({"ib": {"line_budget": 6, "reserved_order_lines": 4}}, "no lines for options"),
        ({"ib": {"client_id": 3, "client_id_pool": [3]}}, "client_id_pool"),
        (
            {"roles": "executor", "feed": "ib", "executor": {"broker": "ib"}, "ib": {"read_only": True}},
            "read_only",
        ),
        ({"roles": "feed,executor", "executor": {"broker": "ib"}}, "needs real quotes"),
        ({"executor": {"broker": "tws"}}, "executor.broker"),
    ],
)
def test_bad_ib_settings_name_the_setting(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        load_settings(**overrides)
    assert message in str(info.value)


def test_cli_takes_feed_and_broker_ib() -> None:
    import typer

    from agent.cli import agent_command

    app = typer.Typer()
    app.command()(agent_command)
    # read-only with an IB broker is refused before anything connects
    result = CliRunner().invoke(
        app,
        ["--roles", "feed,executor", "--feed", "ib", "--broker", "ib", "--ib-port", "1"],
        env={"SPY_IB__READ_ONLY": "true"},
    )
    assert result.exit_code == 2
    assert "read_only" in result.output
