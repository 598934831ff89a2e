"""Fixtures of the infra tests: an embedded MLflow store whose schema is created once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


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
