"""Read an A/B experiment from logs in the contract, and the standard readout of it.

Any logs in the contract work, given an ``arm`` column on ``impressions`` (the arm that
served the impression's user) and the experiment's start. Logs written by
:func:`experiments.ab_simulation.run_ab_simulation` carry both, plus the simulator's truth, in
``_ab/experiment.json``.

Metrics (all attributed to feed impressions through ``events.impression_id``, purchases
within ``attribution_days`` of their impression)::

    per user     requests, impressions, clicks, purchases, gmv = sum(price_paid * quantity)
    per request  the same, for one feed request (a session)
    pre_*        the user's values over the pre-period (impressions before the start)

The per-user table holds the users with at least one experiment request; its ``pre_*``
columns are 0 for users who were not active before the start.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds

from experiments.ab import (
    CupedResult,
    EffectEstimate,
    SampleRatioResult,
    clustered_regression,
    cuped_ttest,
    guardrail_table,
    ratio_delta_test,
    sample_ratio_mismatch,
    welch_ttest,
)

__all__ = [
    "ARM_COLUMN",
    "ATTRIBUTION_DAYS",
    "CONTROL",
    "DEFAULT_GUARDRAILS",
    "METADATA_PATH",
    "TREATMENT",
    "ABReadout",
    "ExperimentData",
    "analyze_experiment",
    "load_experiment",
    "read_metadata",
]

logger = logging.getLogger(__name__)

ARM_COLUMN = "arm"
CONTROL = "control"
TREATMENT = "treatment"
METADATA_PATH = "_ab/experiment.json"
ATTRIBUTION_DAYS = 7.0
METRICS: tuple[str, ...] = ("requests", "impressions", "clicks", "purchases", "gmv")
# Guardrails: relative degradation each may show (non-inferiority margin) before the test fails.
DEFAULT_GUARDRAILS: Mapping[str, float] = {
    "requests_per_user": 0.02,
    "clicks_per_request": 0.05,
    "purchases_per_request": 0.05,
    "gmv_per_request": 0.05,
}


def read_metadata(log_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The simulated A/B's ``_ab/experiment.json`` under ``log_dir``, or None for other logs."""
    path = Path(log_dir) / METADATA_PATH
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass(frozen=True, eq=False)
class ExperimentData:
    """An experiment's per-user and per-request metrics, read from logs.

    Attributes
    ----------
    users : pandas.DataFrame
        One row per user with an experiment request: ``user_id, arm, treated`` (0/1),
        the :data:`METRICS` over the experiment, and ``pre_<metric>`` over the pre-period.
    requests : pandas.DataFrame
        One row per experiment request: ``request_id, user_id, arm, treated, ts, day`` (0-based
        day of the experiment) and the :data:`METRICS` except ``requests``.
    experiment_start, experiment_end : pandas.Timestamp
        The window ``[start, end)`` in UTC.
    control_arm, treatment_arm : str
        Labels of the arms in the logs.
    metadata : dict or None
        The simulated A/B's metadata (design, policies, truth) when the logs carry it.
    """

    users: pd.DataFrame
    requests: pd.DataFrame
    experiment_start: pd.Timestamp
    experiment_end: pd.Timestamp
    control_arm: str = CONTROL
    treatment_arm: str = TREATMENT
    metadata: dict[str, Any] | None = field(default=None, repr=False)

    def arm(self, treated: bool) -> pd.DataFrame:
        """Rows of ``users`` in treatment (True) or control (False)."""
        return self.users[self.users["treated"] == int(treated)]


def _utc(value: Any, name: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a timestamp, got {value!r}") from exc
    if ts is pd.NaT:
        raise ValueError(f"{name} must be a timestamp, got NaT")
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")


def _table(root: Path, name: str, columns: list[str], filt: Any = None) -> pd.DataFrame:
    if not (root / name).is_dir():
        raise FileNotFoundError(f"{root / name} not found: log_dir must hold the contract tables")
    dataset = ds.dataset(root / name, format="parquet")
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise ValueError(f"{name} must have columns {columns}, missing {missing} (an arm column is needed: "
                         f"pass arm_column=)")
    return dataset.to_table(columns=columns, filter=filt).to_pandas()


def load_experiment(
    log_dir: str | os.PathLike[str],
    *,
    experiment_start: Any = None,
    experiment_end: Any = None,
    arm_column: str = ARM_COLUMN,
    control_arm: str = CONTROL,
    treatment_arm: str = TREATMENT,
    attribution_days: float = ATTRIBUTION_DAYS,
) -> ExperimentData:
    """Read the logs under ``log_dir`` into per-user and per-request metric tables.

    Parameters
    ----------
    log_dir : path
        Contract tables (``impressions`` and ``events``) as Parquet folders.
    experiment_start, experiment_end : timestamp-like, optional
        The experiment window (UTC when naive). Default: from ``_ab/experiment.json``; the end
        defaults to just after the last impression when the logs carry no metadata.
    arm_column : str, default="arm"
        Column of ``impressions`` naming the user's arm.
    control_arm, treatment_arm : str, default "control", "treatment"
        The two values of ``arm_column``.
    attribution_days : float, default=7.0
        Purchases count for an impression when they come at most this long after it.

    Returns
    -------
    ExperimentData

    Raises
    ------
    FileNotFoundError
        If a table is missing.
    ValueError
        If the start is neither given nor in the metadata, the window is empty, ``arm_column``
        is missing or holds other values, a user appears in both arms, or an arm is empty.
    """
    root = Path(log_dir)
    meta = read_metadata(root)
    if experiment_start is None:
        if meta is None:
            raise ValueError(f"experiment_start must be given: {root} holds no {METADATA_PATH}")
        experiment_start = meta["experiment_start"]
        if experiment_end is None:
            experiment_end = meta["experiment_end"]
    start = _utc(experiment_start, "experiment_start")
    if not isinstance(attribution_days, (int, float)) or not attribution_days > 0:
        raise ValueError(f"attribution_days must be a number > 0, got {attribution_days!r}")
    if control_arm == treatment_arm:
        raise ValueError(f"control_arm and treatment_arm must differ, got {control_arm!r} twice")

    imp = _table(root, "impressions", ["impression_id", "request_id", "ts", "user_id", arm_column])
    imp[arm_column] = imp[arm_column].astype(str)
    bad = ~imp[arm_column].isin([control_arm, treatment_arm])
    if bad.any():
        raise ValueError(f"{arm_column} must hold {control_arm!r} or {treatment_arm!r}, got "
                         f"{sorted(imp.loc[bad, arm_column].unique())[:5]}")
    end = _utc(experiment_end, "experiment_end") if experiment_end is not None else \
        imp["ts"].max() + pd.Timedelta(microseconds=1)
    if not start < end:
        raise ValueError(f"experiment_end must be after experiment_start ({start}), got {end}")
    imp = imp[imp["ts"] < end]
    imp["treated"] = (imp[arm_column] == treatment_arm).astype(np.int64)
    both = imp.groupby("user_id")["treated"].nunique()
    if (both > 1).any():
        raise ValueError(f"{arm_column} must be constant per user: {int((both > 1).sum())} users appear in both arms")

    ev = _table(root, "events", ["ts", "type", "impression_id", "quantity", "price_paid"],
                pc.field("impression_id").is_valid() & pc.field("type").isin(["click", "purchase"]))
    ev = ev.merge(imp[["impression_id", "ts"]].rename(columns={"ts": "imp_ts"}), on="impression_id", how="inner")
    window = pd.Timedelta(days=float(attribution_days))
    ev = ev[(ev["ts"] >= ev["imp_ts"]) & (ev["ts"] - ev["imp_ts"] <= window)]
    clicks = ev[ev["type"] == "click"].groupby("impression_id").size()
    buys = ev[ev["type"] == "purchase"]
    purchases = buys.groupby("impression_id").size()
    gmv = (buys["price_paid"] * buys["quantity"]).groupby(buys["impression_id"]).sum()
    idx = imp["impression_id"]
    imp = imp.assign(impressions=1,
                     clicks=idx.map(clicks).fillna(0).to_numpy(np.int64),
                     purchases=idx.map(purchases).fillna(0).to_numpy(np.int64),
                     gmv=idx.map(gmv).fillna(0.0).to_numpy(np.float64))

    in_exp = imp["ts"] >= start
    per_request = imp[in_exp].groupby("request_id", sort=True).agg(
        user_id=("user_id", "first"), treated=("treated", "first"), ts=("ts", "min"),
        impressions=("impressions", "sum"), clicks=("clicks", "sum"), purchases=("purchases", "sum"),
        gmv=("gmv", "sum")).reset_index()
    if per_request.empty:
        raise ValueError(f"experiment_start ({start}) leaves no impressions in the experiment window")
    per_request["day"] = ((per_request["ts"] - start) // pd.Timedelta(days=1)).astype(np.int64)
    per_request["arm"] = np.where(per_request["treated"] == 1, treatment_arm, control_arm)

    agg = {m: (m, "sum") for m in METRICS if m != "requests"}
    users = per_request.groupby("user_id", sort=True).agg(treated=("treated", "first"),
                                                          requests=("request_id", "size"), **agg)
    pre_imp = imp[~in_exp]
    pre = pre_imp.groupby("request_id").agg(user_id=("user_id", "first"), **agg) \
        .groupby("user_id").agg(requests=("impressions", "size"), **agg)
    for m in METRICS:
        users[f"pre_{m}"] = pre[m].reindex(users.index).fillna(0).to_numpy(users[m].dtype)
    users = users.reset_index()
    users.insert(1, "arm", np.where(users["treated"] == 1, treatment_arm, control_arm))
    for arm_value, label in ((0, control_arm), (1, treatment_arm)):
        if int((users["treated"] == arm_value).sum()) < 2:
            raise ValueError(f"{arm_column} must give each arm >= 2 users in the window, got fewer in {label!r}")
    logger.info("experiment %s..%s: %d users (%d treated), %d requests", start, end, len(users),
                int(users["treated"].sum()), len(per_request))
    return ExperimentData(users=users, requests=per_request, experiment_start=start, experiment_end=end,
                          control_arm=control_arm, treatment_arm=treatment_arm, metadata=meta)


@dataclass(frozen=True)
class ABReadout:
    """The standard readout of an experiment.

    Attributes
    ----------
    srm : SampleRatioResult
        Users per arm against the planned share.
    pre_period_aa : EffectEstimate
        Welch test of per-user GMV in the pre-period, where both arms got the same policy: an
        A/A on real data (a significant result means the split or the logging is broken).
    gmv_per_user : EffectEstimate
        Welch test of per-user GMV over the experiment.
    gmv_per_user_cuped : CupedResult
        The same with CUPED, covariate ``pre_<cuped_covariate>``.
    gmv_per_request : EffectEstimate
        GMV per request (session), a ratio metric, by the delta method over users.
    gmv_per_request_clustered : EffectEstimate
        The same by OLS on request rows with user-clustered standard errors.
    gmv_per_request_naive : EffectEstimate
        OLS on request rows treating requests as independent (too narrow; for comparison).
    guardrails : pandas.DataFrame
        :func:`experiments.ab.guardrail_table` over :data:`DEFAULT_GUARDRAILS` (or the given ones).
    cuped_covariate : str
        The pre-period metric CUPED used.
    """

    srm: SampleRatioResult
    pre_period_aa: EffectEstimate
    gmv_per_user: EffectEstimate
    gmv_per_user_cuped: CupedResult
    gmv_per_request: EffectEstimate
    gmv_per_request_clustered: EffectEstimate
    gmv_per_request_naive: EffectEstimate
    guardrails: pd.DataFrame
    cuped_covariate: str

    def effects(self) -> dict[str, EffectEstimate]:
        """Every effect estimate, keyed by a readable name."""
        return {"gmv_per_user (welch)": self.gmv_per_user,
                "gmv_per_user (cuped)": self.gmv_per_user_cuped.effect,
                "gmv_per_request (delta)": self.gmv_per_request,
                "gmv_per_request (clustered ols)": self.gmv_per_request_clustered,
                "gmv_per_request (naive ols)": self.gmv_per_request_naive,
                "pre-period gmv_per_user (A/A)": self.pre_period_aa}

    def effects_table(self) -> pd.DataFrame:
        """One row per effect estimate with its lift, interval and p-value."""
        cols = ["control_mean", "treatment_mean", "estimate", "std_error", "ci_low", "ci_high", "relative_lift",
                "relative_ci_low", "relative_ci_high", "p_value"]
        return pd.DataFrame([{c: getattr(e, c) for c in cols} for e in self.effects().values()],
                            index=list(self.effects()))


def _ratio(data: ExperimentData, numerator: str, denominator: str, alpha: float) -> EffectEstimate:
    c, t = data.arm(False), data.arm(True)
    return ratio_delta_test(c[numerator].to_numpy(), c[denominator].to_numpy(),
                            t[numerator].to_numpy(), t[denominator].to_numpy(), alpha=alpha)


def analyze_experiment(
    data: ExperimentData,
    *,
    alpha: float = 0.05,
    expected_treatment_share: float = 0.5,
    srm_alpha: float = 0.001,
    cuped_covariate: str = "gmv",
    guardrails: Mapping[str, float] | None = None,
) -> ABReadout:
    """SRM, pre-period A/A, per-user and per-request GMV effects (plain, CUPED, clustered), guardrails.

    Parameters
    ----------
    data : ExperimentData
        From :func:`load_experiment`.
    alpha : float, default=0.05
        Interval level ``1 - alpha`` of every effect.
    expected_treatment_share : float, default=0.5
        The planned split, for the SRM check.
    srm_alpha : float, default=0.001
        Level of the SRM check.
    cuped_covariate : str, default="gmv"
        Metric whose pre-period value (``pre_<metric>``) is CUPED's covariate; one of
        :data:`METRICS`.
    guardrails : mapping of str to float, optional
        Allowed relative degradation per guardrail metric; keys from
        :data:`DEFAULT_GUARDRAILS` (the default).

    Returns
    -------
    ABReadout

    Raises
    ------
    TypeError
        If ``data`` is not an ExperimentData.
    ValueError
        If ``cuped_covariate`` or a guardrail is unknown, or a statistic rejects its input.
    """
    if not isinstance(data, ExperimentData):
        raise TypeError(f"data must be an ExperimentData, got {type(data).__name__}")
    if cuped_covariate not in METRICS:
        raise ValueError(f"cuped_covariate must be one of {list(METRICS)}, got {cuped_covariate!r}")
    margins = dict(DEFAULT_GUARDRAILS if guardrails is None else guardrails)
    unknown = set(margins) - set(DEFAULT_GUARDRAILS)
    if unknown:
        raise ValueError(f"guardrails must be keyed by {list(DEFAULT_GUARDRAILS)}, got unknown {sorted(unknown)}")
    c, t = data.arm(False), data.arm(True)
    srm = sample_ratio_mismatch(len(c), len(t), expected_treatment_share=expected_treatment_share,
                                alpha=srm_alpha)
    if srm.mismatch:
        logger.warning("sample ratio mismatch: %d control vs %d treatment users (p=%.2g); effects are suspect",
                       len(c), len(t), srm.p_value)
    cov = f"pre_{cuped_covariate}"
    per_request = {
        "requests_per_user": welch_ttest(c["requests"].to_numpy(), t["requests"].to_numpy(), alpha=alpha),
        "clicks_per_request": _ratio(data, "clicks", "requests", alpha),
        "purchases_per_request": _ratio(data, "purchases", "requests", alpha),
        "gmv_per_request": _ratio(data, "gmv", "requests", alpha),
    }
    return ABReadout(
        srm=srm,
        pre_period_aa=welch_ttest(c["pre_gmv"].to_numpy(), t["pre_gmv"].to_numpy(), alpha=alpha),
        gmv_per_user=welch_ttest(c["gmv"].to_numpy(), t["gmv"].to_numpy(), alpha=alpha),
        gmv_per_user_cuped=cuped_ttest(c["gmv"].to_numpy(), c[cov].to_numpy(), t["gmv"].to_numpy(),
                                       t[cov].to_numpy(), alpha=alpha),
        gmv_per_request=per_request["gmv_per_request"],
        gmv_per_request_clustered=clustered_regression(data.requests, metric="gmv", treatment="treated",
                                                       cluster="user_id", alpha=alpha),
        gmv_per_request_naive=clustered_regression(data.requests, metric="gmv", treatment="treated",
                                                   cluster=None, alpha=alpha),
        guardrails=guardrail_table({k: per_request[k] for k in margins}, margins),
        cuped_covariate=cuped_covariate,
    )
