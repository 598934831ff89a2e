"""Reading back what a test wrote to a real Kafka broker (the stream and impression-log tests)."""

from __future__ import annotations

import time
from collections.abc import Iterable


def read_messages(servers: str, partitions: Iterable[tuple[str, int]], *, expected: int,
                  timeout_s: float = 20.0) -> list:
    """Every message on ``partitions`` (``(topic, partition)`` pairs) from the earliest offset,
    polling until ``expected`` have arrived or ``timeout_s`` has passed; no consumer group."""
    from kafka import KafkaConsumer, TopicPartition

    reader = KafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        reader.assign([TopicPartition(topic, p) for topic, p in partitions])
        got: list = []
        deadline = time.monotonic() + timeout_s
        while len(got) < expected and time.monotonic() < deadline:
            for batch in reader.poll(timeout_ms=200).values():
                got.extend(batch)
    finally:
        reader.close()
    return got
