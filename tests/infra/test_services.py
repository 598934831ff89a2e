"""The local Kafka-protocol broker launcher: verified binary, loopback only, nothing left running."""

from __future__ import annotations

import socket

import pytest

from infra import services
from infra.services import (
    ServiceError,
    kafka_down,
    kafka_status,
    kafka_up,
    loopback_address,
    start_kafka,
)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_broker_starts_on_loopback_and_stops() -> None:
    broker = start_kafka()
    try:
        assert broker.alive() and _listening(broker.port)
        assert broker.bootstrap_servers == f"127.0.0.1:{broker.port}"
        with pytest.raises(ServiceError, match="already in use"):
            start_kafka(broker.port)
    finally:
        broker.stop()
    assert not broker.alive() and not _listening(broker.port)
    assert not broker.log_path.exists()


def test_a_binary_with_another_hash_does_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "TANSU_SHA256", "0" * 64)
    with pytest.raises(ServiceError, match="SHA-256"):
        start_kafka()


def test_the_pinned_binary_verifies() -> None:
    assert services.tansu_binary().name == "tansu"


@pytest.mark.parametrize(("address", "match"), [
    ("0.0.0.0:9092", "binds 127.0.0.1 only"),
    ("kafka.example.com:9092", "binds 127.0.0.1 only"),
    ("127.0.0.1:9092,127.0.0.1:9093", "one address"),
    ("127.0.0.1:http", "port must be"),
    ("127.0.0.1:70000", "port must be"),
])
def test_loopback_address_rejects(address: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        loopback_address(address)


def test_loopback_address_accepts_localhost() -> None:
    assert loopback_address("localhost:9092") == ("127.0.0.1", 9092)


def test_background_broker_up_and_down(tmp_path) -> None:
    port = services.free_port()
    address = f"127.0.0.1:{port}"
    pid, started = kafka_up(address, tmp_path)
    try:
        assert started and _listening(port)
        assert kafka_status(tmp_path)["pid"] == pid
        assert kafka_up(address, tmp_path) == (pid, False)  # already running: reused
        with pytest.raises(ServiceError, match="already runs on port"):
            kafka_up(f"127.0.0.1:{services.free_port()}", tmp_path)
    finally:
        assert kafka_down(tmp_path)
    assert not _listening(port) and kafka_status(tmp_path) is None
    assert not kafka_down(tmp_path)
    assert (tmp_path / "kafka.log").exists()
