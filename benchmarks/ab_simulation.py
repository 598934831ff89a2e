"""Simulated A/B on the simulator's truth: the full system against popularity and the no-ML heuristics.

The pre-period (``--pre-days``, 14 by default) is served by the incumbent's exploring policy --
the simulator's noisy popularity with its randomized share and exact propensities -- as a real
marketplace's logs would be. ``feedrank train``'s batch job (Spark ETL, Feast, two-tower +
FAISS, LightGBM + calibration, snapshots, evaluation gate) then trains a bundle on those logs,
and the experiment runs: popularity (the deterministic incumbent, the control arm) against the
full system (the treatment arm, served through ``serving``'s request path with re-ranking and
exploration, real-time user features fed from the logged stream). Side by side on the very same
requests, never served, every other policy is judged on the simulator's exact expectations:
``popularity_logs`` (popularity from logged counts), ``category_affinity`` (the no-ML
heuristic), ``oracle`` (top K by true P(purchase) x price: the headroom) and each stage of the
full system (``experiments.truth``: the retrieved candidates in true order, each score alone,
before and after re-ranking). Prints the truth table, the estimated lift with its intervals and
CUPED, writes the figures as JSON (``truth.gmv_per_user.<arm>``) and a waterfall plot beside it.

    python benchmarks/ab_simulation.py --out build/bench/ab_simulation.json
    python benchmarks/ab_simulation.py --seed 3 --set experiments.simulator.taste_concentration=1.0

``--replications N`` also runs N independent replications (new seeds: new worlds, outcomes and
truths, a new bundle each) and reports how often each 95 % interval covers its own truth.
The evaluation gate of the batch job may reject a bundle; the simulated A/B is then still run
with it (it is the better judge) and the JSON says so.
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
from dataclasses import asdict, fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.ab import EffectEstimate  # noqa: E402
from experiments.ab_readout import ABReadout, analyze_experiment, load_experiment  # noqa: E402
from experiments.ab_simulation import ABSimulationConfig, ABSimulationResult, run_ab_simulation  # noqa: E402
from experiments.config import SimulatorConfig  # noqa: E402
from experiments.policies import (  # noqa: E402
    HistoryAffinityPolicy,
    LogHistory,
    OraclePolicy,
    PipelinePolicy,
    PopularityPolicy,
    RankingPolicy,
)
from experiments.simulator import MarketplaceSimulator, Requests  # noqa: E402
from experiments.truth import STAGES, StagedPipelinePolicy, plot_waterfall, truth_table  # noqa: E402

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

    def observe(self, impressions, events) -> None:
        self.policy.observe(impressions, events)

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
        # one torch thread: on a busy 2-core machine two threads ran ~10x slower (docs/retrieval.md)
        "retrieval": {"training": {"max_epochs": epochs, "batch_size": 512, "num_threads": 1}},
        "ranking": {"ranker": {"num_boost_round": trees, "min_data_in_leaf": 20},
                    "propensity": {"min_impressions": 50}, "purchase_label": "purchased_24h"},
        "infra": {"data_dir": str(work / "data")},
    })


def full_system_factory(work: Path, *, feed_length: int, candidates: int, trees: int, epochs: int,
                        info: dict, simulator: MarketplaceSimulator, reuse: Path | None = None):
    """A treatment factory: train a bundle on the pre-period's contract logs, serve it through the pipeline."""
    from infra.train import EvaluationGateError, run_training

    def factory(history: LogHistory) -> _Timed:
        started = time.perf_counter()
        shutil.rmtree(work, ignore_errors=True)
        logs = history.export_logs(work / "pre-period-logs")
        run_dir = work / "train"
        if reuse is not None:  # the ETL, Feast and retrieval steps of an earlier run on the same logs
            shutil.copytree(reuse, run_dir)
            state = json.loads((run_dir / "train_state.json").read_text())
            state["completed"] = {k: v for k, v in state["completed"].items() if k in ("etl", "feast", "retrieval")}
            (run_dir / "train_state.json").write_text(json.dumps(state))
            shutil.rmtree(run_dir / "bundle" / "ranking", ignore_errors=True)
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
        policy = StagedPipelinePolicy.from_pipeline_policy(
            PipelinePolicy.from_bundle(run_dir / "bundle", version="full-system-v1", feed_length=feed_length,
                                       candidate_count=candidates), simulator)
        timed = _Timed(policy)
        info["policy"] = timed
        return timed

    return factory


SIDE_ARMS = ("popularity_logs", "category_affinity", "oracle")
ARM_NOTES = {"popularity": "control: the incumbent's popularity, no noise",
             "popularity_logs": "popularity from logged counts (no ML)",
             "category_affinity": "buyer's category affinity x popularity within category (no ML)",
             "full_system": "treatment: the served pipeline (re-ranking and exploration on)",
             "oracle": "top K by true P(purchase) x price: the headroom, never deployable",
             "stage_retrieval_ceiling": "retrieved candidates in true-value order",
             "stage_retrieval": "retrieved candidates in retrieval (two-tower) order",
             "stage_ranker": "candidates by the ranker score alone",
             "stage_calibrated_p": "by calibrated P(purchase) alone",
             "stage_expected_gmv": "by E[GMV] alone",
             "stage_model": "by the final score, no re-ranking or exploration",
             "stage_reranked": "after re-ranking, no exploration"}


def parse_sets(pairs: list[str]) -> tuple[dict, dict]:
    """``--set`` pairs: ``experiments.simulator.<field>=v`` and ``ab.<field>=v`` (A/B design)."""
    import yaml

    sim, ab = {}, {}
    sim_fields = {f.name for f in fields(SimulatorConfig)}
    ab_fields = {f.name for f in fields(ABSimulationConfig)}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE")
        value = yaml.safe_load(raw)
        if key.startswith("experiments.simulator.") and key.split(".", 2)[2] in sim_fields:
            sim[key.split(".", 2)[2]] = value
        elif key.startswith("ab.") and key[3:] in ab_fields:
            ab[key[3:]] = value
        else:
            raise SystemExit(f"--set {key}: unknown key (experiments.simulator.<{'|'.join(sorted(sim_fields))}> "
                             f"or ab.<{'|'.join(sorted(ab_fields))}>)")
    return sim, ab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=1_000)
    parser.add_argument("--pre-days", type=int, default=14,
                        help="pre-period days served by the incumbent's exploring policy (the training logs)")
    parser.add_argument("--days", type=int, default=4, help="experiment days")
    parser.add_argument("--categories", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--salt", default="bench-ab-1")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a simulator field (experiments.simulator.<field>) or an A/B design field "
                             "(ab.<field>); repeatable")
    parser.add_argument("--candidates", type=int, default=200, help="full system: candidates retrieved per request")
    parser.add_argument("--trees", type=int, default=300, help="full system: most boosting rounds of each model")
    parser.add_argument("--epochs", type=int, default=3, help="full system: two-tower epochs")
    parser.add_argument("--replications", type=int, default=0, metavar="N",
                        help="also run N independent replications (seeds seed+1 .. seed+N: new worlds, outcomes "
                             "and truths) and report how often each interval covers its truth")
    parser.add_argument("--out", default="build/bench/ab_simulation.json")
    parser.add_argument("--reuse-training", default=None, type=Path, metavar="RUN_DIR",
                        help="development: start from the ETL, Feast and retrieval steps of an earlier run's "
                             "training folder (<work>/full-system/train of the same seed and settings) and rerun "
                             "only ranking, snapshots and evaluation")
    parser.add_argument("--work", default=None,
                        help="keep the fixed-seed run's logs and training folder here (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sim_sets, ab_sets = parse_sets(args.sets)
    design = ABSimulationConfig(**{"pre_days": args.pre_days, "experiment_days": args.days, "salt": args.salt,
                                   **ab_sets})

    def config(seed: int) -> SimulatorConfig:
        base = dict(users=args.users, items=args.items, sellers=max(args.items // 20, 1),
                    categories=args.categories, days=design.pre_days + design.experiment_days, seed=seed)
        return SimulatorConfig(**{**base, **sim_sets})

    training: list[dict] = []
    truths: list[dict] = []

    def run(seed: int, out: Path, progress: bool) -> Run:
        sim = MarketplaceSimulator(config(seed))
        info: dict = {"seed": seed}
        training.append(info)
        treatment = full_system_factory(out.parent / "full-system", feed_length=sim.config.feed_length,
                                        candidates=args.candidates, trees=args.trees, epochs=args.epochs,
                                        info=info, simulator=sim,
                                        reuse=args.reuse_training if seed == args.seed else None)
        length = sim.config.feed_length

        def stage(name: str):
            return lambda history: info["policy"].policy.stage(name)

        arms = {"popularity_logs": lambda h: PopularityPolicy.from_history(h, feed_length=length),
                "category_affinity": lambda h: HistoryAffinityPolicy.from_history(h, feed_length=length),
                "oracle": OraclePolicy(sim, feed_length=length),
                **{f"stage_{s}": stage(s) for s in STAGES if s != "served"}}
        result = run_ab_simulation(sim, PopularityPolicy.from_simulator(sim), treatment, out, config=design,
                                   arms=arms, progress=progress)
        timed = info.pop("policy")
        info["serving_ms_per_request"] = round(1000 * timed.seconds / max(timed.requests, 1), 3)
        info["served_requests"] = timed.requests
        per_user = {{"control": "popularity", "treatment": "full_system"}.get(k, k): v
                    for k, v in result.per_user("gmv").items()}
        truths.append({"seed": seed, "gmv_per_user": per_user, "diagnostics": timed.policy.diagnostics.to_dict()})
        return result, analyze_experiment(load_experiment(result.log_dir))

    tmp = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="feedrank-ab-"))
    try:
        started = time.perf_counter()
        main_run = run(args.seed, tmp / "logs", True)
        seconds = time.perf_counter() - started
        replications = []
        for k in range(1, args.replications + 1):
            replications.append(run(args.seed + k, tmp / "logs", False))
            logging.info("replication %d/%d done", k, args.replications)
    finally:
        if not args.work:
            shutil.rmtree(tmp, ignore_errors=True)

    result, readout = main_run
    truth = result.truth["gmv"]
    cuped = readout.gmv_per_user_cuped
    coverage = _coverage(replications) if replications else None
    gmv = truths[0]["gmv_per_user"]
    best_heuristic = max(gmv["popularity_logs"], gmv["category_affinity"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure = plot_waterfall(gmv, out.with_suffix(".waterfall.png"))
    figures = {
        "benchmark": "ab_simulation",
        "control": result.control_policy, "treatment": result.treatment_policy,
        "simulator": asdict(config(args.seed)), "design": asdict(design),
        "users_by_arm": dict(result.users_by_arm), "requests": truth.n_requests,
        "impressions": result.rows["impressions"],
        "srm_p_value": readout.srm.p_value,
        "pre_period_aa_p_value": readout.pre_period_aa.p_value,
        "true": truth.to_dict(),
        "truth": {"gmv_per_user": gmv,
                  "relative_to_popularity": {k: v / gmv["popularity"] for k, v in gmv.items()},
                  "full_system_over_best_heuristic": gmv["full_system"] / best_heuristic,
                  "diagnostics": truths[0]["diagnostics"], "waterfall_png": str(figure),
                  "replications": truths[1:]},
        "gmv_per_user": {"welch": _effect(readout.gmv_per_user), "cuped": _effect(cuped.effect),
                         "cuped_variance_reduction": cuped.variance_reduction, "cuped_theta": cuped.theta,
                         "cuped_covariate": f"pre_{readout.cuped_covariate}"},
        "gmv_per_request": {"delta": _effect(readout.gmv_per_request),
                            "clustered_ols": _effect(readout.gmv_per_request_clustered),
                            "naive_ols": _effect(readout.gmv_per_request_naive)},
        "covered": {name: e.ci_low < target < e.ci_high for name, (e, target) in _targets(main_run).items()},
        "replications": coverage,
        "full_system": {"candidates": args.candidates, "trees": args.trees, "epochs": args.epochs,
                        "training": training},
        "seconds": round(seconds, 2),
        "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
    }
    out.write_text(json.dumps(figures, indent=2, default=float))

    print(f"simulated A/B: {result.treatment_policy} vs {result.control_policy}, seed {args.seed}, "
          f"{truth.n_users:,} users ({result.users_by_arm['control']:,} / {result.users_by_arm['treatment']:,}), "
          f"{truth.n_requests:,} requests, {design.pre_days}+{design.experiment_days} days; "
          f"SRM p = {readout.srm.p_value:.2f}")
    print("\nExpected GMV per user on the simulator's truth (every arm judged on the same requests):")
    print(truth_table(gmv, labels=ARM_NOTES))
    diag = truths[0]["diagnostics"]
    print(f"full system / best no-ML heuristic: {gmv['full_system'] / best_heuristic:.2f}x; "
          f"Spearman(score, true value) within candidates: "
          + ", ".join(f"{k} {v:.2f}" for k, v in diag["spearman"].items())
          + f"; served P / true P on the served slots: {diag['served_p_over_true_p']:.2f}")
    print(f"waterfall plot: {figure}\n")
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
        for rep in truths[1:]:
            g = rep["gmv_per_user"]
            print(f"  seed {rep['seed']}: full system {g['full_system'] / g['popularity']:.2f}x popularity, "
                  f"{g['full_system'] / max(g['popularity_logs'], g['category_affinity']):.2f}x best heuristic")
    t = training[0]
    print(f"full system: bundle trained on the logs before {t['history_cut']} in {t['training_seconds']:.0f} s "
          f"(evaluation gate {'passed' if t['gate_passed'] else 'FAILED'}); served "
          f"{t['served_requests']:,} requests at {t['serving_ms_per_request']:.1f} ms each")
    print(f"wrote {out} ({seconds:.1f} s for the fixed-seed run)")


if __name__ == "__main__":
    main()
