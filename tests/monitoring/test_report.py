"""The monitoring report page and the monitor's Prometheus gauges, on small synthetic logs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import feature_drift
from monitoring.metrics import MonitorMetrics
from monitoring.report import MonitorReport, feed_summary, latency_summary, write_report
from monitoring.skew import feature_skew


def _logs(seed: int = 0):
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2026-01-12", tz="UTC") + pd.to_timedelta(np.sort(rng.uniform(0, 7200, 400)), unit="s")
    requests = pd.DataFrame({"request_key": [f"r{i}" for i in range(400)], "ts": ts, "user_id": rng.integers(0, 50, 400),
                             "arm": np.where(np.arange(400) % 4 == 0, "challenger", "champion"),
                             "latency_ms": rng.gamma(4.0, 2.0, 400), "error": np.arange(400) % 50 == 0})
    impressions = pd.DataFrame({"impression_id": np.arange(4000), "request_id": np.repeat(np.arange(400), 10),
                                "item_id": rng.integers(0, 30, 4000), "arm": np.repeat(requests["arm"], 10).to_numpy(),
                                "randomized": np.repeat(np.arange(400) % 10 == 0, 10),
                                "ts": np.repeat(ts, 10)})
    items = pd.DataFrame({"item_id": np.arange(30), "is_new_seller": np.arange(30) < 6, "category_id": np.arange(30) % 5})
    events = pd.DataFrame({"impression_id": [0.0, 0.0, 11.0, np.nan], "type": ["click", "purchase", "click", "click"],
                           "price_paid": [10.0, 10.0, 5.0, 1.0], "quantity": [1, 2, 1, 1]})
    return requests, impressions, items, events


def test_summaries_count_what_the_logs_hold():
    requests, impressions, items, events = _logs()
    lat = latency_summary(requests).set_index("arm")
    assert lat.loc["challenger", "calls"] == 100 and lat.loc["champion", "calls"] == 300
    assert lat["error_rate"].sum() == pytest.approx(4 / 100 + 4 / 300)  # errors at 0, 50, ..., 350
    feeds = feed_summary(impressions, items, events).set_index("arm")
    assert feeds.loc["champion", "feeds"] == 300 and feeds.loc["champion", "impressions"] == 3000
    merged = impressions.merge(items, on="item_id")
    assert feeds.loc["champion", "new_seller_share"] == pytest.approx(
        merged[merged["arm"] == "champion"]["is_new_seller"].mean())
    # impression 0 (request 0: the challenger) was clicked and bought twice at 10; 11 (request 1: the
    # champion) was clicked; the organic click (no impression) counts for nobody
    assert feeds.loc["challenger", "ctr"] == pytest.approx(1 / 1000)
    assert feeds.loc["challenger", "cvr"] == pytest.approx(1 / 1000)
    assert feeds.loc["challenger", "gmv_per_feed"] == pytest.approx(20 / 100)
    assert feeds.loc["champion", "ctr"] == pytest.approx(1 / 3000)
    assert feeds.loc["champion", "cvr"] == 0.0 and feeds.loc["champion", "gmv_per_feed"] == 0.0


def test_the_report_renders_every_section_with_plots(tmp_path):
    requests, impressions, items, events = _logs()
    rng = np.random.default_rng(1)
    ref = pd.DataFrame({"f_a": rng.normal(0, 1, 5000), "f_b": rng.normal(0, 1, 5000)})
    cur = pd.DataFrame({"f_a": rng.normal(1, 1, 500), "f_b": rng.normal(0, 1, 500)})
    drift = feature_drift(ref, cur, reference_name="training", current_name="serving")
    served = cur.assign(request_key=np.repeat(np.arange(50), 10))
    skew = feature_skew(served, cur.assign(f_b=np.where(np.arange(500) < 100, np.nan, cur["f_b"])))
    page = write_report(MonitorReport(title="t", window="w", requests=requests, impressions=impressions, items=items,
                                      events=events, drift=drift, skew=skew,
                                      freshness={"feature_view:user_snapshot": 7200.0}), tmp_path)
    text = page.read_text()
    for section in ("Latency and errors per arm", "Served feeds per arm", "Freshness", "Drift", "skew"):
        assert section in text
    assert "Alerts: f_a" in text and "f_b" in skew.flagged()
    for png in ("latency.png", "drift.png", "skew.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG" and png in text
    assert "<img src=\"drift.png\"" in (tmp_path / "report.html").read_text()
    assert (tmp_path / "monitor.json").exists()

    metrics = MonitorMetrics()
    metrics.publish_drift(drift)
    metrics.publish_skew(skew)
    get = metrics.registry.get_sample_value
    assert get("feedrank_feature_drift_level", {"feature": "f_a", "reference": "training"}) == 2
    assert get("feedrank_feature_drift_psi", {"feature": "f_b", "reference": "training"}) < 0.1
    assert get("feedrank_feature_skew_mismatch_rate", {"feature": "f_b"}) == pytest.approx(0.2)
    assert "feedrank_feature_drift_psi" in metrics.write(tmp_path / "monitor.prom").read_text()


def test_a_window_without_logs_says_so(tmp_path):
    text = write_report(MonitorReport(title="t", window="w"), tmp_path).read_text()
    assert "No request log in this window." in text and "No impression log in this window." in text
