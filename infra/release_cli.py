"""``feedrank rollout start|status|advance|rollback|auto`` and ``feedrank mlflow-ui``.

Kept apart from :mod:`infra.cli` (which only registers them) so the release commands import
MLflow and the statistics only when one of them runs. Exit codes: 0 done as asked; 1 the
challenger was stopped (gate failed, rolled back); 2 invalid configuration (from the CLI);
3 a rollout or registry error (printed); 4 ``auto`` ran out of time with the rollout still running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infra.canary import StageEvaluation
    from infra.config import FeedrankConfig
    from infra.rollout import RolloutController
    from infra.rollout_state import RolloutState

__all__ = ["add_release_commands"]


def _controller(config: FeedrankConfig) -> RolloutController:
    from infra.registry import FeedRegistry
    from infra.rollout import RolloutController

    registry = FeedRegistry(config.infra.registry, data_dir=config.infra.data_dir)
    return RolloutController(config.infra.rollout, registry, data_dir=config.infra.data_dir)


def _print_state(state: RolloutState | None, *, history: int = 8) -> None:
    if state is None:
        print("no rollout has been started")
        return
    stage = f"{state.stage_index + 1}/{len(state.stages)}" if state.stage_index >= 0 else "offline gate"
    print(f"rollout     {state.rollout_id}")
    print(f"model       {state.model_name}: champion v{state.champion_version}, challenger v{state.challenger_version}")
    print(f"status      {state.status}, stage {stage}, challenger share {state.challenger_share:.0%}")
    print(f"stages      {' -> '.join(f'{s:.0%}' for s in state.stages)}")
    print(f"stage since {state.stage_started_at} ({state.looks_done} looks spent)")
    print(f"updated     {state.updated_at}")
    if state.history:
        print("history (latest last):")
        for t in state.history[-history:]:
            print(f"  {t.ts}  {t.action:<16s} {t.from_status:>12s} -> {t.to_status:<12s} {t.share:>5.0%}  {t.reason}")


def _print_evaluation(ev: StageEvaluation) -> None:
    look = f"look {ev.look}/{ev.n_looks}, alpha {ev.alpha_look:.2g}" if ev.look else "no look spent"
    print(f"evaluation: {ev.decision.upper()} ({look})")
    print(f"  {ev.reason}")
    if ev.counts:
        print("  " + ", ".join(f"{k} {v:,}" for k, v in ev.counts.items()))
    if ev.checks:
        print(f"  {'guardrail':<16s} {'champion':>11s} {'challenger':>11s} {'effect':>9s} {'interval':>21s} "
              f"{'margin':>7s}  verdict")
        for c in ev.checks:
            pct = c.scale == "relative"
            fmt = (lambda v: f"{v:+.2%}") if pct else (lambda v: f"{v:+.4f}")
            print(f"  {c.metric:<16s} {c.champion:>11.4g} {c.challenger:>11.4g} {fmt(c.effect):>9s} "
                  f"{'[' + fmt(c.ci_low) + ', ' + fmt(c.ci_high) + ']':>21s} {c.margin:>7g}  {c.verdict}")


def _cmd_start(args: argparse.Namespace, config: FeedrankConfig) -> int:
    gate = None
    if args.gate_data:
        from infra.canary import OfflineGateInput

        gate = OfflineGateInput.from_npz(args.gate_data)
    state = _controller(config).start(challenger_version=args.challenger, gate=gate,
                                      skip_gate_reason=args.skip_offline_gate, initial=args.initial)
    _print_state(state)
    return 1 if state.status == "gate_failed" else 0


def _cmd_status(args: argparse.Namespace, config: FeedrankConfig) -> int:
    from infra.rollout_state import StateStore

    store = StateStore(_state_dir(config))
    state = store.load()
    if args.json:
        print(json.dumps(None if state is None else state.to_dict(), indent=2))
    else:
        _print_state(state, history=args.history)
    return 0


def _state_dir(config: FeedrankConfig) -> Path:
    p = Path(config.infra.rollout.state_dir)
    return p if p.is_absolute() else Path(config.infra.data_dir) / p


def _cmd_advance(args: argparse.Namespace, config: FeedrankConfig) -> int:
    controller = _controller(config)
    if args.force:
        if not args.reason:
            print("feedrank rollout advance: --force needs --reason", file=sys.stderr)
            return 3
        _print_state(controller.advance(reason=args.reason))
        return 0
    result = controller.step()
    _print_evaluation(result.evaluation)
    _print_state(result.state)
    return 1 if result.state.status == "rolled_back" else 0


def _cmd_rollback(args: argparse.Namespace, config: FeedrankConfig) -> int:
    _print_state(_controller(config).rollback(reason=args.reason))
    return 0


def _cmd_auto(args: argparse.Namespace, config: FeedrankConfig) -> int:
    from infra.rollout import RolloutTimeoutError

    cfg = config.infra.rollout
    print(f"auto: evaluating every {cfg.poll_seconds:g} s for at most {cfg.max_wait_seconds:g} s")
    try:
        state = _controller(config).run()
    except RolloutTimeoutError as exc:
        print(f"feedrank rollout auto: {exc}", file=sys.stderr)
        return 4
    _print_state(state)
    return 0 if state.status == "promoted" else 1


def _run_guarded(func):  # type: ignore[no-untyped-def]
    """Wrap a command so that named rollout/registry errors print and exit 3 instead of a traceback."""

    def run(args: argparse.Namespace, config: FeedrankConfig) -> int:
        from infra.rollout_state import RolloutError
        from infra.stage_logs import StageLogsError
        from serving.bundle import BundleError

        try:
            return func(args, config)
        except (RolloutError, BundleError, StageLogsError, ValueError) as exc:
            print(f"feedrank rollout: error: {exc}", file=sys.stderr)
            return 3
        except Exception as exc:
            from infra.registry import RegistryError

            if isinstance(exc, RegistryError):
                print(f"feedrank rollout: registry error: {exc}", file=sys.stderr)
                return 3
            raise

    return run


def _cmd_mlflow_ui(args: argparse.Namespace, config: FeedrankConfig) -> int:
    from infra.registry import FeedRegistry

    registry = FeedRegistry(config.infra.registry, data_dir=config.infra.data_dir)
    if not registry.embedded:
        print(f"the registry is a shared server: open {registry.tracking_uri}")
        return 0
    artifacts = Path(config.infra.data_dir) / "mlflow" / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).with_name("mlflow")
    command = [str(exe) if exe.exists() else (shutil.which("mlflow") or "mlflow"), "ui", "--host", "127.0.0.1",
               "--port", str(config.infra.registry.ui_port), "--backend-store-uri", registry.tracking_uri,
               "--default-artifact-root", registry.artifact_location or artifacts.resolve().as_uri(), "--workers", "1"]
    print(f"MLflow UI: http://127.0.0.1:{config.infra.registry.ui_port}  (backend {registry.tracking_uri}; "
          "Ctrl-C stops it)", flush=True)
    if args.dry_run:
        print(" ".join(command))
        return 0
    # One worker and no background job runner (GenAI jobs): a browsing UI on a 2-core machine.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    os.execve(command[0], command, env)  # replaces this process; never returns


def add_release_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``rollout`` (with its actions) and ``mlflow-ui`` on the CLI's subcommand parser."""
    p = sub.add_parser("rollout", help="canary rollout of the registry's challenger: start, status, advance, "
                                       "rollback, auto",
                       description="Move the challenger bundle through the canary stages "
                                   "(infra.rollout.stages), with an offline DR gate first and guardrail "
                                   "tests at every stage; a failed guardrail rolls back automatically.")
    actions = p.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")

    a = actions.add_parser("start", help="offline gate, then the first stage",
                           description="Start rolling out the challenger against the champion.")
    a.add_argument("--challenger", metavar="VERSION", help="version to roll out (default: alias 'challenger')")
    gate = a.add_mutually_exclusive_group()
    gate.add_argument("--gate-data", metavar="FILE.npz",
                      help="offline-gate arrays (OBP convention): action, position, reward, pscore, "
                           "{champion,challenger}_action_dist, {champion,challenger}_estimated_rewards")
    gate.add_argument("--skip-offline-gate", metavar="REASON", help="start without the offline gate (recorded)")
    gate.add_argument("--initial", action="store_true",
                      help="no champion yet: promote the challenger directly (the very first model)")
    a.set_defaults(func=_run_guarded(_cmd_start))

    a = actions.add_parser("status", help="print the current rollout",
                           description="Print the rollout state and its latest transitions.")
    a.add_argument("--json", action="store_true", help="print the whole state as JSON")
    a.add_argument("--history", type=int, default=8, help="transitions to show")
    a.set_defaults(func=_run_guarded(_cmd_status))

    a = actions.add_parser("advance", help="evaluate the stage once and act on it (or --force)",
                           description="Evaluate the current stage: advance if every guardrail passes, roll "
                                       "back if one fails, hold otherwise. --force advances without evaluating.")
    a.add_argument("--force", action="store_true", help="advance without an evaluation (operator override)")
    a.add_argument("--reason", help="why (required with --force; recorded)")
    a.set_defaults(func=_run_guarded(_cmd_advance))

    a = actions.add_parser("rollback", help="roll back now",
                           description="Challenger share to 0, challenger alias removed, the champion from "
                                       "before the rollout restored (also after a promotion).")
    a.add_argument("--reason", required=True, help="why (recorded)")
    a.set_defaults(func=_run_guarded(_cmd_rollback))

    a = actions.add_parser("auto", help="evaluate and act until promoted or rolled back",
                           description="Loop: evaluate, then advance / roll back / hold; wait poll_seconds; "
                                       "stop after max_wait_seconds (exit 4, the rollout left as it is).")
    a.add_argument("--poll-seconds", dest="poll_seconds", type=float, help="infra.rollout.poll_seconds")
    a.add_argument("--max-wait-seconds", dest="max_wait_seconds", type=float,
                   help="infra.rollout.max_wait_seconds")
    a.set_defaults(func=_run_guarded(_cmd_auto), section=("infra", "rollout"),
                   flags=("poll_seconds", "max_wait_seconds"))

    p = sub.add_parser("mlflow-ui", help="open the MLflow UI of the embedded registry on 127.0.0.1",
                       description="Run `mlflow ui` on 127.0.0.1:<infra.registry.ui_port> against the embedded "
                                   "SQLite registry under <infra.data_dir>/mlflow.")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.set_defaults(func=_cmd_mlflow_ui)
