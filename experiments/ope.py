"""Off-policy estimators (IPS, SNIPS, DR) for ranked lists under the position-based model.

Data follow the Open Bandit Pipeline (OBP) convention, so logs move between the two: one row
per logged impression ``i`` (a (request, slot) pair) with

* ``action[i]``    -- item index shown, in ``[0, n_actions)``;
* ``position[i]``  -- 0-based slot, in ``[0, n_positions)``;
* ``reward[i]``    -- observed reward (click, purchase, GMV, ...);
* ``pscore[i]``    -- probability that the logging policy put ``action[i]`` at ``position[i]``;
* ``action_dist[i, a, k]`` -- probability that the evaluation policy puts item ``a`` at slot ``k``
  for that request (sums to 1 over ``a`` for every ``(i, k)``);
* ``estimated_rewards_by_reg_model[i, a, k]`` -- a reward model's ``q_hat(x_i, a, k)`` (DR only).

Per-sample formulas match OBP's ``InverseProbabilityWeighting``,
``SelfNormalizedInverseProbabilityWeighting`` and ``DoublyRobust`` (``obp/ope/estimators.py``)
with the importance weight taken at the logged position,
``w_i = action_dist[i, action_i, position_i] / pscore_i``. The estimate is the mean over rows,
i.e. the expected reward per impression slot; multiply by the list length for reward per list
when every request logs all slots.

Support: a row supports the evaluation policy when the policy would also put the logged item
at the logged slot (``w_i > 0``). Importance-weighted estimates (IPS, SNIPS) rest on those rows
alone; with none, they are undefined (NaN here, not 0: IPS's 0 would read as "the policy earns
nothing", SNIPS is 0/0), and DR reduces to its reward model (the direct method). Every
:class:`PolicyValueEstimate` carries its row and support counts so a report can say so.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "DoublyRobust",
    "InverseProbabilityWeighting",
    "OffPolicyEstimator",
    "PolicyValueEstimate",
    "SelfNormalizedInverseProbabilityWeighting",
    "estimate_policy_value",
]

logger = logging.getLogger(__name__)

# Tolerance for "action_dist sums to 1 over actions".
_SUM_TOL = 1e-6
# Bootstrap resamples are evaluated in chunks of about this many (resample x row) cells.
_BOOTSTRAP_CELLS = 2_000_000


@dataclass(frozen=True)
class PolicyValueEstimate:
    """Estimated policy value of the evaluation policy with a percentile-bootstrap interval.

    Attributes
    ----------
    estimator : str
        Name of the estimator (``"ipw"``, ``"snipw"``, ``"dr"``).
    value : float
        Point estimate (mean of the per-sample values on the full data); NaN when the estimator
        needs support and no row has it.
    ci_low, ci_high : float
        ``alpha / 2`` and ``1 - alpha / 2`` percentiles of the bootstrap estimates (resamples
        without support left out); NaN with the value.
    rows : int
        Logged rows the estimate was computed on.
    support : int
        Rows with a positive importance weight (the evaluation policy would put the logged
        item at the logged slot too); the importance-weighted part of the estimate rests on them.
    """

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    rows: int
    support: int

    @property
    def supported(self) -> bool:
        """Whether at least one logged row supports the evaluation policy."""
        return self.support > 0


@dataclass(frozen=True, eq=False)
class _Rounds:
    """Per-row quantities every estimator needs, gathered once from the validated inputs.

    Arrays share a trailing axis of length n; bootstrap resamples add a leading axis.
    """

    reward: np.ndarray
    weight: np.ndarray  # pi_e(a_i, k_i | x_i) / pscore_i, unclipped
    q_factual: np.ndarray | None  # q_hat(x_i, a_i, k_i)
    q_policy: np.ndarray | None  # sum_a pi_e(a, k_i | x_i) q_hat(x_i, a, k_i)

    def take(self, idx: np.ndarray) -> _Rounds:
        return _Rounds(
            reward=self.reward[idx],
            weight=self.weight[idx],
            q_factual=None if self.q_factual is None else self.q_factual[idx],
            q_policy=None if self.q_policy is None else self.q_policy[idx],
        )


@dataclass(frozen=True)
class OffPolicyEstimator(ABC):
    """Base class: per-sample values -> mean -> percentile-bootstrap interval.

    Subclasses implement only :meth:`_round_values`; the mean and the bootstrap are fixed here.
    The bootstrap resamples rows and recomputes the per-sample values on each resample, so a
    self-normalised estimator renormalises within every resample.
    """

    name: ClassVar[str]
    needs_reward_model: ClassVar[bool] = False
    # An estimate from importance weights alone is undefined without a supporting row.
    needs_support: ClassVar[bool] = True

    @abstractmethod
    def _round_values(self, rounds: _Rounds) -> np.ndarray:
        """Per-sample values whose mean over the last axis is the estimate; shape of ``rounds.reward``."""

    def _estimate(
        self, rounds: _Rounds, *, alpha: float, n_bootstrap: int, random_state: int
    ) -> PolicyValueEstimate:
        rows, support = int(rounds.weight.shape[-1]), int(np.count_nonzero(rounds.weight > 0.0))
        if support == 0 and self.needs_support:
            logger.warning("%s is undefined: no logged row supports the evaluation policy (all importance "
                           "weights are 0)", self.name)
            return PolicyValueEstimate(self.name, math.nan, math.nan, math.nan, rows=rows, support=0)
        value = float(np.mean(self._round_values(rounds)))
        boot = self._bootstrap_means(rounds, n_bootstrap, np.random.default_rng(random_state))
        boot = boot[np.isfinite(boot)]  # a resample without support has no self-normalised value
        if boot.size == 0:
            return PolicyValueEstimate(self.name, value, math.nan, math.nan, rows=rows, support=support)
        low, high = np.percentile(boot, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
        return PolicyValueEstimate(self.name, value, float(low), float(high), rows=rows, support=support)

    def _bootstrap_means(
        self, rounds: _Rounds, n_bootstrap: int, rng: np.random.Generator
    ) -> np.ndarray:
        n = rounds.reward.shape[0]
        chunk = max(1, _BOOTSTRAP_CELLS // n)
        means = []
        for start in range(0, n_bootstrap, chunk):
            idx = rng.integers(0, n, size=(min(chunk, n_bootstrap - start), n))
            means.append(self._round_values(rounds.take(idx)).mean(axis=-1))
        return np.concatenate(means)


def _check_lambda(lambda_: Any) -> None:
    if isinstance(lambda_, bool) or not isinstance(lambda_, (int, float, np.integer, np.floating)):
        raise TypeError(f"lambda_ must be a float, got {type(lambda_).__name__}")
    if np.isnan(lambda_) or lambda_ < 0:
        raise ValueError(f"lambda_ must be a non-negative number (inf = no clipping), got {lambda_}")


@dataclass(frozen=True)
class InverseProbabilityWeighting(OffPolicyEstimator):
    """Inverse probability weighting (IPS/IPW): ``V = mean_i min(w_i, lambda_) * r_i``.

    ``w_i = action_dist[i, a_i, k_i] / pscore_i``. Unbiased when ``pscore`` is the true
    logging probability and ``lambda_ = inf``; clipping trades bias for variance.

    Parameters
    ----------
    lambda_ : float, default=inf
        Largest importance weight kept; larger weights are clipped to it.
    """

    name: ClassVar[str] = "ipw"
    lambda_: float = np.inf

    def __post_init__(self) -> None:
        _check_lambda(self.lambda_)

    def _round_values(self, rounds: _Rounds) -> np.ndarray:
        return rounds.reward * np.minimum(rounds.weight, self.lambda_)


@dataclass(frozen=True)
class SelfNormalizedInverseProbabilityWeighting(OffPolicyEstimator):
    """Self-normalised IPS (SNIPS): ``V = mean_i w_i r_i / mean_i w_i``.

    Per sample ``w_i r_i / mean_j w_j``, as OBP. Biased but consistent, bounded by the reward
    range, and much less variable than IPS when weights are large. No clipping (as OBP).
    """

    name: ClassVar[str] = "snipw"

    def _round_values(self, rounds: _Rounds) -> np.ndarray:
        w = rounds.weight
        mean = w.mean(axis=-1, keepdims=True)
        # 0/0 where a (resampled) data set has no support: NaN, left out of the interval.
        return rounds.reward * w / np.where(mean > 0.0, mean, np.nan)


@dataclass(frozen=True)
class DoublyRobust(OffPolicyEstimator):
    """Doubly robust: ``V = mean_i [ q_hat(x_i, pi_e, k_i) + min(w_i, lambda_) (r_i - q_hat(x_i, a_i, k_i)) ]``.

    ``q_hat(x_i, pi_e, k_i) = sum_a action_dist[i, a, k_i] q_hat(x_i, a, k_i)``. Unbiased when
    either ``pscore`` or the reward model is correct (and ``lambda_ = inf``).

    Parameters
    ----------
    lambda_ : float, default=inf
        Largest importance weight kept; larger weights are clipped to it.
    """

    name: ClassVar[str] = "dr"
    needs_reward_model: ClassVar[bool] = True
    needs_support: ClassVar[bool] = False  # without support it is the direct method (the reward model)
    lambda_: float = np.inf

    def __post_init__(self) -> None:
        _check_lambda(self.lambda_)

    def _round_values(self, rounds: _Rounds) -> np.ndarray:
        assert rounds.q_policy is not None and rounds.q_factual is not None
        w = np.minimum(rounds.weight, self.lambda_)
        return rounds.q_policy + w * (rounds.reward - rounds.q_factual)


def _by_name(name: str, lambda_: float) -> OffPolicyEstimator:
    """Build a named estimator; ``lambda_`` applies to the estimators that clip."""
    if name == InverseProbabilityWeighting.name:
        return InverseProbabilityWeighting(lambda_=lambda_)
    if name == SelfNormalizedInverseProbabilityWeighting.name:
        return SelfNormalizedInverseProbabilityWeighting()
    if name == DoublyRobust.name:
        return DoublyRobust(lambda_=lambda_)
    raise ValueError(f"estimators must be among ['dr', 'ipw', 'snipw'], got {name!r}")


# --------------------------------------------------------------------------- validation


def _array(values: Any, name: str, ndim: int) -> np.ndarray:
    if values is None or isinstance(values, (str, bytes, dict)):
        raise TypeError(f"{name} must be an array, got {type(values).__name__}")
    arr = np.asarray(values)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}")
    return arr


def _finite(values: Any, name: str, ndim: int) -> np.ndarray:
    arr = _array(values, name, ndim)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must hold numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        n_bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"{name} must be finite (no NaN or inf), got {n_bad} non-finite values")
    return arr


def _index(values: Any, name: str, upper: int, upper_name: str) -> np.ndarray:
    arr = _array(values, name, 1)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= upper:
        raise ValueError(
            f"{name} must be in [0, {upper}) ({upper_name} of action_dist), got min {arr.min()}, max {arr.max()}"
        )
    return arr.astype(np.intp, copy=False)


def _gather_rounds(
    *,
    action: Any,
    position: Any,
    reward: Any,
    pscore: Any,
    action_dist: Any,
    estimated_rewards_by_reg_model: Any,
) -> _Rounds:
    """Validate the logged data once and gather the per-row quantities."""
    dist = _finite(action_dist, "action_dist", 3)
    n, n_actions, n_positions = dist.shape
    if np.any(dist < 0.0) or np.any(dist > 1.0):
        raise ValueError(f"action_dist must be probabilities in [0, 1], got min {dist.min()}, max {dist.max()}")
    sums = dist.sum(axis=1)
    if not np.allclose(sums, 1.0, rtol=0.0, atol=_SUM_TOL):
        worst = sums.reshape(-1)[np.argmax(np.abs(sums - 1.0))]
        raise ValueError(
            f"action_dist must sum to 1 over actions (axis 1) for every (round, position), got a sum of {worst}"
        )
    r = _finite(reward, "reward", 1)
    ps = _finite(pscore, "pscore", 1)
    a = _index(action, "action", n_actions, "n_actions, axis 1")
    k = _index(position, "position", n_positions, "n_positions, axis 2")
    for name, arr in (("action", a), ("position", k), ("reward", r), ("pscore", ps)):
        if arr.shape[0] != n:
            raise ValueError(f"{name} must have length {n} (action_dist.shape[0]), got {arr.shape[0]}")
    if np.any(ps <= 0.0) or np.any(ps > 1.0):
        raise ValueError(
            "pscore must be in (0, 1] (a zero propensity cannot be inverse-weighted), "
            f"got min {ps.min()}, max {ps.max()}"
        )
    rows = np.arange(n)
    weight = dist[rows, a, k] / ps
    q_factual = q_policy = None
    if estimated_rewards_by_reg_model is not None:
        q = _finite(estimated_rewards_by_reg_model, "estimated_rewards_by_reg_model", 3)
        if q.shape != dist.shape:
            raise ValueError(
                f"estimated_rewards_by_reg_model must have the shape of action_dist {dist.shape}, got {q.shape}"
            )
        q_factual = q[rows, a, k]
        pi_at_k = dist[rows, :, k]
        # OBP's np.average(q, weights=pi) form; the denominator is 1 up to _SUM_TOL.
        q_policy = np.sum(q[rows, :, k] * pi_at_k, axis=1) / pi_at_k.sum(axis=1)
    return _Rounds(reward=r, weight=weight, q_factual=q_factual, q_policy=q_policy)


def _resolve_estimators(
    estimators: Sequence[str | OffPolicyEstimator], lambda_: float
) -> list[OffPolicyEstimator]:
    if isinstance(estimators, (str, bytes)) or not isinstance(estimators, Sequence):
        raise TypeError(f"estimators must be a sequence of names or estimators, got {type(estimators).__name__}")
    if len(estimators) == 0:
        raise ValueError("estimators must name at least one estimator, got an empty sequence")
    resolved: list[OffPolicyEstimator] = []
    for item in estimators:
        if isinstance(item, OffPolicyEstimator):
            resolved.append(item)
        elif isinstance(item, str):
            resolved.append(_by_name(item, lambda_))
        else:
            raise TypeError(
                f"estimators must hold names or OffPolicyEstimator instances, got {type(item).__name__}"
            )
    names = [e.name for e in resolved]
    if len(set(names)) != len(names):
        raise ValueError(f"estimators must not repeat an estimator, got {names}")
    return resolved


def _check_bootstrap_args(alpha: Any, n_bootstrap: Any, random_state: Any) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (float, int, np.floating)):
        raise TypeError(f"alpha must be a float, got {type(alpha).__name__}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)):
        raise TypeError(f"n_bootstrap must be an int, got {type(n_bootstrap).__name__}")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
        raise TypeError(f"random_state must be an int seed, got {type(random_state).__name__}")
    if random_state < 0:
        raise ValueError(f"random_state must be >= 0, got {random_state}")


# --------------------------------------------------------------------------- entry point


def estimate_policy_value(
    *,
    action: Any,
    position: Any,
    reward: Any,
    pscore: Any,
    action_dist: Any,
    estimated_rewards_by_reg_model: Any = None,
    estimators: Sequence[str | OffPolicyEstimator] = ("ipw", "snipw", "dr"),
    lambda_: float = np.inf,
    alpha: float = 0.05,
    n_bootstrap: int = 1000,
    random_state: int = 0,
) -> dict[str, PolicyValueEstimate]:
    """Estimate the evaluation policy's value from logged ranked feedback with several estimators.

    With ``w_i = action_dist[i, action_i, position_i] / pscore_i`` and ``q_hat`` the reward model::

        IPW   = mean_i min(w_i, lambda_) r_i
        SNIPW = sum_i w_i r_i / sum_i w_i
        DR    = mean_i [ sum_a action_dist[i, a, k_i] q_hat[i, a, k_i]
                         + min(w_i, lambda_) (r_i - q_hat[i, a_i, k_i]) ]

    Each interval is a percentile bootstrap over rows (``n_bootstrap`` resamples, the same
    resamples for every estimator given ``random_state``).

    Parameters
    ----------
    action : array-like of int, shape (n,)
        Logged item index of each row, in ``[0, n_actions)``.
    position : array-like of int, shape (n,)
        0-based slot of each row, in ``[0, n_positions)``.
    reward : array-like, shape (n,)
        Observed reward of each row.
    pscore : array-like, shape (n,)
        Logging probability of ``action`` at ``position``, in ``(0, 1]``.
    action_dist : array-like, shape (n, n_actions, n_positions)
        Evaluation policy's probability of each action at each position; sums to 1 over actions
        for every (row, position) within 1e-6.
    estimated_rewards_by_reg_model : array-like, shape (n, n_actions, n_positions), optional
        Reward model's predictions; required when ``"dr"`` is requested.
    estimators : sequence of str or OffPolicyEstimator, default=("ipw", "snipw", "dr")
        Names from ``{"ipw", "snipw", "dr"}`` or configured estimator instances.
    lambda_ : float, default=inf
        Weight clipping for estimators given by name (IPW and DR; SNIPW does not clip).
    alpha : float, default=0.05
        Interval level is ``1 - alpha``.
    n_bootstrap : int, default=1000
        Bootstrap resamples.
    random_state : int, default=0
        Seed of the bootstrap.

    Returns
    -------
    dict of str to PolicyValueEstimate
        Keyed by estimator name, in the order requested. Without support (no row with
        ``w_i > 0``) IPW and SNIPW are NaN (undefined) and DR equals the direct method; each
        estimate's ``support`` says how many rows it rests on.

    Raises
    ------
    TypeError
        If an input has the wrong type (e.g. float ``action``, non-int ``n_bootstrap``).
    ValueError
        If shapes disagree; a probability leaves ``[0, 1]``; ``pscore`` has a zero; an input
        holds NaN/inf; ``action``/``position`` are out of range; ``action_dist`` does not sum
        to 1 over actions; ``"dr"`` is requested without ``estimated_rewards_by_reg_model``;
        or an estimator name or bootstrap argument is invalid.
    """
    _check_lambda(lambda_)
    _check_bootstrap_args(alpha, n_bootstrap, random_state)
    chosen = _resolve_estimators(estimators, lambda_)
    if estimated_rewards_by_reg_model is None and any(e.needs_reward_model for e in chosen):
        raise ValueError(
            "estimated_rewards_by_reg_model must be given when 'dr' is requested, got None"
        )
    rounds = _gather_rounds(
        action=action,
        position=position,
        reward=reward,
        pscore=pscore,
        action_dist=action_dist,
        estimated_rewards_by_reg_model=estimated_rewards_by_reg_model,
    )
    max_weight = float(rounds.weight.max())
    logger.debug("OPE on %d rows, max importance weight %.3g", rounds.reward.shape[0], max_weight)
    return {
        e.name: e._estimate(rounds, alpha=alpha, n_bootstrap=n_bootstrap, random_state=int(random_state))
        for e in chosen
    }
