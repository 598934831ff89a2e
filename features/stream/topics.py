"""Topic management and the Kafka client settings every feedrank client shares."""

from __future__ import annotations

import logging
from typing import Any

from features.config import StreamConfig

__all__ = ["TopicError", "client_settings", "ensure_topics"]

logger = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36


class TopicError(RuntimeError):
    """The broker refused to create a topic."""


def client_settings(config: StreamConfig) -> dict[str, Any]:
    """Connection settings of producers, consumers and admin clients.

    Reconnect backoff is capped at one second so that a client notices a restarted broker
    quickly; everything else is kafka-python's default.
    """
    return {
        "bootstrap_servers": config.servers,
        "reconnect_backoff_ms": 50,
        "reconnect_backoff_max_ms": 1000,
        "retry_backoff_ms": 100,
        "request_timeout_ms": 30000,
    }


def ensure_topics(config: StreamConfig, *, timeout_s: float = 30.0) -> list[str]:
    """Create the impressions, events and dead-letter topics where they do not exist yet.

    Existing topics are left as they are (their partition count included).

    Returns
    -------
    list of str
        The topics this call created.

    Raises
    ------
    TopicError
        If the broker refuses a topic for another reason than that it exists.
    kafka.errors.KafkaError
        If the broker cannot be reached within ``timeout_s``.
    """
    from kafka import KafkaAdminClient

    names = (config.impressions_topic, config.events_topic, config.dead_letter_topic)
    admin = KafkaAdminClient(client_id="feedrank-admin", request_timeout_ms=int(timeout_s * 1000),
                             **{k: v for k, v in client_settings(config).items() if k != "request_timeout_ms"})
    try:
        spec = {n: {"num_partitions": config.partitions, "replication_factor": config.replication_factor}
                for n in names}
        result = admin.create_topics(spec, timeout_ms=int(timeout_s * 1000), raise_errors=False)
    finally:
        admin.close()
    created = []
    for topic in result["topics"]:
        code = topic["error_code"]
        if code == 0:
            created.append(topic["name"])
        elif code != _TOPIC_ALREADY_EXISTS:
            raise TopicError(f"creating topic {topic['name']}: error {code} {topic.get('error_message') or ''}")
    if created:
        logger.info("created topics %s (%d partitions each)", created, config.partitions)
    return created
