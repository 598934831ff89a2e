"""Shadow replay: recorded requests against a challenger, offline, before it takes traffic.

Each request of the impression log (its user, device, time and feed length, with the items
the champion served in their positions) is ranked again by a challenger pipeline (the serving
code path after request parsing, ``PipelineBase.rank``). Per request: overlap@K of the two feeds
(``|champion top K & challenger top K| / K``), Kendall's tau between the two orders over the
items both served (scipy), the challenger's latency, and its score of its own top item next to
the champion's logged score of its own. The request's excluded items and candidate count are
not logged, so the challenger ranks with the default candidate count and no exclusions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["ShadowReport", "shadow_replay"]


@dataclass(frozen=True)
class ShadowReport:
    """Per-request comparisons (``per_request``) and their summary (``summary``)."""

    per_request: pd.DataFrame
    summary: dict[str, float]


def shadow_replay(impressions: pd.DataFrame, pipeline, *, k: int = 10, candidate_count: int = 500,
                  max_requests: int | None = None, seed: int = 0) -> ShadowReport:
    """Replay the logged requests of ``impressions`` through ``pipeline`` (a serving ``PipelineBase``).

    Parameters
    ----------
    impressions : DataFrame
        The serving impression log: ``request_key``, ``ts``, ``user_id``, ``item_id``, ``position``,
        ``device``, ``score``.
    pipeline : serving.pipeline.PipelineBase
        The challenger (its own impression and feature logs are left as they are configured).
    k : int, default 10
        Overlap cut-off (at most each feed's length).
    candidate_count : int, default 500
    max_requests : int, optional
        A uniform sample of this many requests (seeded by ``seed``).

    Raises
    ------
    ValueError
        When a needed column is missing or the log is empty.
    """
    from scipy.stats import kendalltau

    from serving.metrics import StageTimer
    from serving.requests import FeedRequest

    need = {"request_key", "ts", "user_id", "item_id", "position", "device", "score"}
    missing = need - set(impressions.columns)
    if missing:
        raise ValueError(f"impressions must have columns {sorted(need)}; missing {sorted(missing)}")
    if impressions.empty:
        raise ValueError("impressions holds no rows to replay")
    keys = impressions["request_key"].unique()
    if max_requests is not None and len(keys) > max_requests:
        keys = np.random.default_rng(seed).choice(keys, max_requests, replace=False)
    logged = impressions[impressions["request_key"].isin(keys)].sort_values(["request_key", "position"])
    rows = []
    for key, feed in logged.groupby("request_key", sort=False):
        first = feed.iloc[0]
        ts_us = int(pd.Timestamp(first["ts"]).value // 1000)
        day = ts_us // 86_400_000_000
        length = len(feed)
        request = FeedRequest(request_id=str(key), user_id=int(first["user_id"]), k=length,
                              candidate_count=max(candidate_count, length), exclude_item_ids=np.zeros(0, np.int64),
                              device=first["device"] if isinstance(first["device"], str) else None, country=None,
                              hour=int(ts_us // 3_600_000_000 % 24), day_of_week=int((day + 3) % 7), ts_us=ts_us)
        started = time.perf_counter()
        result = pipeline.rank(request, arm="shadow", timer=StageTimer(), deadline=None)
        latency_ms = (time.perf_counter() - started) * 1000.0
        champion = feed["item_id"].to_numpy(np.int64)
        challenger = np.array([it.item_id for it in result.items], dtype=np.int64)
        cut = min(k, len(champion), len(challenger))
        overlap = len(set(champion[:cut]) & set(challenger[:cut])) / cut if cut else float("nan")
        common = [i for i in champion if i in set(challenger)]
        tau = float("nan")
        if len(common) >= 2:
            pos = {int(i): r for r, i in enumerate(challenger)}
            tau = float(kendalltau(np.arange(len(common)), [pos[int(i)] for i in common]).statistic)
        rows.append({"request_key": key, "items": length, "overlap_at_k": overlap, "kendall_tau": tau,
                     "common_items": len(common), "latency_ms": latency_ms,
                     "champion_top_score": float(feed["score"].iloc[0]),
                     "challenger_top_score": result.items[0].score if result.items else float("nan")})
    per = pd.DataFrame(rows)
    lat = per["latency_ms"].to_numpy()
    summary = {"requests": float(len(per)), f"overlap_at_{k}": float(per["overlap_at_k"].mean()),
               "kendall_tau_mean": float(per["kendall_tau"].mean()),
               "identical_top_share": float((per["overlap_at_k"] == 1.0).mean()),
               "challenger_latency_p50_ms": float(np.percentile(lat, 50)),
               "challenger_latency_p99_ms": float(np.percentile(lat, 99)),
               "top_score_shift_mean": float((per["challenger_top_score"] - per["champion_top_score"]).mean())}
    return ShadowReport(per_request=per, summary=summary)
