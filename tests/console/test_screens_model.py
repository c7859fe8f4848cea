"""The console's model without a screen: folding envelopes, merging agents, choosing the leader."""

from __future__ import annotations

import math

import numpy as np

from console.analytics import black76, delta, implied_vol, tau_years
from console.client import ConnectionState
from console.model import HISTORY_POINTS, AgentView, ConsoleModel
from proto.spyops.v1 import spyops_pb2 as pb


def env(seq: int, ts: int = 0, **payload: object) -> pb.Envelope:
    return pb.Envelope(agent_id="a", seq=seq, ts_ns=ts, **payload)  # type: ignore[arg-type]


def executor(name: str, leader: bool, epoch: int, live: bool = True) -> AgentView:
    v = AgentView(target=f"{name}:1", name=name)
    v.apply(env(1, risk=pb.RiskState(trading_state="ACTIVE", leader=leader, lease_epoch=epoch)))
    v.state = ConnectionState.LIVE if live else ConnectionState.RECONNECTING
    return v


def test_commands_go_to_the_replica_that_leads() -> None:
    feed = AgentView(target="feed:1", name="feed")
    feed.info = pb.AgentInfo(roles=["feed", "detector"])
    a, b, c = executor("a", False, 3), executor("b", True, 4), executor("c", False, 4)
    model = ConsoleModel([feed, a, b, c])
    assert model.executors() == [a, b, c]
    assert model.leader() is b
    assert model.trading() is b
    # the leader dropped and another took over (a higher lease epoch): the live one that says it leads
    b.state = ConnectionState.RECONNECTING
    c.apply(env(2, risk=pb.RiskState(trading_state="ACTIVE", leader=True, lease_epoch=5)))
    assert model.leader() is c
    # nobody leads among several replicas: no command target (the console says so)
    c.apply(env(3, risk=pb.RiskState(leader=False)))
    b.apply(env(2, risk=pb.RiskState(leader=False)))
    assert model.leader() is None
    # a single executor takes commands even without a lease
    assert ConsoleModel([feed, executor("solo", False, 0)]).leader() is not None


def test_market_view_prefers_a_live_agent_with_quotes_and_merges_signals() -> None:
    a, b = AgentView(target="a:1"), AgentView(target="b:1")
    chain = pb.ChainUpdate(
        symbol="SPY",
        expiry="20250317",
        full=True,
        quotes=[pb.OptionQuote(strike=590, right=pb.CALL, bid=1, ask=1.1)],
    )
    a.apply(env(1, chain=chain))
    b.apply(env(1, chain=chain))
    sig = pb.Signal(
        id="s1",
        kind="parity",
        status="active",
        severity="warn",
        contracts=[pb.ContractRef(strike=590, right=pb.CALL)],
    )
    crit = pb.Signal(
        id="s2",
        kind="box",
        status="new",
        severity="critical",
        contracts=[pb.ContractRef(strike=590, right=pb.CALL)],
    )
    a.apply(env(2, signal=sig))
    b.apply(env(2, signal=crit))
    model = ConsoleModel([a, b])
    assert model.market() is a  # both connecting: the first with quotes
    b.state = ConnectionState.LIVE
    assert model.market() is b  # the live one
    assert set(model.open_signals()) == {"s1", "s2"}
    assert model.flagged()[(590.0, pb.CALL)].id == "s2"  # the most severe signal wins the cell
    a.apply(env(3, signal=pb.Signal(id="s1", status="resolved")))
    assert set(model.open_signals()) == {"s2"}
    assert [s.id for s in model.resolved_signals()] == ["s1"]


def test_folding_orders_positions_audit_and_a_resync() -> None:
    v = AgentView(target="x:1", name="x")
    v.apply(env(1, 10, order=pb.OrderUpdate(client_order_id="o1", state="working", quantity=1)))
    v.apply(env(2, 11, order=pb.OrderUpdate(client_order_id="o1", state="rejected", reason="collar")))
    v.apply(env(3, 12, position=pb.Position(strike=590, right=pb.CALL, expiry="20250317", quantity=2)))
    v.apply(
        env(
            4,
            13,
            command=pb.CommandRecord(command="halt", operator="bob", accepted=True, result="ok: halted"),
        )
    )
    v.apply(env(5, 14, command=pb.CommandRecord(command="heartbeat", operator="bob", accepted=True)))
    assert v.working_orders() == []
    assert [e.kind for e in v.log] == ["rejected", "command"]
    assert v.log[0].text == "order o1 rejected: collar"
    assert v.log[1].operator == "bob"
    assert v.heartbeats == 1  # counted, not listed
    assert len(v.open_positions()) == 1
    v.apply(env(6, 15, position=pb.Position(strike=590, right=pb.CALL, expiry="20250317", quantity=0)))
    assert v.open_positions() == []  # flat and nothing realized: gone
    # a fresh snapshot replaces the state but keeps the audit the console has seen
    snap = pb.Snapshot(
        agent_id="x",
        incarnation="i2",
        ts_ns=20,
        recent_notices=[pb.Notice(level="warn", code="c", message="m")],
    )
    v.apply(env(100, 20, snapshot=snap))
    assert v.orders == {}
    assert v.incarnation == "i2"
    assert [e.kind for e in v.log] == ["rejected", "command", "notice"]


def test_the_intraday_history_is_bounded_one_point_per_bucket() -> None:
    v = AgentView(target="x:1")
    for i in range(HISTORY_POINTS + 500):
        for j in range(3):  # three ticks in the same 5-second bucket: one point
            v.apply(
                env(i * 3 + j + 1, (i * 5 + j) * 1_000_000_000, underlying=pb.UnderlyingTick(last=500 + j))
            )
    assert len(v.history) == HISTORY_POINTS
    assert v.history[-1][1] == 502  # the bucket's last price
    v.apply(env(10**7, 1, underlying=pb.UnderlyingTick(last=math.nan)))  # bad input: ignored, no crash
    assert v.underlying == 502


def test_implied_vol_inverts_black76_and_refuses_impossible_prices() -> None:
    strikes = np.array([580.0, 590.0, 600.0, 590.0])
    calls = np.array([True, True, False, False])
    tau = tau_years(0, 120 * 60 * 10**9)  # two trading hours
    vols = np.array([0.25, 0.18, 0.2, 0.18])
    prices = black76(590.0, strikes, tau, vols, calls)
    np.testing.assert_allclose(implied_vol(prices, 590.0, strikes, tau, calls), vols, rtol=1e-6)
    bad = implied_vol(np.array([5.0, -1.0, math.nan, 700.0]), 590.0, strikes, tau, calls)
    assert np.isnan(bad).all()  # below intrinsic, negative, NaN, above the forward
    d = delta(590.0, np.array([590.0, 590.0]), tau, np.array([0.18, 0.18]), np.array([True, False]))
    assert 0.45 < d[0] < 0.55
    assert math.isclose(d[0] - d[1], 1.0)
    assert tau_years(10, 5) > 0  # after the close: floored, never zero or negative


def test_a_fill_republished_with_a_corrected_commission_replaces_the_first() -> None:
    v = AgentView(target="x:1")
    v.apply(env(1, fill=pb.Fill(exec_id="e1", client_order_id="o1", quantity=1, commission="0")))
    v.apply(env(2, fill=pb.Fill(exec_id="e2", client_order_id="o1", quantity=1, commission="0.65")))
    v.apply(env(3, fill=pb.Fill(exec_id="e1", client_order_id="o1", quantity=1, commission="0.65")))
    assert [(f.exec_id, f.commission) for f in v.fills] == [("e1", "0.65"), ("e2", "0.65")]
