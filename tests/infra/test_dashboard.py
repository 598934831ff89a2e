"""The Grafana dashboard loads, is provisioned beside Prometheus, and queries only metrics feedrank exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitoring.metrics import MonitorMetrics
from serving.freshness import FreshnessProbe
from serving.metrics import ServingMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "infra" / "deploy"
DASHBOARD = DEPLOY / "grafana" / "feedrank-dashboard.json"
SCHEMA = DEPLOY / "grafana" / "dashboard.schema.json"
_METRIC = re.compile(r"\bfeedrank_[a-z0-9_]+\b")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def _exported(registry: CollectorRegistry) -> set[str]:
    """Every series name ``registry`` exposes (a counter ``x`` as ``x_total``, a histogram with its three)."""
    return {fam.name + suffix for fam in registry.collect() for suffix in _SUFFIXES[fam.type]}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_the_dashboard_is_valid_against_the_schema(dashboard):
    jsonschema.validate(dashboard, json.loads(SCHEMA.read_text()))
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    bad = dict(dashboard, panels=[{"id": 1, "type": "timeseries", "title": "no query", "gridPos": {
        "h": 8, "w": 12, "x": 0, "y": 0}}])
    with pytest.raises(jsonschema.ValidationError):  # the schema does reject a panel without a query
        jsonschema.validate(bad, json.loads(SCHEMA.read_text()))


def test_every_panel_queries_metrics_the_server_or_the_monitor_exports(dashboard):
    serving = ServingMetrics()
    serving.watch_freshness(FreshnessProbe())
    exported = _exported(serving.registry) | _exported(MonitorMetrics().registry)
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            names = set(_METRIC.findall(target["expr"]))
            assert names, f"panel {panel['title']!r}: {target['expr']!r} names no feedrank metric"
            assert names <= exported, f"panel {panel['title']!r} queries {sorted(names - exported)}, not exported"
            queried |= names
    # the list: latency per stage and arm, errors, fallbacks, feeds, freshness, drift, skew
    for must in ("feedrank_stage_latency_ms_bucket", "feedrank_requests_total", "feedrank_fallbacks_total",
                 "feedrank_expected_gmv_total", "feedrank_served_items_total", "feedrank_feed_categories_sum",
                 "feedrank_freshness_age_seconds", "feedrank_feature_drift_psi",
                 "feedrank_feature_skew_mismatch_rate"):
        assert must in queried, must


def test_grafana_is_provisioned_beside_prometheus_with_this_dashboard(dashboard):
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "70-monitoring.yaml").read_text()) if d]
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert ("Deployment", "prometheus") in by_name and ("Deployment", "grafana") in by_name
    datasources = yaml.safe_load(by_name[("ConfigMap", "grafana-provisioning")]["data"]["datasources.yaml"])
    uids = {ds["uid"] for ds in datasources["datasources"]}
    assert {p["datasource"]["uid"] for p in dashboard["panels"] if p["type"] != "row"} <= uids
    scrape = yaml.safe_load(by_name[("ConfigMap", "prometheus-config")]["data"]["prometheus.yml"])
    assert scrape["scrape_configs"][0]["kubernetes_sd_configs"][0]["role"] == "pod"
    volumes = {v["name"]: v for v in by_name[("Deployment", "grafana")]["spec"]["template"]["spec"]["volumes"]}
    generated = volumes["dashboards"]["configMap"]["name"]
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    generators = {g["name"]: g for g in kustomization["configMapGenerator"]}
    assert generators[generated]["files"] == ["grafana/feedrank-dashboard.json"]
    assert sorted(kustomization["resources"]) == sorted(f"k8s/{p.name}" for p in (DEPLOY / "k8s").glob("*.yaml"))
    monitor = by_name[("Deployment", "feedrank-monitor")]["spec"]["template"]
    assert monitor["metadata"]["annotations"]["prometheus.io/port"] == "9101"
