"""Forward and discount implied by put-call parity, on real IB snapshots and with garbage quotes."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from agent.pricing import carry_forward, implied_forward
from agent.session import TRADING_MINUTES_PER_YEAR

DATA = Path(__file__).resolve().parents[2] / "data"


def _num(text: str | None) -> float:
    return float(text) if text not in (None, "") else math.nan


def _load_0dte(name: str) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(strikes, [call_bid, call_ask, put_bid, put_ask] columns, undPrice, median model_undPrice)."""
    with (DATA / name).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    expiry = min(r["lastTradeDateOrContractMonth"] for r in rows)
    quotes: dict[float, dict[str, tuple[float, float]]] = {}
    und: list[float] = []
    model_und: list[float] = []
    for r in rows:
        if r["lastTradeDateOrContractMonth"] != expiry:
            continue
        quotes.setdefault(float(r["strike"]), {})[r["right"]] = (_num(r["bid"]), _num(r["ask"]))
        und.append(_num(r["undPrice"]))
        if r["model_undPrice"]:
            model_und.append(_num(r["model_undPrice"]))
    strikes = np.array(sorted(k for k, q in quotes.items() if "C" in q and "P" in q))
    cols = np.array([[*quotes[k]["C"], *quotes[k]["P"]] for k in strikes])
    return strikes, cols, float(np.median(und)), float(np.median(model_und))


@pytest.mark.parametrize(
    ("name", "minutes_left"),
    [("ib_spy_chain_2025-03-17_1355ET.csv", 125.0), ("ib_spy_chain_2025-03-26_1555ET.csv", 5.0)],
)
def test_forward_from_real_snapshot_is_near_ib_underlying(name: str, minutes_left: float) -> None:
    k, q, und, model_und = _load_0dte(name)
    tau = minutes_left / TRADING_MINUTES_PER_YEAR
    fit = implied_forward(k, q[:, 0], q[:, 1], q[:, 2], q[:, 3], tau, und, 1.0)
    assert fit.method in ("parity", "parity_fixed_discount")
    assert fit.n_used >= 8
    # IB's undPrice lags the option quotes (tests/data/README.md); the model's underlying is closer.
    assert abs(fit.forward - und) < 0.35
    assert abs(fit.forward - model_und) < 0.2
    assert 0.999 < fit.discount <= 1.0
    # the strikes the fit used agree with the fitted forward (quotes are seconds apart: a few cents)
    used = fit.used
    implied = k[used] + (q[used, 0] + q[used, 1] - q[used, 2] - q[used, 3]) / 2 / fit.discount
    assert np.median(np.abs(implied - fit.forward)) < 0.05
    assert np.all(np.abs(implied - fit.forward) < 0.3)
    assert fit.residual_rms < 0.05


def test_garbage_quotes_do_not_move_the_forward() -> None:
    k, q, und, _ = _load_0dte("ib_spy_chain_2025-03-26_1555ET.csv")
    tau = 5.0 / TRADING_MINUTES_PER_YEAR
    clean = implied_forward(k, q[:, 0], q[:, 1], q[:, 2], q[:, 3], tau, und, 1.0)
    bad = q.copy()
    two_sided = np.flatnonzero(clean.used)
    bad[two_sided[1], 0:2] += 5.0  # a call quoted five dollars too high
    bad[two_sided[3], 2:4] = [4.75, 4.9]  # a put quote from another strike
    bad[two_sided[5], 0:2] = [0.0, 0.0]  # a wiped call
    fit = implied_forward(k, bad[:, 0], bad[:, 1], bad[:, 2], bad[:, 3], tau, und, 1.0)
    assert abs(fit.forward - clean.forward) < 0.02
    assert not fit.used[two_sided[1]]
    assert not fit.used[two_sided[3]]
    assert not fit.used[two_sided[5]]


def test_synthetic_chain_recovers_forward_and_discount() -> None:
    rng = np.random.default_rng(5)
    k = np.arange(500.0, 640.0, 1.0)
    f_true, d_true = 570.37, 0.995
    parity = d_true * (f_true - k)
    put_mid = np.maximum(k - f_true, 0) + 2.0
    call_mid = put_mid + parity
    half = rng.uniform(0.005, 0.05, k.size)
    noise = rng.uniform(-0.004, 0.004, k.size)
    fit = implied_forward(
        k,
        call_mid - half + noise,
        call_mid + half + noise,
        put_mid - half,
        put_mid + half,
        0.01,
        570.0,
        0.9951,
    )
    assert fit.method == "parity"
    assert fit.forward == pytest.approx(f_true, abs=0.005)
    assert fit.discount == pytest.approx(d_true, abs=5e-5)


def test_too_few_strikes_falls_back_to_rate_and_dividends() -> None:
    f_fb, d_fb = carry_forward(570.0, 0.045, 60 / TRADING_MINUTES_PER_YEAR, dividend_yield=0.013)
    nan = np.nan
    fit = implied_forward([560.0, 570.0], [10.5, nan], [10.7, 1.2], [0.4, 0.9], [0.5, 1.0], 0.001, f_fb, d_fb)
    assert fit.method == "fallback"
    assert (fit.forward, fit.discount, fit.n_used) == (f_fb, d_fb, 0)
    assert f_fb > 570.0
    assert d_fb < 1.0


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="same length"):
        implied_forward([1.0, 2.0], [1.0], [1.0], [1.0], [1.0], 0.001, 570.0, 1.0)
    with pytest.raises(ValueError, match="fallback_forward"):
        implied_forward([1.0], [1.0], [1.0], [1.0], [1.0], 0.001, math.nan, 1.0)
