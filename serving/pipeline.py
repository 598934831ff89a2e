"""The request pipeline: candidates -> scores -> re-ranking -> exploration -> impression log.

With ``explain`` a request's items also carry their feature contributions (the ``explain``
stage, run only then); a sampled share of requests logs the served items' feature vectors
(:class:`~serving.impression_log.ServedFeatureLog`), which drift and skew monitoring read.

:class:`PipelineBase` owns the stages every arm shares; subclasses say where candidates and
scores come from. :class:`PopularityPipeline` ranks the snapshot's most popular items: it is
the defined behaviour when no model can be loaded at all (DESIGN.md: model missing ->
previous version, and with no version at all, popularity).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from serving.errors import DeadlineExceeded
from serving.exploration import ExplorationConfig, explore
from serving.impression_log import (
    FeatureSample,
    ImpressionBatch,
    ImpressionLog,
    ServedFeatureLog,
    stable_id,
)
from serving.metrics import StageTimer
from serving.requests import FeedRequest
from serving.rerank import Candidates, Reranker
from serving.router import FeedItem, FeedResult, ModelVersions
from serving.snapshot import ItemSnapshot

__all__ = ["Arranged", "PipelineBase", "PopularityPipeline", "Scored"]


@dataclass(frozen=True)
class Scored:
    """Scores of candidate rows (all arrays shape (N,))."""

    rows: np.ndarray
    score: np.ndarray
    p_purchase: np.ndarray
    expected_gmv: np.ndarray
    fallbacks: tuple[str, ...] = ()
    features: np.ndarray | None = None  # the scored feature matrix (N, d), when a model scored
    feature_names: Sequence[str] = ()
    ranker_score: np.ndarray | None = None  # the learnt ranker's own score, where there is one


@dataclass(frozen=True)
class Arranged:
    """Scored candidates placed into a feed: re-ranked, then explored.

    Attributes
    ----------
    candidates : Candidates
        The scored candidates as the re-ranker saw them.
    reranked : ndarray of int
        Indices into the candidates in re-ranked order (before exploration).
    order : ndarray of int
        Indices into the candidates in served order.
    reasons : list of list of str
        Per served slot, the rules (and ``exploration``) that moved the item.
    propensity : ndarray of float
        Per served slot, the exact probability of that item at that slot.
    randomized : bool
    """

    candidates: Candidates
    reranked: np.ndarray
    order: np.ndarray
    reasons: list[list[str]]
    propensity: np.ndarray
    randomized: bool


def _check_deadline(deadline: float | None, stage: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded(f"deadline passed before {stage}")


class PipelineBase(ABC):
    """Shared stages of an arm's pipeline.

    Parameters
    ----------
    snapshot : ItemSnapshot
    reranker : Reranker
    exploration : ExplorationConfig
    versions : ModelVersions
    impression_log : ImpressionLog, optional
    feature_log : ServedFeatureLog, optional
        Receives the served items' feature vectors of the requests it samples.
    """

    def __init__(self, *, snapshot: ItemSnapshot, reranker: Reranker, exploration: ExplorationConfig,
                 versions: ModelVersions, impression_log: ImpressionLog | None = None,
                 feature_log: ServedFeatureLog | None = None) -> None:
        self.snapshot = snapshot
        self.reranker = reranker
        self.exploration = exploration
        self.versions = versions
        self.impression_log = impression_log
        self.feature_log = feature_log
        self.trained_at: datetime | None = None  # when the models were trained (bundle created_at)
        self.data_until: datetime | None = None  # the end of their training data window

    def snapshot_info(self) -> tuple[int, str]:
        return len(self.snapshot), self.snapshot.loaded_at

    @abstractmethod
    def _score(self, request: FeedRequest, timer: StageTimer, deadline: float | None,
               candidates: np.ndarray | None = None) -> Scored:
        """Retrieve candidates for ``request`` and score them (stages ``retrieve``, ``features``, ``score``).

        ``candidates`` are snapshot rows :meth:`retrieve_many` already fetched (no ``retrieve`` stage then).
        """

    def retrieve_many(self, requests: Sequence[FeedRequest]) -> list[np.ndarray | None]:
        """Candidates (snapshot rows) of several requests fetched in one batch, for :meth:`rank`'s
        ``candidates``; None for a request this pipeline leaves to :meth:`rank` (the default: all)."""
        return [None] * len(requests)

    def _purchased(self, request: FeedRequest) -> np.ndarray | None:
        """Items the user already bought (filtered out); None when unknown."""
        return None

    def score(self, request: FeedRequest, *, timer: StageTimer | None = None, deadline: float | None = None,
              candidates: np.ndarray | None = None) -> Scored:
        """Retrieve and score ``request``'s candidates (no re-ranking, nothing logged)."""
        return self._score(request, StageTimer() if timer is None else timer, deadline, candidates)

    def arrange(self, request: FeedRequest, scored: Scored) -> Arranged:
        """Re-rank ``scored`` under the fairness and diversity rules, then apply exploration
        (seeded by the request id, so the same request is always served alike)."""
        snap = self.snapshot
        rows = scored.rows
        cands = Candidates(item_ids=snap.item_ids[rows], scores=scored.score, seller_ids=snap.seller_ids[rows],
                           category_ids=snap.category_ids[rows], is_new_seller=snap.is_new_seller[rows],
                           in_stock=snap.in_stock[rows])
        result = self.reranker.rerank(cands, request.k, purchased=self._purchased(request),
                                      excluded=request.exclude_item_ids)
        rng = np.random.default_rng(stable_id(request.request_id))
        exp = explore(len(result.order), self.exploration, rng)
        reasons = [result.reasons[i] + (["exploration"] if exp.randomized and i != s else [])
                   for s, i in enumerate(exp.order)]
        return Arranged(candidates=cands, reranked=result.order, order=result.order[exp.order], reasons=reasons,
                        propensity=exp.propensity, randomized=exp.randomized)

    def _explain(self, scored: Scored, order: np.ndarray, top: int) -> list | None:
        """Explanations of the candidates ``order`` indexes (``top`` contributions per model); None
        when this pipeline has no model to explain (the items then carry no explanation)."""
        return None

    def rank(self, request: FeedRequest, *, arm: str, timer: StageTimer, deadline: float | None,
             candidates: np.ndarray | None = None) -> FeedResult:
        scored = self._score(request, timer, deadline, candidates)
        _check_deadline(deadline, "re-ranking")
        with timer.stage("rerank"):
            arranged = self.arrange(request, scored)
        cands, order = arranged.candidates, arranged.order
        explanations = None
        if request.explain_top:
            with timer.stage("explain"):
                explanations = self._explain(scored, order, request.explain_top)
        items = [FeedItem(item_id=int(cands.item_ids[i]), score=float(scored.score[i]),
                          p_purchase=float(scored.p_purchase[i]), expected_gmv=float(scored.expected_gmv[i]),
                          seller_id=int(cands.seller_ids[i]), category_id=int(cands.category_ids[i]),
                          reasons=tuple(r), propensity=float(p), is_new_seller=bool(cands.is_new_seller[i]),
                          explanation=None if explanations is None else explanations[s])
                 for s, (i, r, p) in enumerate(zip(order.tolist(), arranged.reasons, arranged.propensity.tolist(),
                                                   strict=True))]
        if self.impression_log is not None and items:
            self.impression_log.log(ImpressionBatch(
                request_key=request.request_id, ts_us=request.ts_us, user_id=request.user_id,
                item_ids=cands.item_ids[order], propensity=arranged.propensity, scores=scored.score[order],
                policy=self.versions.ranker, arm=arm, randomized=arranged.randomized, device=request.device))
        if (self.feature_log is not None and scored.features is not None and len(order)
                and self.feature_log.sampled(request.request_id)):
            self.feature_log.log(FeatureSample(
                request_key=request.request_id, ts_us=request.ts_us, user_id=request.user_id, device=request.device,
                arm=arm, model_version=self.versions.ranker, item_ids=cands.item_ids[order],
                seller_ids=cands.seller_ids[order], features=scored.features[order],
                feature_names=tuple(scored.feature_names)))
        return FeedResult(items=items, randomized=arranged.randomized, fallbacks=scored.fallbacks)


class PopularityPipeline(PipelineBase):
    """Most popular in-stock items; p_purchase and expected GMV are 0 (no purchase model here)."""

    def _score(self, request: FeedRequest, timer: StageTimer, deadline: float | None,
               candidates: np.ndarray | None = None) -> Scored:
        _check_deadline(deadline, "retrieval")
        with timer.stage("retrieve"):
            rows = self.snapshot.popular_rows(request.candidate_count)
        pop = self.snapshot.popularity[rows]
        zeros = np.zeros(len(rows))
        return Scored(rows=rows, score=pop, p_purchase=zeros, expected_gmv=zeros, fallbacks=("popularity",))
