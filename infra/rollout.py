"""The canary rollout controller: offline gate, stages, automatic rollback, promotion.

A rollout moves the registry's ``challenger`` through the configured shares of users
(5 % -> 25 % -> 50 % -> 100 % by default)::

    start ── offline DR gate ──fail──> gate_failed   (challenger alias removed)
                 │pass
                 ▼
    canary, stage 0 ──evaluate──> hold (same stage; a look spent if there was enough data)
         │         └────────────> rollback ──> rolling_back ──aliases restored──> rolled_back
         │advance
         ▼
    canary, stage 1 ... last stage (1.0) = promoting ──champion alias moved──> promoted

What an evaluation tests and why is in :mod:`infra.canary`; which logs it reads (and the
request-metrics schema serving writes) in :mod:`infra.stage_logs`.

Durability. The state (:mod:`infra.rollout_state`) is written atomically before the registry
is touched, so the share serving reads drops to 0 the moment a rollback is decided, even if
the registry is unreachable. Transitions whose registry half is still to do are written as
``rolling_back``/``promoting``; any controller that later takes the lock finishes them first
(registry alias operations are idempotent). A controller killed at any point therefore resumes
at the recorded stage: a new instance reads the same ``state.json``. Each transition is also
appended to ``audit.jsonl`` and mirrored as ``feedrank.rollout.*`` tags on the challenger's
model version (a failing mirror is logged and rewritten at the next transition; the state file
is the source of truth).

Serving reads :func:`infra.rollout_state.current_rollout` (no MLflow import) on reload.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from infra.release_config import RolloutConfig
from infra.rollout_state import (
    RolloutError,
    RolloutState,
    StateStore,
    iso,
    parse_iso,
    utc_now,
)

if TYPE_CHECKING:
    from infra.canary import OfflineGateInput, StageEvaluation
    from infra.stage_logs import StageLogs

__all__ = [
    "NoActiveRolloutError",
    "NoChallengerError",
    "NoChampionError",
    "OfflineGateRequiredError",
    "ReleaseRegistry",
    "RolloutController",
    "RolloutInProgressError",
    "RolloutTimeoutError",
    "StepResult",
]

logger = logging.getLogger(__name__)

_CHAMPION, _CHALLENGER = "champion", "challenger"
_TAG = "feedrank.rollout."


class NoActiveRolloutError(RolloutError):
    """The operation needs a running rollout and there is none."""


class RolloutInProgressError(RolloutError):
    """A rollout is already running; finish or roll it back first."""


class NoChampionError(RolloutError):
    """There is no champion to compare with (use ``start --initial`` for the first model)."""


class NoChallengerError(RolloutError):
    """No challenger version was given and none holds the ``challenger`` alias."""


class OfflineGateRequiredError(RolloutError):
    """``start`` got neither offline-gate data nor an explicit, recorded reason to skip the gate."""


class RolloutTimeoutError(RolloutError):
    """``auto`` waited ``max_wait_seconds`` without the rollout finishing; the state is unchanged."""


class ReleaseRegistry(Protocol):
    """What the controller needs from the registry (:class:`infra.registry.FeedRegistry` provides it)."""

    @property
    def model_name(self) -> str: ...

    def alias_version(self, alias: str) -> str | None: ...

    def set_tags(self, version: str, tags: Mapping[str, str]) -> None: ...

    def promote(self, version: str, *, reason: str) -> None: ...

    def reject(self, version: str, *, reason: str) -> None: ...

    def rollback(self, *, reason: str, to_version: str | None = None) -> str: ...


@dataclass(frozen=True)
class StepResult:
    """One evaluate-and-act step: what was concluded and the state afterwards."""

    evaluation: StageEvaluation
    state: RolloutState


def _resolve(data_dir: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else data_dir / p


class RolloutController:
    """Drives one rollout at a time; every method re-reads the persisted state, so instances are cheap.

    Parameters
    ----------
    config : RolloutConfig
    registry : ReleaseRegistry
        Usually :class:`infra.registry.FeedRegistry`.
    data_dir : path
        ``infra.data_dir``; relative folders of ``config`` are resolved against it.
    clock : callable returning an aware datetime, optional
        Current time (UTC); injectable for replaying logs.
    """

    def __init__(self, config: RolloutConfig, registry: ReleaseRegistry, *, data_dir: str | os.PathLike[str],
                 clock: Callable[[], datetime] = utc_now) -> None:
        if not isinstance(config, RolloutConfig):
            raise TypeError(f"config must be a RolloutConfig, got {type(config).__name__}")
        self.config = config
        self.registry = registry
        self.data_dir = Path(data_dir)
        self.clock = clock
        self.store = StateStore(_resolve(self.data_dir, config.state_dir))
        self._mirrored: set[tuple[str, int]] = set()  # transitions this instance has tagged

    # ------------------------------------------------------------------ reading
    def status(self) -> RolloutState | None:
        """The persisted state (None if no rollout was ever started); does not change anything."""
        return self.store.load()

    def evaluation_window(self, state: RolloutState) -> tuple[datetime, datetime]:
        """``[stage start + warm-up, now)``: the current stage's data, both arms over the same time."""
        start = parse_iso(state.stage_started_at) + timedelta(seconds=self.config.warmup_seconds)
        return start, self.clock()

    def read_logs(self, start: datetime, end: datetime) -> StageLogs:
        """Read the configured impression, event and request-metrics folders for ``[start, end)``."""
        from infra.stage_logs import read_stage_logs

        cfg = self.config
        return read_stage_logs(impressions_dir=_resolve(self.data_dir, cfg.impressions_dir),
                               events_dir=_resolve(self.data_dir, cfg.events_dir),
                               requests_dir=_resolve(self.data_dir, cfg.requests_dir), start=start, end=end)

    def evaluate(self, logs: StageLogs | None = None) -> StageEvaluation:
        """Evaluate the current stage without acting on it (no look is spent).

        Parameters
        ----------
        logs : StageLogs, optional
            Logs to judge (cut to the stage window here); default: read the configured folders.

        Raises
        ------
        NoActiveRolloutError
            If no rollout is in its canary stages.
        """
        state = self.store.load()
        if state is None or state.status != "canary":
            raise NoActiveRolloutError(f"no rollout in its canary stages (status: {state.status if state else 'none'})")
        return self._evaluate(state, logs)

    def _evaluate(self, state: RolloutState, logs: StageLogs | None) -> StageEvaluation:
        from infra.canary import StageEvaluation, evaluate_stage

        start, end = self.evaluation_window(state)
        if end <= start:
            return StageEvaluation("hold", f"stage warming up until {iso(start)}", None,
                                   self.config.looks_per_stage, None)
        window = self.read_logs(start, end) if logs is None else logs.window(start, end)
        look = min(state.looks_done + 1, self.config.looks_per_stage)
        return evaluate_stage(window, config=self.config, share=state.stage_share, look=look)

    # ------------------------------------------------------------------ transitions
    @contextmanager
    def _locked(self) -> Iterator[RolloutState | None]:
        """Hold the lock, load the state and finish any transition a killed controller left half-done."""
        with self.store.lock():
            state = self.store.load()
            if state is not None and state.status == "promoting":
                logger.warning("finishing the promotion of rollout %s left by an earlier controller", state.rollout_id)
                state = self._finish_promotion(state, "resumed: " + state.history[-1].reason)
            elif state is not None and state.status == "rolling_back":
                logger.warning("finishing the rollback of rollout %s left by an earlier controller", state.rollout_id)
                state = self._finish_rollback(state, "resumed: " + state.history[-1].reason)
            elif state is not None and state.status == "pending" and state.history:
                logger.warning("starting the first stage of rollout %s left by an earlier controller", state.rollout_id)
                state = self._advance(state, f"resumed: canary starts at {state.stages[0]:.0%}")
            yield state

    def _commit(self, state: RolloutState, *, extra: Mapping[str, Any] | None = None) -> RolloutState:
        """Persist the state, append its last transition to the audit log, mirror it to the registry."""
        self.store.save(state)
        t = state.history[-1]
        self.store.append_audit({"event": "transition", "rollout_id": state.rollout_id, "model": state.model_name,
                                 "champion_version": state.champion_version,
                                 "challenger_version": state.challenger_version, **t.to_dict(),
                                 **({"details": dict(extra)} if extra else {})})
        self._mirror(state)
        logger.info("rollout %s: %s -> %s (stage %d, share %.0f%%): %s", state.rollout_id, t.from_status,
                    t.to_status, t.stage_index, 100 * t.share, t.reason)
        return state

    def _mirror(self, state: RolloutState) -> None:
        """Tag the challenger's version: status, a JSON summary and one tag per transition.

        A controller instance writes every transition tag on its first mirror (repairing any a
        failed mirror missed) and only the new ones after that.
        """
        last = state.history[-1] if state.history else None
        summary = {"rollout_id": state.rollout_id, "stage_index": state.stage_index,
                   "share": state.challenger_share, "champion_version": state.champion_version,
                   "updated_at": state.updated_at, "last_action": last.action if last else None,
                   "last_reason": last.reason if last else None}
        tags = {f"{_TAG}id": state.rollout_id, f"{_TAG}status": state.status,
                f"{_TAG}summary": json.dumps(summary)[:8000]}
        for i, t in enumerate(state.history):
            if (state.rollout_id, i) not in self._mirrored:
                tags[f"{_TAG}transition.{i:03d}"] = json.dumps(t.to_dict())[:8000]
        try:
            self.registry.set_tags(state.challenger_version, tags)
        except Exception as exc:  # noqa: BLE001 - the state file is authoritative; never block a transition
            logger.warning("could not mirror rollout %s to registry tags (will retry at the next transition): %s",
                           state.rollout_id, exc)
            return
        self._mirrored.update((state.rollout_id, i) for i in range(len(state.history)))

    def _finish_promotion(self, state: RolloutState, reason: str) -> RolloutState:
        self.registry.promote(state.challenger_version, reason=reason)
        done = state.with_transition(action="promote", to_status="promoted", stage_index=state.stage_index,
                                     share=1.0, reason=f"champion alias moved to version {state.challenger_version}",
                                     now=self.clock())
        return self._commit(done)

    def _finish_rollback(self, state: RolloutState, reason: str) -> RolloutState:
        self.registry.reject(state.challenger_version, reason=reason)
        if self.registry.alias_version(_CHAMPION) != state.champion_version:
            self.registry.rollback(reason=reason, to_version=state.champion_version)
        done = state.with_transition(action="aliases_restored", to_status="rolled_back", stage_index=state.stage_index,
                                     share=0.0, reason=f"champion is version {state.champion_version}, challenger "
                                                       f"alias removed from version {state.challenger_version}",
                                     now=self.clock())
        return self._commit(done)

    def _rollback(self, state: RolloutState, reason: str, extra: Mapping[str, Any] | None = None) -> RolloutState:
        pending = state.with_transition(action="rollback", to_status="rolling_back", stage_index=state.stage_index,
                                        share=0.0, reason=reason, now=self.clock())
        self._commit(pending, extra=extra)  # share 0 is on disk before the registry is touched
        return self._finish_rollback(pending, reason)

    def _advance(self, state: RolloutState, reason: str, extra: Mapping[str, Any] | None = None) -> RolloutState:
        nxt = state.stage_index + 1
        share = state.stages[nxt]
        if share >= 1.0:
            pending = state.with_transition(action="advance", to_status="promoting", stage_index=nxt, share=share,
                                            reason=reason, now=self.clock(), stage_started=True)
            self._commit(pending, extra=extra)
            return self._finish_promotion(pending, reason)
        moved = state.with_transition(action="advance", to_status="canary", stage_index=nxt, share=share,
                                      reason=reason, now=self.clock(), stage_started=True)
        return self._commit(moved, extra=extra)

    # ------------------------------------------------------------------ commands
    def start(self, *, challenger_version: str | None = None, gate: OfflineGateInput | None = None,
              skip_gate_reason: str | None = None, initial: bool = False) -> RolloutState:
        """Start a rollout of the challenger against the current champion.

        Parameters
        ----------
        challenger_version : str, optional
            Default: the version holding the ``challenger`` alias.
        gate : OfflineGateInput, optional
            Logged data and both policies' distributions for the offline DR gate.
        skip_gate_reason : str, optional
            Start without the offline gate; the reason is recorded (e.g. "no champion logs yet").
        initial : bool
            There is no champion yet: promote the challenger directly (nothing to compare with).

        Returns
        -------
        RolloutState
            ``canary`` at stage 0, ``gate_failed`` (the challenger alias is removed), or
            ``promoted`` for ``initial``.

        Raises
        ------
        RolloutInProgressError, NoChallengerError, NoChampionError, OfflineGateRequiredError
        """
        with self._locked() as previous:
            if previous is not None and previous.active:
                raise RolloutInProgressError(
                    f"rollout {previous.rollout_id} is {previous.status} at stage {previous.stage_index}")
            challenger = challenger_version or self.registry.alias_version(_CHALLENGER)
            if challenger is None:
                raise NoChallengerError(f"{self.registry.model_name} has no version with alias 'challenger'")
            champion = self.registry.alias_version(_CHAMPION)
            if initial:
                if champion is not None:
                    raise RolloutInProgressError(f"--initial is for the first model; version {champion} is champion")
                champion = challenger
            elif champion is None:
                raise NoChampionError(f"{self.registry.model_name} has no champion; promote the first model with "
                                      "`feedrank rollout start --initial`")
            elif champion == str(challenger):
                raise NoChallengerError(f"version {challenger} is already the champion")
            if not initial and gate is None and not skip_gate_reason:
                raise OfflineGateRequiredError("give offline-gate data, or a reason to skip the gate")
            state = self._new_state(str(champion), str(challenger))
            if initial:
                pending = state.with_transition(action="start", to_status="promoting", stage_index=len(state.stages) - 1,
                                                share=1.0, reason="initial model: no champion to compare with",
                                                now=self.clock(), stage_started=True)
                self._commit(pending)
                return self._finish_promotion(pending, "initial model")
            if gate is not None:
                return self._gate(state, gate)
            skipped = state.with_transition(action="gate_skipped", to_status="pending", stage_index=-1, share=0.0,
                                            reason=f"offline gate skipped: {skip_gate_reason}", now=self.clock())
            self._commit(skipped)
            return self._advance(skipped, f"canary starts at {skipped.stages[0]:.0%}")

    def _new_state(self, champion: str, challenger: str) -> RolloutState:
        now = self.clock()
        rollout_id = f"{self.registry.model_name}-v{challenger}-{now:%Y%m%dT%H%M%SZ}"
        salt = "rollout-" + hashlib.sha256(rollout_id.encode()).hexdigest()[:32]
        return RolloutState(rollout_id=rollout_id, model_name=self.registry.model_name, champion_version=champion,
                            challenger_version=challenger, stages=tuple(self.config.stages), stage_index=-1,
                            challenger_share=0.0, status="pending", salt=salt, stage_started_at=iso(now), looks_done=0,
                            created_at=iso(now), updated_at=iso(now))

    def _gate(self, state: RolloutState, gate: OfflineGateInput) -> RolloutState:
        from infra.canary import offline_gate

        result = offline_gate(gate, tolerance=self.config.offline_gate_tolerance,
                              n_bootstrap=self.config.n_bootstrap, random_state=self.config.seed)
        details = result.to_dict()
        if not result.passed:
            failed = state.with_transition(action="gate_failed", to_status="gate_failed", stage_index=-1, share=0.0,
                                           reason=result.reason, now=self.clock())
            self.registry.reject(state.challenger_version, reason=result.reason)
            return self._commit(failed, extra=details)
        passed = state.with_transition(action="gate_passed", to_status="pending", stage_index=-1, share=0.0,
                                       reason=result.reason, now=self.clock())
        self._commit(passed, extra=details)
        return self._advance(passed, f"canary starts at {passed.stages[0]:.0%}")

    def resume(self) -> RolloutState | None:
        """Finish a transition a killed controller left half-done (if any) and return the state."""
        with self._locked() as state:
            return state

    def step(self, logs: StageLogs | None = None) -> StepResult:
        """Evaluate the current stage and act: advance (promote after the last), roll back, or hold.

        A hold that ran the tests spends one of the stage's looks (persisted).

        Raises
        ------
        NoActiveRolloutError
            If no rollout is in its canary stages.
        """
        with self._locked() as state:
            if state is None or state.status != "canary":
                raise NoActiveRolloutError(
                    f"no rollout in its canary stages (status: {state.status if state else 'none'})")
            ev = self._evaluate(state, logs)
            record = {"event": "evaluation", "ts": iso(self.clock()), "rollout_id": state.rollout_id,
                      "stage_index": state.stage_index, "share": state.challenger_share, **ev.to_dict()}
            self.store.append_audit(record)
            if ev.decision == "rollback":
                return StepResult(ev, self._rollback(state, ev.reason, extra=ev.to_dict()))
            if ev.decision == "advance":
                return StepResult(ev, self._advance(state, ev.reason, extra=ev.to_dict()))
            if ev.look is not None:
                state = replace(state, looks_done=ev.look, updated_at=iso(self.clock()))
                self.store.save(state)
            return StepResult(ev, state)

    def advance(self, *, reason: str) -> RolloutState:
        """Operator override: move to the next stage without an evaluation (the reason is recorded)."""
        if not reason.strip():
            raise ValueError("reason must say why the stage is advanced without an evaluation")
        with self._locked() as state:
            if state is None or state.status != "canary":
                raise NoActiveRolloutError(
                    f"no rollout in its canary stages (status: {state.status if state else 'none'})")
            return self._advance(state, f"manual: {reason}")

    def rollback(self, *, reason: str) -> RolloutState:
        """Roll back now: share to 0, the challenger alias removed, the recorded champion restored.

        Works during the canary and after a promotion (then the champion from before the
        rollout is restored).

        Raises
        ------
        NoActiveRolloutError
            If there is nothing to roll back (no rollout, or already rolled back / gate failed).
        """
        if not reason.strip():
            raise ValueError("reason must say why the rollout is rolled back")
        with self._locked() as state:
            if state is None or state.status not in ("canary", "pending", "promoted"):
                raise NoActiveRolloutError(f"nothing to roll back (status: {state.status if state else 'none'})")
            if state.status == "promoted" and state.champion_version == state.challenger_version:
                raise NoActiveRolloutError("the initial model has no earlier champion to restore")
            return self._rollback(state, f"manual: {reason}")

    def reject_unloadable(self, version: str, *, reason: str) -> RolloutState | None:
        """Roll back the rollout whose challenger is ``version`` because serving cannot load it.

        Serving processes call this when a challenger's bundle fails its checks (a damaged
        file, a model that does not parse, a native crash in the check process). A rollout
        whose challenger is another version, or that is no longer in its canary (already rolled
        back by another process, promoted, finished), is left alone.

        Returns
        -------
        RolloutState or None
            The rolled-back state, or None when there was nothing to roll back.

        Raises
        ------
        RolloutStateError
            If another controller holds the state lock (try again).
        """
        with self._locked() as state:
            if state is None or state.status not in ("canary", "pending") or state.challenger_version != str(version):
                return None
            return self._rollback(state, f"challenger version {version} cannot be loaded by serving: {reason}")

    def run(self, *, logs_provider: Callable[[], StageLogs] | None = None, sleep: Callable[[float], None] = time.sleep,
            monotonic: Callable[[], float] = time.monotonic) -> RolloutState:
        """``auto``: evaluate and act every ``poll_seconds`` until promoted or rolled back.

        Parameters
        ----------
        logs_provider : callable, optional
            Returns the logs to judge at each step; default: read the configured folders.
        sleep, monotonic : callables
            Injected for tests.

        Raises
        ------
        RolloutTimeoutError
            After ``max_wait_seconds`` without an end; the rollout stays where it is.
        NoActiveRolloutError
            If no rollout is running.
        """
        deadline = monotonic() + self.config.max_wait_seconds
        before = self.store.load()
        if before is None or not before.active:
            raise NoActiveRolloutError(f"no rollout running (status: {before.status if before else 'none'})")
        state = self.resume()
        if state is not None and state.status != "canary":  # an interrupted promotion or rollback, now finished
            return state
        while True:
            result = self.step(logs_provider() if logs_provider is not None else None)
            if result.state.status != "canary":
                return result.state
            if monotonic() + self.config.poll_seconds > deadline:
                raise RolloutTimeoutError(
                    f"rollout {result.state.rollout_id} still at stage {result.state.stage_index} after "
                    f"{self.config.max_wait_seconds:g} s ({result.evaluation.reason})")
            sleep(self.config.poll_seconds)
