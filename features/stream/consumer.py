"""``feedrank stream run``: the consumer group that turns live events into online features.

One poll is one batch, handled in this order:

1. decode and validate every message (:mod:`features.stream.messages`, which never fails on a
   message's content); send the rejects to the dead-letter topic, unchanged, with the reason
   in the ``feedrank.error`` header and ``topic/partition/offset`` in ``feedrank.source``, and
   wait for those sends;
2. apply the valid rows to the window state inside one transaction and push the changed
   feature rows to the online store (:meth:`WindowStore.apply`, :class:`OnlineSink`);
3. commit the state transaction, then commit the offsets.

So offsets are committed only after the push (and the dead-letter writes) succeeded:
delivery is at-least-once, and the state de-duplicates by row id, so a batch handled twice
counts once. When any step fails the state rolls back, the consumer seeks back to the
batch's first offsets and tries again after a backoff; nothing is skipped. A rejected message
is dead-lettered once: the consumer remembers the positions it has dead-lettered until their
offsets are committed, so a retried batch does not send them again (only a crash between
the dead-letter send and the offset commit can repeat one; its ``feedrank.source`` header
tells the copies apart).

Broker restarts: kafka-python reconnects by itself. On every partition assignment the
consumer seeks to the group's committed offset, or to the beginning where there is none
(``auto_offset_reset='earliest'``), so a broker that came back empty (the local broker
keeps messages in memory) is read from its first message rather than from a position
that belonged to the old log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from kafka import ConsumerRebalanceListener, KafkaConsumer

from features.config import StreamConfig, ValidationConfig
from features.stream.messages import DecodedBatch, decode_messages
from features.stream.producer import EventPublisher
from features.stream.sink import OnlineSink
from features.stream.state import WindowStore
from features.stream.topics import client_settings, ensure_topics
from features.stream.windows import observations

__all__ = ["BatchReport", "StreamProcessor", "StreamStats"]

logger = logging.getLogger(__name__)

ERROR_HEADER = "feedrank.error"
SOURCE_HEADER = "feedrank.source"
_MAX_REASON = 2000  # characters of a reason carried in the dead-letter header


@dataclass
class StreamStats:
    """Running totals of one :meth:`StreamProcessor.run`."""

    records: int = 0
    applied: int = 0
    duplicates: int = 0
    late: int = 0
    dead_lettered: int = 0
    pushed_rows: int = 0
    batches: int = 0
    failed_attempts: int = 0
    commit_failures: int = 0
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        """Records per second since the start."""
        return self.records / max(time.monotonic() - self.started, 1e-9)


@dataclass(frozen=True)
class BatchReport:
    """What one committed batch did (passed to ``on_batch``).

    Attributes
    ----------
    records : int
    event_ts_us : ndarray of int64
        Event times of the batch's valid rows.
    pushed_at : float
        Wall clock (seconds since the epoch) when the push returned.
    watermark_us : int or None
    pushed_rows : int
        Feature rows written to the online store.
    seconds : dict of str to float
        Wall time spent decoding and validating (``decode``), in the window state (``state``) and
        pushing (``push``), and the CPU time of the whole batch in this thread (``cpu``).
    """

    records: int
    event_ts_us: np.ndarray
    pushed_at: float
    watermark_us: int | None
    pushed_rows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


_NOTHING = DecodedBatch(valid=pd.DataFrame(), rejected=[], repeats=0)


class StreamProcessor:
    """A member of the consumer group that keeps the real-time features up to date.

    Parameters
    ----------
    config : StreamConfig
    state : WindowStore
        Opened by :meth:`run` if it is not open yet.
    sink : OnlineSink
        Usually :class:`~features.stream.sink.FeastPushSink`.
    validation : ValidationConfig
        Contract timestamp bounds for incoming rows.
    clock : callable, optional
        Wall clock in seconds since the epoch (``time.time``).
    """

    def __init__(self, config: StreamConfig, state: WindowStore, sink: OnlineSink, *,
                 validation: ValidationConfig | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.state = state
        self.sink = sink
        self.validation = validation or ValidationConfig()
        self.clock = clock
        self.stats_ = StreamStats()
        self._announce: set[str] = set()
        # (topic, partition) -> offsets already dead-lettered and not yet committed
        self._dead_lettered: dict[tuple[str, int], set[int]] = {}

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event | None = None, *, max_seconds: float | None = None,
            idle_exit_s: float | None = None, on_batch: Callable[[BatchReport], None] | None = None) -> StreamStats:
        """Consume until ``stop`` is set (or a limit is reached); returns the totals.

        Parameters
        ----------
        stop : threading.Event, optional
            Set it (e.g. from a signal handler) to leave the group cleanly.
        max_seconds : float, optional
            Return after this long.
        idle_exit_s : float, optional
            Return once no record has arrived for this long since the last record or the
            first partition assignment (never before the consumer has partitions).
        on_batch : callable, optional
            Called with a :class:`BatchReport` after each committed batch.
        """
        stop = stop or threading.Event()
        cfg = self.config
        self.state.open()
        self.stats_ = stats = StreamStats()
        self._dead_lettered = {}
        self._wait_for_broker(stop)
        consumer = KafkaConsumer(
            group_id=cfg.group_id, client_id=f"feedrank-stream-{cfg.group_id}", enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms, max_poll_records=cfg.max_poll_records,
            **client_settings(cfg))
        assignments = _Assignments()
        consumer.subscribe(list(cfg.source_topics), listener=assignments)
        dead_letters = EventPublisher(cfg, client_id="feedrank-dead-letter").open()
        logger.info("stream: group %s reading %s from %s; state %s (watermark %s)", cfg.group_id,
                    list(cfg.source_topics), cfg.bootstrap_servers, self.state.path,
                    _fmt_ts(self.state.watermark_us))
        started = last_log = time.monotonic()
        last_record: float | None = None  # the idle clock starts at the first assignment
        interval = _Interval()
        backoff = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if max_seconds is not None and now - started >= max_seconds:
                    break
                if idle_exit_s is not None and last_record is not None and now - last_record >= idle_exit_s:
                    logger.info("stream: idle for %.1f s, stopping", now - last_record)
                    break
                if cfg.progress_seconds and now - last_log >= cfg.progress_seconds:
                    self._log_progress(interval, now - last_log)
                    interval, last_log = _Interval(), now
                polled = consumer.poll(timeout_ms=cfg.poll_timeout_ms, max_records=cfg.max_poll_records)
                if assignments.pending:
                    reset = assignments.pending & consumer.assignment()
                    assignments.pending.clear()
                    _seek_to_committed(consumer, reset)
                    for tp in reset:  # offsets of a partition assigned anew may name other messages
                        self._dead_lettered.pop((tp.topic, tp.partition), None)
                    self._announce |= {f"{tp.topic}/{tp.partition}" for tp in reset}
                    last_record = last_record or time.monotonic()
                    # what this poll returned for them was read from the old positions
                    polled = {tp: batch for tp, batch in polled.items() if tp not in reset}
                records = [r for batch in polled.values() for r in batch]
                if not records:
                    continue
                last_record = time.monotonic()
                try:
                    report = self._handle(records, dead_letters)
                except Exception:
                    stats.failed_attempts += 1
                    backoff = min(max(2 * backoff, 0.1), cfg.retry_backoff_max_s)
                    logger.exception("stream: batch of %d records failed; retrying from its first offsets in "
                                     "%.1f s", len(records), backoff)
                    _rewind(consumer, polled)
                    stop.wait(backoff)
                    continue
                backoff = 0.0
                self._commit(consumer, polled)
                interval.add(report)
                if on_batch is not None:
                    on_batch(report)
        finally:
            self._log_progress(interval, time.monotonic() - last_log)
            dead_letters.close()
            consumer.close(autocommit=False)
            logger.info("stream: stopped after %s records (%s applied, %s duplicates, %s late, %s dead-lettered)",
                        f"{stats.records:,}", f"{stats.applied:,}", f"{stats.duplicates:,}", f"{stats.late:,}",
                        f"{stats.dead_lettered:,}")
        return stats

    def _wait_for_broker(self, stop: threading.Event) -> None:
        """Create missing topics, retrying while the broker is unreachable."""
        from kafka.errors import KafkaError

        delay = 0.1
        while not stop.is_set():
            try:
                ensure_topics(self.config)
                return
            except KafkaError as exc:
                logger.warning("stream: broker %s not reachable (%s); retrying in %.1f s",
                               self.config.bootstrap_servers, exc, delay)
                stop.wait(delay)
                delay = min(2 * delay, self.config.retry_backoff_max_s)

    # ------------------------------------------------------------------ one batch
    def _handle(self, records: list[Any], dead_letters: EventPublisher) -> BatchReport:
        cfg = self.config
        began, cpu_began = time.perf_counter(), time.thread_time()
        now_us = int(self.clock() * 1_000_000)
        decoded = {}
        rejects: list[tuple[Any, str]] = []
        sources: dict[str, int | None] = dict.fromkeys(self._announce)
        for table, topic in (("impressions", cfg.impressions_topic), ("events", cfg.events_topic)):
            mine = [r for r in records if r.topic == topic]
            if not mine:
                decoded[table] = _NOTHING
                continue
            batch = decode_messages(table, [r.value for r in mine], validation=self.validation, now_us=now_us,
                                    max_future_s=cfg.max_future_s)
            if len(batch.valid):  # the latest event time of each partition in the batch
                ts = batch.valid["ts"].astype("int64").to_numpy()
                partition = np.array([mine[m].partition for m in batch.valid["msg"].tolist()])
                for p in np.unique(partition).tolist():
                    sources[f"{topic}/{p}"] = int(ts[partition == p].max())
            decoded[table] = batch
            rejects.extend((mine[i], reason) for i, reason in batch.rejected)
        sent = self._dead_letter(rejects, dead_letters)
        obs = observations(decoded["impressions"].valid, decoded["events"].valid)
        decoded_at = time.perf_counter()
        with self.state.apply(obs, sources=sources, now=self.clock()) as update:
            staged_at = time.perf_counter()
            self.sink.write(update)
            pushed_at = self.clock()
            push_done = time.perf_counter()
        self._announce.clear()
        stats = self.stats_
        rejected = len(rejects)
        stats.records += len(records)
        stats.batches += 1
        stats.applied += update.new
        stats.duplicates += update.duplicates + sum(b.repeats for b in decoded.values())
        stats.late += update.late
        stats.pushed_rows += update.n_rows
        if rejected:
            logger.warning("stream: %d malformed message(s) in the batch, %d sent to %s now", rejected, sent,
                           cfg.dead_letter_topic)
        return BatchReport(records=len(records), event_ts_us=obs["ts_us"].to_numpy(), pushed_at=pushed_at,
                           watermark_us=update.watermark_us, pushed_rows=update.n_rows,
                           seconds={"decode": decoded_at - began, "state": staged_at - decoded_at,
                                    "push": push_done - staged_at, "cpu": time.thread_time() - cpu_began})

    def _dead_letter(self, rejects: list[tuple[Any, str]], dead_letters: EventPublisher) -> int:
        """Send each rejected record not dead-lettered before to the dead-letter topic and wait for the
        sends; count them (``dead_lettered``); return how many were sent."""
        cfg = self.config
        fresh = [(r, reason) for r, reason in rejects
                 if r.offset not in self._dead_lettered.get((r.topic, r.partition), ())]
        for r, reason in fresh:
            dead_letters.send(cfg.dead_letter_topic, r.key, r.value, headers=[
                (ERROR_HEADER, reason[:_MAX_REASON].encode("utf-8", "replace")),
                (SOURCE_HEADER, f"{r.topic}/{r.partition}/{r.offset}".encode())])
        if not fresh:
            return 0
        dead_letters.flush(timeout_s=60.0)  # raises if any was not delivered: the batch is retried
        for r, _ in fresh:
            self._dead_lettered.setdefault((r.topic, r.partition), set()).add(r.offset)
        self.stats_.dead_lettered += len(fresh)
        return len(fresh)

    def _commit(self, consumer: Any, polled: dict[Any, list[Any]]) -> None:
        from kafka.errors import CommitFailedError, KafkaError
        from kafka.structs import OffsetAndMetadata

        offsets = {tp: OffsetAndMetadata(batch[-1].offset + 1, "", -1) for tp, batch in polled.items() if batch}
        try:
            consumer.commit(offsets=offsets, timeout_ms=10000)
            for tp, done in offsets.items():  # committed: never redelivered to this group
                seen = self._dead_lettered.get((tp.topic, tp.partition))
                if seen:
                    seen -= {o for o in seen if o < done.offset}
        except CommitFailedError as exc:
            # The group rebalanced (or the broker forgot it): whoever owns the partitions now
            # starts from the last committed offsets, and the state absorbs the repeat.
            self.stats_.commit_failures += 1
            logger.warning("stream: offset commit rejected (%s); the batch will be redelivered and de-duplicated",
                           exc)
        except KafkaError as exc:
            self.stats_.commit_failures += 1
            logger.warning("stream: offset commit failed (%s); will commit later offsets", exc)

    def _log_progress(self, interval: _Interval, seconds: float) -> None:
        stats = self.stats_
        lag = interval.lag_percentiles()
        logger.info(
            "stream: %s records in %.0f s (%s/s; %s/s overall) in %d batches (%s), %s applied, %s duplicates, "
            "%s late, %s dead-lettered, %s rows pushed; watermark %s; event-to-push lag p50 %s p99 %s; "
            "window %s rows",
            f"{interval.records:,}", seconds, f"{interval.records / max(seconds, 1e-9):,.0f}", f"{stats.rate():,.0f}",
            interval.batches, interval.split(),
            f"{stats.applied:,}", f"{stats.duplicates:,}", f"{stats.late:,}", f"{stats.dead_lettered:,}",
            f"{stats.pushed_rows:,}", _fmt_ts(self.state.watermark_us), lag[0], lag[1], f"{self.state.n_rows():,}")


class _Interval:
    """Records, batches, time split and event-to-push lags since the last progress line."""

    def __init__(self) -> None:
        self.records = 0
        self.batches = 0
        self.seconds: dict[str, float] = {"decode": 0.0, "state": 0.0, "push": 0.0, "cpu": 0.0}
        self._lags: list[np.ndarray] = []

    def add(self, report: BatchReport) -> None:
        self.records += report.records
        self.batches += 1
        for k, v in report.seconds.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + v
        if len(report.event_ts_us):
            self._lags.append(report.pushed_at - report.event_ts_us / 1e6)

    def split(self) -> str:
        return ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())

    def lag_percentiles(self) -> tuple[str, str]:
        if not self._lags:
            return "-", "-"
        lags = np.concatenate(self._lags)
        return tuple(_fmt_seconds(v) for v in np.percentile(lags, [50, 99]))  # type: ignore[return-value]


def _fmt_seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if abs(value) < 10 else f"{value / 3600:.1f} h" if abs(value) >= 3600 \
        else f"{value:.0f} s"


def _fmt_ts(us: int | None) -> str:
    if us is None:
        return "none"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(us / 1e6))


def _rewind(consumer: Any, polled: dict[Any, list[Any]]) -> None:
    """Seek each partition of a failed batch back to the batch's first record."""
    for tp, batch in polled.items():
        if batch and tp in consumer.assignment():
            consumer.seek(tp, batch[0].offset)


class _Assignments(ConsumerRebalanceListener):
    """Remembers every partition assignment, so that the loop can position those partitions.

    kafka-python keeps the fetch position of a partition it owned before a rebalance; after a
    broker restart that position belongs to a log that no longer exists. The listener runs on
    kafka-python's IO thread, where blocking calls are not allowed, so the seeking itself is
    done by :func:`_seek_to_committed` in the polling thread.
    """

    def __init__(self) -> None:
        self.pending: set[Any] = set()

    def on_partitions_revoked(self, revoked: Any) -> None:
        # Offsets are committed after every batch; nothing is pending here.
        pass

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.pending |= set(assigned)
        if assigned:
            logger.info("stream: assigned %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))


def _seek_to_committed(consumer: Any, partitions: set[Any]) -> None:
    """Start each partition at the group's committed offset, or at the beginning without one."""
    for tp in partitions:
        committed = consumer.committed(tp)
        if committed is None:
            consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, committed)
