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


def test_every_executor_command_json_and_exit_codes(start_agent: AgentFactory, tmp_path: Path) -> None:
    """Each command's JSON result and exit code; the operator comes from the config file."""
    agent = start_agent(**executor_settings(tmp_path))
    cfg = tmp_path / "console.toml"
    cfg.write_text(f'operator = "carol"\n[[agents]]\nname = "exec"\naddress = "{agent.address}"\n')
    c = ["--config", str(cfg)]
    deadline = time.monotonic() + 10
    while not agent.runtime.log.state.book.quotes and time.monotonic() < deadline:
        time.sleep(0.05)
    snap = agent.runtime.log.snapshot()
    assert snap.chain is not None
    und = snap.underlying.last if snap.underlying else 0.0
    atm = min({q.strike for q in snap.chain.quotes}, key=lambda k: abs(k - und))

    def ok_json(*args: str) -> dict[str, object]:
        res = runner.invoke(app, [*args, *c, "--json"])
        assert res.exit_code == 0, (args, res.output)
        out: dict[str, object] = json.loads(res.stdout)
        assert out["accepted"] is True
        assert out["agent"] == "exec"
        return out

    ok_json("arm")
    ok_json("disarm")
    ok_json("state", "reducing")
    ok_json("state", "ACTIVE")
    assert runner.invoke(app, ["state", "sideways", *c]).exit_code == USAGE
    # a working order below the bid (inside the collar), then cancelled
    fresh = agent.runtime.log.snapshot().chain
    assert fresh is not None
    bid = next(q.bid for q in fresh.quotes if q.strike == atm and q.right.value == "C")
    low = max(0.01, round(bid - 0.15, 2))
    cid = ok_json("order", "submit", "BUY", "1", f"{atm:g}C", "-p", f"{low:.2f}")["client_order_id"]
    orders = runner.invoke(app, ["orders", *c, "--json"])
    mine = [json.loads(x) for x in orders.stdout.splitlines() if json.loads(x)["client_order_id"] == cid]
    assert mine
    assert mine[0]["agent"] == "exec"
    # the audit trail names the config file's operator
    audit = runner.invoke(app, ["stream", *c, "-t", "audit", "--from-seq", "1", "--count", "5", "--json"])
    assert audit.exit_code == 0, audit.output
    records = [json.loads(x)["command"] for x in audit.stdout.splitlines()]
    assert {r["operator"] for r in records} == {"carol"}
    working = runner.invoke(app, ["orders", *c, "--json", "--working"])
    assert all(json.loads(x)["state"] not in ("filled", "cancelled") for x in working.stdout.splitlines())
    if mine[0]["state"] in ("working", "pending_new"):  # not filled by a market move meanwhile
        ok_json("order", "cancel", str(cid))
    unknown = runner.invoke(app, ["order", "cancel", "no-such-order", *c, "--json"])
    assert unknown.exit_code == REFUSED
    assert json.loads(unknown.stdout)["accepted"] is False
    # limits: show (one object per limit) and set (validated by the executor)
    lims = [json.loads(x) for x in runner.invoke(app, ["limits", "show", *c, "--json"]).stdout.splitlines()]
    names = {lim["name"] for lim in lims}
    assert "max_working_orders" in names
    assert all(lim["agent"] == "exec" for lim in lims)
    ok_json("limits", "set", "max_working_orders=7")
    lims = [json.loads(x) for x in runner.invoke(app, ["limits", "show", *c, "--json"]).stdout.splitlines()]
    assert next(lim["value"] for lim in lims if lim["name"] == "max_working_orders") == 7
    human = runner.invoke(app, ["limits", "show", *c])
    assert "utilisation" in human.stdout
    assert runner.invoke(app, ["limits", "set", "max_working_orders=", *c]).exit_code == USAGE
    # proposals: none pending; deciding an unknown one is refused with the reason
    props = runner.invoke(app, ["proposals", *c, "--json"])
    assert props.exit_code == 0
    assert props.stdout == ""
    for decide in ("confirm", "reject"):
        res = runner.invoke(app, [decide, "no-such-proposal", *c])
        assert res.exit_code == REFUSED, res.output
        assert "refused" in res.stdout
    # read commands: one JSON object (risk, pnl), an object per row (positions)
    risk = json.loads(runner.invoke(app, ["risk", *c, "--json"]).stdout)
    assert risk["agent"] == "exec"
    assert risk["trading_state"] == "ACTIVE"
    pnl = json.loads(runner.invoke(app, ["pnl", *c, "--json"]).stdout)
    assert set(pnl) == {"realized", "unrealized", "fees", "net", "agent"}
    assert runner.invoke(app, ["positions", *c, "--json"]).exit_code == 0
    # bad orders never reach the agent
    for bad in (["HOLD", "1", "590C"], ["BUY", "0", "590C"], ["BUY", "1", ","], ["BUY", "1", "nanC"]):
        res = runner.invoke(app, ["order", "submit", *bad, "-p", "1.00", *c])
        assert res.exit_code == USAGE, (bad, res.output)
    ok_json("flatten", "--reason", "test")
    halted = ok_json("halt", "--reason", "end of test")
    assert "halt" in str(halted["code"]).lower() or "halt" in str(halted["message"]).lower()
