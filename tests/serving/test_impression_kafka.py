"""Served impressions reach Kafka through the impression log's publisher (a real local broker)."""

from __future__ import annotations

import json
import time

import numpy as np

from features.config import StreamConfig
from features.stream.producer import EventPublisher
from features.stream.topics import ensure_topics
from infra.services import start_kafka
from serving.impression_log import ImpressionBatch, ImpressionLog
from tests.kafka_topics import read_messages


def test_served_impressions_are_published_to_the_impressions_topic(tmp_path):
    with start_kafka() as broker:
        cfg = StreamConfig(bootstrap_servers=broker.bootstrap_servers, impressions_topic="served.impressions",
                           events_topic="served.events", dead_letter_topic="served.dead-letter", group_id="g-served",
                           partitions=1, session_timeout_ms=2000, heartbeat_interval_ms=500)
        ensure_topics(cfg)
        publisher = EventPublisher(cfg).open()
        log = ImpressionLog(tmp_path, publisher=publisher.publish_impressions).start()
        log.log(ImpressionBatch(request_key="req-1", ts_us=int(time.time() * 1e6), user_id=7,
                                item_ids=np.array([11, 12, 13]), propensity=np.full(3, 0.98),
                                scores=np.array([3.0, 2.0, 1.0]), policy="v1", arm="champion", randomized=False,
                                device="mobile"))
        log.close()
        publisher.close()
        assert log.publish_errors == 0 and log.rows_written == 3
        got = read_messages(cfg.servers, [(cfg.impressions_topic, 0)], expected=3)
    rows = [json.loads(m.value) for m in got]
    assert sorted(r["item_id"] for r in rows) == [11, 12, 13]
    assert {r["user_id"] for r in rows} == {7}
