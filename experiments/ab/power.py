"""Power, minimum detectable effect and sample size for a two-sample comparison of means.

All three solve the same relation of statsmodels' ``TTestIndPower`` (two-sided, two-sample
t-test) for a different unknown. With Cohen's ``d = effect / std`` and
``n_t = ratio * n_c``, approximately::

    n_c = (1 + 1 / ratio) * (z_{1 - alpha/2} + z_{power})**2 / d**2

(statsmodels solves the exact noncentral-t version). ``effect`` is absolute, in the metric's
units; a relative MDE is ``effect / baseline_mean``.
"""

from __future__ import annotations

import math

import numpy as np
from statsmodels.stats.power import TTestIndPower

from experiments.ab._checks import integer, open_unit, positive, real

__all__ = ["minimum_detectable_effect", "required_sample_size", "statistical_power"]


def _scalar(value: object) -> float:
    """``solve_power`` returns a shape-(1,) array when it falls back to fsolve; numpy 2 refuses ``float()`` on it."""
    return float(np.asarray(value).item())


def required_sample_size(
    *,
    mde: float,
    std: float,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
) -> int:
    """Control-arm units needed to detect an absolute effect ``mde`` with the given power.

    Parameters
    ----------
    mde : float
        Smallest absolute effect worth detecting, ``> 0``.
    std : float
        Standard deviation of the per-unit metric, ``> 0``.
    alpha : float, default=0.05
        Two-sided significance level, in (0, 1).
    power : float, default=0.8
        Probability of detecting ``mde``, in (0, 1).
    ratio : float, default=1.0
        ``n_treatment / n_control``, ``> 0``.

    Returns
    -------
    int
        ``n_control`` rounded up; treatment needs ``ceil(ratio * n_control)``.

    Raises
    ------
    TypeError
        If an argument is not a number.
    ValueError
        If an argument is out of range.
    """
    d = positive(mde, "mde") / positive(std, "std")
    n = TTestIndPower().solve_power(
        effect_size=d,
        alpha=open_unit(alpha, "alpha"),
        power=open_unit(power, "power"),
        ratio=positive(ratio, "ratio"),
        alternative="two-sided",
    )
    return int(math.ceil(_scalar(n)))


def minimum_detectable_effect(
    *,
    n_control: int,
    std: float,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
) -> float:
    """Smallest absolute effect detected with probability ``power`` at ``n_control`` units.

    Parameters
    ----------
    n_control : int
        Control-arm units, ``>= 2``.
    std : float
        Standard deviation of the per-unit metric, ``> 0``.
    alpha, power, ratio
        As :func:`required_sample_size`.

    Returns
    -------
    float
        Absolute MDE in the metric's units.

    Raises
    ------
    TypeError, ValueError
        As :func:`required_sample_size`.
    """
    d = TTestIndPower().solve_power(
        nobs1=integer(n_control, "n_control", minimum=2),
        alpha=open_unit(alpha, "alpha"),
        power=open_unit(power, "power"),
        ratio=positive(ratio, "ratio"),
        alternative="two-sided",
    )
    return _scalar(d) * positive(std, "std")


def statistical_power(
    *,
    effect: float,
    std: float,
    n_control: int,
    alpha: float = 0.05,
    ratio: float = 1.0,
) -> float:
    """Probability that a two-sided test at ``alpha`` detects a true absolute ``effect``.

    Parameters
    ----------
    effect : float
        True absolute effect (sign ignored).
    std : float
        Standard deviation of the per-unit metric, ``> 0``.
    n_control : int
        Control-arm units, ``>= 2``.
    alpha, ratio
        As :func:`required_sample_size`.

    Returns
    -------
    float
        Power in ``[alpha, 1)``.

    Raises
    ------
    TypeError, ValueError
        As :func:`required_sample_size`.
    """
    d = abs(real(effect, "effect")) / positive(std, "std")
    return float(
        TTestIndPower().power(
            d,
            integer(n_control, "n_control", minimum=2),
            open_unit(alpha, "alpha"),
            ratio=positive(ratio, "ratio"),
            alternative="two-sided",
        )
    )
