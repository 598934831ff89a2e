"""Publishing contract rows as live events: the API serving and the replay tool call.

Serving publishes each response's impressions when ``features.stream.enabled`` is true::

    publisher = EventPublisher(config.features.stream).open()   # once, at start-up
    publisher.publish_impressions(impressions)                  # per batch; does not wait
    publisher.close()                                           # at shutdown: flushes

``publish_impressions`` takes a DataFrame, an Arrow table or an Arrow record batch with the
contract's ``impressions`` columns (extra columns such as ``arm`` or ``score`` are dropped), so
it can be handed to the serving impression log as its publisher callable. It never blocks on
the broker (only when the producer's buffer is full); delivery failures are logged and
reported by :meth:`EventPublisher.flush`.

Delivery is at-least-once: the producer retries through broker restarts, and a message it
sends twice is harmless because the consumer de-duplicates by row id. The idempotent
producer is off on purpose: after a restart of an in-memory broker its producer id is
unknown and kafka-python would give up instead of retrying.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pandas as pd
import pyarrow as pa

from features.config import StreamConfig
from features.stream.messages import encode_rows
from features.stream.topics import client_settings

__all__ = ["EventPublisher", "PublishError"]

logger = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """Some messages could not be delivered; the message says how many and the first error."""


class EventPublisher:
    """Publishes impressions and events to their topics, keyed by user id.

    Parameters
    ----------
    config : StreamConfig
    client_id : str
        Shows in the broker's logs and metrics.
    delivery_timeout_s : float
        How long a message may wait for the broker (retries included) before it counts as failed.
    """

    def __init__(self, config: StreamConfig, *, client_id: str = "feedrank-publisher",
                 delivery_timeout_s: float = 120.0) -> None:
        self.config = config
        self.client_id = client_id
        self.delivery_timeout_s = delivery_timeout_s
        self._producer: Any = None
        self._lock = threading.Lock()
        self._failed = 0
        self._first_error: BaseException | None = None
        self.sent_ = 0

    def open(self) -> EventPublisher:
        """Connect to the brokers; returns ``self``."""
        if self._producer is None:
            from kafka import KafkaProducer

            timeout_ms = int(self.delivery_timeout_s * 1000)
            self._producer = KafkaProducer(
                client_id=self.client_id, acks="all", enable_idempotence=False, retries=2**31 - 1,
                linger_ms=self.config.linger_ms, delivery_timeout_ms=timeout_ms,
                request_timeout_ms=min(30000, timeout_ms - self.config.linger_ms - 1),
                **{k: v for k, v in client_settings(self.config).items() if k != "request_timeout_ms"})
        return self

    def __enter__(self) -> EventPublisher:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _topic(self, table: str) -> str:
        if table == "impressions":
            return self.config.impressions_topic
        if table == "events":
            return self.config.events_topic
        raise ValueError(f"table must be 'impressions' or 'events', got {table!r}")

    def publish(self, table: str, rows: pd.DataFrame | pa.Table | pa.RecordBatch) -> int:
        """Send contract rows of ``table`` (``"impressions"`` or ``"events"``) without waiting.

        Returns
        -------
        int
            Messages handed to the producer; :meth:`flush` reports any that failed.

        Raises
        ------
        ValueError
            For an unknown table or rows without the contract's columns.
        """
        topic = self._topic(table)
        messages = encode_rows(table, rows)
        for key, value in messages:
            self.send(topic, key, value)
        return len(messages)

    def publish_impressions(self, rows: pd.DataFrame | pa.Table | pa.RecordBatch) -> int:
        """Send impressions (contract ``impressions`` rows); what serving calls with its impression batches."""
        return self.publish("impressions", rows)

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        """Send one raw message without waiting (failures are reported by :meth:`flush`)."""
        if self._producer is None:
            raise RuntimeError("EventPublisher is not open; call open() first")
        future = self._producer.send(topic, key=key, value=value, headers=headers)
        future.add_errback(self._on_error)
        self.sent_ += 1

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self._failed += 1
            first = self._first_error is None
            if first:
                self._first_error = exc
        if first:  # once per flush interval, not once per message
            logger.warning("%s: messages are failing to reach the broker: %r", self.client_id, exc)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every message sent so far is delivered or has failed.

        Raises
        ------
        PublishError
            If any message sent since the previous flush failed (the count is reset), or some
            are still undelivered after ``timeout_s``.
        """
        if self._producer is None:
            return
        from kafka.errors import KafkaTimeoutError

        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaTimeoutError as exc:
            raise PublishError(f"messages still undelivered after {timeout_s} s: {exc}") from exc
        with self._lock:
            failed, first = self._failed, self._first_error
            self._failed, self._first_error = 0, None
        if failed:
            raise PublishError(f"{failed} message(s) not delivered; first error: {first!r}")

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush and disconnect; failures are logged, not raised."""
        if self._producer is None:
            return
        try:
            self.flush(timeout_s)
        except PublishError as exc:
            logger.error("closing publisher: %s", exc)
        finally:
            self._producer.close(timeout=timeout_s)
            self._producer = None
