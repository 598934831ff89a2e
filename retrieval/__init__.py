"""Candidate generation: a two-tower model over the event log, FAISS search, cold-start fallbacks.

The light names (configuration, log reading, popularity and history retrievers, evaluation)
import without torch or faiss; the two-tower names load them on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from retrieval.config import (
    IndexConfig,
    RetrievalConfig,
    ServingConfig,
    TrainingConfig,
    TwoTowerConfig,
)
from retrieval.errors import ArtifactError, ModelFitError, RetrievalError
from retrieval.evaluation import (
    EvaluationQueries,
    evaluate_retrievers,
    recall_at_k_score,
    time_split_queries,
)
from retrieval.inputs import ItemCatalog, UserHistory, UserState
from retrieval.logs import EventLog, read_event_log
from retrieval.popularity import SegmentPopularity
from retrieval.retriever import HistoryRetriever, PopularityRetriever, RequestContext, Retriever

__all__ = [
    "ArtifactError",
    "EvaluationQueries",
    "EventLog",
    "FittedTwoTower",
    "HistoryRetriever",
    "IndexConfig",
    "ItemCatalog",
    "ItemIndex",
    "ModelFitError",
    "PopularityRetriever",
    "RequestContext",
    "RetrievalConfig",
    "RetrievalError",
    "Retriever",
    "SegmentPopularity",
    "ServingConfig",
    "TrainingConfig",
    "TwoTowerConfig",
    "TwoTowerModel",
    "TwoTowerRetriever",
    "UserHistory",
    "UserState",
    "ann_recall_score",
    "evaluate_retrievers",
    "load_two_tower",
    "read_event_log",
    "recall_at_k_score",
    "save_two_tower",
    "time_split_queries",
    "train_two_tower",
]

# Names whose modules import torch or faiss: resolved on first attribute access.
_LAZY = {
    "FittedTwoTower": "retrieval.train",
    "train_two_tower": "retrieval.train",
    "TwoTowerModel": "retrieval.model",
    "TwoTowerRetriever": "retrieval.two_tower",
    "ItemIndex": "retrieval.index",
    "ann_recall_score": "retrieval.index",
    "load_two_tower": "retrieval.artifacts",
    "save_two_tower": "retrieval.artifacts",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
