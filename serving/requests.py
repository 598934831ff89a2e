"""Validation of RankFeed requests at the RPC boundary; inner code trusts what comes out."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from serving.config import LimitsConfig
from serving.errors import InvalidArgument

__all__ = ["DEFAULT_EXPLAIN_TOP", "DEVICES", "FeedRequest", "parse_request"]

DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")
_INT64_MAX = 2**63 - 1
DEFAULT_EXPLAIN_TOP = 5  # contributions per model when a request asks to explain without saying how many


@dataclass(frozen=True)
class FeedRequest:
    """A validated feed request.

    ``hour`` and ``day_of_week`` are always filled (from the server clock when the caller
    sends -1); ``device`` and ``country`` are None when unknown. ``explain_top`` is the number
    of feature contributions per model each item carries (0: no explanation asked for).
    """

    request_id: str
    user_id: int
    k: int
    candidate_count: int
    exclude_item_ids: np.ndarray
    device: str | None
    country: str | None
    hour: int
    day_of_week: int
    ts_us: int
    explain_top: int = 0


def parse_request(msg, limits: LimitsConfig, *, now: float | None = None) -> FeedRequest:  # msg: RankFeedRequest
    """Check every field of a ``feedrank.v1.RankFeedRequest``; raise :class:`InvalidArgument` on the first bad one."""
    if not msg.request_id or len(msg.request_id) > limits.max_id_chars:
        raise InvalidArgument("request_id", f"must be 1-{limits.max_id_chars} characters, got {len(msg.request_id)}")
    uid = msg.user_id
    if not uid or len(uid) > 20 or not uid.isascii() or not uid.isdigit() or int(uid) > _INT64_MAX:
        raise InvalidArgument("user_id", "must be a decimal int64 id of 1-20 digits")
    if not 1 <= msg.k <= limits.max_k:
        raise InvalidArgument("k", f"must be in [1, {limits.max_k}], got {msg.k}")
    count = msg.candidate_count or max(limits.default_candidate_count, msg.k)
    if not msg.k <= count <= limits.max_candidates:
        raise InvalidArgument("candidate_count", f"must be in [k={msg.k}, {limits.max_candidates}] or 0 for the "
                                                 f"default, got {msg.candidate_count}")
    if len(msg.exclude_item_ids) > limits.max_excluded:
        raise InvalidArgument("exclude_item_ids", f"at most {limits.max_excluded} ids, got {len(msg.exclude_item_ids)}")
    exclude = np.fromiter(msg.exclude_item_ids, dtype=np.int64, count=len(msg.exclude_item_ids))
    if (exclude < 0).any():
        raise InvalidArgument("exclude_item_ids", "ids must be >= 0")
    ctx = msg.context
    if ctx.device and ctx.device not in DEVICES:
        raise InvalidArgument("context.device", f"must be one of {list(DEVICES)} or empty, got {ctx.device!r}")
    if ctx.country and (len(ctx.country) != 2 or not ctx.country.isalpha()):
        raise InvalidArgument("context.country", f"must be an ISO-3166 alpha-2 code or empty, got {ctx.country!r}")
    has_context = msg.HasField("context")
    hour = ctx.hour if has_context else -1
    dow = ctx.day_of_week if has_context else -1
    if not -1 <= hour <= 23:
        raise InvalidArgument("context.hour", f"must be in [0, 23] or -1 for server time, got {hour}")
    if not -1 <= dow <= 6:
        raise InvalidArgument("context.day_of_week", f"must be in [0, 6] or -1 for server time, got {dow}")
    if not 0 <= msg.explain_top <= limits.max_explain_top:
        raise InvalidArgument("explain_top", f"must be in [0, {limits.max_explain_top}] (0 = {DEFAULT_EXPLAIN_TOP}), "
                                             f"got {msg.explain_top}")
    if msg.explain_top and not msg.explain:
        raise InvalidArgument("explain_top", "is only meaningful with explain = true")
    now = time.time() if now is None else now
    clock = time.gmtime(now)
    return FeedRequest(
        request_id=msg.request_id, user_id=int(uid), k=msg.k, candidate_count=count, exclude_item_ids=exclude,
        device=ctx.device or None, country=ctx.country.upper() or None,
        hour=clock.tm_hour if hour == -1 else hour, day_of_week=clock.tm_wday if dow == -1 else dow,
        ts_us=int(now * 1_000_000), explain_top=(msg.explain_top or DEFAULT_EXPLAIN_TOP) if msg.explain else 0,
    )
