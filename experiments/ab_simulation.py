"""Simulated A/B tests: two ranking policies face the simulated buyers, and the truth is kept.

Layout of one simulated experiment (days of the simulator's period, 0-based)::

    [0, pre_days)                          pre-period: both arms served by control (optionally
                                           with randomized top slots on a share of requests)
    [pre_days, pre_days + experiment_days) experiment: each user's arm serves them

Users are split by :func:`experiments.ab.assign_arm` (the salted hash serving uses), once,
for the whole period, so the pre-period gives CUPED a covariate that randomisation balances.

The estimand
------------
For every experiment request ``r`` both policies are asked for a feed -- ``F_C(r)`` and
``F_T(r)`` -- and the user's arm decides which one is served and logged. The simulator's exact
:meth:`~experiments.simulator.MarketplaceSimulator.expected_outcome` of *both* feeds gives, for
a metric ``m`` (GMV, purchases or clicks attributed to the feed)::

    g_C(r) = E[m(r) | F_C(r)],   g_T(r) = E[m(r) | F_T(r)]

Over the experiment's population -- the ``U`` users with at least one experiment request and
their ``N`` requests -- the true effects are finite-population averages of the difference::

    per-user lift     = (1 / U) sum_u sum_{r of u} (g_T(r) - g_C(r))   # estimand of a per-user test
    per-request lift  = (1 / N) sum_r (g_T(r) - g_C(r))                # of GMV per session (ratio)
    relative lift     = sum_r g_T(r) / sum_r g_C(r) - 1                 # the same for both

i.e. "everybody on treatment" minus "everybody on control" on the very requests of the
experiment. Randomisation makes the difference-in-means estimators unbiased for them. Requests
do not depend on the arm (the simulator's traffic is exogenous), so U and N are the same in
both counterfactual worlds. GMV counts ``price_paid * quantity`` of purchases attributed to a
feed impression (``events.impression_id``); purchases come up to 7 days after the impression,
so the logs keep every feed event of the experiment however late (the readout waits out the
7-day attribution window). Organic (non-feed) events are logged too, as history, but are no
part of the metric: they do not depend on the policy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from experiments.ab import assign_arm
from experiments.ab_readout import (
    ARM_COLUMN,
    ATTRIBUTION_DAYS,
    CONTROL,
    METADATA_PATH,
    TREATMENT,
)
from experiments.policies import LogHistory, RankingPolicy
from experiments.simulator import MarketplaceSimulator, Requests
from experiments.simulator.simulator import ORGANIC_SLOT
from experiments.simulator.world import DAY_US
from features.config import check

__all__ = [
    "ABSimulationConfig",
    "ABSimulationResult",
    "PolicyFactory",
    "TrueEffect",
    "run_ab_simulation",
]

logger = logging.getLogger(__name__)

PolicyFactory = Callable[[LogHistory], RankingPolicy]
"""Builds a policy from the history logged before the experiment (the pre-period)."""

TRUTH_METRICS: tuple[str, ...] = ("gmv", "purchases", "clicks")
_ARMS = (CONTROL, TREATMENT)


@dataclass(frozen=True)
class ABSimulationConfig:
    """Design of a simulated A/B test.

    Parameters
    ----------
    pre_days : int, default=3
        Days before the experiment, both arms on control (CUPED's covariate; the history a
        treatment factory learns from). ``>= 1``.
    experiment_days : int, default=7
        Days of the experiment, ``>= 1``. ``pre_days + experiment_days`` must not exceed the
        simulator's ``days``.
    salt : str, default="ab-sim-1"
        Experiment salt for :func:`experiments.ab.assign_arm`.
    treatment_share : float, default=0.5
        Share of users in treatment, in (0, 1).
    pre_period_randomized_share : float, default=0.0
        Share of pre-period requests whose top ``shuffle_top_n`` slots (the simulator's) are
        shuffled uniformly at random and logged as randomized with propensity ``1 / n``, in
        [0, 1]: the randomized traffic a model trained on the pre-period needs to estimate
        position bias (the marketplace's usual exploration). Both arms get it alike, so the
        CUPED covariate stays balanced; the experiment period is never randomized.
    """

    pre_days: int = 3
    experiment_days: int = 7
    salt: str = "ab-sim-1"
    treatment_share: float = 0.5
    pre_period_randomized_share: float = 0.0

    def __post_init__(self) -> None:
        for name in ("pre_days", "experiment_days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            check(value >= 1, name, ">= 1", value)
        if not isinstance(self.salt, str):
            raise TypeError(f"salt must be a str, got {type(self.salt).__name__}")
        check(1 <= len(self.salt.encode("utf-8")) <= 64, "salt", "1 to 64 UTF-8 bytes", self.salt)
        check(0.0 < self.treatment_share < 1.0, "treatment_share", "in (0, 1)", self.treatment_share)
        check(0.0 <= self.pre_period_randomized_share <= 1.0, "pre_period_randomized_share", "in [0, 1]",
              self.pre_period_randomized_share)


@dataclass(frozen=True)
class TrueEffect:
    """The simulator's exact effect of treatment vs control on one metric (see the module doc).

    Attributes
    ----------
    metric : str
        ``"gmv"``, ``"purchases"`` or ``"clicks"`` (attributed to feed impressions).
    control_total, treatment_total : float
        ``sum_r g_C(r)`` and ``sum_r g_T(r)`` over all experiment requests.
    n_users, n_requests : int
        Users with at least one experiment request, and those requests.
    """

    metric: str
    control_total: float
    treatment_total: float
    n_users: int
    n_requests: int

    @property
    def control_per_user(self) -> float:
        """Expected metric per user if everybody were on control."""
        return self.control_total / self.n_users

    @property
    def treatment_per_user(self) -> float:
        """Expected metric per user if everybody were on treatment."""
        return self.treatment_total / self.n_users

    @property
    def per_user_lift(self) -> float:
        """``(1 / U) sum_r (g_T(r) - g_C(r))``."""
        return (self.treatment_total - self.control_total) / self.n_users

    @property
    def per_request_lift(self) -> float:
        """``(1 / N) sum_r (g_T(r) - g_C(r))``: the lift in the metric per session."""
        return (self.treatment_total - self.control_total) / self.n_requests

    @property
    def relative_lift(self) -> float:
        """``sum g_T / sum g_C - 1``; NaN when the control total is 0."""
        return self.treatment_total / self.control_total - 1.0 if self.control_total else float("nan")

    def to_dict(self) -> dict[str, float | int | str]:
        """Plain values (the totals and every derived lift), for JSON."""
        return {**asdict(self), "control_per_user": self.control_per_user,
                "treatment_per_user": self.treatment_per_user, "per_user_lift": self.per_user_lift,
                "per_request_lift": self.per_request_lift, "relative_lift": self.relative_lift}


@dataclass(frozen=True)
class ABSimulationResult:
    """What :func:`run_ab_simulation` wrote and the truth it kept.

    Attributes
    ----------
    log_dir : str
        Folder with the contract tables (impressions carry an extra ``arm`` column) and
        ``_ab/experiment.json`` (design, arms, period and truth).
    control_policy, treatment_policy : str
        Policy names.
    experiment_start, experiment_end : pandas.Timestamp
        The experiment window ``[start, end)`` (UTC); the pre-period ends at ``start``.
    truth : mapping of str to TrueEffect
        Keyed by metric (``"gmv"``, ``"purchases"``, ``"clicks"``).
    users_by_arm : mapping of str to int
        Users with at least one experiment request, per arm.
    rows : mapping of str to int
        Rows written per table.
    seconds : float
        Wall time of the run.
    """

    log_dir: str
    control_policy: str
    treatment_policy: str
    experiment_start: pd.Timestamp
    experiment_end: pd.Timestamp
    truth: Mapping[str, TrueEffect]
    users_by_arm: Mapping[str, int]
    rows: Mapping[str, int]
    seconds: float


def _arm_strings(treated: np.ndarray) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(treated.astype(np.int8)), pa.array(_ARMS)).cast(pa.string())


def _serve(policy: RankingPolicy, requests: Requests, available: np.ndarray, rng: np.random.Generator,
           n_items: int) -> np.ndarray:
    """Ask ``policy`` for feeds and check what comes back (the boundary to foreign policies)."""
    served = np.asarray(policy.serve(requests, available, rng))
    if served.ndim != 2 or served.shape[0] != len(requests) or not 1 <= served.shape[1] < ORGANIC_SLOT:
        raise ValueError(f"policy {policy.name!r} must return item ids of shape (n_requests={len(requests)}, K) "
                         f"with 1 <= K < {ORGANIC_SLOT}, got {served.shape}")
    if not np.issubdtype(served.dtype, np.integer):
        raise TypeError(f"policy {policy.name!r} must return integer item ids, got dtype {served.dtype}")
    served = served.astype(np.int64, copy=False)
    filled = served >= 0
    if (served < -1).any() or (served >= n_items).any() or not available[np.where(filled, served, 0)][filled].all():
        raise ValueError(f"policy {policy.name!r} must return available item ids or -1 for an empty slot")
    dup = np.sort(np.where(filled, served, -np.arange(1, served.shape[1] + 1)), axis=1)
    if (dup[:, 1:] == dup[:, :-1]).any():
        raise ValueError(f"policy {policy.name!r} must not show an item twice in one feed")
    return served


def _randomize(served: np.ndarray, share: float, top_n: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle the top ``top_n`` slots of a ``share`` of the feeds uniformly at random.

    Only feeds whose top ``n = min(top_n, K)`` slots are all filled take part. Returns
    ``(served, randomized (R,), propensity (R, K))``; the propensity is ``1 / n`` on the
    shuffled slots of randomized feeds and NaN elsewhere.
    """
    n = min(top_n, served.shape[1])
    randomized = (rng.random(served.shape[0]) < share) & (served[:, :n] >= 0).all(axis=1) & (n >= 2)
    propensity = np.full(served.shape, np.nan)
    rows = np.flatnonzero(randomized)
    if rows.size:
        served = served.copy()
        perm = np.argsort(rng.random((rows.size, n)), axis=1)
        served[rows, :n] = np.take_along_axis(served[rows, :n], perm, axis=1)
        propensity[rows, :n] = 1.0 / n
    return served, randomized, propensity


def _pad(feeds: np.ndarray, width: int) -> np.ndarray:
    if feeds.shape[1] == width:
        return feeds
    return np.hstack([feeds, np.full((feeds.shape[0], width - feeds.shape[1]), -1, dtype=np.int64)])


def _check_policy(value: object, name: str, *, factory_ok: bool) -> None:
    if isinstance(value, RankingPolicy):
        if not isinstance(value.name, str) or not value.name:
            raise ValueError(f"{name}.name must be a non-empty str, got {value.name!r}")
        return
    if factory_ok and callable(value):
        return
    expected = "a RankingPolicy or a PolicyFactory" if factory_ok else "a RankingPolicy"
    raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")


def run_ab_simulation(
    simulator: MarketplaceSimulator,
    control: RankingPolicy,
    treatment: RankingPolicy | PolicyFactory,
    out_dir: str | os.PathLike[str],
    *,
    config: ABSimulationConfig | None = None,
    progress: bool = True,
) -> ABSimulationResult:
    """Run a simulated A/B test of ``treatment`` against ``control`` and write its logs.

    The pre-period is served by ``control`` for everybody; then, when ``treatment`` is a
    factory, it is called with the :class:`~experiments.policies.LogHistory` of events logged
    before the experiment starts (its :meth:`~experiments.policies.LogHistory.export_logs`
    gives a factory that trains a model the full contract logs before the start); then each user is served by their arm's policy for the
    experiment days. Requests are simulated in chunks of the simulator's ``chunk_requests``
    and written chunk by chunk, so memory stays bounded by a chunk plus per-user counters.
    Data go to ``<out_dir>.partial`` and are moved into place at the end.

    Parameters
    ----------
    simulator : MarketplaceSimulator
        The buyers; its ``days`` must cover ``pre_days + experiment_days``.
    control : RankingPolicy
        Serves the pre-period (both arms) and the control arm.
    treatment : RankingPolicy or callable LogHistory -> RankingPolicy
        Serves the treatment arm; a factory learns from the pre-period's logs.
    out_dir : path
        Output folder (replaced if it exists).
    config : ABSimulationConfig, optional
        The design; default ``ABSimulationConfig()``.
    progress : bool, default=True
        Log a line per simulated day.

    Returns
    -------
    ABSimulationResult

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If the simulator's period is too short, or a policy returns malformed feeds.
    """
    if not isinstance(simulator, MarketplaceSimulator):
        raise TypeError(f"simulator must be a MarketplaceSimulator, got {type(simulator).__name__}")
    design = ABSimulationConfig() if config is None else config
    if not isinstance(design, ABSimulationConfig):
        raise TypeError(f"config must be an ABSimulationConfig, got {type(design).__name__}")
    _check_policy(control, "control", factory_ok=False)
    _check_policy(treatment, "treatment", factory_ok=True)
    cfg = simulator.config
    total_days = design.pre_days + design.experiment_days
    if total_days > cfg.days:
        raise ValueError(f"simulator.config.days must be >= pre_days + experiment_days = {total_days}, got {cfg.days}")

    started = time.perf_counter()
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    try:
        return _run(simulator, control, treatment, design, out, tmp, progress=progress, started=started)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _run(simulator: MarketplaceSimulator, control: RankingPolicy, treatment: RankingPolicy | PolicyFactory,
         design: ABSimulationConfig, out: Path, tmp: Path, *, progress: bool, started: float) -> ABSimulationResult:
    """The body of :func:`run_ab_simulation` (arguments already checked); writes into ``tmp``."""
    cfg = simulator.config
    total_days = design.pre_days + design.experiment_days
    shutil.rmtree(tmp, ignore_errors=True)
    for name in ("users", "sellers", "items", "impressions", "events", Path(METADATA_PATH).parent.name):
        (tmp / name).mkdir(parents=True)
    rows: dict[str, int] = {}
    for name, table in simulator.dimension_tables().items():
        pq.write_table(table, tmp / name / "part-00000.parquet")
        rows[name] = table.num_rows
    rows["impressions"] = rows["events"] = 0

    world = simulator.world
    treated_user = assign_arm(np.arange(world.n_users), design.salt, design.treatment_share)
    start_us = cfg.start_us + design.pre_days * DAY_US
    end_us = start_us + design.experiment_days * DAY_US
    experiment_start = pd.Timestamp(start_us, unit="us", tz="UTC")

    def write(day: int, chunk: int, requests: Requests, served: np.ndarray, policy: np.ndarray | str,
              available: np.ndarray, rng: np.random.Generator, randomized: np.ndarray | None = None,
              propensity: np.ndarray | None = None) -> None:
        outcome = simulator.respond(requests, served, rng=rng, policy=policy, randomized=randomized,
                                    propensity=propensity)
        imp = outcome.impressions
        imp = imp.append_column(ARM_COLUMN, _arm_strings(treated_user[imp["user_id"].to_numpy()]))
        events = pa.concat_tables([outcome.events, simulator.organic_events(requests, available, rng)])
        part = f"part-{day:03d}-{chunk:04d}.parquet"
        pq.write_table(imp, tmp / "impressions" / part)
        pq.write_table(events, tmp / "events" / part)
        rows["impressions"] += imp.num_rows
        rows["events"] += events.num_rows

    def log_day(day: int, phase: str, n_requests: int) -> None:
        if progress:
            logger.info("day %d/%d (%s): %s requests; %s impressions so far, %.1f s", day + 1, total_days, phase,
                        f"{n_requests:,}", f"{rows['impressions']:,}", time.perf_counter() - started)

    for day in range(design.pre_days):
        requests, available = simulator.requests_for_day(day), simulator.available_items(day)
        for c, lo in enumerate(range(0, len(requests), cfg.chunk_requests)):
            reqs = requests.take(slice(lo, lo + cfg.chunk_requests))
            served = _serve(control, reqs, available, np.random.default_rng([cfg.seed, day, c, 201]), world.n_items)
            randomized = propensity = None
            if design.pre_period_randomized_share > 0:
                served, randomized, propensity = _randomize(
                    served, design.pre_period_randomized_share, cfg.shuffle_top_n,
                    np.random.default_rng([cfg.seed, day, c, 203]))
            write(day, c, reqs, served, control.name, available, np.random.default_rng([cfg.seed, day, c, 101]),
                  randomized, propensity)
        log_day(day, "pre-period", len(requests))

    if isinstance(treatment, RankingPolicy):
        treat_policy = treatment
    else:
        treat_policy = treatment(LogHistory.from_logs(tmp, before=experiment_start))
        _check_policy(treat_policy, "treatment(history)", factory_ok=False)
        logger.info("treatment policy %r built from the pre-period's history", treat_policy.name)

    totals = {arm: dict.fromkeys(TRUTH_METRICS, 0.0) for arm in _ARMS}
    seen = np.zeros(world.n_users, dtype=bool)
    n_requests = 0
    for day in range(design.pre_days, total_days):
        requests, available = simulator.requests_for_day(day), simulator.available_items(day)
        for c, lo in enumerate(range(0, len(requests), cfg.chunk_requests)):
            reqs = requests.take(slice(lo, lo + cfg.chunk_requests))
            feeds_c = _serve(control, reqs, available, np.random.default_rng([cfg.seed, day, c, 201]), world.n_items)
            feeds_t = _serve(treat_policy, reqs, available, np.random.default_rng([cfg.seed, day, c, 202]),
                             world.n_items)
            width = max(feeds_c.shape[1], feeds_t.shape[1])
            feeds_c, feeds_t = _pad(feeds_c, width), _pad(feeds_t, width)
            treated = treated_user[reqs.user_id]
            served = np.where(treated[:, None], feeds_t, feeds_c)
            policy = np.where(treated, treat_policy.name, control.name)
            write(day, c, reqs, served, policy, available, np.random.default_rng([cfg.seed, day, c, 101]))
            for arm, feeds in ((CONTROL, feeds_c), (TREATMENT, feeds_t)):
                expected = simulator.expected_outcome(reqs, feeds)
                totals[arm]["gmv"] += float(expected.gmv.sum())
                totals[arm]["purchases"] += float(expected.purchase.sum())
                totals[arm]["clicks"] += float(expected.click.sum())
            seen[reqs.user_id] = True
            n_requests += len(reqs)
        log_day(day, "experiment", len(requests))

    n_users = int(seen.sum())
    if n_users == 0:
        raise ValueError("simulator made no requests during the experiment: increase users or requests_per_user_day")
    truth = {m: TrueEffect(metric=m, control_total=totals[CONTROL][m], treatment_total=totals[TREATMENT][m],
                           n_users=n_users, n_requests=n_requests) for m in TRUTH_METRICS}
    users_by_arm = {CONTROL: int((seen & ~treated_user).sum()), TREATMENT: int((seen & treated_user).sum())}
    experiment_end = pd.Timestamp(end_us, unit="us", tz="UTC")
    meta = {
        "design": asdict(design),
        "simulator": asdict(cfg),
        "arm_column": ARM_COLUMN,
        "arms": {CONTROL: control.name, TREATMENT: treat_policy.name},
        "experiment_start": experiment_start.isoformat(),
        "experiment_end": experiment_end.isoformat(),
        "attribution_days": ATTRIBUTION_DAYS,
        "users_by_arm": users_by_arm,
        "truth": {m: t.to_dict() for m, t in truth.items()},
        "rows": rows,
    }
    (tmp / METADATA_PATH).write_text(json.dumps(meta, indent=2, sort_keys=True))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    seconds = time.perf_counter() - started
    logger.info("simulated A/B written to %s in %.1f s: true relative GMV lift %.2f%%", out, seconds,
                100 * truth["gmv"].relative_lift)
    return ABSimulationResult(
        log_dir=str(out), control_policy=control.name, treatment_policy=treat_policy.name,
        experiment_start=experiment_start, experiment_end=experiment_end, truth=truth,
        users_by_arm=users_by_arm, rows=rows, seconds=seconds)
