"""Canary statistics: the offline doubly-robust gate and the per-stage guardrail evaluation.

Pure functions over arrays and DataFrames; the controller (:mod:`infra.rollout`) decides what to
do with their results.

Offline gate (before the first stage)
-------------------------------------
On the same logged impressions (OBP convention, :mod:`experiments.ope`), the doubly-robust
estimate of GMV per slot of each policy, times the slots per request, gives GMV per request;
the challenger passes when ``V_challenger >= V_champion - tolerance * |V_champion|``.

Online guardrails (every stage)
-------------------------------
Champion and challenger are compared over the same window (the stage's own time, both arms
served side by side). The unit of analysis is the user, because users -- not requests -- are
randomised to arms (``serving.routing.arm_for``) and one user's requests are correlated:

=================  ===========================  ===============================================
guardrail          effect (challenger vs champ)  test
=================  ===========================  ===============================================
GMV per request    relative lift                 delta method on the ratio of per-user sums
                                                 ``sum GMV / sum requests`` (every request, errors
                                                 included), :func:`experiments.ab.ratio_delta_test`
CTR                relative lift                 the same on ``sum clicked impressions / sum
                                                 impressions``
error rate         absolute difference           the same on ``sum errors / sum requests``; an
                                                 absolute margin, because the champion's rate is
                                                 often 0 and a relative lift is then undefined
p95 latency        relative lift                 user-clustered Poisson bootstrap of
                                                 ``log p95_challenger - log p95_champion`` (normal
                                                 interval with the bootstrap standard error)
=================  ===========================  ===============================================

Why these: GMV per request and CTR are ratios of sums whose numerator and denominator vary
together per user; the delta method gives their variance with the user as the sample (a naive
per-request t-test would understate it). For latency the guardrail is on a tail quantile, the
service-level objective: a rank test (Mann-Whitney) compares whole distributions, so it would
miss a challenger slow on only its slowest 10 % of calls (a GC pause, a big candidate set) and
would flag a harmless uniform 0.1 ms shift. Quantiles have no simple variance formula, so the
bootstrap -- resampling users, each with all of its requests -- estimates the standard error of
the log p95 of each arm; the log makes the ratio symmetric and near normal.

Each guardrail is a non-inferiority check with margin ``m`` on the interval ``[lo, hi]`` of the
effect oriented so that harm is negative (for "lower is better" metrics the signs flip)::

    pass          lo >= -m                        the data rule out harm beyond the margin
    fail          hi < 0 and effect < -m          significant harm, estimated beyond the margin
    inconclusive  otherwise

A stage advances when every guardrail passes and rolls back when any fails; otherwise it holds.
Looking again and again at a running stage would inflate the error rates, so the intervals of a
stage's ``k``-th look use the nominal level of an O'Brien-Fleming group-sequential plan with
``looks_per_stage`` looks (very wide early, about ``alpha`` at the last look); at the last
look an inconclusive guardrail fails (the challenger could not show it is no worse). Looks
are spent only when both arms have ``min_users_per_arm`` users and ``min_requests_per_arm``
requests and the champion arm has attributed clicks and purchases (else the event log is
missing or late, and a relative lift has no baseline); below that the stage holds. A sample-ratio mismatch of users per arm (assignment or
logging broken, or a challenger that fails before it logs) fails the stage.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from experiments.ab import (
    EffectEstimate,
    SampleRatioResult,
    obrien_fleming_plan,
    ratio_delta_test,
    sample_ratio_mismatch,
)
from experiments.ope import estimate_policy_value
from infra.release_config import RolloutConfig
from infra.stage_logs import StageLogs

__all__ = [
    "GuardrailCheck",
    "OfflineGateInput",
    "OfflineGateResult",
    "StageEvaluation",
    "evaluate_stage",
    "offline_gate",
    "p95_latency_test",
]

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"  # the values of serving.routing's arms
_CELLS = 4_000_000  # bootstrap cells (resamples x requests) per chunk


# --------------------------------------------------------------------------- offline gate


@dataclass(frozen=True, eq=False)
class OfflineGateInput:
    """Logged feedback and both policies' distributions, in the OBP convention of :mod:`experiments.ope`.

    Attributes
    ----------
    action, position : ndarray of int, shape (n,)
        Logged item index and 0-based slot per impression row.
    reward : ndarray, shape (n,)
        GMV the row produced (``price_paid * quantity`` of attributed purchases, else 0).
    pscore : ndarray, shape (n,)
        Logging probability of ``action`` at ``position``.
    champion_action_dist, challenger_action_dist : ndarray, shape (n, n_actions, n_positions)
        Each policy's probability of each candidate at each slot.
    champion_estimated_rewards, challenger_estimated_rewards : ndarray, shape (n, n_actions, n_positions)
        The reward model's expected GMV per (row, candidate, slot) under each policy's model.
    slots_per_request : int or None
        Multiplier from GMV per slot to GMV per request; default ``n_positions``.
    """

    action: np.ndarray
    position: np.ndarray
    reward: np.ndarray
    pscore: np.ndarray
    champion_action_dist: np.ndarray
    champion_estimated_rewards: np.ndarray
    challenger_action_dist: np.ndarray
    challenger_estimated_rewards: np.ndarray
    slots_per_request: int | None = None

    KEYS = ("action", "position", "reward", "pscore", "champion_action_dist", "champion_estimated_rewards",
            "challenger_action_dist", "challenger_estimated_rewards")

    @classmethod
    def from_npz(cls, path: str | os.PathLike[str]) -> OfflineGateInput:
        """Load the arrays saved by ``numpy.savez(path, action=..., ...)`` (keys :attr:`KEYS`,
        optional ``slots_per_request``); no pickle.

        Raises
        ------
        ValueError
            If a key is missing.
        """
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in cls.KEYS if k not in data.files]
            if missing:
                raise ValueError(f"offline gate file {path} must hold arrays {list(cls.KEYS)}, missing {missing}")
            arrays = {k: data[k] for k in cls.KEYS}
            slots = int(data["slots_per_request"]) if "slots_per_request" in data.files else None
        return cls(**arrays, slots_per_request=slots)


@dataclass(frozen=True)
class OfflineGateResult:
    """Outcome of the offline gate; values are GMV per request (DR), intervals by bootstrap."""

    passed: bool
    champion_value: float
    challenger_value: float
    champion_ci: tuple[float, float]
    challenger_ci: tuple[float, float]
    relative_difference: float
    tolerance: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "champion_value": self.champion_value,
                "challenger_value": self.challenger_value, "champion_ci": list(self.champion_ci),
                "challenger_ci": list(self.challenger_ci), "relative_difference": self.relative_difference,
                "tolerance": self.tolerance, "reason": self.reason}


def offline_gate(data: OfflineGateInput, *, tolerance: float, n_bootstrap: int = 200, random_state: int = 0,
                 lambda_: float = math.inf) -> OfflineGateResult:
    """Compare the two policies' doubly-robust GMV per request on the same logs.

    ``passed = V_ch >= V_cp - tolerance * |V_cp|`` with ``V = DR * slots_per_request``.

    Parameters
    ----------
    data : OfflineGateInput
    tolerance : float
        Allowed relative shortfall, in [0, 1).
    n_bootstrap, random_state : int
        Bootstrap of the reported intervals (the same resamples for both policies).
    lambda_ : float
        Importance-weight clipping of the DR estimator.

    Raises
    ------
    TypeError, ValueError
        For invalid arrays (from :func:`experiments.ope.estimate_policy_value`) or tolerance.
    """
    if not isinstance(data, OfflineGateInput):
        raise TypeError(f"data must be an OfflineGateInput, got {type(data).__name__}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
    values = {}
    for arm, dist, q in ((CHAMPION, data.champion_action_dist, data.champion_estimated_rewards),
                         (CHALLENGER, data.challenger_action_dist, data.challenger_estimated_rewards)):
        values[arm] = estimate_policy_value(
            action=data.action, position=data.position, reward=data.reward, pscore=data.pscore,
            action_dist=dist, estimated_rewards_by_reg_model=q, estimators=("dr",), lambda_=lambda_,
            n_bootstrap=n_bootstrap, random_state=random_state)["dr"]
    slots = data.slots_per_request or int(np.shape(data.champion_action_dist)[2])
    cp, ch = values[CHAMPION], values[CHALLENGER]
    v_cp, v_ch = cp.value * slots, ch.value * slots
    floor = v_cp - tolerance * abs(v_cp)
    rel = (v_ch - v_cp) / abs(v_cp) if v_cp != 0.0 else (0.0 if v_ch == v_cp else math.copysign(math.inf, v_ch))
    passed = bool(v_ch >= floor)
    verb = "passes" if passed else "fails"
    reason = (f"offline gate {verb}: DR GMV/request challenger {v_ch:.4g} vs champion {v_cp:.4g} "
              f"({rel:+.2%}; allowed shortfall {tolerance:.1%}, floor {floor:.4g})")
    return OfflineGateResult(passed=passed, champion_value=v_cp, challenger_value=v_ch,
                             champion_ci=(cp.ci_low * slots, cp.ci_high * slots),
                             challenger_ci=(ch.ci_low * slots, ch.ci_high * slots),
                             relative_difference=float(rel), tolerance=float(tolerance), reason=reason)


# --------------------------------------------------------------------------- guardrails


@dataclass(frozen=True)
class GuardrailCheck:
    """One guardrail's comparison at one look.

    Attributes
    ----------
    metric : str
        ``gmv_per_request``, ``ctr``, ``error_rate`` or ``latency_p95_ms``.
    method : str
        ``delta_ratio`` or ``cluster_bootstrap_log_ratio``.
    champion, challenger : float
        The metric in each arm.
    effect : float
        Challenger vs champion: relative lift, or absolute difference for ``error_rate``.
    ci_low, ci_high : float
        Interval of ``effect`` at this look's nominal level.
    scale : str
        ``relative`` or ``absolute``.
    margin : float
        Non-inferiority margin on the same scale.
    higher_is_better : bool
    verdict : str
        ``pass``, ``fail`` or ``inconclusive`` (see the module docstring).
    n_champion, n_challenger : int
        Users per arm in the test.
    """

    metric: str
    method: str
    champion: float
    challenger: float
    effect: float
    ci_low: float
    ci_high: float
    scale: str
    margin: float
    higher_is_better: bool
    verdict: str
    n_champion: int
    n_challenger: int

    def describe(self) -> str:
        fmt = "{:+.2%}" if self.scale == "relative" else "{:+.4f}"
        return (f"{self.metric} {self.verdict}: champion {self.champion:.4g}, challenger {self.challenger:.4g}, "
                f"effect {fmt.format(self.effect)} [{fmt.format(self.ci_low)}, {fmt.format(self.ci_high)}], "
                f"margin {self.margin:g}")


@dataclass(frozen=True)
class StageEvaluation:
    """What one evaluation of a stage concluded.

    Attributes
    ----------
    decision : str
        ``advance``, ``rollback`` or ``hold``.
    reason : str
    look : int or None
        1-based look spent (None when held for lack of data).
    n_looks : int
    alpha_look : float or None
        Two-sided nominal level of this look's intervals.
    checks : tuple of GuardrailCheck
    srm : SampleRatioResult or None
    counts : mapping of str to int
        ``users_<arm>``, ``requests_<arm>``, ``impressions_<arm>``, ``clicked_<arm>`` (clicked
        impressions), ``purchasing_users_<arm>``, ``crossover_users``.
    """

    decision: str
    reason: str
    look: int | None
    n_looks: int
    alpha_look: float | None
    checks: tuple[GuardrailCheck, ...] = ()
    srm: SampleRatioResult | None = None
    counts: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "reason": self.reason, "look": self.look, "n_looks": self.n_looks,
                "alpha_look": self.alpha_look, "counts": dict(self.counts),
                "srm": None if self.srm is None else {"p_value": self.srm.p_value, "mismatch": self.srm.mismatch,
                                                      "observed_share": self.srm.observed_treatment_share},
                "checks": [c.__dict__ for c in self.checks]}


def _verdict(effect: float, lo: float, hi: float, margin: float, higher_is_better: bool) -> str:
    if not all(np.isfinite([effect, lo, hi])):
        return "inconclusive"
    if not higher_is_better:  # orient so that harm is negative
        effect, lo, hi = -effect, -hi, -lo
    if lo >= -margin:
        return "pass"
    if hi < 0.0 and effect < -margin:
        return "fail"
    return "inconclusive"


def _weighted_quantile_sorted(x_sorted: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Inverse-CDF quantile per row of ``weights`` (rows: resamples) over sorted values.

    The smallest ``x_(j)`` with ``sum_{i<=j} w_i >= q * sum_i w_i``.
    """
    cum = np.cumsum(weights, axis=-1)
    target = q * cum[..., -1:]
    idx = np.minimum((cum < target).sum(axis=-1), x_sorted.size - 1)
    return x_sorted[idx]


def _upper_quantile_resamples(x_sorted: np.ndarray, users: np.ndarray, w_user: np.ndarray,
                              requests_per_user: np.ndarray, q: float) -> np.ndarray:
    """:func:`_weighted_quantile_sorted` for user weights ``w_user`` (resamples x users), fast for q near 1.

    ``x_(j)`` qualifies when the weight strictly above it, ``S``, is at most ``(1 - q) T`` with
    ``T = w_user @ requests_per_user``; so only the largest values are scanned (from the top)
    and rows whose crossing lies below that window fall back to the full scan.
    """
    n = x_sorted.size
    total = w_user @ requests_per_user
    window = min(n, max(64, int(np.ceil(3.0 * (1.0 - q) * n))))
    top = w_user[:, users[n - window:][::-1]]  # largest value first
    above = np.cumsum(top, axis=1)  # weight of the k largest values, k = 1..window
    k = (above <= ((1.0 - q) * total)[:, None]).sum(axis=1)
    out = x_sorted[np.maximum(n - 1 - k, 0)]
    short = k == window
    if np.any(short) and window < n:
        out[short] = _weighted_quantile_sorted(x_sorted, w_user[short][:, users], q)
    return out


def _log_quantile_bootstrap(latency: np.ndarray, user_codes: np.ndarray, q: float, n_bootstrap: int,
                            rng: np.random.Generator) -> tuple[float, float]:
    """``(log quantile, bootstrap standard error)`` of one arm, resampling users (Poisson weights)."""
    order = np.argsort(latency, kind="stable")
    x = np.log(np.maximum(latency[order], 1e-9))
    users = user_codes[order]
    counts = np.bincount(users).astype(np.float64)
    point = float(_weighted_quantile_sorted(x, np.ones(x.size), q))
    chunk = max(1, _CELLS // x.size)
    boot = []
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        w_user = rng.poisson(1.0, size=(b, counts.size)).astype(np.float64)
        empty = w_user @ counts == 0.0
        w_user[empty] = 1.0  # an all-zero draw (tiny arms only): fall back to the sample
        boot.append(_upper_quantile_resamples(x, users, w_user, counts, q))
    se = float(np.std(np.concatenate(boot), ddof=1))
    return point, se


def p95_latency_test(champion_ms: np.ndarray, champion_users: np.ndarray, challenger_ms: np.ndarray,
                     challenger_users: np.ndarray, *, alpha: float, n_bootstrap: int, seed: int,
                     quantile: float = 0.95) -> tuple[float, float, float, float, float]:
    """Relative difference of a latency quantile with a user-clustered bootstrap interval.

    ``L = log Q_ch - log Q_cp``; ``se(L) = sqrt(se_cp**2 + se_ch**2)`` from independent Poisson
    bootstraps of each arm that reweight whole users; interval ``L +- z_{1-alpha/2} se(L)``.

    Parameters
    ----------
    champion_ms, challenger_ms : ndarray, shape (n_arm,)
        Per-request latencies.
    champion_users, challenger_users : ndarray of int, shape (n_arm,)
        Per-request user codes (any integers; requests of one user share a code).
    alpha : float
        Two-sided level of the interval.
    n_bootstrap, seed : int
    quantile : float, default=0.95

    Returns
    -------
    tuple of float
        ``(Q_champion, Q_challenger, relative_lift, ci_low, ci_high)`` with relative values
        ``exp(.) - 1``.
    """
    rng = np.random.default_rng(seed)
    arms = []
    for ms, users in ((champion_ms, champion_users), (challenger_ms, challenger_users)):
        codes = pd.factorize(pd.Series(users))[0]
        arms.append(_log_quantile_bootstrap(np.asarray(ms, dtype=np.float64), codes, quantile, n_bootstrap, rng))
    (l_cp, se_cp), (l_ch, se_ch) = arms
    diff = l_ch - l_cp
    half = float(stats.norm.ppf(1.0 - alpha / 2.0)) * math.hypot(se_cp, se_ch)
    return (math.exp(l_cp), math.exp(l_ch), math.expm1(diff), math.expm1(diff - half), math.expm1(diff + half))


def _ratio_check(metric: str, per_user: pd.DataFrame, num: str, den: str, *, alpha: float, margin: float,
                 scale: str, higher_is_better: bool) -> GuardrailCheck:
    cp = per_user[per_user["arm"] == CHAMPION]
    ch = per_user[per_user["arm"] == CHALLENGER]
    nan = float("nan")
    if min(len(cp), len(ch)) < 2 or cp[den].sum() <= 0 or ch[den].sum() <= 0:
        return GuardrailCheck(metric, "delta_ratio", nan, nan, nan, nan, nan, scale, margin, higher_is_better,
                              "inconclusive", len(cp), len(ch))
    est: EffectEstimate = ratio_delta_test(cp[num].to_numpy(), cp[den].to_numpy(), ch[num].to_numpy(),
                                           ch[den].to_numpy(), alpha=alpha)
    if scale == "relative":
        effect, lo, hi = est.relative_lift, est.relative_ci_low, est.relative_ci_high
    else:
        effect, lo, hi = est.estimate, est.ci_low, est.ci_high
    return GuardrailCheck(metric, "delta_ratio", est.control_mean, est.treatment_mean, float(effect), float(lo),
                          float(hi), scale, margin, higher_is_better,
                          _verdict(effect, lo, hi, margin, higher_is_better), est.n_control, est.n_treatment)


def _per_user_table(logs: StageLogs, attribution_hours: float) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Per-user sums per arm, the request rows kept, and the number of crossover users dropped."""
    req = logs.requests[logs.requests["arm"].isin([CHAMPION, CHALLENGER])]
    imp = logs.impressions[logs.impressions["arm"].isin([CHAMPION, CHALLENGER])]
    arms = pd.concat([req[["user_id", "arm"]], imp[["user_id", "arm"]]]).drop_duplicates()
    n_arms = arms.groupby("user_id")["arm"].nunique()
    crossover = n_arms.index[n_arms > 1]
    if len(crossover):
        req = req[~req["user_id"].isin(crossover)]
        imp = imp[~imp["user_id"].isin(crossover)]
        arms = arms[~arms["user_id"].isin(crossover)]
    user_arm = arms.set_index("user_id")["arm"]

    horizon = pd.Timedelta(hours=attribution_hours)
    ev = logs.events[["ts", "type", "impression_id", "quantity", "price_paid"]].dropna(subset=["impression_id"])
    ev = ev.assign(impression_id=ev["impression_id"].astype(np.int64), ts=pd.to_datetime(ev["ts"], utc=True))
    imp_ts = imp[["impression_id", "user_id", "ts"]].assign(ts=lambda f: pd.to_datetime(f["ts"], utc=True))
    joined = ev.merge(imp_ts, on="impression_id", suffixes=("_event", ""))
    joined = joined[(joined["ts_event"] >= joined["ts"]) & (joined["ts_event"] <= joined["ts"] + horizon)]
    clicks = joined[joined["type"] == "click"].drop_duplicates("impression_id").groupby("user_id").size()
    buys = joined[joined["type"] == "purchase"]
    gmv = (buys["price_paid"].fillna(0.0) * buys["quantity"]).groupby(buys["user_id"]).sum()

    table = pd.DataFrame({"arm": user_arm})
    table["requests"] = req.groupby("user_id").size()
    table["errors"] = req.groupby("user_id")["error"].sum()
    table["impressions"] = imp.groupby("user_id").size()
    table["clicked"] = clicks
    table["gmv"] = gmv
    cols = ["requests", "errors", "impressions", "clicked", "gmv"]
    table[cols] = table[cols].fillna(0.0).astype(np.float64)
    return table.reset_index(names="user_id"), req, len(crossover)


def evaluate_stage(logs: StageLogs, *, config: RolloutConfig, share: float, look: int) -> StageEvaluation:
    """Judge one stage's window: advance, roll back, or hold (see the module docstring).

    Parameters
    ----------
    logs : StageLogs
        The stage's window (already cut to it).
    config : RolloutConfig
        Margins, minimum counts, alpha, looks, bootstrap.
    share : float
        Planned challenger share of this stage, in (0, 1), for the sample-ratio check.
    look : int
        The look this evaluation would spend, ``1 <= look <= config.looks_per_stage``.

    Returns
    -------
    StageEvaluation

    Raises
    ------
    ValueError
        If ``share`` or ``look`` is out of range.
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be in (0, 1) for a comparison, got {share}")
    n_looks = config.looks_per_stage
    if not 1 <= look <= n_looks:
        raise ValueError(f"look must be in [1, {n_looks}], got {look}")
    table, req, crossover = _per_user_table(logs, config.attribution_hours)
    counts: dict[str, int] = {"crossover_users": crossover}
    for arm in (CHAMPION, CHALLENGER):
        rows = table[table["arm"] == arm]
        counts[f"users_{arm}"] = int((rows["requests"] > 0).sum())
        counts[f"requests_{arm}"] = int(rows["requests"].sum())
        counts[f"impressions_{arm}"] = int(rows["impressions"].sum())
        counts[f"clicked_{arm}"] = int(rows["clicked"].sum())
        counts[f"purchasing_users_{arm}"] = int((rows["gmv"] > 0).sum())
    short = [f"{arm}: {counts[f'users_{arm}']} users, {counts[f'requests_{arm}']} requests"
             for arm in (CHAMPION, CHALLENGER)
             if counts[f"users_{arm}"] < config.min_users_per_arm
             or counts[f"requests_{arm}"] < config.min_requests_per_arm]
    if short:
        reason = (f"insufficient data ({'; '.join(short)}; need {config.min_users_per_arm} users and "
                  f"{config.min_requests_per_arm} requests per arm)")
        return StageEvaluation("hold", reason, None, n_looks, None, counts=counts)
    if counts[f"clicked_{CHAMPION}"] == 0 or counts[f"purchasing_users_{CHAMPION}"] == 0:
        # Relative lifts against a zero baseline are undefined: the event log is missing or late.
        reason = (f"insufficient data (no clicks or purchases attributed in the champion arm yet: "
                  f"{counts[f'clicked_{CHAMPION}']} clicked impressions, "
                  f"{counts[f'purchasing_users_{CHAMPION}']} purchasing users; is the event log arriving?)")
        return StageEvaluation("hold", reason, None, n_looks, None, counts=counts)

    srm = sample_ratio_mismatch(counts[f"users_{CHAMPION}"], counts[f"users_{CHALLENGER}"],
                                expected_treatment_share=share, alpha=config.srm_alpha)
    plan = obrien_fleming_plan(n_looks=n_looks, alpha=config.alpha)
    alpha_k = float(plan.nominal_alpha[look - 1])
    if srm.mismatch:
        reason = (f"sample ratio mismatch: challenger has {srm.observed_treatment_share:.2%} of users, planned "
                  f"{share:.2%} (p = {srm.p_value:.2g})")
        return StageEvaluation("rollback", reason, look, n_looks, alpha_k, srm=srm, counts=counts)

    users = table[table["requests"] > 0]
    checks = [
        _ratio_check("gmv_per_request", table, "gmv", "requests", alpha=alpha_k, margin=config.gmv_margin,
                     scale="relative", higher_is_better=True),
        _ratio_check("ctr", table, "clicked", "impressions", alpha=alpha_k, margin=config.ctr_margin,
                     scale="relative", higher_is_better=True),
        _ratio_check("error_rate", users, "errors", "requests", alpha=alpha_k, margin=config.error_rate_margin,
                     scale="absolute", higher_is_better=False),
    ]
    lat = {arm: req[req["arm"] == arm] for arm in (CHAMPION, CHALLENGER)}
    q_cp, q_ch, eff, lo, hi = p95_latency_test(
        lat[CHAMPION]["latency_ms"].to_numpy(), lat[CHAMPION]["user_id"].to_numpy(),
        lat[CHALLENGER]["latency_ms"].to_numpy(), lat[CHALLENGER]["user_id"].to_numpy(),
        alpha=alpha_k, n_bootstrap=config.n_bootstrap, seed=config.seed + look)
    checks.append(GuardrailCheck("latency_p95_ms", "cluster_bootstrap_log_ratio", q_cp, q_ch, eff, lo, hi,
                                 "relative", config.latency_p95_margin, False,
                                 _verdict(eff, lo, hi, config.latency_p95_margin, False),
                                 counts[f"users_{CHAMPION}"], counts[f"users_{CHALLENGER}"]))

    failed = [c for c in checks if c.verdict == "fail"]
    open_ = [c for c in checks if c.verdict == "inconclusive"]
    where = f"look {look}/{n_looks}, alpha {alpha_k:.2g}"
    if failed:
        decision, reason = "rollback", f"guardrail failed ({where}): " + "; ".join(c.describe() for c in failed)
    elif not open_:
        decision, reason = "advance", f"all guardrails pass ({where})"
    elif look == n_looks:
        decision = "rollback"
        reason = (f"inconclusive at the last look ({where}), non-inferiority not shown: "
                  + "; ".join(c.describe() for c in open_))
    else:
        decision, reason = "hold", f"inconclusive ({where}): " + ", ".join(c.metric for c in open_)
    logger.info("stage evaluation: %s: %s", decision, reason)
    return StageEvaluation(decision, reason, look, n_looks, alpha_k, tuple(checks), srm, counts)
