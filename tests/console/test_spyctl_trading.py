"""spyctl's executor commands against a real agent with an executor and the paper broker."""

from __future__ import annotations

import json
import time
from pathlib import Path

from typer.testing import CliRunner

from console.cli.main import app
from console.cli.output import REFUSED, USAGE
from tests.agent.test_executor_role import executor_settings
from tests.conftest import AgentFactory

runner = CliRunner()


def test_operate_the_executor_from_the_command_line(start_agent: AgentFactory, tmp_path: Path) -> None:
    agent = start_agent(**executor_settings(tmp_path))
    a = ["--agent", agent.address, "--operator", "alice"]
    deadline = time.monotonic() + 10
    while not agent.runtime.log.state.book.quotes and time.monotonic() < deadline:
        time.sleep(0.05)
    snap = agent.runtime.log.snapshot()
    assert snap.chain is not None
    und = snap.underlying.last if snap.underlying else 0.0
    atm = min({q.strike for q in snap.chain.quotes}, key=lambda k: abs(k - und))
    call = next(q for q in snap.chain.quotes if q.strike == atm and q.right.value == "C")

    arm = runner.invoke(app, ["arm", *a, "--key", "arm-1"])
    assert arm.exit_code == 0, arm.output
    assert "accepted" in arm.stdout
    again = runner.invoke(app, ["arm", *a, "--key", "arm-1"])
    assert "repeated key" in again.stdout

    order = runner.invoke(
        app, ["order", "submit", "BUY", "1", f"{atm:g}C", "-p", f"{call.ask + 0.05:.2f}", *a, "--json"]
    )
    assert order.exit_code == 0, order.output
    cid = json.loads(order.stdout)["client_order_id"]
    spread = runner.invoke(
        app, ["order", "submit", "BUY", "1", f"{atm:g}C,-{atm + 1:g}C", "-p", "0.50", "--preview", *a]
    )
    assert "preview" in spread.stdout

    orders = runner.invoke(app, ["orders", "--agent", agent.address, "--json"])
    assert cid in [json.loads(x)["client_order_id"] for x in orders.stdout.splitlines()]
    risk = json.loads(runner.invoke(app, ["risk", "--agent", agent.address, "--json"]).stdout)
    assert risk["armed"] is True
    assert risk["trading_state"] == "ACTIVE"
    assert runner.invoke(app, ["pnl", "--agent", agent.address]).exit_code == 0
    assert runner.invoke(app, ["positions", "--agent", agent.address]).exit_code == 0

    bad = runner.invoke(app, ["limits", "set", "max_order_quantity=0", *a])
    assert bad.exit_code == REFUSED
    assert "positive whole number" in bad.stdout
    assert runner.invoke(app, ["limits", "set", "nonsense", *a]).exit_code == USAGE
    assert runner.invoke(app, ["order", "submit", "BUY", "1", "59X", "-p", "1", *a]).exit_code == USAGE
    halt = runner.invoke(app, ["halt", *a])
    assert halt.exit_code == 0
    assert "halted" in halt.stdout
    denied = runner.invoke(app, ["order", "submit", "BUY", "1", f"{atm:g}C", "-p", f"{call.ask:.2f}", *a])
    assert denied.exit_code == REFUSED
    assert "halted" in denied.stdout


def test_executor_commands_need_an_executor(start_agent: AgentFactory) -> None:
    agent = start_agent()
    res = runner.invoke(app, ["halt", "--agent", agent.address, "--operator", "alice"])
    assert res.exit_code == REFUSED
    assert "runs no executor" in res.output
