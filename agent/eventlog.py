"""The agent's sequence-numbered event log, its replay buffer, and per-client delivery queues.

Every role publishes here (on the agent's event loop). Each event gets the next ``seq`` (1, 2, ...,
no gaps within one agent incarnation), is folded into ``AgentState`` and kept in a bounded ring
buffer, then offered to every subscribed client.

Client delivery policy (one ``Subscription`` per stream client, never blocking the publisher):

* market data (underlying ticks, chain updates) is **conflated** for a client that is behind: a new
  market event merges into the market item at the tail of that client's queue, so the client gets one
  envelope carrying ``first_seq..seq`` with the latest quote of every contract that changed. Merging
  only at the tail keeps the order of everything else: a chain update never jumps over a signal.
* everything else (signals, orders, fills, positions, risk, notices, audit) is **never dropped**.
* a queue that still grows past ``max_pending`` items (or a ``lossless`` client, which is never
  conflated, that falls that far behind) is **closed with a reason**; the client reconnects with its
  last seq + 1 and resumes from the ring buffer, or from a fresh snapshot if it fell out of it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from agent.domain import TOPICS, ChainUpdate, OptionQuote, Right, UnderlyingTick
from agent.events import Payload, topic_of
from agent.state import AgentState, Snapshot

log = logging.getLogger(__name__)

DEFAULT_BUFFER = 20_000
DEFAULT_MAX_PENDING = 5_000


class StreamRequestError(ValueError):
    """A stream request the log cannot serve (bad topic, negative or future seq)."""


@dataclass(slots=True)
class Event:
    seq: int
    ts_ns: int
    wall_ns: int
    topic: str
    payload: Payload
    wire: bytes | None = None  # the encoded envelope, filled once by the transport edge


@dataclass(slots=True)
class MarketMerge:
    """Several consecutive market events conflated for one slow client (``first_seq..seq``)."""

    first_seq: int
    seq: int
    ts_ns: int
    wall_ns: int
    chain_head: ChainUpdate | None = None  # symbol/expiry/multiplier of the run's chain updates
    full: bool = False
    quotes: dict[tuple[float, Right], OptionQuote] = field(default_factory=dict)
    removed: set[float] = field(default_factory=set)
    underlying: float = math.nan
    tick: UnderlyingTick | None = None

    @classmethod
    def start(cls, ev: Event) -> MarketMerge:
        m = cls(first_seq=ev.seq, seq=ev.seq, ts_ns=ev.ts_ns, wall_ns=ev.wall_ns)
        m.add(ev)
        return m

    def can_take(self, ev: Event) -> bool:
        p = ev.payload
        return not (
            isinstance(p, ChainUpdate) and self.chain_head is not None and p.expiry != self.chain_head.expiry
        )

    def add(self, ev: Event) -> None:
        self.seq, self.ts_ns, self.wall_ns = ev.seq, ev.ts_ns, ev.wall_ns
        p = ev.payload
        if isinstance(p, UnderlyingTick):
            self.tick = p
            self.underlying = p.last
        elif isinstance(p, ChainUpdate):
            self.chain_head = p
            if p.full:
                self.full = True
                self.quotes.clear()
                self.removed.clear()
            for strike in p.removed_strikes:
                self.quotes.pop((strike, Right.CALL), None)
                self.quotes.pop((strike, Right.PUT), None)
                self.removed.add(strike)
            # a strike that left the window stays in ``removed`` even when some of its quotes come
            # back later in the run: removals apply before quotes, so the other right (not re-sent)
            # must still be dropped, exactly as applying every update one by one would
            for q in p.quotes:
                self.quotes[q.key] = q
            if p.underlying_tick is not None:
                self.tick = p.underlying_tick
            if math.isfinite(p.underlying):
                self.underlying = p.underlying

    def payload(self) -> Payload:
        """One payload standing for the whole run."""
        if self.chain_head is None:
            assert self.tick is not None
            return self.tick
        return replace(
            self.chain_head,
            quotes=tuple(sorted(self.quotes.values(), key=lambda q: (q.strike, q.right is Right.PUT))),
            full=self.full,
            removed_strikes=tuple(sorted(self.removed)),
            underlying=self.underlying,
            underlying_tick=self.tick,
        )


@dataclass(frozen=True, slots=True)
class SnapshotItem:
    snapshot: Snapshot


QueueItem = Event | MarketMerge | SnapshotItem


class Subscription:
    """One stream client's delivery queue. Filled by the log, drained by the transport."""

    def __init__(
        self, log_: EventLog, topics: frozenset[str], lossless: bool, max_pending: int, name: str
    ) -> None:
        self._log = log_
        self.topics = topics
        self.lossless = lossless
        self.max_pending = max_pending
        self.name = name
        self.items: deque[QueueItem] = deque()
        self.closed_reason: str | None = None
        self._wakeup = asyncio.Event()
        self.conflated = 0  # market events merged away for this client
        self.delivered_seq = 0

    def offer(self, ev: Event) -> None:
        if self.closed_reason is not None or ev.topic not in self.topics:
            return
        if ev.topic == "market" and not self.lossless and self.items:
            tail = self.items[-1]
            if isinstance(tail, MarketMerge) and tail.can_take(ev):
                tail.add(ev)
                self.conflated += 1
                return
            if isinstance(tail, Event) and tail.topic == "market":
                merge = MarketMerge.start(tail)
                if merge.can_take(ev):
                    merge.add(ev)
                    self.items[-1] = merge
                    self.conflated += 1
                    return
        if len(self.items) >= self.max_pending:
            self.close(
                f"client too slow: {len(self.items)} undelivered events; reconnect with from_seq="
                f"{self.delivered_seq + 1} to resume"
            )
            return
        self.items.append(ev)
        self._wakeup.set()

    def push_snapshot(self, snap: Snapshot) -> None:
        self.items.append(SnapshotItem(snap))
        self._wakeup.set()

    def close(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
            self.items.clear()
            log.warning("closing stream client %s: %s", self.name, reason)
        self._wakeup.set()

    async def next_batch(self, max_items: int = 256) -> list[QueueItem]:
        """Wait for items and take up to ``max_items`` of them; [] once the subscription is closed."""
        while not self.items:
            if self.closed_reason is not None:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()
        if self.closed_reason is not None:
            return []
        batch = [self.items.popleft() for _ in range(min(max_items, len(self.items)))]
        last = batch[-1]
        self.delivered_seq = last.snapshot.as_of_seq if isinstance(last, SnapshotItem) else last.seq
        return batch

    def unsubscribe(self) -> None:
        self._log.unsubscribe(self)


class EventLog:
    def __init__(
        self,
        agent_id: str,
        incarnation: str,
        clock_ns: Callable[[], int] = time.time_ns,
        buffer_size: int = DEFAULT_BUFFER,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be >= 1")
        self.agent_id = agent_id
        self.incarnation = incarnation
        self._clock_ns = clock_ns
        self._buffer: deque[Event] = deque(maxlen=buffer_size)
        self._subs: list[Subscription] = []
        self._seq = 0
        self.max_pending = max_pending
        self.state = AgentState(agent_id=agent_id, incarnation=incarnation)
        self._listeners: list[Callable[[Event], None]] = []

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def oldest_seq(self) -> int:
        """Oldest seq still replayable (last_seq + 1 when nothing was published yet)."""
        return self._buffer[0].seq if self._buffer else self._seq + 1

    @property
    def clients(self) -> int:
        return len(self._subs)

    def subscriptions(self) -> tuple[Subscription, ...]:
        return tuple(self._subs)

    def publish(self, payload: Payload, ts_ns: int | None = None) -> Event:
        """Append one event and hand it to every client. Must run on the agent's event loop."""
        self._seq += 1
        ev = Event(
            seq=self._seq,
            ts_ns=self._clock_ns() if ts_ns is None else ts_ns,
            wall_ns=time.time_ns(),
            topic=topic_of(payload),
            payload=payload,
        )
        self.state.apply(ev.seq, ev.ts_ns, payload)
        self._buffer.append(ev)
        for sub in self._subs:
            sub.offer(ev)
        for listener in self._listeners:
            listener(ev)
        return ev

    def publish_all(self, payloads: Iterable[Payload], ts_ns: int | None = None) -> None:
        for p in payloads:
            self.publish(p, ts_ns)

    def add_listener(self, fn: Callable[[Event], None]) -> None:
        """In-process consumers (e.g. the detector role) called synchronously after each publish."""
        self._listeners.append(fn)

    def snapshot(self) -> Snapshot:
        return self.state.snapshot()

    def subscribe(
        self,
        from_seq: int = 0,
        topics: Iterable[str] = (),
        incarnation: str = "",
        lossless: bool = False,
        name: str = "client",
    ) -> Subscription:
        """Register a client: replay from ``from_seq`` (or a snapshot), then live events.

        ``from_seq`` 0 or a seq older than the buffer or another incarnation: snapshot first. A seq
        beyond ``last_seq + 1`` or below 0 is an error, as is an unknown topic.
        """
        wanted = frozenset(topics) or frozenset(TOPICS)
        unknown = sorted(wanted - set(TOPICS))
        if unknown:
            raise StreamRequestError(
                f"unknown topic(s) {', '.join(unknown)}; valid topics: {', '.join(TOPICS)}"
            )
        if from_seq < 0:
            raise StreamRequestError(f"from_seq must be >= 0, got {from_seq}")
        same_run = not incarnation or incarnation == self.incarnation
        if same_run and from_seq > self._seq + 1:
            raise StreamRequestError(
                f"from_seq {from_seq} is in the future: the last event is {self._seq} "
                f"(incarnation {self.incarnation})"
            )
        sub = Subscription(self, wanted, lossless, self.max_pending, name)
        too_far_behind = self._seq - from_seq + 1 > self.max_pending
        if from_seq == 0 or not same_run or from_seq < self.oldest_seq or too_far_behind:
            sub.push_snapshot(self.snapshot())
        else:
            start = from_seq - self.oldest_seq
            for ev in itertools.islice(self._buffer, start, None):
                sub.offer(ev)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
