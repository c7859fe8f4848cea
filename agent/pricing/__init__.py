"""Option pricing: Black-76 on the forward, vectorized with numpy.

Public API (``tau`` in trading years per ``agent.session``, money in float dollars per share):

* :func:`black76_price`, :func:`black76_greeks` (:class:`Greeks`: price, forward delta, gamma,
  vega per 1.00 vol, theta per trading minute);
* :func:`implied_vol` (:class:`ImpliedVol` with an :class:`IVReason` per option) and
  :func:`implied_vol_and_greeks` (:class:`ChainAnalytics`);
* :func:`implied_forward` (:class:`ForwardFit`) and :func:`carry_forward`;
* :func:`american_bounds`, :func:`early_exercise_risk` (:class:`EarlyExercise` bits),
  :func:`european_is_valid`.
"""

from agent.pricing.american import (
    AmericanBounds,
    EarlyExercise,
    american_bounds,
    american_intrinsic,
    early_exercise_risk,
    european_is_valid,
)
from agent.pricing.black import MIN_TAU_YEARS, Greeks, black76_greeks, black76_price, floor_tau
from agent.pricing.forward import ForwardFit, carry_forward, implied_forward
from agent.pricing.iv import ChainAnalytics, ImpliedVol, IVReason, implied_vol, implied_vol_and_greeks

__all__ = [
    "MIN_TAU_YEARS",
    "AmericanBounds",
    "ChainAnalytics",
    "EarlyExercise",
    "ForwardFit",
    "Greeks",
    "IVReason",
    "ImpliedVol",
    "american_bounds",
    "american_intrinsic",
    "black76_greeks",
    "black76_price",
    "carry_forward",
    "early_exercise_risk",
    "european_is_valid",
    "floor_tau",
    "implied_forward",
    "implied_vol",
    "implied_vol_and_greeks",
]
