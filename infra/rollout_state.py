"""The persisted state of a canary rollout, and the read-only view a serving process reloads.

This module uses only the standard library: a server (or its launcher) reads the rollout with
:func:`current_rollout` without importing MLflow or the statistics stack.

Files under the rollout state folder (``<data_dir>/rollout`` by default):

``state.json``
    The one current rollout, :class:`RolloutState` as JSON (``format_version`` 1). Written to
    a temporary file, fsynced and renamed over the old one, so a reader sees the old or the new
    state, never a torn one; a killed controller leaves the last completed transition.
``audit.jsonl``
    Append-only: one JSON object per line for every transition and every stage evaluation,
    of every rollout (``event``, ``ts``, ``rollout_id``, ``action``, ``reason``, ...).
``.lock``
    ``flock``-ed by a controller while it changes the state, so two controllers (an ``auto``
    loop and a manual ``rollback``) cannot interleave.

Statuses: ``pending`` (created, offline gate not yet decided; never left on disk by a
completed ``start``), ``canary`` (challenger serving ``challenger_share`` of users), ``promoting`` and
``rolling_back`` (a transition written ahead of its registry alias changes; a controller that
finds one finishes it), ``promoted``, ``rolled_back``, ``gate_failed``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "ACTIVE_STATUSES",
    "FINAL_STATUSES",
    "STATE_FORMAT_VERSION",
    "RolloutError",
    "RolloutState",
    "RolloutStateError",
    "RolloutView",
    "StateStore",
    "Transition",
    "current_rollout",
]

STATE_FORMAT_VERSION = 1
STATE_FILE = "state.json"
AUDIT_FILE = "audit.jsonl"
LOCK_FILE = ".lock"

ACTIVE_STATUSES = frozenset({"pending", "canary", "promoting", "rolling_back"})
FINAL_STATUSES = frozenset({"promoted", "rolled_back", "gate_failed"})
_STATUSES = ACTIVE_STATUSES | FINAL_STATUSES


class RolloutError(RuntimeError):
    """Base of the rollout's named errors."""


class RolloutStateError(RolloutError):
    """The state file is unreadable or inconsistent, or another controller holds the lock."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


def parse_iso(value: str) -> datetime:
    ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Transition:
    """One recorded change of a rollout: when, what and why.

    Attributes
    ----------
    ts : str
        ISO-8601 UTC time.
    action : str
        ``start``, ``gate_passed``, ``gate_failed``, ``gate_skipped``, ``advance``, ``promote``,
        ``rollback``, ``resume`` (an interrupted transition finished by a new controller).
    from_status, to_status : str
    stage_index : int
        Stage after the transition (``-1`` before the first stage).
    share : float
        Challenger share after the transition.
    reason : str
        Human-readable why (the failing guardrail, the operator's words, ...).
    """

    ts: str
    action: str
    from_status: str
    to_status: str
    stage_index: int
    share: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RolloutState:
    """Everything a controller needs to resume a rollout, and serving needs to route.

    Attributes
    ----------
    rollout_id : str
        Unique id (``<model>-v<challenger>-<utc time>``).
    model_name : str
        Registered model.
    champion_version : str
        Champion when the rollout started (the baseline, restored on rollback).
    challenger_version : str
    stages : tuple of float
        Shares of this rollout (copied from the configuration at start).
    stage_index : int
        Current stage; ``-1`` before the first.
    challenger_share : float
        Share of users the challenger serves now (0 once rolled back or promoted).
    status : str
        See the module docstring.
    salt : str
        Key of the user hash that splits arms (``serving.routing.arm_for``); one per rollout,
        so successive rollouts do not reuse the same users as their canary.
    stage_started_at : str
        ISO time the current stage began; its evaluation window starts here (plus warm-up).
    looks_done : int
        Evaluations with enough data spent in the current stage (O'Brien-Fleming looks).
    created_at, updated_at : str
    history : tuple of Transition
    """

    rollout_id: str
    model_name: str
    champion_version: str
    challenger_version: str
    stages: tuple[float, ...]
    stage_index: int
    challenger_share: float
    status: str
    salt: str
    stage_started_at: str
    looks_done: int
    created_at: str
    updated_at: str
    history: tuple[Transition, ...] = ()
    format_version: int = STATE_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise RolloutStateError(f"status must be one of {sorted(_STATUSES)}, got {self.status!r}")
        if not -1 <= self.stage_index < len(self.stages):
            raise RolloutStateError(f"stage_index must be in [-1, {len(self.stages)}), got {self.stage_index}")
        if not 0.0 <= self.challenger_share <= 1.0:
            raise RolloutStateError(f"challenger_share must be in [0, 1], got {self.challenger_share}")

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def stage_share(self) -> float:
        """Share of the current stage (0 before the first)."""
        return self.stages[self.stage_index] if self.stage_index >= 0 else 0.0

    def with_transition(self, *, action: str, to_status: str, stage_index: int, share: float, reason: str,
                        now: datetime, stage_started: bool = False) -> RolloutState:
        """A copy after one transition, with the transition appended to the history."""
        t = Transition(ts=iso(now), action=action, from_status=self.status, to_status=to_status,
                       stage_index=stage_index, share=share, reason=reason)
        return dataclasses.replace(
            self, status=to_status, stage_index=stage_index, challenger_share=share, updated_at=t.ts,
            stage_started_at=t.ts if stage_started else self.stage_started_at,
            looks_done=0 if stage_started else self.looks_done, history=(*self.history, t))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["stages"] = list(self.stages)
        data["history"] = [t.to_dict() for t in self.history]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutState:
        if data.get("format_version") != STATE_FORMAT_VERSION:
            raise RolloutStateError(
                f"format_version must be {STATE_FORMAT_VERSION}, got {data.get('format_version')!r}")
        try:
            fields = {f.name for f in dataclasses.fields(cls)}
            values = {k: v for k, v in data.items() if k in fields}
            values["stages"] = tuple(float(s) for s in data["stages"])
            values["history"] = tuple(Transition(**t) for t in data.get("history", ()))
            return cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise RolloutStateError(f"rollout state is malformed: {exc}") from exc


@dataclass(frozen=True)
class RolloutView:
    """What a serving process needs: which versions serve which share, with which salt.

    ``champion_version`` serves everyone not routed to the challenger; when
    ``challenger_version`` is None or ``challenger_share`` is 0 the champion serves all users.
    ``champion_version`` is None when no rollout was ever run (then follow the registry's
    ``champion`` alias).
    """

    status: str
    champion_version: str | None
    challenger_version: str | None
    challenger_share: float
    salt: str | None
    stage_index: int
    rollout_id: str | None
    updated_at: str | None

    @classmethod
    def from_state(cls, state: RolloutState | None) -> RolloutView:
        if state is None:
            return cls("none", None, None, 0.0, None, -1, None, None)
        if state.status in ("promoted",):
            champion, challenger, share = state.challenger_version, None, 0.0
        elif state.status in ("rolled_back", "gate_failed", "rolling_back"):
            champion, challenger, share = state.champion_version, None, 0.0
        else:  # canary, promoting
            champion, challenger, share = state.champion_version, state.challenger_version, state.challenger_share
        return cls(status=state.status, champion_version=champion, challenger_version=challenger,
                   challenger_share=share, salt=state.salt, stage_index=state.stage_index,
                   rollout_id=state.rollout_id, updated_at=state.updated_at)


def current_rollout(state_dir: str | os.PathLike[str]) -> RolloutView:
    """Read the rollout a server should apply now (cheap: one small JSON file, no lock).

    Parameters
    ----------
    state_dir : path
        The rollout state folder (``<infra.data_dir>/<infra.rollout.state_dir>``).

    Returns
    -------
    RolloutView
        ``status="none"`` with share 0 when no rollout was ever started.

    Raises
    ------
    RolloutStateError
        If the state file exists but cannot be parsed.
    """
    return RolloutView.from_state(StateStore(state_dir).load())


class StateStore:
    """Atomic JSON state, append-only audit log and an exclusive lock in one folder.

    Parameters
    ----------
    state_dir : path
        Created on the first write.
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir)

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    @property
    def audit_path(self) -> Path:
        return self.state_dir / AUDIT_FILE

    def load(self) -> RolloutState | None:
        """The saved state, or None if no rollout was ever started."""
        try:
            text = self.state_path.read_text()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RolloutStateError(f"{self.state_path} is not valid JSON: {exc}") from exc
        return RolloutState.from_dict(data)

    def save(self, state: RolloutState) -> None:
        """Replace the state atomically (temporary file, fsync, rename, fsync of the folder)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / f".{STATE_FILE}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            json.dump(state.to_dict(), fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)
        _fsync_dir(self.state_dir)

    def append_audit(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line to the audit log and fsync it."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(dict(record), default=str, sort_keys=True)
        with open(self.audit_path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_audit(self) -> list[dict[str, Any]]:
        """All audit records, oldest first (empty if none)."""
        try:
            lines = self.audit_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder; raises :class:`RolloutStateError` if another holds it."""
        import fcntl

        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / LOCK_FILE, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RolloutStateError(
                    f"another rollout controller holds {self.state_dir / LOCK_FILE}; try again when it is done"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
