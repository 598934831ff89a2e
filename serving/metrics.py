"""Prometheus metrics of the serving process (one registry per server, so tests stay isolated)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServingMetrics", "StageTimer"]

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
