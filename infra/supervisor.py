"""``feedrank serve --processes N``: the supervisor of N serving processes on one port.

Each process is a whole ``feedrank serve`` (its own router, rollout watcher, logs and, when
``metrics_port`` is set, Prometheus port ``metrics_port + index``); they bind the same port,
which gRPC opens with SO_REUSEPORT on Linux, so the kernel spreads connections over them
(with ``port_per_process``, process ``index`` binds ``port + index`` instead).

What the supervisor guarantees:

* **Start**: the processes start one after another, each once the previous one accepts calls;
  one that fails to start then (a configuration or registry problem every copy would share)
  stops them all, exit code 1.
* **Restarts never take the healthy ones down**: a process that dies later is started again
  after a back-off that doubles with each death in a row (``backoff_seconds``, 2x, 4x ... up
  to ``max_backoff_seconds``; reset once a process stays up ``stable_seconds``). Its siblings
  keep serving all along; a crash loop costs only the crashing process.
* **Health shows it**: the supervisor writes ``processes-<port>.json`` (each process's pid,
  state, restarts, last exit code; ``degraded`` while fewer than N are ready) and every serving
  process reports it through the gRPC health service :data:`PROCESSES_HEALTH_SERVICE`
  (SERVING when all N are ready, NOT_SERVING while degraded), the overall health staying
  SERVING so balancers keep sending calls to the processes that work.
* **Nothing outlives it**: each process asks the kernel for SIGTERM when the supervisor dies
  (``PR_SET_PDEATHSIG``, :func:`serving.bundle_check.die_with_parent`), so a SIGKILLed
  supervisor leaves no orphan serving its port; SIGTERM/SIGINT are passed on and each process
  drains its calls within ``grace_seconds``.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.config import ServingConfig

__all__ = ["PARENT_PID_ENV", "PROCESSES_HEALTH_SERVICE", "READY_FD_ENV", "WORKER_ENV", "ProcessesHealth",
           "Supervisor", "status_file"]

logger = logging.getLogger("feedrank")

# Set in the serving processes the supervisor starts: the process's index, the file descriptor on
# which it reports its port once it accepts calls, and the supervisor's pid (to die with it).
WORKER_ENV = "FEEDRANK_SERVE_WORKER"
READY_FD_ENV = "FEEDRANK_SERVE_READY_FD"
PARENT_PID_ENV = "FEEDRANK_SERVE_PARENT_PID"
#: gRPC health service name whose status says whether all the supervisor's processes are ready.
PROCESSES_HEALTH_SERVICE = "feedrank.serving.processes"


def status_file(log_dir: str | os.PathLike[str], port: int) -> Path:
    """Where the supervisor of ``port`` writes its processes' status."""
    return Path(log_dir) / f"processes-{port}.json"


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen | None = None
    pipe: Any = None  # the ready pipe while the process starts
    ready_at: float | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    deaths_in_a_row: int = 0
    restarts: int = 0
    last_exit: int | None = None
    history: list[str] = field(default_factory=list)

    def popen(self) -> subprocess.Popen:
        """The process (started at least once)."""
        if self.proc is None:
            raise RuntimeError(f"serving process {self.index} was never started")
        return self.proc

    @property
    def state(self) -> str:
        if self.restart_at is not None:
            return "backing_off"
        if self.ready_at is not None:
            return "ready"
        return "starting" if self.proc is not None else "stopped"


class Supervisor:
    """Runs ``cfg.processes`` copies of a ``feedrank serve`` command (module docstring).

    Parameters
    ----------
    cfg : ServingConfig
    argv : list of str
        The ``feedrank`` arguments each copy runs with (``python -m infra.cli <argv>``).
    status_path : path
        Where the processes' status JSON is written.
    backoff_seconds, max_backoff_seconds, stable_seconds : float
        Restart back-off: ``backoff_seconds * 2**(deaths in a row - 1)``, at most
        ``max_backoff_seconds``; a process up ``stable_seconds`` starts the count again.
    """

    def __init__(self, cfg: ServingConfig, argv: list[str], status_path: Path, *, backoff_seconds: float = 1.0,
                 max_backoff_seconds: float = 60.0, stable_seconds: float = 30.0) -> None:
        if not 0 < backoff_seconds <= max_backoff_seconds:
            raise ValueError(f"backoff_seconds must be in (0, max_backoff_seconds], got {backoff_seconds!r}")
        self.cfg = cfg
        self.argv = argv
        self.status_path = status_path
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.stable_seconds = stable_seconds
        self.slots = [_Slot(i) for i in range(cfg.processes)]
        self.stop = threading.Event()

    # ------------------------------------------------------------------ processes
    def _spawn(self, slot: _Slot) -> None:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, WORKER_ENV: str(slot.index), READY_FD_ENV: str(write_fd),
               PARENT_PID_ENV: str(os.getpid())}
        slot.proc = subprocess.Popen([sys.executable, "-m", "infra.cli", *self.argv], env=env, pass_fds=(write_fd,))
        os.close(write_fd)
        slot.pipe = os.fdopen(read_fd)
        slot.ready_at, slot.restart_at = None, None
        slot.started_at = time.monotonic()

    def _poll_ready(self, slots: list[_Slot], timeout: float) -> None:
        """Wait up to ``timeout`` for starting processes to report ready (or to close their pipe)."""
        pipes = {s.pipe: s for s in slots if s.pipe is not None}
        if not pipes:
            self.stop.wait(timeout)
            return
        for pipe in select.select(list(pipes), [], [], timeout)[0]:
            slot = pipes[pipe]
            line = pipe.readline().strip()  # the port; "" when the process exited first
            pipe.close()
            slot.pipe = None
            if line:
                slot.ready_at = time.monotonic()
                logger.info("serving process %d (pid %d) is ready", slot.index, slot.popen().pid)
                self._write_status()

    def _start_in_order(self) -> bool:
        """Start every process, each once the previous accepts calls; False if one exits first (or on stop)."""
        for slot in self.slots:
            self._spawn(slot)
            while slot.ready_at is None and not self.stop.is_set():
                self._poll_ready([slot], 0.5)
                if slot.ready_at is None and slot.pipe is None:  # exited before it was ready
                    print(f"feedrank serve: serving process {slot.index} (pid {slot.popen().pid}) failed to start "
                          f"(exit code {slot.popen().wait()}); stopping", file=sys.stderr)
                    return False
            if self.stop.is_set():
                return False
        return True

    def _reap(self, slot: _Slot, now: float) -> None:
        """A process died: schedule its restart after the back-off; its siblings are untouched."""
        code = slot.popen().wait()
        if slot.pipe is not None:
            slot.pipe.close()
            slot.pipe = None
        up = now - (slot.ready_at if slot.ready_at is not None else slot.started_at)
        slot.deaths_in_a_row = 1 if (slot.ready_at is not None and up >= self.stable_seconds) \
            else slot.deaths_in_a_row + 1
        delay = min(self.backoff_seconds * 2 ** (slot.deaths_in_a_row - 1), self.max_backoff_seconds)
        slot.last_exit, slot.ready_at, slot.restart_at = code, None, now + delay
        slot.history.append(f"exit {code} after {up:.1f} s")
        ready = sum(s.state == "ready" for s in self.slots)
        logger.error("serving process %d (pid %d) exited with %d after %.1f s (%d in a row); starting it again in "
                     "%.1f s; %d of %d processes serve meanwhile", slot.index, slot.popen().pid, code, up,
                     slot.deaths_in_a_row, delay, ready, len(self.slots))
        self._write_status()

    def _write_status(self) -> None:
        ready = sum(s.state == "ready" for s in self.slots)
        status = {"supervisor_pid": os.getpid(), "port": self.cfg.port, "processes": len(self.slots),
                  "ready": ready, "degraded": ready < len(self.slots), "updated_at": time.time(),
                  "children": [{"index": s.index, "pid": s.proc.pid if s.proc else None, "state": s.state,
                                "restarts": s.restarts, "deaths_in_a_row": s.deaths_in_a_row,
                                "last_exit": s.last_exit, "history": s.history[-5:]} for s in self.slots]}
        self.status_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.status_path.with_name(f".{self.status_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(status, indent=1) + "\n")
        os.replace(tmp, self.status_path)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while not self.stop.is_set():
            self._poll_ready([s for s in self.slots if s.pipe is not None], 0.25)
            now = time.monotonic()
            for slot in self.slots:
                if slot.proc is not None and slot.restart_at is None and slot.proc.poll() is not None:
                    self._reap(slot, now)
                elif slot.restart_at is not None and now >= slot.restart_at and not self.stop.is_set():
                    slot.restarts += 1
                    self._spawn(slot)
                    logger.warning("serving process %d restarted (pid %d, restart %d)", slot.index, slot.popen().pid,
                                   slot.restarts)
                    self._write_status()

    def run(self) -> int:
        """Start, supervise until SIGTERM/SIGINT, stop; the exit code (0 when all stopped cleanly)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        code = 0
        try:
            if not self._start_in_order():
                code = 0 if self.stop.is_set() else 1
            else:
                self._write_status()
                where = (f"ports {self.cfg.port}-{self.cfg.port + self.cfg.processes - 1} (one each)"
                         if self.cfg.port_per_process else f"{self.cfg.host}:{self.cfg.port}")
                print(f"serving on {where} with {self.cfg.processes} processes "
                      f"(pids {', '.join(str(s.popen().pid) for s in self.slots)}); Ctrl-C stops", flush=True)
                self._loop()
        finally:
            procs = [s.proc for s in self.slots if s.proc is not None]
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.cfg.grace_seconds + 30.0  # a process may still be loading models
            for proc in procs:
                try:
                    proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    logger.error("serving process pid %d did not stop; killing it", proc.pid)
                    proc.kill()
                    proc.wait()
            for slot in self.slots:
                if slot.pipe is not None:
                    slot.pipe.close()
            self.status_path.unlink(missing_ok=True)
        if code == 0 and any(s.proc is not None and s.restart_at is None and s.proc.returncode != 0
                             for s in self.slots):
            print("feedrank serve: a serving process did not stop cleanly (exit codes "
                  f"{[s.proc.returncode for s in self.slots if s.proc is not None]})", file=sys.stderr)
            return 1
        return code


class ProcessesHealth:
    """Keeps :data:`PROCESSES_HEALTH_SERVICE` of a serving process's health service in step with the
    supervisor's status file (polled every ``interval_seconds`` from a daemon thread).

    Parameters
    ----------
    health_servicer : grpc_health.v1.health.HealthServicer
    path : path
        The supervisor's status file (:func:`status_file`).
    """

    def __init__(self, health_servicer: Any, path: Path, *, interval_seconds: float = 1.0) -> None:
        self.health_servicer = health_servicer
        self.path = path
        self.interval_seconds = interval_seconds
        self._stop = threading.Event()

    def check(self) -> bool | None:
        """Read the status file and set the health status; True when degraded (None: no status yet)."""
        from grpc_health.v1 import health_pb2

        try:
            degraded = bool(json.loads(self.path.read_text())["degraded"])
        except (FileNotFoundError, ValueError, KeyError):
            return None
        self.health_servicer.set(PROCESSES_HEALTH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING if degraded
                                 else health_pb2.HealthCheckResponse.SERVING)
        return degraded

    def start(self) -> ProcessesHealth:
        def run() -> None:
            while not self._stop.wait(self.interval_seconds):
                self.check()

        self.check()
        threading.Thread(target=run, name="processes-health", daemon=True).start()
        return self

    def close(self) -> None:
        self._stop.set()
