"""One active executor: leader election on a Kubernetes Lease (``coordination.k8s.io/v1``).

The algorithm is client-go's ``leaderelection`` (LeaseLock), run as an asyncio task:

* **Acquire.** Every ``retry_period`` plus up to 1.2 more of it (client-go's jitter), read the Lease. It
  is ours to take when it does not exist (create it), has no holder (released), names us, or has
  expired. Expiry is judged on *our* monotonic clock: the holder's lease runs ``lease_duration`` from
  the moment we last saw the record change, never from the ``renewTime`` written by another machine's
  clock. Taking it over writes ``leaseTransitions + 1``.
* **Renew.** The leader rewrites ``renewTime`` every ``retry_period`` (straight to a PUT with the
  ``resourceVersion`` it last wrote; a 409 falls back to read-then-write). Writes are optimistic:
  ``replace`` carries the ``resourceVersion`` read, and the API server answers 409 Conflict when
  someone else wrote in between, so two candidates can never both win the same version.
* **Step down.** A leader whose last successful renewal is ``renew_deadline`` old stops leading
  (:meth:`LeaderElector.is_leader_now` turns false at that instant, then ``on_stopped_leading`` runs)
  and goes back to being a standby. The renewal time is taken *before* the request is sent, and a
  standby starts its ``lease_duration`` no earlier than when the write landed, so with
  ``renew_deadline < lease_duration`` the old leader has stopped at least
  ``lease_duration - renew_deadline`` before anyone else can take over.
* **Release.** When the task is cancelled while leading, it stops leading first and then writes an
  empty holder, so a standby takes over within a retry period instead of a lease duration. A process
  killed outright cannot release; its lease simply expires.

**Epoch.** ``leaseTransitions`` after our acquisition is the epoch of our term. Every acquisition from
standby is a transition (even re-acquiring a lease that still names us), so epochs strictly increase
from term to term. The executor stamps it on each intent and the journal refuses older epochs (see
:mod:`agent.executor.fencing`). If the Lease object is deleted, creation starts again from
``epoch_floor``: pass the journal's highest epoch + 1 so a recreated Lease cannot go backwards.

**Identity** must be unique per process (for example the pod name and a random suffix), because a
candidate treats a Lease naming itself as its own.

**Threads.** The official client is synchronous. Each call runs in this elector's own small thread
pool (so a busy default executor elsewhere in the agent cannot delay a renewal) under
``asyncio.wait_for`` and the client's own request timeout; a call that overruns counts as failed (if
its write lands later, it only makes others wait longer, which is the safe direction).

**Local mode** (no cluster) uses no elector: the journal's file lock admits one executor per journal.

The ``lease_duration`` written to the Lease is whole seconds (rounded up); a standby honours the larger
of its own setting and the Lease's, so replicas with mismatched settings stay safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final, Protocol, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from agent.executor.fencing import NotLeaderError

log = logging.getLogger(__name__)

JITTER_FACTOR: Final = 1.2  # client-go's leaderelection.JitterFactor

_T = TypeVar("_T")

# kubernetes.config is the one untyped corner of the client used here: give it its type once.
_load_incluster_config: Callable[..., None] = k8s_config.load_incluster_config


class LeaseError(RuntimeError):
    """A Lease call failed (network, timeout, server error); the elector retries on its schedule."""


class LeaseConflictError(LeaseError):
    """409: the Lease changed since we read it (optimistic concurrency), or it already exists."""


# ---------------------------------------------------------------- settings and records


@dataclass(frozen=True, slots=True)
class LeaseTimings:
    """client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.

    ``request_timeout`` bounds one API call (default: half the renew deadline, at most 5 s); a leader
    never lets a call run past its renew deadline either way.
    """

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    request_timeout: float | None = None

    def __post_init__(self) -> None:
        if min(self.lease_duration, self.renew_deadline, self.retry_period) <= 0:
            raise ValueError("lease timings must be positive")
        if self.lease_duration <= self.renew_deadline:
            raise ValueError(
                f"lease duration ({self.lease_duration} s) must exceed the renew deadline "
                f"({self.renew_deadline} s): a leader has to stop before its lease can expire elsewhere"
            )
        if self.renew_deadline <= JITTER_FACTOR * self.retry_period:
            raise ValueError(
                f"renew deadline ({self.renew_deadline} s) must exceed {JITTER_FACTOR} x the retry period "
                f"({self.retry_period} s), or a leader gets too few tries to renew"
            )
        if self.request_timeout is not None and not 0 < self.request_timeout <= self.renew_deadline:
            raise ValueError(
                f"request timeout ({self.request_timeout} s) must be positive and at most the renew "
                f"deadline ({self.renew_deadline} s)"
            )

    @property
    def call_timeout(self) -> float:
        if self.request_timeout is not None:
            return self.request_timeout
        return min(5.0, self.renew_deadline / 2)

    @property
    def lease_duration_seconds(self) -> int:
        """What goes into ``spec.leaseDurationSeconds`` (an integer field): rounded up, never less."""
        return max(1, math.ceil(self.lease_duration))


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The Lease's spec as the elector sees it, plus the ``resourceVersion`` it was read at."""

    holder: str  # "" when released or never held
    lease_duration_s: int
    transitions: int
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    resource_version: str = ""


class LeaseStore(Protocol):
    """Blocking access to one Lease (the elector runs it in threads). Errors are :class:`LeaseError`."""

    def get(self, timeout: float) -> LeaseRecord | None:
        """The Lease, or None when it does not exist."""
        ...

    def create(self, record: LeaseRecord, timeout: float) -> LeaseRecord:
        """Create it; :class:`LeaseConflictError` when it already exists."""
        ...

    def update(self, record: LeaseRecord, timeout: float) -> LeaseRecord:
        """Replace it at ``record.resource_version``; :class:`LeaseConflictError` when that is stale."""
        ...


# ---------------------------------------------------------------- the Kubernetes adapter


class KubeLeaseStore:
    """:class:`LeaseStore` over the official client's ``CoordinationV1Api`` (the only module that
    touches Kubernetes types)."""

    def __init__(self, api: k8s.CoordinationV1Api, namespace: str, name: str) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self._meta_lock = threading.Lock()
        self._meta: k8s.V1ObjectMeta | None = None  # metadata last seen, kept across replaces

    @classmethod
    def connect(
        cls,
        namespace: str,
        name: str,
        identity: str,
        configuration: k8s.Configuration | None = None,
    ) -> KubeLeaseStore:
        """A store for Lease ``namespace/name``; in-cluster credentials unless ``configuration`` is given.

        The client's own retries are turned off (the elector retries on its schedule, and a retried
        call could outlive a renew deadline); the user agent names ``identity`` for the API server's
        audit log.
        """
        if configuration is None:
            configuration = k8s.Configuration()
            try:
                _load_incluster_config(client_configuration=configuration)
            except ConfigException as err:
                raise LeaseError(
                    f"cannot reach the Kubernetes API from here ({err}). Leader election runs only in "
                    f"the cluster; outside it run a single executor (its journal's file lock keeps it "
                    f"the only one)"
                ) from None
        configuration.retries = False
        api_client = k8s.ApiClient(configuration)
        api_client.user_agent = f"spyops-executor ({identity})"
        return cls(k8s.CoordinationV1Api(api_client), namespace, name)

    def get(self, timeout: float) -> LeaseRecord | None:
        try:
            lease = self._call(
                "read",
                lambda: self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=timeout),
            )
        except _NotFoundError:
            return None
        return self._record(lease)

    def create(self, record: LeaseRecord, timeout: float) -> LeaseRecord:
        body = self._lease(replace(record, resource_version=""))
        lease = self._call(
            "create",
            lambda: self.api.create_namespaced_lease(self.namespace, body, _request_timeout=timeout),
        )
        return self._record(lease)

    def update(self, record: LeaseRecord, timeout: float) -> LeaseRecord:
        if not record.resource_version:
            raise ValueError("a Lease update needs the resourceVersion it was read at")
        body = self._lease(record)
        lease = self._call(
            "replace",
            lambda: self.api.replace_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=timeout
            ),
        )
        return self._record(lease)

    # ------------------------------------------------------------- translation

    def _call(self, what: str, call: Callable[[], k8s.V1Lease]) -> k8s.V1Lease:
        where = f"Lease {self.namespace}/{self.name}"
        try:
            return call()
        except ApiException as err:
            status = int(err.status or 0)
            if status == 404:
                raise _NotFoundError(where) from None
            if status == 409:
                raise LeaseConflictError(f"{what} {where}: conflict ({err.reason})") from None
            if status in (401, 403):
                raise LeaseError(
                    f"{what} {where}: HTTP {status} {err.reason}; the executor's ServiceAccount needs "
                    f"get, create and update on leases.coordination.k8s.io in namespace {self.namespace}"
                ) from None
            raise LeaseError(f"{what} {where}: HTTP {status} {err.reason}: {_status_message(err)}") from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise LeaseError(f"{what} {where}: {type(err).__name__}: {err}") from None
        except ValueError as err:  # a response the client could not decode (pydantic validation)
            raise LeaseError(f"{what} {where}: unreadable response: {err}") from None

    def _record(self, lease: k8s.V1Lease) -> LeaseRecord:
        meta = lease.metadata
        with self._meta_lock:
            self._meta = meta
        spec = lease.spec or k8s.V1LeaseSpec()
        return LeaseRecord(
            holder=spec.holder_identity or "",
            lease_duration_s=spec.lease_duration_seconds or 0,
            transitions=spec.lease_transitions or 0,
            acquire_time=spec.acquire_time,
            renew_time=spec.renew_time,
            resource_version=(meta.resource_version if meta is not None else None) or "",
        )

    def _lease(self, record: LeaseRecord) -> k8s.V1Lease:
        # A replace is a whole-object PUT: keep the labels and annotations someone else may have put on
        # the Lease, and change only the spec (as client-go's LeaseLock does).
        with self._meta_lock:
            last = self._meta
        if last is not None and record.resource_version and last.resource_version == record.resource_version:
            meta = last.model_copy()
        else:
            meta = k8s.V1ObjectMeta(
                name=self.name, namespace=self.namespace, resource_version=record.resource_version or None
            )
        return k8s.V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=meta,
            spec=k8s.V1LeaseSpec(
                holder_identity=record.holder or None,
                lease_duration_seconds=record.lease_duration_s or None,
                lease_transitions=record.transitions,
                acquire_time=record.acquire_time,
                renew_time=record.renew_time,
            ),
        )


class _NotFoundError(LeaseError):
    pass


def _status_message(err: ApiException) -> str:
    """The API server's explanation (the ``message`` of its Status body), when it sent one."""
    try:
        body = json.loads(err.body or "{}")
    except ValueError:
        return str(err.body or "")[:200]
    return str(body.get("message", "")) if isinstance(body, dict) else ""


def utc_now_micro() -> datetime:
    """Now in UTC for ``renewTime``/``acquireTime`` (MicroTime).

    The client serializes with ``isoformat()``, which drops the fraction when it is zero, and the API
    server parses MicroTime with exactly six fraction digits: never hand it a whole second.
    """
    now = datetime.now(UTC)
    return now if now.microsecond else now.replace(microsecond=1)


# ---------------------------------------------------------------- the elector


@dataclass(slots=True)
class ElectorStats:
    attempts: int = 0  # acquire-or-renew rounds
    acquisitions: int = 0
    renewals: int = 0
    conflicts: int = 0  # 409s answered to us
    errors: int = 0  # failed calls (network, timeout, server)
    step_downs: int = 0


def _noop_epoch(epoch: int) -> None:
    return None


def _noop() -> None:
    return None


def _noop_leader(identity: str) -> None:
    return None


class LeaderElector:
    """Campaign for the Lease behind ``store`` as ``identity``; :meth:`run` is the asyncio task.

    Callbacks run on the event loop and must be quick: ``on_started_leading(epoch)`` when a term
    begins, ``on_stopped_leading()`` after :meth:`is_leader_now` has turned false, ``on_new_leader(id)``
    when the observed holder changes.
    """

    def __init__(
        self,
        store: LeaseStore,
        identity: str,
        timings: LeaseTimings | None = None,
        *,
        on_started_leading: Callable[[int], None] = _noop_epoch,
        on_stopped_leading: Callable[[], None] = _noop,
        on_new_leader: Callable[[str], None] = _noop_leader,
        release_on_cancel: bool = True,
        epoch_floor: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = utc_now_micro,
        rng: random.Random | None = None,
    ) -> None:
        if not identity:
            raise ValueError("a leader election identity must not be empty")
        self.store = store
        self.identity = identity
        self.timings = timings or LeaseTimings()
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.on_new_leader = on_new_leader
        self.release_on_cancel = release_on_cancel
        self.epoch_floor = epoch_floor
        self.stats = ElectorStats()
        self._clock = clock
        self._wall = wall_clock
        self._rng = rng or random.Random()
        self._term: int | None = None  # epoch of the current term while leading
        self._renewed_at = -math.inf  # monotonic send time of the last successful write while leading
        self._record: LeaseRecord | None = None  # last record observed (read or written)
        self._observed_at = -math.inf  # monotonic time the record last changed under our eyes
        self._leader: str | None = None
        self._pool: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------- the order path's view

    def is_leader_now(self) -> bool:
        """Leading, and the last successful renewal is younger than the renew deadline."""
        return self._term is not None and self._clock() - self._renewed_at < self.timings.renew_deadline

    def fence(self, expect: int | None = None) -> int:
        """The current term's epoch, checked before every send (see :mod:`agent.executor.fencing`)."""
        term = self._term
        if term is None or not self.is_leader_now():
            raise NotLeaderError(f"executor {self.identity} is not the leader: it must not send orders")
        if expect is not None and term != expect:
            raise NotLeaderError(
                f"executor {self.identity} lost leadership since epoch {expect} (now leads epoch {term})"
            )
        return term

    @property
    def epoch(self) -> int | None:
        """The current term's epoch while leading (even past the renew deadline until it steps down)."""
        return self._term

    @property
    def leader(self) -> str | None:
        """The holder last observed on the Lease (None before the first read or when released)."""
        return self._leader

    # ------------------------------------------------------------- the task

    async def run(self) -> None:
        """Campaign, lead, step down, campaign again: until cancelled."""
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"lease-{self.identity}")
        try:
            while True:
                await self._acquire()
                await self._lead()
        except asyncio.CancelledError:
            if self._term is not None:
                self._step_down("elector cancelled")
                if self.release_on_cancel:
                    await self._release()
            raise
        finally:
            if self._term is not None:  # a callback raised: never leave a term dangling
                self._step_down("elector stopped")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def _acquire(self) -> None:
        while not await self._try_acquire_or_renew(deadline=None):
            period = self.timings.retry_period
            await asyncio.sleep(period + self._rng.random() * JITTER_FACTOR * period)

    async def _lead(self) -> None:
        next_try = self._renewed_at + self.timings.retry_period
        while self._term is not None:
            deadline = self._renewed_at + self.timings.renew_deadline
            now = self._clock()
            if now < deadline:
                await asyncio.sleep(max(0.0, min(next_try, deadline) - now))
            if self._clock() >= self._renewed_at + self.timings.renew_deadline:
                self._step_down(
                    f"could not renew the lease within the renew deadline ({self.timings.renew_deadline} s)"
                )
                return
            started = self._clock()
            await self._try_acquire_or_renew(deadline=self._renewed_at + self.timings.renew_deadline)
            next_try = started + self.timings.retry_period

    async def _try_acquire_or_renew(self, deadline: float | None) -> bool:
        """One client-go ``tryAcquireOrRenew`` round; True when we hold the Lease after it."""
        self.stats.attempts += 1
        leading = self._term is not None
        if leading and self._record is not None and self._record.holder == self.identity:
            sent = self._clock()
            try:  # fast path: renew straight from what we last wrote
                written = await self._io(self.store.update, self._renewal(self._record), deadline=deadline)
            except LeaseConflictError as err:
                self.stats.conflicts += 1
                log.info("lease renewal by %s conflicted (%s); reading it again", self.identity, err)
            except LeaseError as err:
                self._failed(err)
                return False
            else:
                self._observe(written, self._clock())
                self._renewed(sent)
                return True

        try:
            current = await self._io(self.store.get, deadline=deadline)
        except LeaseError as err:
            self._failed(err)
            return False
        now = self._clock()
        if current is None:
            fresh = LeaseRecord(
                holder=self.identity,
                lease_duration_s=self.timings.lease_duration_seconds,
                transitions=self.epoch_floor,
                acquire_time=self._wall(),
                renew_time=self._wall(),
            )
            sent = self._clock()
            try:
                written = await self._io(self.store.create, fresh, deadline=deadline)
            except LeaseError as err:
                self._failed(err)
                return False
            self._observe(written, self._clock())
            self._won(sent, written)
            return True

        self._observe(current, now)
        if leading and (current.holder != self.identity or current.transitions != self._term):
            self._step_down(
                f"the lease is now held by {current.holder or 'nobody'} (epoch {current.transitions})"
            )
            return False
        if current.holder and current.holder != self.identity and not self._expired(current, now):
            return False
        wanted = self._renewal(current) if leading else self._takeover(current)
        sent = self._clock()
        try:
            written = await self._io(self.store.update, wanted, deadline=deadline)
        except LeaseError as err:
            self._failed(err)
            return False
        self._observe(written, self._clock())
        if leading:
            self._renewed(sent)
        else:
            self._won(sent, written)
        return True

    async def _release(self) -> None:
        """Best effort: hand the Lease back so a standby need not wait for it to expire."""
        for _ in range(2):
            record = self._record
            if record is None or record.holder != self.identity:
                return
            now = self._wall()
            released = replace(record, holder="", lease_duration_s=1, acquire_time=now, renew_time=now)
            try:
                self._observe(await self._io(self.store.update, released, deadline=None), self._clock())
            except LeaseConflictError:
                with contextlib.suppress(LeaseError):
                    if (current := await self._io(self.store.get, deadline=None)) is not None:
                        self._observe(current, self._clock())
                continue
            except LeaseError as err:
                log.warning("could not release the lease (%s); it expires on its own", err)
                return
            log.info("%s released the lease", self.identity)
            return

    # ------------------------------------------------------------- helpers

    def _renewal(self, current: LeaseRecord) -> LeaseRecord:
        return replace(
            current,
            holder=self.identity,
            lease_duration_s=self.timings.lease_duration_seconds,
            renew_time=self._wall(),
        )

    def _takeover(self, current: LeaseRecord) -> LeaseRecord:
        now = self._wall()
        return replace(
            current,
            holder=self.identity,
            lease_duration_s=self.timings.lease_duration_seconds,
            transitions=max(current.transitions + 1, self.epoch_floor),
            acquire_time=now,
            renew_time=now,
        )

    def _expired(self, record: LeaseRecord, now: float) -> bool:
        duration = max(self.timings.lease_duration, float(record.lease_duration_s))
        return now > self._observed_at + duration

    def _observe(self, record: LeaseRecord, now: float) -> None:
        if self._record is None or record.resource_version != self._record.resource_version:
            self._observed_at = now
        self._record = record
        holder = record.holder or None
        if holder != self._leader:
            self._leader = holder
            if holder is not None:
                log.info("%s sees leader %s (epoch %d)", self.identity, holder, record.transitions)
                self.on_new_leader(holder)

    def _won(self, sent: float, record: LeaseRecord) -> None:
        self._term = record.transitions
        self._renewed_at = sent
        self.stats.acquisitions += 1
        log.warning("%s is now the leader (epoch %d)", self.identity, record.transitions)
        self.on_started_leading(record.transitions)

    def _renewed(self, sent: float) -> None:
        self._renewed_at = sent
        self.stats.renewals += 1

    def _step_down(self, reason: str) -> None:
        epoch = self._term
        self._term = None  # is_leader_now() is false from here on
        self._renewed_at = -math.inf
        self.stats.step_downs += 1
        log.warning("%s stops leading (epoch %s): %s", self.identity, epoch, reason)
        self.on_stopped_leading()

    def _failed(self, err: LeaseError) -> None:
        if isinstance(err, LeaseConflictError):
            self.stats.conflicts += 1
            log.info("%s: %s", self.identity, err)
        else:
            self.stats.errors += 1
            log.warning("%s: %s", self.identity, err)

    async def _io(self, call: Callable[..., _T], *args: object, deadline: float | None) -> _T:
        """Run one blocking store call in our pool, bounded by the call timeout and ``deadline``."""
        timeout = self.timings.call_timeout
        if deadline is not None:
            timeout = min(timeout, deadline - self._clock())
        if timeout <= 0:
            raise LeaseError("no time left before the renew deadline")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, functools.partial(call, *args, timeout))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise LeaseError(f"Lease call timed out after {timeout:.2f} s") from None
