"""Small builders shared by the executor tests: contracts, quotes, a chain book, a session."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from agent.domain import ChainBook, ChainUpdate, OptionQuote, Right
from agent.executor.orders import Contract, OrderIntent, Side, single_leg
from agent.session import Session, session, to_ns

SESSION: Session = session(dt.date(2025, 3, 17))
EXPIRY = SESSION.expiry
T0 = to_ns(SESSION.at("11:00"))


def contract(strike: float = 590.0, right: Right = Right.CALL) -> Contract:
    return Contract("SPY", EXPIRY, strike, right)


def quote(
    strike: float = 590.0,
    right: Right = Right.CALL,
    bid: float = 1.00,
    ask: float = 1.05,
    bid_size: int = 10,
    ask_size: int = 10,
    ts: int = T0,
) -> OptionQuote:
    return OptionQuote(strike, right, bid, ask, bid_size, ask_size, quote_ts_ns=ts)


def chain(*quotes: OptionQuote, underlying: float = 590.0) -> ChainUpdate:
    return ChainUpdate("SPY", EXPIRY, tuple(quotes), full=True, underlying=underlying)


def book(*quotes: OptionQuote, underlying: float = 590.0) -> ChainBook:
    b = ChainBook()
    b.apply(chain(*quotes, underlying=underlying))
    return b


def buy(
    cid: str, qty: int = 1, price: str = "1.05", c: Contract | None = None, side: Side = Side.BUY
) -> OrderIntent:
    return single_leg(cid, c or contract(), side, qty, Decimal(price), T0)
