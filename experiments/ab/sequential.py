"""Peeking protection: a group-sequential plan with O'Brien-Fleming-type alpha spending.

Looking at a running experiment every day and stopping at the first ``p < 0.05`` inflates the
false-positive rate well above 5 %. A group-sequential plan fixes the looks in advance (as
information fractions ``t_1 < ... < t_K = 1``, the share of the final sample seen) and gives
each look a critical value, such that the probability of ever crossing one under the null is
``alpha``.

Lan-DeMets spending with the O'Brien-Fleming-type function, two-sided and symmetric: each
side spends ``alpha / 2`` with gsDesign's ``sfLDOF`` (the convention of gsDesign, ldbounds
and rpact for a two-sided level ``alpha``), so the total spent by information fraction ``t`` is::

    alpha(t) = 2 * (2 - 2 Phi(z_{1 - alpha/4} / sqrt(t)))        # alpha(1) = alpha

It spends almost nothing early and nearly all of ``alpha`` at the end. The boundary ``c_k`` of look
``k`` solves::

    P(|Z_1| < c_1, ..., |Z_{k-1}| < c_{k-1}, |Z_k| >= c_k) = alpha(t_k) - alpha(t_{k-1})

under the null, where ``Z_k = S(t_k) / sqrt(t_k)`` for a standard Brownian motion ``S`` (so
``corr(Z_j, Z_k) = sqrt(t_j / t_k)``). The code carries the sub-density of ``S`` over the
continuation region from look to look by numerical integration (Simpson's rule on a grid,
Armitage-McPherson-Rowe recursion) and finds each ``c_k`` with Brent's method. For five equally
spaced looks at ``alpha = 0.05`` this gives 4.877, 3.357, 2.680, 2.290, 2.031.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats

from experiments.ab._checks import fail, integer, open_unit, real

__all__ = [
    "SequentialDecision",
    "SequentialPlan",
    "obrien_fleming_plan",
    "obrien_fleming_spending",
    "sequential_decision",
]

_MAX_BOUNDARY = 60.0  # |z| bracket for the root search; crossing mass there underflows to 0


@dataclass(frozen=True)
class SequentialPlan:
    """Per-look critical values of a two-sided group-sequential test.

    Attributes
    ----------
    information_fractions : tuple of float
        Planned ``t_1 < ... < t_K = 1``.
    alpha : float
        Overall two-sided significance level.
    cumulative_alpha : tuple of float
        ``alpha(t_k)``, the alpha spent up to and including look ``k``.
    boundaries : tuple of float
        Critical ``|z|`` per look; reject at look ``k`` when ``|Z_k| >= boundaries[k-1]``.
    nominal_alpha : tuple of float
        ``2 (1 - Phi(c_k))``: the per-look p-value threshold equivalent to the boundary.
    """

    information_fractions: tuple[float, ...]
    alpha: float
    cumulative_alpha: tuple[float, ...]
    boundaries: tuple[float, ...]
    nominal_alpha: tuple[float, ...]

    @property
    def n_looks(self) -> int:
        """Number of planned looks."""
        return len(self.boundaries)


@dataclass(frozen=True)
class SequentialDecision:
    """What to do at one look.

    Attributes
    ----------
    look : int
        1-based look index.
    z : float
        Observed z-statistic.
    boundary : float
        Critical ``|z|`` of this look.
    nominal_alpha : float
        p-value threshold equivalent to ``boundary``.
    reject : bool
        ``|z| >= boundary``: stop and declare an effect.
    stop : bool
        ``reject`` or this is the last look (stop and keep the null).
    """

    look: int
    z: float
    boundary: float
    nominal_alpha: float
    reject: bool
    stop: bool


def obrien_fleming_spending(information_fraction: Any, alpha: float = 0.05) -> np.ndarray:
    """Two-sided alpha spent by information fraction ``t``: ``4 - 4 Phi(z_{1-alpha/4} / sqrt(t))``.

    Each side spends ``2 - 2 Phi(z_{1 - a/2} / sqrt(t))`` with ``a = alpha / 2`` (gsDesign's
    ``sfLDOF`` at one-sided level ``alpha / 2``).

    Parameters
    ----------
    information_fraction : float or array-like
        ``t`` in ``(0, 1]``.
    alpha : float, default=0.05
        Overall two-sided level, in (0, 1).

    Returns
    -------
    ndarray
        ``alpha(t)``, same shape as the input; ``alpha(1) = alpha``.

    Raises
    ------
    ValueError
        If a fraction is outside ``(0, 1]`` or ``alpha`` outside (0, 1).
    """
    level = open_unit(alpha, "alpha")
    t = np.asarray(information_fraction, dtype=np.float64)
    if np.any(~np.isfinite(t)) or np.any(t <= 0.0) or np.any(t > 1.0):
        raise fail("information_fraction", "in (0, 1]", information_fraction)
    return _obf_spending(t, level)


def _obf_spending(t: np.ndarray, alpha: float) -> np.ndarray:
    per_side = 2.0 * stats.norm.sf(stats.norm.isf(alpha / 4.0) / np.sqrt(t))
    return 2.0 * per_side


def _simpson_grid(half_width: float, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and Simpson weights on ``[-half_width, half_width]`` (``n_points`` odd)."""
    x = np.linspace(-half_width, half_width, n_points)
    h = x[1] - x[0]
    w = np.full(n_points, 2.0)
    w[1::2] = 4.0
    w[0] = w[-1] = 1.0
    return x, w * h / 3.0


def _crossing_excess(
    c: float, x: np.ndarray, mass: np.ndarray, sd: float, sqrt_t: float, target: float
) -> float:
    """P(continue so far, then |Z_k| >= c) minus the alpha to spend at look k.

    ``x``/``mass`` are the nodes and weighted sub-density of ``S(t_{k-1})``; the increment to
    ``S(t_k)`` is ``N(0, sd**2)`` and ``|Z_k| >= c`` means ``|S(t_k)| >= c sqrt(t_k)``.
    """
    b = c * sqrt_t
    crossing = np.sum(mass * (stats.norm.cdf((-b - x) / sd) + stats.norm.sf((b - x) / sd)))
    return float(crossing - target)


def _boundaries(t: np.ndarray, spend: np.ndarray, grid_points: int) -> np.ndarray:
    """Solve the critical |z| per look for spent-alpha increments ``spend`` (see module doc)."""
    bounds = np.empty(t.size)
    bounds[0] = min(stats.norm.isf(spend[0] / 2.0), _MAX_BOUNDARY)  # spend can underflow to 0
    # Sub-density of S(t_1) on the continuation region, times the quadrature weights.
    x, w = _simpson_grid(bounds[0] * np.sqrt(t[0]), grid_points)
    mass = w * stats.norm.pdf(x, scale=np.sqrt(t[0]))
    for k in range(1, t.size):
        sd = np.sqrt(t[k] - t[k - 1])
        sqrt_t = np.sqrt(t[k])

        bounds[k] = optimize.brentq(
            _crossing_excess, 0.0, _MAX_BOUNDARY, args=(x, mass, sd, sqrt_t, spend[k]), xtol=1e-10
        )
        y, wy = _simpson_grid(bounds[k] * sqrt_t, grid_points)
        density = stats.norm.pdf((y[:, None] - x[None, :]) / sd) @ mass / sd
        x, mass = y, wy * density
    return bounds


def obrien_fleming_plan(
    n_looks: int | None = None,
    *,
    information_fractions: Sequence[float] | None = None,
    alpha: float = 0.05,
    grid_points: int = 1001,
) -> SequentialPlan:
    """Plan per-look boundaries with Lan-DeMets O'Brien-Fleming-type alpha spending.

    Give either ``n_looks`` (equally spaced looks ``k / n_looks``) or ``information_fractions``.

    Parameters
    ----------
    n_looks : int, optional
        Number of equally spaced looks, ``>= 1``.
    information_fractions : sequence of float, optional
        Strictly increasing fractions in ``(0, 1]`` ending at 1.
    alpha : float, default=0.05
        Overall two-sided level, in (0, 1).
    grid_points : int, default=1001
        Quadrature nodes per look (odd, ``>= 101``); more is slower and more accurate.

    Returns
    -------
    SequentialPlan
        A look whose spent alpha underflows to 0 (tiny ``t``) gets the boundary 60 (never crossed).

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If both or neither of ``n_looks`` and ``information_fractions`` are given, fractions
        are not strictly increasing in ``(0, 1]`` ending at 1, or ``grid_points`` is even or small.
    """
    level = open_unit(alpha, "alpha")
    points = integer(grid_points, "grid_points", minimum=101)
    if points % 2 == 0:
        raise fail("grid_points", "odd (Simpson's rule)", points)
    if (n_looks is None) == (information_fractions is None):
        raise fail("n_looks / information_fractions", "exactly one of them given", "both or neither")
    if n_looks is not None:
        k = integer(n_looks, "n_looks", minimum=1)
        t = np.arange(1, k + 1) / k
    else:
        if isinstance(information_fractions, (str, bytes)) or not isinstance(information_fractions, Sequence):
            raise TypeError(
                f"information_fractions must be a sequence of floats, got {type(information_fractions).__name__}"
            )
        t = np.array([real(v, "information_fractions") for v in information_fractions])
        if t.size == 0 or t[0] <= 0.0 or np.any(np.diff(t) <= 0.0) or abs(t[-1] - 1.0) > 1e-12:
            raise fail(
                "information_fractions", "strictly increasing in (0, 1] and ending at 1", list(information_fractions)
            )
        t[-1] = 1.0
    cumulative = _obf_spending(t, level)
    spend = np.diff(cumulative, prepend=0.0)
    bounds = _boundaries(t, spend, points)
    return SequentialPlan(
        information_fractions=tuple(float(v) for v in t),
        alpha=level,
        cumulative_alpha=tuple(float(v) for v in cumulative),
        boundaries=tuple(float(v) for v in bounds),
        nominal_alpha=tuple(float(v) for v in 2.0 * stats.norm.sf(bounds)),
    )


def sequential_decision(plan: SequentialPlan, look: int, z: float) -> SequentialDecision:
    """Decide at look ``look`` (1-based) of ``plan`` given the z-statistic computed on all data so far.

    Reject (stop for an effect) when ``|z| >= plan.boundaries[look - 1]``; at the last look,
    stop either way.

    Parameters
    ----------
    plan : SequentialPlan
        From :func:`obrien_fleming_plan`.
    look : int
        1-based look index, ``1 <= look <= plan.n_looks``.
    z : float
        Test statistic on the cumulative data (e.g. ``estimate / std_error``).

    Returns
    -------
    SequentialDecision

    Raises
    ------
    TypeError
        If ``plan`` is not a SequentialPlan or ``look``/``z`` have the wrong type.
    ValueError
        If ``look`` is out of range or ``z`` is not finite.
    """
    if not isinstance(plan, SequentialPlan):
        raise TypeError(f"plan must be a SequentialPlan, got {type(plan).__name__}")
    j = integer(look, "look", minimum=1)
    if j > plan.n_looks:
        raise fail("look", f"<= n_looks ({plan.n_looks})", look)
    stat = real(z, "z")
    boundary = plan.boundaries[j - 1]
    reject = abs(stat) >= boundary
    return SequentialDecision(
        look=j,
        z=stat,
        boundary=boundary,
        nominal_alpha=plan.nominal_alpha[j - 1],
        reject=reject,
        stop=reject or j == plan.n_looks,
    )
