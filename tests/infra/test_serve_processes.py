"""``feedrank serve --processes 2``: two serving processes on one port (or a port each), as a user starts them.

The real command runs in a subprocess on the session's trained bundle (registry, Feast store);
calls over many connections all succeed, both processes answer some of them (each process's
request log names its pid), and SIGTERM stops everything with exit code 0.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest
import yaml

from infra.serve import data_path
from serving.client import FeedClient

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(config, tmp_path: Path, processes: int) -> tuple[subprocess.Popen, Path]:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    out = tmp_path / "serve.out"
    proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "--config", str(config_file), "serve",
                             "--processes", str(processes)], cwd=REPO, stdout=out.open("w"),
                            stderr=subprocess.STDOUT)
    return proc, out


def _wait_for(proc: subprocess.Popen, out: Path, pattern: str, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, out.read_text())
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"feedrank serve exited with {proc.returncode}:\n{out.read_text()[-3000:]}")
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"no {pattern!r} within {timeout:.0f} s:\n{out.read_text()[-3000:]}")


def _free_port_pair() -> int:
    """A port p with p and p + 1 both free."""
    for _ in range(50):
        port = _free_port()
        if port < 65535:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    pytest.fail("no two consecutive free ports")


@pytest.mark.parametrize("port_per_process", [False, True], ids=["shared-port", "port-each"])
def test_two_serving_processes_share_the_port_and_stop_on_sigterm(trained, tmp_path, port_per_process):
    base, report, _ = trained
    port = _free_port_pair() if port_per_process else _free_port()
    config = dataclasses.replace(
        base, infra=dataclasses.replace(base.infra, data_dir=str(tmp_path / "data")),
        serving=dataclasses.replace(base.serving, port=port, processes=2, port_per_process=port_per_process))
    # the session's registry and trained features, in a data dir of this test's own (logs land there)
    (tmp_path / "data").mkdir()
    for name in ("mlflow", "train"):
        (tmp_path / "data" / name).symlink_to(Path(base.infra.data_dir) / name)
    proc, out = _start(config, tmp_path, 2)
    try:
        ready = _wait_for(proc, out, r"with 2 processes \(pids (\d+), (\d+)\)", timeout=240)
        pids = {int(ready.group(1)), int(ready.group(2))}
        users = [str(u) for u in range(1, 25)] + ["999999999"]  # the last one is unknown: cold start
        for i, user in enumerate(users):  # a connection per call: the kernel spreads them over the two sockets
            with FeedClient(f"127.0.0.1:{port + (i % 2 if port_per_process else 0)}") as client:
                feed = client.rank(user, k=5)
                assert len(feed.items) == 5
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, out.read_text()[-3000:]
    for pid in pids:  # both processes are gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    logs = sorted(data_path(config, "serving").rglob("part-*.parquet"))
    served_by = {int(re.match(r"part-\d+-(\d+)-", f.name).group(1)) for f in logs}
    assert served_by == pids, f"log files {[f.name for f in logs]}"
    requests = sum(pq.read_metadata(f).num_rows for f in logs if "request" in str(f.parent))
    assert requests >= len(users)


def test_more_processes_need_a_fixed_port(trained, tmp_path):
    base, _, _ = trained
    config = dataclasses.replace(base, serving=dataclasses.replace(base.serving, port=0))
    proc, out = _start(config, tmp_path, 2)
    assert proc.wait(timeout=120) == 2
    assert "> 1 needs a fixed --port (not 0)" in out.read_text()


def test_the_processes_stop_when_one_fails_to_start(trained, tmp_path):
    base, _, _ = trained
    port = _free_port()
    # a registry with no model in it: every serving process fails while loading its champion
    config = dataclasses.replace(
        base, infra=dataclasses.replace(base.infra, data_dir=str(tmp_path / "empty")),
        serving=dataclasses.replace(base.serving, port=port))
    proc, out = _start(config, tmp_path, 2)
    assert proc.wait(timeout=180) == 1, out.read_text()[-3000:]
    assert "serving process 0" in out.read_text() and "failed to start" in out.read_text()
    with pytest.raises(grpc.RpcError), FeedClient(f"127.0.0.1:{port}", timeout=2.0) as client:
        client.rank("1", k=5)


def test_ports_past_the_last_one_are_refused_with_the_reason(capsys):
    from infra.cli import main

    assert main(["serve", "--processes", "3", "--port", "65534", "--port-per-process"]) == 2
    assert "port must be <= 65533 with a port per process, got 65534" in capsys.readouterr().err
