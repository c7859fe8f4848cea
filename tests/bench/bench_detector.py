"""Detector benchmarks: on_chain latency on a 600-contract chain, and the whole detector against
py_vollib_vectorized's IV alone on the same chain.

Run: ``.venv/bin/python -m pytest tests/bench/bench_detector.py -m bench -s``. Prints figures;
asserts nothing about timing.
"""

from __future__ import annotations

import importlib
import math
import os
import time
import warnings
from types import ModuleType

import numpy as np
import pytest

from agent.detector import Detector, DetectorConfig, _kernels
from agent.domain import ChainUpdate, UnderlyingTick
from agent.feeds.sim import SimConfig, SimulatedMarket
from agent.pricing import _jit
from agent.session import to_ns
from tests.agent.detector.simrun import DAY


def _peer(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        print(f"  [{name} not installed: skipped]")
        return None


def _market(seed: int = 3) -> tuple[SimulatedMarket, ChainUpdate, UnderlyingTick]:
    # 150 strikes each side: 301 strikes, 602 contracts
    m = SimulatedMarket(
        SimConfig(seed=seed, strikes_each_side=150, anomaly_rate_per_min=6.0), DAY, to_ns(DAY.at("11:00"))
    )
    init = m.initial()
    und = next(e for e in init if isinstance(e, UnderlyingTick))
    chain = next(e for e in init if isinstance(e, ChainUpdate))
    return m, chain, und


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min) on {os.cpu_count()} CPU(s)"


def _compile_line() -> str:
    """First-use cost of the numba kernels in this process (a cache hit when the cache was warm;
    run with ``NUMBA_CACHE_DIR`` pointing at an empty directory for the cold figure)."""
    t0 = time.perf_counter()
    ok = _kernels.detector_kernels_ready()
    took = time.perf_counter() - t0
    parts = ", ".join(f"{k} {v:.2f} s" for k, v in _jit.COMPILE_SECONDS.items())
    return f"numba kernels {'ready' if ok else 'NOT available (numpy path)'}: {parts or f'{took:.2f} s'}"


@pytest.mark.bench
def test_bench_on_chain_latency_600_contracts() -> None:
    """Three seeded runs of 1500 simulator steps each (the update as the agent gets it: the quotes
    that changed, folded and evaluated), then a full 602-quote update each time."""
    print(f"\n{_compile_line()}")
    print(f"on_chain, 602-contract chain; {_load()}")
    for compiled in (True, False):
        _latency(compiled)


def _latency(compiled: bool) -> None:
    """Lag (wall clock, what the issue's target is about) and this thread's CPU time per update:
    on a shared machine a preempted update's lag includes other processes' time slices, its CPU
    time does not, so the CPU figure is the code's own cost and the gap between the two is load."""
    print(f" {'compiled kernels' if compiled else 'numpy path'}:")
    pooled: list[float] = []
    pooled_cpu: list[float] = []
    for seed in (3, 4, 5):
        m, chain, und = _market(seed)
        det = Detector(DetectorConfig(), DAY, compiled=compiled)
        det.on_chain(chain, und, m.now_ns)
        evals: list[int] = []
        cpu: list[int] = []
        sizes: list[int] = []
        for _ in range(1500):
            st = m.step()
            ups = [e for e in st.events if isinstance(e, ChainUpdate)]
            for e in st.events:
                if isinstance(e, UnderlyingTick):
                    und = e
            if not ups:
                continue
            c0 = time.thread_time_ns()
            received = time.perf_counter_ns()
            out = det.on_chain(ups, und, st.ts_ns, received_ns=received)
            cpu.append(time.thread_time_ns() - c0)
            evals.append(out.lag_ns)
            sizes.append(sum(len(u.quotes) for u in ups))
        a = np.array(evals[50:]) / 1e3
        pooled.extend(a.tolist())
        pooled_cpu.extend((np.array(cpu[50:]) / 1e3).tolist())
        print(
            f"  seed {seed}: {a.size} updates (median {int(np.median(sizes))} quotes changed): "
            f"p50 {np.percentile(a, 50):7.1f} us  p90 {np.percentile(a, 90):7.1f} us  "
            f"p99 {np.percentile(a, 99):7.1f} us  max {a.max():8.1f} us"
        )
    p = np.array(pooled)
    print(
        f"  all:    p50 {np.percentile(p, 50):7.1f} us  p90 {np.percentile(p, 90):7.1f} us  "
        f"p99 {np.percentile(p, 99):7.1f} us   (target p99 < 2000 us); {_load()}"
    )
    c = np.array(pooled_cpu)
    print(
        f"  CPU:    p50 {np.percentile(c, 50):7.1f} us  p90 {np.percentile(c, 90):7.1f} us  "
        f"p99 {np.percentile(c, 99):7.1f} us   (this thread's CPU time in on_chain: lag minus preemption)"
    )
    # a full-chain update every time (what a replay of full snapshots costs)
    m, chain, und = _market()
    det2 = Detector(DetectorConfig(), DAY, compiled=compiled)
    full = []
    for i in range(200):
        t0 = time.perf_counter_ns()
        det2.on_chain(chain, und, m.now_ns + i)
        full.append(time.perf_counter_ns() - t0)
    f = np.array(full[20:]) / 1e3
    print(
        f"  full 602-quote update each time: p50 {np.percentile(f, 50):8.1f} us   p99 {np.percentile(f, 99):8.1f} us"
    )


@pytest.mark.bench
def test_bench_whole_detector_vs_py_vollib_vectorized_iv() -> None:
    """Ours: IV + greeks + every rule (a full evaluation, the chain's quotes already folded in);
    theirs: py_vollib_vectorized's Black IV of the two-sided mids on the same chain."""
    print(f"\n{_compile_line()}; {_load()}")
    m, chain, und = _market()
    dets = {c: Detector(DetectorConfig(), DAY, compiled=c) for c in (True, False)}
    for d in dets.values():
        d.on_chain(chain, und, m.now_ns)
    for _ in range(40):
        st = m.step()
        ups = [e for e in st.events if isinstance(e, ChainUpdate)]
        for e in st.events:
            if isinstance(e, UnderlyingTick):
                und = e
        if ups:
            for d in dets.values():
                d.on_chain(ups, und, st.ts_ns)
    empty = ChainUpdate(chain.symbol, chain.expiry, (), underlying=m.spot)
    now = m.now_ns
    ours: dict[bool, tuple[float, float]] = {}
    out = dets[True].on_chain(empty, und, now)
    for compiled, det in dets.items():
        times = []
        for i in range(400):
            t0 = time.perf_counter_ns()
            out = det.on_chain(empty, und, now + 1 + i)
            times.append(time.perf_counter_ns() - t0)
        ours[compiled] = (min(times) / 1e3, float(np.median(times)) / 1e3)
        print(
            f"whole detector (IV + greeks + every rule), 602 contracts, {'compiled' if compiled else 'numpy'}: "
            f"best {ours[compiled][0]:.1f} us, median {ours[compiled][1]:.1f} us"
        )
    pvv = _peer("py_vollib_vectorized")
    if pvv is None:
        return
    # every two-sided quote of the chain (a mid has an IV), at the chain's own forward and rate
    book = dets[True]._state
    two = (book.bid > 0) & (book.ask > 0)
    rows, cols = np.nonzero(two)
    price = 0.5 * (book.bid + book.ask)[rows, cols]
    k = book.strikes[cols]
    flag = np.where(rows == 0, "c", "p")
    tau = DAY.tau(now)
    fwd = out.forward
    f = np.full(k.size, fwd)
    t = np.full(k.size, tau)
    t_cal = (DAY.close_ns - now) / (365 * 24 * 3600 * 1e9)
    r = np.full(k.size, DetectorConfig().max_rate * t_cal / tau)  # pvv discounts with r * t
    n_otm = int(
        np.count_nonzero(two[0] & (book.strikes >= fwd)) + np.count_nonzero(two[1] & (book.strikes < fwd))
    )
    print(f"  (of those, ours solves the {n_otm} out-of-the-money mids; the others add nothing but parity)")
    theirs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pvv warns about the below-intrinsic mids of a wide chain
        for _ in range(100):
            t0 = time.perf_counter_ns()
            pvv.vectorized_implied_volatility_black(price, f, k, r, t, flag, return_as="numpy")
            theirs.append(time.perf_counter_ns() - t0)
    best_theirs = min(theirs) / 1e3
    med_theirs = float(np.median(theirs)) / 1e3
    print(
        f"py_vollib_vectorized IV only ({k.size} mids): best {best_theirs:.1f} us, median {med_theirs:.1f} us"
    )
    for compiled, (best_ours, med_ours) in ours.items():
        print(
            f"ratio (their IV) / (our whole detector, {'compiled' if compiled else 'numpy'}): "
            f"best {best_theirs / best_ours:.2f}x, median {med_theirs / med_ours:.2f}x (target > 1)"
        )
    assert math.isfinite(best_theirs)
