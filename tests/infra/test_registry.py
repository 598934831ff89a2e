"""The MLflow registry of feed bundles, against a real embedded registry (SQLite + local artifacts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.registry import (
    AliasNotFoundError,
    FeedRegistry,
    NothingToRollBackError,
    embedded_artifact_root,
    embedded_tracking_uri,
)
from infra.release_config import RegistryConfig
from serving.bundle import (
    BundleError,
    DataWindow,
    read_bundle_manifest,
)

FEATURES = ("user_ctr_7d", "item_price", "seller_rating")
WINDOW = DataWindow("2026-01-05T00:00:00Z", "2026-01-12T00:00:00Z")


@pytest.fixture
def registry(registry_data_dir: Path, model_name: str) -> FeedRegistry:
    """The module's embedded registry, with a registered-model name of the test's own."""
    return FeedRegistry(RegistryConfig(model_name=model_name), data_dir=registry_data_dir)


def test_embedded_store_lives_under_the_data_dir(tmp_path: Path) -> None:
    reg = FeedRegistry(RegistryConfig(), data_dir=tmp_path)
    assert reg.embedded
    assert reg.tracking_uri == embedded_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    assert reg.artifact_location == embedded_artifact_root(tmp_path) == (tmp_path / "mlflow/artifacts").resolve().as_uri()
    server = FeedRegistry(RegistryConfig(tracking_uri="http://mlflow.internal:5000"), data_dir=tmp_path)
    assert not server.embedded and server.tracking_uri == "http://mlflow.internal:5000"
    assert server.artifact_location is None  # the server's own default root
    assert not (tmp_path / "mlflow").exists()  # constructors do no I/O


def test_register_two_versions_moves_aliases_and_downloads_by_alias(registry: FeedRegistry, tmp_path: Path, make_bundle) -> None:
    v1 = registry.register_bundle(make_bundle(tmp_path / "b1", "one"), metrics={"auc": 0.71}, check=False)
    assert registry.aliases() == {"challenger": v1.version}
    assert v1.metrics == {"ndcg_at_10": 0.4, "auc": 0.71}
    assert v1.data_window == WINDOW and v1.feature_list == FEATURES
    assert v1.git_commit and v1.tags["bundle.components"] == "purchase_model,ranker,retrieval"

    registry.promote(v1.version, reason="first model")
    assert registry.aliases() == {"champion": v1.version}  # promotion takes the challenger alias off

    v2 = registry.register_bundle(make_bundle(tmp_path / "b2", "two"), check=False)
    assert int(v2.version) == int(v1.version) + 1
    assert registry.aliases() == {"champion": v1.version, "challenger": v2.version}

    ch = registry.download_bundle("challenger", tmp_path / "dl" / "challenger")
    cp = registry.download_bundle("champion", tmp_path / "dl" / "champion")
    manifest = read_bundle_manifest(ch)
    assert manifest.component_path(ch, "ranker").read_text() == "two"
    assert (cp / "ranker" / "model.txt").read_text() == "one"
    assert registry.download_bundle(v2.version, tmp_path / "dl" / "challenger") == ch  # cached, same version

    registry.promote(v2.version, reason="canary passed")
    assert registry.aliases() == {"champion": v2.version, "previous-champion": v1.version}
    assert registry.version(v1.version).tags["feedrank.status"] == "retired"

    restored = registry.rollback(reason="regression found after promotion")
    assert restored == v1.version
    assert registry.aliases() == {"champion": v1.version}
    assert registry.version(v2.version).tags["feedrank.status"] == "rolled_back"
    assert registry.version(v2.version).tags["feedrank.rollback_reason"] == "regression found after promotion"
    with pytest.raises(NothingToRollBackError, match="no recorded previous champion"):
        registry.rollback(reason="again")


def test_replicas_downloading_one_version_at_once_keep_the_first_copy(
        registry: FeedRegistry, tmp_path: Path, make_bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two serving processes sharing a bundle cache fetch a new challenger at the same moment."""
    import mlflow.artifacts

    version = registry.register_bundle(make_bundle(tmp_path / "b1", "one"), check=False).version
    dst = tmp_path / "cache" / f"v{version}"
    other = FeedRegistry(registry.config, data_dir=registry.data_dir)
    real = mlflow.artifacts.download_artifacts
    seen: dict[str, int] = {}

    def slower(**kwargs):  # timing injection: the other replica completes its download during ours
        monkeypatch.setattr(mlflow.artifacts, "download_artifacts", real)
        other.download_bundle(version, dst)
        seen["inode"] = (dst / "bundle.json").stat().st_ino  # the other replica is loading these files
        return real(**kwargs)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", slower)
    assert registry.download_bundle(version, dst) == dst
    assert (dst / "bundle.json").stat().st_ino == seen["inode"]  # not removed from under the other loader
    assert read_bundle_manifest(dst).metadata["tag"] == "one"
    assert [p.name for p in dst.parent.iterdir()] == [dst.name]  # no temporary folder left


def test_promote_and_rollback_are_idempotent(registry: FeedRegistry, tmp_path: Path, make_bundle) -> None:
    v1 = registry.register_bundle(make_bundle(tmp_path / "b1", "one"), check=False).version
    registry.promote(v1, reason="first")
    v2 = registry.register_bundle(make_bundle(tmp_path / "b2", "two"), check=False).version
    registry.promote(v2, reason="canary passed")
    registry.promote(v2, reason="repeated after a crash")
    assert registry.aliases() == {"champion": v2, "previous-champion": v1}
    assert registry.rollback(reason="x", to_version=v1) == v1
    assert registry.rollback(reason="repeated", to_version=v1) == v1
    assert registry.aliases() == {"champion": v1}


def test_reject_takes_the_challenger_alias_only(registry: FeedRegistry, tmp_path: Path, make_bundle) -> None:
    v1 = registry.register_bundle(make_bundle(tmp_path / "b1", "one"), check=False).version
    registry.promote(v1, reason="first")
    v2 = registry.register_bundle(make_bundle(tmp_path / "b2", "two"), check=False).version
    registry.reject(v2, reason="p95 latency +40%")
    assert registry.aliases() == {"champion": v1}
    assert registry.version(v2).tags["feedrank.rejection_reason"] == "p95 latency +40%"
    with pytest.raises(AliasNotFoundError, match="challenger"):
        registry.download_bundle("challenger", tmp_path / "nope")


def test_runs_log_params_metrics_window_features_commit_and_plots(registry: FeedRegistry) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with registry.start_run("train", params={"num_leaves": 31}, data_window=WINDOW, feature_list=FEATURES) as run:
        run.log_metrics({"ndcg_at_10": 0.42})
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        run.log_plot(fig, "calibration.png")
        plt.close(fig)
    client = registry._client  # noqa: SLF001
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.params["num_leaves"] == "31"
    assert logged.data.params["data_window_start"] == WINDOW.start
    assert logged.data.params["feature_count"] == "3"
    assert logged.data.metrics["ndcg_at_10"] == pytest.approx(0.42)
    assert logged.data.tags["git_commit"] == logged.data.tags["mlflow.source.git.commit"] != ""
    files = {f.path for f in client.list_artifacts(run.run_id)} | {
        f.path for f in client.list_artifacts(run.run_id, "plots")}
    assert {"feature_list.json", "plots/calibration.png"} <= files

    with pytest.raises(RuntimeError, match="boom"):
        with registry.start_run("broken", params={}, data_window=WINDOW, feature_list=FEATURES) as failed:
            raise RuntimeError("boom")
    assert client.get_run(failed.run_id).info.status == "FAILED"


def _manifest_dict() -> dict:
    return {"format_version": 1, "components": {"retrieval": "r", "ranker": "k", "purchase_model": "p"},
            "feature_list": ["a", "b"], "data_window": {"start": "2026-01-01", "end": "2026-01-08"},
            "created_at": "2026-01-08T00:00:00Z"}


@pytest.mark.parametrize(("change", "message"), [
    ({"components": {"retrieval": "r", "ranker": "k"}}, "missing \\['purchase_model'\\]"),
    ({"components": {"retrieval": "/abs", "ranker": "k", "purchase_model": "p"}}, "relative path"),
    ({"components": {"retrieval": "../up", "ranker": "k", "purchase_model": "p"}}, "relative path"),
    ({"feature_list": ["a", "a"]}, "must not repeat"),
    ({"feature_list": []}, "non-empty"),
    ({"data_window": {"start": "2026-01-08", "end": "2026-01-01"}}, "data_window.end must be after"),
    ({"format_version": 2}, "format_version must be 1"),
    ({"surprise": 1}, "unknown keys \\['surprise'\\]"),
    ({"metrics": {"auc": "high"}}, "metrics\\['auc'\\] must be a finite number"),
])
def test_invalid_manifests_name_the_field(tmp_path: Path, change: dict, message: str) -> None:
    for name in ("r", "k", "p"):
        (tmp_path / name).write_text("x")
    (tmp_path / "bundle.json").write_text(json.dumps({**_manifest_dict(), **change}))
    with pytest.raises(BundleError, match=message):
        read_bundle_manifest(tmp_path)


def test_a_component_file_must_exist(tmp_path: Path) -> None:
    (tmp_path / "r").write_text("x")
    (tmp_path / "k").write_text("x")
    (tmp_path / "bundle.json").write_text(json.dumps(_manifest_dict()))
    with pytest.raises(BundleError, match="components\\['purchase_model'\\] = 'p' does not exist"):
        read_bundle_manifest(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="bundle.json not found"):
        read_bundle_manifest(tmp_path / "empty")
