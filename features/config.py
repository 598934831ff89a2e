"""Configuration of the features package, and the small checks every package's config reuses."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["ConfigValueError", "FeaturesConfig", "StreamConfig", "ValidationConfig", "check", "parse_utc"]


class ConfigValueError(ValueError):
    """A configuration value is out of its allowed range; the message starts with the field name."""


def check(condition: bool, name: str, expected: str, value: Any) -> None:
    """Raise :class:`ConfigValueError` ``"<name> must be <expected>, got <value>"`` unless ``condition``."""
    if not condition:
        raise ConfigValueError(f"{name} must be {expected}, got {value!r}")


def parse_utc(value: str, name: str) -> datetime:
    """Parse an ISO-8601 date or datetime as UTC (naive values are taken as UTC)."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (TypeError, ValueError, AttributeError):
        raise ConfigValueError(f"{name} must be an ISO-8601 date or datetime, got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@dataclass(frozen=True)
class ValidationConfig:
    """Bounds the event-log validator applies to every timestamp column.

    Parameters
    ----------
    ts_min, ts_max : str
        ISO-8601 bounds; a timestamp outside ``[ts_min, ts_max)`` is quarantined as out of range.
    """

    ts_min: str = "2000-01-01T00:00:00Z"
    ts_max: str = "2100-01-01T00:00:00Z"

    def __post_init__(self) -> None:
        lo, hi = parse_utc(self.ts_min, "ts_min"), parse_utc(self.ts_max, "ts_max")
        check(lo < hi, "ts_max", f"after ts_min ({self.ts_min})", self.ts_max)

    @property
    def ts_min_us(self) -> int:
        """Lower bound in microseconds since the epoch."""
        return int(parse_utc(self.ts_min, "ts_min").timestamp() * 1_000_000)

    @property
    def ts_max_us(self) -> int:
        """Upper bound (exclusive) in microseconds since the epoch."""
        return int(parse_utc(self.ts_max, "ts_max").timestamp() * 1_000_000)


def _is_host_port(address: str) -> bool:
    host, sep, port = address.strip().rpartition(":")
    return bool(sep) and bool(host) and port.isdigit() and 0 < int(port) < 65536


@dataclass(frozen=True)
class StreamConfig:
    """Kafka topics, the consumer group and the state store of the real-time features.

    The broker address is the only thing that changes between the local broker
    (``make kafka-up``, loopback) and a Kafka cluster.

    Parameters
    ----------
    enabled : bool
        Whether serving publishes its impressions to Kafka. ``feedrank stream run`` and
        ``feedrank stream replay`` work either way.
    bootstrap_servers : str
        Comma-separated ``host:port`` list.
    impressions_topic, events_topic : str
        One topic per contract table; messages are compact JSON rows keyed by user id.
    dead_letter_topic : str
        Where malformed messages go, unchanged, with the reason in the ``feedrank.error`` header.
    partitions : int
        Partitions of each topic when feedrank creates it (an existing topic is left as it is).
    replication_factor : int
        Replication of topics feedrank creates (1 for the local broker).
    group_id : str
        The consumer group: every ``feedrank stream run`` with this id shares the partitions.
    state_path : str
        SQLite file of the window state; empty means ``<infra.data_dir>/stream/state.sqlite``.
        Consumers sharing the online store must share this file (one host) or run as one.
    allowed_lateness_s : float
        How far an event may lag and still count: an event more than ``24 h +
        allowed_lateness_s`` older than the slowest active partition's latest event is dropped
        as late.
    idle_partition_s : float
        A partition without data for this long (wall clock) stops holding lateness back.
    max_future_s : float
        Events more than this ahead of the wall clock are dead-lettered (one bad clock would
        otherwise move the watermark and empty every window).
    max_poll_records : int
        Most records per batch (one state transaction, one push per feature view, one commit).
        A live stream gives smaller batches; a backlog is read in big ones, which push an
        entity touched many times once.
    poll_timeout_ms : int
        How long one poll waits for records (bounds the freshness of a quiet stream).
    session_timeout_ms, heartbeat_interval_ms : int
        Consumer-group liveness; the heartbeat must be shorter than the session timeout.
    retry_backoff_max_s : float
        Longest wait between attempts at a batch whose push, dead-letter write or commit failed.
    linger_ms : int
        Producer batching delay.
    progress_seconds : float
        Interval of the consumer's progress log lines (counts and rates); 0 turns them off.
    """

    enabled: bool = False
    bootstrap_servers: str = "127.0.0.1:9092"
    impressions_topic: str = "feedrank.impressions"
    events_topic: str = "feedrank.events"
    dead_letter_topic: str = "feedrank.dead-letter"
    partitions: int = 4
    replication_factor: int = 1
    group_id: str = "feedrank-stream"
    state_path: str = ""
    allowed_lateness_s: float = 3600.0
    idle_partition_s: float = 60.0
    max_future_s: float = 300.0
    max_poll_records: int = 10000
    poll_timeout_ms: int = 100
    session_timeout_ms: int = 10000
    heartbeat_interval_ms: int = 3000
    retry_backoff_max_s: float = 10.0
    linger_ms: int = 5
    progress_seconds: float = 30.0

    def __post_init__(self) -> None:
        servers = [s for s in self.bootstrap_servers.split(",") if s.strip()]
        check(bool(servers) and all(_is_host_port(s) for s in servers), "bootstrap_servers",
              "a comma-separated list of host:port", self.bootstrap_servers)
        topics = (self.impressions_topic, self.events_topic, self.dead_letter_topic)
        for name in ("impressions_topic", "events_topic", "dead_letter_topic", "group_id"):
            value = getattr(self, name)
            check(bool(value.strip()) and value == value.strip(), name, "a non-empty name without spaces", value)
        check(len(set(topics)) == 3, "dead_letter_topic", "distinct from the impressions and events topics",
              self.dead_letter_topic)
        check(self.partitions >= 1, "partitions", ">= 1", self.partitions)
        check(self.replication_factor >= 1, "replication_factor", ">= 1", self.replication_factor)
        check(self.allowed_lateness_s >= 0, "allowed_lateness_s", ">= 0", self.allowed_lateness_s)
        check(self.idle_partition_s > 0, "idle_partition_s", "> 0", self.idle_partition_s)
        check(self.max_future_s > 0, "max_future_s", "> 0", self.max_future_s)
        check(self.max_poll_records >= 1, "max_poll_records", ">= 1", self.max_poll_records)
        check(self.poll_timeout_ms >= 1, "poll_timeout_ms", ">= 1", self.poll_timeout_ms)
        check(self.session_timeout_ms >= 1000, "session_timeout_ms", ">= 1000", self.session_timeout_ms)
        check(0 < self.heartbeat_interval_ms < self.session_timeout_ms, "heartbeat_interval_ms",
              f"in (0, session_timeout_ms={self.session_timeout_ms})", self.heartbeat_interval_ms)
        check(self.retry_backoff_max_s > 0, "retry_backoff_max_s", "> 0", self.retry_backoff_max_s)
        check(self.linger_ms >= 0, "linger_ms", ">= 0", self.linger_ms)
        check(self.progress_seconds >= 0, "progress_seconds", ">= 0", self.progress_seconds)

    @property
    def servers(self) -> list[str]:
        """``bootstrap_servers`` as a list."""
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    @property
    def source_topics(self) -> tuple[str, str]:
        """The topics the consumer reads: impressions, then events."""
        return (self.impressions_topic, self.events_topic)


@dataclass(frozen=True)
class FeaturesConfig:
    """The ``features`` section of the feedrank configuration."""

    validation: ValidationConfig = field(default_factory=ValidationConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
