"""Fixtures of the experiments tests: a simulated A/B of popularity against the full system.

The full system is what ``feedrank train`` builds (Spark ETL, Feast, two-tower + FAISS,
LightGBM + calibration, serving snapshots) from the contract logs written before the
experiment starts, served through the serving request path (``PipelinePolicy`` over
``ModelPipeline``). Everything is kept tiny -- 1,500 users, 2 + 2 days, short training -- because
the batch job's fixed costs (Spark stages, Feast) dominate; the job stops before its
evaluation step (the gate is infra's to test; here the A/B judges the bundle).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from experiments.ab_readout import analyze_experiment, load_experiment
from experiments.ab_simulation import ABSimulationConfig, run_ab_simulation
from experiments.config import SimulatorConfig
from experiments.policies import (
    HistoryAffinityPolicy,
    LogHistory,
    OraclePolicy,
    PipelinePolicy,
    PopularityPolicy,
)
from experiments.simulator import MarketplaceSimulator
from experiments.truth import StagedPipelinePolicy

# The pre-period is served by the simulator's exploring incumbent; a tenth of its requests are
# randomized, so that two days hold enough randomized traffic to estimate position bias.
FULL_SYSTEM_SIM = SimulatorConfig(users=1200, items=600, sellers=30, categories=10, days=6, seed=21,
                                  randomized_share=0.1)
FULL_SYSTEM_DESIGN = ABSimulationConfig(pre_days=4, experiment_days=2, salt="test-full-system-1")


class _StopBeforeEvaluation(Exception):
    """Raised from ``run_training``'s ``on_step`` hook: the bundle is complete after ``snapshots``."""


def _stop_before_evaluation(step: str) -> None:
    if step == "evaluate":
        raise _StopBeforeEvaluation


@pytest.fixture(scope="session")
def full_system_ab(tmp_path_factory: pytest.TempPathFactory, spark) -> dict:
    """Popularity (control) against a bundle trained on the pre-period's logs (treatment).

    Returns a dict: ``sim``, ``result`` (ABSimulationResult), ``data``, ``readout``, ``history``
    (what the factory saw), ``policy`` (the PipelinePolicy), ``bundle_dir``, ``train_seconds``.
    """
    from infra.config import load_config
    from infra.train import run_training

    root = tmp_path_factory.mktemp("full-system")
    sim = MarketplaceSimulator(FULL_SYSTEM_SIM)
    built: dict = {}

    def factory(history: LogHistory) -> PipelinePolicy:
        started = time.perf_counter()
        logs = history.export_logs(root / "pre-period-logs")
        config = load_config(env={}, overrides={
            "features": {"spark": {"master": "local[2]", "shuffle_partitions": 2, "progress_seconds": 0}},
            "retrieval": {"training": {"max_epochs": 2, "batch_size": 512}},
            "ranking": {"ranker": {"num_boost_round": 30, "min_data_in_leaf": 20},
                        "purchase": {"num_boost_round": 30, "min_data_in_leaf": 20},
                        "propensity": {"min_impressions": 50}, "purchase_label": "purchased_24h"},
            "infra": {"data_dir": str(root / "data")},
        })
        with pytest.raises(_StopBeforeEvaluation):
            run_training(config, logs_dir=logs, run_dir=root / "train", register=False,
                         on_step=_stop_before_evaluation)
        bundle = root / "train" / "bundle"
        policy = StagedPipelinePolicy.from_pipeline_policy(
            PipelinePolicy.from_bundle(bundle, version="full-system-v1", feed_length=FULL_SYSTEM_SIM.feed_length,
                                       candidate_count=100), sim)
        built.update(history=history, policy=policy, bundle_dir=bundle, train_seconds=time.perf_counter() - started)
        return policy

    arms = {"oracle": OraclePolicy(sim),
            "category_affinity": lambda h: HistoryAffinityPolicy.from_history(h, feed_length=FULL_SYSTEM_SIM.feed_length),
            "stage_retrieval_ceiling": lambda h: built["policy"].stage("retrieval_ceiling"),
            "stage_model": lambda h: built["policy"].stage("model")}
    result = run_ab_simulation(sim, PopularityPolicy.from_simulator(sim), factory, root / "ab",
                               config=FULL_SYSTEM_DESIGN, arms=arms, progress=False)
    data = load_experiment(result.log_dir)
    return {"sim": sim, "result": result, "data": data, "readout": analyze_experiment(data), **built}


@pytest.fixture(scope="session")
def full_system_bundle(full_system_ab: dict) -> Path:
    """The bundle of ``full_system_ab`` (read-only)."""
    return full_system_ab["bundle_dir"]
