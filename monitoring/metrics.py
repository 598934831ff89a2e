"""Prometheus gauges of drift and skew (``feedrank monitor``; the serving process exports the rest).

One registry per :class:`MonitorMetrics`, as serving's. ``feedrank monitor watch`` serves it on
``monitoring.metrics_port``; ``feedrank monitor drift|skew --prom FILE`` writes it in the text
format (for node_exporter's textfile collector or a Pushgateway).
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from monitoring.drift import LEVELS, DriftReport
from monitoring.skew import SkewReport

__all__ = ["MonitorMetrics"]


class MonitorMetrics:
    """Drift per feature and window, skew per feature, and the rows each judgement rests on."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.drift_psi = Gauge("feedrank_feature_drift_psi", "Population stability index of a feature, "
                               "current window against the reference", ["feature", "reference"],
                               registry=self.registry)
        self.drift_js = Gauge("feedrank_feature_drift_js", "Jensen-Shannon distance (base 2) of a feature, "
                              "current window against the reference", ["feature", "reference"], registry=self.registry)
        self.drift_level = Gauge("feedrank_feature_drift_level", "Drift level: 0 ok, 1 warn, 2 alert, "
                                 "-1 too few rows", ["feature", "reference"], registry=self.registry)
        self.skew_mismatch = Gauge("feedrank_feature_skew_mismatch_rate", "Share of sampled served rows whose value "
                                   "differs from the offline recomputation", ["feature"], registry=self.registry)
        self.skew_mean_abs_diff = Gauge("feedrank_feature_skew_mean_abs_diff", "Mean |served - offline| where both "
                                        "are present", ["feature"], registry=self.registry)
        self.rows = Gauge("feedrank_monitor_rows", "Rows the latest judgement rests on", ["kind"],
                          registry=self.registry)

    def publish_drift(self, report: DriftReport) -> None:
        """Set the drift gauges from ``report`` (labelled with its reference's name)."""
        codes = {"ok": 0, "warn": 1, "alert": 2, "insufficient": -1}
        assert set(codes) == set(LEVELS)
        for f in report.features:
            self.drift_psi.labels(feature=f.feature, reference=report.reference).set(f.psi)
            self.drift_js.labels(feature=f.feature, reference=report.reference).set(f.js)
            self.drift_level.labels(feature=f.feature, reference=report.reference).set(codes[f.level])
        if report.features:
            self.rows.labels(kind="drift_current").set(report.features[0].rows_current)
            self.rows.labels(kind="drift_reference").set(report.features[0].rows_reference)

    def publish_skew(self, report: SkewReport) -> None:
        """Set the skew gauges from ``report``."""
        for f in report.features:
            self.skew_mismatch.labels(feature=f.feature).set(f.mismatch_rate)
            self.skew_mean_abs_diff.labels(feature=f.feature).set(f.mean_abs_diff)
        self.rows.labels(kind="skew_requests").set(report.requests)

    def write(self, path: str | Path) -> Path:
        """The registry in Prometheus' text format, written atomically to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), self.registry)
        return path
