"""The detector on the two real IB snapshots (tests/data): what it finds, each arbitrage explained."""

from __future__ import annotations

import csv
import datetime as dt
import math
from pathlib import Path

import numpy as np
import pytest

from agent.detector import ARBITRAGE_KINDS, Detector, DetectorConfig, Signal
from agent.detector.engine import DetectorOutput
from agent.domain import ChainUpdate, Right
from agent.feeds.ib_csv import load_ib_csv
from agent.pricing import implied_vol
from agent.session import session, to_ns

DATA = Path(__file__).resolve().parents[2] / "data"
FILE_0317 = DATA / "ib_spy_chain_2025-03-17_1355ET.csv"
FILE_0326 = DATA / "ib_spy_chain_2025-03-26_1555ET.csv"


def detect(path: Path, cfg: DetectorConfig | None = None) -> tuple[ChainUpdate, DetectorOutput]:
    (snap,) = load_ib_csv(path)
    chain = snap.chains[0]  # the 0DTE expiry
    day = session(dt.datetime.strptime(chain.expiry, "%Y%m%d").date())
    out = Detector(cfg or DetectorConfig(), day).on_chain(chain, snap.underlying, snap.ts_ns)
    return chain, out


def raw_rows(path: Path) -> dict[tuple[float, str], dict[str, str]]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    expiry = min(r["lastTradeDateOrContractMonth"] for r in rows)
    return {(float(r["strike"]), r["right"]): r for r in rows if r["lastTradeDateOrContractMonth"] == expiry}


def test_0326_five_minutes_before_the_close_has_no_arbitrage_signal() -> None:
    _, out = detect(FILE_0326)
    assert [s for s in out.signals_changed if s.kind in (*ARBITRAGE_KINDS, "crossed")] == []


def test_0317_would_be_arbitrages_rest_on_legs_quoted_seconds_apart_and_are_quote_quality() -> None:
    """Three would-be arbitrages, all from the 567-569 strikes, all there at the bids and asks *as
    printed*, none of the kinds the data README checked (vertical, butterfly, intrinsic, crossed).

    The call quotes were stamped at 17:54:54-55 UTC and the put quotes at 17:54:58: the synthetic
    ``C - P`` drifts by about $0.10 across strikes with the underlying in those four seconds, so a
    box or parity "arbitrage" appears between legs that were never quoted at the same moment. With
    the default leg-skew limit (1 s) they are ``leg_skew`` quote-quality findings, not arbitrage;
    with the check off (``max_leg_skew_ns=0``) they are the parity and box signals they look like.
    """
    _, out = detect(FILE_0317)
    assert [s for s in out.signals_changed if s.is_arbitrage] == []
    skew = {s.id: s for s in out.signals_changed if s.kind == "leg_skew"}
    assert set(skew) == {
        "leg_skew:20250317:parity:569",
        "leg_skew:20250317:parity:568",
        "leg_skew:20250317:box:567C",
    }
    rows = raw_rows(FILE_0317)
    stamp = {key: dt.datetime.fromisoformat(r["time"]) for key, r in rows.items() if r["time"]}
    for s in skew.values():
        times = [stamp[(leg.strike, leg.right.value)] for leg in s.legs]
        gap = (max(times) - min(times)).total_seconds()
        assert gap > 1.0  # the legs were quoted seconds apart
        assert f"{gap:.1f}s apart" in s.explanation

    _, unchecked = detect(FILE_0317, DetectorConfig(max_leg_skew_ns=0))
    arb = {s.id: s for s in unchecked.signals_changed if s.is_arbitrage}
    assert set(arb) == {"parity:20250317:569", "parity:20250317:568", "box:20250317:567C"}
    com = 0.65 / 100
    s = arb["parity:20250317:569"]
    legs = {(leg.strike, leg.right): leg for leg in s.legs}
    assert legs[(569.0, Right.CALL)].side == "BUY"
    assert legs[(569.0, Right.PUT)].side == "SELL"
    ca, pb = float(rows[(569.0, "C")]["ask"]), float(rows[(569.0, "P")]["bid"])
    und = float(rows[(569.0, "C")]["undPrice"])
    # reversal: buy the call, sell the put, short the stock at 567.18, deliver at 569 at expiry
    edge = (und - 569.0) - (ca - pb) - 2 * com - 0.005
    assert edge > 0
    assert s.edge == pytest.approx(edge * 100, abs=0.02)
    assert skew["leg_skew:20250317:parity:569"].edge == pytest.approx(s.edge)
    proceeds = (
        float(rows[(567.0, "C")]["bid"])
        - float(rows[(569.0, "C")]["ask"])
        + float(rows[(569.0, "P")]["bid"])
        - float(rows[(567.0, "P")]["ask"])
    )
    assert proceeds - 2.0 - 4 * com > 0  # a short box paying more than its width, at the printed quotes


@pytest.mark.parametrize("path", [FILE_0317, FILE_0326])
def test_smile_outliers_stay_under_two_percent_and_the_fit_is_published(path: Path) -> None:
    chain, out = detect(path)
    outliers = [s for s in out.signals_changed if s.kind == "smile_outlier"]
    assert len(outliers) < 0.02 * len(chain.quotes)
    assert out.smile is not None
    assert out.smile.model == "svi"
    # the curve is published over the strikes the fit covers (no flat extrapolation to draw)
    assert len(out.smile.strikes) == len(out.smile.ivs) >= out.smile.n_used
    assert set(out.smile.strikes) <= {q.strike for q in chain.quotes}
    assert out.smile.n_used >= 8
    assert all(0.01 < v < 5.0 for v in out.smile.ivs)


@pytest.mark.parametrize(
    ("path", "ok_share"),
    [(FILE_0317, 0.85), (FILE_0326, 0.75)],
)
def test_our_iv_of_ib_model_price_against_ib_model_iv(path: Path, ok_share: float) -> None:
    """Our IV of IB's model price (at IB's model underlying) against IB's model IV.

    Conventions: IB's model vols are per calendar year (365 days) and count to about 16:16 New
    York, not to the 16:00 close: solving IB's own out-of-the-money rows for the time that makes
    price, underlying and vol agree gives a median of 21 minutes at 15:55:22 on 03-26 (16:16) and
    144 minutes at 13:55:08 on 03-17 (16:19; the rows of that file scatter from 97 to 219 minutes,
    their ticks are up to 14 s apart). Ours are per trading year (252 x 390 minutes) to the close.
    Converting at equal total variance with 16:16 gives the printed distributions (vol points,
    ours - IB's).

    What remains: out of the money the two agree (median +0.1 on 03-17, +0.4 on 03-26). The
    03-17 file's in-the-money rows (29 of its 38) do not: IB's model price there was not computed at
    the underlying the row reports. Its deep in-the-money puts are priced at exactly ``K -
    566.823`` (no time value) and its deep calls at ``566.843 - K`` while the same rows say
    ``model_undPrice`` 567.334, so against 567.334 they carry about $0.5 of time value that is not
    there, and our IV of it is 10-30 points above IB's; no time-to-expiry or rate convention
    reconciles that (the time that fits each such row ranges from 90 to 570 minutes). IB's vols
    for those rows (0.6 to 1.3 on deep puts) are not an implied vol of that price either.
    """
    rows = [r for r in raw_rows(path).values() if r["model_optPrice"] not in ("", "-1")]
    rows = [
        r for r in rows if r["model_impliedVol"] not in ("", "-1") and r["model_undPrice"] not in ("", "-1")
    ]
    expiry = rows[0]["lastTradeDateOrContractMonth"]
    day = session(dt.datetime.strptime(expiry, "%Y%m%d").date())
    now = to_ns(max(dt.datetime.fromisoformat(r["time"]) for r in rows if r["time"]))
    price = np.array([float(r["model_optPrice"]) for r in rows])
    k = np.array([float(r["strike"]) for r in rows])
    call = np.array([r["right"] == "C" for r in rows])
    und = np.array([float(r["model_undPrice"]) for r in rows])
    ib = np.array([float(r["model_impliedVol"]) for r in rows])
    tau = day.tau(now)
    ours = implied_vol(price, und, k, tau, call, 1.0)
    assert ours.ok.mean() >= ok_share  # the rest: price at or below intrinsic (NaN with a reason)
    tau_ib = ((day.close_ns - now) / 6e10 + 16.0) / (365 * 1440)
    ib_ours = ib * math.sqrt(tau_ib / tau)
    extrinsic = price - np.maximum(np.where(call, und - k, k - und), 0.0)
    sel = ours.ok & (extrinsic >= 0.05)  # IB's model prices are float32: below that, rounding rules
    otm = np.where(call, k >= und, k <= und)
    diff = (ours.vol - ib_ours) * 100.0
    for name, m in (("all", sel), ("out of the money", sel & otm), ("in the money", sel & ~otm)):
        pct = np.percentile(diff[m], [5, 25, 50, 75, 95])
        print(
            f"\n{path.name}: {name}: {int(m.sum())} options, ours - IB (vol points) "
            f"p5/25/50/75/95 = {np.round(pct, 2)}",
            end="",
        )
    print()
    assert np.isfinite(diff[sel]).all()
    assert np.count_nonzero(sel & otm) >= 5
    assert abs(float(np.median(diff[sel & otm]))) < 1.0


def test_0317_ib_model_prices_in_the_money_use_another_underlying() -> None:
    """The evidence for what the IV comparison leaves unexplained on 03-17 (see above): deep in the
    money, IB's model price is the intrinsic value at 566.82, not at the row's 567.334 (16 of the
    18 puts struck 576-595; the other two, 575 and 589, are priced at 567.31)."""
    rows = [r for r in raw_rows(FILE_0317).values() if r["model_optPrice"] not in ("", "-1")]
    deep_puts = [r for r in rows if r["right"] == "P" and float(r["strike"]) >= 575.0]
    assert len(deep_puts) == 21
    priced_at = [float(r["strike"]) - float(r["model_optPrice"]) for r in deep_puts]
    assert sum(abs(u - 566.822) < 0.005 for u in priced_at) >= 16
    assert all(float(r["model_undPrice"]) == pytest.approx(567.334, abs=1e-3) for r in deep_puts)


def signal_legs_are_clean(s: Signal) -> bool:
    return all(math.isfinite(leg.price) and leg.price > 0 for leg in s.legs)


@pytest.mark.parametrize("path", [FILE_0317, FILE_0326])
def test_every_arbitrage_leg_is_a_real_price(path: Path) -> None:
    _, out = detect(path)
    assert all(signal_legs_are_clean(s) for s in out.signals_changed if s.is_arbitrage)
