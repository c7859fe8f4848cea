"""Pricing benchmarks: IV (+ greeks) throughput against py_vollib_vectorized and QuantLib.

Run: ``.venv/bin/python -m pytest tests/bench/bench_pricing.py -m bench -s``. Prints figures; asserts
nothing about timing. Peers that are not installed are skipped with a message.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from agent.pricing import black76_price, implied_vol, implied_vol_and_greeks
from agent.session import TRADING_MINUTES_PER_YEAR


def _peer(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        print(f"  [{name} not installed: skipped]")
        return None


def _best(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _spy_chain(n_strikes: int, minutes_left: float) -> dict[str, np.ndarray]:
    """A realistic 0DTE chain: strikes $1 apart around 570, calls and puts, a smile, cent ticks."""
    f = 570.0
    k = np.repeat(f - n_strikes // 2 + np.arange(n_strikes, dtype=float), 2)
    call = np.tile([True, False], n_strikes)
    tau = np.full(k.size, minutes_left / TRADING_MINUTES_PER_YEAR)
    x = np.log(f / k)
    sigma = 0.14 - 0.8 * x + 60.0 * x * x
    df = np.exp(-0.045 * tau)
    price = np.maximum(np.round(black76_price(f, k, tau, sigma, call, df), 2), 0.01)
    return {"price": price, "forward": np.full(k.size, f), "strike": k, "tau": tau, "call": call, "df": df}


def _random_options(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = rng.uniform(500.0, 650.0, n)
    tau = rng.integers(1, 391, n) / TRADING_MINUTES_PER_YEAR
    sigma = rng.uniform(0.05, 1.0, n)
    k = f * np.exp(rng.uniform(-4.0, 4.0, n) * sigma * np.sqrt(tau))
    call = rng.random(n) < 0.5
    df = np.exp(-0.045 * tau)
    price = black76_price(f, k, tau, sigma, call, df)
    intrinsic = df * np.maximum(np.where(call, f - k, k - f), 0)
    keep = price - intrinsic >= 1e-4
    return {
        "price": price[keep][:n],
        "forward": f[keep],
        "strike": k[keep],
        "tau": tau[keep],
        "call": call[keep],
        "df": df[keep],
        "sigma": sigma[keep],
    }


def _pvv_iv(c: dict[str, np.ndarray], pvv: ModuleType) -> Callable[[], Any]:
    flag = np.where(c["call"], "c", "p")
    r = -np.log(c["df"]) / c["tau"]

    def run() -> Any:
        return pvv.vectorized_implied_volatility_black(
            c["price"], c["forward"], c["strike"], r, c["tau"], flag, return_as="numpy"
        )

    return run


@pytest.mark.bench
def test_bench_chain_600_iv_and_greeks_vs_py_vollib_vectorized() -> None:
    c = _spy_chain(300, 120.0)
    args = (c["price"], c["forward"], c["strike"], c["tau"], c["call"], c["df"])
    ours_iv = _best(lambda: implied_vol(*args), 300)
    ours_all = _best(lambda: implied_vol_and_greeks(*args), 300)
    ok = int(implied_vol(*args).ok.sum())
    print(f"\n600-contract 0DTE chain (120 min left, cent ticks; {ok} with an IV):")
    print(f"  ours IV             {ours_iv * 1e6:8.1f} us")
    print(f"  ours IV + greeks    {ours_all * 1e6:8.1f} us")
    pvv = _peer("py_vollib_vectorized")
    if pvv is not None:
        theirs = _best(_pvv_iv(c, pvv), 100)
        print(f"  py_vollib_vectorized IV only {theirs * 1e6:8.1f} us")
        print(f"  ratio (their IV) / (our IV + greeks) = {theirs / ours_all:.2f}x")


@pytest.mark.bench
def test_bench_iv_throughput_100k() -> None:
    c = _random_options(130_000)
    n = 100_000
    c = {k: v[:n] for k, v in c.items()}
    args = (c["price"], c["forward"], c["strike"], c["tau"], c["call"], c["df"])
    ours = _best(lambda: implied_vol(*args), 5)
    ours_all = _best(lambda: implied_vol_and_greeks(*args), 5)
    err = float(np.nanmax(np.abs(implied_vol(*args).vol - c["sigma"])))
    rate = n / ours
    print(f"\nIV throughput at {n:,} options (1-390 min, 5-100% vol, +-4 sd moneyness):")
    print(f"  ours IV          {rate / 1e6:6.2f} M/s  ({ours * 1e3:.1f} ms; max |vol - true| {err:.1e})")
    print(f"  ours IV + greeks {n / ours_all / 1e6:6.2f} M/s  ({ours_all * 1e3:.1f} ms)")
    pvv = _peer("py_vollib_vectorized")
    if pvv is not None:
        t = _best(_pvv_iv(c, pvv), 3)
        print(f"  py_vollib_vectorized {n / t / 1e6:6.2f} M/s  -> ours / theirs = {t / ours:.2f}x")
    ql = _peer("QuantLib")
    if ql is not None:
        m = 20_000
        sd = np.sqrt(c["tau"][:m])
        rows = list(
            zip(
                c["call"][:m], c["strike"][:m], c["forward"][:m], c["price"][:m], c["df"][:m], sd, strict=True
            )
        )
        call_t, put_t, null = ql.Option.Call, ql.Option.Put, ql.nullDouble()
        f_iv = ql.blackFormulaImpliedStdDev

        def run_ql() -> None:
            for cp, k, f, p, d, s in rows:
                f_iv(call_t if cp else put_t, k, f, p, d, 0.0, null, 1e-12, 200) / s

        t = _best(run_ql, 1) * n / m
        label = f"QuantLib (1e-12, Python loop, timed on {m:,})"
        print(f"  {label} {n / t / 1e6:6.2f} M/s  -> ours / theirs = {t / ours:.1f}x")
