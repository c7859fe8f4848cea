"""spyctl commands that operate the executor: arm, disarm, halt, flatten, limits, orders, positions.

Every command carries an idempotency key (a fresh one unless ``--key`` is given, so a script can
retry safely) and the operator's name (``--operator``, default: the login name).
"""

from __future__ import annotations

import getpass
import math
import uuid
from collections.abc import Iterable
from typing import Annotated

import typer

from console.cli import output
from console.cli.common import AgentOpt, client_for, run
from proto.spyops.v1 import spyops_pb2 as pb

OperatorOpt = Annotated[
    str, typer.Option("--operator", envvar="SPYCTL_OPERATOR", help="who sends the command (audit trail)")
]
KeyOpt = Annotated[str | None, typer.Option("--key", help="idempotency key (default: a new one)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]

RIGHTS = {"C": pb.CALL, "CALL": pb.CALL, "P": pb.PUT, "PUT": pb.PUT}


def _operator(value: str | None) -> str:
    return value or getpass.getuser()


def send(agent: str, command: pb.Command, json_out: bool) -> None:
    """Send one command and print its result; exit 4 when the executor refused it."""

    async def go() -> pb.CommandResult:
        async with client_for(agent) as c:
            return await c.execute(command)

    result = run(go())
    if json_out:
        output.print_json_line(output.message_dict(result))
    else:
        mark = "[green]accepted[/]" if result.accepted else "[red]refused[/]"
        again = " (repeated key: first result)" if result.replayed else ""
        output.stdout.print(f"{mark} {result.code}: {result.message}{again}", highlight=False)
        for d in result.denials:
            output.stdout.print(f"  - {d.code}: {d.reason}", highlight=False)
    if not result.accepted:
        raise typer.Exit(output.REFUSED)


def _command(key: str | None, operator: str | None) -> pb.Command:
    return pb.Command(idempotency_key=key or uuid.uuid4().hex, operator=_operator(operator))


def register(app: typer.Typer) -> None:
    @app.command()
    def arm(
        agent: AgentOpt = output.DEFAULT_AGENT,
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Arm the executor: strategy orders may be sent."""
        cmd = _command(key, operator)
        cmd.set_armed.armed = True
        send(agent, cmd, json_out)

    @app.command()
    def disarm(
        agent: AgentOpt = output.DEFAULT_AGENT,
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Disarm the executor: no strategy orders (manual orders and cancels still work)."""
        cmd = _command(key, operator)
        cmd.set_armed.armed = False
        send(agent, cmd, json_out)

    @app.command()
    def halt(
        agent: AgentOpt = output.DEFAULT_AGENT,
        reason: Annotated[str, typer.Option(help="why (recorded)")] = "operator",
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Kill switch: cancel every working order and block new ones (state HALTED)."""
        cmd = _command(key, operator)
        cmd.halt.reason = reason
        send(agent, cmd, json_out)

    @app.command()
    def flatten(
        agent: AgentOpt = output.DEFAULT_AGENT,
        reason: Annotated[str, typer.Option(help="why (recorded)")] = "operator",
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Close every position with marketable limit orders inside the collar."""
        cmd = _command(key, operator)
        cmd.flatten.reason = reason
        send(agent, cmd, json_out)

    @app.command("state")
    def trading_state(
        state: Annotated[str, typer.Argument(help="ACTIVE, REDUCING or HALTED")],
        agent: AgentOpt = output.DEFAULT_AGENT,
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Set the trading state."""
        cmd = _command(key, operator)
        cmd.set_trading_state.state = state
        send(agent, cmd, json_out)

    @app.command()
    def confirm(
        proposal_id: Annotated[str, typer.Argument(help="the proposal's id (spyctl proposals)")],
        agent: AgentOpt = output.DEFAULT_AGENT,
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Confirm a playbook proposal: its order goes through the pre-trade checks and out."""
        cmd = _command(key, operator)
        cmd.decide_proposal.proposal_id, cmd.decide_proposal.confirm = proposal_id, True
        send(agent, cmd, json_out)

    @app.command()
    def reject(
        proposal_id: Annotated[str, typer.Argument(help="the proposal's id (spyctl proposals)")],
        agent: AgentOpt = output.DEFAULT_AGENT,
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Reject a playbook proposal."""
        cmd = _command(key, operator)
        cmd.decide_proposal.proposal_id, cmd.decide_proposal.confirm = proposal_id, False
        send(agent, cmd, json_out)

    @app.command()
    def proposals(agent: AgentOpt = output.DEFAULT_AGENT, json_out: JsonOpt = False) -> None:
        """Playbook proposals waiting for an operator."""
        snap = _snapshot(agent)
        if json_out:
            for p in snap.proposals:
                output.print_json_line(output.message_dict(p))
            return
        output.print_table(
            f"{len(snap.proposals)} pending proposals",
            ["id", "kind", "legs", "qty", "limit", "edge $", "explanation"],
            [
                [p.id, p.kind, _legs(p.legs), str(p.quantity), p.limit_price, f"{p.edge:,.2f}", p.explanation]
                for p in snap.proposals
            ],
        )

    order_app = typer.Typer(no_args_is_help=True, help="Manual orders.")
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
        agent: AgentOpt = output.DEFAULT_AGENT,
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Send a limit order (or --preview the pre-trade checks)."""
        cmd = _command(key, operator)
        o = cmd.submit_order
        o.side, o.quantity, o.limit_price, o.preview = side.upper(), quantity, price, preview
        for text in (x.strip() for x in legs.split(",") if x.strip()):
            sell = text.startswith("-")
            body = text.lstrip("+-").upper()
            strike, right = body[:-1], body[-1:]
            try:
                o.legs.add(strike=float(strike), right=RIGHTS[right], side="SELL" if sell else "BUY", ratio=1)
            except (ValueError, KeyError):
                output.fail(f"bad leg {text!r}: expected STRIKE followed by C or P, e.g. 590C or -595P")
                raise typer.Exit(output.USAGE) from None
        send(agent, cmd, json_out)

    @order_app.command("cancel")
    def order_cancel(
        client_order_id: Annotated[str, typer.Argument(help="the order's client order id")],
        agent: AgentOpt = output.DEFAULT_AGENT,
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Cancel a working order."""
        cmd = _command(key, operator)
        cmd.cancel_order.client_order_id = client_order_id
        send(agent, cmd, json_out)

    limits_app = typer.Typer(no_args_is_help=True, help="Pre-trade risk limits.")
    app.add_typer(limits_app, name="limits")

    @limits_app.command("set")
    def limits_set(
        pairs: Annotated[list[str], typer.Argument(help="NAME=VALUE, e.g. max_order_quantity=5")],
        agent: AgentOpt = output.DEFAULT_AGENT,
        operator: OperatorOpt = "",
        key: KeyOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Change limits (validated by the executor; nothing changes if one is invalid)."""
        cmd = _command(key, operator)
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep or not name:
                output.fail(f"bad limit {pair!r}: expected NAME=VALUE")
                raise typer.Exit(output.USAGE)
            cmd.set_limits.limits[name.strip()] = value.strip()
        send(agent, cmd, json_out)

    @limits_app.command("show")
    def limits_show(agent: AgentOpt = output.DEFAULT_AGENT, json_out: JsonOpt = False) -> None:
        """Limits with their utilisation."""
        risk(agent, json_out)

    @app.command()
    def risk(agent: AgentOpt = output.DEFAULT_AGENT, json_out: JsonOpt = False) -> None:
        """Trading state, armed flag, limits and the day's P&L."""
        snap = _snapshot(agent)
        r = snap.risk
        if json_out:
            output.print_json_line(output.message_dict(r))
            return
        output.print_kv(
            "risk",
            [
                ("trading state", r.trading_state or "-"),
                ("armed", "yes" if r.armed else "no"),
                ("realized P&L", f"{r.realized_pnl:,.2f}"),
                ("unrealized P&L", f"{r.unrealized_pnl:,.2f}"),
                ("fees", f"{r.fees:,.2f}"),
                *((lim.name, f"{lim.used:,.2f} of {lim.value:,.2f}") for lim in r.limits),
            ],
        )

    @app.command()
    def pnl(agent: AgentOpt = output.DEFAULT_AGENT, json_out: JsonOpt = False) -> None:
        """The day's P&L: realized, unrealized (marked to mid), fees, net."""
        r = _snapshot(agent).risk
        net = r.realized_pnl - r.fees + (r.unrealized_pnl if math.isfinite(r.unrealized_pnl) else 0.0)
        row = {"realized": r.realized_pnl, "unrealized": r.unrealized_pnl, "fees": r.fees, "net": net}
        if json_out:
            output.print_json_line(row)
            return
        output.print_kv("P&L ($)", [(k, f"{v:,.2f}") for k, v in row.items()])

    @app.command()
    def orders(agent: AgentOpt = output.DEFAULT_AGENT, json_out: JsonOpt = False) -> None:
        """Today's orders with their state and fills."""
        snap = _snapshot(agent)
        if json_out:
            for o in snap.orders:
                output.print_json_line(output.message_dict(o))
            return
        output.print_table(
            f"{len(snap.orders)} orders",
            ["client order id", "state", "legs", "qty", "filled", "limit", "avg", "source", "reason"],
            [
                [
                    o.client_order_id,
                    o.state,
                    _legs(o.legs),
                    str(o.quantity),
                    str(o.filled),
                    o.limit_price,
                    o.avg_price or "-",
                    o.source,
                    o.reason,
                ]
                for o in snap.orders
            ],
        )

    @app.command()
    def positions(agent: AgentOpt = output.DEFAULT_AGENT, json_out: JsonOpt = False) -> None:
        """Open positions marked to mid."""
        snap = _snapshot(agent)
        if json_out:
            for p in snap.positions:
                output.print_json_line(output.message_dict(p))
            return
        output.print_table(
            f"{len(snap.positions)} positions",
            ["contract", "qty", "avg cost", "mark", "unrealized $", "realized $"],
            [
                [
                    f"{p.expiry} {p.strike:g}{'C' if p.right == pb.CALL else 'P'}",
                    str(p.quantity),
                    p.avg_cost,
                    f"{p.mark:.2f}",
                    f"{p.unrealized:,.2f}",
                    f"{p.realized:,.2f}",
                ]
                for p in snap.positions
            ],
        )


def _legs(legs: Iterable[pb.Leg]) -> str:
    return " / ".join(
        f"{leg.side.lower()} {leg.quantity} {leg.strike:g}{'C' if leg.right == pb.CALL else 'P'}"
        for leg in legs
    )


def _snapshot(agent: str) -> pb.Snapshot:
    async def go() -> pb.Snapshot:
        async with client_for(agent) as c:
            return await c.snapshot()

    return run(go())
