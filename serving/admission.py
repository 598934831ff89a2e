"""Admission: at most ``slots`` ranking pipelines run at once in a process, the rest wait in arrival order.

A serving process is bound by its GIL. Eight RankFeed calls computing at once do not finish
sooner than eight computed one after another: they interleave, every stage is stretched by
the others (measured at concurrency 8 over two processes: the ``retrieve`` stage's p99 went
from 4 ms with one pipeline at a time to 15-40 ms with eight), and a call can lose the GIL
race over and over, which sets the tail. With one slot, calls are served first come, first
served, so a call's latency is the work queued ahead of it, and the gRPC threads stay free
for health checks and admin calls.

``threading.Semaphore`` would do the counting, but it does not promise an order (a newly
arrived thread can take a released slot before one that has waited longer), which is
exactly the tail this gate is for; hence the hand-over queue below.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from types import TracebackType

from serving.errors import DeadlineExceeded

__all__ = ["FifoGate"]


class FifoGate:
    """A first-come, first-served counting gate.

    Parameters
    ----------
    slots : int
        Holders allowed at once (>= 1).

    Use ``with gate.enter(deadline):`` where ``deadline`` is a ``time.monotonic()`` value or
    None; a call whose deadline passes while it waits raises :class:`DeadlineExceeded` and
    leaves the queue.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.slots = slots
        self._lock = threading.Lock()
        self._free = slots
        self._waiting: deque[tuple[threading.Event, object]] = deque()

    @property
    def waiting(self) -> int:
        """Calls queued for a slot now."""
        return len(self._waiting)

    def queued(self) -> list[object]:
        """The ``ticket`` of each waiting caller that passed one, in arrival order."""
        with self._lock:
            return [ticket for _, ticket in self._waiting if ticket is not None]

    def acquire(self, deadline: float | None = None, ticket: object = None) -> None:
        """Take a slot, waiting behind every earlier caller; raise DeadlineExceeded past ``deadline``.

        ``ticket`` (any object) is what :meth:`queued` shows of this caller while it waits: a
        slot holder may do work for the callers queued behind it (``serving.server`` fetches
        their candidates in one batch with its own).
        """
        with self._lock:
            if self._free > 0 and not self._waiting:
                self._free -= 1
                return
            turn = threading.Event()
            self._waiting.append((turn, ticket))
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if turn.wait(timeout):
            return  # the releasing caller handed its slot over to this one
        with self._lock:
            if turn.is_set():  # handed over between the timeout and the lock
                return
            for i, (event, _) in enumerate(self._waiting):  # by identity: tickets need not compare
                if event is turn:
                    del self._waiting[i]
                    break
        raise DeadlineExceeded("deadline passed while waiting for a ranking slot")

    def release(self) -> None:
        """Give the slot to the longest-waiting caller, or free it."""
        with self._lock:
            if self._waiting:
                self._waiting.popleft()[0].set()
            else:
                self._free += 1

    def enter(self, deadline: float | None = None, ticket: object = None) -> _Held:
        """Context manager: acquire on entry (honouring ``deadline``), release on exit."""
        self.acquire(deadline, ticket)
        return _Held(self)


class _Held:
    def __init__(self, gate: FifoGate) -> None:
        self._gate = gate

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._gate.release()
