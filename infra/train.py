"""``feedrank train``: one batch job from event logs to a registered feed bundle.

Steps, in order (each logged, timed, and recorded in ``<run_dir>/train_state.json`` when it
completes; a re-run resumes after the last completed step unless ``--restart``):

1. ``etl``        Spark ETL: validation/quarantine, labels, point-in-time features, and the data
                  checks (schema, null rates, volume, freshness); a failing check stops the job
                  with the ETL's report naming table, column and figure.
2. ``feast``      Feast apply and materialize over the ETL's feature tables.
3. ``retrieval``  two-tower training, item embeddings and the FAISS index, recall evaluation.
4. ``ranking``    IPS-weighted LambdaMART + calibrated purchase model (+ Optuna when configured)
                  and their Treelite compilation. When too few requests have a complete 7-day
                  purchase label (a log not much longer than 7 days), the purchase model trains
                  on the 24-hour label instead, with a warning (:func:`effective_purchase_label`).
5. ``snapshots``  the serving snapshots: items (attributes, item and seller features,
                  popularity) and users (latest features), the bundle manifest.
6. ``evaluate``   offline evaluation of the bundle's scorer on the held-out time slice
                  (:func:`experiments.evaluate.evaluate_scored`: NDCG, calibration, off-policy
                  estimates, exposure, with plots) and the evaluation gate: on randomized test
                  requests, the model's estimated GMV per request must not be significantly
                  below the logged order's, else the job stops before registration.
7. ``register``   MLflow run with params, metrics, data window, features, commit and plots; the
                  bundle registered as a new version with the alias ``challenger``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from features.popularity import popularity_counts
from infra.config import FeedrankConfig

__all__ = ["STEPS", "EvaluationGateError", "TrainReport", "effective_purchase_label", "run_training"]

logger = logging.getLogger(__name__)

STEPS: tuple[str, ...] = ("etl", "feast", "retrieval", "ranking", "snapshots", "evaluate", "register")
_STATE = "train_state.json"


# The 7-day purchase label is complete only for impressions at least 7 days before the log's end:
# a 7-day log has none, an 8-day log 1/8. Below this share of requests the 24-hour label, complete
# for all but the last day, trains a better purchase model than the few complete 7-day rows.
MIN_COMPLETE_7D_SHARE = 0.2


def effective_purchase_label(frame: pd.DataFrame, config: Any) -> tuple[str, str | None]:
    """The purchase label to train on, and why it is not the configured one (None when it is).

    ``purchased_7d`` (with ``complete_labels_only``) falls back to ``purchased_24h`` when fewer than
    :data:`MIN_COMPLETE_7D_SHARE` of the training requests (or fewer than 10) have a complete label.
    """
    if config.purchase_label != "purchased_7d" or not config.complete_labels_only or "label_complete" not in frame:
        return config.purchase_label, None
    requests = frame["request_id"].nunique()
    complete = frame.loc[frame["label_complete"].to_numpy(dtype=bool), "request_id"].nunique()
    if complete >= max(10, MIN_COMPLETE_7D_SHARE * requests):
        return config.purchase_label, None
    return "purchased_24h", (f"only {complete:,} of {requests:,} requests have a complete purchased_7d label (their "
                             "7 days have not passed by the end of the log): the purchase model trains on "
                             "purchased_24h; use a log longer than 7 days past most impressions for the 7-day label")


class EvaluationGateError(RuntimeError):
    """The trained bundle failed the offline evaluation gate; nothing was registered."""


@dataclass
class TrainReport:
    """What a training run did: per-step seconds and outputs, metrics, the registered version."""

    run_dir: str
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    version: str | None = None

    @property
    def bundle_dir(self) -> Path:
        return Path(self.run_dir) / "bundle"


def _load_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / _STATE
    return json.loads(path.read_text()) if path.exists() else {"completed": {}}


def _save_state(run_dir: Path, state: dict[str, Any]) -> None:
    tmp = run_dir / f".{_STATE}.tmp"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True, default=str))
    tmp.replace(run_dir / _STATE)


def _read(root: Path, table: str, columns: list[str] | None = None) -> pd.DataFrame:
    return ds.dataset(root / table, format="parquet", partitioning="hive").to_table(columns=columns).to_pandas()


def _log_window(logs: Path) -> tuple[int, int]:
    """[first impression, last impression + 1 µs) in µs."""
    imp = ds.dataset(logs / "impressions", format="parquet").to_table(columns=["ts"])["ts"]
    import pyarrow.compute as pc

    lo, hi = pc.min_max(imp).values()
    return int(lo.value), int(hi.value) + 1


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run_training(config: FeedrankConfig, *, logs_dir: str | Path, run_dir: str | Path, register: bool = True,
                 restart: bool = False, on_step: Callable[[str], None] | None = None) -> TrainReport:
    """Run the batch job; see the module docstring for the steps.

    Parameters
    ----------
    config : FeedrankConfig
    logs_dir : folder with the contract tables
    run_dir : working folder (features, bundle, reports, state)
    register : bool
        Register the bundle in MLflow (off: stop after the evaluation gate).
    restart : bool
        Ignore completed steps recorded by an earlier run.
    on_step : callable, optional
        Called with each step's name before it runs (progress display, fault injection in tests).

    Raises
    ------
    features.checks.DataCheckError
        A data check failed in the ETL.
    EvaluationGateError
        The trained ranker did not beat the logging policy offline.
    """
    logs, run = Path(logs_dir), Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    state = {"completed": {}} if restart else _load_state(run)
    report = TrainReport(run_dir=str(run), steps=dict(state["completed"]))
    ctx = _Context(config=config, logs=logs, run=run, report=report)
    for step in STEPS:
        if step == "register" and not register:
            break
        if step in state["completed"]:
            logger.info("step %s: done in an earlier run, skipped", step)
            ctx.restore(step, state["completed"][step])
            continue
        if on_step is not None:
            on_step(step)
        logger.info("step %d/%d: %s", STEPS.index(step) + 1, len(STEPS), step)
        start = time.perf_counter()
        outputs = getattr(ctx, f"step_{step}")()
        outputs["seconds"] = round(time.perf_counter() - start, 2)
        logger.info("step %s finished in %.1f s", step, outputs["seconds"])
        state["completed"][step] = outputs
        report.steps[step] = outputs
        _save_state(run, state)
    return report


@dataclass
class _Context:
    config: FeedrankConfig
    logs: Path
    run: Path
    report: TrainReport

    @property
    def features_dir(self) -> Path:
        return self.run / "features"

    @property
    def bundle(self) -> Path:
        return self.run / "bundle"

    def restore(self, step: str, outputs: dict[str, Any]) -> None:
        self.report.metrics.update({k: v for k, v in outputs.get("metrics", {}).items()})
        if step == "ranking" and outputs.get("purchase_label"):
            self._use_purchase_label(outputs["purchase_label"])
        if step == "register":
            self.report.version = outputs.get("version")

    # ------------------------------------------------------------------ steps
    def step_etl(self) -> dict[str, Any]:
        from features.etl import FeatureEtl
        from features.spark import spark_session

        with spark_session(self.config.features.spark) as spark:
            etl = FeatureEtl(self.config.features).run(spark, str(self.logs), str(self.features_dir))
        return {"impressions": etl.impressions, "impressions_per_second": round(etl.impressions_per_second)}

    def step_feast(self) -> dict[str, Any]:
        from features.store import apply_definitions, materialize, open_store

        store = open_store(self.features_dir, self.config.features.feast)
        views = apply_definitions(store, self.features_dir, self.config.features.etl)
        end = materialize(store, self.features_dir, self.config.features.etl)
        return {"views": views, "materialized_until": end.isoformat()}

    def step_retrieval(self) -> dict[str, Any]:
        from retrieval.artifacts import save_two_tower
        from retrieval.logs import read_event_log
        from retrieval.train import train_two_tower
        from retrieval.two_tower import TwoTowerRetriever

        log = read_event_log(self.logs)
        _, end = _log_window(self.logs)
        fitted = train_two_tower(log, self.config.retrieval, train_end_us=end)
        retriever = TwoTowerRetriever.from_fitted(fitted, log)
        metrics = {"retrieval_validation_recall": float(fitted.validation_recall),
                   "retrieval_examples_per_second": float(fitted.examples_per_second)}
        save_two_tower(retriever, self.bundle / "retrieval", metrics=metrics)
        self.report.metrics.update(metrics)
        return {"metrics": metrics, "best_epoch": fitted.best_epoch, "examples": fitted.n_examples}

    def _use_purchase_label(self, label: str) -> None:
        if label != self.config.ranking.purchase_label:
            self.config = dataclasses.replace(self.config, ranking=dataclasses.replace(self.config.ranking,
                                                                                       purchase_label=label))

    def step_ranking(self) -> dict[str, Any]:
        from ranking.train import train_ranking_models

        frame = _read(self.features_dir, "training")
        label, fallback = effective_purchase_label(frame, self.config.ranking)
        if fallback:
            logger.warning("%s", fallback)
            self._use_purchase_label(label)
        result = train_ranking_models(frame, self.config.ranking, self.bundle / "ranking")
        metrics = _flat_metrics(result.metadata.get("metrics", {}))
        self.report.metrics.update(metrics)
        return {"metrics": metrics, "rows": len(frame), "features": len(result.metadata.get("features", [])),
                "purchase_label": label, "purchase_label_fallback": fallback}

    def step_snapshots(self) -> dict[str, Any]:
        from ranking.artifacts import read_metadata
        from serving.bundle import BundleManifest, DataWindow, write_bundle_manifest
        from serving.model_pipeline import ITEM_SNAPSHOT, USER_SNAPSHOT

        items = build_item_snapshot(self.logs, self.features_dir)
        items.to_parquet(self.bundle / ITEM_SNAPSHOT, index=False)
        users = latest_partition(self.features_dir / "user_features").drop(columns=["event_timestamp", "date"],
                                                                           errors="ignore")
        users.to_parquet(self.bundle / USER_SNAPSHOT, index=False)
        meta = read_metadata(self.bundle / "ranking")
        start, end = _log_window(self.logs)
        manifest = BundleManifest(
            components={"retrieval": "retrieval", "ranker": "ranking", "purchase_model": "ranking",
                        "item_snapshot": ITEM_SNAPSHOT, "user_snapshot": USER_SNAPSHOT},
            feature_list=tuple(meta["features"]), data_window=DataWindow(start=_iso(start), end=_iso(end)),
            created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            metrics={k: v for k, v in self.report.metrics.items() if np.isfinite(v)})
        write_bundle_manifest(self.bundle, manifest)
        return {"items": len(items), "users": len(users)}

    def _slices(self, data: pd.DataFrame, test: pd.DataFrame) -> None:
        """The evaluation frame with its slice columns (``evaluation/scored.parquet``, for ``feedrank
        evaluate --slices``) and the slice report beside the evaluation report."""
        from experiments.slices import (
            DEFAULT_SLICES,
            SliceConfig,
            slice_metrics,
            write_slice_report,
        )

        signup = _read(self.logs, "users", ["user_id", "signup_ts"]).set_index("user_id")["signup_ts"]
        tenure = pd.to_datetime(test["ts"], utc=True) - pd.to_datetime(test["user_id"].map(signup), utc=True)
        scored = data.assign(device=test["device"].to_numpy(), category_id=test["category_id"].to_numpy(),
                             is_new_buyer=(tenure < pd.Timedelta(days=30)).to_numpy())  # signed up < 30 days ago
        scored.to_parquet(self.run / "evaluation" / "scored.parquet", index=False)
        config = SliceConfig(n_boot=100)
        write_slice_report(slice_metrics(scored, slices=DEFAULT_SLICES, config=config), self.run / "evaluation",
                           config=config)

    def step_evaluate(self) -> dict[str, Any]:
        from experiments.evaluate import evaluate_scored
        from ranking.propensity import PositionBiasEstimator
        from ranking.scorer import ExpectedGMVScorer
        from ranking.train import split_by_time

        cfg = self.config.ranking
        frame = _read(self.features_dir, "training")
        test = split_by_time(frame, valid_fraction=cfg.valid_fraction, test_fraction=cfg.test_fraction).test
        scorer = ExpectedGMVScorer.from_dir(self.bundle / "ranking")
        X = test[scorer.feature_names].to_numpy(dtype=np.float64, na_value=np.nan)
        scored = scorer.score(X, price=test["price"].to_numpy(), request_index=test["request_id"].to_numpy())
        # The gate compares the model's order with the logged order on randomized requests by a
        # position-based IPS estimate of GMV per request (see pbm_gmv_per_request): their items
        # were shuffled over the slots, so a purchase divided by its slot's examination
        # probability estimates the item's purchase value wherever it is shown. It fails only
        # when the model is significantly worse (the 95% bootstrap interval of the difference
        # lies below 0): a small test slice is noisy, and "no evidence of harm" is what the
        # canary then checks online.
        from ranking.artifacts import read_metadata

        meta = read_metadata(self.bundle / "ranking")
        curve = PositionBiasEstimator.from_dict(meta["propensity"]) if meta.get("propensity") else None
        position = test["position"].fillna(0).to_numpy(np.int64)
        examination = curve.propensity(position) if curve is not None else 1.0 / np.log2(position + 2.0)
        is_rand = test["randomized"].to_numpy(bool)
        if not is_rand.any():
            raise EvaluationGateError("the test slice holds no randomized request; cannot judge the bundle "
                                      "(more traffic or a larger randomized share needed)")
        exam = np.clip(examination[is_rand], 1.0 / cfg.propensity.max_weight, 1.0)
        reward = (test["purchased_7d" if cfg.purchase_label == "purchased_7d" else cfg.purchase_label]
                  .to_numpy(np.float64) * test["price"].to_numpy(np.float64))[is_rand]
        requests = test["request_id"].to_numpy()[is_rand]
        model_v = pbm_gmv_per_request(reward, exam, scored.score[is_rand], requests, curve)
        logged_v = pbm_gmv_per_request(reward, exam, -position[is_rand].astype(np.float64), requests, curve)
        diff = model_v - logged_v
        rng = np.random.default_rng(cfg.seed)
        boots = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(1000)])
        low, high = np.quantile(boots, [0.025, 0.975])
        model_ndcg, logged_ndcg = float(model_v.mean()), float(logged_v.mean())
        # Off-policy report (experiments.evaluate) over the whole test slice.
        data = pd.DataFrame({
            "request_id": test["request_id"].to_numpy(), "item_id": test["item_id"].to_numpy(), "position": position,
            "label": test["label"].to_numpy(np.float64), "score": scored.score,
            "p_purchase": scored.purchase_probability, "purchased": test["purchased_7d"].to_numpy(int),
            "price": test["price"].to_numpy(), "propensity": np.clip(examination, 1e-6, 1.0),
            "is_new_seller": test["f_item_new_seller"].fillna(0).to_numpy(bool),
            "margin_rate": test["margin_rate"].to_numpy(np.float64, na_value=np.nan),
            "pscore": test["propensity"].where(test["randomized"]).to_numpy(np.float64, na_value=np.nan)})
        report = evaluate_scored(data, self.run / "evaluation", model_version="candidate")
        self._slices(data, test)
        metrics = {"gate_model_gmv_per_request": model_ndcg, "gate_logged_gmv_per_request": logged_ndcg,
                   "gate_difference_ci_low": float(low), "gate_difference_ci_high": float(high)}
        self.report.metrics.update(metrics)
        verdict = {**metrics, "passed": bool(high >= 0.0), "requests": int(len(diff)),
                   "report": str(self.run / "evaluation")}
        (self.run / "evaluation" / "gate.json").write_text(json.dumps(verdict, indent=2))
        if not verdict["passed"]:
            raise EvaluationGateError(
                f"evaluation gate failed: on {len(diff)} randomized test requests the model's estimated GMV per "
                f"request {model_ndcg:.4f} is significantly below the logged order's {logged_ndcg:.4f} (95% interval "
                f"of the difference [{low:.4f}, {high:.4f}]); nothing registered (report: {self.run / 'evaluation'})")
        return {"metrics": metrics, "report": str(report.out_dir) if hasattr(report, "out_dir") else
                str(self.run / "evaluation")}

    def step_register(self) -> dict[str, Any]:
        from infra.registry import FeedRegistry
        from serving.bundle import read_bundle_manifest

        registry = FeedRegistry(self.config.infra.registry, data_dir=self.config.infra.data_dir)
        manifest = read_bundle_manifest(self.bundle)
        params = {"ranking.ips_weighting": self.config.ranking.ips_weighting,
                  "retrieval.embedding_dim": getattr(self.config.retrieval.model, "embedding_dim", None),
                  "logs": str(self.logs)}
        with registry.start_run("train", params=params, data_window=manifest.data_window,
                                feature_list=manifest.feature_list) as run:
            for png in sorted((self.bundle / "ranking").glob("*.png")):
                run.log_plot_file(png)
            info = registry.register_bundle(self.bundle, metrics=self.report.metrics, run=run)
        self.report.version = str(info.version)
        return {"version": str(info.version), "tracking_uri": registry.tracking_uri}


def pbm_gmv_per_request(reward: np.ndarray, examination: np.ndarray, score: np.ndarray, request_ids: np.ndarray,
                        curve: Any) -> np.ndarray:
    """Per-request IPS estimate of an order's GMV under the position-based model, shape (n_requests,).

    ``V = sum_i reward_i / e(logged slot_i) * e(rank_i)``, ranking each request's rows by
    ``score``; on randomized traffic (items shuffled over the slots) it is unbiased for the
    order's expected GMV, and for the logged order it is the observed GMV. Written here because
    the slot-exact estimators of :mod:`experiments.ope` need far more traffic per slot.
    """
    frame = pd.DataFrame({"r": request_ids, "w": reward / examination, "s": score})
    rank = (frame.groupby("r")["s"].rank(method="first", ascending=False) - 1).to_numpy(np.int64)
    e_rank = curve.propensity(rank) if curve is not None else 1.0 / np.log2(rank + 2.0)
    return (frame["w"] * e_rank).groupby(frame["r"]).sum().to_numpy()


def _flat_metrics(nested: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}".replace("@", "_at_")
        if isinstance(value, dict):
            out.update(_flat_metrics(value, f"{name}_"))
        elif isinstance(value, int | float) and not isinstance(value, bool) and value is not None:
            out[name] = float(value)
    return out


def latest_partition(table_dir: Path) -> pd.DataFrame:
    """The newest ``date=`` partition of an ETL table."""
    dates = sorted(p for p in table_dir.glob("date=*"))
    if not dates:
        raise FileNotFoundError(f"{table_dir}: no date=* partitions")
    return ds.dataset(dates[-1], format="parquet").to_table().to_pandas()


def build_item_snapshot(logs: Path, features_dir: Path, *, popularity_days: float = 7.0) -> pd.DataFrame:
    """Items with their serving attributes and the newest item and seller feature rows.

    ``popularity`` is :func:`features.popularity.popularity_counts` (click 1, add-to-cart 2,
    purchase 4) over the ``popularity_days`` up to the last event.
    """
    items = _read(logs, "items")
    item_f = latest_partition(features_dir / "item_features").drop(columns=["event_timestamp", "date"],
                                                                   errors="ignore")
    seller_f = latest_partition(features_dir / "seller_features").drop(columns=["event_timestamp", "date"],
                                                                       errors="ignore")
    events = _read(logs, "events", ["ts", "item_id", "type"])
    as_of = events["ts"].max()
    recent = events[events["ts"] >= as_of - pd.Timedelta(days=popularity_days)]
    popularity = popularity_counts(recent["item_id"].to_numpy(), recent["type"].to_numpy())
    out = items[["item_id", "seller_id", "category_id", "price", "margin_rate", "in_stock"]].merge(
        item_f, on="item_id", how="left").merge(seller_f, on="seller_id", how="left")
    out["is_new_seller"] = out["f_item_new_seller"].fillna(0).astype(bool) if "f_item_new_seller" in out else False
    out["popularity"] = popularity.reindex(out["item_id"]).fillna(0.0).to_numpy()
    for col in ("item_category_id", "item_seller_id"):
        if col not in out:
            out[col] = out["category_id" if col == "item_category_id" else "seller_id"]
    if "item_created_us" not in out:
        created = pd.to_datetime(items.set_index("item_id")["created_ts"], utc=True)
        out["item_created_us"] = created.reindex(out["item_id"]).astype("int64").to_numpy() // 1000
    return out.sort_values("item_id").reset_index(drop=True)


def clean_run_dir(run_dir: str | Path) -> None:
    """Remove a run folder (``--restart`` with a fresh start)."""
    shutil.rmtree(run_dir, ignore_errors=True)
