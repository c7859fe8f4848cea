"""Snapshot tests of the main screens: a fixed model (built from wire messages at a fixed clock, no
network, no randomness) is drawn and the screen's text is compared with a committed file in
``tests/console/snapshots/``. ``SNAPSHOT_UPDATE=1`` rewrites the files (review the diff before committing)."""

from __future__ import annotations

import datetime as dt
import difflib
import math
import os
from pathlib import Path

import pytest
from scipy.special import ndtr

from console.app import ConsoleApp
from console.client import ConnectionState
from console.config import AgentTarget, ConsoleConfig
from console.format import NEW_YORK
from console.model import AgentView, ConsoleModel
from proto.spyops.v1 import spyops_pb2 as pb
from tests.console.console_helpers import screen_text

SNAPSHOTS = Path(__file__).parent / "snapshots"
SIZE = (132, 44)
EXPIRY = "20250317"
FORWARD = 590.10
NOW = dt.datetime(2025, 3, 17, 14, 0, tzinfo=NEW_YORK)
CLOSE = dt.datetime(2025, 3, 17, 16, 0, tzinfo=NEW_YORK)


def ns(t: dt.datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000


def smile_vol(k: float) -> float:
    m = math.log(k / FORWARD)
    return 0.16 + 0.9 * m * m - 0.15 * m


def black(k: float, call: bool) -> float:
    tau = (CLOSE - NOW).total_seconds() / 60 / (252 * 390)
    v = smile_vol(k) * math.sqrt(tau)
    d1 = (math.log(FORWARD / k) + v * v / 2) / v
    d2 = d1 - v
    if call:
        return float(FORWARD * ndtr(d1) - k * ndtr(d2))
    return float(k * ndtr(-d2) - FORWARD * ndtr(-d1))


def quote(k: float, right: int) -> pb.OptionQuote:
    fair = black(k, right == pb.CALL)
    half = 0.02 if fair > 1 else 0.01
    bid = max(0.0, round(fair - half, 2))
    i = int(k)
    return pb.OptionQuote(
        strike=k,
        right=right,  # type: ignore[arg-type]
        bid=bid,
        ask=round(max(bid + 0.01, fair + half), 2),
        bid_size=10 + i % 7 * 11,
        ask_size=12 + i % 5 * 9,
        volume=(i * 37) % 900 + (5 if right == pb.CALL else 3),
        flags=0 if bid > 0 else pb.NO_BID,
        src_iv=math.nan,
        src_delta=math.nan,
    )


def leg(k: float, right: int, side: str, qty: int = 1, price: float = 0.0) -> pb.Leg:
    return pb.Leg(strike=k, right=right, side=side, quantity=qty, price=price, expiry=EXPIRY)  # type: ignore[arg-type]


def fixed_model() -> ConsoleModel:
    view = AgentView(target="127.0.0.1:50051", name="demo")
    strikes = [float(k) for k in range(570, 611)]
    snap = pb.Snapshot(agent_id="demo", incarnation="inc-0001", as_of_seq=1000, ts_ns=ns(NOW))
    snap.underlying.CopyFrom(
        pb.UnderlyingTick(
            symbol="SPY", last=590.12, bid=590.11, ask=590.13, volume=41_234_567, prev_close=588.40
        )
    )
    snap.chain.CopyFrom(
        pb.ChainUpdate(
            symbol="SPY",
            expiry=EXPIRY,
            multiplier=100,
            tick=0.01,
            full=True,
            underlying=590.12,
            quotes=[quote(k, r) for k in strikes for r in (pb.CALL, pb.PUT)],
        )
    )
    snap.signals.extend(
        [
            pb.Signal(
                id="sig-parity-588",
                kind="parity",
                legs=[leg(588, pb.CALL, "SELL", 1, 3.81), leg(588, pb.PUT, "BUY", 1, 1.87)],
                edge=3.25,
                score=0.9,
                status="active",
                severity="warn",
                explanation="synthetic rich at 588: call bid - put ask exceeds S - K*D",
                max_units=4,
                contracts=[
                    pb.ContractRef(strike=588, right=pb.CALL),
                    pb.ContractRef(strike=588, right=pb.PUT),
                ],
                first_seen_ns=ns(NOW) - 20_000_000_000,
                last_seen_ns=ns(NOW),
                expiry=EXPIRY,
            ),
            pb.Signal(
                id="sig-smile-596",
                kind="smile_outlier",
                edge=0.0,
                score=0.4,
                status="new",
                severity="info",
                explanation="596C mid IV 4.1 vol points above the fitted smile",
                contracts=[pb.ContractRef(strike=596, right=pb.CALL)],
                first_seen_ns=ns(NOW),
                last_seen_ns=ns(NOW),
                expiry=EXPIRY,
            ),
            pb.Signal(
                id="sig-fly-591",
                kind="butterfly",
                edge=6.4,
                score=0.7,
                status="resolved",
                severity="critical",
                explanation="call butterfly 590/591/592: body bid above the wings' ask",
                first_seen_ns=ns(NOW) - 90_000_000_000,
                last_seen_ns=ns(NOW) - 60_000_000_000,
                expiry=EXPIRY,
            ),
        ]
    )
    fit_strikes = [570 + i * 2.0 for i in range(21)]
    snap.smile.CopyFrom(
        pb.SmileFit(
            expiry=EXPIRY,
            model="svi",
            forward=FORWARD,
            strikes=fit_strikes,
            ivs=[smile_vol(k) for k in fit_strikes],
            rmse=0.004,
            n_used=40,
            forward_method="parity",
        )
    )
    snap.orders.extend(
        [
            pb.OrderUpdate(
                client_order_id="demo-20250317-000001",
                state="working",
                legs=[leg(590, pb.CALL, "BUY", 2)],
                limit_price="2.10",
                quantity=2,
                source="manual",
                operator="alice",
            ),
            pb.OrderUpdate(
                client_order_id="demo-20250317-000002",
                state="filled",
                legs=[leg(585, pb.PUT, "SELL", 1)],
                limit_price="1.05",
                quantity=1,
                filled=1,
                avg_price="1.06",
                source="strategy",
            ),
            pb.OrderUpdate(
                client_order_id="demo-20250317-000003",
                state="rejected",
                legs=[leg(600, pb.CALL, "BUY", 50)],
                limit_price="0.40",
                quantity=50,
                reason="max_order_quantity: 50 above 10",
                source="manual",
                operator="bob",
            ),
        ]
    )
    snap.positions.extend(
        [
            pb.Position(
                strike=585,
                right=pb.PUT,
                expiry=EXPIRY,
                quantity=-1,
                avg_cost="1.06",
                mark=1.01,
                unrealized=5.0,
                realized=-0.65,
                delta=28.5,
                gamma=-4.1,
                vega=-2.2,
                theta=0.9,
            ),
            pb.Position(
                strike=592,
                right=pb.CALL,
                expiry=EXPIRY,
                quantity=3,
                avg_cost="1.20",
                mark=1.34,
                unrealized=42.0,
                realized=0.0,
                delta=126.0,
                gamma=12.3,
                vega=6.6,
                theta=-2.7,
            ),
        ]
    )
    snap.risk.CopyFrom(
        pb.RiskState(
            trading_state="ACTIVE",
            armed=True,
            limits=[
                pb.Limit(name="max_working_orders", value=20, used=1),
                pb.Limit(name="max_position_total", value=200, used=4),
                pb.Limit(name="daily_loss_limit", value=2000, used=0),
                pb.Limit(name="hard_loss_limit", value=5000, used=0),
            ],
            realized_pnl=12.5,
            unrealized_pnl=47.0,
            fees=2.6,
            leader=True,
            lease_epoch=3,
        )
    )
    snap.proposals.append(
        pb.Proposal(
            id="prop-1",
            signal_id="sig-parity-588",
            kind="parity",
            legs=[leg(588, pb.CALL, "SELL"), leg(588, pb.PUT, "BUY")],
            limit_price="1.90",
            quantity=1,
            edge=3.25,
            created_ns=ns(NOW),
            expires_ns=ns(NOW) + 30_000_000_000,
            explanation="sell the rich synthetic at 588",
            status="pending",
        )
    )
    snap.health.CopyFrom(
        pb.Health(
            components=[pb.ComponentHealth(name=n, status="ok") for n in ("feed", "detector", "executor")],
            feed_lag_ms=12,
            detector_lag_ms=30,
        )
    )
    snap.recent_notices.extend(
        [
            pb.Notice(level="info", code="agent.started", message="agent demo started", source="agent"),
            pb.Notice(
                level="warn",
                code="data_quality.crossed",
                message="595P bid 5.30 above ask 5.28",
                source="feed",
            ),
        ]
    )
    # an intraday path for the chart (before the snapshot: a console connected since the morning)
    for i in range(60):
        seq = i + 1
        t = NOW - dt.timedelta(minutes=60 - i)
        px = 589.0 + 1.5 * math.sin(i / 9) + i * 0.01
        view.apply(
            pb.Envelope(
                agent_id="demo",
                seq=seq,
                ts_ns=ns(t),
                underlying=pb.UnderlyingTick(
                    symbol="SPY",
                    last=round(px, 2),
                    bid=round(px - 0.01, 2),
                    ask=round(px + 0.01, 2),
                    volume=41_000_000 + i * 1000,
                    prev_close=588.40,
                ),
            )
        )
    seq = 1000
    view.apply(pb.Envelope(agent_id="demo", seq=seq, ts_ns=ns(NOW), snapshot=snap))
    # then the audit trail
    for command, operator, accepted, result in (
        ("set_armed", "alice", True, "ok: armed"),
        ("halt", "bob", False, "unknown_operator: operator 'bob' is not allowed here"),
    ):
        seq += 1
        view.apply(
            pb.Envelope(
                agent_id="demo",
                seq=seq,
                ts_ns=ns(NOW),
                command=pb.CommandRecord(
                    command=command,
                    operator=operator,
                    idempotency_key=f"k{seq}",
                    accepted=accepted,
                    result=result,
                ),
            )
        )
    seq += 1
    view.apply(
        pb.Envelope(
            agent_id="demo",
            seq=seq,
            ts_ns=ns(NOW),
            underlying=pb.UnderlyingTick(
                symbol="SPY", last=590.12, bid=590.11, ask=590.13, volume=41_234_567, prev_close=588.40
            ),
        )
    )
    view.state, view.state_detail = ConnectionState.LIVE, "streaming from seq snapshot"
    view.info = pb.AgentInfo(
        agent_id="demo",
        version="0.1.0",
        roles=["feed", "detector", "executor"],
        session_date="2025-03-17",
        clock_speed=1.0,
        feed="sim",
        last_seq=seq + 3,
        incarnation="inc-0001",
        session_close_ns=ns(CLOSE),
        clients=2,
    )
    view.info_latency_ms = 1.5
    return ConsoleModel([view])


SCREENS = {
    "1": "chain",
    "2": "smile",
    "3": "underlying",
    "4": "signals",
    "5": "orders",
    "6": "positions",
    "7": "risk",
    "8": "agents",
    "9": "log",
}


@pytest.mark.parametrize("key", list(SCREENS))
async def test_screen_snapshot(key: str) -> None:
    name = SCREENS[key]
    model = fixed_model()
    config = ConsoleConfig(agents=(AgentTarget("demo", "127.0.0.1:50051"),), operator="alice")
    app = ConsoleApp(config, connect=False, model=model)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(key)
        await pilot.pause(0.2)
        app.screen.redraw(force=True)  # type: ignore[attr-defined]
        await pilot.pause(0.2)
        text = "\n".join(line.rstrip() for line in screen_text(app).splitlines()) + "\n"
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("SNAPSHOT_UPDATE") == "1" or not path.exists():
        if not os.environ.get("SNAPSHOT_UPDATE") and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            pytest.fail(f"{path} did not exist: written now; review it and run again")
        path.write_text(text)
        return
    expected = path.read_text()
    if text != expected:
        diff = "".join(
            difflib.unified_diff(expected.splitlines(True), text.splitlines(True), "expected", "drawn")
        )
        pytest.fail(f"screen {name} differs from {path} (SNAPSHOT_UPDATE=1 to accept):\n{diff}")
