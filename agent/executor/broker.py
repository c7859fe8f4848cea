"""The seam between the executor and a broker (paper, IB): a ``Protocol`` and its plain values.

A broker knows orders by our client order id (IB's ``orderRef``; the paper broker's key), is idempotent
on it (submitting an id it already has is not a second order), and reports everything that happens to
an order as :data:`~agent.executor.orders.OrderReport` values on one async stream. The executor never
trusts that stream alone: on start it asks for open and completed orders, today's executions and
positions, and reconciles them with its journal (``agent.executor.reconcile``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from agent.executor.orders import Contract, Fill, OrderIntent, OrderReport, OrderState


class BrokerError(RuntimeError):
    """The broker could not take a request (disconnected, timed out). Nothing is assumed sent."""


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """An order as the broker sees it: its status and how much of each leg executed."""

    client_order_id: str
    broker_order_id: str
    state: OrderState
    quantity: int
    leg_filled: tuple[int, ...]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class BrokerPosition:
    contract: Contract
    quantity: int  # signed contracts
    avg_cost: Decimal  # per share (price units), as brokers report it


class Broker(Protocol):
    """What the executor needs from a broker. Every method may raise :class:`BrokerError`."""

    async def submit(self, intent: OrderIntent) -> None:
        """Send ``intent``; idempotent on its client order id. Acceptance comes as a report."""
        ...

    async def cancel(self, client_order_id: str) -> None:
        """Ask to cancel; the outcome (cancelled, or cancel rejected, or a fill) comes as a report."""
        ...

    async def open_orders(self) -> list[BrokerOrder]:
        """Today's orders that can still trade."""
        ...

    async def completed_orders(self) -> list[BrokerOrder]:
        """Today's orders that are done (filled, cancelled, rejected, expired)."""
        ...

    async def executions(self) -> list[Fill]:
        """Today's executions of our orders, each with its broker execution id."""
        ...

    async def positions(self) -> list[BrokerPosition]: ...

    def reports(self) -> AsyncIterator[OrderReport]:
        """Reports as they happen (may repeat one or arrive out of order: the model copes)."""
        ...
