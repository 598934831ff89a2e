"""The gRPC feed ranking service: request pipeline, re-ranking, exploration, canary routing, logging."""

from serving.exploration import Exploration, ExplorationConfig, explore
from serving.impression_log import ImpressionBatch, ImpressionLog
from serving.rerank import Candidates, RerankConfig, Reranker, RerankResult
from serving.routing import CHALLENGER, CHAMPION, arm_for

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "Candidates",
    "Exploration",
    "ExplorationConfig",
    "ImpressionBatch",
    "ImpressionLog",
    "RerankConfig",
    "RerankResult",
    "Reranker",
    "arm_for",
    "explore",
]
