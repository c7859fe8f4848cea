"""American exercise: bounds and the flag that says a European price is not exact."""

from __future__ import annotations

import numpy as np

from agent.pricing import (
    EarlyExercise,
    american_bounds,
    black76_price,
    early_exercise_risk,
    european_is_valid,
)

TAU = 120 / (252 * 390)
RATE = 0.045
DF = float(np.exp(-RATE * TAU))


def test_bounds_contain_european_and_intrinsic() -> None:
    k = np.array([540.0, 570.0, 600.0, 540.0, 570.0, 600.0])
    call = np.array([True, True, True, False, False, False])
    e = black76_price(570.0, k, TAU, 0.2, call, DF)
    b = american_bounds(e, 570.0, k, call, DF)
    assert np.all(b.lower >= e)
    assert np.all(b.lower >= np.maximum(np.where(call, 570.0 - k, k - 570.0), 0))
    assert np.all(b.upper >= b.lower)
    # no dividend: an American call is worth the European one
    np.testing.assert_array_equal(b.upper[call], b.lower[call])
    # a put's early-exercise premium is at most the interest on the strike
    np.testing.assert_allclose(b.upper[~call] - e[~call], k[~call] * (1 - DF))


def test_deep_itm_put_is_flagged_atm_and_otm_are_valid() -> None:
    k = np.array([640.0, 570.0, 560.0])
    rate_year = 0.5  # a high carry so the interest on the strike over the horizon exceeds half a cent
    df = float(np.exp(-rate_year * TAU))
    e = black76_price(570.0, k, TAU, 0.15, False, df)
    flags = early_exercise_risk(e, 570.0, k, False, df)
    assert flags[0] & EarlyExercise.PUT_EARLY_EXERCISE
    # the deep ITM European put is even below the American intrinsic K - S
    assert flags[0] & EarlyExercise.BELOW_AMERICAN_INTRINSIC
    assert flags[1] == 0
    assert flags[2] == 0
    assert european_is_valid(e, 570.0, k, False, df).tolist() == [False, True, True]


def test_calls_flagged_only_with_a_dividend_above_their_time_value() -> None:
    k = np.array([540.0, 600.0])
    e = black76_price(570.0, k, TAU, 0.15, True, DF)
    assert np.all(early_exercise_risk(e, 570.0, k, True, DF) == 0)
    flags = early_exercise_risk(e, 570.0, k, True, DF, dividend=1.75)
    assert flags[0] & EarlyExercise.CALL_DIVIDEND
    assert flags[1] == 0
