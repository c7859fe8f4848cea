"""The backtest library: detector + playbook + risk + journal + paper broker over a recording, on its
market time. Recordings are built here from the simulator with injected arbitrage anomalies."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from agent.backtest import BacktestConfig, BacktestError, BacktestResult, EntryMode, run_backtest
from agent.executor.journal import Journal
from agent.executor.orders import Fill, Origin
from agent.executor.playbook import ExitRules
from agent.executor.positions import PositionBook
from agent.executor.risk import RiskLimits
from agent.feeds.anomalies import ARBITRAGE_KINDS
from agent.feeds.sim import SimConfig, SimulatedMarket
from agent.session import session, to_ns
from agent.wire import payload_to_envelope
from proto.recording import RecordingWriter
from proto.spyops.v1 import spyops_pb2 as pb
from tests.conftest import DATA

DAY = session(dt.date(2026, 3, 17))
CENT = Decimal("0.01")


def write_sim_recording(
    path: Path, *, steps: int = 480, inject_every: int = 40, start: str = "11:00", seed: int = 7
) -> Path:
    """A recording of the simulated market (250 ms steps), an arbitrage anomaly injected every
    ``inject_every`` steps (0: a clean market), written as an agent's stream would be."""
    market = SimulatedMarket(SimConfig(seed=seed), DAY, to_ns(DAY.at(start)))
    seq = 0
    with RecordingWriter(path) as writer:

        def put(ts_ns: int, payload: object) -> None:
            nonlocal seq
            seq += 1
            env = pb.Envelope(agent_id="sim", seq=seq, ts_ns=ts_ns)
            payload_to_envelope(payload, env)  # type: ignore[arg-type]
            writer.write(env)

        for event in market.initial():
            put(market.now_ns, event)
        for i in range(steps):
            if inject_every and i % inject_every == 0:
                market.inject(ARBITRAGE_KINDS[(i // inject_every) % len(ARBITRAGE_KINDS)])
            step = market.step()
            for event in step.events:
                put(step.ts_ns, event)
    return path


@pytest.fixture(scope="module")
def anomalous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sim_recording(tmp_path_factory.mktemp("bt") / "anomalous.spyrec")


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sim_recording(tmp_path_factory.mktemp("bt") / "clean.spyrec", steps=240, inject_every=0)


@pytest.fixture(scope="module")
def near_close(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """15:49:00 .. 15:50:30 New York: past the opening cutoff (15:45), across the flatten time (15:50)."""
    return write_sim_recording(tmp_path_factory.mktemp("bt") / "close.spyrec", steps=360, start="15:49")


@pytest.fixture(scope="module")
def auto(anomalous: Path) -> BacktestResult:
    return run_backtest(anomalous)


def cash(fills: tuple[Fill, ...] | list[Fill], multiplier: int = 100) -> Decimal:
    """Dollars received minus paid over ``fills``: what they realize once the position is flat."""
    return sum((-f.side.sign * f.quantity * f.price * multiplier for f in fills), Decimal(0))


def test_closed_trades_realize_their_fills(anomalous: Path) -> None:
    """With a time exit every trade is closed by the end: realized is the fills' cash, fees the
    contracts times the commission, per trade and in total."""
    commission = Decimal("0.65")
    result = run_backtest(anomalous, BacktestConfig(exits=ExitRules(max_hold_s=5.0)))
    s = result.summary
    assert len(result.trades) >= 6
    assert {t.kind for t in result.trades} == set(ARBITRAGE_KINDS)
    all_fills: list[Fill] = []
    for t in result.trades:
        assert t.held_units == 0
        assert t.entry_units == t.exit_units >= 1
        assert t.exit_reason == "time_exit"
        assert t.exit_ns - t.entry_ns >= 5_000_000_000
        assert t.realized == cash(t.fills).quantize(CENT)
        assert t.contracts == sum(f.quantity for f in t.fills)
        assert t.fees == t.contracts * commission
        assert t.unrealized == 0.0
        assert t.net == pytest.approx(float(t.realized - t.fees))
        # per unit: (exit - entry) x side x multiplier, for these one-unit trades
        assert t.exit_price is not None
        assert t.realized == ((t.exit_price - t.entry_price) * t.side.sign * 100 * t.entry_units).quantize(
            CENT
        )
        all_fills.extend(t.fills)
    assert (
        s.realized == cash(all_fills).quantize(CENT) == sum((t.realized for t in result.trades), Decimal(0))
    )
    assert s.fills == len(all_fills)
    assert s.contracts == sum(f.quantity for f in all_fills)
    assert s.fees == s.contracts * commission
    assert s.unrealized == 0.0
    assert s.unmarked == ()
    assert s.net == pytest.approx(float(s.realized - s.fees))
    assert s.orders == 2 * len(result.trades)
    assert s.denials == ()
    assert s.trading_state == "active"


def test_held_trades_are_marked_at_the_last_mid(auto: BacktestResult) -> None:
    """Without exits (and before the flatten time) everything is still held at the end."""
    result = auto
    s = result.summary
    assert result.trades
    assert all(t.held_units == t.entry_units and t.exit_ns == 0 for t in result.trades)
    assert all(t.realized == 0 and t.exit_price is None for t in result.trades)
    assert s.unmarked == ()
    # gross P&L is additive over trades even where two trades net out in one contract
    per_trade = sum(float(t.realized) + t.unrealized for t in result.trades)
    assert per_trade == pytest.approx(float(s.realized) + s.unrealized, abs=0.01)
    assert s.fees == sum((t.fees for t in result.trades), Decimal(0))


def test_orders_fill_later_on_market_time(anomalous: Path, tmp_path: Path) -> None:
    """The paper broker's clock is the replay's: a fill comes after its order by the latency at least."""
    latency = 5_000_000
    result = run_backtest(anomalous, BacktestConfig(latency_ns=latency), state_dir=tmp_path)
    with Journal(tmp_path / "journal.sqlite", "backtest", DAY.expiry) as journal:
        orders = journal.load()
    assert len(orders) == result.summary.orders
    fills = [(o.intent.created_ns, f.ts_ns) for o in orders.values() for f in o.fills.values()]
    assert fills
    assert all(ts >= created + latency for created, ts in fills)
    assert result.summary.start_ns <= min(ts for _, ts in fills)
    assert max(ts for _, ts in fills) <= result.summary.end_ns
    with pytest.raises(BacktestError, match="already holds a backtest"):
        run_backtest(anomalous, state_dir=tmp_path)


def test_a_clean_market_gives_no_trades(clean: Path) -> None:
    result = run_backtest(clean)
    assert result.trades == ()
    assert (result.summary.orders, result.summary.fills, result.summary.realized) == (0, 0, Decimal(0))
    assert result.summary.chain_updates > 200


def test_two_runs_are_equal(anomalous: Path, auto: BacktestResult) -> None:
    assert run_backtest(anomalous) == auto


def test_propose_all_confirmed_trades_like_auto(anomalous: Path, auto: BacktestResult) -> None:
    proposed = run_backtest(anomalous, BacktestConfig(mode=EntryMode.PROPOSE_ALL_CONFIRMED))
    assert proposed.summary.proposals == len(proposed.trades) > 0
    assert proposed.trades == auto.trades


def test_risk_denies_openings_after_the_cutoff(near_close: Path) -> None:
    result = run_backtest(near_close)
    assert result.trades == ()
    assert result.summary.orders == 0
    assert dict(result.summary.denials)["opening_cutoff"] > 0
    assert result.summary.denied >= dict(result.summary.denials)["opening_cutoff"]


def test_the_playbook_flattens_before_the_close(near_close: Path, tmp_path: Path) -> None:
    """Every trade's legs are closed from 15:50, also where two trades hold opposite sides of one
    contract (parity short the 590 call, a vertical long it): the book ends flat."""
    flatten_ns = to_ns(DAY.at("15:50"))
    result = run_backtest(
        near_close, BacktestConfig(limits=RiskLimits(opening_cutoff="15:55")), state_dir=tmp_path
    )
    assert result.trades
    with Journal(tmp_path / "journal.sqlite", "backtest", DAY.expiry) as journal:
        orders = journal.load()
    # nothing opens from the flatten time: only flatten orders (some on a part of a trade's legs,
    # where opposite holdings of two trades are netted; the rows group those by their own legs)
    late = [o for o in orders.values() if o.intent.created_ns >= flatten_ns]
    assert late
    assert {o.intent.origin for o in late} == {Origin.FLATTEN}
    assert PositionBook.from_orders(orders.values()).net_quantities() == {}
    assert result.summary.unrealized == 0.0
    assert result.summary.unmarked == ()
    flattened = [t for t in result.trades if t.exit_reason == "flatten"]
    assert flattened
    assert all(t.exit_ns >= flatten_ns and t.held_units == 0 for t in flattened)
    for t in flattened:
        assert t.realized == cash(t.fills).quantize(CENT)


def test_loss_limits_move_the_trading_state(anomalous: Path) -> None:
    """Past the daily loss limit only reducing orders go; past the hard one, halt and flatten."""
    reducing = run_backtest(
        anomalous,
        BacktestConfig(
            exits=ExitRules(max_hold_s=5.0), limits=RiskLimits(daily_loss_limit=10.0, hard_loss_limit=20.0)
        ),
    )
    assert reducing.summary.trading_state == "reducing"
    assert dict(reducing.summary.denials)["reducing_only"] > 0
    assert any("daily limit" in n for n in reducing.summary.notes)
    halted = run_backtest(
        anomalous, BacktestConfig(limits=RiskLimits(daily_loss_limit=5.0, hard_loss_limit=5.0))
    )
    s = halted.summary
    assert s.trading_state == "halted"
    assert dict(s.denials)["halted"] > 0
    flattened = [t for t in halted.trades if t.signal_id == "risk_flatten"]
    assert flattened
    assert s.unrealized == 0.0  # flat again
    per_trade = sum(float(t.realized) + t.unrealized for t in halted.trades)
    assert per_trade == pytest.approx(float(s.realized), abs=0.01)
    assert s.realized == cash([f for t in halted.trades for f in t.fills]).quantize(CENT)


def test_units_and_commission(anomalous: Path) -> None:
    result = run_backtest(anomalous, BacktestConfig(units=2, commission_per_contract=Decimal(0)))
    assert result.summary.fees == 0
    assert max(t.entry_units for t in result.trades) == 2


def test_real_ib_snapshots_give_no_arbitrage_trades() -> None:
    for csv in sorted(DATA.glob("*.csv")):
        result = run_backtest(csv)
        assert result.summary.source == "ib_csv"
        assert result.trades == ()
        assert result.summary.orders == 0


def test_what_cannot_run_is_a_backtest_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.csv"
    junk.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(BacktestError, match="neither a recording nor an IB chain CSV"):
        run_backtest(junk)
    with pytest.raises(BacktestError, match="does not exist"):
        run_backtest(tmp_path / "missing.spyrec")
    empty = tmp_path / "empty.spyrec"
    RecordingWriter(empty).close()
    with pytest.raises(BacktestError, match="no timed market data"):
        run_backtest(empty)
    with pytest.raises(BacktestError, match="units"):
        run_backtest(DATA / "ib_spy_chain_2025-03-17_1355ET.csv", BacktestConfig(units=0))
