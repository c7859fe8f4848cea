"""kill -9 the executor at the worst moments of order flow, restart, reconcile; nothing lost or doubled."""

from __future__ import annotations

import json
import logging
import multiprocessing
import random
import signal
import time
from pathlib import Path

import pytest

from agent.executor.journal import Journal
from agent.executor.paper import PaperBroker
from agent.executor.positions import PositionBook
from tests.agent.executor import crash_worker

log = logging.getLogger(__name__)

POINTS = ("intent_journaled", "sent", "fill_received", "step")
LIVES = 60


def _life(root: Path, seed: int, point: str, k: int, steps: int = 40, final: bool = False) -> int | None:
    ctx = multiprocessing.get_context("fork")  # a fresh process per life, without re-importing numpy
    proc = ctx.Process(target=crash_worker.main, args=(str(root), seed, point, k, steps, final))
    proc.start()
    proc.join(30)
    return proc.exitcode


@pytest.mark.slow
def test_kill_9_at_random_points_of_order_flow(tmp_path: Path) -> None:
    rng = random.Random(20250317)
    started = time.monotonic()
    kills = dict.fromkeys(POINTS, 0)
    for life in range(LIVES):
        point = POINTS[life % len(POINTS)]
        k = rng.randint(1, 30 if point == "step" else 4)
        code = _life(tmp_path, 1000 + life, point, k)
        assert code in (0, -signal.SIGKILL), f"life {life} ended with {code}"
        if code == -signal.SIGKILL:
            kills[point] += 1
    assert _life(tmp_path, 99, "none", 0, steps=20, final=True) == 0

    lives = [json.loads(line) for line in (tmp_path / "reconcile.jsonl").read_text().splitlines()]
    unexplained = [u for life in lives for u in life["unexplained"]]
    recovered = {key: sum(life["counts"].get(key, 0) for life in lives) for key in lives[-1]["counts"]}

    with Journal(tmp_path / "journal.db", "crash", crash_worker.EXPIRY) as j:
        orders = j.load()
    broker = PaperBroker(tmp_path / "paper.db", time.time_ns)
    try:
        book_orders = broker.book_orders()
        executions = broker.book_executions()
        broker_positions = {p.contract.osi: p.quantity for p in broker.book_positions()}
        duplicate_submits = broker.counter("duplicate_submits")
    finally:
        broker.close()

    journal_fills = {eid for o in orders.values() for eid in o.fills}
    broker_fills = {f.exec_id for f in executions}
    cids = [o.client_order_id for o in book_orders]
    duplicates = len(cids) - len(set(cids))
    lost = broker_fills - journal_fills
    phantom = journal_fills - broker_fills
    positions = PositionBook.from_orders(orders.values()).net_quantities()
    summary = (
        f"lives {LIVES + 1}, SIGKILLs {sum(kills.values())} {kills}, journal intents {len(orders)}, "
        f"broker orders {len(book_orders)}, duplicate orders {duplicates} (resubmits absorbed {duplicate_submits}), "
        f"executions {len(executions)}, lost fills {len(lost)}, phantom fills {len(phantom)}, "
        f"recovered at restart {recovered}, unexplained {len(unexplained)}, "
        f"positions journal {positions} broker {broker_positions}, {time.monotonic() - started:.1f} s"
    )
    print(summary)  # the figures this test exists to show
    log.info(summary)
    assert sum(kills.values()) >= 50
    assert all(kills[p] > 0 for p in POINTS)
    assert duplicates == 0
    assert set(cids) <= set(orders)
    assert not lost
    assert not phantom
    assert positions == broker_positions
    assert unexplained == []
    assert all(o.state.terminal for o in orders.values())
