"""Judging a feed bundle on the simulator's truth, stage by stage.

The simulator knows every buyer's true ``P(purchase | examined)`` for every item, so the
expected GMV of any feed is exact (:meth:`~experiments.simulator.MarketplaceSimulator.expected_outcome`).
:class:`StagedPipelinePolicy` serves the full system exactly as
:class:`~experiments.policies.PipelinePolicy` does and, for the same requests, keeps the feed
each earlier stage would have served:

===================== ===========================================================================
stage                 feed
===================== ===========================================================================
``retrieval_ceiling`` the retrieved candidates in true-value order (what retrieval leaves to rank)
``retrieval``         the candidates in retrieval order (the two-tower score, popularity padding)
``ranker``            the candidates by the LambdaMART score alone
``calibrated_p``      by the calibrated P(purchase) alone
``expected_gmv``      by E[GMV] = P x price (x margin) alone
``model``             by the scorer's final score (no re-ranking, no exploration)
``reranked``          after the fairness and diversity rules (no exploration)
``served``            after exploration: what the full system serves
===================== ===========================================================================

:meth:`StagedPipelinePolicy.stage` gives each as a :class:`~experiments.policies.RankingPolicy`
that a simulated A/B (:func:`experiments.ab_simulation.run_ab_simulation`, ``arms=``) judges
side by side with the served arms. The policy also measures, on every request, how well each
score orders the candidates against the truth (Spearman's rank correlation within the request's
candidates, averaged over requests) and whether the calibrated P(purchase) of the served items
matches their true P(purchase | examined) (ratio of sums over the served slots).

:func:`truth_table` and :func:`plot_waterfall` turn judged GMV per user into the table and the
figure of where value is lost: oracle -> retrieval ceiling -> model order -> re-ranked -> served.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from experiments.policies import OraclePolicy, PipelinePolicy

if TYPE_CHECKING:
    from experiments.simulator import MarketplaceSimulator, Requests

__all__ = ["COMPONENTS", "STAGES", "StagedPipelinePolicy", "TruthDiagnostics", "judge_bundle", "plot_waterfall",
           "truth_table"]

STAGES: tuple[str, ...] = ("retrieval_ceiling", "retrieval", "ranker", "calibrated_p", "expected_gmv", "model",
                           "reranked", "served")
COMPONENTS: tuple[str, ...] = ("retrieval", "ranker", "calibrated_p", "expected_gmv", "model")
# The waterfall's steps, each the value left after one more stage.
WATERFALL: tuple[tuple[str, str], ...] = (("oracle", "oracle: best K of the catalog"),
                                          ("stage_retrieval_ceiling", "best K of the retrieved candidates"),
                                          ("stage_model", "model order (no re-ranking)"),
                                          ("stage_reranked", "after re-ranking"),
                                          ("full_system", "served (re-ranking + exploration)"))


@dataclass
class TruthDiagnostics:
    """Running sums of the per-request truth checks (see the module docstring)."""

    requests: int = 0
    spearman_sum: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, 0.0))
    spearman_n: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, 0))
    served_p_sum: float = 0.0
    true_p_sum: float = 0.0
    served_slots: int = 0

    def spearman(self) -> dict[str, float]:
        """Mean Spearman(score, true value) within a request's candidates, per score; NaN without data."""
        return {c: self.spearman_sum[c] / self.spearman_n[c] if self.spearman_n[c] else float("nan")
                for c in COMPONENTS}

    def served_p_ratio(self) -> float:
        """Sum of calibrated P over the sum of true P(purchase | examined), on the served slots."""
        return self.served_p_sum / self.true_p_sum if self.true_p_sum > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "spearman": self.spearman(), "served_p_over_true_p": self.served_p_ratio(),
                "served_slots": self.served_slots}


class StagedPipelinePolicy(PipelinePolicy):
    """The full system, serving as :class:`PipelinePolicy`, keeping every stage's feed and truth checks.

    Parameters
    ----------
    pipeline : serving.model_pipeline.ModelPipeline
    simulator : MarketplaceSimulator
        The truth the candidates are measured against (never used to serve).
    feed_length, candidate_count, name
        As in :class:`PipelinePolicy`.
    """

    def __init__(self, pipeline, simulator: MarketplaceSimulator, *, feed_length: int = 20,
                 candidate_count: int = 500, name: str | None = None) -> None:
        super().__init__(pipeline, feed_length=feed_length, candidate_count=candidate_count, name=name)
        self.truth = OraclePolicy(simulator, feed_length=feed_length)
        self.diagnostics = TruthDiagnostics()
        self._requests: Requests | None = None
        self._available: np.ndarray | None = None
        self._feeds: dict[str, np.ndarray] = {}

    @classmethod
    def from_pipeline_policy(cls, policy: PipelinePolicy, simulator: MarketplaceSimulator) -> StagedPipelinePolicy:
        """The same pipeline and settings, instrumented."""
        return cls(policy.pipeline, simulator, feed_length=policy.feed_length,
                   candidate_count=policy.candidate_count, name=policy.name)

    def stage(self, name: str) -> _StageView:
        """The feeds of stage ``name`` (one of :data:`STAGES`) for the requests this policy served last."""
        if name not in STAGES:
            raise ValueError(f"stage must be one of {list(STAGES)}, got {name!r}")
        return _StageView(self, name)

    def _begin(self, requests: Requests, available: np.ndarray) -> None:
        self._requests = requests
        self._available = available
        self._feeds = {s: np.full((len(requests), self.feed_length), -1, dtype=np.int64) for s in STAGES}

    def _record(self, r: int, scored, arranged) -> None:
        from scipy.stats import spearmanr

        assert self._requests is not None and self._available is not None
        k = self.feed_length
        snap = self.pipeline.snapshot
        ids = snap.item_ids[scored.rows]
        ok = (ids >= 0) & (ids < self._available.size)
        ok[ok] = self._available[ids[ok]]
        req = self._requests.take(slice(r, r + 1))
        value = self.truth.true_values(req, ids[ok][None, :])[0]
        # the pipeline keeps the retriever's order (best first): its negated rank is the retrieval score
        scores = {"retrieval": -np.arange(len(ids), dtype=np.float64), "ranker": scored.ranker_score,
                  "calibrated_p": scored.p_purchase,
                  "expected_gmv": scored.expected_gmv, "model": scored.score}
        order_by = {"retrieval_ceiling": value}
        for comp, values in scores.items():
            if values is None:
                continue
            v = np.asarray(values, dtype=np.float64)[ok]
            order_by[comp] = v
            if v.size >= 2 and np.ptp(v) > 0 and np.ptp(value) > 0:
                rho = spearmanr(v, value).statistic
                if math.isfinite(rho):
                    self.diagnostics.spearman_sum[comp] += float(rho)
                    self.diagnostics.spearman_n[comp] += 1
        kept = ids[ok]
        for stage, v in order_by.items():
            top = np.argsort(-v, kind="stable")[:k]
            self._feeds[stage][r, : top.size] = kept[top]
        for stage, order in (("reranked", arranged.reranked), ("served", arranged.order)):
            chosen = arranged.candidates.item_ids[order]
            good = (chosen >= 0) & (chosen < self._available.size)
            good[good] = self._available[chosen[good]]
            chosen = chosen[good][:k]
            self._feeds[stage][r, : chosen.size] = chosen
        served = arranged.order[:k]
        served_ids = arranged.candidates.item_ids[served]
        if served_ids.size:
            sim = self.truth.simulator
            true_p = sim.purchase_probability(np.full(served_ids.size, req.user_id[0]), served_ids,
                                              devices=np.full(served_ids.size, req.device[0]),
                                              hours=np.full(served_ids.size, req.hour[0]))
            self.diagnostics.served_p_sum += float(np.asarray(scored.p_purchase)[served].sum())
            self.diagnostics.true_p_sum += float(true_p.sum())
            self.diagnostics.served_slots += int(served_ids.size)
        self.diagnostics.requests += 1


class _StageView:
    """One stage of a :class:`StagedPipelinePolicy` as a ranking policy: the feeds it kept for
    the requests it served last (it must serve them first: a simulated A/B asks its arms in order)."""

    def __init__(self, parent: StagedPipelinePolicy, stage: str) -> None:
        self.parent = parent
        self.stage = stage

    @property
    def name(self) -> str:
        return f"{self.parent.name}:{self.stage}"

    def serve(self, requests: Requests, available: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        parent = self.parent
        if parent._requests is None or not np.array_equal(parent._requests.request_id, requests.request_id):
            raise RuntimeError(f"stage {self.stage!r}: the full-system policy must serve these requests first "
                               "(list it before its stages)")
        return parent._feeds[self.stage].copy()


def truth_table(gmv_per_user: Mapping[str, float], *, baseline: str = "popularity",
                labels: Mapping[str, str] | None = None, unit: str = "GMV/user") -> str:
    """A plain-text table of expected GMV (per user, or ``unit``) and its ratio to ``baseline``, best first."""
    base = gmv_per_user.get(baseline, float("nan"))
    width = max([len(k) for k in gmv_per_user] + [len("policy")])
    lines = [f"{'policy':{width}s}  {unit:>11s}  {'x ' + baseline:>14s}"]
    for arm, value in sorted(gmv_per_user.items(), key=lambda kv: -kv[1]):
        ratio = value / base if base and math.isfinite(base) else float("nan")
        note = f"  {labels[arm]}" if labels and arm in labels else ""
        lines.append(f"{arm:{width}s}  {value:11.3f}  {ratio:13.2f}x{note}")
    return "\n".join(lines)


def plot_waterfall(gmv_per_user: Mapping[str, float], path: str | Path, *,
                   baselines: tuple[str, ...] = ("popularity", "popularity_logs", "category_affinity"),
                   title: str = "Where the value goes (expected GMV per user, simulator truth)") -> Path:
    """Bar chart of the value left after each stage (:data:`WATERFALL`), the losses between them
    annotated, with the no-ML baselines as dashed lines; writes a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [(key, label) for key, label in WATERFALL if key in gmv_per_user]
    values = [gmv_per_user[k] for k, _ in steps]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    bars = ax.bar(range(len(values)), values, color="#4c72b0")
    for i, (bar, v) in enumerate(zip(bars, values, strict=True)):
        ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=9)
        if i and values[i - 1] > 0:  # the change from the previous step, between the two bars
            ax.text(i - 0.5, min(v, values[i - 1]) * 0.5, f"{v / values[i - 1] - 1.0:+.0%}", ha="center",
                    color="#c44e52", fontsize=9)
    ax.set_ylim(0, max(values + [0.0]) * 1.12)
    colors = ("#dd8452", "#55a868", "#8172b3")
    for color, name in zip(colors, baselines, strict=False):
        if name in gmv_per_user:
            ax.axhline(gmv_per_user[name], ls="--", color=color, label=f"{name} ({gmv_per_user[name]:.2f})")
    ax.set_xticks(range(len(values)), [label for _, label in steps], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("expected GMV per user")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def judge_bundle(simulator: MarketplaceSimulator, bundle_dir: str | Path, log_dir: str | Path, *, day: int,
                 n_requests: int = 1000, candidate_count: int = 200, seed: int = 0) -> dict[str, Any]:
    """Judge a trained bundle on the simulator's truth against the logged policy, the heuristics and the oracle.

    A sample of ``n_requests`` requests of ``day`` (typically the day after the logs end) is put to
    every policy; each feed's expected GMV is exact. The full system sees the real-time user rows
    the logged stream gives (everything logged before ``day``; the sampled requests are not served
    to anybody, so nothing later reaches it). Policies: ``oracle``, ``full_system`` (served:
    re-ranking and exploration on) and every stage of :data:`STAGES`, ``logged_policy`` (the
    simulator's exploring incumbent that wrote the logs), ``popularity`` (the incumbent without
    noise), ``popularity_logs`` and ``category_affinity`` (from the logged history).

    Returns
    -------
    dict with ``gmv_per_request`` (policy -> expected GMV per request), ``diagnostics``
    (:class:`TruthDiagnostics` as a dict), ``requests`` and ``day``.
    """
    import pandas as pd
    import pyarrow.dataset as ds

    from experiments.policies import HistoryAffinityPolicy, LogHistory, PopularityPolicy
    from experiments.simulator.world import DAY_US

    logs = Path(log_dir)
    length = simulator.config.feed_length
    full = StagedPipelinePolicy.from_pipeline_policy(
        PipelinePolicy.from_bundle(bundle_dir, feed_length=length, candidate_count=candidate_count), simulator)
    start = pd.Timestamp(simulator.config.start_us + day * DAY_US, unit="us", tz="UTC")
    cut = ds.field("ts") < start.to_pydatetime()
    full.observe(ds.dataset(logs / "impressions", format="parquet").to_table(
                     columns=["impression_id", "ts", "user_id", "item_id"], filter=cut).to_pandas(),
                 ds.dataset(logs / "events", format="parquet").to_table(
                     columns=["event_id", "ts", "user_id", "item_id", "type"], filter=cut).to_pandas())
    history = LogHistory.from_logs(logs, before=start)
    requests = simulator.requests_for_day(day, beyond_period=True)
    rng = np.random.default_rng(seed)
    requests = requests.take(np.sort(rng.choice(len(requests), min(n_requests, len(requests)), replace=False)))
    available = simulator.available_items(day)
    gmv: dict[str, float] = {}

    def judge(name: str, feeds: np.ndarray) -> None:
        gmv[name] = float(simulator.expected_outcome(requests, feeds).gmv.sum() / len(requests))

    judge("full_system", full.serve(requests, available, rng))
    for stage in STAGES[:-1]:
        judge(f"stage_{stage}", full.stage(stage).serve(requests, available, rng))
    logged = simulator.logging_policy.serve(len(requests), available, np.random.default_rng(seed + 1))
    judge("logged_policy", logged.served)
    others: dict[str, Any] = {"popularity": PopularityPolicy.from_simulator(simulator),
              "popularity_logs": PopularityPolicy.from_history(history, feed_length=length),
              "category_affinity": HistoryAffinityPolicy.from_history(history, feed_length=length),
              "oracle": OraclePolicy(simulator)}
    for name, policy in others.items():
        judge(name, policy.serve(requests, available, rng))
    return {"gmv_per_request": gmv, "diagnostics": full.diagnostics.to_dict(), "requests": len(requests), "day": day}
