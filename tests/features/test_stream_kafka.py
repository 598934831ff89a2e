"""The stream consumer against a real broker and the real Feast SQLite online store.

Every test starts its own topics and consumer group on a broker started here (Tansu, on a free
port); the broker-restart test starts its own broker. Waits are bounded and fail with the
thing that did not happen.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from features.config import EtlConfig, FeastConfig, StreamConfig
from features.outputs import write_empty_feature_tables
from features.stream import (
    INTRADAY_COLUMNS,
    ITEM_ROLLING,
    USER_ROLLING,
    EventPublisher,
    FeastPushSink,
    StreamProcessor,
    WindowStore,
    encode_rows,
    ensure_topics,
    intraday_rows,
    observations,
    rolling_counts,
)
from features.stream.consumer import ERROR_HEADER, SOURCE_HEADER
from infra.replay import load_replay, replay_logs
from infra.services import KafkaBroker, start_kafka
from infra.stream_cli import open_feature_store
from tests.kafka_topics import read_messages

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
_names = itertools.count()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, *, every_s: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


@pytest.fixture(scope="module")
def broker() -> Iterator[KafkaBroker]:
    with start_kafka() as b:
        yield b


def _stream_config(bootstrap: str) -> StreamConfig:
    n = next(_names)
    return StreamConfig(
        bootstrap_servers=bootstrap, impressions_topic=f"t{n}.impressions", events_topic=f"t{n}.events",
        dead_letter_topic=f"t{n}.dead-letter", group_id=f"g{n}", partitions=2, session_timeout_ms=2000,
        heartbeat_interval_ms=500, poll_timeout_ms=50, max_poll_records=500, retry_backoff_max_s=0.5,
        progress_seconds=2.0)


@pytest.fixture
def feast_config(tmp_path: Path) -> FeastConfig:
    return FeastConfig(project="streamtest", repo_dir=str(tmp_path / "feast"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def _app_config(stream: StreamConfig, feast: FeastConfig, data_dir: Path) -> dict:
    """The nested configuration the CLI reads (only what differs from the defaults)."""
    return {"features": {"stream": {k: getattr(stream, k) for k in (
        "bootstrap_servers", "impressions_topic", "events_topic", "dead_letter_topic", "group_id", "partitions",
        "session_timeout_ms", "heartbeat_interval_ms", "poll_timeout_ms", "max_poll_records",
        "retry_backoff_max_s", "progress_seconds")},
        "feast": {"project": feast.project, "repo_dir": feast.repo_dir}},
        "infra": {"data_dir": str(data_dir)}}


@pytest.fixture
def store(feast_config: FeastConfig, data_dir: Path):
    """The real Feast store (SQLite online store in a temp folder) with the repo's definitions applied."""
    from infra.config import load_config

    write_empty_feature_tables(data_dir / "features", EtlConfig())
    config = load_config(overrides={"features": {"feast": {"project": feast_config.project,
                                                            "repo_dir": feast_config.repo_dir}},
                                    "infra": {"data_dir": str(data_dir)}})
    return open_feature_store(config, apply=True)


def _online(store, view: str, key: str, ids, names) -> pd.DataFrame:
    rows = store.get_online_features(features=[f"{view}:{n}" for n in names],
                                     entity_rows=[{key: int(i)} for i in ids]).to_dict()
    return pd.DataFrame(rows).set_index(key)[list(names)]


def _assert_online_equals_batch(store, imp: pd.DataFrame, ev: pd.DataFrame) -> None:
    """Every stored value equals the batch definition over the same rows."""
    obs = observations(imp, ev)
    as_of = int(obs["ts_us"].max())
    for entity, feats in (("user", USER_ROLLING), ("item", ITEM_ROLLING)):
        key = f"{entity}_id"
        ids = np.unique(obs[key])
        expected = rolling_counts(obs, entity, as_of).reindex(ids, fill_value=0)
        got = _online(store, f"{entity}_rolling", key, ids, [f.name for f in feats])
        got = got[expected.columns].fillna(0).astype(np.int64)  # never pushed: no row
        mismatch = (got != expected).any(axis=1)
        assert not mismatch.any(), f"{entity} rolling counts differ:\n{got[mismatch].head()}\n" \
                                   f"{expected[mismatch].head()}"
    expected = intraday_rows(obs)
    got = _online(store, "user_realtime", "user_id", expected.index, INTRADAY_COLUMNS)
    pd.testing.assert_frame_equal(got[list(INTRADAY_COLUMNS)].astype("Int64"),
                                  expected[list(INTRADAY_COLUMNS)].astype("Int64"), check_names=False)


class _Consumer:
    """A :class:`StreamProcessor` running in a thread of the test process."""

    def __init__(self, config: StreamConfig, store, state_path: Path, *, sink=None) -> None:
        self.state = WindowStore(state_path)
        self.processor = StreamProcessor(config, self.state, sink or FeastPushSink(store))
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.processor.run(self.stop)
        except BaseException as exc:  # surfaced by close()
            self.error = exc

    @property
    def stats(self):
        return self.processor.stats_

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "consumer thread did not stop"
        if self.error is not None:
            raise self.error


def _now_rows(user: int, item: int, *, impression_id: int, event_id: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    ts = pd.Timestamp.now(tz="UTC")
    imp = pd.DataFrame({"impression_id": [impression_id], "request_id": [1], "ts": [ts], "user_id": [user],
                        "item_id": [item], "position": [0], "policy": ["test"], "randomized": [False],
                        "propensity": [None], "device": ["mobile"]})
    ev = pd.DataFrame({"event_id": [event_id], "ts": [ts + pd.Timedelta(milliseconds=5)], "user_id": [user],
                       "item_id": [item], "type": ["click"], "impression_id": [impression_id], "quantity": [1],
                       "price_paid": [None]})
    return imp, ev


def test_an_event_becomes_a_feature_in_the_online_store(broker: KafkaBroker, store, tmp_path: Path) -> None:
    cfg = _stream_config(broker.bootstrap_servers)
    consumer = _Consumer(cfg, store, tmp_path / "state.sqlite")
    try:
        imp, ev = _now_rows(42, 7, impression_id=1000, event_id=4000)
        with EventPublisher(cfg) as publisher:
            published = time.monotonic()
            publisher.publish("impressions", imp)
            publisher.publish("events", ev)

        day = imp["ts"].iloc[0].value // 86_400_000_000_000

        def visible() -> bool:
            user = _online(store, "user_rolling", "user_id", [42], ["f_user_views_1h", "f_user_clicks_1h"])
            item = _online(store, "item_rolling", "item_id", [7], ["f_item_views_1h", "f_item_clicks_1h"])
            row = _online(store, "user_realtime", "user_id", [42], ["rt_day", "rt_views", "rt_clicks", "rt_carts"])
            return (user.loc[42].tolist() == [1, 1] and item.loc[7].tolist() == [1, 1]
                    and row.loc[42].tolist() == [day, 1, 1, 0])

        wait_for(visible, 30, "user 42's view and click in user_rolling, item_rolling and user_realtime")
        latency = time.monotonic() - published
        assert latency < 30
    finally:
        consumer.close()
    assert consumer.stats.applied == 2 and consumer.stats.dead_lettered == 0


def _poison(good_event: bytes, good_impression: bytes) -> list[tuple[str, bytes, str]]:
    """One message of every kind that broke the consumer, as (table, value, reason the dead letter must carry)."""
    ev, imp = json.loads(good_event), json.loads(good_impression)
    ids = itertools.count(10**15)

    def event(**changes) -> bytes:
        return json.dumps({**ev, "event_id": next(ids), **changes}).encode()

    def impression(**changes) -> bytes:
        return json.dumps({**imp, "impression_id": next(ids), **changes}).encode()

    return [
        ("events", event(user_id=2**70), "user_id: wrong type, expected int64"),
        ("events", event(event_id=2**64), "event_id: wrong type, expected int64"),
        ("impressions", impression(position=2**40), "position: wrong type, expected int32"),
        ("events", b"{}", "event_id: missing required field; ts: missing required field"),
        ("impressions", b"{}", "impression_id: missing required field"),
        ("events", event(quantity="many"), "quantity: wrong type, expected int64"),
        ("events", event(ts=12345), "ts: wrong type, expected timestamp"),
        ("events", event(type=["click"]), "type: wrong type, expected string"),
        ("events", event(user_id=True), "user_id: wrong type, expected int64"),
        ("impressions", impression(randomized="maybe", propensity=[0.5]),
         "randomized: wrong type, expected bool; propensity: wrong type, expected float64"),
        ("events", event(type="like"), "type: must be one of"),
        ("events", event(user_id=-5), "user_id: must be >= 0"),
        ("events", b"{not json", "value: not valid JSON"),
        ("events", b"\xff\x00\x01", "value: not valid JSON"),
        ("impressions", b"[" * 100_000, "value: not valid JSON (RecursionError"),
        ("events", b"[1, 2]", "value: expected a JSON object, got list"),
    ]


def test_poison_messages_go_to_the_dead_letter_topic_once_and_the_good_ones_are_applied(
        broker: KafkaBroker, store, tmp_path: Path, replay_log) -> None:
    _, imp, ev = replay_log
    imp, ev = imp.iloc[:400], ev.iloc[:60]
    cfg = _stream_config(broker.bootstrap_servers)
    good = {"impressions": encode_rows("impressions", imp), "events": encode_rows("events", ev)}
    poison = _poison(good["events"][0][1], good["impressions"][0][1])
    ensure_topics(cfg)
    topic = {"impressions": cfg.impressions_topic, "events": cfg.events_topic}
    consumer = _Consumer(cfg, store, tmp_path / "state.sqlite")
    try:
        # a poll that brings nothing but empty objects
        with EventPublisher(cfg) as publisher:
            publisher.send(cfg.events_topic, b"1", b"{}")
            publisher.send(cfg.impressions_topic, b"1", b"{}")
        wait_for(lambda: _committed(cfg) == 2, 30, "the two empty objects to be handled and committed")
        assert consumer.stats.dead_lettered == 2 and consumer.stats.applied == 0
        # then every kind of poison among good messages, each in the middle of its topic's share
        with EventPublisher(cfg) as publisher:
            for table in ("impressions", "events"):
                mine = [(value, None) for _, value in good[table]]
                for k, (t, value, _) in enumerate(p for p in poison if p[0] == table):
                    mine.insert(len(mine) // 2 + k, (value, t))
                for value, _ in mine:
                    publisher.send(topic[table], b"7", value)
        total = 2 + len(good["impressions"]) + len(good["events"]) + len(poison)
        wait_for(lambda: _committed(cfg) == total, 60, f"all {total} messages to be committed", every_s=0.2)
    finally:
        consumer.close()
    stats = consumer.stats
    assert stats.failed_attempts == 0  # no batch was held up, none retried
    assert stats.dead_lettered == 2 + len(poison)
    assert stats.applied == len(imp) + len(ev)

    dead = read_messages(cfg.servers, [(cfg.dead_letter_topic, p) for p in range(cfg.partitions)],
                         expected=3 + len(poison), timeout_s=3)  # one more than sent: a repeat would show
    assert len(dead) == 2 + len(poison)
    assert sorted(m.value for m in dead) == sorted([b"{}", b"{}"] + [v for _, v, _ in poison])
    reasons = {(dict(m.headers)[SOURCE_HEADER].decode().rsplit("/", 2)[0], m.value): dict(m.headers)[ERROR_HEADER]
               .decode() for m in dead}
    for table, value, reason in poison:
        assert reasons[(topic[table], value)].startswith(reason), (value[:80], reasons[(topic[table], value)])
    _assert_online_equals_batch(store, imp, ev)


@pytest.fixture(scope="module")
def replay_log(tmp_path_factory: pytest.TempPathFactory, small_logs: Path) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """The first rows of the small simulated log, in event-time order."""
    imp, ev, order = load_replay(small_logs, limit=8000)
    return small_logs, imp.iloc[np.sort(order[order < len(imp)])], \
        ev.iloc[np.sort(order[order >= len(imp)] - len(imp))]


def _committed(cfg: StreamConfig) -> int:
    """Sum of the group's committed offsets over the source topics (= messages it is done with)."""
    from kafka import KafkaConsumer, TopicPartition

    reader = KafkaConsumer(bootstrap_servers=cfg.servers, group_id=cfg.group_id, enable_auto_commit=False)
    try:
        total = 0
        for topic in cfg.source_topics:
            for p in reader.partitions_for_topic(topic) or ():
                total += reader.committed(TopicPartition(topic, p)) or 0
        return total
    finally:
        reader.close()


def _cli(config_file: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "infra.cli", "--config", str(config_file), *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_a_consumer_killed_mid_stream_resumes_without_loss_or_double_counting(
        broker: KafkaBroker, store, feast_config: FeastConfig, data_dir: Path, tmp_path: Path, replay_log) -> None:
    logs, imp, ev = replay_log
    total = len(imp) + len(ev)
    cfg = _stream_config(broker.bootstrap_servers)
    config_file = tmp_path / "feedrank.yaml"
    config_file.write_text(yaml.safe_dump(_app_config(cfg, feast_config, data_dir)))
    ensure_topics(cfg)
    with EventPublisher(cfg) as publisher:
        report = replay_logs(logs, publisher, limit=total, progress_seconds=0)
    assert sum(report.rows.values()) == total

    first = _cli(config_file, "stream", "run")
    try:
        wait_for(lambda: first.poll() is not None or _committed(cfg) >= total // 4, 120,
                 "the first consumer to commit a quarter of the stream", every_s=0.2)
        assert first.poll() is None, first.stdout.read().decode()[-3000:]
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    done_before = _committed(cfg)
    assert done_before < total, "the stream ended before the kill; nothing was interrupted"

    second = _cli(config_file, "stream", "run")
    try:
        wait_for(lambda: second.poll() is not None or _committed(cfg) == total, 120,
                 "the restarted consumer to commit the whole stream", every_s=0.2)
        assert second.poll() is None, second.stdout.read().decode()[-3000:]
        second.send_signal(signal.SIGTERM)
        out, _ = second.communicate(timeout=30)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    assert second.returncode == 0, out.decode()[-3000:]
    _assert_online_equals_batch(store, imp, ev)


def test_the_consumer_recovers_when_the_broker_restarts_mid_stream(store, tmp_path: Path, replay_log) -> None:
    _, imp, ev = replay_log
    obs_order = np.argsort(np.concatenate([imp["ts"].astype("int64"), ev["ts"].astype("int64")]), kind="stable")
    cut = len(obs_order) // 4  # after the restart the log holds three times more than before it
    first_imp = np.sort(obs_order[:cut][obs_order[:cut] < len(imp)])
    first_ev = np.sort(obs_order[:cut][obs_order[:cut] >= len(imp)] - len(imp))
    rest_imp = np.setdiff1d(np.arange(len(imp)), first_imp)
    rest_ev = np.setdiff1d(np.arange(len(ev)), first_ev)

    broker = start_kafka()
    port = broker.port
    cfg = replace(_stream_config(broker.bootstrap_servers), max_poll_records=2000)
    consumer = None
    try:
        ensure_topics(cfg)
        consumer = _Consumer(cfg, store, tmp_path / "state.sqlite")
        with EventPublisher(cfg, delivery_timeout_s=60) as publisher:
            publisher.publish("impressions", imp.iloc[first_imp])
            publisher.publish("events", ev.iloc[first_ev])
            publisher.flush()
            wait_for(lambda: consumer.stats.applied == cut, 60, f"the first {cut} rows to be applied")

            broker.kill()  # the in-memory broker loses its log, its topics and the group's offsets
            broker = start_kafka(port)
            # It comes back empty; whoever runs it recreates the topics (``make kafka-up`` does).
            # Without them the broker answers produce requests with an error the client cannot
            # retry (UnknownError), a property of the test broker, not of the consumer under test.
            ensure_topics(cfg)
            publisher.publish("impressions", imp.iloc[rest_imp])
            publisher.publish("events", ev.iloc[rest_ev])
            publisher.flush()
        wait_for(lambda: consumer.stats.applied == len(imp) + len(ev), 90,
                 "every row published after the restart to be applied")
    finally:
        if consumer is not None:
            consumer.close()
        broker.stop()
    assert consumer.stats.duplicates >= 0 and consumer.stats.dead_lettered == 0
    _assert_online_equals_batch(store, imp, ev)


class _FailingSink:
    """Injects a fault: the first ``failures`` writes raise, as an unreachable online store would."""

    def __init__(self, sink: FeastPushSink, failures: int) -> None:
        self.sink = sink
        self.failures = failures

    def write(self, update) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("online store unreachable")
        self.sink.write(update)


def test_a_failed_push_is_retried_from_the_batch_start_and_counts_once(broker: KafkaBroker, store, tmp_path: Path,
                                                                       replay_log) -> None:
    _, imp, ev = replay_log
    imp, ev = imp.iloc[:1500], ev.iloc[:100]
    cfg = _stream_config(broker.bootstrap_servers)
    ensure_topics(cfg)
    with EventPublisher(cfg) as publisher:
        publisher.publish("impressions", imp)
        publisher.publish("events", ev)
    consumer = _Consumer(cfg, store, tmp_path / "state.sqlite", sink=_FailingSink(FeastPushSink(store), failures=3))
    try:
        wait_for(lambda: _committed(cfg) == len(imp) + len(ev), 60, "every offset to be committed", every_s=0.2)
    finally:
        consumer.close()
    stats = consumer.stats
    assert stats.failed_attempts == 3
    assert stats.applied == len(imp) + len(ev) and stats.duplicates == 0
    assert _committed(cfg) == len(imp) + len(ev)
    _assert_online_equals_batch(store, imp, ev)


def test_replay_publishes_in_event_time_order_at_the_speedup(broker: KafkaBroker, tmp_path: Path, replay_log,
                                                            feast_config: FeastConfig, data_dir: Path) -> None:
    import json

    from infra.cli import main

    logs, _, _ = replay_log
    cfg = _stream_config(broker.bootstrap_servers)
    config_file = tmp_path / "feedrank.yaml"
    config_file.write_text(yaml.safe_dump(_app_config(cfg, feast_config, data_dir)))
    imp, ev, order = load_replay(logs, limit=400)
    ts = np.concatenate([imp["ts"].astype("int64"), ev["ts"].astype("int64")])[order]
    speedup = (ts[-1] - ts[0]) / 1e6 / 1.5  # the 400 rows' event-time span played in 1.5 s
    began = time.monotonic()
    assert main(["--config", str(config_file), "stream", "replay", str(logs), "--limit", "400",
                 "--speedup", str(speedup)]) == 0
    assert 1.2 <= time.monotonic() - began < 60

    got = read_messages(cfg.servers, [(t, p) for t in cfg.source_topics for p in range(cfg.partitions)], expected=400)
    assert len(got) == 400
    for (_, _), msgs in itertools.groupby(sorted(got, key=lambda m: (m.topic, m.partition, m.offset)),
                                          key=lambda m: (m.topic, m.partition)):
        times = [json.loads(m.value)["ts"] for m in msgs]
        assert times == sorted(times)  # ISO strings of one format sort as times
    assert {int(m.key) for m in got} == {json.loads(m.value)["user_id"] for m in got}


def test_features_apply_registers_the_rolling_views(tmp_path: Path, data_dir: Path, feast_config: FeastConfig) -> None:
    from feast import FeatureStore

    from features.store import load_repo_config
    from infra.cli import main

    write_empty_feature_tables(data_dir / "features", EtlConfig())
    config_file = tmp_path / "feedrank.yaml"
    config_file.write_text(yaml.safe_dump({"features": {"feast": {"project": feast_config.project,
                                                                   "repo_dir": feast_config.repo_dir}},
                                           "infra": {"data_dir": str(data_dir)}}))
    assert main(["--config", str(config_file), "features", "apply"]) == 0
    repo = load_repo_config(data_dir / "features", feast_config)
    views = {fv.name for fv in FeatureStore(config=repo, repo_path=str(repo.repo_path)).list_feature_views()}
    assert {"user_realtime", "user_rolling", "item_rolling"} <= views
