"""spyctl commands that operate the executor: arm, disarm, halt, flatten, limits, orders, positions.

Every command carries an idempotency key (a fresh one unless ``--key`` is given, so a script can
retry safely) and the operator's name (``--operator``, else the config file's ``operator``, else
``$SPY_OPERATOR``, else the login name). Commands go to exactly one agent; the read commands (risk,
pnl, orders, positions, proposals, limits show) show every selected agent.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from console.actions import OrderTicket, TicketError
from console.cli import output
from console.cli.common import (
    AgentOpt,
    AgentsOpt,
    ConfigOpt,
    JsonOpt,
    PerAgent,
    client_for,
    finish,
    one_target,
    per_agent,
    run,
    targets,
    title,
)
from console.cli.envelopes import legs_text
from console.client import AgentClient
from console.config import AgentTarget
from console.format import contract, num, ny_time
from proto.spyops.v1 import spyops_pb2 as pb

OperatorOpt = Annotated[
    str,
    typer.Option(
        "--operator",
        envvar="SPYCTL_OPERATOR",
        help="who sends the command (audit trail; default: the config file's operator, "
        "else $SPY_OPERATOR, else the login name)",
        show_default=False,
    ),
]
KeyOpt = Annotated[str | None, typer.Option("--key", help="idempotency key (default: a new one)")]

TRADING_STATES = ("ACTIVE", "REDUCING", "HALTED")


@dataclass(frozen=True)
class Sender:
    """Where a command goes and who sends it."""

    target: AgentTarget
    operator: str

    def command(self, key: str | None) -> pb.Command:
        return pb.Command(idempotency_key=key or uuid.uuid4().hex, operator=self.operator)


def sender(agents: list[str] | None, config: Path | None, operator: str, what: str) -> Sender:
    cfg, target = one_target(agents, config, what)
    return Sender(target, operator.strip() or cfg.operator)


def send(to: Sender, command: pb.Command, json_out: bool) -> None:
    """Send one command and print its result; exit 4 when the executor refused it."""

    async def go() -> pb.CommandResult:
        async with client_for(to.target) as c:
            return await c.execute(command)

    result = run(go())
    if json_out:
        output.print_json_line({**output.message_dict(result), "agent": to.target.name})
    else:
        mark = "[green]accepted[/]" if result.accepted else "[red]refused[/]"
        again = " (repeated key: first result)" if result.replayed else ""
        output.stdout.print(
            f"{mark} {escape(result.code)}: {escape(result.message)}{again}", highlight=False, soft_wrap=True
        )
        for d in result.denials:
            output.stdout.print(f"  - {escape(d.code)}: {escape(d.reason)}", highlight=False, soft_wrap=True)
    if not result.accepted:
        raise typer.Exit(output.REFUSED)


def register(app: typer.Typer) -> None:
    @app.command()
    def arm(
        agent: AgentOpt = None,
        config: ConfigOpt = None,
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Arm the executor: strategy orders may be sent."""
        to = sender(agent, config, operator, "arm")
        cmd = to.command(key)
        cmd.set_armed.armed = True
        send(to, cmd, json_out)

    @app.command()
    def disarm(
        agent: AgentOpt = None,
        config: ConfigOpt = None,
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Disarm the executor: no strategy orders (manual orders and cancels still work)."""
        to = sender(agent, config, operator, "disarm")
        cmd = to.command(key)
        cmd.set_armed.armed = False
        send(to, cmd, json_out)

    @app.command()
    def halt(
        agent: AgentOpt = None,
        config: ConfigOpt = None,
        reason: Annotated[str, typer.Option(help="why (recorded)")] = "operator",
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Kill switch: cancel every working order and block new ones (state HALTED)."""
        to = sender(agent, config, operator, "halt")
        cmd = to.command(key)
        cmd.halt.reason = reason
        send(to, cmd, json_out)

    @app.command()
    def flatten(
        agent: AgentOpt = None,
        config: ConfigOpt = None,
        reason: Annotated[str, typer.Option(help="why (recorded)")] = "operator",
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Close every position with marketable limit orders inside the collar."""
        to = sender(agent, config, operator, "flatten")
        cmd = to.command(key)
        cmd.flatten.reason = reason
        send(to, cmd, json_out)

    @app.command("state")
    def trading_state(
        state: Annotated[str, typer.Argument(help="ACTIVE, REDUCING or HALTED")],
        agent: AgentOpt = None,
        config: ConfigOpt = None,
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Set the trading state."""
        if state.upper() not in TRADING_STATES:
            output.fail(f"bad trading state {state!r}: expected one of {', '.join(TRADING_STATES)}")
            raise typer.Exit(output.USAGE)
        to = sender(agent, config, operator, "state")
        cmd = to.command(key)
        cmd.set_trading_state.state = state.upper()
        send(to, cmd, json_out)

    @app.command()
    def confirm(
        proposal_id: Annotated[str, typer.Argument(help="the proposal's id (spyctl proposals)")],
        agent: AgentOpt = None,
        config: ConfigOpt = None,
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Confirm a playbook proposal: its order goes through the pre-trade checks and out."""
        to = sender(agent, config, operator, "confirm")
        cmd = to.command(key)
        cmd.decide_proposal.proposal_id, cmd.decide_proposal.confirm = proposal_id, True
        send(to, cmd, json_out)

    @app.command()
    def reject(
        proposal_id: Annotated[str, typer.Argument(help="the proposal's id (spyctl proposals)")],
        agent: AgentOpt = None,
        config: ConfigOpt = None,
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Reject a playbook proposal."""
        to = sender(agent, config, operator, "reject")
        cmd = to.command(key)
        cmd.decide_proposal.proposal_id, cmd.decide_proposal.confirm = proposal_id, False
        send(to, cmd, json_out)

    @app.command()
    def proposals(agent: AgentsOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
        """Playbook proposals waiting for an operator."""
        _table_per_agent(
            agent,
            config,
            json_out,
            lambda snap: list(snap.proposals),
            "pending proposals",
            ["id", "kind", "legs", "qty", "limit", "edge $", "expires", "explanation"],
            lambda p: [
                p.id,
                p.kind,
                legs_text(p.legs),
                str(p.quantity),
                p.limit_price,
                f"{p.edge:,.2f}",
                ny_time(p.expires_ns),
                p.explanation,
            ],
        )

    order_app = typer.Typer(no_args_is_help=True, help="Manual orders: submit (or preview) and cancel.")
    app.add_typer(order_app, name="order")

    @order_app.command("submit")
    def order_submit(
        side: Annotated[str, typer.Argument(help="BUY or SELL")],
        quantity: Annotated[int, typer.Argument(help="contracts (units for a spread)")],
        legs: Annotated[
            str,
            typer.Argument(help="STRIKE+RIGHT, e.g. 590C; a spread, comma-separated: 590C,-595C (- sells)"),
        ],
        price: Annotated[str, typer.Option("--price", "-p", help="limit price per unit, on the tick")],
        preview: Annotated[bool, typer.Option(help="only run the pre-trade checks")] = False,
        agent: AgentOpt = None,
        config: ConfigOpt = None,
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Send a limit order (or --preview the pre-trade checks)."""
        try:  # the console's ticket: the same parsing and checks; the tick is the executor's to check
            ticket = OrderTicket.parse(side, quantity, legs, price, tick=Decimal(0))
        except TicketError as exc:
            output.fail(str(exc))
            raise typer.Exit(output.USAGE) from None
        to = sender(agent, config, operator, "order submit")
        cmd = to.command(key)
        cmd.submit_order.CopyFrom(ticket.to_proto(preview))
        send(to, cmd, json_out)

    @order_app.command("cancel")
    def order_cancel(
        client_order_id: Annotated[str, typer.Argument(help="the order's client order id")],
        agent: AgentOpt = None,
        config: ConfigOpt = None,
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Cancel a working order."""
        to = sender(agent, config, operator, "order cancel")
        cmd = to.command(key)
        cmd.cancel_order.client_order_id = client_order_id
        send(to, cmd, json_out)

    limits_app = typer.Typer(no_args_is_help=True, help="Pre-trade risk limits: show and set.")
    app.add_typer(limits_app, name="limits")

    @limits_app.command("set")
    def limits_set(
        pairs: Annotated[list[str], typer.Argument(help="NAME=VALUE, e.g. max_order_quantity=5")],
        agent: AgentOpt = None,
        config: ConfigOpt = None,
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Change limits (validated by the executor; nothing changes if one is invalid)."""
        values: dict[str, str] = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep or not name.strip() or not value.strip():
                output.fail(f"bad limit {pair!r}: expected NAME=VALUE")
                raise typer.Exit(output.USAGE)
            values[name.strip()] = value.strip()
        to = sender(agent, config, operator, "limits set")
        cmd = to.command(key)
        cmd.set_limits.limits.update(values)
        send(to, cmd, json_out)

    @limits_app.command("show")
    def limits_show(agent: AgentsOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
        """Each limit with its utilisation."""
        _table_per_agent(
            agent,
            config,
            json_out,
            lambda snap: list(snap.risk.limits),
            "limits",
            ["limit", "value", "used", "utilisation"],
            lambda lim: [lim.name, num(lim.value, ",.2f"), num(lim.used, ",.2f"), _utilisation(lim)],
        )

    @app.command()
    def risk(agent: AgentsOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
        """Trading state, armed flag, limits and the day's P&L."""
        results = _snapshots(agent, config)
        several = len(results) > 1
        for res in results:
            if res.value is None:
                continue
            r = res.value.risk
            if json_out:
                output.print_json_line(_tagged(r, res.target))
                continue
            output.print_kv(
                title(res.target, several, "risk"),
                [
                    ("trading state", r.trading_state or "-"),
                    ("armed", "yes" if r.armed else "no"),
                    ("leader", "yes" if r.leader else "no"),
                    ("realized P&L", f"{r.realized_pnl:,.2f}"),
                    ("unrealized P&L", f"{r.unrealized_pnl:,.2f}"),
                    ("fees", f"{r.fees:,.2f}"),
                    *(
                        (
                            lim.name,
                            f"{num(lim.used, ',.2f')} of {num(lim.value, ',.2f')} ({_utilisation(lim)})",
                        )
                        for lim in r.limits
                    ),
                ],
            )
        finish(results)

    @app.command()
    def pnl(agent: AgentsOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
        """The day's P&L: realized, unrealized (marked to mid), fees, net."""
        results = _snapshots(agent, config)
        several = len(results) > 1
        for res in results:
            if res.value is None:
                continue
            r = res.value.risk
            unreal = r.unrealized_pnl if math.isfinite(r.unrealized_pnl) else 0.0
            net = r.realized_pnl - r.fees + unreal
            row = {"realized": r.realized_pnl, "unrealized": r.unrealized_pnl, "fees": r.fees, "net": net}
            if json_out:
                output.print_json_line({**row, "agent": res.target.name})
                continue
            output.print_kv(title(res.target, several, "P&L ($)"), [(k, f"{v:,.2f}") for k, v in row.items()])
        finish(results)

    @app.command()
    def orders(
        agent: AgentsOpt = None,
        config: ConfigOpt = None,
        working: Annotated[bool, typer.Option("--working", help="only orders still working")] = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Today's orders with their state and fills."""
        _table_per_agent(
            agent,
            config,
            json_out,
            lambda snap: [o for o in snap.orders if not working or o.state not in FINAL_ORDER_STATES],
            "orders",
            [
                "client order id",
                "state",
                "legs",
                "qty",
                "filled",
                "limit",
                "avg",
                "source",
                "operator",
                "reason",
            ],
            lambda o: [
                o.client_order_id,
                o.state,
                legs_text(o.legs),
                str(o.quantity),
                str(o.filled),
                o.limit_price,
                o.avg_price or "-",
                o.source,
                o.operator or "-",
                o.reason,
            ],
        )

    @app.command()
    def positions(agent: AgentsOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
        """Open positions marked to mid, with their greeks."""
        _table_per_agent(
            agent,
            config,
            json_out,
            lambda snap: list(snap.positions),
            "positions",
            [
                "contract",
                "qty",
                "avg cost",
                "mark",
                "unrealized $",
                "realized $",
                "delta",
                "gamma",
                "vega",
                "theta",
            ],
            lambda p: [
                f"{p.expiry} {contract(p.strike, p.right)}",
                str(p.quantity),
                p.avg_cost,
                num(p.mark, ",.2f"),
                num(p.unrealized, ",.2f"),
                num(p.realized, ",.2f"),
                num(p.delta, ",.2f"),
                num(p.gamma, ",.4f"),
                num(p.vega, ",.2f"),
                num(p.theta, ",.2f"),
            ],
        )


FINAL_ORDER_STATES = frozenset({"filled", "cancelled", "rejected", "expired"})


def _utilisation(lim: pb.Limit) -> str:
    if not math.isfinite(lim.value) or not math.isfinite(lim.used) or lim.value == 0:
        return "-"
    return f"{100 * abs(lim.used) / abs(lim.value):.0f}%"


def _table_per_agent(
    agents: list[str] | None,
    config: Path | None,
    json_out: bool,
    items: Callable[[pb.Snapshot], Sequence[Any]],
    what: str,
    columns: list[str],
    row: Callable[[Any], list[str]],
) -> None:
    """A read command over snapshots: for each agent, its ``items`` as a table (or one JSON object
    each, tagged with the agent); agents that did not answer are reported by ``finish``."""
    results = _snapshots(agents, config)
    several = len(results) > 1
    for r in results:
        if r.value is None:
            continue
        shown = items(r.value)
        if json_out:
            for item in shown:
                output.print_json_line(_tagged(item, r.target))
            continue
        output.print_table(title(r.target, several, f"{len(shown)} {what}"), columns, [row(x) for x in shown])
    finish(results)


def _tagged(msg: Any, target: AgentTarget) -> dict[str, Any]:
    return {**output.message_dict(msg), "agent": target.name}


def _snapshots(agents: list[str] | None, config: Path | None) -> list[PerAgent[pb.Snapshot]]:
    _, chosen = targets(agents, config)
    return per_agent(chosen, _fetch_snapshot)


async def _fetch_snapshot(c: AgentClient) -> pb.Snapshot:
    return await c.snapshot()
