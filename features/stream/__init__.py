"""Live events through Kafka into real-time features (``feedrank stream``).

- :mod:`~features.stream.messages`: the wire format (compact JSON contract rows, keyed by user id);
- :class:`EventPublisher`: publishes impressions and events (serving, the replay tool);
- :class:`StreamProcessor`: the consumer group: validation, dead letters, window state, push, commit;
- :class:`WindowStore`: the window state (SQLite), de-duplicated by row id;
- :mod:`~features.stream.windows`: the real-time features and their batch definition;
- :class:`FeastPushSink` and :func:`rolling_feature_views`: the online store side.
"""

from features.config import StreamConfig
from features.stream.consumer import BatchReport, StreamProcessor, StreamStats
from features.stream.messages import DecodedBatch, decode_messages, encode_rows
from features.stream.producer import EventPublisher, PublishError
from features.stream.sink import DEFAULT_PUSH_SOURCES, FeastPushSink, OnlineSink
from features.stream.state import FeatureUpdate, WindowStore
from features.stream.topics import TopicError, ensure_topics
from features.stream.views import apply_rolling_views, rolling_feature_views
from features.stream.windows import (
    INTRADAY_COLUMNS,
    ITEM_ROLLING,
    USER_ROLLING,
    RollingCount,
    intraday_rows,
    observations,
    rolling_counts,
)

__all__ = [
    "BatchReport",
    "DEFAULT_PUSH_SOURCES",
    "DecodedBatch",
    "EventPublisher",
    "FeastPushSink",
    "FeatureUpdate",
    "INTRADAY_COLUMNS",
    "ITEM_ROLLING",
    "OnlineSink",
    "PublishError",
    "RollingCount",
    "StreamConfig",
    "StreamProcessor",
    "StreamStats",
    "TopicError",
    "USER_ROLLING",
    "WindowStore",
    "apply_rolling_views",
    "decode_messages",
    "encode_rows",
    "ensure_topics",
    "intraday_rows",
    "observations",
    "rolling_counts",
    "rolling_feature_views",
]
