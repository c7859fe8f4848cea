"""One life of an executor with its paper broker, killed with SIGKILL at a chosen point of order flow.

Run by ``test_crash.py`` in a forked child: it reconciles (recording anything unexplained), then
trades against a jittery market with small displayed sizes (partial fills), injected rejects, delays
and duplicated reports, until the chosen crash point is hit for the ``k``-th time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import time
from decimal import Decimal
from pathlib import Path

from agent.domain import ChainUpdate, OptionQuote, Right
from agent.executor.core import OrderFlow
from agent.executor.journal import Journal
from agent.executor.orders import Contract, OrderReport, Side, single_leg
from agent.executor.paper import Faults, PaperBroker

log = logging.getLogger(__name__)

EXPIRY = "20250317"
STRIKES = (589.0, 590.0, 591.0)
MS = 1_000_000


def _market(rng: random.Random, now: int) -> ChainUpdate:
    quotes = []
    for k in STRIKES:
        bid = round(1.00 + (590.0 - k) * 0.5 + rng.choice((0.0, 0.01, 0.02)), 2)
        quotes.append(
            OptionQuote(
                k,
                Right.CALL,
                bid,
                round(bid + 0.05, 2),
                rng.randint(1, 3),
                rng.randint(1, 3),
                quote_ts_ns=now,
            )
        )
    return ChainUpdate("SPY", EXPIRY, tuple(quotes), full=True, underlying=590.0)


async def life(root: Path, seed: int, point: str, k: int, steps: int, final: bool) -> None:
    rng = random.Random(seed)
    clock = time.time_ns
    hits = 0

    def hook(name: str) -> None:
        nonlocal hits
        if name == point:
            hits += 1
            if hits == k:
                os.kill(os.getpid(), signal.SIGKILL)

    journal = Journal(root / "journal.db", "crash", EXPIRY)
    broker = PaperBroker(
        root / "paper.db",
        clock,
        latency_ns=MS,
        faults=Faults(reject_rate=0.05, duplicate_rate=0.2, delay_rate=0.2, delay_ns=2 * MS, seed=seed),
    )
    flow = OrderFlow(journal, broker, clock, crash_hook=hook)
    result = await flow.start()
    with (root / "reconcile.jsonl").open("a") as out:
        out.write(
            json.dumps({"seed": seed, "counts": result.counts, "unexplained": list(result.unexplained)})
            + "\n"
        )

    def feed(reports: list[OrderReport]) -> None:
        for r in reports:
            flow.on_report(r)

    for step in range(steps):
        broker.on_quotes(_market(rng, clock()))
        if rng.random() < 0.5:
            strike = rng.choice(STRIKES)
            side = rng.choice((Side.BUY, Side.SELL))
            q = broker.book.quotes[(strike, Right.CALL)]
            touch = q.ask if side is Side.BUY else q.bid
            price = Decimal(str(round(touch + side.sign * rng.choice((0.0, 0.01, -0.03)), 2)))
            c = Contract("SPY", EXPIRY, strike, Right.CALL)
            await flow.place(
                lambda cid, c=c, side=side, price=price: single_leg(
                    cid, c, side, rng.randint(1, 5), price, clock()
                )
            )
        working = flow.working()
        if working and rng.random() < 0.15:
            await flow.cancel(rng.choice(working).client_order_id)
        feed(broker.pump())
        if point == "step" and step == k:
            os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(0.0003)
    if final:  # wind down: cancel what is left and take every report
        for o in flow.working():
            await flow.cancel(o.client_order_id)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and (flow.working() or broker._outbox):
            await asyncio.sleep(0.002)
            feed(broker.pump())
    journal.close()
    broker.close()


def main(root: str, seed: int, point: str, k: int, steps: int, final: bool) -> None:
    logging.disable(logging.WARNING)
    asyncio.run(life(Path(root), seed, point, k, steps, final))
