"""Closing figures of a fixed-seed simulated A/B: true lift, estimated lift with its interval, CUPED.

Popularity (the incumbent's score, without noise) against the full system on the simulated
buyers: after the pre-period, ``feedrank train``'s batch job (Spark ETL, Feast, two-tower +
FAISS, LightGBM + calibration, snapshots, evaluation gate) is run on the contract logs written
before the experiment starts, and the resulting feed bundle serves the treatment arm through
the serving request path (``experiments.policies.PipelinePolicy`` over
``serving.model_pipeline.ModelPipeline``). ``--treatment history-affinity`` runs the cheap
stand-in (a category-affinity policy learnt from the same history) instead. Prints the figures
and writes them as JSON. ``--replications N`` also runs N independent replications (new seeds:
new worlds, outcomes and truths; with the full system, a new bundle each) and reports how often
each 95 % interval covers its own truth.

    python benchmarks/ab_simulation.py --out build/bench/ab_simulation.json

The evaluation gate of the batch job may reject a bundle trained on a short pre-period; the
simulated A/B is then still run with it (it is the better judge) and the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.ab import EffectEstimate  # noqa: E402
from experiments.ab_readout import ABReadout, analyze_experiment, load_experiment  # noqa: E402
from experiments.ab_simulation import ABSimulationConfig, ABSimulationResult, run_ab_simulation  # noqa: E402
from experiments.config import SimulatorConfig  # noqa: E402
from experiments.policies import (  # noqa: E402
    HistoryAffinityPolicy,
    LogHistory,
    PipelinePolicy,
    PopularityPolicy,
    RankingPolicy,
)
from experiments.simulator import MarketplaceSimulator, Requests  # noqa: E402

Run = tuple[ABSimulationResult, ABReadout]


def _effect(e: EffectEstimate) -> dict:
    keys = ("method", "control_mean", "treatment_mean", "estimate", "std_error", "ci_low", "ci_high",
            "relative_lift", "relative_ci_low", "relative_ci_high", "p_value", "n_control", "n_treatment")
    return {k: getattr(e, k) for k in keys}


def _targets(run: Run) -> dict[str, tuple[EffectEstimate, float]]:
    """Each estimator with the true value it estimates."""
    result, readout = run
    truth = result.truth["gmv"]
    return {"gmv_per_user_welch": (readout.gmv_per_user, truth.per_user_lift),
            "gmv_per_user_cuped": (readout.gmv_per_user_cuped.effect, truth.per_user_lift),
            "gmv_per_request_delta": (readout.gmv_per_request, truth.per_request_lift),
            "gmv_per_request_clustered": (readout.gmv_per_request_clustered, truth.per_request_lift)}


def _coverage(runs: list[Run]) -> dict:
    """How many runs' intervals cover their truth, and the z-scores ``(estimate - truth) / std_error``."""
    by: dict[str, dict] = {}
    for run in runs:
        for name, (e, target) in _targets(run).items():
            entry = by.setdefault(name, {"covered": 0, "z": []})
            entry["covered"] += int(e.ci_low < target < e.ci_high)
            entry["z"].append((e.estimate - target) / e.std_error)
    return {"n": len(runs), "by_estimator": {
        k: {"covered": v["covered"], "mean_z": sum(v["z"]) / len(v["z"]),
            "sd_z": (sum((z - sum(v["z"]) / len(v["z"])) ** 2 for z in v["z"]) / max(len(v["z"]) - 1, 1)) ** 0.5,
            "z": v["z"]} for k, v in by.items()}}


class _Timed:
    """A policy that keeps the wall time of its ``serve`` calls (seconds, requests)."""

    def __init__(self, policy: RankingPolicy) -> None:
        self.policy = policy
        self.seconds = 0.0
        self.requests = 0

    @property
    def name(self) -> str:
        return self.policy.name

    def serve(self, requests: Requests, available, rng):
        started = time.perf_counter()
        out = self.policy.serve(requests, available, rng)
        self.seconds += time.perf_counter() - started
        self.requests += len(requests)
        return out


def train_config(work: Path, *, trees: int, epochs: int):
    """The batch job's configuration for a small simulated marketplace (local Spark, 2 cores)."""
    from infra.config import load_config

    return load_config(env={}, overrides={
        "features": {"spark": {"master": "local[2]", "shuffle_partitions": 2, "progress_seconds": 0}},
        "retrieval": {"training": {"max_epochs": epochs, "batch_size": 512}},
        "ranking": {"ranker": {"num_boost_round": trees, "min_data_in_leaf": 20},
                    "purchase": {"num_boost_round": trees, "min_data_in_leaf": 20},
                    "propensity": {"min_impressions": 50}, "purchase_label": "purchased_24h"},
        "infra": {"data_dir": str(work / "data")},
    })


def full_system_factory(work: Path, *, feed_length: int, candidates: int, trees: int, epochs: int,
                        info: dict):
    """A treatment factory: train a bundle on the pre-period's contract logs, serve it through the pipeline."""
    from infra.train import EvaluationGateError, run_training

    def factory(history: LogHistory) -> _Timed:
        started = time.perf_counter()
        shutil.rmtree(work, ignore_errors=True)
        logs = history.export_logs(work / "pre-period-logs")
        run_dir = work / "train"
        try:
            report = run_training(train_config(work, trees=trees, epochs=epochs), logs_dir=logs, run_dir=run_dir,
                                  register=False)
            info["gate_passed"] = True
            steps = report.steps
        except EvaluationGateError as err:
            logging.warning("the bundle failed the batch job's evaluation gate; the A/B runs it anyway: %s", err)
            info["gate_passed"] = False
            steps = json.loads((run_dir / "train_state.json").read_text())["completed"]
        gate = run_dir / "evaluation" / "gate.json"
        info["gate"] = json.loads(gate.read_text()) if gate.exists() else None
        info["step_seconds"] = {k: v.get("seconds") for k, v in steps.items()}
        info["training_seconds"] = round(time.perf_counter() - started, 2)
        info["history_cut"] = history.before.isoformat()
        policy = PipelinePolicy.from_bundle(run_dir / "bundle", version="full-system-v1", feed_length=feed_length,
                                            candidate_count=candidates)
        timed = _Timed(policy)
        info["policy"] = timed
        return timed

    return factory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=1_000)
    parser.add_argument("--pre-days", type=int, default=3)
    parser.add_argument("--days", type=int, default=4, help="experiment days")
    parser.add_argument("--categories", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--salt", default="bench-ab-1")
    parser.add_argument("--treatment", choices=("full-system", "history-affinity"), default="full-system")
    parser.add_argument("--pre-randomized-share", type=float, default=None,
                        help="share of pre-period feeds with a randomized top (default 0.25 with the full system, "
                             "whose training estimates position bias from it; 0 otherwise)")
    parser.add_argument("--candidates", type=int, default=200, help="full system: candidates retrieved per request")
    parser.add_argument("--trees", type=int, default=60, help="full system: boosting rounds of ranker and purchase model")
    parser.add_argument("--epochs", type=int, default=3, help="full system: two-tower epochs")
    parser.add_argument("--replications", type=int, default=0, metavar="N",
                        help="also run N independent replications (seeds seed+1 .. seed+N: new worlds, outcomes "
                             "and truths) and report how often each interval covers its truth")
    parser.add_argument("--out", default="build/bench/ab_simulation.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    full = args.treatment == "full-system"
    share = (0.25 if full else 0.0) if args.pre_randomized_share is None else args.pre_randomized_share
    design = ABSimulationConfig(pre_days=args.pre_days, experiment_days=args.days, salt=args.salt,
                                pre_period_randomized_share=share)

    def config(seed: int) -> SimulatorConfig:
        return SimulatorConfig(users=args.users, items=args.items, sellers=max(args.items // 20, 1),
                               categories=args.categories, days=args.pre_days + args.days, seed=seed)

    training: list[dict] = []

    def run(seed: int, out: Path, progress: bool) -> Run:
        sim = MarketplaceSimulator(config(seed))
        if full:
            info: dict = {"seed": seed}
            training.append(info)
            treatment = full_system_factory(out.parent / "full-system", feed_length=sim.config.feed_length,
                                            candidates=args.candidates, trees=args.trees, epochs=args.epochs,
                                            info=info)
        else:
            def treatment(history: LogHistory) -> HistoryAffinityPolicy:
                return HistoryAffinityPolicy.from_history(history, feed_length=sim.config.feed_length)

        result = run_ab_simulation(sim, PopularityPolicy.from_simulator(sim), treatment, out, config=design,
                                   progress=progress)
        if full:
            timed = info.pop("policy")
            info["serving_ms_per_request"] = round(1000 * timed.seconds / max(timed.requests, 1), 3)
            info["served_requests"] = timed.requests
        return result, analyze_experiment(load_experiment(result.log_dir))

    tmp = Path(tempfile.mkdtemp(prefix="feedrank-ab-"))
    try:
        started = time.perf_counter()
        main_run = run(args.seed, tmp / "logs", True)
        seconds = time.perf_counter() - started
        replications = []
        for k in range(1, args.replications + 1):
            replications.append(run(args.seed + k, tmp / "logs", False))
            logging.info("replication %d/%d done", k, args.replications)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result, readout = main_run
    truth = result.truth["gmv"]
    cuped = readout.gmv_per_user_cuped
    coverage = _coverage(replications) if replications else None
    figures = {
        "benchmark": "ab_simulation",
        "control": result.control_policy, "treatment": result.treatment_policy,
        "simulator": asdict(config(args.seed)), "design": asdict(design),
        "users_by_arm": dict(result.users_by_arm), "requests": truth.n_requests,
        "impressions": result.rows["impressions"],
        "srm_p_value": readout.srm.p_value,
        "pre_period_aa_p_value": readout.pre_period_aa.p_value,
        "true": truth.to_dict(),
        "gmv_per_user": {"welch": _effect(readout.gmv_per_user), "cuped": _effect(cuped.effect),
                         "cuped_variance_reduction": cuped.variance_reduction, "cuped_theta": cuped.theta,
                         "cuped_covariate": f"pre_{readout.cuped_covariate}"},
        "gmv_per_request": {"delta": _effect(readout.gmv_per_request),
                            "clustered_ols": _effect(readout.gmv_per_request_clustered),
                            "naive_ols": _effect(readout.gmv_per_request_naive)},
        "covered": {name: e.ci_low < target < e.ci_high for name, (e, target) in _targets(main_run).items()},
        "replications": coverage,
        "full_system": {"candidates": args.candidates, "trees": args.trees, "epochs": args.epochs,
                        "training": training} if full else None,
        "seconds": round(seconds, 2),
        "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2, default=float))

    print(f"simulated A/B: {result.treatment_policy} vs {result.control_policy}, seed {args.seed}, "
          f"{truth.n_users:,} users ({result.users_by_arm['control']:,} / {result.users_by_arm['treatment']:,}), "
          f"{truth.n_requests:,} requests, {args.pre_days}+{args.days} days; SRM p = {readout.srm.p_value:.2f}")
    print(f"true lift          GMV/user {truth.per_user_lift:+.4f} ({truth.relative_lift:+.2%}); "
          f"GMV/request {truth.per_request_lift:+.4f}")
    labels = {"gmv_per_user_welch": "Welch GMV/user", "gmv_per_user_cuped": "CUPED GMV/user",
              "gmv_per_request_delta": "delta GMV/req", "gmv_per_request_clustered": "clustered GMV/req"}
    for name, (e, target) in _targets(main_run).items():
        inside = "covers" if e.ci_low < target < e.ci_high else "MISSES"
        print(f"{labels[name]:19s}{e.estimate:+.4f}  95% CI [{e.ci_low:+.4f}, {e.ci_high:+.4f}]  "
              f"relative {e.relative_lift:+.2%} [{e.relative_ci_low:+.2%}, {e.relative_ci_high:+.2%}]  "
              f"p={e.p_value:.2g}  {inside} the truth")
    print(f"CUPED variance reduction {cuped.variance_reduction:.1%} (covariate pre-period GMV per user; "
          f"standard error {cuped.unadjusted.std_error:.3f} -> {cuped.effect.std_error:.3f})")
    if coverage is not None:
        cov = coverage
        print(f"{cov['n']} independent replications: 95 % intervals cover their truth "
              + ", ".join(f"{labels[k]} {v['covered']}/{cov['n']} (z mean {v['mean_z']:+.2f}, sd {v['sd_z']:.2f})"
                          for k, v in cov["by_estimator"].items()))
    if full:
        t = training[0]
        print(f"full system: bundle trained on the logs before {t['history_cut']} in {t['training_seconds']:.0f} s "
              f"(evaluation gate {'passed' if t['gate_passed'] else 'FAILED'}); served "
              f"{t['served_requests']:,} requests at {t['serving_ms_per_request']:.1f} ms each")
    print(f"wrote {out} ({seconds:.1f} s for the fixed-seed run)")


if __name__ == "__main__":
    main()
