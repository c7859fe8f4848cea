"""The event log without I/O: seqs, resume from the ring buffer or a snapshot, topics, conflation, overflow."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.domain import (
    ChainBook,
    ChainUpdate,
    ComponentHealth,
    ComponentStatus,
    Health,
    Notice,
    NoticeLevel,
    OptionQuote,
    Right,
    UnderlyingTick,
)
from agent.eventlog import (
    Event,
    EventLog,
    MarketMerge,
    QueueItem,
    SnapshotItem,
    StreamRequestError,
    Subscription,
)
from agent.events import Payload
from agent.state import AgentState, Snapshot

EXPIRY = "20260317"
_ts = itertools.count(1_000)


def make_log(buffer_size: int = 1000, max_pending: int = 1000, incarnation: str = "inc-1") -> EventLog:
    return EventLog("agent-1", incarnation, clock_ns=lambda: next(_ts), buffer_size=buffer_size,
                    max_pending=max_pending)  # fmt: skip


def tick(last: float) -> UnderlyingTick:
    return UnderlyingTick("SPY", last, bid=last - 0.01, ask=last + 0.01)


def quote(strike: float, right: Right, bid: float) -> OptionQuote:
    return OptionQuote(strike, right, bid=bid, ask=bid + 0.05, bid_size=10, ask_size=10)


def chain(
    quotes: Iterable[OptionQuote] = (),
    removed: Sequence[float] = (),
    full: bool = False,
    underlying: float = math.nan,
    expiry: str = EXPIRY,
) -> ChainUpdate:
    return ChainUpdate("SPY", expiry, tuple(quotes), full=full, underlying=underlying,
                       removed_strikes=tuple(removed))  # fmt: skip


def full_chain(strikes: Iterable[float], bid: float = 1.0) -> ChainUpdate:
    return chain([quote(k, r, bid) for k in strikes for r in Right], full=True, underlying=100.0)


def notice(code: str) -> Notice:
    return Notice(NoticeLevel.INFO, code, f"notice {code}")


def health(status: ComponentStatus) -> Health:
    return Health((ComponentHealth("feed", status),))


def drain(sub: Subscription) -> list[QueueItem]:
    """Everything queued for ``sub`` right now, without waiting."""
    out: list[QueueItem] = []
    while sub.items:
        out.extend(asyncio.run(sub.next_batch(10_000)))
    return out


def seqs(items: Iterable[QueueItem]) -> list[int]:
    out: list[int] = []
    for it in items:
        if isinstance(it, Event):
            out.append(it.seq)
        elif isinstance(it, MarketMerge):
            out.extend(range(it.first_seq, it.seq + 1))
    return out


@dataclass
class FoldingClient:
    """What a client does with its stream: fold events (or merged runs, or a snapshot) into a state."""

    state: AgentState = field(default_factory=lambda: AgentState("agent-1", "?"))
    last: int = 0  # every seq <= last is reflected in state
    seen: list[int] = field(default_factory=list)

    def take(self, item: QueueItem) -> None:
        if isinstance(item, SnapshotItem):
            snap = item.snapshot
            assert snap.as_of_seq >= self.last, "a snapshot must not go back in time"
            self.state = state_from_snapshot(snap)
            self.last = snap.as_of_seq
            return
        first = item.first_seq if isinstance(item, MarketMerge) else item.seq
        assert first == self.last + 1, f"gap or duplicate: had {self.last}, got {first}..{item.seq}"
        payload = item.payload() if isinstance(item, MarketMerge) else item.payload
        self.state.apply(item.seq, item.ts_ns, payload)
        self.seen.extend(range(first, item.seq + 1))
        self.last = item.seq


def state_from_snapshot(snap: Snapshot) -> AgentState:
    st_ = AgentState(snap.agent_id, snap.incarnation, last_seq=snap.as_of_seq, last_ts_ns=snap.ts_ns)
    st_.underlying = snap.underlying
    if snap.chain is not None:
        st_.book.apply(snap.chain)
    elif snap.underlying is not None:
        st_.book.underlying = snap.underlying.last
    st_.health = snap.health
    st_.notices.extend(snap.recent_notices)
    return st_


def comparable(s: Snapshot) -> tuple[object, ...]:
    """A snapshot minus who took it (quotes compared as objects: identity makes NaN fields equal)."""
    return (s.as_of_seq, s.ts_ns, s.underlying, s.chain, s.health, s.recent_notices)


def book_of(updates: Iterable[Payload]) -> ChainBook:
    book = ChainBook()
    for p in updates:
        if isinstance(p, ChainUpdate):
            book.apply(p)
        elif isinstance(p, UnderlyingTick):
            book.underlying = p.last
    return book


# ------------------------------------------------------------------ seqs and resume


def test_seqs_start_at_one_and_increase_without_gaps() -> None:
    log = make_log()
    events = [log.publish(tick(100 + i)) for i in range(10)]
    assert [e.seq for e in events] == list(range(1, 11))
    assert log.last_seq == 10
    assert log.oldest_seq == 1
    assert all(a.ts_ns < b.ts_ns for a, b in itertools.pairwise(events))


def test_empty_log_oldest_is_next_seq() -> None:
    log = make_log()
    assert (log.last_seq, log.oldest_seq) == (0, 1)
    sub = log.subscribe(from_seq=1)
    assert not sub.items  # nothing missed, nothing to send yet
    log.publish(notice("a"))
    assert seqs(drain(sub)) == [1]


@pytest.mark.parametrize("from_seq", [1, 2, 17, 30, 31])
def test_resume_inside_buffer_gives_exactly_the_events_after(from_seq: int) -> None:
    log = make_log(buffer_size=100)
    for i in range(30):
        log.publish(notice(f"n{i}") if i % 3 else tick(100 + i))
    sub = log.subscribe(from_seq=from_seq, lossless=True)
    assert seqs(drain(sub)) == list(range(from_seq, 31))
    log.publish(notice("live"))
    assert seqs(drain(sub)) == [31]


def test_resume_older_than_buffer_gets_snapshot_then_live() -> None:
    log = make_log(buffer_size=10)
    log.publish(full_chain([99, 100, 101]))
    for i in range(40):
        log.publish(tick(100 + i * 0.1) if i % 2 else chain([quote(100, Right.CALL, 1 + i)]))
        if i % 7 == 0:
            log.publish(notice(f"n{i}"))
    assert log.oldest_seq > 5
    sub = log.subscribe(from_seq=3)
    items = drain(sub)
    assert len(items) == 1
    assert isinstance(items[0], SnapshotItem)
    assert items[0].snapshot.as_of_seq == log.last_seq

    client = FoldingClient(last=2)
    client.take(items[0])
    assert comparable(client.state.snapshot()) == comparable(log.snapshot())
    log.publish(tick(200.0))
    log.publish(notice("after"))
    for it in drain(sub):
        client.take(it)
    assert comparable(client.state.snapshot()) == comparable(log.snapshot())


def test_snapshot_equals_folding_every_event() -> None:
    log = make_log(buffer_size=5)
    client = FoldingClient()
    live = log.subscribe(from_seq=1, lossless=True)
    log.publish(full_chain(range(95, 106)))
    log.publish(health(ComponentStatus.OK))
    for i in range(60):
        log.publish(chain([quote(95 + i % 11, Right.PUT, 0.5 + i)], removed=[95] if i == 30 else ()))
        log.publish(tick(100 + math.sin(i)))
        for it in drain(live):
            client.take(it)
    log.publish(notice("end"))
    for it in drain(live):
        client.take(it)
    assert client.seen == list(range(1, log.last_seq + 1))
    assert comparable(client.state.snapshot()) == comparable(log.snapshot())


def test_other_incarnation_gets_snapshot() -> None:
    log = make_log()
    for i in range(5):
        log.publish(tick(100 + i))
    sub = log.subscribe(from_seq=3, incarnation="an-earlier-run")
    items = drain(sub)
    assert [type(i) for i in items] == [SnapshotItem]
    # a seq "in the future" of this run is fine when it belongs to another run
    sub = log.subscribe(from_seq=500, incarnation="an-earlier-run")
    assert [type(i) for i in drain(sub)] == [SnapshotItem]
    # the same incarnation resumes from the buffer
    sub = log.subscribe(from_seq=3, incarnation="inc-1", lossless=True)
    assert seqs(drain(sub)) == [3, 4, 5]


def test_from_seq_zero_gets_snapshot() -> None:
    log = make_log()
    log.publish(tick(100))
    items = drain(log.subscribe(from_seq=0))
    assert len(items) == 1
    assert isinstance(items[0], SnapshotItem)
    assert items[0].snapshot.as_of_seq == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"from_seq": -1}, "from_seq must be >= 0"),
        ({"from_seq": 7}, "in the future"),
        ({"from_seq": 7, "incarnation": "inc-1"}, "in the future"),
        ({"topics": ["market", "bogus"]}, "unknown topic(s) bogus"),
    ],
)
def test_bad_requests_raise(kwargs: dict[str, object], message: str) -> None:
    log = make_log()
    for i in range(5):
        log.publish(tick(100 + i))
    with pytest.raises(StreamRequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        log.subscribe(**kwargs)  # type: ignore[arg-type]
    assert log.clients == 0
    log.subscribe(from_seq=6)  # next seq is fine: nothing missed


def test_topic_filter() -> None:
    log = make_log()
    notices = log.subscribe(from_seq=1, topics=["notices"])
    market = log.subscribe(from_seq=1, topics=["market"], lossless=True)
    log.publish(tick(100))
    log.publish(notice("a"))
    log.publish(health(ComponentStatus.OK))
    log.publish(chain([quote(100, Right.CALL, 1.0)]))
    log.publish(notice("b"))
    assert seqs(drain(notices)) == [2, 5]
    assert seqs(drain(market)) == [1, 4]
    # a resume from the buffer is filtered too
    assert seqs(drain(log.subscribe(from_seq=1, topics=["health"]))) == [3]


def test_unsubscribe() -> None:
    log = make_log()
    sub = log.subscribe(from_seq=1)
    assert log.clients == 1
    sub.unsubscribe()
    sub.unsubscribe()  # twice is harmless
    assert log.clients == 0
    log.publish(tick(1.0))
    assert not sub.items


# ------------------------------------------------------------------ conflation


def test_slow_client_gets_merged_market_but_every_other_event_in_order() -> None:
    log = make_log()
    slow = log.subscribe(from_seq=1)
    lossless = log.subscribe(from_seq=1, lossless=True)
    payloads: list[Payload] = [full_chain(range(95, 106))]
    for i in range(50):
        payloads.append(chain([quote(95 + i % 11, Right(("C", "P")[i % 2]), 1 + i / 10)]))
        payloads.append(tick(100 + i / 10))
        if i % 10 == 9:
            payloads.append(notice(f"n{i}"))
        if i == 25:
            payloads.append(health(ComponentStatus.DEGRADED))
    for p in payloads:
        log.publish(p)

    items = drain(slow)
    # never reordered: non-market events at their own seqs, each merged run between two of them
    assert seqs(items) == list(range(1, log.last_seq + 1))
    non_market = [it for it in items if isinstance(it, Event) and it.topic != "market"]
    assert [it.seq for it in non_market] == [e.seq for e in (ev for ev in log._buffer) if e.topic != "market"]
    merges = [it for it in items if isinstance(it, MarketMerge)]
    assert merges
    assert all(isinstance(it, MarketMerge | SnapshotItem) or it.topic != "market" for it in items)
    assert len(items) == len(merges) + len(non_market)
    assert slow.conflated == log.last_seq - len(items)

    merged_book = book_of(it.payload() if isinstance(it, MarketMerge) else it.payload for it in items)  # type: ignore[union-attr]
    assert merged_book == book_of(payloads)

    # the lossless client got every event, one by one
    all_items = drain(lossless)
    assert [type(i) for i in all_items] == [Event] * log.last_seq
    assert lossless.conflated == 0


def test_merge_across_strike_removal_and_return_gives_same_book() -> None:
    log = make_log()
    sub = log.subscribe(from_seq=1)
    payloads: list[Payload] = [
        full_chain([99, 100, 101]),
        chain(removed=[101]),
        chain([quote(101, Right.CALL, 7.0)]),  # back, but only the call so far
        chain([quote(99, Right.PUT, 0.2)], removed=[100]),
        chain([quote(100, Right.PUT, 3.0)]),
    ]
    for p in payloads:
        log.publish(p)
    items = drain(sub)
    assert len(items) == 1
    assert isinstance(items[0], MarketMerge)
    assert (items[0].first_seq, items[0].seq) == (1, 5)
    merged = book_of([items[0].payload()])
    assert merged.quotes == book_of(payloads).quotes
    assert merged.quotes == log.state.book.quotes


def test_merge_of_partial_updates_on_a_known_book() -> None:
    log = make_log()
    sub = log.subscribe(from_seq=1)
    log.publish(full_chain([99, 100, 101]))
    client = FoldingClient()
    for it in drain(sub):
        client.take(it)
    log.publish(chain(removed=[101]))
    log.publish(chain([quote(101, Right.PUT, 0.1)]))
    log.publish(tick(100.5))
    log.publish(chain([quote(99, Right.CALL, 2.0)], underlying=100.4))
    for it in drain(sub):
        client.take(it)
    assert client.state.book.quotes == log.state.book.quotes
    assert comparable(client.state.snapshot()) == comparable(log.snapshot())


def test_chain_of_another_expiry_is_not_merged_into_the_run() -> None:
    log = make_log()
    sub = log.subscribe(from_seq=1)
    log.publish(full_chain([100]))
    log.publish(tick(100.1))
    log.publish(chain([quote(100, Right.CALL, 1.0)], full=True, expiry="20260318"))
    items = drain(sub)
    assert [(type(i), seqs([i])) for i in items] == [(MarketMerge, [1, 2]), (Event, [3])]


def test_ticks_only_run_merges_into_latest_tick() -> None:
    log = make_log()
    sub = log.subscribe(from_seq=1)
    for i in range(5):
        log.publish(tick(100 + i))
    (item,) = drain(sub)
    assert isinstance(item, MarketMerge)
    assert item.payload() == tick(104)


def test_overflow_closes_with_reason_others_unaffected() -> None:
    log = make_log(max_pending=10)
    slow = log.subscribe(from_seq=1, name="slow")
    slow_lossless = log.subscribe(from_seq=1, lossless=True, name="recorder")
    fast = log.subscribe(from_seq=1, name="fast")
    got: list[QueueItem] = []
    for i in range(30):
        log.publish(notice(f"n{i}"))
        log.publish(tick(100 + i))
        got.extend(drain(fast))
    assert slow.closed_reason is not None
    assert "too slow" in slow.closed_reason
    assert "from_seq=1" in slow.closed_reason
    assert slow_lossless.closed_reason is not None
    assert not slow.items
    assert asyncio.run(slow.next_batch()) == []
    assert fast.closed_reason is None
    assert seqs(got) == list(range(1, 61))
    # the cut client resumes: too far behind for its queue, so it starts again from a snapshot
    slow.unsubscribe()
    again = log.subscribe(from_seq=1)
    assert [type(i) for i in drain(again)] == [SnapshotItem]
    # one that is only a little behind resumes from the buffer
    near = log.subscribe(from_seq=55, lossless=True)
    assert seqs(drain(near)) == [55, 56, 57, 58, 59, 60]
    assert log.clients == 4


def test_resume_far_behind_gets_snapshot_not_overflow() -> None:
    log = make_log(buffer_size=1000, max_pending=10)
    for i in range(50):
        log.publish(notice(f"n{i}"))
    sub = log.subscribe(from_seq=5, lossless=True)
    items = drain(sub)
    assert [type(i) for i in items] == [SnapshotItem]
    assert sub.closed_reason is None


async def test_next_batch_waits_for_publish() -> None:
    log = make_log()
    sub = log.subscribe(from_seq=1)
    waiter = asyncio.create_task(sub.next_batch())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    log.publish(notice("x"))
    batch = await asyncio.wait_for(waiter, 1.0)
    assert seqs(batch) == [1]
    assert sub.delivered_seq == 1
    closer = asyncio.create_task(sub.next_batch())
    await asyncio.sleep(0.01)
    sub.close("bye")
    assert await asyncio.wait_for(closer, 1.0) == []


# ------------------------------------------------------------------ randomised disconnects

STRIKES = [98.0, 99.0, 100.0, 101.0, 102.0]


def random_market(rng: random.Random) -> Payload:
    r = rng.random()
    if r < 0.3:
        return tick(round(100 + rng.uniform(-2, 2), 2))
    if r < 0.35:
        return full_chain(rng.sample(STRIKES, 3), bid=rng.uniform(0.5, 3))
    if r < 0.38:
        return chain([quote(100, Right.CALL, 1.0)], full=True, expiry=rng.choice(["20260317", "20260318"]))
    removed = rng.sample(STRIKES, rng.choice([0, 0, 0, 1, 2]))
    quotes = [
        quote(rng.choice(STRIKES), rng.choice(list(Right)), round(rng.uniform(0.1, 5), 2))
        for _ in range(rng.randint(0, 4))
    ]
    und = rng.choice([math.nan, round(100 + rng.uniform(-1, 1), 2)])
    return chain(quotes, removed=removed, underlying=und)


def run_disconnect_scenario(seed: int, ops: int, buffer_size: int, max_pending: int) -> None:
    rng = random.Random(seed)
    log = make_log(buffer_size=buffer_size, max_pending=max_pending)
    client = FoldingClient()
    lossless = rng.random() < 0.3
    sub = log.subscribe(from_seq=0, lossless=lossless)
    for _ in range(ops):
        op = rng.random()
        if op < 0.55:
            log.publish(random_market(rng))
        elif op < 0.65:
            log.publish(notice(f"n{rng.randint(0, 10**6)}"))
        elif op < 0.7:
            log.publish(health(rng.choice(list(ComponentStatus))))
        elif op < 0.9:
            if sub.items:
                batch = asyncio.run(sub.next_batch(rng.randint(1, 5)))
                for it in batch:
                    client.take(it)
        else:
            sub.unsubscribe()
            sub = log.subscribe(from_seq=client.last + 1, lossless=lossless)
        if sub.closed_reason is not None:  # cut for being too slow: reconnect, as a client would
            sub.unsubscribe()
            sub = log.subscribe(from_seq=client.last + 1, lossless=lossless)
    while sub.items:
        for it in asyncio.run(sub.next_batch(rng.randint(1, 50))):
            client.take(it)
    assert client.last == log.last_seq
    assert len(client.seen) == len(set(client.seen)), "a seq was delivered twice"
    assert comparable(client.state.snapshot()) == comparable(log.snapshot())
    assert log.clients == 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    ops=st.integers(1, 300),
    buffer_size=st.sampled_from([1, 5, 30, 1000]),
    max_pending=st.sampled_from([3, 10, 1000]),
)
def test_randomised_disconnects_never_gap_or_duplicate(
    seed: int, ops: int, buffer_size: int, max_pending: int
) -> None:
    run_disconnect_scenario(seed, ops, buffer_size, max_pending)
