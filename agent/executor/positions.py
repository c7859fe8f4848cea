"""Positions, P&L and portfolio greeks, folded from fills (each execution id counted once).

Cash is ``Decimal`` (realized P&L, fees, average prices on the tick's scale); marks and greeks are
analytics in float dollars. Average-cost accounting: a fill that adds to a position moves its average
price; a fill that reduces it realizes ``(exit - average) x closed x multiplier`` (sign of the
position); a fill through zero closes the old position and opens the rest at the fill price.

Unrealized P&L is marked to the mid of the current quote; a contract with no two-sided quote is
reported in ``unmarked`` and contributes nothing (never a made-up price).

Portfolio greeks, with ``tau`` from the session's convention (``Session.tau``, trading years):
``delta`` in share equivalents (sum of qty x multiplier x forward delta), ``gamma`` in shares per $1
of the underlying, ``vega`` in dollars per volatility point, ``theta`` in dollars per trading minute.
Volatility is the quote's own IV when the source gives one, else the Black-76 IV of the mid with the
forward taken as the underlying (a 0DTE forward differs by ``(r - q) tau``, negligible here).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np

from agent.domain import ChainBook, OptionQuote, Right
from agent.executor.orders import (
    ZERO,
    Contract,
    Fill,
    Order,
    OrderIntent,
    OrderLeg,
    Origin,
    Side,
    nearest_tick,
)
from agent.pricing import black76_greeks, implied_vol


@dataclass(frozen=True, slots=True)
class Position:
    contract: Contract
    quantity: int  # signed contracts
    avg_price: Decimal  # per share, of the open quantity
    realized: Decimal  # dollars, before fees
    fees: Decimal


@dataclass(frozen=True, slots=True)
class PnL:
    realized: Decimal
    fees: Decimal
    unrealized: float
    unmarked: tuple[str, ...] = ()

    @property
    def net(self) -> float:
        """Realized minus fees plus unrealized, float dollars (what the loss limits watch)."""
        return float(self.realized - self.fees) + self.unrealized


@dataclass(frozen=True, slots=True)
class ContractGreeks:
    """Greeks of one contract (per share, as ``agent.pricing`` gives them) and the vol used."""

    delta: float
    gamma: float
    vega: float
    theta: float
    vol: float


@dataclass(frozen=True, slots=True)
class PortfolioGreeks:
    delta: float = 0.0
    gamma: float = 0.0
    vega: float = 0.0
    theta: float = 0.0
    missing: tuple[str, ...] = ()

    def __add__(self, other: PortfolioGreeks) -> PortfolioGreeks:
        return PortfolioGreeks(
            self.delta + other.delta,
            self.gamma + other.gamma,
            self.vega + other.vega,
            self.theta + other.theta,
            tuple(sorted(set(self.missing) | set(other.missing))),
        )


def contract_greeks(book: ChainBook, contracts: Iterable[Contract], tau: float) -> dict[str, ContractGreeks]:
    """Greeks of each contract that has a usable quote and vol (keyed by OSI symbol)."""
    todo: list[tuple[Contract, OptionQuote]] = []
    for c in contracts:
        q = book.quotes.get(c.key)
        if q is not None and (c.expiry == book.expiry or not book.expiry):
            todo.append((c, q))
    if not todo or not math.isfinite(book.underlying):
        return {}
    strikes = np.array([c.strike for c, _ in todo])
    calls = np.array([c.right is Right.CALL for c, _ in todo])
    mids = np.array([q.mid for _, q in todo])
    given = np.array([q.src_iv for _, q in todo])
    solved = implied_vol(mids, book.underlying, strikes, tau, calls).vol
    vols = np.where(np.isfinite(given) & (given > 0), given, solved)
    g = black76_greeks(book.underlying, strikes, tau, vols, calls)
    out: dict[str, ContractGreeks] = {}
    for i, (c, _) in enumerate(todo):
        if math.isfinite(float(vols[i])) and math.isfinite(float(g.delta[i])):
            out[c.osi] = ContractGreeks(
                float(g.delta[i]), float(g.gamma[i]), float(g.vega[i]), float(g.theta[i]), float(vols[i])
            )
    return out


@dataclass(slots=True)
class _Open:
    contract: Contract
    quantity: int = 0
    avg: Decimal = ZERO
    realized: Decimal = ZERO
    fees: Decimal = ZERO


@dataclass(slots=True)
class PositionBook:
    """Positions by contract (OSI symbol), folded from fills; an execution id counts once."""

    _open: dict[str, _Open] = field(default_factory=dict)
    _seen: dict[str, tuple[str, Decimal]] = field(default_factory=dict)  # exec id -> (OSI, commission)

    @classmethod
    def from_orders(cls, orders: Iterable[Order]) -> PositionBook:
        book = cls()
        for o in orders:
            for f in o.fills.values():
                book.apply(f, o.intent.legs[f.leg].contract)
        return book

    def apply(self, fill: Fill, contract: Contract) -> bool:
        """Book ``fill`` of ``contract``; False when its execution id was booked already."""
        if fill.exec_id in self._seen:
            return False
        self._seen[fill.exec_id] = (contract.osi, fill.commission)
        p = self._open.setdefault(contract.osi, _Open(contract))
        signed = fill.side.sign * fill.quantity
        p.fees += fill.commission
        if p.quantity == 0 or (p.quantity > 0) == (signed > 0):
            total = abs(p.quantity) + abs(signed)
            p.avg = (p.avg * abs(p.quantity) + fill.price * abs(signed)) / total
            p.quantity += signed
            return True
        closed = min(abs(signed), abs(p.quantity))
        direction = 1 if p.quantity > 0 else -1
        p.realized += (fill.price - p.avg) * closed * direction * contract.multiplier
        p.quantity += signed
        if p.quantity == 0:
            p.avg = ZERO
        elif (p.quantity > 0) != (direction > 0):  # through zero: the rest opens at the fill price
            p.avg = fill.price
        return True

    def correct_commission(self, exec_id: str, commission: Decimal) -> Contract | None:
        """Set the commission of the booked execution ``exec_id``: its position's fees move by the
        difference. The contract whose fees changed, or None (unknown execution, same commission)."""
        seen = self._seen.get(exec_id)
        if seen is None or seen[1] == commission:
            return None
        osi, booked = seen
        self._seen[exec_id] = (osi, commission)
        p = self._open[osi]
        p.fees += commission - booked
        return p.contract

    def positions(self, include_flat: bool = False) -> list[Position]:
        return [
            Position(p.contract, p.quantity, p.avg, p.realized, p.fees)
            for _, p in sorted(self._open.items())
            if include_flat or p.quantity != 0
        ]

    def quantity(self, contract: Contract) -> int:
        p = self._open.get(contract.osi)
        return p.quantity if p else 0

    def net_quantities(self) -> dict[str, int]:
        return {k: p.quantity for k, p in self._open.items() if p.quantity != 0}

    @property
    def realized(self) -> Decimal:
        return sum((p.realized for p in self._open.values()), ZERO)

    @property
    def fees(self) -> Decimal:
        return sum((p.fees for p in self._open.values()), ZERO)

    def pnl(self, book: ChainBook) -> PnL:
        unrealized = 0.0
        unmarked: list[str] = []
        for key, p in sorted(self._open.items()):
            if p.quantity == 0:
                continue
            q = book.quotes.get(p.contract.key) if p.contract.expiry == book.expiry else None
            mid = q.mid if q is not None else math.nan
            if not math.isfinite(mid):
                unmarked.append(key)
                continue
            unrealized += (mid - float(p.avg)) * p.quantity * p.contract.multiplier
        return PnL(self.realized, self.fees, unrealized, tuple(unmarked))

    def greeks(self, book: ChainBook, tau: float) -> PortfolioGreeks:
        held = [p for p in self._open.values() if p.quantity != 0]
        per = contract_greeks(book, (p.contract for p in held), tau)
        return sum_greeks(((p.contract, p.quantity) for p in held), per)


def sum_greeks(holdings: Iterable[tuple[Contract, int]], per: dict[str, ContractGreeks]) -> PortfolioGreeks:
    """Portfolio greeks of signed ``holdings`` (see the module docstring for the units)."""
    d = g = v = t = 0.0
    missing: list[str] = []
    for c, qty in holdings:
        cg = per.get(c.osi)
        if cg is None:
            missing.append(c.osi)
            continue
        scale = qty * c.multiplier
        d += scale * cg.delta
        g += scale * cg.gamma
        v += scale * cg.vega / 100.0
        t += scale * cg.theta
    return PortfolioGreeks(d, g, v, t, tuple(sorted(missing)))


FLATTEN_ID = "flatten"  # placeholder: the journal gives each closing order its real client order id


def flatten_intents(
    positions: PositionBook, book: ChainBook, created_ns: int
) -> tuple[list[OrderIntent], list[str]]:
    """One closing order per open position, a marketable limit at the touch (bid to sell, ask to
    buy), origin FLATTEN; and, for positions with no price to close at, why not. The intents carry
    ``FLATTEN_ID``: replace it with the journal's client order id when placing them."""
    intents: list[OrderIntent] = []
    problems: list[str] = []
    for pos in positions.positions():
        quote = book.quotes.get(pos.contract.key)
        selling = pos.quantity > 0
        if quote is None or not (quote.has_bid if selling else quote.has_ask):
            problems.append(f"{pos.contract.osi.strip()}: no {'bid' if selling else 'ask'} to close at")
            continue
        intents.append(
            OrderIntent(
                FLATTEN_ID,
                Side.SELL if selling else Side.BUY,
                abs(pos.quantity),
                nearest_tick(quote.bid if selling else quote.ask, pos.contract.tick),
                (OrderLeg(pos.contract, Side.BUY),),
                created_ns,
                origin=Origin.FLATTEN,
            )
        )
    return intents, problems
