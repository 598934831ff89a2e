"""Drift, skew and freshness figures of the demo's world, with and without the harness bug.

    python benchmarks/monitor_world.py --out build/bench/monitor_world.json

1. The ``make demo`` marketplace (``infra/demo.yaml``) is simulated and trained by the batch job
   (cached under ``--work``).
2. The last log day's feed requests (user, device, time of day) are replayed one day later, just
   after the online store's materialization, through the trained bundle's serving pipeline with
   user rows read online from Feast (snapshot and real-time views); every request's served
   feature vectors are sampled (``ServedFeatureLog`` at share 1.0).
3. The same replay with the simulated A/B's bug: the real-time (``user_realtime``) row is never
   read at serving.
4. For each: drift of the served window against the training set (PSI / JS per feature),
   skew of ``--skew-requests`` sampled requests against Feast's point-in-time recomputation,
   and freshness; ``feedrank monitor report --skew`` renders the first replay's page.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("monitor_world")
DAY_US = 86_400_000_000


def _train(root: Path):
    from experiments.simulator import MarketplaceSimulator
    from infra.config import load_config
    from infra.train import EvaluationGateError, run_training

    config = load_config(Path("infra/demo.yaml"), env={}, overrides={"infra": {"data_dir": str(root / "data")}})
    logs, run = root / "data" / "logs", root / "data" / "train"
    if not (run / "bundle" / "bundle.json").exists():
        if not (run / "train_state.json").exists():
            MarketplaceSimulator(config.experiments.simulator).run(logs, progress=False)
        try:
            run_training(config, logs_dir=logs, run_dir=run, register=False)
        except EvaluationGateError as exc:  # the bundle is complete before the gate; monitoring needs no gate
            logger.warning("evaluation gate: %s", exc)
    return config, logs, run / "features", run / "bundle"


def _replay(config, logs: Path, features_dir: Path, bundle: Path, out: Path, *, realtime: bool) -> dict:
    import pyarrow.dataset as ds

    from features.derived import REALTIME_INPUTS
    from features.store import latest_snapshot_time, open_store
    from serving.exploration import ExplorationConfig
    from serving.features import FeastUserFeatures
    from serving.impression_log import ImpressionLog, ServedFeatureLog
    from serving.metrics import StageTimer
    from serving.model_pipeline import ModelPipeline
    from serving.requests import FeedRequest
    from serving.rerank import Reranker

    store = open_store(features_dir, config.features.feast)
    log = ServedFeatureLog(out, share=1.0).start()
    impressions = ImpressionLog(out).start()

    def source(snapshot):
        return FeastUserFeatures(store, snapshot_refs=[f"user_snapshot:{c}" for c in snapshot.columns],
                                 realtime_refs=[f"user_realtime:{c}" for c in REALTIME_INPUTS] if realtime else [],
                                 fallback=snapshot)

    pipeline = ModelPipeline.from_bundle(bundle, version="demo", reranker=Reranker(config.serving.rerank),
                                         exploration=ExplorationConfig(share=0.0), user_source=source,
                                         feature_log=log, impression_log=impressions)
    imp = ds.dataset(logs / "impressions", format="parquet").to_table(
        columns=["request_id", "ts", "user_id", "device"]).to_pandas()
    reqs = imp.drop_duplicates("request_id").sort_values("ts")
    ts_us = reqs["ts"].astype("datetime64[us, UTC]").astype("int64").to_numpy()
    end_us = int(latest_snapshot_time(features_dir).timestamp() * 1e6)  # midnight after the last log day
    last_day = ts_us >= end_us - DAY_US
    reqs, ts_us = reqs[last_day], ts_us[last_day] + DAY_US  # the same requests, one day later
    started = time.perf_counter()
    for (_, r), ts in zip(reqs.iterrows(), ts_us, strict=True):
        day = int(ts // DAY_US)
        request = FeedRequest(request_id=f"replay-{int(r['request_id'])}", user_id=int(r["user_id"]), k=20,
                              candidate_count=200, exclude_item_ids=np.zeros(0, np.int64),
                              device=r["device"] if isinstance(r["device"], str) else None, country=None,
                              hour=int(ts // 3_600_000_000 % 24), day_of_week=(day + 3) % 7, ts_us=int(ts))
        pipeline.rank(request, arm="champion", timer=StageTimer(), deadline=None)
    seconds = time.perf_counter() - started
    log.close()
    impressions.close()
    return {"requests": len(reqs), "seconds": round(seconds, 1), "window_start_us": int(ts_us.min()),
            "window_end_us": int(ts_us.max()) + 1}


def _judge(config, features_dir: Path, bundle: Path, out: Path, skew_requests: int) -> dict:
    from features.store import open_store
    from monitoring import feature_drift, feature_skew, recompute_offline
    from monitoring.sources import bundle_features, served_window, training_reference

    features = bundle_features(bundle)
    served = served_window(out)
    drift = feature_drift(training_reference(features_dir, features), served, features=features,
                          config=config.monitoring.drift, reference_name="training", current_name="served replay")
    keys = served["request_key"].unique()
    keep = np.random.default_rng(0).choice(keys, min(skew_requests, len(keys)), replace=False)
    sample = served[served["request_key"].isin(keep)].reset_index(drop=True)
    started = time.perf_counter()
    offline = recompute_offline(open_store(features_dir, config.features.feast), sample, config.features.etl)
    recompute_s = time.perf_counter() - started
    skew = feature_skew(sample, offline, features=features, config=config.monitoring.skew)
    d, s = drift.to_frame(), skew.to_frame()
    return {
        "served_rows": len(served), "drift_alerts": drift.flagged(),
        "drift_warnings": [f for f in drift.flagged("warn") if f not in drift.flagged()],
        "drift_top": d.head(12)[["feature", "psi", "js", "level", "missing_reference", "missing_current"]]
        .round(4).to_dict(orient="records"),
        "skew_requests": skew.requests, "skew_rows": len(sample), "skew_recompute_seconds": round(recompute_s, 1),
        "skew_flagged": skew.flagged(),
        "skew_top": s.head(10)[["feature", "mismatch_rate", "mean_abs_diff", "missing_served", "missing_offline"]]
        .round(4).to_dict(orient="records"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="build/bench/monitor_world")
    parser.add_argument("--skew-requests", type=int, default=300)
    parser.add_argument("--reuse-replays", action="store_true", help="judge the served logs of an earlier run")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("py4j", "feast"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    root = Path(args.work)
    config, logs, features_dir, bundle = _train(root)
    result: dict = {"benchmark": "monitor_world", "world": "infra/demo.yaml"}
    for name, realtime in (("realtime_read", True), ("realtime_missing", False)):
        out = root / f"serving-{name}"
        replay_file = out / "replay.json"
        if args.reuse_replays and replay_file.exists():
            replay = json.loads(replay_file.read_text())
        else:
            if out.exists():
                import shutil

                shutil.rmtree(out)
            replay = _replay(config, logs, features_dir, bundle, out, realtime=realtime)
            replay_file.write_text(json.dumps(replay))
        result[name] = replay | _judge(config, features_dir, bundle, out, args.skew_requests)
        r = result[name]
        print(f"\n== {name}: {replay['requests']} requests replayed in {replay['seconds']} s, {r['served_rows']} "
              f"served rows")
        print(f"drift alerts: {r['drift_alerts'] or 'none'}; warnings: {r['drift_warnings'] or 'none'}")
        print(pd.DataFrame(r["drift_top"]).to_string(index=False))
        print(f"skew over {r['skew_requests']} requests ({r['skew_rows']} rows, recomputed in "
              f"{r['skew_recompute_seconds']} s): flagged {r['skew_flagged'] or 'none'}")
        print(pd.DataFrame(r["skew_top"]).to_string(index=False))

    # drift between serving windows: two random halves of the clean replay (an A/A: what the
    # thresholds do at this sample size), and the buggy replay against the clean one
    from monitoring import feature_drift
    from monitoring.sources import bundle_features, served_window

    features = bundle_features(bundle)
    clean, bug = served_window(root / "serving-realtime_read"), served_window(root / "serving-realtime_missing")
    half = clean["request_key"].str.rsplit("-", n=1).str[-1].astype(int) % 2 == 0  # by logged request id
    for name, ref, cur in (("aa_halves", clean[half], clean[~half]), ("bug_vs_clean", clean, bug)):
        report = feature_drift(ref, cur, features=features, config=config.monitoring.drift)
        frame = report.to_frame()
        result[name] = {"alerts": report.flagged(), "max_psi_unflagged": float(
            frame[~frame["feature"].isin(report.flagged("warn"))]["psi"].max()),
            "top": frame.head(8)[["feature", "psi", "js", "level", "missing_current"]].round(4).to_dict(orient="records")}
        print(f"\n== drift between serving windows, {name}: alerts {report.flagged() or 'none'}")
        print(frame.head(8)[["feature", "psi", "js", "level", "missing_reference", "missing_current"]]
              .to_string(index=False))

    from features.store import open_store
    from serving.bundle import read_bundle_manifest
    from serving.freshness import FreshnessProbe

    probe = FreshnessProbe(bundles={"bundle": read_bundle_manifest(bundle)},
                           store=open_store(features_dir, config.features.feast))
    world_now = result["realtime_read"]["window_end_us"] / 1e6
    result["freshness_hours_at_window_end"] = {k: round(v / 3600, 2) for k, v in FreshnessProbe(
        bundles=probe.bundles, store=probe.store, clock=lambda: world_now).ages().items()}
    result["freshness_hours_at_wall_clock"] = {k: round(v / 3600, 1) for k, v in probe.ages().items()}
    print("\nfreshness (hours) at the end of the replayed window:", result["freshness_hours_at_window_end"])
    print("freshness (hours) at the wall clock:", result["freshness_hours_at_wall_clock"])

    report_dir = root / "report"
    cmd = [sys.executable, "-m", "infra.cli", "--config", "infra/demo.yaml", "monitor", "report", "--skew",
           "--served", str(root / "serving-realtime_read"), "--features", str(features_dir), "--bundle", str(bundle),
           "--max-requests", str(args.skew_requests), "--out", str(report_dir)]
    started = time.perf_counter()
    done = subprocess.run(cmd, env={**__import__("os").environ, "FEEDRANK_INFRA__DATA_DIR": str(root / "data")},
                          capture_output=True, text=True)
    result["report"] = {"returncode": done.returncode, "seconds": round(time.perf_counter() - started, 1),
                        "path": str(report_dir / "report.md")}
    print(f"\nfeedrank monitor report: exit {done.returncode} in {result['report']['seconds']} s -> "
          f"{report_dir / 'report.md'}")
    if done.returncode:
        print(done.stderr[-3000:])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
