"""One active executor: Lease leader election through the real ``kubernetes`` client and a fake API server.

Timings are client-go's scaled down: lease 2 s, renew deadline 1 s, retry period 0.2 s (the Lease's
``leaseDurationSeconds`` is whole seconds, so 2 s is what a standby would honour anyway). Every
scenario with a hand-over runs a sampler that reads ``is_leader_now()`` of all candidates every 2 ms
and fails if two are ever true at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from kubernetes.client import Configuration

from agent.executor.fencing import NotLeaderError
from agent.executor.journal import Journal, StaleEpochError
from agent.executor.lease import (
    KubeLeaseStore,
    LeaderElector,
    LeaseConflictError,
    LeaseError,
    LeaseRecord,
    LeaseTimings,
    utc_now_micro,
)
from tests.agent.executor.fake_kube import FakeKube, FaultMode
from tests.agent.executor.helpers import EXPIRY, buy

NS, NAME = "spy", "spy-executor"
TIMINGS = LeaseTimings(lease_duration=2.0, renew_deadline=1.0, retry_period=0.2, request_timeout=0.5)
D, R, P = TIMINGS.lease_duration, TIMINGS.renew_deadline, TIMINGS.retry_period
MAX_RETRY = P * (1 + 1.2)  # a standby's jittered retry period, at most
SLACK = 0.3  # scheduling and HTTP on a busy test machine


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    fake = FakeKube().start()
    yield fake
    fake.close()


def store(kube: FakeKube, identity: str) -> KubeLeaseStore:
    return KubeLeaseStore.connect(NS, NAME, identity, configuration=Configuration(host=kube.url))


@dataclass
class Candidate:
    """One executor replica's elector, with what its callbacks saw (monotonic times)."""

    name: str
    elector: LeaderElector
    task: asyncio.Task[None] | None = None
    started: list[tuple[float, int]] = field(default_factory=list)
    stopped: list[float] = field(default_factory=list)

    def leads(self) -> bool:
        return self.elector.is_leader_now()

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class Campaign:
    """Candidates on one Lease, and a sampler that records how many lead at each instant."""

    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube
        self.candidates: list[Candidate] = []
        self.samples = 0
        self.most_leaders = 0
        self._sampler: asyncio.Task[None] | None = None

    def add(self, name: str, *, release_on_cancel: bool = True, seed: int = 0) -> Candidate:
        started: list[tuple[float, int]] = []
        stopped: list[float] = []
        elector = LeaderElector(
            store(self.kube, name),
            name,
            TIMINGS,
            on_started_leading=lambda epoch: started.append((time.monotonic(), epoch)),
            on_stopped_leading=lambda: stopped.append(time.monotonic()),
            release_on_cancel=release_on_cancel,
            rng=random.Random(f"{seed}-{name}"),
        )
        cand = Candidate(name, elector, started=started, stopped=stopped)
        cand.task = asyncio.create_task(cand.elector.run(), name=f"elector-{name}")
        self.candidates.append(cand)
        return cand

    def leaders(self) -> list[Candidate]:
        return [c for c in self.candidates if c.leads()]

    async def leader(self, timeout: float, but_not: Candidate | None = None) -> Candidate:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.leaders()
            if len(now) == 1 and now[0] is not but_not:
                return now[0]
            await asyncio.sleep(0.005)
        raise AssertionError(
            f"no new leader within {timeout} s (leading: {[c.name for c in self.leaders()]})"
        )

    async def _sample(self) -> None:
        while True:
            self.samples += 1
            self.most_leaders = max(self.most_leaders, len(self.leaders()))
            await asyncio.sleep(0.002)

    def check_never_two(self, min_samples: int = 100) -> None:
        assert self.samples >= min_samples
        assert self.most_leaders <= 1, "two executors believed they could send at the same moment"

    async def __aenter__(self) -> Campaign:
        self._sampler = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._sampler is not None
        self._sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sampler
        for c in self.candidates:
            await c.stop()


@contextlib.asynccontextmanager
async def campaign(kube: FakeKube, *names: str, release_on_cancel: bool = True) -> AsyncIterator[Campaign]:
    async with Campaign(kube) as camp:
        for name in names:
            camp.add(name, release_on_cancel=release_on_cancel)
        yield camp


# ---------------------------------------------------------------- settings and the store


def test_defaults_are_client_go_and_bad_timings_say_why() -> None:
    t = LeaseTimings()
    assert (t.lease_duration, t.renew_deadline, t.retry_period) == (15.0, 10.0, 2.0)
    assert t.lease_duration_seconds == 15
    assert LeaseTimings(1.5, 1.0, 0.2).lease_duration_seconds == 2  # whole seconds, rounded up
    with pytest.raises(ValueError, match="must exceed the renew deadline"):
        LeaseTimings(10.0, 10.0, 2.0)
    with pytest.raises(ValueError, match="too few tries"):
        LeaseTimings(15.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="request timeout"):
        LeaseTimings(15.0, 10.0, 2.0, request_timeout=11.0)


def test_store_creates_reads_and_refuses_stale_versions(kube: FakeKube) -> None:
    s = store(kube, "a")
    assert s.get(1.0) is None
    now = utc_now_micro()
    made = s.create(LeaseRecord("a", 15, 0, now, now), 1.0)
    assert made.resource_version
    assert made.holder == "a"
    with pytest.raises(LeaseConflictError):
        s.create(LeaseRecord("b", 15, 0, now, now), 1.0)
    renewed = s.update(replace(made, renew_time=utc_now_micro()), 1.0)
    assert renewed.resource_version != made.resource_version
    with pytest.raises(LeaseConflictError):  # the version we read has been overwritten
        store(kube, "b").update(replace(made, holder="b"), 1.0)
    got = s.get(1.0)
    assert got is not None
    assert got.holder == "a"
    assert got.resource_version == renewed.resource_version
    spec = (kube.lease(NS, NAME) or {})["spec"]
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == 15
    assert kube.count("POST", 409) == 1
    assert kube.count("PUT", 409) == 1


def test_a_renewal_keeps_labels_others_put_on_the_lease(kube: FakeKube) -> None:
    kube.put_lease(NS, NAME, {"holderIdentity": "a", "leaseTransitions": 3}, labels={"team": "spy"})
    s = store(kube, "a")
    got = s.get(1.0)
    assert got is not None
    s.update(replace(got, renew_time=utc_now_micro()), 1.0)
    lease = kube.lease(NS, NAME) or {}
    assert lease["metadata"]["labels"] == {"team": "spy"}
    assert lease["spec"]["leaseTransitions"] == 3


def test_unreachable_api_server_is_a_lease_error() -> None:
    with socket.socket() as closed:  # bound, never listening: connection refused
        closed.bind(("127.0.0.1", 0))
        host, port = closed.getsockname()
        s = KubeLeaseStore.connect(NS, NAME, "a", configuration=Configuration(host=f"http://{host}:{port}"))
        with pytest.raises(LeaseError, match="read Lease spy/spy-executor"):
            s.get(0.5)


# ---------------------------------------------------------------- one leader


async def test_one_of_three_leads_and_the_others_stand_by(kube: FakeKube) -> None:
    async with campaign(kube, "a", "b", "c") as camp:
        leader = await camp.leader(timeout=1.0)
        await asyncio.sleep(1.0)
        assert camp.leaders() == [leader]
        assert leader.elector.fence() == leader.elector.epoch == 0
        assert leader.started == [(leader.started[0][0], 0)]
        assert leader.stopped == []
        assert leader.elector.stats.renewals >= 3  # every retry period
        for c in camp.candidates:
            assert c.elector.leader == leader.name
            if c is not leader:
                assert c.started == []
                with pytest.raises(NotLeaderError):
                    c.elector.fence()
        camp.check_never_two()


async def test_candidates_racing_for_a_missing_lease_get_409_and_one_wins(kube: FakeKube) -> None:
    kube.gate_reads(3)  # all three read "404 not found" before anyone creates it
    async with campaign(kube, "a", "b", "c") as camp:
        await camp.leader(timeout=1.0)
        await asyncio.sleep(0.3)
        assert len(camp.leaders()) == 1
        assert kube.count("GET", 404) == 3
        assert kube.count("POST", 201) == 1
        assert kube.count("POST", 409) == 2
        assert sum(c.elector.stats.conflicts for c in camp.candidates) == 2
        camp.check_never_two()


async def test_a_conflicting_renewal_rereads_and_keeps_the_lease(kube: FakeKube) -> None:
    async with campaign(kube, "a") as camp:
        leader = await camp.leader(timeout=1.0)
        kube.conflict_next("a", 1)  # the next renewal's PUT is answered 409
        await asyncio.sleep(4 * P)
        assert kube.count("PUT", 409) == 1
        assert leader.elector.stats.conflicts == 1
        assert leader.leads()
        assert leader.elector.epoch == 0
        assert leader.stopped == []
        assert leader.elector.stats.renewals >= 3


async def test_a_dead_holders_lease_is_taken_after_a_full_lease_duration_of_our_own_clock(
    kube: FakeKube,
) -> None:
    # Written by a holder whose clock said 2001: the renewTime is ignored; what counts is that the
    # record has not changed for a whole lease duration since *we* first saw it.
    kube.put_lease(
        NS,
        NAME,
        {
            "holderIdentity": "ghost",
            "leaseDurationSeconds": 2,
            "leaseTransitions": 7,
            "renewTime": "2001-01-01T00:00:00.000000Z",
        },
    )
    t0 = time.monotonic()
    async with campaign(kube, "a") as camp:
        leader = await camp.leader(timeout=D + MAX_RETRY + SLACK)
        waited = leader.started[0][0] - t0
        assert D - 0.05 <= waited <= D + MAX_RETRY + SLACK
        assert leader.elector.epoch == 8  # leaseTransitions + 1 on takeover
        assert (kube.lease(NS, NAME) or {})["spec"]["leaseTransitions"] == 8


# ---------------------------------------------------------------- hand-overs


async def test_a_cancelled_leader_releases_and_a_standby_takes_over_at_once(kube: FakeKube) -> None:
    async with campaign(kube, "a", "b", "c") as camp:
        old = await camp.leader(timeout=1.0)
        t_kill = time.monotonic()
        await old.stop()
        new = await camp.leader(timeout=MAX_RETRY + SLACK, but_not=old)
        assert new.started[0][0] - t_kill <= MAX_RETRY + SLACK
        assert old.stopped
        assert old.stopped[0] <= new.started[0][0]
        assert new.elector.epoch == 1
        camp.check_never_two()


async def test_a_crashed_leader_is_replaced_within_the_lease_duration(kube: FakeKube) -> None:
    # release_on_cancel=False: cancelling is a crash (kill -9), nothing is written on the way out.
    async with campaign(kube, "a", "b", "c", release_on_cancel=False) as camp:
        old = await camp.leader(timeout=1.0)
        await asyncio.sleep(0.5)
        t_kill = time.monotonic()
        await old.stop()
        new = await camp.leader(timeout=D + MAX_RETRY + SLACK, but_not=old)
        took = new.started[0][0] - t_kill
        # not before the old term could have ended (its last renewal was at most a retry period
        # before the kill), and within a lease duration plus one jittered retry of the kill
        assert D - P - 0.1 <= took <= D + MAX_RETRY + SLACK
        assert new.elector.epoch == old.started[0][1] + 1
        camp.check_never_two()


@pytest.mark.parametrize("mode", ["hang", "drop"])
async def test_a_partitioned_leader_stops_before_its_lease_can_expire(
    kube: FakeKube, mode: FaultMode
) -> None:
    async with campaign(kube, "a", "b", "c") as camp:
        old = await camp.leader(timeout=1.0)
        await asyncio.sleep(0.5)
        t_cut = time.monotonic()
        kube.partition(old.name, mode)  # its renewals now hang unanswered / lose their connection
        new = await camp.leader(timeout=D + MAX_RETRY + SLACK, but_not=old)

        # the old leader gave up within its renew deadline of the cut ...
        assert len(old.stopped) == 1
        assert R - P - 0.1 <= old.stopped[0] - t_cut <= R + 0.1
        with pytest.raises(NotLeaderError):
            old.elector.fence()
        # ... and at least (lease duration - renew deadline) before anyone else started
        gap = new.started[0][0] - old.stopped[0]
        assert gap >= 0.8 * (D - R)
        assert new.elector.epoch is not None
        assert new.elector.epoch > old.started[0][1]

        kube.heal(old.name)  # back on the network: it stays a standby under the new leader
        await asyncio.sleep(4 * P)
        assert camp.leaders() == [new]
        assert old.elector.leader == new.name
        assert len(old.started) == 1
        camp.check_never_two()


# ---------------------------------------------------------------- epochs and fencing


async def test_epochs_strictly_increase_and_the_journal_refuses_a_deposed_leader(
    kube: FakeKube, tmp_path: Path
) -> None:
    terms: list[tuple[str, int]] = []
    with Journal(tmp_path / "j.db", "ex1", EXPIRY) as journal:
        async with campaign(kube, "r0", "r1", "r2") as camp:
            for k in range(3, 7):
                leader = await camp.leader(timeout=1.0)
                epoch = leader.elector.fence()
                terms.append((leader.name, epoch))
                journal.record_intent(replace(buy(journal.next_client_order_id()), lease_epoch=epoch))
                await leader.stop()  # release: the next standby takes over
                camp.candidates.remove(leader)
                camp.add(f"r{k}")  # a replacement replica joins as a standby
            camp.check_never_two(min_samples=10)  # releases make these hand-overs quick

        epochs = [e for _, e in terms]
        assert epochs == sorted(set(epochs))
        assert len(set(epochs)) == 4
        assert len({n for n, _ in terms}) == 4
        # the server's record: leaseTransitions never goes down, and goes up exactly on a new holder
        held = [(w.holder, w.transitions) for w in kube.writes if w.holder]
        assert all(b[1] == a[1] + (b[0] != a[0]) for a, b in itertools.pairwise(held))

        # a deposed leader that still had an intent in flight (decided under its old epoch) is refused
        _, old_epoch = terms[-2]
        with pytest.raises(StaleEpochError, match="no longer the leader"):
            journal.record_intent(replace(buy(journal.next_client_order_id()), lease_epoch=old_epoch))
        assert journal.stats().max_lease_epoch == epochs[-1]
