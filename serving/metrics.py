"""Prometheus metrics of the serving process (one registry per server, so tests stay isolated)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

__all__ = ["FRESHNESS_METRIC", "ServingMetrics", "StageTimer"]

FRESHNESS_METRIC = "feedrank_freshness_age_seconds"

_BUCKETS_MS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 250, 500, 1000)


class ServingMetrics:
    """Latency per stage and arm, requests by arm and status code, fallbacks by kind."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.stage_latency = Histogram("feedrank_stage_latency_ms", "Latency of one request stage (ms)",
                                       ["stage", "arm"], buckets=_BUCKETS_MS, registry=self.registry)
        self.requests = Counter("feedrank_requests_total", "RankFeed calls by arm and gRPC status code",
                                ["arm", "code"], registry=self.registry)
        self.fallbacks = Counter("feedrank_fallbacks_total", "Requests served through a fallback, by kind",
                                 ["kind"], registry=self.registry)
        self.impressions_dropped = Gauge("feedrank_impression_batches_dropped",
                                         "Impression batches the async log could not take", registry=self.registry)
        self.reloads = Counter("feedrank_reloads_total", "Model reloads by outcome", ["outcome"],
                               registry=self.registry)
        self.served_items = Counter("feedrank_served_items_total", "Items served, by arm and whether the seller is "
                                    "new", ["arm", "new_seller"], registry=self.registry)
        self.feed_categories = Histogram("feedrank_feed_categories", "Distinct categories in one served feed",
                                         ["arm"], buckets=(1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50),
                                         registry=self.registry)
        self.expected_gmv = Counter("feedrank_expected_gmv_total", "Predicted GMV (sum of E[GMV]) of the served "
                                    "items, by arm", ["arm"], registry=self.registry)
        self._freshness: _FreshnessCollector | None = None

    def observe_feed(self, arm: str, items: Sequence[Any]) -> None:
        """Count one served feed's items (``serving.router.FeedItem``): new-seller share, categories, E[GMV]."""
        new = sum(1 for it in items if it.is_new_seller)
        self.served_items.labels(arm=arm, new_seller="true").inc(new)
        self.served_items.labels(arm=arm, new_seller="false").inc(len(items) - new)
        self.feed_categories.labels(arm=arm).observe(len({it.category_id for it in items}))
        self.expected_gmv.labels(arm=arm).inc(sum(it.expected_gmv for it in items))

    def watch_freshness(self, probe: Any) -> None:
        """Export ``probe.ages()`` (a :class:`serving.freshness.FreshnessProbe`) as
        ``feedrank_freshness_age_seconds{source}``, read at each scrape (once per registry)."""
        if self._freshness is None:
            self._freshness = _FreshnessCollector(probe)
            self.registry.register(self._freshness)
        else:
            self._freshness.probe = probe


class _FreshnessCollector:
    """Seconds since each source was brought up to date, computed when Prometheus scrapes."""

    def __init__(self, probe: Any) -> None:
        self.probe = probe

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(FRESHNESS_METRIC, "Seconds since a model, feature view or the stream watermark "
                                                   "was brought up to date", labels=["source"])

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> list[GaugeMetricFamily]:
        family = self._family()
        for source, age in sorted(self.probe.ages().items()):
            family.add_metric([source], age)
        return [family]


class StageTimer:
    """Times the stages of one request; ``stages_ms`` maps stage name to milliseconds."""

    def __init__(self) -> None:
        self.stages_ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages_ms[name] = self.stages_ms.get(name, 0.0) + (time.perf_counter() - start) * 1000.0

    def observe(self, metrics: ServingMetrics, arm: str) -> None:
        for name, ms in self.stages_ms.items():
            metrics.stage_latency.labels(stage=name, arm=arm).observe(ms)
