"""How fresh the stored features are: each feature view's materialization and the stream's watermark.

- A feature view's freshness is the end of its latest materialization interval in the Feast
  registry (``feast materialize`` records ``(start, end)``; the online store then holds the rows
  stamped up to ``end``). Push-fed views (the stream's) record no interval: their freshness is
  the stream's watermark.
- The stream consumer's watermark is the latest event time it applied
  (:attr:`features.stream.state.WindowStore.watermark_us`).

Ages are ``now - time`` in seconds; None when a view was never materialized or no state exists.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["materialized_until", "stream_watermark"]


def materialized_until(store: Any) -> dict[str, datetime | None]:
    """The end of each feature view's latest materialization (UTC), by view name; None if never.

    Parameters
    ----------
    store : feast.FeatureStore
    """
    out: dict[str, datetime | None] = {}
    for fv in store.list_feature_views():
        ends = [end for _, end in (fv.materialization_intervals or [])]
        latest = max(ends) if ends else None
        if latest is not None and latest.tzinfo is None:
            latest = latest.replace(tzinfo=UTC)
        out[fv.name] = latest
    return out


def stream_watermark(state_path: str | Path) -> datetime | None:
    """The stream consumer's watermark (UTC) from its state file; None when there is no state yet."""
    from features.stream.state import WindowStore

    path = Path(state_path)
    if not path.is_file():  # do not create a state file where the consumer never ran
        return None
    with WindowStore(path) as state:
        wm = state.watermark_us
    return None if wm is None else datetime.fromtimestamp(wm / 1e6, tz=UTC)
