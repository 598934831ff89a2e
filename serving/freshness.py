"""Freshness of what a serving process serves: its models, the feature views, the stream watermark.

:class:`FreshnessProbe` answers ``ages()``: seconds since each source was last brought up to
date, keyed ``"<kind>:<name>"``:

- ``model_trained:<arm>``: since the arm's bundle was written (``bundle.json`` ``created_at``);
- ``model_data:<arm>``: since the end of the arm's training data window;
- ``feature_view:<view>``: since the end of the view's latest materialization (Feast registry);
- ``stream_watermark``: since the latest event time the stream consumer applied.

The serving process exports them as the gauge ``feedrank_freshness_age_seconds{source}``
(read at scrape time) and in the admin ``Status`` call (``age_seconds``). A source that cannot be
read (no feature store configured, no stream state yet, a registry read failing) is left out
and logged, never fatal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["FreshnessProbe"]

logger = logging.getLogger(__name__)


class FreshnessProbe:
    """Ages of the models a router serves and of the feature sources they read.

    Parameters
    ----------
    router : serving.router.Router, optional
        Its arms' models are aged (a serving process).
    bundles : mapping of str to serving.bundle.BundleManifest, optional
        Models aged by name without a router (``feedrank monitor freshness``).
    store : feast.FeatureStore, optional
        The feature store whose views' materializations count.
    stream_state : path, optional
        The stream consumer's state file.
    clock : callable, default time.time
        Seconds since the epoch (tests pass a fixed clock).
    """

    def __init__(self, router: Any = None, *, bundles: Mapping[str, Any] | None = None, store: Any = None,
                 stream_state: str | Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self.router = router
        self.bundles = dict(bundles or {})
        self.store = store
        self.stream_state = Path(stream_state) if stream_state else None
        self.clock = clock

    def times(self) -> dict[str, datetime]:
        """When each source was last brought up to date (UTC)."""
        out: dict[str, datetime] = {}
        if self.router is not None:
            state = self.router.state
            for arm, pipeline in (("champion", state.champion), ("challenger", state.challenger)):
                for kind, attr in (("model_trained", "trained_at"), ("model_data", "data_until")):
                    when = getattr(pipeline, attr, None) if pipeline is not None else None
                    if when is not None:
                        out[f"{kind}:{arm}"] = when
        for name, manifest in self.bundles.items():
            out[f"model_trained:{name}"], out[f"model_data:{name}"] = manifest.times()
        if self.store is not None:
            from features.freshness import materialized_until

            try:
                for view, when in materialized_until(self.store).items():
                    if when is not None:
                        out[f"feature_view:{view}"] = when
            except Exception:  # noqa: BLE001 - a registry read failing must not fail a scrape or Status
                logger.warning("could not read the feature views' materializations", exc_info=True)
        if self.stream_state is not None:
            from features.freshness import stream_watermark

            try:
                wm = stream_watermark(self.stream_state)
            except Exception:  # noqa: BLE001 - as above
                logger.warning("could not read the stream watermark from %s", self.stream_state, exc_info=True)
                wm = None
            if wm is not None:
                out["stream_watermark"] = wm
        return out

    def ages(self) -> dict[str, float]:
        """Seconds since each source of :meth:`times`, at ``clock()``."""
        now = self.clock()
        return {name: now - when.timestamp() for name, when in self.times().items()}
