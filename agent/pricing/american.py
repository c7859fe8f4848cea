"""American exercise: bounds, and where a European (Black-76) price is not a faithful stand-in.

SPY options are American. On the expiry day early exercise is worth (almost) nothing except for

* deep in-the-money puts, whose time value can fall below the interest earned on the strike
  (``K (1 - D)``), at which point exercising now beats holding; and
* in-the-money calls when a dividend goes ex before the holder could otherwise capture it
  (exercise the day before the ex-date if the call's time value is below the dividend).

The engine prices European options on the forward. This module bounds the American value around
that European value and flags the options where the difference could matter, so that a European
price is never presented as exact where it is not:

* ``P_E <= P_A <= P_E + K (1 - D)`` (the early-exercise premium of a put is at most the interest on
  the strike over the remaining time), ``P_A >= K - S``;
* ``C_A >= max(C_E, S - K)``, ``C_A <= C_E + dividend`` (with no dividend before expiry,
  ``C_A = C_E``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag

import numpy as np
import numpy.typing as npt

from agent.pricing.black import ArrayLike, FloatArray

IntArray = npt.NDArray[np.int8]


class EarlyExercise(IntFlag):
    """Why a European price may misrepresent an American option (bits, stored as int8)."""

    NONE = 0
    BELOW_AMERICAN_INTRINSIC = 1
    """The European price is below ``max(S - K, 0)`` / ``max(K - S, 0)``: certainly not the American value."""
    PUT_EARLY_EXERCISE = 2
    """A put whose time value is within ``margin`` times the interest on its strike."""
    CALL_DIVIDEND = 4
    """A call whose time value is below a dividend going ex before expiry-day exercise is too late."""


@dataclass(frozen=True, slots=True)
class AmericanBounds:
    """Lower and upper bounds of the American value given the European value (dollars)."""

    lower: FloatArray
    upper: FloatArray


def american_intrinsic(spot: ArrayLike, strike: ArrayLike, is_call: ArrayLike) -> FloatArray:
    """Immediate-exercise value ``max(S - K, 0)`` for calls, ``max(K - S, 0)`` for puts."""
    s = np.asarray(spot, dtype=np.float64)
    k = np.asarray(strike, dtype=np.float64)
    out: FloatArray = np.maximum(np.where(np.asarray(is_call, dtype=bool), s - k, k - s), 0.0)
    return out


def american_bounds(
    european_price: ArrayLike,
    spot: ArrayLike,
    strike: ArrayLike,
    is_call: ArrayLike,
    discount: ArrayLike,
    dividend: ArrayLike = 0.0,
) -> AmericanBounds:
    """Bounds of the American value around the European one (see the module docstring).

    ``dividend`` is the cash dividend (per share) going ex before expiry, 0 when there is none.
    """
    e = np.asarray(european_price, dtype=np.float64)
    k = np.asarray(strike, dtype=np.float64)
    call = np.asarray(is_call, dtype=bool)
    d = np.asarray(discount, dtype=np.float64)
    div = np.asarray(dividend, dtype=np.float64)
    intrinsic = american_intrinsic(spot, k, call)
    lower = np.maximum(e, intrinsic)
    upper = np.where(call, e + div, e + k * np.maximum(1.0 - d, 0.0))
    upper = np.maximum(upper, lower)
    return AmericanBounds(lower=lower, upper=upper)


def early_exercise_risk(
    european_price: ArrayLike,
    spot: ArrayLike,
    strike: ArrayLike,
    is_call: ArrayLike,
    discount: ArrayLike,
    dividend: ArrayLike = 0.0,
    *,
    margin: float = 2.0,
    tolerance: float = 0.005,
) -> IntArray:
    """``EarlyExercise`` bits per option; 0 means the European price is a valid representation.

    A put is flagged when its time value over the American intrinsic is below
    ``margin * K * (1 - D)`` and that interest is itself above ``tolerance`` dollars (half a cent by
    default: below it the premium cannot move a quote). A call is flagged when a ``dividend`` above
    ``tolerance`` goes ex before expiry and exceeds the call's time value.
    """
    e = np.asarray(european_price, dtype=np.float64)
    s = np.asarray(spot, dtype=np.float64)
    k = np.asarray(strike, dtype=np.float64)
    call = np.asarray(is_call, dtype=bool)
    d = np.asarray(discount, dtype=np.float64)
    div = np.asarray(dividend, dtype=np.float64)
    intrinsic = american_intrinsic(s, k, call)
    time_value = e - intrinsic
    carry = k * np.maximum(1.0 - d, 0.0)
    flags = np.where(time_value < -tolerance, int(EarlyExercise.BELOW_AMERICAN_INTRINSIC), 0)
    put_risk = ~call & (carry > tolerance) & (time_value < margin * carry) & (k > s)
    flags = flags | np.where(put_risk, int(EarlyExercise.PUT_EARLY_EXERCISE), 0)
    call_risk = call & (div > tolerance) & (time_value < div) & (s > k)
    flags = flags | np.where(call_risk, int(EarlyExercise.CALL_DIVIDEND), 0)
    out: IntArray = np.asarray(flags, dtype=np.int8)
    return out


def european_is_valid(
    european_price: ArrayLike,
    spot: ArrayLike,
    strike: ArrayLike,
    is_call: ArrayLike,
    discount: ArrayLike,
    dividend: ArrayLike = 0.0,
    *,
    margin: float = 2.0,
    tolerance: float = 0.005,
) -> npt.NDArray[np.bool_]:
    """True where the European price represents the American option (no early-exercise flag)."""
    flags = early_exercise_risk(
        european_price, spot, strike, is_call, discount, dividend, margin=margin, tolerance=tolerance
    )
    out: npt.NDArray[np.bool_] = flags == 0
    return out
