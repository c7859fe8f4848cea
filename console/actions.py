"""Operator actions: every command the console sends to an executor, as one call each.

``Operator`` builds the ``Command`` (a fresh idempotency key and the operator's name), sends it with the
client's deadline and turns the answer into an ``ActionResult`` fit to show: an accepted command, the
agent's refusal (its code, message and the pre-trade denials) or a transport failure. It never raises for
a failed command: a dropped connection or a timeout is an ``ok=False`` result that carries the command it
was about, and ``Operator.retry`` sends that same command again, with the same idempotency key, so a
command that did reach the agent before the answer was lost runs only once (the agent answers a repeated
key with its first result, ``replayed``).

``OrderTicket`` is a validated manual order (side, quantity, legs, limit price), parsed from what an
operator types: legs as in spyctl, ``590C`` or ``590C,-591C`` (``-`` sells that leg) or ``590C,-2x591C,592C``
(a ratio), a limit price on the contract's tick.
"""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import grpc

from console.client import AgentClient, AgentRequestError, AgentUnreachable, ClientError
from proto.spyops.v1 import spyops_pb2 as pb

DEFAULT_TICK = Decimal("0.01")
SIDES = ("BUY", "SELL")
RIGHT_NAMES = {"C": "C", "CALL": "C", "P": "P", "PUT": "P"}
_RIGHT_PB = {"C": pb.CALL, "P": pb.PUT}
_LEG = re.compile(r"^([+-]?)(?:(\d+)\s*[xX*]\s*)?(\d+(?:\.\d+)?)\s*(C|CALL|P|PUT)$", re.IGNORECASE)
# transport outcomes after which the command may or may not have run: retrying (same key) is the answer
_UNKNOWN_OUTCOME = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class TicketError(ValueError):
    """An order ticket that cannot be sent; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class TicketLeg:
    strike: float
    right: str  # "C" or "P"
    side: str = "BUY"  # "BUY" or "SELL": this leg's side when the order buys
    ratio: int = 1  # contracts per unit

    def __post_init__(self) -> None:
        if not (math.isfinite(self.strike) and self.strike > 0):
            raise TicketError(f"bad strike {self.strike!r}: a positive number")
        if self.right not in ("C", "P"):
            raise TicketError(f"bad right {self.right!r}: C or P")
        if self.side not in SIDES:
            raise TicketError(f"bad leg side {self.side!r}: BUY or SELL")
        if not (isinstance(self.ratio, int) and 0 < self.ratio <= 100):
            raise TicketError(f"bad leg ratio {self.ratio!r}: a whole number from 1 to 100")

    @property
    def key(self) -> tuple[float, int]:
        """The (strike, pb right) key of this contract in ``AgentView.quotes``."""
        return (self.strike, int(_RIGHT_PB[self.right]))

    def text(self) -> str:
        """The leg as typed: ``590C``, ``-591C``, ``-2x591C``."""
        sign = "-" if self.side == "SELL" else ""
        ratio = f"{self.ratio}x" if self.ratio != 1 else ""
        return f"{sign}{ratio}{self.strike:g}{self.right}"


def parse_legs(text: str) -> tuple[TicketLeg, ...]:
    """``590C`` or ``590C,-591C`` (``-`` sells the leg, ``2x`` is a ratio); TicketError if malformed."""
    legs: list[TicketLeg] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        m = _LEG.match(item)
        if m is None:
            raise TicketError(f"bad leg {item!r}: STRIKE then C or P, e.g. 590C, -591C or -2x591C")
        sign, ratio, strike, right = m.groups()
        legs.append(
            TicketLeg(
                float(strike),
                RIGHT_NAMES[right.upper()],
                "SELL" if sign == "-" else "BUY",
                int(ratio) if ratio else 1,
            )
        )
    if not legs:
        raise TicketError("no legs: type one contract (590C) or a spread (590C,-591C)")
    return tuple(legs)


def parse_price(text: str, tick: Decimal = DEFAULT_TICK, allow_non_positive: bool = False) -> Decimal:
    """A limit price on the tick; TicketError naming what is wrong."""
    try:
        price = Decimal(text.strip())
    except InvalidOperation:
        raise TicketError(f"bad limit price {text.strip()!r}: a number such as 1.25") from None
    if not price.is_finite():
        raise TicketError(f"bad limit price {text.strip()!r}: a number such as 1.25")
    if price <= 0 and not allow_non_positive:
        raise TicketError(f"limit price must be above 0 (got {price})")
    if tick > 0 and price % tick != 0:
        raise TicketError(f"limit price {price} is not on the tick ({tick})")
    return price


@dataclass(frozen=True, slots=True)
class OrderTicket:
    """A manual limit order as an operator means it; invalid tickets cannot be built (TicketError)."""

    side: str  # "BUY" or "SELL" (the whole order)
    quantity: int  # units
    legs: tuple[TicketLeg, ...]
    limit_price: Decimal  # per unit (net for a spread), on the tick
    expiry: str = ""  # YYYYMMDD; "": the agent's session

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise TicketError(f"bad side {self.side!r}: BUY or SELL")
        if not isinstance(self.quantity, int) or isinstance(self.quantity, bool) or self.quantity <= 0:
            raise TicketError(f"quantity must be a positive whole number (got {self.quantity!r})")
        if self.quantity > 2**31 - 1:
            raise TicketError(f"quantity {self.quantity} is too large")
        if not self.legs:
            raise TicketError("an order needs at least one leg")
        keys = [leg.key for leg in self.legs]
        if len(set(keys)) != len(keys):
            raise TicketError("the same contract appears twice in the legs")
        if not self.limit_price.is_finite():
            raise TicketError(f"bad limit price {self.limit_price}")
        if len(self.legs) == 1 and self.limit_price <= 0:
            raise TicketError(f"limit price must be above 0 (got {self.limit_price})")
        if self.expiry and not re.fullmatch(r"\d{8}", self.expiry):
            raise TicketError(f"bad expiry {self.expiry!r}: YYYYMMDD")

    @classmethod
    def parse(
        cls,
        side: str,
        quantity: str | int,
        legs: str,
        limit_price: str,
        expiry: str = "",
        tick: Decimal = DEFAULT_TICK,
    ) -> OrderTicket:
        """A ticket from typed fields (``"BUY"``, ``"2"``, ``"590C,-591C"``, ``"0.45"``); TicketError."""
        s = side.strip().upper()
        s = {"B": "BUY", "S": "SELL"}.get(s, s)
        if s not in SIDES:
            raise TicketError(f"bad side {side!r}: BUY or SELL")
        if isinstance(quantity, str):
            q = quantity.strip()
            if not q.isdigit() or int(q) <= 0:
                raise TicketError(f"quantity must be a positive whole number (got {quantity.strip()!r})")
            quantity = int(q)
        parsed = parse_legs(legs)
        price = parse_price(limit_price, tick, allow_non_positive=len(parsed) > 1)
        return cls(s, quantity, parsed, price, expiry.strip())

    @property
    def legs_text(self) -> str:
        return ",".join(leg.text() for leg in self.legs)

    def describe(self) -> str:
        """``BUY 2 590C,-591C @ 0.45``."""
        exp = f" {self.expiry}" if self.expiry else ""
        return f"{self.side} {self.quantity} SPY{exp} {self.legs_text} @ {self.limit_price}"

    def to_proto(self, preview: bool = False) -> pb.SubmitOrder:
        return pb.SubmitOrder(
            side=self.side,
            quantity=self.quantity,
            limit_price=str(self.limit_price),
            legs=[
                pb.OrderLeg(strike=leg.strike, right=_RIGHT_PB[leg.right], side=leg.side, ratio=leg.ratio)
                for leg in self.legs
            ],
            preview=preview,
            expiry=self.expiry,
        )


@dataclass(frozen=True)
class ActionResult:
    ok: bool
    title: str  # "armed", "halt refused", "arm: agent unreachable", ...
    detail: str  # the agent's message, the denials, the client order id, or the transport error
    result: pb.CommandResult | None
    command: pb.Command | None = None  # what was sent (its idempotency key); Operator.retry resends it
    retryable: bool = False  # a transport failure: the command may or may not have run; retry is safe

    @property
    def key(self) -> str:
        """The idempotency key of the command ("" if none was sent)."""
        return self.command.idempotency_key if self.command is not None else ""

    @property
    def denials(self) -> tuple[tuple[str, str], ...]:
        """(code, reason) of the pre-trade checks that refused (or would refuse, for a preview)."""
        if self.result is None:
            return ()
        return tuple((d.code, d.reason) for d in self.result.denials)

    @property
    def client_order_id(self) -> str:
        return self.result.client_order_id if self.result is not None else ""

    @property
    def replayed(self) -> bool:
        """The agent had seen this key already: this is the first result, nothing ran again."""
        return self.result is not None and self.result.replayed

    def text(self) -> str:
        """One line: title and detail."""
        return f"{self.title}: {self.detail}" if self.detail else self.title


def _titles(action: str, cmd: pb.Command) -> tuple[str, str]:
    """(title when accepted, title when refused) of a command."""
    if action == "set_armed":
        return ("armed", "arm refused") if cmd.set_armed.armed else ("disarmed", "disarm refused")
    if action == "set_trading_state":
        state = cmd.set_trading_state.state.upper()
        return f"trading state {state}", f"trading state {state} refused"
    if action == "submit_order":
        if cmd.submit_order.preview:
            return "preview: would be sent", "preview: would be refused"
        return "order sent", "order refused"
    if action == "decide_proposal":
        if cmd.decide_proposal.confirm:
            return "proposal confirmed", "confirm refused"
        return "proposal rejected", "reject refused"
    return {
        "halt": ("halted", "halt refused"),
        "flatten": ("flattening", "flatten incomplete"),
        "set_limits": ("limits set", "limits refused"),
        "cancel_order": ("cancel requested", "cancel refused"),
        "heartbeat": ("heartbeat", "heartbeat refused"),
    }.get(action, (action, f"{action} refused"))


_NAMES = {
    "set_armed": "arm",
    "set_trading_state": "trading state",
    "submit_order": "order",
    "decide_proposal": "proposal",
    "cancel_order": "cancel",
    "set_limits": "limits",
}


def _describe(result: pb.CommandResult) -> str:
    parts = [result.message or result.code]
    if result.code and result.code not in ("ok", "preview") and result.code not in parts[0]:
        parts[0] = f"{result.code}: {parts[0]}"
    if result.client_order_id:
        parts.append(f"order {result.client_order_id}")
    if result.denials:
        if all(d.reason in result.message for d in result.denials):
            parts.append("checks refused: " + ", ".join(d.code for d in result.denials))
        else:
            parts.append("; ".join(f"{d.code}: {d.reason}" for d in result.denials))
    if result.replayed:
        parts.append("already done (repeated key: this is the first result)")
    return " | ".join(p for p in parts if p)


class Operator:
    """Sends an operator's commands to one agent's executor; every call returns an ``ActionResult``."""

    def __init__(self, client: AgentClient, operator: str, deadline: float | None = None) -> None:
        if not operator.strip():
            raise ValueError("an operator name is required (it is recorded with every command)")
        self.client = client
        self.operator = operator.strip()
        self.deadline = deadline if deadline is not None else client.deadline

    def command(self) -> pb.Command:
        """A new command with a fresh idempotency key and this operator's name (set the action on it)."""
        return pb.Command(idempotency_key=uuid.uuid4().hex, operator=self.operator)

    async def send(self, command: pb.Command) -> ActionResult:
        """Send a built command once; transport failures become ``ok=False`` results (``retryable``)."""
        action = command.WhichOneof("action") or ""
        name = _NAMES.get(action, action or "command")
        if not action:
            return ActionResult(False, "command not sent", "the command names no action", None, command)
        if not command.idempotency_key:
            return ActionResult(
                False, f"{name} not sent", "the command has no idempotency key", None, command
            )
        try:
            result = await asyncio.wait_for(self.client.execute(command), timeout=self.deadline)
        except TimeoutError:
            return ActionResult(
                False,
                f"{name}: no answer",
                f"agent {self.client.target} did not answer within {self.deadline:g} s; it may or may not "
                "have run the command: retry sends the same command (same key), which runs at most once",
                None,
                command,
                retryable=True,
            )
        except AgentUnreachable as exc:
            return ActionResult(
                False,
                f"{name}: agent unreachable",
                f"{exc}; retry sends the same command (same key), which runs at most once",
                None,
                command,
                retryable=True,
            )
        except AgentRequestError as exc:
            return ActionResult(
                False, f"{name}: refused by the agent", str(exc), None, command, exc.code in _UNKNOWN_OUTCOME
            )
        except (ClientError, grpc.RpcError, grpc.aio.UsageError, OSError) as exc:
            # a closed channel, a broken socket: the command may not have left
            return ActionResult(
                False, f"{name}: not delivered", f"{type(exc).__name__}: {exc}", None, command, True
            )
        ok_title, refused_title = _titles(action, command)
        return ActionResult(
            result.accepted,
            ok_title if result.accepted else refused_title,
            _describe(result),
            result,
            command,
        )

    async def retry(self, previous: ActionResult) -> ActionResult:
        """Send the command of an earlier result again with the same idempotency key: if the first try
        reached the agent, the agent answers with its first result (``replayed``) and does nothing again."""
        if previous.command is None:
            return ActionResult(False, "nothing to retry", "that result carries no command", None)
        return await self.send(previous.command)

    async def arm(self) -> ActionResult:
        cmd = self.command()
        cmd.set_armed.armed = True
        return await self.send(cmd)

    async def disarm(self) -> ActionResult:
        cmd = self.command()
        cmd.set_armed.armed = False
        return await self.send(cmd)

    async def halt(self, reason: str) -> ActionResult:
        cmd = self.command()
        cmd.halt.reason = reason.strip() or "operator"
        return await self.send(cmd)

    async def flatten(self, reason: str) -> ActionResult:
        cmd = self.command()
        cmd.flatten.reason = reason.strip() or "operator"
        return await self.send(cmd)

    async def set_trading_state(self, state: str) -> ActionResult:
        cmd = self.command()
        cmd.set_trading_state.state = state.strip().upper()
        return await self.send(cmd)

    async def set_limits(self, limits: Mapping[str, str]) -> ActionResult:
        if not limits:
            return ActionResult(False, "limits not sent", "no limit to change", None)
        cmd = self.command()
        for name, value in limits.items():
            cmd.set_limits.limits[name.strip()] = str(value).strip()
        return await self.send(cmd)

    async def preview_order(self, ticket: OrderTicket) -> ActionResult:
        """Run the pre-trade checks on the ticket (``SubmitOrder.preview``): nothing is sent to a broker."""
        cmd = self.command()
        cmd.submit_order.CopyFrom(ticket.to_proto(preview=True))
        return await self.send(cmd)

    async def submit_order(self, ticket: OrderTicket) -> ActionResult:
        cmd = self.command()
        cmd.submit_order.CopyFrom(ticket.to_proto(preview=False))
        return await self.send(cmd)

    async def cancel_order(self, client_order_id: str) -> ActionResult:
        if not client_order_id.strip():
            return ActionResult(False, "cancel not sent", "no client order id", None)
        cmd = self.command()
        cmd.cancel_order.client_order_id = client_order_id.strip()
        return await self.send(cmd)

    async def decide(self, proposal_id: str, confirm: bool) -> ActionResult:
        if not proposal_id.strip():
            return ActionResult(False, "proposal decision not sent", "no proposal id", None)
        cmd = self.command()
        cmd.decide_proposal.proposal_id = proposal_id.strip()
        cmd.decide_proposal.confirm = confirm
        return await self.send(cmd)

    async def heartbeat(self) -> ActionResult:
        cmd = self.command()
        cmd.heartbeat.SetInParent()
        return await self.send(cmd)
