"""Closing figures of a fixed-seed simulated A/B: true lift, estimated lift with its interval, CUPED.

Popularity (the incumbent's score, without noise) against the history-affinity policy learnt
from the pre-period's logs, on the simulated buyers. Prints the figures and writes them as JSON.
``--replications N`` also runs N independent replications (new seeds: new worlds, outcomes
and truths) and reports how often each 95 % interval covers its own truth.

    python benchmarks/ab_simulation.py --out build/bench/ab_simulation.json
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
from experiments.policies import HistoryAffinityPolicy, LogHistory, PopularityPolicy  # noqa: E402
from experiments.simulator import MarketplaceSimulator  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--pre-days", type=int, default=3)
    parser.add_argument("--days", type=int, default=7, help="experiment days")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--salt", default="bench-ab-1")
    parser.add_argument("--replications", type=int, default=0, metavar="N",
                        help="also run N independent replications (seeds seed+1 .. seed+N: new worlds, outcomes "
                             "and truths) and report how often each interval covers its truth")
    parser.add_argument("--out", default="build/bench/ab_simulation.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    design = ABSimulationConfig(pre_days=args.pre_days, experiment_days=args.days, salt=args.salt)

    def config(seed: int) -> SimulatorConfig:
        return SimulatorConfig(users=args.users, items=args.items, sellers=max(args.items // 20, 1),
                               days=args.pre_days + args.days, seed=seed)

    def run(seed: int, out: Path, progress: bool) -> Run:
        sim = MarketplaceSimulator(config(seed))

        def treatment(history: LogHistory) -> HistoryAffinityPolicy:
            return HistoryAffinityPolicy.from_history(history, feed_length=sim.config.feed_length)

        result = run_ab_simulation(sim, PopularityPolicy.from_simulator(sim), treatment, out, config=design,
                                   progress=progress)
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
    print(f"wrote {out} ({seconds:.1f} s for the fixed-seed run)")


if __name__ == "__main__":
    main()
