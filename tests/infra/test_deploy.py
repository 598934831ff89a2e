"""The deployment files under infra/deploy/k8s parse, name themselves, and carry a valid feedrank config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.config import load_config

K8S_DIR = Path(__file__).resolve().parents[2] / "infra" / "deploy" / "k8s"
MANIFESTS = sorted(K8S_DIR.glob("*.yaml")) + sorted(K8S_DIR.glob("*.yml"))


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def test_manifests_exist() -> None:
    assert MANIFESTS, f"no manifests under {K8S_DIR}"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_document_is_a_named_object(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path.name} holds no documents"
    for doc in docs:
        assert isinstance(doc, dict), f"{path.name}: a document is not a mapping"
        for key in ("apiVersion", "kind"):
            assert doc.get(key), f"{path.name}: a document lacks {key}"
        name = (doc.get("metadata") or {}).get("name")
        assert name, f"{path.name}: a {doc['kind']} lacks metadata.name"


def test_configmap_holds_a_valid_feedrank_config(tmp_path: Path) -> None:
    maps = [doc for _, doc in _documents()
            if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "feedrank-config"]
    assert len(maps) == 1
    text = maps[0]["data"]["config.yaml"]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(text)
    config = load_config(config_file, env={})  # unknown keys or bad values raise ConfigError

    # every embedded default is switched to its cluster counterpart
    assert config.infra.registry.tracking_uri.startswith("http://mlflow.")
    assert config.features.feast.online_store == "redis"
    assert config.features.feast.redis_connection.startswith("redis.")
    assert config.features.stream.enabled
    assert config.features.stream.bootstrap_servers.startswith("kafka-0.kafka.")
    assert config.features.spark.master.startswith("k8s://")
    assert config.serving.host == "0.0.0.0"
    assert config.serving.metrics_port > 0


def _serving_deployment() -> dict:
    return next(doc for _, doc in _documents()
                if doc.get("kind") == "Deployment" and doc["metadata"]["name"] == "feedrank-serving")


def test_serving_deployment_matches_the_config(tmp_path: Path) -> None:
    cm = next(doc for _, doc in _documents() if doc.get("kind") == "ConfigMap"
              and doc["metadata"]["name"] == "feedrank-config")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(cm["data"]["config.yaml"])
    serving = load_config(config_file, env={}).serving

    pod = _serving_deployment()["spec"]["template"]
    spec = pod["spec"]
    container = spec["containers"][0]
    assert spec["terminationGracePeriodSeconds"] > serving.grace_seconds
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(serving.metrics_port)
    assert container["readinessProbe"]["grpc"]["port"] == serving.port
    assert container["livenessProbe"]["grpc"]["port"] == serving.port
    env_names = {e["name"] for e in container.get("env", [])}
    assert serving.admin_token_env in env_names

    hpa = next(doc for _, doc in _documents() if doc.get("kind") == "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["scaleTargetRef"]["name"] == "feedrank-serving"
