"""Fixtures of the infra tests: an embedded MLflow store whose schema is created once per session,
and one real training run on a small simulated marketplace shared by every test that needs a model."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from serving.bundle import BundleManifest, DataWindow, write_bundle_manifest

# A marketplace and models small enough for one training run of ~2 minutes on 2 cores.
TRAIN_OVERRIDES = {
    "experiments": {"simulator": {"users": 500, "items": 800, "sellers": 40, "categories": 10, "days": 4,
                                  "randomized_share": 0.25, "seed": 3}},
    "features": {"spark": {"master": "local[2]", "shuffle_partitions": 2, "progress_seconds": 0}},
    "retrieval": {"training": {"max_epochs": 2, "batch_size": 512}},
    "ranking": {"ranker": {"num_boost_round": 40, "min_data_in_leaf": 20},
                "purchase": {"num_boost_round": 40, "min_data_in_leaf": 20},
                "propensity": {"min_impressions": 50}},
}  # the purchase label is the default (purchased_7d): on a 4-day log the job falls back to purchased_24h

BUNDLE_FEATURES = ("user_ctr_7d", "item_price", "seller_rating")
BUNDLE_WINDOW = DataWindow("2026-01-05T00:00:00Z", "2026-01-12T00:00:00Z")


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty MLflow SQLite database (creating the schema runs every migration: seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_registered_models()  # model registry tables
    client.search_experiments()  # tracking tables
    return path


@pytest.fixture(scope="module")
def registry_data_dir(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path) -> Path:
    """A data dir whose embedded registry (``<dir>/mlflow/mlflow.db``) is a fresh copy of the template."""
    data_dir = tmp_path_factory.mktemp("data")
    (data_dir / "mlflow").mkdir()
    shutil.copy(mlflow_template_db, data_dir / "mlflow" / "mlflow.db")
    return data_dir


def _make_bundle(root: Path, tag: str) -> Path:
    """A small but complete bundle whose files all contain ``tag``."""
    (root / "retrieval").mkdir(parents=True)
    (root / "retrieval" / "item_vectors.npy").write_text(tag)
    (root / "ranker").mkdir()
    (root / "ranker" / "model.txt").write_text(tag)
    (root / "purchase").mkdir()
    (root / "purchase" / "model.txt").write_text(tag)
    write_bundle_manifest(root, BundleManifest(
        components={"retrieval": "retrieval", "ranker": "ranker/model.txt", "purchase_model": "purchase"},
        feature_list=BUNDLE_FEATURES, data_window=BUNDLE_WINDOW, created_at="2026-01-12T03:00:00Z",
        metrics={"ndcg_at_10": 0.4}, metadata={"tag": tag}))
    return root


@pytest.fixture
def make_bundle() -> Callable[[Path, str], Path]:
    """``make_bundle(folder, tag)`` writes a valid feed bundle whose files contain ``tag``."""
    return _make_bundle


@pytest.fixture
def model_name(request: pytest.FixtureRequest) -> str:
    """A registered-model name of the test's own (tests share one store per module)."""
    return "feed-" + re.sub(r"[^A-Za-z0-9_.\-]", "-", request.node.name)[:100]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """``(config, report, root)``: simulate -> ``run_training`` (real Spark ETL, Feast, two-tower +
    FAISS, LightGBM + Treelite, MLflow), once per session; the registry is ``<root>/data/mlflow``.

    Tests that change that registry's aliases restore them; tests that need a registry of their
    own register ``report.bundle_dir`` elsewhere.
    """
    from experiments.simulator import MarketplaceSimulator
    from infra.config import load_config
    from infra.train import run_training

    root = tmp_path_factory.mktemp("e2e")
    config = load_config(env={}, overrides={**TRAIN_OVERRIDES, "infra": {"data_dir": str(root / "data")}})
    logs = root / "data" / "logs"
    MarketplaceSimulator(config.experiments.simulator).run(logs, progress=False)
    report = run_training(config, logs_dir=logs, run_dir=root / "data" / "train")
    return config, report, root
