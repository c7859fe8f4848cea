"""The write-ahead journal: durable intents, appended reports, rebuild, single writer, epochs."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from agent.executor.journal import Journal, JournalError, JournalLockedError, StaleEpochError
from agent.executor.orders import (
    CommissionCorrected,
    Fill,
    OrderAccepted,
    OrderError,
    OrderFilled,
    OrderState,
    Side,
)
from agent.executor.positions import PositionBook
from tests.agent.executor.helpers import EXPIRY, T0, buy


def test_wal_and_full_sync(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db", "ex1", EXPIRY) as j:
        assert j.pragma("journal_mode") == "wal"
        assert j.pragma("synchronous") == "2"  # FULL


def test_ids_follow_the_journal_sequence_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path, "ex1", EXPIRY) as j:
        cid = j.next_client_order_id()
        assert cid == f"ex1-{EXPIRY}-000001"
        j.record_intent(buy(cid))
        with pytest.raises(OrderError, match="out of sequence"):
            j.record_intent(buy(cid))
    with Journal(path, "ex1", EXPIRY) as j:
        assert j.next_client_order_id() == f"ex1-{EXPIRY}-000002"


def test_rebuild_from_journal_with_duplicate_fill(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path, "ex1", EXPIRY) as j:
        cid = j.next_client_order_id()
        j.record_intent(buy(cid, qty=3))
        f = Fill("E1", cid, 0, Side.BUY, 2, Decimal("1.05"), Decimal("1.30"), T0)
        assert j.record_report(OrderAccepted(cid, "B1", T0))
        assert j.record_report(OrderFilled(f))
        assert not j.record_report(OrderFilled(f))  # same execution id: not written twice
    with Journal(path, "ex1", EXPIRY) as j:
        o = j.load()[cid]
        assert (o.state, o.filled, o.broker_order_id, o.commission) == (
            OrderState.PARTIALLY_FILLED,
            2,
            "B1",
            Decimal("1.30"),
        )
        assert j.stats().fills == 1


def test_second_executor_on_the_same_journal_refuses(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path, "ex1", EXPIRY):
        with pytest.raises(JournalLockedError, match=r"in use by another executor .*pid"):
            Journal(path, "ex1", EXPIRY)
        # and from another process too
        code = (
            "import sys; from pathlib import Path; from agent.executor.journal import Journal, JournalLockedError\n"
            f"try:\n    Journal(Path({str(path)!r}), 'ex1', '{EXPIRY}')\nexcept JournalLockedError as e:\n"
            "    print(e); sys.exit(3)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert out.returncode == 3, out.stderr
        assert "only one executor may run on a journal" in out.stdout
    Journal(path, "ex1", EXPIRY).close()  # released on close


def test_journal_of_another_executor_is_refused(tmp_path: Path) -> None:
    Journal(tmp_path / "j.db", "ex1", EXPIRY).close()
    with pytest.raises(JournalError, match="belongs to executor 'ex1'"):
        Journal(tmp_path / "j.db", "ex2", EXPIRY)


def test_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "j.db").write_bytes(b"garbage" * 1000)
    with pytest.raises(JournalError, match="not usable"):
        Journal(tmp_path / "j.db", "ex1", EXPIRY)
    Journal(tmp_path / "k.db", "ex1", EXPIRY).close()  # the lock was released on the failure


def test_lease_epoch_is_recorded_and_fences_older_leaders(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db", "ex1", EXPIRY) as j:
        j.record_intent(replace(buy(j.next_client_order_id()), lease_epoch=7))
        assert j.stats().max_lease_epoch == 7
        with pytest.raises(StaleEpochError, match="no longer the leader"):
            j.record_intent(replace(buy(j.next_client_order_id()), lease_epoch=6))
        assert [i.lease_epoch for i in j.intents()] == [7]


def test_commission_corrections_are_journaled_and_replay_to_the_same_fees(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path, "ex1", EXPIRY) as j:
        cid = j.next_client_order_id()
        j.record_intent(buy(cid, qty=3))
        j.record_report(OrderFilled(Fill("E1", cid, 0, Side.BUY, 2, Decimal("1.05"), Decimal(0), T0)))
        j.record_report(OrderFilled(Fill("E2", cid, 0, Side.BUY, 1, Decimal("1.05"), Decimal("0.65"), T0)))
        j.record_report(CommissionCorrected(cid, "E1", Decimal("1.30"), T0 + 1))
        j.record_report(CommissionCorrected(cid, "E1", Decimal("1.30"), T0 + 2))  # a repeat: replays as one
        live = j.load()
    with Journal(path, "ex1", EXPIRY) as j:
        assert [type(r).__name__ for r in j.reports()][-2:] == ["CommissionCorrected"] * 2
        orders = j.load()
        o = orders[cid]
        assert (o.state, o.commission) == (OrderState.FILLED, Decimal("1.95"))
        assert o.fills["E1"].commission == Decimal("1.30")
        assert PositionBook.from_orders(orders.values()).fees == Decimal("1.95")
        assert o.commission == live[cid].commission
        assert j.stats().fills == 2  # a correction is not an execution


def test_operator_round_trips_and_a_journal_without_it_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path, "ex1", EXPIRY) as j:
        first = replace(buy(j.next_client_order_id()), operator="alice")
        j.record_intent(first)
        second = buy(j.next_client_order_id())
        j.record_intent(second)
    # the second intent as an executor from before the operator field wrote it
    db = sqlite3.connect(path)
    (body,) = db.execute(
        "SELECT body FROM intents WHERE client_order_id = ?", (second.client_order_id,)
    ).fetchone()
    old = json.loads(body)
    del old["operator"]
    db.execute(
        "UPDATE intents SET body = ? WHERE client_order_id = ?", (json.dumps(old), second.client_order_id)
    )
    db.commit()
    db.close()
    with Journal(path, "ex1", EXPIRY) as j:
        loaded = j.load()
        assert loaded[first.client_order_id].intent == first
        assert loaded[first.client_order_id].intent.operator == "alice"
        assert loaded[second.client_order_id].intent.operator == ""
        assert loaded[second.client_order_id].intent == second
