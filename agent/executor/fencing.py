"""Fencing: what lets the order path ask "may I still send?" without knowing how leadership is decided.

Three layers keep a second executor from trading, each covering what the one before cannot:

1. **Leader election** (:mod:`agent.executor.lease`, a Kubernetes Lease). A leader that cannot renew
   stops leading before its lease can expire for anyone else, and :meth:`Fence.fence` turns false at
   that moment, so it is checked before every send. Election alone is not fencing: a process paused
   (GC, SIGSTOP, a stalled VM) between the check and the send still believes it leads.
2. **The lease epoch in the journal.** The epoch (the Lease's ``leaseTransitions``, strictly higher for
   every new term) is stamped on each :class:`~agent.executor.orders.OrderIntent`, and
   :meth:`Journal.record_intent <agent.executor.journal.Journal.record_intent>` refuses an intent
   whose epoch is older than one already journaled (:class:`~agent.executor.journal.StaleEpochError`).
3. **The broker's own exclusivity.** The executor connects to IB with a fixed client id; IB refuses a
   second connection with that id (error 326), so a deposed leader that is still connected is cut off
   when the new leader connects.

Local mode (no cluster) has no elector: the journal's ``flock`` already makes a second executor on the
same journal refuse to start, and intents carry epoch 0. There is nothing to fence against on one host.

The order path uses it like this (one call before the intent is built, one right before the send)::

    epoch = fence.fence()                     # NotLeaderError: deny, do not journal
    intent = build(cid, lease_epoch=epoch)
    journal.record_intent(intent)             # StaleEpochError: a newer leader has traded
    fence.fence(expect=epoch)                 # still leading, and in the same term
    await broker.submit(intent)
"""

from __future__ import annotations

from typing import Protocol


class NotLeaderError(RuntimeError):
    """This executor is not (or no longer) the active one: it must not send orders."""


class Fence(Protocol):
    """The order path's view of leadership."""

    def is_leader_now(self) -> bool:
        """True only while this executor leads and its last renewal is within the renew deadline."""
        ...

    def fence(self, expect: int | None = None) -> int:
        """The epoch of the current term; raises :class:`NotLeaderError` when not leading now, or
        when ``expect`` is given and the term has changed since."""
        ...
