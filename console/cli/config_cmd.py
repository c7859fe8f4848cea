"""``spyctl config check``: validate the console config file and, when given, an agent settings file.

The console config is read by ``console.config`` (the file given, else ``$SPY_CONSOLE_CONFIG``, else
``~/.config/spyops/console.toml``); the agent settings by ``agent.settings.load_settings`` (the file plus
the ``SPY_*`` environment, exactly as ``spy-agent --config FILE`` would), every error named by its
setting. Exit 0 when everything checked is valid, 2 otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from console.cli import output
from console.cli.common import AgentsOpt, ConfigOpt, JsonOpt
from console.config import ConfigError, load_console_config


def register(app: typer.Typer) -> None:
    config_app = typer.Typer(no_args_is_help=True, help="Check configuration files.")
    app.add_typer(config_app, name="config")

    @config_app.command("check")
    def check(
        config: ConfigOpt = None,
        agent: AgentsOpt = None,
        agent_config: Annotated[
            Path | None,
            typer.Option(
                "--agent-config", help="an agent settings file (TOML, as spy-agent --config) to check"
            ),
        ] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Validate the console config (and --agent values) and, if given, an agent settings file."""
        reports: list[dict[str, Any]] = [_check_console(config, agent or [])]
        if agent_config is not None:
            reports.append(_check_agent(agent_config))
        ok = all(r["ok"] for r in reports)
        if json_out:
            for r in reports:
                output.print_json_line(r)
        else:
            for r in reports:
                _print_report(r)
        if not ok:
            raise typer.Exit(output.USAGE)


def _check_console(config: Path | None, agents: list[str]) -> dict[str, Any]:
    try:
        cfg = load_console_config(agents, config)
    except ConfigError as exc:
        where = str(config) if config is not None else "console config"
        return {"check": "console", "file": where, "ok": False, "errors": [str(exc)]}
    return {
        "check": "console",
        "file": str(cfg.source) if cfg.source is not None else None,
        "ok": True,
        "errors": [],
        "agents": [{"name": t.name, "address": t.address} for t in cfg.agents],
        "operator": cfg.operator,
        "heartbeat_s": cfg.heartbeat_s,
    }


def _check_agent(path: Path) -> dict[str, Any]:
    from agent.settings import ConfigError as AgentConfigError
    from agent.settings import load_settings

    try:
        settings = load_settings(path)
    except AgentConfigError as exc:
        lines = [line.strip() for line in str(exc).splitlines()]
        errors = [line for line in lines if line and line != "invalid configuration:"] or [str(exc)]
        return {"check": "agent", "file": str(path), "ok": False, "errors": errors}
    return {
        "check": "agent",
        "file": str(path),
        "ok": True,
        "errors": [],
        "agent_id": settings.agent_id,
        "roles": list(settings.roles),
        "feed": settings.feed,
        "listen": f"{settings.server.host}:{settings.server.port}",
    }


def _print_report(r: dict[str, Any]) -> None:
    what = "console config" if r["check"] == "console" else "agent settings"
    file = r["file"] or "(no file: defaults)"
    if not r["ok"]:
        output.stdout.print(f"[red]invalid[/] {what} {escape(file)}", highlight=False, soft_wrap=True)
        for e in r["errors"]:
            output.stdout.print(f"  - {escape(e)}", highlight=False, soft_wrap=True)
        return
    if r["check"] == "console":
        rows = [
            ("file", file),
            *((f"agent {a['name']}", a["address"]) for a in r["agents"]),
            ("operator", r["operator"]),
            ("heartbeat", f"{r['heartbeat_s']:g} s"),
        ]
    else:
        rows = [
            ("file", file),
            ("agent id", r["agent_id"]),
            ("roles", ", ".join(r["roles"]) or "-"),
            ("feed", r["feed"]),
            ("listens on", r["listen"]),
        ]
    output.print_kv(f"valid {what}", rows)
