"""The simulated SPY 0DTE market: reproducible, arbitrage-free when clean, window, close, anomalies."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from agent.domain import ChainBook, ChainUpdate, Notice, OptionQuote, QuoteFlag, Right, UnderlyingTick
from agent.feeds.anomalies import Arbitrage, find_static_arbitrage
from agent.feeds.sim import SimConfig, SimStep, SimulatedMarket
from agent.session import NEW_YORK, Session, session, to_ns

DAY = session(dt.date(2026, 3, 17))
HALF_DAY = session(dt.date(2026, 11, 27))


def at(s: Session, hhmm: str) -> int:
    return to_ns(s.at(hhmm))


class Tape:
    """Folds a market's events into a chain book and the latest underlying, like a client would."""

    def __init__(self, market: SimulatedMarket) -> None:
        self.market = market
        self.book = ChainBook()
        self.und: UnderlyingTick | None = None
        self.fold(market.initial())

    def fold(self, events: Sequence[object]) -> None:
        for e in events:
            if isinstance(e, ChainUpdate):
                self.book.apply(e)
            elif isinstance(e, UnderlyingTick):
                self.und = e

    def steps(self, n: int) -> Iterator[SimStep]:
        for _ in range(n):
            st = self.market.step()
            self.fold(st.events)
            yield st

    def quote(self, strike: float, right: str) -> OptionQuote:
        return self.book.quotes[(strike, Right.parse(right))]

    def arrays(self) -> tuple[np.ndarray, ...]:
        strikes = sorted({k for k, _ in self.book.quotes})
        c = [self.book.quotes[(k, Right.CALL)] for k in strikes]
        p = [self.book.quotes[(k, Right.PUT)] for k in strikes]
        return (
            np.array(strikes),
            np.array([q.bid for q in c]),
            np.array([q.ask for q in c]),
            np.array([q.bid for q in p]),
            np.array([q.ask for q in p]),
        )

    def arbitrage(self, commission: float = 0.0) -> list[Arbitrage]:
        assert self.und is not None
        k, cb, ca, pb, pa = self.arrays()
        return find_static_arbitrage(
            k,
            cb,
            ca,
            pb,
            pa,
            self.und.bid,
            self.und.ask,
            discount=self.market.discount(),
            commission=commission,
        )


def run(config: SimConfig, start_ns: int, steps: int, s: Session = DAY) -> list[SimStep]:
    m = SimulatedMarket(config, s, start_ns)
    return [m.step() for _ in range(steps)]


# ----------------------------------------------------------------------------- reproducibility


def test_same_seed_same_session_same_start_gives_identical_events() -> None:
    cfg = SimConfig(seed=11, anomaly_rate_per_min=20.0)
    a = SimulatedMarket(cfg, DAY, at(DAY, "11:00"))
    b = SimulatedMarket(cfg, DAY, at(DAY, "11:00"))
    assert repr(a.initial()) == repr(b.initial())
    steps_a = [a.step() for _ in range(200)]
    steps_b = [b.step() for _ in range(200)]
    assert repr(steps_a) == repr(steps_b)
    assert any(st.labels for st in steps_a)


def test_different_seeds_differ() -> None:
    a = run(SimConfig(seed=1), at(DAY, "11:00"), 20)
    b = run(SimConfig(seed=2), at(DAY, "11:00"), 20)
    assert repr(a) != repr(b)


def test_injection_does_not_change_the_market_underneath() -> None:
    clean = run(SimConfig(seed=5), at(DAY, "11:00"), 150)
    dirty = run(SimConfig(seed=5, anomaly_rate_per_min=30.0), at(DAY, "11:00"), 150)
    und = [[e for e in st.events if isinstance(e, UnderlyingTick)] for st in clean]
    und_dirty = [[e for e in st.events if isinstance(e, UnderlyingTick)] for st in dirty]
    assert und == und_dirty
    assert any(st.labels for st in dirty)


def test_steps_advance_market_time_only() -> None:
    m = SimulatedMarket(SimConfig(step_ms=500), DAY, at(DAY, "10:00"))
    st = m.step()
    assert st.ts_ns == m.now_ns == at(DAY, "10:00") + 500_000_000


# ----------------------------------------------------------------------------- the clean chain


def test_initial_is_a_full_chain_around_the_money_with_the_underlying() -> None:
    m = SimulatedMarket(SimConfig(spot=590.0, strikes_each_side=25), DAY, at(DAY, "10:00"))
    und, chain = m.initial()
    assert isinstance(und, UnderlyingTick)
    assert isinstance(chain, ChainUpdate)
    assert chain.full
    assert chain.expiry == "20260317"
    assert chain.multiplier == 100
    assert chain.tick == 0.01
    strikes = sorted({q.strike for q in chain.quotes})
    assert strikes == [float(k) for k in range(565, 616)]
    assert len(chain.quotes) == 2 * 51
    assert und.bid <= chain.underlying < und.ask
    assert und.ask - und.bid == pytest.approx(0.01)


def test_quotes_are_on_the_tick_bracket_the_model_value_and_flag_missing_bids() -> None:
    m = SimulatedMarket(SimConfig(seed=3), DAY, at(DAY, "15:40"))
    tape = Tape(m)
    for _ in tape.steps(40):
        pass
    strikes, calls, puts = m.fair_values()
    for k, c, p in zip(strikes, calls, puts, strict=True):
        for q, theo in ((tape.quote(k, "C"), c), (tape.quote(k, "P"), p)):
            assert q.bid <= theo + 1e-9
            assert q.ask >= theo - 1e-9
            assert round(q.bid * 100) == pytest.approx(q.bid * 100, abs=1e-9)
            assert round(q.ask * 100) == pytest.approx(q.ask * 100, abs=1e-9)
            assert q.ask >= 0.01
            assert q.bid < q.ask
            if q.bid == 0.0:
                assert q.flags & QuoteFlag.NO_BID
                assert q.bid_size == 0
            else:
                assert q.flags == QuoteFlag.NONE
                assert q.bid_size > 0
    # far out of the money there is no bid late in the day
    assert tape.quote(float(strikes[-1]), "C").flags & QuoteFlag.NO_BID


def test_smile_is_skewed_and_spreads_widen_away_from_the_money() -> None:
    m = SimulatedMarket(SimConfig(spot=590.0), DAY, at(DAY, "10:00"))
    tape = Tape(m)
    put_5_otm, call_5_otm = tape.quote(585.0, "P"), tape.quote(595.0, "C")
    assert put_5_otm.mid > call_5_otm.mid  # downside skew
    atm, wing = tape.quote(590.0, "C"), tape.quote(610.0, "C")

    def spread(q: OptionQuote) -> float:
        return (q.ask - q.bid) / max(q.ask, 0.01)

    assert spread(wing) > spread(atm)


def test_vol_level_is_higher_at_the_open_than_midday() -> None:
    def atm_straddle(hhmm: str) -> float:
        m = SimulatedMarket(SimConfig(spot=590.0, vol_of_vol=0.0), DAY, at(DAY, hhmm))
        _, c, p = m.fair_values()
        tau = DAY.tau(at(DAY, hhmm))
        return float(c[25] + p[25]) / math.sqrt(tau)

    assert atm_straddle("09:31") > 1.2 * atm_straddle("12:30")
    assert atm_straddle("15:55") > atm_straddle("15:00")


def test_only_changed_quotes_are_published_and_each_step_is_priced_fresh() -> None:
    m = SimulatedMarket(SimConfig(seed=9), DAY, at(DAY, "12:00"))
    tape = Tape(m)
    published = []
    for st in tape.steps(100):
        chains = [e for e in st.events if isinstance(e, ChainUpdate)]
        assert all(not c.full for c in chains)
        published.append(sum(len(c.quotes) for c in chains))
        for c in chains:
            assert all(q.quote_ts_ns == st.ts_ns for q in c.quotes)
        # every quote in the book equals what re-pricing at this instant gives
        strikes, calls, puts = m.fair_values()
        for k, c, p in zip(strikes, calls, puts, strict=True):
            assert tape.quote(k, "C").bid <= c + 1e-9 <= tape.quote(k, "C").ask + 2e-9
            assert tape.quote(k, "P").bid <= p + 1e-9 <= tape.quote(k, "P").ask + 2e-9
    assert 0 < np.mean(published) < 102


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(
    ("label", "start", "step_ms", "extra"),
    [
        ("midday", "11:00", 250, {}),
        ("into the close", "15:55", 1000, {}),
        ("big jumps", "13:00", 250, {"jump_rate_per_hour": 600.0, "jump_sd": 0.01}),
    ],
)
def test_clean_chain_has_no_static_arbitrage(
    seed: int, label: str, start: str, step_ms: int, extra: dict[str, float]
) -> None:
    cfg = SimConfig(seed=seed, step_ms=step_ms, **extra)  # type: ignore[arg-type]
    m = SimulatedMarket(cfg, DAY, at(DAY, start))
    tape = Tape(m)
    spots = []
    for st in tape.steps(300):
        if m.closed:
            break
        spots.append(m.spot)
        for q in tape.book.quotes.values():
            assert not q.flags & (QuoteFlag.CROSSED | QuoteFlag.LOCKED | QuoteFlag.BAD_VALUE)
            assert 0.0 <= q.bid < q.ask
        found = tape.arbitrage(commission=0.0)
        assert not found, f"{label} seed {seed} at {st.ts_ns}: {found[:3]}"
        assert st.labels == ()
    if label == "big jumps":
        assert max(spots) - min(spots) > 8.0  # the window really moved
    if label == "into the close":
        assert m.closed


@pytest.mark.parametrize(("start", "step_ms"), [("09:31", 250), ("12:00", 250), ("15:45", 1000)])
def test_clean_trade_flow_has_no_volume_spike(start: str, step_ms: int) -> None:
    # a detector's spike is >= 50 contracts on one contract within a second: ordinary flow stays below
    cfg = SimConfig(seed=6, step_ms=step_ms)
    m = SimulatedMarket(cfg, DAY, at(DAY, start))
    tape = Tape(m)
    per_s = max(1000 // step_ms, 1)
    history: list[dict[tuple[float, Right], int]] = []
    traded = 0
    for _ in tape.steps(1200 if step_ms == 250 else 600):
        history.append({key: q.volume for key, q in tape.book.quotes.items()})
        if len(history) > per_s:
            old, new = history[-1 - per_s], history[-1]
            window = [new[key] - old[key] for key in new if key in old]
            traded += sum(window)
            assert max(window) <= cfg.max_ordinary_contracts_per_s < 50
    assert traded > 0


# ----------------------------------------------------------------------------- window and session


def test_window_follows_the_underlying_with_hysteresis() -> None:
    cfg = SimConfig(seed=4, jump_rate_per_hour=600.0, jump_sd=0.01, strikes_each_side=10)
    m = SimulatedMarket(cfg, DAY, at(DAY, "11:00"))
    tape = Tape(m)
    moves = 0
    for st in tape.steps(300):
        for e in st.events:
            if isinstance(e, ChainUpdate) and e.removed_strikes:
                moves += 1
                entering = {q.strike for q in e.quotes} - set(e.removed_strikes)
                window = set(m.window_strikes())
                assert not set(e.removed_strikes) & window
                assert window - entering <= {k for k, _ in tape.book.quotes}
        strikes = sorted({k for k, _ in tape.book.quotes})
        assert strikes == list(m.window_strikes())
        assert len(strikes) == 21
        centre = strikes[10]
        assert abs(m.spot - centre) <= cfg.window_hysteresis + 0.5 + 1e-9
        assert len(tape.book.quotes) == 42
    assert moves >= 2


@pytest.mark.parametrize(("s", "close_ny"), [(DAY, "16:00"), (HALF_DAY, "13:00")])
def test_expires_at_the_session_close_with_one_notice(s: Session, close_ny: str) -> None:
    assert s.close_utc.astimezone(NEW_YORK).strftime("%H:%M") == close_ny
    start = to_ns(s.close_utc) - 10_000_000_000
    m = SimulatedMarket(SimConfig(step_ms=1000, anomaly_rate_per_min=60.0), s, start)
    steps = [m.step() for _ in range(12)]
    assert all(any(isinstance(e, ChainUpdate) for e in st.events) for st in steps[:9])
    closing = steps[9]
    assert closing.ts_ns == s.close_ns
    assert m.closed
    assert [type(e) for e in closing.events] == [Notice]
    notice = closing.events[0]
    assert isinstance(notice, Notice)
    assert notice.code == "session.closed"
    assert steps[10].events == ()
    assert steps[11].events == ()
    # every anomaly still running ended at the close
    started = {lab.id for st in steps for lab in st.labels if lab.end_ns is None}
    ended = {lab.id for st in steps for lab in st.labels if lab.end_ns is not None}
    assert started <= ended
    assert isinstance(m.initial()[0], Notice)


def test_bad_config_is_refused_with_a_message() -> None:
    with pytest.raises(ValueError, match="unknown anomaly kinds"):
        SimConfig(anomaly_kinds=("parity", "gamma_squeeze"))
    with pytest.raises(ValueError, match="step_ms"):
        SimConfig(step_ms=0)


def test_a_step_of_a_hundred_contracts_is_fast() -> None:
    m = SimulatedMarket(SimConfig(strikes_each_side=25), DAY, at(DAY, "10:00"))
    for _ in range(20):
        m.step()
    t0 = time.perf_counter()
    for _ in range(400):
        m.step()
    per_step = (time.perf_counter() - t0) / 400
    assert per_step < 0.005  # generous for CI; typically ~0.3 ms (see the bench)
