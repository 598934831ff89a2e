"""The ranking training pipeline: from the ETL's ``training/`` table to a scorer folder.

``train_ranking_models(frame, config, out_dir)`` takes the table described in
``docs/training-data.md`` (features are the ``f_*`` columns, a request is a query) and:

1. splits requests by time into train, validation and test slices (``valid_fraction``,
   ``test_fraction`` of requests, in that order);
2. estimates position bias from the randomized impressions of the train and validation
   slices (:class:`~ranking.propensity.PositionBiasEstimator`);
3. trains the LambdaMART ranker with IPS pair weights (or without, the naive baseline),
   optionally after an Optuna study, early-stopped on validation ``ndcg@stop_at``;
4. trains the purchase model on rows whose label window has closed, split again by time,
   calibrates it by isotonic regression on its validation slice and measures it on its
   test slice (expected calibration error, reliability diagram);
5. writes both models (LightGBM text), the calibrator (``.npz``), compiled libraries when
   the compiler works, figures and ``metadata.json``.

Queries without two different grades carry no pairwise signal; they are left out of the
ranker's training rows and of the ranking metrics (LightGBM would count them as NDCG 1).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ranking._metrics import group_sizes, ndcg_at_k
from ranking.artifacts import write_metadata
from ranking.calibration import (
    Calibrator,
    expected_calibration_error,
    plot_reliability_diagram,
    select_calibrator,
)
from ranking.compile import (
    CompilationError,
    CompiledPredictor,
    NativePredictor,
    compile_model,
    warn_compiled_unavailable,
)
from ranking.config import FUNNELS, STAGE_LABELS, GBDTParams, RankingConfig
from ranking.propensity import PositionBiasEstimator
from ranking.purchase import PurchaseModel
from ranking.ranker import LambdaMARTRanker
from ranking.scorer import POSITION_FEATURE
from ranking.tuning import TuningResult, tune_ranker

__all__ = [
    "REQUIRED_COLUMNS",
    "PurchaseFit",
    "TimeSlices",
    "TrainingResult",
    "check_training_frame",
    "feature_columns",
    "fit_position_bias",
    "fit_purchase_model",
    "fit_ranker",
    "ranking_metrics",
    "split_by_time",
    "train_ranking_models",
]

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = ("request_id", "ts", "label", "position", "randomized", "propensity",
                                     "clicked", "sample_weight", "price")
COMPILE_TOLERANCE = 1e-5
_FILES = {"ranker": "ranker.txt", "purchase": "purchase.txt", "calibrator": "calibrator.npz"}


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The model features: every column whose name starts with ``f_``, in table order."""
    return [c for c in frame.columns if str(c).startswith("f_")]


def check_training_frame(frame: Any, config: RankingConfig) -> list[str]:
    """Check the ``training/`` table once, at the pipeline's boundary; return its feature columns.

    Raises
    ------
    TypeError
        When ``frame`` is not a DataFrame, ``config`` not a RankingConfig, or a feature is not numeric.
    ValueError
        When columns are missing, the frame is empty, or values are out of range.
    """
    if not isinstance(config, RankingConfig):
        raise TypeError(f"config must be a RankingConfig, got {type(config).__name__}")
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    needed = list(REQUIRED_COLUMNS) + [config.purchase_label]
    if config.complete_labels_only and config.purchase_label == "purchased_7d":
        needed.append("label_complete")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"frame is missing columns {missing} (see docs/training-data.md)")
    features = feature_columns(frame)
    if not features:
        raise ValueError("frame has no feature columns (names starting with 'f_')")
    bad = [c for c in features if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))]
    if bad:
        raise TypeError(f"feature columns must be numeric, got non-numeric {bad[:5]}")
    if len(frame) == 0:
        raise ValueError("frame has no rows")
    for name in ("request_id", "ts", "label", "sample_weight", "price", "randomized", "clicked",
                 config.purchase_label):
        if frame[name].isna().any():
            raise ValueError(f"column {name} must not contain nulls")
    if not pd.api.types.is_datetime64_any_dtype(frame["ts"]):
        raise TypeError(f"column ts must be a timestamp, got {frame['ts'].dtype}")
    label = frame["label"].to_numpy()
    if (label < 0).any() or (label > 31).any() or (label != np.floor(label)).any():
        raise ValueError("column label must hold integer grades in [0, 31]")
    if (frame["sample_weight"] <= 0).any():
        raise ValueError("column sample_weight must be > 0")
    if (frame["price"] <= 0).any():
        raise ValueError("column price must be > 0")
    pos = frame["position"].dropna()
    if (pos < 0).any():
        raise ValueError("column position must be >= 0 where present")
    return features


@dataclass(frozen=True)
class TimeSlices:
    """Rows split by request time: train (earliest), valid, test (latest; may be empty)."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame

    def window(self) -> dict[str, dict[str, Any]]:
        """First and last impression time, rows and requests of each slice (JSON-safe)."""
        out = {}
        for name in ("train", "valid", "test"):
            part = getattr(self, name)
            out[name] = {
                "start": None if part.empty else pd.Timestamp(part["ts"].min()).isoformat(),
                "end": None if part.empty else pd.Timestamp(part["ts"].max()).isoformat(),
                "rows": len(part),
                "requests": int(part["request_id"].nunique()),
            }
        return out


def split_by_time(frame: pd.DataFrame, *, valid_fraction: float, test_fraction: float) -> TimeSlices:
    """Split requests by their first impression time; each slice's rows are grouped by request.

    Rows are ordered by (request time, request_id, a hash of the row's ``impression_id``), so a
    request's rows are contiguous, as LightGBM's query groups require, and in an order that
    says nothing about the logged slot. That matters: LambdaRank's first iteration ranks tied
    scores by row order, and LightGBM's NDCG breaks ties by row order too; rows in slot order
    would hand both the logging policy's ranking, which position bias makes look good on
    logged clicks (a one-tree model then wins validation through its ties).

    Raises
    ------
    ValueError
        When the train or validation slice would hold no request.
    """
    req_ts = frame.groupby("request_id", sort=False)["ts"].transform("min")
    key = frame["impression_id"].to_numpy() if "impression_id" in frame.columns else np.arange(len(frame))
    ordered = frame.assign(_req_ts=req_ts, _mix=pd.util.hash_array(np.asarray(key)))
    ordered = ordered.sort_values(["_req_ts", "request_id", "_mix"], kind="stable")
    ordered = ordered.drop(columns=["_req_ts", "_mix"]).reset_index(drop=True)
    requests = ordered["request_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, requests[1:] != requests[:-1]])
    n_req = len(starts)
    n_test = int(round(n_req * test_fraction))
    n_valid = int(round(n_req * valid_fraction))
    n_train = n_req - n_valid - n_test
    if n_train < 1 or n_valid < 1:
        raise ValueError(f"frame has {n_req} requests: too few to split into train/valid/test with "
                         f"valid_fraction={valid_fraction}, test_fraction={test_fraction}")
    bounds = np.r_[starts, len(ordered)]
    cut1, cut2 = bounds[n_train], bounds[n_train + n_valid]
    return TimeSlices(train=ordered.iloc[:cut1].reset_index(drop=True),
                      valid=ordered.iloc[cut1:cut2].reset_index(drop=True),
                      test=ordered.iloc[cut2:].reset_index(drop=True))


def _informative(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of requests with at least two rows and two different grades."""
    spread = frame.groupby("request_id", sort=False)["label"].transform(lambda s: s.max() > s.min())
    return frame[spread.to_numpy(dtype=bool)].reset_index(drop=True)


def fit_position_bias(frame: pd.DataFrame, config: RankingConfig) -> PositionBiasEstimator:
    """Estimate examination by position from the frame's randomized rows (``randomized`` and a propensity).

    Raises
    ------
    ValueError
        When the frame has too little randomized traffic (the message says how much).
    """
    randomized = frame["randomized"].to_numpy(dtype=bool) & frame["propensity"].notna().to_numpy()
    est = PositionBiasEstimator(min_impressions=config.propensity.min_impressions,
                                monotone=config.propensity.monotone)
    return est.fit(frame["position"].astype("float64").to_numpy(), frame["clicked"].to_numpy(dtype=bool), randomized,
                   sample_weight=frame["sample_weight"].to_numpy(dtype=np.float64))


def _ranker_inputs(frame: pd.DataFrame, features: list[str]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    return frame[features], frame["label"].to_numpy(dtype=np.float64), frame["request_id"].to_numpy()


def fit_ranker(train: pd.DataFrame, valid: pd.DataFrame, features: list[str], config: RankingConfig, *,
               propensity: PositionBiasEstimator | None, params: GBDTParams | None = None) -> LambdaMARTRanker:
    """Train the LambdaMART ranker on ``train``, early-stopped on ``valid`` (both grouped by request).

    Parameters
    ----------
    train, valid : DataFrame
        Slices from :func:`split_by_time`; requests without two different grades are dropped.
    features : list of str
    config : RankingConfig
    propensity : PositionBiasEstimator or None
        IPS weights ``min(1 / e(position), config.propensity.max_weight)`` on the higher-graded
        document of each pair, and early stopping on the IPS-weighted validation NDCG
        (``ips_ndcg@stop_at``); None trains the naive ranker, stopped on logged NDCG.
    params : GBDTParams, optional
        Overrides ``config.ranker`` (e.g. tuned parameters).

    Returns
    -------
    LambdaMARTRanker
    """
    tr, va, ips, valid_ips = _ranker_slices(train, valid, config, propensity)
    ranker = LambdaMARTRanker(params=params or config.ranker, eval_at=config.eval_at, stop_at=config.stop_at,
                              truncation_level=config.truncation_level, num_threads=config.num_threads,
                              seed=config.seed)
    X, y, g = _ranker_inputs(tr, features)
    return ranker.fit(X, y, g, ips_weight=ips, sample_weight=tr["sample_weight"].to_numpy(dtype=np.float64),
                      eval_set=_ranker_inputs(va, features), eval_ips_weight=valid_ips)


def _ranker_slices(train: pd.DataFrame, valid: pd.DataFrame, config: RankingConfig,
                   propensity: PositionBiasEstimator | None) -> tuple[pd.DataFrame, pd.DataFrame, Any, Any]:
    """Informative requests of both slices and, with a propensity model, their IPS weights."""
    tr, va = _informative(train), _informative(valid)
    if tr.empty or va.empty:
        raise ValueError("the train and validation slices need requests with two different grades")
    if propensity is None:
        return tr, va, None, None
    weights = [propensity.ips_weights(part["position"].astype("float64").to_numpy(),
                                      max_weight=config.propensity.max_weight) for part in (tr, va)]
    return tr, va, weights[0], weights[1]


def ranking_metrics(scores: np.ndarray, frame: pd.DataFrame, eval_at: tuple[int, ...], *,
                    ips_weight: np.ndarray | None = None) -> dict[str, float]:
    """NDCG@k of ``scores`` against the logged grades of ``frame`` (rows grouped by request).

    Only requests with two different grades count. Keys ``ndcg@k`` over all of them,
    ``randomized_ndcg@k`` over randomized requests alone (their top slots were shuffled, so
    their grades are not shaped by the logging policy's order), ``ips_ndcg@k`` when
    ``ips_weight`` (shape (n,)) is given (gains divided by examination, see
    :class:`~ranking.ranker.IPSWeightedNDCG`), plus ``requests``.
    """
    keep = frame.groupby("request_id", sort=False)["label"].transform(lambda s: s.max() > s.min()).to_numpy(bool)
    out: dict[str, float] = {"requests": float(frame.loc[keep, "request_id"].nunique())}
    grades = frame["label"].to_numpy(dtype=np.float64)
    variants: list[tuple[str, np.ndarray, np.ndarray | None]] = [
        ("", keep, None), ("randomized_", keep & frame["randomized"].to_numpy(dtype=bool), None)]
    if ips_weight is not None:
        variants.append(("ips_", keep, np.asarray(ips_weight, dtype=np.float64)))
    for prefix, mask, weight in variants:
        if not mask.any():
            continue
        sizes = group_sizes(frame.loc[mask, "request_id"].to_numpy())
        for k in eval_at:
            if weight is None:
                out[f"{prefix}ndcg@{k}"] = ndcg_at_k(grades[mask], scores[mask], sizes, k)
            else:
                gains = (np.exp2(grades[mask]) - 1.0) * weight[mask]
                out[f"{prefix}ndcg@{k}"] = ndcg_at_k(gains, scores[mask], sizes, k, gain="linear")
    return out


@dataclass(frozen=True)
class PurchaseFit:
    """The purchase model -- the last stage of the funnel -- and the stages before it, its
    calibrator, held-out metrics, and the held-out rows with their predictions.

    ``stages`` holds ``(name, model, feature names)`` of the funnel's earlier stages in order
    (e.g. ``click``, then ``cart``); ``model`` is P(purchase | the last of them), or P(purchase)
    itself when the funnel is ``direct``.
    """

    model: PurchaseModel
    calibrator: Calibrator
    features: list[str]
    metrics: dict[str, Any]
    window: dict[str, dict[str, Any]]
    heldout_rows: pd.DataFrame
    heldout_y: np.ndarray
    heldout_raw: np.ndarray
    heldout_calibrated: np.ndarray
    heldout_weight: np.ndarray
    stages: tuple[tuple[str, PurchaseModel, list[str]], ...] = ()


def _purchase_rows(frame: pd.DataFrame, config: RankingConfig) -> pd.DataFrame:
    if not config.complete_labels_only:
        return frame
    if config.purchase_label == "purchased_7d":
        return frame[frame["label_complete"].to_numpy(dtype=bool)]
    # The 24-hour window of the last day is still open: the log ends at its last impression.
    return frame[frame["ts"] <= frame["ts"].max() - pd.Timedelta(hours=24)]


def _binary_metrics(y: np.ndarray, p: np.ndarray, w: np.ndarray, n_bins: int) -> dict[str, float]:
    from sklearn.metrics import log_loss, roc_auc_score

    out = {"ece": expected_calibration_error(y, p, n_bins=n_bins, sample_weight=w),
           "mean_predicted": float(np.average(p, weights=w)), "base_rate": float(np.average(y, weights=w)),
           "log_loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), sample_weight=w, labels=[0, 1]))}
    out["auc"] = float(roc_auc_score(y, p, sample_weight=w)) if 0 < y.sum() < len(y) else float("nan")
    out["ece_over_base_rate"] = out["ece"] / out["base_rate"] if out["base_rate"] > 0 else float("nan")
    return out


def _with_position(part: pd.DataFrame, features: list[str], position: bool) -> pd.DataFrame:
    X = part[features].astype("float64")
    if position:
        X = X.assign(**{POSITION_FEATURE: part["position"].astype("float64").to_numpy()})
    return X


def fit_purchase_model(frame: pd.DataFrame, features: list[str], config: RankingConfig) -> PurchaseFit:
    """Train, calibrate and measure P(purchase | examined) on rows whose label window has closed.

    Those rows are split by time again (same fractions): models train on the first slice and
    early-stop on the second, the calibrator is chosen and fitted on the second
    (:func:`ranking.calibration.select_calibrator`), and metrics are measured on the third (on
    the second when ``test_fraction`` is 0, marked ``heldout: "valid"``).

    The purchase model is a funnel of conditional models (:data:`ranking.config.FUNNELS`): with
    ``click_cart_purchase``, ``P(click | x, slot) * P(cart | click, x) * P(purchase | cart, x)``.
    The first stage learns from every row of the train slice (the slot as a feature when
    ``purchase_position_feature``), each later stage from the rows that reached the stage before
    it (or any later one). Each stage learns from many more positives than purchases alone give,
    and the later ones see price and seller effects free of where the item was shown. The
    calibrator maps the product, taken at each row's logged slot, to the observed purchases;
    candidates are scored at slot 0.

    Raises
    ------
    ValueError
        When too few rows have a complete label, or a slice has no purchase (or no stage positive).
    """
    rows = _purchase_rows(frame, config)
    if rows["request_id"].nunique() < 10:
        raise ValueError(f"only {len(rows)} rows have a complete {config.purchase_label} label: use a longer log, "
                         "purchase_label='purchased_24h' or complete_labels_only=false")
    slices = split_by_time(rows, valid_fraction=config.valid_fraction, test_fraction=config.test_fraction)
    position = config.purchase_position_feature
    label = config.purchase_label
    funnel = FUNNELS[config.purchase_model]
    columns = [STAGE_LABELS[name] for name in funnel[:-1]] + [label]

    def target(part: pd.DataFrame, column: str = label) -> np.ndarray:
        return part[column].to_numpy(dtype=bool)

    def weight(part: pd.DataFrame) -> np.ndarray:
        return part["sample_weight"].to_numpy(dtype=np.float64)

    def reached(part: pd.DataFrame, j: int) -> pd.DataFrame:
        """Rows that reached stage ``j`` (a positive of stage ``j - 1`` or of any later stage)."""
        if j == 0:
            return part
        hit = np.zeros(len(part), dtype=bool)
        for column in columns[j - 1:]:
            hit |= target(part, column)
        return part[hit]

    if slices.valid[label].sum() == 0:
        raise ValueError("the purchase model's validation slice has no purchase: cannot calibrate")
    models: list[tuple[str, PurchaseModel, list[str]]] = []
    for j, (name, column) in enumerate(zip(funnel, columns, strict=True)):
        slot = position and j == 0  # only the first stage depends on where the item was shown
        names = features + ([POSITION_FEATURE] if slot else [])
        tr, va = reached(slices.train, j), reached(slices.valid, j)
        if target(tr, column).sum() == 0 or target(va, column).sum() == 0:
            raise ValueError(f"stage {name!r} of the purchase funnel has no positive ({column}) in the train or "
                             "validation slice: use a simpler purchase_model or a longer log")
        params = getattr(config, name) if name != "purchase" else config.purchase
        model = PurchaseModel(params=params, num_threads=config.num_threads, seed=config.seed)
        model.fit(_with_position(tr, features, slot), target(tr, column), sample_weight=weight(tr),
                  eval_set=(_with_position(va, features, slot), target(va, column), weight(va)), feature_names=names)
        models.append((name, model, names))

    def raw(part: pd.DataFrame) -> np.ndarray:
        """Uncalibrated P(purchase) of each row at its logged slot: the product of the stages."""
        p = np.ones(len(part))
        for j, (_, model, _) in enumerate(models):
            p *= model.predict_proba(_with_position(part, features, position and j == 0))
        return p

    calibrator, losses = select_calibrator(raw(slices.valid), target(slices.valid),
                                           sample_weight=weight(slices.valid), kind=config.calibration,
                                           seed=config.seed)
    heldout_name = "test" if len(slices.test) else "valid"
    heldout_rows = slices.test if len(slices.test) else slices.valid
    yh, wh = target(heldout_rows).astype(float), weight(heldout_rows)
    raw_h = raw(heldout_rows)
    cal = calibrator.predict(raw_h)
    uncal = _binary_metrics(yh, raw_h, wh, config.calibration_bins)
    calm = _binary_metrics(yh, cal, wh, config.calibration_bins)
    last = models[-1][1]
    metrics: dict[str, Any] = {"heldout": heldout_name, "best_iteration": last.best_iteration_,
                               "valid": last.valid_scores_, "uncalibrated": uncal, "calibrated": calm,
                               "calibrator": calibrator.kind, "calibrator_log_loss": losses,
                               "model": config.purchase_model,
                               "stages": {name: {"label": column, "best_iteration": m.best_iteration_,
                                                 "valid": m.valid_scores_}
                                          for (name, m, _), column in zip(models, columns, strict=True)}}
    logger.info("purchase model (%s): held-out log loss %.5f -> %.5f, ECE %.5f -> %.5f after %s calibration "
                "(base rate %.5f)", config.purchase_model, uncal["log_loss"], calm["log_loss"], uncal["ece"],
                calm["ece"], calibrator.kind, calm["base_rate"])
    return PurchaseFit(model=last, calibrator=calibrator, features=models[-1][2], metrics=metrics,
                       window=slices.window(), heldout_rows=heldout_rows, heldout_y=yh, heldout_raw=raw_h,
                       heldout_calibrated=cal, heldout_weight=wh, stages=tuple(models[:-1]))


@dataclass(frozen=True)
class TrainingResult:
    """What :func:`train_ranking_models` produced (the same as ``model_dir`` holds)."""

    model_dir: Path
    metadata: dict[str, Any]
    ranker: LambdaMARTRanker
    purchase: PurchaseFit
    propensity: PositionBiasEstimator | None
    tuning: TuningResult | None
    slices: TimeSlices


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _compile_all(root: Path, config: RankingConfig, heldout: dict[str, np.ndarray],
                 files: dict[str, str]) -> dict[str, Any]:
    """Compile each model in ``heldout``, check it against LightGBM on those rows, keep it only if equal."""

    report: dict[str, Any] = {}
    for name in heldout:
        raw = name == "ranker"
        lib = root / f"{name}.so"
        lib.unlink(missing_ok=True)
        if not config.compile.enabled:
            report[name] = {"ok": False, "error": "compiling disabled (ranking.compile.enabled=false)"}
            continue
        try:
            compile_model(root / files[name], lib, toolchain=config.compile.toolchain,
                          quantize=config.compile.quantize, parallel_comp=config.compile.parallel_comp,
                          nthread=config.num_threads)
            native = NativePredictor.load(root / files[name], raw_score=raw)
            X = heldout[name]
            diff = float(np.max(np.abs(CompiledPredictor.load(lib, raw_score=raw).predict(X) - native.predict(X))))
        except CompilationError as exc:
            warn_compiled_unavailable(str(exc))
            report[name] = {"ok": False, "error": str(exc)}
            continue
        if not diff <= COMPILE_TOLERANCE:
            lib.unlink(missing_ok=True)
            warn_compiled_unavailable(f"{name}: compiled predictions differ from LightGBM by {diff:.3g}")
            report[name] = {"ok": False, "error": f"max abs difference {diff:.3g} > {COMPILE_TOLERANCE}"}
            continue
        report[name] = {"ok": True, "file": lib.name, "max_abs_diff": diff, "quantize": config.compile.quantize,
                        "rows_checked": len(X)}
    return report


def _versions() -> dict[str, str]:
    import lightgbm
    import sklearn
    import tl2cgen
    import treelite

    return {"lightgbm": lightgbm.__version__, "treelite": treelite.__version__, "tl2cgen": tl2cgen.__version__,
            "scikit-learn": sklearn.__version__, "numpy": np.__version__, "python": platform.python_version()}


def train_ranking_models(frame: pd.DataFrame, config: RankingConfig, out_dir: str | os.PathLike[str], *,
                         figures: bool = True) -> TrainingResult:
    """Train the ranker and the calibrated purchase model and write them to ``out_dir``.

    Parameters
    ----------
    frame : DataFrame
        The ETL's ``training/`` table (``docs/training-data.md``); features are the ``f_*`` columns.
    config : RankingConfig
    out_dir : folder to write (created; existing model files are replaced)
    figures : bool, default True
        Write ``reliability.png`` and ``examination.png``.

    Returns
    -------
    TrainingResult

    Raises
    ------
    TypeError, ValueError
        When the frame does not follow the schema, or holds too little data (for example no
        randomized traffic while ``ips_weighting`` is on: the message says so).

    Warns
    -----
    CompiledModelUnavailableWarning
        When a model cannot be compiled; the folder then holds only its LightGBM text model.
    """
    features = check_training_frame(frame, config)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    slices = split_by_time(frame, valid_fraction=config.valid_fraction, test_fraction=config.test_fraction)
    logger.info("training ranking models on %d rows, %d features (%s)", len(frame), len(features),
                {k: v["requests"] for k, v in slices.window().items()})

    propensity = None
    if config.ips_weighting:
        fit_rows = pd.concat([slices.train, slices.valid], ignore_index=True)
        try:
            propensity = fit_position_bias(fit_rows, config)
        except ValueError as exc:
            raise ValueError(f"cannot estimate position bias for IPS weighting ({exc}); "
                             "set ranking.ips_weighting=false to train the naive ranker") from None

    tuning = None
    params = config.ranker
    if config.tuning.n_trials > 0:
        tr, va, ips, valid_ips = _ranker_slices(slices.train, slices.valid, config, propensity)
        X, y, g = _ranker_inputs(tr, features)
        tuning = tune_ranker(X, y, g, eval_set=_ranker_inputs(va, features), tuning=config.tuning,
                             base_params=config.ranker, ips_weight=ips, eval_ips_weight=valid_ips,
                             sample_weight=tr["sample_weight"].to_numpy(dtype=np.float64), eval_at=config.eval_at,
                             stop_at=config.stop_at, truncation_level=config.truncation_level,
                             num_threads=config.num_threads)
        params = tuning.best_params
        (root / "tuning.json").write_text(json.dumps(_json_safe(tuning.summary), indent=2, allow_nan=False))

    ranker = fit_ranker(slices.train, slices.valid, features, config, propensity=propensity, params=params)
    ranker.save(root / _FILES["ranker"])
    ranker_metrics: dict[str, Any] = {"best_iteration": ranker.best_iteration_, "valid": ranker.valid_scores_}
    if len(slices.test):
        test_ips = None if propensity is None else propensity.ips_weights(
            slices.test["position"].astype("float64").to_numpy(), max_weight=config.propensity.max_weight)
        ranker_metrics["test"] = ranking_metrics(ranker.predict(slices.test[features]), slices.test, config.eval_at,
                                                 ips_weight=test_ips)

    purchase = fit_purchase_model(frame, features, config)
    purchase.model.save(root / _FILES["purchase"])
    purchase.calibrator.save(root / _FILES["calibrator"])
    files: dict[str, str] = dict(_FILES)
    for name in STAGE_LABELS:
        (root / f"{name}.txt").unlink(missing_ok=True)
    for name, model, _ in purchase.stages:
        model.save(root / f"{name}.txt")
        files[name] = f"{name}.txt"

    sample = slices.test if len(slices.test) else slices.valid
    sample = sample.iloc[: min(len(sample), 2000)]
    plain = sample[features].to_numpy(dtype=np.float64)
    with_slot = np.hstack([plain, sample[["position"]].to_numpy(dtype=np.float64)])
    heldout = {"ranker": plain, "purchase": with_slot if purchase.features[-1:] == [POSITION_FEATURE] else plain}
    for name, _, names in purchase.stages:
        heldout[name] = with_slot if names[-1:] == [POSITION_FEATURE] else plain
    compiled = _compile_all(root, config, heldout, files)

    for name, rep in compiled.items():
        if rep["ok"]:
            files[f"{name}_lib"] = rep["file"]
    if figures:
        plot_reliability_diagram(purchase.heldout_y, {"uncalibrated": purchase.heldout_raw,
                                                      purchase.calibrator.kind: purchase.heldout_calibrated},
                                 root / "reliability.png", n_bins=config.calibration_bins,
                                 sample_weight=purchase.heldout_weight,
                                 title=f"P({config.purchase_label}) on the held-out slice")
        files["reliability_figure"] = "reliability.png"
        if propensity is not None:
            propensity.plot(root / "examination.png")
            files["examination_figure"] = "examination.png"
    if tuning is not None:
        files["tuning"] = "tuning.json"

    metadata = _json_safe({
        "created_at": datetime.now(UTC).isoformat(),
        "features": features,
        "purchase_features": purchase.features,
        "funnel": [name for name, _, _ in purchase.stages] + ["purchase"],
        "stage_features": {name: names for name, _, names in purchase.stages},
        "training_window": {"ranker": slices.window(), "purchase": purchase.window},
        "labels": {"ranker": "label (graded 0-3)",
                   "purchase": config.purchase_label, "funnel": config.purchase_model,
                   "complete_labels_only": config.complete_labels_only},
        "metrics": {"ranker": ranker_metrics, "purchase": purchase.metrics},
        "ranker": {"ips_weighting": config.ips_weighting, "params": asdict(params),
                   "tuned": tuning is not None, "best_iteration": ranker.best_iteration_},
        "purchase": {"params": asdict(config.purchase), "position_feature": config.purchase_position_feature,
                     "best_iteration": purchase.model.best_iteration_, "model": config.purchase_model,
                     "calibrator": purchase.calibrator.kind,
                     "stages": {name: {"best_iteration": m.best_iteration_, "params": asdict(getattr(config, name))}
                                for name, m, _ in purchase.stages}},
        "propensity": None if propensity is None else {**propensity.to_dict(),
                                                       "max_weight": config.propensity.max_weight},
        "tuning": None if tuning is None else {"best_value": tuning.best_value, "file": "tuning.json",
                                               "best_params": tuning.summary["best_params"]},
        "scorer": {"blend_weight": config.blend_weight},
        "compile": compiled,
        "files": files,
        "config": asdict(config),
        "versions": _versions(),
    })
    write_metadata(root, metadata)
    return TrainingResult(model_dir=root, metadata=metadata, ranker=ranker, purchase=purchase, propensity=propensity,
                          tuning=tuning, slices=slices)
