"""Orders through IB: the executor's :class:`~agent.executor.broker.Broker` on an ``ib_async`` connection.

Orders carry the client order id in ``orderRef``: it is how IB's open orders, completed orders and
executions are matched to the journal, whatever client id or process placed them. Only orders whose
``orderRef`` is exactly one of this executor's client order ids (``<prefix>-<YYYYMMDD>-<seq>``, of
today's session when ``session_date`` is given) are considered ours: not another executor's whose prefix
starts like ours, not a hand-typed orderRef, not yesterday's (TWS may list several days of executions).
An intent whose id IB already has for a *different* order (two executors on one prefix, a journal
restarted mid-day) is refused with an error notice, and that order's reports are never booked to it.

What ``ib_async`` does not do, and this adapter does:

* it keeps fills in memory only and forgets everything on a disconnect: every execution is turned into
  a :class:`~agent.executor.orders.Fill` keyed by IB's ``execId`` (a repeat is never reported twice by
  this adapter, and the journal's unique index drops any that comes back after a restart);
* it marks an order cancelled locally on any non-warning error: here an order ends only on broker
  evidence, i.e. the server's own ``orderStatus`` / ``openOrder`` / ``completedOrder`` messages
  (Cancelled, ApiCancelled, Inactive), or the server's open and completed orders read after a
  reconnect or an error; an error on an order (201 "rejected" included: IB has been seen to work an
  order after it) is a notice and a re-read of the server's orders, which settles it (an order IB does
  not list after a 201 is rejected), and warnings 2100-2169 are only logged;
* it neither reconnects nor reconciles: after every reconnect this adapter reads all open orders,
  completed orders and executions, reports what it missed (acks, fills, closes), and closes as rejected
  an order it had sent that the server does not know at all (lost with the socket: never resent);
  after 1101/1102 (the Gateway's link to IB back) it re-reads them too, and after either it sends again
  a cancel that IB has not answered while it still lists the order open (lost in the gap).

Malformed server values (a NaN or fractional quantity, a NaN price, an unreadable position) are never
booked and never raise: each is an error notice (``broker.bad_execution``, ``broker.bad_position``).

The raw server messages are observed by wrapping ``ib_async``'s wrapper methods (``orderStatus``,
``openOrder``, ``completedOrder``, ``execDetails``, ``commissionReport``): the wrapper still does its own
bookkeeping first; this adapter only reads what the server said.

Also: an order is not sent while the Gateway has lost IB (1100) or while a leg's quote is still stale
from a connectivity gap (the feed keeps that set on the shared connection): it is closed as rejected,
"not sent", with the reason. Open orders placed under another client id (the Gateway handed out a new
one after a reconnect, 326) get no live updates here, so IB's orders and executions are polled until
they are done. An order submitted while disconnected is closed as rejected, not queued: by the time the
connection is back its prices are gone.

A fill waits up to ``commission_wait_s`` for its commission report (IB sends it right after the
execution); if none comes it is reported with zero commission and a warning, and a commission that
arrives later is reported as a :class:`~agent.executor.orders.CommissionCorrected` (once per
execution: IB repeats commission reports, e.g. with every executions request, and a repeat is ignored)
plus a ``broker.late_commission`` notice. A commission that came while this process was not running is
corrected by the reconciliation on start, from the commissions of ``executions()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from ib_async import ComboLeg, Contract, LimitOrder, Option

from agent.domain import NoticeLevel, Right
from agent.executor.broker import BrokerError, BrokerOrder, BrokerPosition
from agent.executor.orders import (
    CancelRejected,
    CommissionCorrected,
    Fill,
    OrderAccepted,
    OrderCancelled,
    OrderFilled,
    OrderIntent,
    OrderRejected,
    OrderReport,
    OrderState,
    Side,
)
from agent.executor.orders import Contract as OptionContract
from agent.ib.connection import IBConnection, is_warning
from agent.settings import IBSettings

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 15.0
FOREIGN_POLL_S = 2.0
VERIFY_DELAY_S = 0.5

ACCEPTED: Final = frozenset({"PreSubmitted", "Submitted"})
CANCELLED: Final = frozenset({"Cancelled", "ApiCancelled"})
INACTIVE: Final = "Inactive"
OPEN_STATES: Final = frozenset(
    {
        "PendingSubmit",
        "ApiPending",
        "PreSubmitted",
        "Submitted",
        "PendingCancel",
        "ValidationError",
        "ApiUpdate",
    }
)
REJECTED_CODE = 201
CANCEL_PROBLEMS: Final = frozenset({161, 10147, 10148, 10149})
CANCEL_CONFIRMED = 202

IntentLookup = Callable[[str], OrderIntent | None]


@dataclass
class _Known:
    """What we know about one of our orders at IB."""

    cid: str
    order_id: int = 0
    client_id: int = -1
    perm_id: int = 0
    status: str = ""
    filled: float = 0.0
    quantity: float = 0.0
    reason: str = ""
    sent_here: bool = False
    acked: bool = False
    closed: bool = False
    seen_at_server: bool = False
    cancel_sent: bool = False  # a cancel went out and no final status has come back yet
    rejected_by: str = ""  # the text of an error 201, until IB's book confirms the rejection
    action: str = ""  # BUY/SELL as IB lists the order
    limit: float = math.nan  # its limit price as IB lists it


def ib_side(text: str) -> Side:
    t = text.strip().upper()
    if t in ("BOT", "BUY"):
        return Side.BUY
    if t in ("SLD", "SELL", "SSHORT"):
        return Side.SELL
    raise ValueError(f"unknown execution side {text!r}")


def state_of(status: str, any_filled: bool) -> OrderState:
    """An IB order status as the executor's order state."""
    if status == "Filled":
        return OrderState.FILLED
    if status in CANCELLED:
        return OrderState.CANCELLED
    if status == INACTIVE:
        return OrderState.REJECTED
    if status == "PendingCancel":
        return OrderState.PENDING_CANCEL
    return OrderState.PARTIALLY_FILLED if any_filled else OrderState.WORKING


def _money(x: float) -> Decimal:
    try:
        d = Decimal(repr(float(x)))
    except (InvalidOperation, ValueError, TypeError):
        return Decimal(0)
    return d if d.is_finite() and abs(d) < Decimal("1e12") else Decimal(0)


def _num(x: Any) -> float:
    """A number IB sent (NaN when it is none: a malformed field never stops a status from counting)."""
    try:
        return float(x)
    except (ValueError, TypeError):
        return math.nan


def _whole(x: Any) -> int:
    """A quantity IB sent as a whole number of contracts (0 when it is not a finite number)."""
    try:
        v = float(x)
    except (ValueError, TypeError):
        return 0
    return round(v) if math.isfinite(v) and abs(v) < 1e12 else 0


class IBBroker:
    """See the module docstring. Implements :class:`agent.executor.broker.Broker`."""

    def __init__(
        self,
        conn: IBConnection,
        settings: IBSettings,
        *,
        clock_ns: Callable[[], int],
        order_ref_prefix: str,
        intents: IntentLookup | None = None,
        session_date: str | None = None,
    ) -> None:
        self.conn = conn
        self.ib: Any = conn.ib
        self.settings = settings
        self.clock_ns = clock_ns
        self.prefix = order_ref_prefix + "-"
        # exactly our client order ids (prefix-YYYYMMDD-seq), of today's session when it is known: another
        # executor whose prefix merely starts like ours, a hand-typed orderRef, or yesterday's orders and
        # executions (TWS can list several days of trades) are not ours to reconcile
        day = re.escape(session_date) if session_date else r"\d{8}"
        self._ours = re.compile(re.escape(order_ref_prefix) + "-" + day + r"-\d+")
        self._late_commission: set[str] = set()  # executions booked with 0 commission, not yet corrected
        self._lookup = intents
        self._intents: dict[str, OrderIntent] = {}
        self.known: dict[str, _Known] = {}
        self._by_order: dict[tuple[int, int], str] = {}
        self._by_perm: dict[int, str] = {}
        self._commissions: dict[str, float] = {}
        self._pending_fills: dict[str, tuple[Any, Any, asyncio.TimerHandle | None]] = {}
        self.reported_execs: set[str] = set()
        self._exec_orders: dict[str, str] = {}  # exec id -> client order id of the fills reported
        self._out: deque[OrderReport] = deque()
        self._wake = asyncio.Event()
        self._synced = asyncio.Event()
        self._verify_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Future[None] | None = None
        self._suspects: set[str] = set()
        self._collided: set[str] = set()
        self._sending: set[str] = set()  # submits between their duplicate check and placeOrder
        self.submits = 0
        self.duplicate_submits = 0
        conn.callbacks.connected.append(self._on_connected)
        conn.callbacks.disconnected.append(self._on_disconnected)
        conn.callbacks.error.append(self._on_error)
        conn.callbacks.restored.append(self._on_restored)
        self._install_taps()

    # ------------------------------------------------------------- plumbing

    def _install_taps(self) -> None:
        w = self.ib.wrapper
        taps = {
            "orderStatus": self._tap_status,
            "openOrder": self._tap_open_order,
            "completedOrder": self._tap_completed,
            "execDetails": self._tap_exec,
            "commissionReport": self._tap_commission,
        }
        for name, after in taps.items():
            original = getattr(w, name)

            def hooked(*args: Any, _original: Any = original, _after: Any = after) -> None:
                _original(*args)
                try:
                    _after(*args)
                except Exception:  # never break ib_async's dispatch
                    log.exception("IB broker: handling %s failed", _after.__name__)

            setattr(w, name, hooked)

    def _emit(self, report: OrderReport, *, force: bool = False) -> None:
        if report.client_order_id in self._collided and not force:
            return  # IB's reports under this orderRef are another order's: never booked to our intent
        self._out.append(report)
        self._wake.set()

    def pump(self) -> list[OrderReport]:
        """Every report received since the last call (the executor role polls this)."""
        out = list(self._out)
        self._out.clear()
        return out

    async def reports(self) -> AsyncIterator[OrderReport]:
        while True:
            while self._out:
                yield self._out.popleft()
            self._wake.clear()
            await self._wake.wait()

    def on_quotes(self, update: object) -> None:
        """IB matches orders itself: the executor's quotes are not needed here."""

    def ours(self, ref: object) -> bool:
        return isinstance(ref, str) and self._ours.fullmatch(ref) is not None

    def _intent(self, cid: str) -> OrderIntent | None:
        intent = self._intents.get(cid)
        if intent is None and self._lookup is not None:
            intent = self._lookup(cid)
        return intent

    def _learn(self, cid: str, order_id: int, client_id: int, perm_id: int) -> _Known:
        k = self.known.get(cid)
        if k is None:
            k = self.known[cid] = _Known(cid)
        k.seen_at_server = True
        if order_id > 0:
            k.order_id = order_id
            k.client_id = client_id
            self._by_order[(client_id, order_id)] = cid
        if perm_id:
            k.perm_id = perm_id
            self._by_perm[perm_id] = cid
        return k

    # ------------------------------------------------------------- lifecycle

    async def start(self, wait_s: float | None = None) -> None:
        """Connect (if not yet) and wait for the first synchronisation; BrokerError if IB is unreachable."""
        self.conn.start()
        wait = wait_s if wait_s is not None else self.settings.connect_timeout_s * 2
        if not await self.conn.wait_connected(wait):
            raise BrokerError(f"cannot reach IB Gateway/TWS at {self.conn.address} within {wait:g} s")
        try:
            await asyncio.wait_for(self._synced.wait(), wait)
        except TimeoutError:
            raise BrokerError(
                f"IB at {self.conn.address} did not list its orders within {wait:g} s"
            ) from None

    def close(self) -> None:
        for _, _, handle in self._pending_fills.values():
            if handle is not None:
                handle.cancel()
        for task in (self._verify_task, self._watch_task):
            if task is not None:
                task.cancel()
        self.conn.disconnect()

    async def _req(self, awaitable: Any, what: str) -> Any:
        await self.conn.pacer.acquire(urgent=True)
        try:
            return await asyncio.wait_for(awaitable, REQUEST_TIMEOUT_S)
        except TimeoutError:
            raise BrokerError(f"IB did not answer {what} within {REQUEST_TIMEOUT_S:g} s") from None
        except ConnectionError as exc:
            raise BrokerError(f"IB connection lost during {what}: {exc}") from None

    def _require_connection(self) -> None:
        if not self.conn.is_connected():
            raise BrokerError(f"not connected to IB at {self.conn.address}")

    async def _on_connected(self, first: bool) -> None:
        """Read the server's orders and executions; report what was missed while away."""
        self._synced.clear()
        accounts = list(self.ib.wrapper.accounts)
        if not self.settings.account and len(accounts) > 1:
            self.conn.notice(
                NoticeLevel.ERROR,
                "broker.account",
                f"IB manages several accounts ({', '.join(accounts)}): set ib.account, or orders are rejected",
            )
        for attempt in range(3):
            try:
                await self._resync(first)
                return
            except BrokerError as exc:
                if not self.conn.is_connected():
                    return  # the next connection resyncs
                log.warning("IB broker: resync attempt %d failed: %s", attempt + 1, exc)
                await asyncio.sleep(1.0)
        self.conn.notice(
            NoticeLevel.ERROR,
            "broker.resync_failed",
            "could not read IB's orders after connecting: orders are not sent until the next reconnect",
        )

    async def _reread(self, executions: bool = True) -> tuple[list[Any], list[Any], list[Any]]:
        """IB's open and completed orders and (if asked) today's executions. Their messages settle
        every known order's state through the taps; the lists are for the caller's own checks."""
        opens = await self._req(self.ib.reqAllOpenOrdersAsync(), "open orders")
        done = await self._req(self.ib.reqCompletedOrdersAsync(False), "completed orders")
        fills = await self._req(self.ib.reqExecutionsAsync(), "executions") if executions else []
        return list(opens or ()), list(done or ()), list(fills or ())

    async def _resync(self, first: bool) -> None:
        opens, done, fills = await self._reread()
        at_server = {t.order.orderRef for t in [*opens, *done]}
        at_server |= {f.execution.orderRef for f in fills}
        lost = [k for k in self.known.values() if k.sent_here and not k.closed and k.cid not in at_server]
        for k in lost:
            k.closed = True
            self._emit(
                OrderRejected(
                    k.cid,
                    self.clock_ns(),
                    "lost with the IB connection: the server never received it; not resent",
                )
            )
            self.conn.notice(
                NoticeLevel.WARN,
                "broker.order_lost",
                f"order {k.cid} never reached IB (connection dropped while sending); closed, not resent",
            )
        self._synced.set()
        await self._resend_cancels()
        if self._foreign_open() and (self._watch_task is None or self._watch_task.done()):
            self._watch_task = asyncio.ensure_future(self._watch_foreign())
        if not first:
            self.conn.notice(
                NoticeLevel.INFO,
                "broker.resynced",
                f"IB orders re-read after reconnect: {len(opens)} open, {len(done)} completed, "
                f"{len(fills)} executions today",
            )

    def _on_disconnected(self) -> None:
        self._synced.clear()

    async def _on_restored(self, data_lost: bool) -> None:
        """1101/1102: the Gateway is back in touch with IB. Order messages (a cancel's confirmation, a
        fill) may have been lost in the gap and a cancel sent during it may never have reached IB: re-read
        IB's orders and executions (the taps settle every state) and ask again for what is still open."""
        if not self.conn.is_connected():
            return  # the reconnect sync reads everything anyway
        try:
            await self._reread()
        except BrokerError as exc:
            log.warning("IB broker: re-reading orders after %s failed: %s", 1101 if data_lost else 1102, exc)
            return
        await self._resend_cancels()

    async def _resend_cancels(self) -> None:
        """Cancels sent before a gap whose order IB still lists as open: sent again (idempotent at IB)."""
        for k in list(self.known.values()):
            if not k.cancel_sent or k.closed or k.status not in OPEN_STATES:
                continue
            if not self.conn.is_connected():
                return
            if self._cancel_elsewhere(k):
                continue
            if not await self._send_cancel(k):
                return
            self.conn.notice(
                NoticeLevel.WARN,
                "broker.cancel_resent",
                f"cancel of {k.cid} sent (again): IB still lists it {k.status} after the connectivity gap",
            )

    def _foreign_open(self) -> list[str]:
        """Our open orders placed under another client id: IB sends their updates to that id only."""
        me = self.conn.client_id
        return [k.cid for k in self.known.values() if not k.closed and k.order_id and k.client_id != me]

    async def _watch_foreign(self) -> None:
        """Poll IB's orders and executions while orders of another client id are open (the Gateway gave
        us a new id after a reconnect, 326): without a master client id nothing else tells us of them."""
        foreign = self._foreign_open()
        self.conn.notice(
            NoticeLevel.WARN,
            "broker.foreign_orders",
            f"{len(foreign)} open order(s) were placed under another API client id: polling IB every "
            f"{FOREIGN_POLL_S:g} s for their fills (set the Gateway's master API client id to this one)",
        )
        while self.conn.is_connected() and self._foreign_open():
            await asyncio.sleep(FOREIGN_POLL_S)
            try:
                await self._reread()
            except BrokerError as exc:
                log.warning("IB broker: polling foreign orders failed: %s", exc)

    # ------------------------------------------------------------- raw server messages

    def _tap_status(
        self,
        order_id: int,
        status: str,
        filled: float,
        remaining: float,
        avg_fill_price: float,
        perm_id: int,
        parent_id: int,
        last_fill_price: float,
        client_id: int,
        why_held: str,
        mkt_cap_price: float = 0.0,
    ) -> None:
        cid = self._by_perm.get(perm_id) or self._by_order.get((client_id, order_id))
        if cid is None:
            log.info(
                "IB orderStatus for an order not ours (orderId %s, permId %s): %s", order_id, perm_id, status
            )
            return
        k = self._learn(cid, order_id, client_id, perm_id)
        k.filled = max(k.filled, filled)
        self._on_status(k, status, why_held)

    def _tap_open_order(self, order_id: int, contract: Any, order: Any, state: Any) -> None:
        if getattr(order, "whatIf", False) or not self.ours(order.orderRef):
            return
        k = self._learn(order.orderRef, order.orderId, order.clientId, order.permId)
        k.quantity = float(_whole(order.totalQuantity))
        k.action, k.limit = str(order.action or ""), _num(order.lmtPrice)
        self._on_status(k, str(state.status), "")

    def _tap_completed(self, contract: Any, order: Any, state: Any) -> None:
        if not self.ours(order.orderRef):
            return
        k = self._learn(order.orderRef, order.orderId, order.clientId, order.permId)
        k.quantity = float(_whole(order.totalQuantity))
        k.action, k.limit = str(order.action or ""), _num(order.lmtPrice)
        why = str(getattr(state, "completedStatus", "") or "")
        self._on_status(k, str(state.status), why)

    def _on_status(self, k: _Known, status: str, why: str) -> None:
        k.status = status
        now = self.clock_ns()
        accepted = status in ACCEPTED or status == "Filled" or (status == "PendingCancel" and k.order_id)
        if accepted and not k.acked:
            k.acked = True
            self._emit(OrderAccepted(k.cid, str(k.perm_id or k.order_id), now))
        if status in CANCELLED or status in (INACTIVE, "Filled"):
            k.cancel_sent = False
        if k.closed:
            return
        if status in CANCELLED:
            k.closed = True
            self._emit(OrderCancelled(k.cid, now, why or k.reason or "cancelled at IB"))
        elif status == INACTIVE:
            k.closed = True
            reason = why or (f"IB rejected: {k.rejected_by}" if k.rejected_by else k.reason)
            self._emit(OrderRejected(k.cid, now, reason or "inactive at IB (rejected)"))
        elif status == "Filled":
            k.closed = True  # the executions complete the order

    def _tap_exec(self, req_id: int, contract: Any, execution: Any) -> None:
        ref = execution.orderRef
        if not self.ours(ref) or getattr(contract, "secType", "") == "BAG":
            return
        self._learn(ref, execution.orderId, execution.clientId, execution.permId)
        exec_id = execution.execId
        if exec_id in self.reported_execs or exec_id in self._pending_fills:
            return
        if exec_id in self._commissions or self.settings.commission_wait_s == 0:
            self._release(exec_id, contract, execution)
            return
        handle = asyncio.get_running_loop().call_later(
            self.settings.commission_wait_s, self._commission_timeout, exec_id
        )
        self._pending_fills[exec_id] = (contract, execution, handle)

    def _tap_commission(self, report: Any) -> None:
        commission = float(report.commission)
        if not (0.0 <= commission < 1e9):
            return  # IB's "unset" value
        self._commissions[report.execId] = commission
        if report.execId in self._late_commission:
            self._late_commission.discard(report.execId)  # corrected once: a repeated report is ignored
            self._correct_late(str(report.execId), commission)
        pending = self._pending_fills.pop(report.execId, None)
        if pending is not None:
            contract, execution, handle = pending
            if handle is not None:
                handle.cancel()
            self._release(report.execId, contract, execution)

    def _correct_late(self, exec_id: str, commission: float) -> None:
        """The commission of an execution booked with 0 has come: correct the booked fill."""
        cid = self._exec_orders.get(exec_id)
        amount = _money(commission)
        if cid is None or amount <= 0:
            return
        self.conn.notice(
            NoticeLevel.WARN,
            "broker.late_commission",
            f"IB's commission {amount} for execution {exec_id} of {cid} came after the fill was booked with "
            "0: the fill's commission is corrected",
        )
        self._emit(CommissionCorrected(cid, exec_id, amount, self.clock_ns()))

    def _commission_timeout(self, exec_id: str) -> None:
        pending = self._pending_fills.pop(exec_id, None)
        if pending is None:
            return
        contract, execution, _ = pending
        log.warning("IB sent no commission report for execution %s: booked with 0 commission", exec_id)
        self._release(exec_id, contract, execution)

    def _release(self, exec_id: str, contract: Any, execution: Any) -> None:
        if exec_id in self.reported_execs:
            return
        fill = self.fill_from(contract, execution)
        if fill is None:
            return
        self.reported_execs.add(exec_id)
        self._exec_orders[exec_id] = fill.client_order_id
        if exec_id not in self._commissions:
            self._late_commission.add(exec_id)  # booked with 0: corrected when IB's report comes
        self._emit(OrderFilled(fill))

    def fill_from(self, contract: Any, execution: Any) -> Fill | None:
        """A :class:`Fill` from one IB execution of an option leg (None when it is not one)."""
        cid = str(execution.orderRef)
        exec_id = str(getattr(execution, "execId", "") or "")
        try:
            shares = float(execution.shares)
            price = float(execution.price)
            side = ib_side(str(execution.side))
        except (ValueError, TypeError, AttributeError) as exc:
            return self._bad_execution(exec_id, cid, f"unreadable: {exc}")
        if not math.isfinite(shares) or shares <= 0 or abs(shares - round(shares)) > 1e-6:
            return self._bad_execution(
                exec_id, cid, f"quantity {execution.shares!r} is not a whole positive number"
            )
        if not math.isfinite(price) or price < 0:
            return self._bad_execution(exec_id, cid, f"price {execution.price!r} is not a price")
        if not exec_id:
            return self._bad_execution(exec_id, cid, "no execution id")
        qty = round(shares)
        intent = self._intent(cid)
        leg = self._leg_of(intent, contract) if intent is not None else 0
        commission = self._commissions.get(execution.execId, 0.0)
        return Fill(
            exec_id=str(execution.execId),
            client_order_id=cid,
            leg=leg,
            side=side,
            quantity=qty,
            price=_money(price),
            commission=_money(commission),
            ts_ns=self.clock_ns(),
        )

    def _bad_execution(self, exec_id: str, cid: str, why: str) -> Fill | None:
        """A malformed execution is never booked (a wrong price or size would be booked for good): it is
        reported, and the reconciliation's position check shows the difference if it was real."""
        self.conn.notice(
            NoticeLevel.ERROR,
            "broker.bad_execution",
            f"IB execution {exec_id or '?'} of {cid} not booked: {why}",
        )
        return None

    @staticmethod
    def _leg_of(intent: OrderIntent, contract: Any) -> int:
        con_id = int(getattr(contract, "conId", 0) or 0)
        strike = float(getattr(contract, "strike", 0.0) or 0.0)
        right = str(getattr(contract, "right", "") or "")[:1].upper()
        for i, leg in enumerate(intent.legs):
            c = leg.contract
            if con_id and c.con_id and c.con_id == con_id:
                return i
            if abs(c.strike - strike) < 1e-6 and c.right.value == right:
                return i
        return -1  # does not fit the order: the executor refuses it and says so

    # ------------------------------------------------------------- errors on orders

    def _on_error(self, req_id: int, code: int, message: str) -> None:
        if req_id <= 0:
            return
        cid = self._by_order.get((-1 if self.conn.client_id is None else self.conn.client_id, req_id))
        if cid is None:
            return
        k = self.known[cid]
        if is_warning(code):
            log.info("IB warning %s on order %s: %s", code, cid, message)
            return
        k.reason = f"{code}: {message}"
        now = self.clock_ns()
        if code in CANCEL_PROBLEMS:
            k.cancel_sent = False  # IB answered the cancel: nothing to ask again
            self._emit(CancelRejected(cid, now, f"IB: {message} ({code})"))
            self._verify_soon(cid)
            return
        if code == REJECTED_CODE and not k.acked and not k.closed:
            # not final on its own: IB has sent a 201 and then worked the order. The rejection is booked
            # when IB's book confirms it (status Inactive/Cancelled, or the order absent from IB's lists)
            k.rejected_by = message
            self.conn.notice(NoticeLevel.WARN, "broker.rejected", f"IB rejected order {cid}: {message}")
            self._verify_soon(cid)
            return
        if code != CANCEL_CONFIRMED:
            self.conn.notice(
                NoticeLevel.WARN,
                "broker.order_error",
                f"IB error {code} on order {cid}: {message} (order state taken from IB, not assumed)",
            )
        self._verify_soon(cid)

    def _verify_soon(self, cid: str) -> None:
        self._suspects.add(cid)
        if self._verify_task is None or self._verify_task.done():
            self._verify_task = asyncio.ensure_future(self._verify())

    async def _verify(self) -> None:
        """Re-read the server's orders: their messages settle the suspects' states through the taps."""
        while self._suspects:  # suspects added while a pass runs get their own pass
            await asyncio.sleep(VERIFY_DELAY_S)
            suspects, self._suspects = self._suspects, set()
            if not self.conn.is_connected():
                return  # the reconnect sync reads everything anyway
            try:
                opens, done, _ = await self._reread(executions=False)
            except BrokerError as exc:
                log.warning("IB broker: verification failed: %s", exc)
                return
            at_server = {t.order.orderRef for t in [*opens, *done]}
            for cid in suspects:
                k = self.known.get(cid)
                if k is not None and not k.closed and not k.acked and cid not in at_server:
                    k.closed = True
                    why = (
                        f"IB rejected: {k.rejected_by}"
                        if k.rejected_by
                        else f"not at IB after error {k.reason}"
                    )
                    self._emit(OrderRejected(cid, self.clock_ns(), why))

    # ------------------------------------------------------------- the Broker protocol

    async def submit(self, intent: OrderIntent) -> None:
        cid = intent.client_order_id
        self.submits += 1
        if self.conn.is_connected() and not self._synced.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._synced.wait(), self.settings.connect_timeout_s)
        if cid in self._sending:
            # the same id is being sent right now (a retry that overtook its first attempt): never twice
            self.duplicate_submits += 1
            log.info("IB broker: %s is being sent already; not sent again", cid)
            return
        k = self.known.get(cid)
        if k is not None and (k.seen_at_server or k.sent_here):
            other = self._differs(k, intent)
            if other:
                # the same orderRef names another order at IB: two executors with one prefix, or a journal
                # started afresh that hands out today's ids again. Not sent, and IB's reports under this
                # orderRef are never booked to this intent (they are the other order's)
                self._collided.add(cid)
                why = (
                    f"not sent: IB already has a different order with orderRef {cid} ({other}); two "
                    "executors share this prefix or the journal was restarted today"
                )
                self.conn.notice(NoticeLevel.ERROR, "broker.order_ref_collision", why)
                self._emit(OrderRejected(cid, self.clock_ns(), why), force=True)
                return
            # idempotent: IB already has (or was sent) this order id
            self._intents.setdefault(cid, intent)
            self.duplicate_submits += 1
            log.info("IB broker: %s already at IB (%s); not sent again", cid, k.status or "sent")
            if k.acked:
                self._emit(OrderAccepted(cid, str(k.perm_id or k.order_id), self.clock_ns()))
            return
        self._intents[cid] = intent
        self._sending.add(cid)
        try:
            await self._send(intent)
        finally:
            self._sending.discard(cid)

    async def _send(self, intent: OrderIntent) -> None:
        cid = intent.client_order_id
        if not self.conn.is_connected() or not self._synced.is_set():
            self._emit(
                OrderRejected(cid, self.clock_ns(), f"not sent: not connected to IB at {self.conn.address}")
            )
            return
        if not self.conn.ib_link_up:  # (a quote from before a gap is refused by the pre-trade check)
            self._emit(
                OrderRejected(
                    cid,
                    self.clock_ns(),
                    "not sent: IB Gateway has lost its link to IB (1100): quotes are stale",
                )
            )
            return
        try:
            contract = await self._ib_contract(intent)
        except BrokerError as exc:
            self._emit(OrderRejected(cid, self.clock_ns(), f"not sent: {exc}"))
            return
        order = self._ib_order(intent)
        await self.conn.pacer.acquire(urgent=True)
        if not self.conn.is_connected():
            self._emit(OrderRejected(cid, self.clock_ns(), "not sent: IB connection lost before sending"))
            return
        k = self.known[cid] = _Known(cid, sent_here=True, quantity=float(intent.quantity))
        try:
            trade = self.ib.placeOrder(contract, order)
        except ConnectionError as exc:
            k.sent_here = False
            k.closed = True
            self._emit(OrderRejected(cid, self.clock_ns(), f"not sent: {exc}"))
            return
        k.order_id = int(trade.order.orderId)
        k.client_id = int(self.conn.client_id if self.conn.client_id is not None else -1)
        self._by_order[(k.client_id, k.order_id)] = cid
        log.info("IB broker: sent %s as order %s", intent.describe(), k.order_id)

    def _differs(self, k: _Known, intent: OrderIntent) -> str:
        """How the order IB lists under ``k`` differs from ``intent`` ('' when it is the same order)."""
        if self._intents.get(k.cid) is intent:
            return ""  # the very intent sent before: a retry
        expected = self._ib_order(intent)
        out = []
        if k.action and k.action != expected.action:
            out.append(f"{k.action} at IB, {expected.action} here")
        if k.quantity > 0 and abs(k.quantity - intent.quantity) > 1e-9:
            out.append(f"quantity {k.quantity:g} at IB, {intent.quantity} here")
        if math.isfinite(k.limit) and abs(k.limit) < 1e12 and abs(k.limit - float(intent.limit_price)) > 1e-9:
            out.append(f"limit {k.limit:g} at IB, {intent.limit_price} here")
        return ", ".join(out)

    async def _con_id(self, c: OptionContract) -> int:
        if c.con_id:
            return c.con_id
        key = (c.expiry, c.strike, c.right.value)
        found = self.conn.con_ids.get(key)
        if found:
            return found
        spec = self._option(c)
        details = await self._req(self.ib.reqContractDetailsAsync(spec), f"contract details of {c.osi}")
        if not details:
            raise BrokerError(f"IB has no contract {c.osi.strip()}")
        con_id = int(details[0].contract.conId)
        self.conn.con_ids[key] = con_id
        return con_id

    def _option(self, c: OptionContract, con_id: int = 0) -> Any:
        return Option(
            c.symbol,
            c.expiry,
            c.strike,
            c.right.value,
            "SMART",
            multiplier=str(c.multiplier),
            currency="USD",
            tradingClass=c.symbol,
            conId=con_id,
        )

    async def _ib_contract(self, intent: OrderIntent) -> Any:
        if not intent.is_spread:
            c = intent.legs[0].contract
            return self._option(c, c.con_id or self.conn.con_ids.get((c.expiry, c.strike, c.right.value), 0))
        legs = []
        for leg in intent.legs:
            con_id = await self._con_id(leg.contract)
            legs.append(ComboLeg(conId=con_id, ratio=leg.ratio, action=leg.side.value, exchange="SMART"))
        return Contract(
            secType="BAG",
            symbol=intent.legs[0].contract.symbol,
            exchange="SMART",
            currency="USD",
            comboLegs=legs,
        )

    def _ib_order(self, intent: OrderIntent) -> Any:
        action = intent.side.value if intent.is_spread else intent.legs[0].side_for(intent.side).value
        return LimitOrder(
            action,
            float(intent.quantity),
            float(intent.limit_price),
            orderRef=intent.client_order_id,
            tif=intent.tif,
            account=self.settings.account,
            transmit=True,
        )

    async def cancel(self, client_order_id: str) -> None:
        k = self.known.get(client_order_id)
        now = self.clock_ns()
        if k is None or not k.order_id:
            self._emit(CancelRejected(client_order_id, now, "IB does not know this order"))
            return
        if k.closed:
            self._emit(CancelRejected(client_order_id, now, f"order already {k.status or 'done'} at IB"))
            return
        if not self.conn.is_connected():
            # the order still works at IB (a Gateway restart does not cancel it): the cancel goes out as
            # soon as the connection is back and IB still lists the order open; it stays pending till then
            k.cancel_sent = True
            self.conn.notice(
                NoticeLevel.WARN,
                "broker.cancel_queued",
                f"not connected to IB: the cancel of {client_order_id} is sent when the connection is back",
            )
            return
        if self._cancel_elsewhere(k):
            return
        if not await self._send_cancel(k):
            self._emit(
                CancelRejected(client_order_id, self.clock_ns(), "IB connection lost: cancel not sent")
            )
            return
        k.cancel_sent = True

    def _cancel_elsewhere(self, k: _Known) -> bool:
        """An order placed under another API client id cannot be cancelled from this one (after a
        reconnect under a new id): the cancel is rejected, saying what to do. True if so."""
        if k.client_id == self.conn.client_id:
            return False
        k.cancel_sent = False
        self._emit(
            CancelRejected(
                k.cid,
                self.clock_ns(),
                f"placed by API client {k.client_id}, connected as {self.conn.client_id}: cancel it in TWS "
                "or from that client id",
            )
        )
        return True

    async def _send_cancel(self, k: _Known) -> bool:
        """Ask IB to cancel ``k`` (paced, ahead of bulk requests); False if the connection dropped."""
        await self.conn.pacer.acquire(urgent=True)
        try:
            self.ib.client.cancelOrder(k.order_id, "")
        except ConnectionError:
            return False
        return True

    async def _server_executions(self) -> list[Any]:
        self._require_connection()
        fills = await self._req(self.ib.reqExecutionsAsync(), "executions")
        ours = [f for f in fills or () if self.ours(f.execution.orderRef) and f.contract.secType != "BAG"]
        # commission reports follow their executions: give the stragglers a moment
        waited = 0.0
        while any(f.execution.execId not in self._commissions for f in ours) and waited < min(
            1.0, self.settings.commission_wait_s
        ):
            await asyncio.sleep(0.05)
            waited += 0.05
        return ours

    async def executions(self) -> list[Fill]:
        out: list[Fill] = []
        seen: set[str] = set()
        for f in await self._server_executions():
            if f.execution.execId in seen:
                continue
            seen.add(f.execution.execId)
            fill = self.fill_from(f.contract, f.execution)
            if fill is not None:
                out.append(fill)
        return out

    async def _orders(self, trades: list[Any]) -> list[BrokerOrder]:
        fills = await self.executions()
        out: dict[str, BrokerOrder] = {}
        for t in trades:
            cid = t.order.orderRef
            if not self.ours(cid):
                continue
            self._learn(cid, t.order.orderId, t.order.clientId, t.order.permId)
            intent = self._intent(cid)
            n_legs = len(intent.legs) if intent is not None else 1
            leg_filled = [0] * n_legs
            for f in fills:
                if f.client_order_id == cid and 0 <= f.leg < n_legs:
                    leg_filled[f.leg] += f.quantity
            units = float(getattr(t.order, "filledQuantity", 0.0) or 0.0)
            if 0 < units < 1e12 and intent is not None:
                leg_filled = [
                    max(x, round(units) * leg.ratio) for x, leg in zip(leg_filled, intent.legs, strict=True)
                ]
            status = str(t.orderStatus.status)
            out[cid] = BrokerOrder(
                cid,
                str(t.order.permId or t.order.orderId),
                state_of(status, any(leg_filled)),
                _whole(t.order.totalQuantity),
                tuple(leg_filled),
                self.known[cid].reason if status in CANCELLED or status == INACTIVE else "",
            )
        return list(out.values())

    async def open_orders(self) -> list[BrokerOrder]:
        self._require_connection()
        trades = await self._req(self.ib.reqAllOpenOrdersAsync(), "open orders")
        return [o for o in await self._orders(list(trades or ())) if o.state.open]

    async def completed_orders(self) -> list[BrokerOrder]:
        self._require_connection()
        trades = await self._req(self.ib.reqCompletedOrdersAsync(False), "completed orders")
        return [o for o in await self._orders(list(trades or ())) if o.state.terminal]

    async def positions(self) -> list[BrokerPosition]:
        self._require_connection()
        rows = await self._req(self.ib.reqPositionsAsync(), "positions")
        account = self.settings.account
        out: list[BrokerPosition] = []
        for p in rows or ():
            c = p.contract
            if account and p.account != account:
                continue
            if c.secType != "OPT" or c.symbol != self.settings.symbol or not p.position:
                continue
            try:
                mult = int(float(c.multiplier or 100))
                quantity = float(p.position)
                if mult <= 0 or not math.isfinite(quantity) or quantity != round(quantity):
                    raise ValueError(f"multiplier {c.multiplier!r}, quantity {p.position!r}")
                contract = OptionContract(
                    c.symbol,
                    str(c.lastTradeDateOrContractMonth)[:8],
                    float(c.strike),
                    Right.parse(str(c.right)),
                    mult,
                    con_id=int(c.conId or 0),
                )
            except (ValueError, TypeError, ArithmeticError) as exc:
                # never a crash of the reconciliation; said loudly, since a position left out is not checked
                self.conn.notice(
                    NoticeLevel.ERROR,
                    "broker.bad_position",
                    f"IB position in {getattr(c, 'localSymbol', '') or c} unreadable, not reconciled: {exc}",
                )
                continue
            avg = _money(p.avgCost) / mult
            out.append(BrokerPosition(contract, round(quantity), avg))
        return out
