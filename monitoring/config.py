"""Configuration of the monitoring package (the ``monitoring`` section)."""

from __future__ import annotations

from dataclasses import dataclass, field

from features.config import check

__all__ = ["DriftConfig", "MonitoringConfig", "SkewConfig"]


@dataclass(frozen=True)
class DriftConfig:
    """How drift between a reference and a current sample of one feature is measured and judged.

    Parameters
    ----------
    bins : quantile bins of the reference's finite values (fewer when it has fewer distinct
        values: then each distinct value is its own bin); missing values (NaN) are one more bin.
    psi_warn, psi_alert : population stability index at which a feature is flagged ``warn`` /
        ``alert`` (the credit-scoring convention: < 0.1 stable, 0.1-0.25 moderate, > 0.25 shifted).
    js_warn, js_alert : the same for the Jensen-Shannon distance (base 2, in [0, 1]; Evidently
        flags at 0.1).
    min_rows : fewer rows than this on either side judges nothing (``insufficient``).
    epsilon : share given to a bin empty on one side, so PSI stays finite.

    Thresholds are on effect sizes, not p-values: a test's p-value shrinks with the sample, so at
    serving volumes it flags differences of no consequence; PSI and JS do not grow with ``n``.
    """

    bins: int = 10
    psi_warn: float = 0.1
    psi_alert: float = 0.25
    js_warn: float = 0.1
    js_alert: float = 0.2
    min_rows: int = 200
    epsilon: float = 1e-4

    def __post_init__(self) -> None:
        check(2 <= self.bins <= 1000, "bins", "in [2, 1000]", self.bins)
        check(0 < self.psi_warn <= self.psi_alert, "psi_alert", f">= psi_warn ({self.psi_warn}) > 0", self.psi_alert)
        check(0 < self.js_warn <= self.js_alert <= 1, "js_alert", f"in [js_warn ({self.js_warn}), 1] with js_warn > 0",
              self.js_alert)
        check(self.min_rows >= 1, "min_rows", ">= 1", self.min_rows)
        check(0 < self.epsilon < 0.01, "epsilon", "in (0, 0.01)", self.epsilon)


@dataclass(frozen=True)
class SkewConfig:
    """When a served feature value and its offline recomputation count as different.

    Parameters
    ----------
    rtol, atol : values differ when ``|served - offline| > atol + rtol * |offline|``; a value
        missing (NaN) on exactly one side differs.
    alert_rate : share of differing rows at which a feature is flagged.
    min_rows : fewer compared rows than this judges nothing.
    """

    rtol: float = 1e-4
    atol: float = 1e-6
    alert_rate: float = 0.05
    min_rows: int = 50

    def __post_init__(self) -> None:
        check(self.rtol >= 0, "rtol", ">= 0", self.rtol)
        check(self.atol >= 0, "atol", ">= 0", self.atol)
        check(0 < self.alert_rate < 1, "alert_rate", "in (0, 1)", self.alert_rate)
        check(self.min_rows >= 1, "min_rows", ">= 1", self.min_rows)


@dataclass(frozen=True)
class MonitoringConfig:
    """The ``monitoring`` section.

    Parameters
    ----------
    drift, skew : see :class:`DriftConfig`, :class:`SkewConfig`.
    window_hours : the serving window ``feedrank monitor`` reads by default (the last N hours).
    metrics_port : Prometheus port of ``feedrank monitor watch`` (0: no HTTP endpoint).
    interval_seconds : how often ``feedrank monitor watch`` recomputes.
    """

    drift: DriftConfig = field(default_factory=DriftConfig)
    skew: SkewConfig = field(default_factory=SkewConfig)
    window_hours: float = 24.0
    metrics_port: int = 0
    interval_seconds: float = 300.0

    def __post_init__(self) -> None:
        check(self.window_hours > 0, "window_hours", "> 0", self.window_hours)
        check(0 <= self.metrics_port <= 65535, "metrics_port", "in [0, 65535]", self.metrics_port)
        check(self.interval_seconds > 0, "interval_seconds", "> 0", self.interval_seconds)
