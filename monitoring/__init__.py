"""Watching the served system: feature drift, training/serving skew, freshness, reports.

Layer: beside ``experiments`` (it reads what ``serving`` logs and recomputes features through
``features``); ``serving`` never imports it. ``infra`` wires it into ``feedrank monitor``.
Statistics are pure functions over arrays and frames; matplotlib is imported only by the report.
"""

from monitoring.config import DriftConfig, MonitoringConfig, SkewConfig
from monitoring.drift import (
    DriftReport,
    FeatureDrift,
    bin_shares,
    feature_drift,
    jensen_shannon_distance,
    population_stability_index,
    reference_bins,
)
from monitoring.skew import FeatureSkew, SkewReport, feature_skew, recompute_offline

__all__ = [
    "DriftConfig",
    "DriftReport",
    "FeatureDrift",
    "FeatureSkew",
    "MonitoringConfig",
    "SkewConfig",
    "SkewReport",
    "bin_shares",
    "feature_drift",
    "feature_skew",
    "jensen_shannon_distance",
    "population_stability_index",
    "recompute_offline",
    "reference_bins",
]
