"""A damaged model never takes serving down: refused at registration, rejected at reload, skipped at start.

Three damaged copies of the session's trained bundle, each a failure seen in the field: the
LightGBM ranker cut to 3,000 bytes (LightGBM ends the process with SIGABRT on it), a compiled
ranker library with garbage in its middle, and a calibrator that is not an ``.npz``. Real
registry, real gRPC server, real child processes.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import grpc
import pytest

from infra.config import load_config
from infra.registry import FeedRegistry
from infra.rollout import RolloutController
from infra.serve import build_router, data_path
from serving.bundle import BundleError
from serving.bundle_check import BundleCheckError
from serving.client import FeedClient
from serving.metrics import ServingMetrics
from serving.server import create_server, stop_gracefully
from tests.infra.conftest import TRAIN_OVERRIDES


def _damage(bundle: Path, kind: str) -> None:
    ranking = bundle / "ranking"
    if kind == "truncated-ranker":
        (ranking / "ranker.txt").write_bytes((ranking / "ranker.txt").read_bytes()[:3000])
    elif kind == "corrupt-library":
        data = bytearray((ranking / "ranker.so").read_bytes())
        mid = len(data) // 2
        data[mid:mid + 4096] = bytes(range(256)) * 16
        (ranking / "ranker.so").write_bytes(bytes(data))
    elif kind == "corrupt-calibrator":
        (ranking / "calibrator.npz").write_bytes(b"not an npz file" * 10)
    else:
        raise ValueError(kind)


KINDS = {"truncated-ranker": "ranker.txt", "corrupt-library": "ranker.so", "corrupt-calibrator": "calibrator"}


@pytest.fixture(scope="module")
def market(trained, tmp_path_factory, mlflow_template_db):
    """A registry of its own: the trained bundle as champion, and the damaged copies forced in."""
    _, report, _ = trained
    root = tmp_path_factory.mktemp("bad-bundles")
    data = root / "data"
    (data / "mlflow").mkdir(parents=True)
    shutil.copy(mlflow_template_db, data / "mlflow" / "mlflow.db")
    config = load_config(env={}, overrides={**TRAIN_OVERRIDES, "infra": {"data_dir": str(data)}})
    registry = FeedRegistry(config.infra.registry, data_dir=data)
    controller = RolloutController(config.infra.rollout, registry, data_dir=data)
    good = shutil.copytree(report.bundle_dir, root / "good")
    champion = registry.register_bundle(good, check=False).version  # serving checks it in any case
    controller.start(initial=True)
    bad = {}
    for kind in KINDS:
        bad[kind] = shutil.copytree(report.bundle_dir, root / kind)
        _damage(bad[kind], kind)
    return config, registry, controller, champion, bad


def test_damaged_bundles_are_refused_at_registration_with_the_reason(market):
    _, registry, _, champion, bad = market
    for kind, component in KINDS.items():
        with pytest.raises(BundleCheckError, match=component) as err:
            registry.register_bundle(bad[kind])
        print(f"\n{kind}: refused: {str(err.value)[:160]}")
    assert registry.aliases() == {"champion": champion}  # nothing was registered


def test_a_file_changed_after_registration_is_refused_before_loading(market, tmp_path):
    _, registry, _, champion, _ = market
    source = Path(registry.version(champion).source.removeprefix("file://"))
    library = source / "ranking" / "ranker.so"
    original = library.read_bytes()
    try:
        library.write_bytes(original[:-64] + bytes(64))  # swapped in the artifact store after registration
        with pytest.raises(BundleError, match=r"ranking/ranker.so .* has SHA-256 .* registered"):
            registry.download_bundle(champion, tmp_path / "dl")
    finally:
        library.write_bytes(original)


def test_forced_bad_challengers_are_rejected_under_load_and_rolled_back(market):
    config, registry, controller, champion, bad = market
    versions = {kind: registry.register_bundle(path, check=False).version for kind, path in bad.items()}
    metrics = ServingMetrics()
    router = build_router(config)
    server, port = create_server(config.serving, router, address="127.0.0.1:0", metrics=metrics)
    served, failed = [], []
    stop = threading.Event()

    def load() -> None:  # light load: one client calling back to back, the users of both arms
        with FeedClient(f"127.0.0.1:{port}", timeout=10.0) as client:
            i = 0
            while not stop.is_set():
                try:
                    served.append(client.rank(str(1 + i % 40), k=5).model_versions.ranker)
                except grpc.RpcError as exc:
                    failed.append(exc.code())
                i += 1

    thread = threading.Thread(target=load)
    thread.start()
    try:
        with FeedClient(f"127.0.0.1:{port}", timeout=300.0) as admin:
            for kind, version in versions.items():
                controller.start(challenger_version=version, skip_gate_reason="test: forced bad bundle")
                with pytest.raises(grpc.RpcError) as err:
                    admin.reload()
                assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert f"challenger version {version} refused" in err.value.details()
                state = controller.status()
                assert state.status == "rolled_back", kind
                assert f"challenger version {version} cannot be loaded by serving" in state.history[-2].reason
                assert KINDS[kind] in state.history[-2].reason, state.history[-2].reason
                assert registry.version(version).tags["feedrank.status"] == "rejected"
    finally:
        stop.set()
        thread.join()
        stop_gracefully(server, 1.0)
    assert failed == [] and len(served) > 0
    assert set(served) == {champion}
    print(f"\nthree bad challengers under load: {len(served)} calls answered by champion {champion}, "
          f"{len(failed)} failed; reloads_total{{outcome=failed}} = {len(versions)}")
    assert metrics.registry.get_sample_value("feedrank_reloads_total", {"outcome": "failed"}) == len(versions)

    # a fresh start while the rollout state names a bad challenger: the champion serves
    version = versions["truncated-ranker"]
    controller.start(challenger_version=version, skip_gate_reason="test: restart with a bad challenger")
    assert controller.status().status == "canary"
    fresh = build_router(config)
    assert fresh.state.champion.versions.ranker == champion and fresh.state.challenger is None
    assert any("SIGABRT" in f or "ranker.txt" in f for f in fresh.state.failures), fresh.state.failures
    assert controller.status().status == "rolled_back"
    assert not list(data_path(config, "serving/bundles").glob(f"v{version}/.feedrank-checked"))
