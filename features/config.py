"""Configuration of the features package, and the small checks every package's config reuses."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ChecksConfig",
    "ConfigValueError",
    "EtlConfig",
    "FeastConfig",
    "FeaturesConfig",
    "SparkConfig",
    "StreamConfig",
    "ValidationConfig",
    "check",
    "parse_utc",
]


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


@dataclass(frozen=True)
class SparkConfig:
    """How the ETL's SparkSession is built (ignored under ``spark-submit``, where the submitter decides).

    Parameters
    ----------
    master : str
        ``local[*]`` by default; ``spark-submit --master ...`` overrides it.
    driver_memory : str
        JVM heap of the driver (in local mode the driver also runs the tasks), e.g. ``"4g"``.
    shuffle_partitions : int
        ``spark.sql.shuffle.partitions``: keep it small on a laptop (2 to 4 per core).
    broadcast_threshold_mb : int
        ``spark.sql.autoBroadcastJoinThreshold`` in MiB: a join side up to this size (the item
        table validation joins to impressions and events) is broadcast instead of shuffled.
    arrow_batch_rows : int
        Rows per Arrow batch handed to the Python workers that assemble the training rows.
    progress_seconds : float
        Interval of the progress log lines (stage, tasks done, rows/s); 0 turns them off.
    """

    master: str = "local[*]"
    driver_memory: str = "4g"
    shuffle_partitions: int = 8
    broadcast_threshold_mb: int = 64
    arrow_batch_rows: int = 20000
    progress_seconds: float = 30.0

    def __post_init__(self) -> None:
        check(bool(self.master.strip()), "master", "a Spark master URL such as local[*]", self.master)
        check(_is_memory(self.driver_memory), "driver_memory", "a JVM size such as 4g or 512m", self.driver_memory)
        check(self.shuffle_partitions >= 1, "shuffle_partitions", ">= 1", self.shuffle_partitions)
        check(self.broadcast_threshold_mb >= 0, "broadcast_threshold_mb", ">= 0", self.broadcast_threshold_mb)
        check(self.arrow_batch_rows >= 100, "arrow_batch_rows", ">= 100", self.arrow_batch_rows)
        check(self.progress_seconds >= 0, "progress_seconds", ">= 0", self.progress_seconds)


def _is_memory(value: str) -> bool:
    v = value.strip().lower()
    return len(v) >= 2 and v[:-1].isdigit() and v[-1] in "kmgt" and int(v[:-1]) > 0


@dataclass(frozen=True)
class EtlConfig:
    """Attribution windows, feature windows and sampling of the Spark ETL.

    Parameters
    ----------
    out_dir : str
        Output folder; empty means ``<infra.data_dir>/features``.
    session_minutes : float
        A click counts for an impression when it comes within this many minutes (the session).
    cart_hours : float
        An add-to-cart counts within this many hours of the impression.
    purchase_days : float
        The long purchase window (``purchased_7d``, ``gmv_7d``, label 3).
    purchase_short_hours : float
        The short purchase window (``purchased_24h``).
    windows_days : tuple of int
        Look-back windows of the count and rate features, in days (names end in ``_<w>d``).
    prior_strength : float
        Pseudo-impressions of the global rate added to every smoothed CTR and purchase rate:
        ``(x + a * global_rate) / (views + a)``.
    top_categories, top_sellers, top_items : int
        How many of a user's categories, sellers and items (by 30-day interaction weight) the
        user row keeps for the user x item features.
    new_seller_days : float
        A seller younger than this (at the snapshot) is a new seller.
    snapshot_ttl_days : float
        Feast TTL of the daily user, item and seller snapshots (at least 1: a snapshot serves a day).
    realtime_ttl_days : float
        Feast TTL of the intraday user rows; an older last activity counts as none.
    negative_keep_rate : float
        Share of impressions with label 0 kept (deterministic hash of impression id and
        ``sample_seed``); kept negatives get ``sample_weight = 1 / negative_keep_rate``.
    sample_seed : int
    log_end : str
        ISO-8601 end of the log (for ``label_complete``); empty means the latest timestamp seen.
    """

    out_dir: str = ""
    session_minutes: float = 30.0
    cart_hours: float = 24.0
    purchase_days: float = 7.0
    purchase_short_hours: float = 24.0
    windows_days: tuple[int, ...] = (1, 7, 30)
    prior_strength: float = 20.0
    top_categories: int = 5
    top_sellers: int = 5
    top_items: int = 10
    new_seller_days: float = 30.0
    snapshot_ttl_days: float = 2.0
    realtime_ttl_days: float = 30.0
    negative_keep_rate: float = 1.0
    sample_seed: int = 0
    log_end: str = ""

    def __post_init__(self) -> None:
        for name in ("session_minutes", "cart_hours", "purchase_days", "purchase_short_hours", "new_seller_days",
                     "realtime_ttl_days"):
            check(getattr(self, name) > 0, name, "> 0", getattr(self, name))
        check(self.purchase_short_hours <= self.purchase_days * 24, "purchase_short_hours",
              f"<= purchase_days * 24 ({self.purchase_days * 24:g})", self.purchase_short_hours)
        check(len(self.windows_days) >= 1 and all(w >= 1 for w in self.windows_days)
              and len(set(self.windows_days)) == len(self.windows_days), "windows_days",
              "distinct whole days >= 1", self.windows_days)
        check(30 in self.windows_days, "windows_days", "to include 30 (the user profile window)", self.windows_days)
        check(self.prior_strength > 0, "prior_strength", "> 0", self.prior_strength)
        for name in ("top_categories", "top_sellers", "top_items"):
            check(1 <= getattr(self, name) <= 50, name, "in [1, 50]", getattr(self, name))
        check(self.snapshot_ttl_days >= 1, "snapshot_ttl_days", ">= 1 (a daily snapshot serves a whole day)",
              self.snapshot_ttl_days)
        check(0 < self.negative_keep_rate <= 1, "negative_keep_rate", "in (0, 1]", self.negative_keep_rate)
        check(self.sample_seed >= 0, "sample_seed", ">= 0", self.sample_seed)
        if self.log_end:
            parse_utc(self.log_end, "log_end")

    @property
    def max_window_days(self) -> int:
        """The longest look-back window."""
        return max(self.windows_days)


@dataclass(frozen=True)
class ChecksConfig:
    """Thresholds of the data checks that run before anything trains.

    Parameters
    ----------
    max_quarantine_rate : float
        Largest share of an input table's rows that may be quarantined.
    max_null_rate : float
        Largest share of nulls in any ``f_*`` column of the training table (ids, labels and
        timestamps must never be null).
    null_rate_ignore : tuple of str
        Feature columns exempt from ``max_null_rate`` (e.g. a column the source never logs).
    volume_min_ratio, volume_max_ratio : float
        Each output day's impressions against the previous run's mean per day; 0 turns a bound off.
    max_table_lag_hours : float
        How far the newest event may lag the newest impression (a stalled event feed).
    max_age_hours : float
        How old the newest impression may be at ``as_of`` (default: now); 0 turns the check off,
        as for replays of historical logs.
    as_of : str
        ISO-8601 reference time of the age check; empty means the wall clock.
    """

    max_quarantine_rate: float = 0.05
    max_null_rate: float = 0.98
    null_rate_ignore: tuple[str, ...] = ()
    volume_min_ratio: float = 0.5
    volume_max_ratio: float = 2.0
    max_table_lag_hours: float = 48.0
    max_age_hours: float = 0.0
    as_of: str = ""

    def __post_init__(self) -> None:
        check(0 <= self.max_quarantine_rate <= 1, "max_quarantine_rate", "in [0, 1]", self.max_quarantine_rate)
        check(0 <= self.max_null_rate <= 1, "max_null_rate", "in [0, 1]", self.max_null_rate)
        check(all(c.startswith("f_") for c in self.null_rate_ignore), "null_rate_ignore",
              "feature column names (f_*)", self.null_rate_ignore)
        check(self.volume_min_ratio >= 0, "volume_min_ratio", ">= 0", self.volume_min_ratio)
        check(self.volume_max_ratio == 0 or self.volume_max_ratio >= max(self.volume_min_ratio, 1.0),
              "volume_max_ratio", "0 (off) or >= max(1, volume_min_ratio)", self.volume_max_ratio)
        check(self.max_table_lag_hours > 0, "max_table_lag_hours", "> 0", self.max_table_lag_hours)
        check(self.max_age_hours >= 0, "max_age_hours", ">= 0", self.max_age_hours)
        if self.as_of:
            parse_utc(self.as_of, "as_of")


@dataclass(frozen=True)
class FeastConfig:
    """Where the Feast feature store keeps its registry and online store.

    Parameters
    ----------
    project : str
        Feast project name (letters, digits and underscores).
    repo_dir : str
        Folder of the registry and the SQLite online store; empty means ``<features out>/_feast``.
    online_store : {"sqlite", "redis"}
        ``sqlite`` (embedded default) or ``redis`` (the profile for scale).
    redis_connection : str
        Redis connection string (``host:port[,password=...]``) for the redis profile.
    """

    project: str = "feedrank"
    repo_dir: str = ""
    online_store: str = "sqlite"
    redis_connection: str = "localhost:6379"

    def __post_init__(self) -> None:
        check(bool(self.project) and self.project.replace("_", "").isalnum(), "project",
              "letters, digits and underscores", self.project)
        check(self.online_store in ("sqlite", "redis"), "online_store", "one of sqlite, redis", self.online_store)
        check(bool(self.redis_connection.strip()), "redis_connection", "a host:port string", self.redis_connection)


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
    spark: SparkConfig = field(default_factory=SparkConfig)
    etl: EtlConfig = field(default_factory=EtlConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    feast: FeastConfig = field(default_factory=FeastConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
