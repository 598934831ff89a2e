"""``feedrank serve --processes 2`` under faults, as an operator meets them: real processes, real gRPC.

One start serves the whole story: a second ``feedrank serve`` on the served port refuses to
start; the same serving process SIGKILLed three times in a row, the second and third time
while it starts again (a crash loop), under load: the sibling keeps answering (< 1% failed
calls), the supervisor restarts the process with a growing back-off, and health reports the
degradation while it lasts; SIGKILL of the supervisor takes its processes with it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from infra.serve import data_path
from infra.supervisor import PROCESSES_HEALTH_SERVICE, status_file
from serving.proto_gen import feedrank_pb2 as pb
from serving.proto_gen import feedrank_pb2_grpc as pb_grpc
from tests.infra.test_serve_processes import REPO, _free_port, _wait_for

# What a production client does: wait for a ready connection, retry a call its server dropped.
_RETRY = json.dumps({"methodConfig": [{"name": [{"service": "feedrank.v1.FeedRanker"}], "retryPolicy": {
    "maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"]}}]})


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    pytest.fail(f"no {what} within {timeout:.0f} s")


def test_crash_loop_port_guard_and_supervisor_death(trained, tmp_path):
    base, _, _ = trained
    port = _free_port()
    config = dataclasses.replace(
        base, infra=dataclasses.replace(base.infra, data_dir=str(tmp_path / "data")),
        serving=dataclasses.replace(base.serving, port=port, processes=2))
    (tmp_path / "data").mkdir()
    for name in ("mlflow", "train"):
        (tmp_path / "data" / name).symlink_to(Path(base.infra.data_dir) / name)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    out = tmp_path / "serve.out"
    command = [sys.executable, "-m", "infra.cli", "--config", str(config_file), "serve"]
    supervisor = subprocess.Popen([*command, "--processes", "2"], cwd=REPO, stdout=out.open("w"),
                                  stderr=subprocess.STDOUT)
    status_path = status_file(data_path(config, "serving"), port)
    try:
        ready = _wait_for(supervisor, out, r"with 2 processes \(pids (\d+), (\d+)\)", timeout=240)
        pids = [int(ready.group(1)), int(ready.group(2))]

        # a second server on the served port refuses to start, saying why
        second = subprocess.run([*command, "--processes", "1"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode != 0 and f"port {port} on 127.0.0.1 is already in use" in second.stderr

        ok, failed = [0], []
        stop = threading.Event()

        def load(tid: int) -> None:
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.service_config", _RETRY),
                                                                     ("grpc.use_local_subchannel_pool", 1)]) as ch:
                stub, i = pb_grpc.FeedRankerStub(ch), 0
                while not stop.is_set():
                    try:
                        stub.RankFeed(pb.RankFeedRequest(request_id=f"{tid}-{i}", user_id=str(1 + i % 40), k=5),
                                      timeout=10.0, wait_for_ready=True)
                        ok[0] += 1
                    except grpc.RpcError as exc:
                        failed.append(exc.code())
                    i += 1

        def health() -> int:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                return health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=PROCESSES_HEALTH_SERVICE), timeout=5.0).status

        threads = [threading.Thread(target=load, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        _wait(lambda: ok[0] >= 20, 60, "calls served")
        assert health() == health_pb2.HealthCheckResponse.SERVING
        degraded_seen = 0
        victim = pids[0]
        for kill in range(3):  # the same process, three times in a row; the 2nd and 3rd while it starts again
            os.kill(victim, signal.SIGKILL)
            child = _wait(lambda v=victim: [c for c in _status(status_path).get("children", [])
                                            if c["index"] == 0 and c["pid"] not in (None, v)], 60,
                          f"restart {kill + 1}")[0]
            victim = child["pid"]
            degraded_seen += health() == health_pb2.HealthCheckResponse.NOT_SERVING
            assert _alive(pids[1]) and supervisor.poll() is None  # the sibling and the supervisor never stop
        status = _status(status_path)
        assert [c["deaths_in_a_row"] for c in status["children"]] == [3, 0]
        assert status["children"][0]["restarts"] == 3 and status["degraded"]
        _wait(lambda: not _status(status_path).get("degraded", True), 180, "all processes ready again")
        _wait(lambda: health() == health_pb2.HealthCheckResponse.SERVING, 10, "health SERVING again")
        calls_before = ok[0]
        _wait(lambda: ok[0] >= calls_before + 20, 60, "calls after the restarts")
        stop.set()
        for t in threads:
            t.join()
        assert degraded_seen >= 1
        total = ok[0] + len(failed)
        assert len(failed) < 0.01 * total, (len(failed), total, failed[:5])
        print(f"\ncrash loop: {ok[0]} calls answered, {len(failed)} failed; health NOT_SERVING seen "
              f"{degraded_seen}/3; status {json.dumps(status['children'][0])}")

        # SIGKILL of the supervisor: its processes go with it
        live = [c["pid"] for c in _status(status_path)["children"]]
        killed_at = time.monotonic()
        supervisor.kill()
        supervisor.wait()
        _wait(lambda: not any(_alive(p) for p in live), 30, "serving processes gone after the supervisor")
        print(f"supervisor SIGKILLed: its processes {live} were gone after {time.monotonic() - killed_at:.1f} s")
    finally:
        if supervisor.poll() is None:
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(timeout=90)
