"""The marketplace simulator: the ground truth the rest of feedrank is judged against."""

from experiments.simulator.behaviour import BehaviourParams
from experiments.simulator.policy import LoggedFeeds, PopularityLoggingPolicy
from experiments.simulator.simulator import (
    ExpectedOutcome,
    MarketplaceSimulator,
    Outcome,
    Requests,
    SimulationReport,
)
from experiments.simulator.summary import LogSummary, summarize_logs
from experiments.simulator.world import World

__all__ = [
    "BehaviourParams",
    "ExpectedOutcome",
    "LogSummary",
    "LoggedFeeds",
    "MarketplaceSimulator",
    "Outcome",
    "PopularityLoggingPolicy",
    "Requests",
    "SimulationReport",
    "World",
    "summarize_logs",
]
