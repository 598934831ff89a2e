"""Simulated A/B tests: two ranking policies face the simulated buyers, and the truth is kept.

Layout of one simulated experiment (days of the simulator's period, 0-based)::

    [0, pre_days)                          pre-period: everybody served by the incumbent's
                                           exploring policy (the simulator's noisy popularity
                                           with its randomized share), or by control
    [pre_days, pre_days + experiment_days) experiment: each user's arm serves them

Further arms can run *side by side* with the two served ones (``arms``): every experiment
request is also put to them and their feeds are judged on the simulator's exact
expectations, without being shown; so any number of policies (heuristics, the oracle) are
compared on the very same buyers and requests as the A/B's own arms.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
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
from experiments.simulator.policy import LOGGING_POLICY_NAME, RANDOM_POLICY_NAME
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
PRE_PERIOD_POLICIES: tuple[str, ...] = ("exploring", "control")
_ARMS = (CONTROL, TREATMENT)


@dataclass(frozen=True)
class ABSimulationConfig:
    """Design of a simulated A/B test.

    Parameters
    ----------
    pre_days : int, default=14
        Days before the experiment (CUPED's covariate; the history a treatment factory learns
        from). ``>= 1``. Two weeks of the exploring incumbent's logs is what the full system
        needs to beat the heuristics (docs/ranking.md, "Judged on the truth").
    experiment_days : int, default=7
        Days of the experiment, ``>= 1``. ``pre_days + experiment_days`` must not exceed the
        simulator's ``days``.
    salt : str, default="ab-sim-1"
        Experiment salt for :func:`experiments.ab.assign_arm`.
    treatment_share : float, default=0.5
        Share of users in treatment, in (0, 1).
    pre_period_policy : {"exploring", "control"}, default="exploring"
        Who serves the pre-period: ``"exploring"``, the simulator's own logging policy (noisy
        popularity, a ``randomized_share`` of requests with their top slots shuffled and exact
        propensities), as a marketplace's incumbent serves the months of logs a model learns
        from; ``"control"``, the control policy (deterministic: every buyer sees the same
        items, which leaves a model little to learn).
    pre_period_randomized_share : float, default=0.0
        With ``pre_period_policy="control"``: share of pre-period requests whose top
        ``shuffle_top_n`` slots (the simulator's) are shuffled uniformly at random and logged as
        randomized with propensity ``1 / n``, in [0, 1]. Both arms get it alike, so the CUPED
        covariate stays balanced; the experiment period is never randomized.
    batch_minutes : int, default=15
        The experiment is served in batches of this many minutes of requests, in time order;
        what buyers did in one batch reaches policies that observe the live stream (``observe``,
        e.g. the full system's real-time user features) before the next. In [1, 1440].
    """

    pre_days: int = 14
    experiment_days: int = 7
    salt: str = "ab-sim-1"
    treatment_share: float = 0.5
    pre_period_policy: str = "exploring"
    pre_period_randomized_share: float = 0.0
    batch_minutes: int = 15

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
        check(self.pre_period_policy in PRE_PERIOD_POLICIES, "pre_period_policy",
              f"one of {list(PRE_PERIOD_POLICIES)}", self.pre_period_policy)
        check(self.pre_period_policy == "control" or self.pre_period_randomized_share == 0.0,
              "pre_period_randomized_share", "0 unless pre_period_policy is 'control' (the exploring "
              "policy randomizes with the simulator's randomized_share)", self.pre_period_randomized_share)
        if isinstance(self.batch_minutes, bool) or not isinstance(self.batch_minutes, int):
            raise TypeError(f"batch_minutes must be an int, got {type(self.batch_minutes).__name__}")
        check(1 <= self.batch_minutes <= 1440, "batch_minutes", "in [1, 1440]", self.batch_minutes)


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
    arm_totals : mapping of str to mapping of str to float
        ``sum_r g_A(r)`` of each metric for every arm ``A`` judged on the experiment's
        requests: ``"control"``, ``"treatment"`` and each side-by-side arm by its key.
    arm_policies : mapping of str to str
        The policy name behind each key of ``arm_totals``.
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
    arm_totals: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    arm_policies: Mapping[str, str] = field(default_factory=dict)

    def per_user(self, metric: str = "gmv") -> dict[str, float]:
        """Each judged arm's expected ``metric`` per experiment user (``arm_totals / n_users``)."""
        n = self.truth[metric].n_users
        return {arm: totals[metric] / n for arm, totals in self.arm_totals.items()}


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
    arms: Mapping[str, RankingPolicy | PolicyFactory] | None = None,
    progress: bool = True,
) -> ABSimulationResult:
    """Run a simulated A/B test of ``treatment`` against ``control`` and write its logs.

    The pre-period is served for everybody by the simulator's exploring logging policy (or
    by ``control``, see :class:`ABSimulationConfig`); then, when ``treatment`` (or a
    side-by-side arm) is a factory, it is called with the
    :class:`~experiments.policies.LogHistory` of events logged before the experiment starts
    (its :meth:`~experiments.policies.LogHistory.export_logs` gives a factory that trains a
    model the full contract logs before the start); then each user is served by their arm's
    policy for the experiment days, in time-ordered batches of ``batch_minutes``. After each
    batch, every policy with an ``observe(impressions, events)`` method is handed what was
    logged (pandas frames of the contract columns), as a live event stream would. Requests are simulated in chunks of the simulator's ``chunk_requests``
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
    arms : mapping of str to RankingPolicy or factory, optional
        Side-by-side arms: asked for a feed on every experiment request and judged on the
        truth (``ABSimulationResult.arm_totals``), never served. Keys other than
        ``"control"`` and ``"treatment"``.
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
    side = dict(arms or {})
    for key, arm in side.items():
        if not isinstance(key, str) or not key or key in _ARMS:
            raise ValueError(f"arms keys must be non-empty names other than {list(_ARMS)}, got {key!r}")
        _check_policy(arm, f"arms[{key!r}]", factory_ok=True)
    cfg = simulator.config
    total_days = design.pre_days + design.experiment_days
    if total_days > cfg.days:
        raise ValueError(f"simulator.config.days must be >= pre_days + experiment_days = {total_days}, got {cfg.days}")

    started = time.perf_counter()
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    try:
        return _run(simulator, control, treatment, side, design, out, tmp, progress=progress, started=started)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _time_batches(requests: Requests, day_start_us: int, minutes: int) -> list[slice]:
    """Slices of time-sorted ``requests``, one per ``minutes`` of the day that holds requests."""
    step = minutes * 60 * 1_000_000
    bounds = np.searchsorted(requests.ts_us, day_start_us + step * np.arange(1, DAY_US // step + 2))
    edges = np.unique(np.concatenate([[0], np.minimum(bounds, len(requests))]))
    return [slice(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo]


def _observers(policies: list[RankingPolicy]) -> list[Callable[[pd.DataFrame, pd.DataFrame], None]]:
    return [obs for p in policies if callable(obs := getattr(p, "observe", None))]


def _run(simulator: MarketplaceSimulator, control: RankingPolicy, treatment: RankingPolicy | PolicyFactory,
         side: dict[str, RankingPolicy | PolicyFactory], design: ABSimulationConfig, out: Path, tmp: Path, *,
         progress: bool, started: float) -> ABSimulationResult:
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
              propensity: np.ndarray | None = None) -> tuple[pa.Table, pa.Table]:
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
        return imp, events

    def log_day(day: int, phase: str, n_requests: int) -> None:
        if progress:
            logger.info("day %d/%d (%s): %s requests; %s impressions so far, %.1f s", day + 1, total_days, phase,
                        f"{n_requests:,}", f"{rows['impressions']:,}", time.perf_counter() - started)

    exploring = design.pre_period_policy == "exploring"
    for day in range(design.pre_days):
        requests, available = simulator.requests_for_day(day), simulator.available_items(day)
        for c, lo in enumerate(range(0, len(requests), cfg.chunk_requests)):
            reqs = requests.take(slice(lo, lo + cfg.chunk_requests))
            randomized = propensity = None
            if exploring:
                logged = simulator.logging_policy.serve(len(reqs), available,
                                                        np.random.default_rng([cfg.seed, day, c, 204]))
                served, randomized, propensity = logged.served, logged.randomized, logged.propensity
                names: np.ndarray | str = np.where(randomized, RANDOM_POLICY_NAME, LOGGING_POLICY_NAME)
            else:
                served = _serve(control, reqs, available, np.random.default_rng([cfg.seed, day, c, 201]),
                                world.n_items)
                names = control.name
                if design.pre_period_randomized_share > 0:
                    served, randomized, propensity = _randomize(
                        served, design.pre_period_randomized_share, cfg.shuffle_top_n,
                        np.random.default_rng([cfg.seed, day, c, 203]))
            write(day, c, reqs, served, names, available, np.random.default_rng([cfg.seed, day, c, 101]),
                  randomized, propensity)
        log_day(day, "pre-period", len(requests))

    history: LogHistory | None = None

    def build(policy: RankingPolicy | PolicyFactory, label: str) -> RankingPolicy:
        nonlocal history
        if isinstance(policy, RankingPolicy):
            return policy
        if history is None:
            history = LogHistory.from_logs(tmp, before=experiment_start)
        built = policy(history)
        _check_policy(built, f"{label}(history)", factory_ok=False)
        logger.info("%s policy %r built from the pre-period's history", label, built.name)
        return built

    treat_policy = build(treatment, "treatment")
    side_policies = {key: build(arm, key) for key, arm in side.items()}
    judged: dict[str, RankingPolicy] = {CONTROL: control, TREATMENT: treat_policy, **side_policies}
    observers = _observers([treat_policy, *side_policies.values()])
    if observers:  # what the live stream delivered before the experiment
        _feed_observers(observers, tmp, experiment_start)

    totals = {arm: dict.fromkeys(TRUTH_METRICS, 0.0) for arm in judged}
    seen = np.zeros(world.n_users, dtype=bool)
    n_requests = 0
    for day in range(design.pre_days, total_days):
        requests, available = simulator.requests_for_day(day), simulator.available_items(day)
        for c, part in enumerate(_time_batches(requests, cfg.start_us + day * DAY_US, design.batch_minutes)):
            reqs = requests.take(part)
            feeds = {arm: _serve(policy, reqs, available, np.random.default_rng([cfg.seed, day, c, 201 + j]),
                                 world.n_items) for j, (arm, policy) in enumerate(judged.items())}
            width = max(f.shape[1] for f in feeds.values())
            feeds = {arm: _pad(f, width) for arm, f in feeds.items()}
            treated = treated_user[reqs.user_id]
            served = np.where(treated[:, None], feeds[TREATMENT], feeds[CONTROL])
            policy = np.where(treated, treat_policy.name, control.name)
            imp, events = write(day, c, reqs, served, policy, available,
                                np.random.default_rng([cfg.seed, day, c, 101]))
            for arm, f in feeds.items():
                expected = simulator.expected_outcome(reqs, f)
                totals[arm]["gmv"] += float(expected.gmv.sum())
                totals[arm]["purchases"] += float(expected.purchase.sum())
                totals[arm]["clicks"] += float(expected.click.sum())
            if observers:
                imp_frame, ev_frame = _contract_frames(imp, events)
                for observe in observers:
                    observe(imp_frame, ev_frame)
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
        "side_by_side": {arm: {"policy": judged[arm].name, **totals[arm]} for arm in side_policies},
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
        users_by_arm=users_by_arm, rows=rows, seconds=seconds,
        arm_totals={arm: dict(v) for arm, v in totals.items()},
        arm_policies={arm: p.name for arm, p in judged.items()})


def _contract_frames(impressions: pa.Table, events: pa.Table) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The columns a live stream carries, as pandas frames."""
    return (impressions.select(["impression_id", "ts", "user_id", "item_id"]).to_pandas(),
            events.select(["event_id", "ts", "user_id", "item_id", "type"]).to_pandas())


def _feed_observers(observers: list[Callable[[pd.DataFrame, pd.DataFrame], None]], log_dir: Path,
                    before: pd.Timestamp) -> None:
    """Hand the pre-period's logged rows to the observers (what the stream held at the start)."""
    import pyarrow.dataset as ds

    cut = pc.field("ts") < before.to_pydatetime()
    imp = ds.dataset(log_dir / "impressions", format="parquet").to_table(
        columns=["impression_id", "ts", "user_id", "item_id"], filter=cut)
    ev = ds.dataset(log_dir / "events", format="parquet").to_table(
        columns=["event_id", "ts", "user_id", "item_id", "type"], filter=cut)
    imp_frame, ev_frame = _contract_frames(imp, ev)
    for observe in observers:
        observe(imp_frame, ev_frame)
