"""Offline evaluation of a ranking model on scored logged data: metrics, plots, a report, MLflow.

The input is one row per logged impression (a request's item at the slot where it was shown),
scored by the model under evaluation. Columns (:data:`REQUIRED_COLUMNS`, :data:`OPTIONAL_COLUMNS`):

==================  ==========================================================================
``request_id``      int: the feed request (the query group of the ranking metrics)
``item_id``         int: the item shown
``position``        int >= 0: the 0-based slot where it was logged
``label``           float >= 0: graded relevance observed (e.g. 0 none, 1 click, 2 cart, 3 purchase)
``score``           float: the model's ranking score (higher ranks first)
``p_purchase``      float in [0, 1]: the model's calibrated P(purchase | the item is examined): what a
                    ranker computes before slots are given out. The probability of a purchase as
                    logged is ``p_purchase * propensity`` (examination is 1 at the top slot)
``purchased``       0/1: whether the impression led to a purchase
``price``           float > 0: the item's price (GMV of a purchase is price x quantity)
``propensity``      float in (0, 1]: examination probability of the logged position (position
                    bias), the weight of IPS-NDCG and the exposure of a slot
``is_new_seller``   bool: the item's seller is new (for the exposure share)
``margin_rate``     optional float in [0, 1] or null: the marketplace's margin on the item
``pscore``          optional float in (0, 1] or null: the logging policy's probability of this item
                    at this slot, known on randomized traffic; those rows feed the off-policy estimates
==================  ==========================================================================

What is measured:

- NDCG@K (exponential gain) plain and IPS-weighted, for the model's order and the logged order;
  MRR; AUC of score and of ``p_purchase``;
- calibration of ``p_purchase * propensity`` against ``purchased``: log loss, expected
  calibration error, reliability curve, predicted vs observed GMV (and margin) per 1,000
  impressions (one unit per purchase);
- off-policy value of the model's ranking: the model re-orders each randomized request's
  candidates (the rows with ``pscore``) over the same slots; IPS, SNIPS and DR estimates of
  purchase value per slot (``purchased * price``) with bootstrap intervals
  (:func:`experiments.ope.estimate_policy_value`), beside the logged policy's own value on those
  rows, and the direct method (DM: the reward model alone). The reward model is ``q(a, k) = p_purchase_a * price_a * e(k)``; it does not depend on
  where the logging policy happened to put ``a``, which DR's unbiasedness needs;
- exposure: exposure Gini across items and the new sellers' share of exposure, for the model's
  order (exposure of rank r = the examination curve at r, read from ``propensity`` by position)
  and the logged order.

The metrics are :mod:`features.metrics`' definitions (through :mod:`experiments.metrics`).
Everything written says what it means: a value that cannot be computed (an off-policy estimate
without support, NDCG without a relevant item) is ``null`` in ``metrics.json`` with a note, and
"undefined" with the reason in the report, never a 0. Offline metrics on logged data are biased
towards what the logging policy showed (:data:`LOGGED_DATA_CAVEAT`); the report and
:func:`summary_lines` say so beside them.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from experiments import metrics as M
from experiments.ope import estimate_policy_value
from ranking.calibration import draw_reliability

if TYPE_CHECKING:
    from mlflow.entities import Run

__all__ = [
    "LOGGED_DATA_CAVEAT",
    "NO_SUPPORT",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "EvaluationConfig",
    "EvaluationReport",
    "evaluate_scored",
    "log_to_mlflow",
    "read_scored",
    "summary_lines",
]

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = ("request_id", "item_id", "position", "label", "score", "p_purchase",
                                     "purchased", "price", "propensity", "is_new_seller")
OPTIONAL_COLUMNS: tuple[str, ...] = ("margin_rate", "pscore")
REPORT_FILE = "report.md"
METRICS_FILE = "metrics.json"
PLOT_FILES: tuple[str, ...] = ("ndcg_by_k.png", "calibration.png", "off_policy.png", "exposure.png")
LOGGED_DATA_CAVEAT = ("offline metrics on logged data are biased toward what the logging policy showed: compare "
                      "models with each other here; the off-policy estimates and the simulator's truth say what a "
                      "model is worth")
NO_SUPPORT = ("no support: the model's top-k shares no (item, slot) with the randomized logs; the estimate is "
              "undefined")
_DR_NO_SUPPORT = ("no support: the model's top-k shares no (item, slot) with the randomized logs, so nothing "
                  "corrects the reward model; DR equals the direct method (dm)")


@dataclass(frozen=True)
class EvaluationConfig:
    """Settings of an evaluation.

    Parameters
    ----------
    k_values : tuple of int, default=(1, 3, 5, 10, 20)
        Cut-offs of NDCG@K.
    ips_clip : float, default=0.01
        Smallest propensity used by IPS-NDCG (weights at most ``1 / ips_clip``), in (0, 1].
    calibration_bins : int, default=10
        Bins of the reliability curve and ECE, >= 2.
    calibration_strategy : {"quantile", "uniform"}, default="quantile"
        Purchase probabilities are small, so equal-count bins are the default.
    ope_alpha : float, default=0.05
        Off-policy intervals are ``1 - ope_alpha``.
    ope_bootstrap : int, default=500
        Bootstrap resamples of the off-policy intervals, >= 50.
    ope_max_rows : int, default=20000
        Randomized rows used off-policy at most; above it, whole requests are sampled (seeded).
    seed : int, default=0
        Seed of the bootstrap and of that sampling.
    """

    k_values: tuple[int, ...] = (1, 3, 5, 10, 20)
    ips_clip: float = 0.01
    calibration_bins: int = 10
    calibration_strategy: M.BinStrategy = "quantile"
    ope_alpha: float = 0.05
    ope_bootstrap: int = 500
    ope_max_rows: int = 20_000
    seed: int = 0

    def __post_init__(self) -> None:
        ks = self.k_values
        if not isinstance(ks, tuple) or not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1
                                                      for k in ks):
            raise ValueError(f"k_values must be a non-empty tuple of ints >= 1, got {ks!r}")
        if not 0.0 < self.ips_clip <= 1.0:
            raise ValueError(f"ips_clip must be in (0, 1], got {self.ips_clip}")
        if not isinstance(self.calibration_bins, int) or self.calibration_bins < 2:
            raise ValueError(f"calibration_bins must be an int >= 2, got {self.calibration_bins!r}")
        if self.calibration_strategy not in ("quantile", "uniform"):
            raise ValueError(f"calibration_strategy must be 'quantile' or 'uniform', got {self.calibration_strategy!r}")
        if not 0.0 < self.ope_alpha < 1.0:
            raise ValueError(f"ope_alpha must be in (0, 1), got {self.ope_alpha}")
        if not isinstance(self.ope_bootstrap, int) or self.ope_bootstrap < 50:
            raise ValueError(f"ope_bootstrap must be an int >= 50, got {self.ope_bootstrap!r}")
        if not isinstance(self.ope_max_rows, int) or self.ope_max_rows < 100:
            raise ValueError(f"ope_max_rows must be an int >= 100, got {self.ope_max_rows!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")


@dataclass(frozen=True)
class EvaluationReport:
    """What :func:`evaluate_scored` wrote.

    Attributes
    ----------
    out_dir : str
        The report folder.
    model_version : str
    metrics : dict
        Nested metrics, as in ``metrics.json``.
    files : tuple of str
        Paths of the files written (report, metrics, plots).
    """

    out_dir: str
    model_version: str
    metrics: dict[str, Any] = field(repr=False)
    files: tuple[str, ...]

    def flat_metrics(self) -> dict[str, float]:
        """Finite numeric metrics with flat names (``ndcg_at_10``, ``ope_dr_value`` ...), for MLflow."""
        out: dict[str, float] = {}

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    walk(f"{prefix}_{key}" if prefix else str(key), value)
            elif isinstance(node, (int, float, np.integer, np.floating)) and not isinstance(node, bool):
                if math.isfinite(float(node)):
                    out[prefix] = float(node)

        walk("", {k: v for k, v in self.metrics.items() if k not in ("meta", "reliability")})
        return out


# ------------------------------------------------------------------------------ input


def read_scored(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read scored evaluation data from a Parquet file or folder, or a CSV file.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file type is neither Parquet nor CSV.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"scored data not found: {p}")
    if p.is_dir() or p.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(p)
    if p.name.lower().endswith((".csv", ".csv.gz")):
        return pd.read_csv(p)
    raise ValueError(f"path must be a Parquet file or folder, or a .csv file, got {p}")


def _check(data: pd.DataFrame) -> pd.DataFrame:
    """Validate the evaluation frame once; return a clean copy with canonical dtypes."""
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in data.columns]
    if missing:
        raise ValueError(f"data must have columns {list(REQUIRED_COLUMNS)}, missing {missing}")
    if len(data) == 0:
        raise ValueError("data must hold at least one row, got an empty frame")
    for col in REQUIRED_COLUMNS:
        if data[col].isna().any():
            raise ValueError(f"{col} must have no missing values, got {int(data[col].isna().sum())}")
    out = pd.DataFrame({c: data[c] for c in REQUIRED_COLUMNS})
    for col in ("request_id", "item_id", "position"):
        if not pd.api.types.is_integer_dtype(out[col]):
            raise TypeError(f"{col} must hold integers, got dtype {out[col].dtype}")
    out["position"] = out["position"].astype(np.int64)
    for col in ("label", "score", "p_purchase", "price", "propensity"):
        try:
            out[col] = out[col].astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{col} must hold numbers, got dtype {data[col].dtype}") from exc
        if not np.isfinite(out[col]).all():
            raise ValueError(f"{col} must be finite, got {int((~np.isfinite(out[col])).sum())} non-finite values")
    rules = (("position", out["position"] >= 0, ">= 0"), ("label", out["label"] >= 0, ">= 0"),
             ("p_purchase", out["p_purchase"].between(0, 1), "in [0, 1]"), ("price", out["price"] > 0, "> 0"),
             ("propensity", (out["propensity"] > 0) & (out["propensity"] <= 1), "in (0, 1]"))
    for col, ok, expected in rules:
        if not ok.all():
            raise ValueError(f"{col} must be {expected}, got {int((~ok).sum())} rows outside "
                             f"(min {out[col].min()}, max {out[col].max()})")
    for col in ("purchased", "is_new_seller"):
        values = pd.to_numeric(out[col].astype("int64") if out[col].dtype == bool else out[col], errors="coerce")
        if values.isna().any() or not values.isin([0, 1]).all():
            raise ValueError(f"{col} must be binary (0/1 or bool), got values {sorted(pd.unique(out[col]))[:5]}")
        out[col] = values.astype(np.int64)
    if out.duplicated(["request_id", "position"]).any():
        raise ValueError("(request_id, position) must be unique: one row per slot of a request")
    for col, low, low_open in (("margin_rate", 0.0, False), ("pscore", 0.0, True)):
        if col in data.columns:
            values = pd.to_numeric(data[col], errors="coerce").astype(np.float64)
            given = data[col].notna()
            if values[given].isna().any():
                raise TypeError(f"{col} must hold numbers or nulls, got dtype {data[col].dtype}")
            v = values[given]
            bad = (v <= low) if low_open else (v < low)
            if bad.any() or (v > 1).any():
                raise ValueError(f"{col} must be in {'(' if low_open else '['}0, 1] or null, "
                                 f"got min {v.min()}, max {v.max()}")
            out[col] = values.to_numpy()
        else:
            out[col] = np.nan
    return out.reset_index(drop=True)


# ------------------------------------------------------------------------------ metrics


def _model_rank(df: pd.DataFrame) -> np.ndarray:
    """0-based rank of each row within its request by score (descending), ties by logged position."""
    order = np.lexsort((df["position"].to_numpy(), -df["score"].to_numpy(), df["request_id"].to_numpy()))
    req_sorted = df["request_id"].to_numpy()[order]
    starts = np.r_[0, np.flatnonzero(req_sorted[1:] != req_sorted[:-1]) + 1]
    counts = np.diff(np.r_[starts, order.size])
    rank_sorted = np.arange(order.size) - np.repeat(starts, counts)
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = rank_sorted
    return rank


def _examination_curve(df: pd.DataFrame, length: int) -> np.ndarray:
    """Examination probability per position 0..length-1, from ``propensity`` by logged position.

    Positions never logged are interpolated (held constant beyond the last logged one).
    """
    by_pos = df.groupby("position")["propensity"].mean()
    return np.interp(np.arange(length), by_pos.index.to_numpy(dtype=np.float64), by_pos.to_numpy())


def _ranking_metrics(df: pd.DataFrame, cfg: EvaluationConfig) -> dict[str, Any]:
    y, group, prop = df["label"].to_numpy(), df["request_id"].to_numpy(), df["propensity"].to_numpy()
    orders = {"model": df["score"].to_numpy(), "logged": -df["position"].to_numpy().astype(np.float64)}
    out: dict[str, Any] = {}
    for name, score in orders.items():
        out[name] = {
            "ndcg": {str(k): M.ndcg_score(y, score, group, k) for k in cfg.k_values},
            "ips_ndcg": {str(k): M.ips_ndcg_score(y, score, group, prop, k, clip=cfg.ips_clip) for k in cfg.k_values},
            "mrr": M.mrr_score(y, score, group),
        }
    return out


def _calibration_metrics(df: pd.DataFrame, cfg: EvaluationConfig) -> tuple[dict[str, Any], M.ReliabilityCurve]:
    """Calibration of the as-logged purchase probability ``p_purchase * propensity``."""
    y, p = df["purchased"].to_numpy(), df["p_purchase"].to_numpy() * df["propensity"].to_numpy()
    price = df["price"].to_numpy()
    both = 0 < y.sum() < y.size
    out: dict[str, Any] = {
        "log_loss": M.log_loss(y, p),
        "ece": M.expected_calibration_error(y, p, cfg.calibration_bins, cfg.calibration_strategy),
        "ece_over_base_rate": M.expected_calibration_error(y, p, cfg.calibration_bins, cfg.calibration_strategy,
                                                           relative=True),
        "auc_p_purchase": M.auc_score(y, p) if both else float("nan"),
        "auc_score": M.auc_score(y, df["score"].to_numpy()) if both else float("nan"),
        "mean_p_purchase_as_logged": float(p.mean()),
        "purchase_rate": float(y.mean()),
        "predicted_gmv_per_mille": M.expected_gmv_per_mille(p, price),
        "observed_gmv_per_mille": float(1000.0 * np.mean(y * price)),
    }
    margin = df["margin_rate"].to_numpy()
    has_margin = ~np.isnan(margin)
    if has_margin.any():
        out["predicted_margin_per_mille"] = M.expected_gmv_per_mille(p[has_margin], price[has_margin],
                                                                     margin[has_margin])
        out["observed_margin_per_mille"] = float(1000.0 * np.mean((y * price * margin)[has_margin]))
    curve = M.reliability_curve(y, p, cfg.calibration_bins, cfg.calibration_strategy)
    return out, curve


def _exposure_metrics(df: pd.DataFrame, rank: np.ndarray, curve: np.ndarray) -> dict[str, Any]:
    items, new = df["item_id"].to_numpy(), df["is_new_seller"].to_numpy()
    positions = {"model": rank, "logged": df["position"].to_numpy()}
    n_catalog = int(np.unique(items).size)
    out: dict[str, Any] = {"items_in_data": n_catalog}
    for name, pos in positions.items():
        weight = curve[pos]
        out[name] = {
            "gini": M.exposure_gini(items, weight),
            "new_seller_share": M.new_seller_exposure_share(new, pos, examination=curve),
            "coverage_at_10": M.catalog_coverage(items[pos < 10], n_catalog) if (pos < 10).any() else None,
        }
    out["new_seller_share_of_rows"] = float(new.mean())
    return out


def _off_policy(df: pd.DataFrame, rank: np.ndarray, curve: np.ndarray, cfg: EvaluationConfig) -> dict[str, Any]:
    """IPS/SNIPS/DR value (purchase value per slot) of the model re-ordering each randomized request's candidates."""
    logged = df.assign(_rank=rank)[df["pscore"].notna().to_numpy()]
    if logged.empty:
        return {"rows": 0, "note": "no rows with pscore (randomized traffic): off-policy estimates skipped"}
    requests = logged["request_id"].unique()
    if len(logged) > cfg.ope_max_rows:
        rng = np.random.default_rng(cfg.seed)
        keep = max(1, int(len(requests) * cfg.ope_max_rows / len(logged)))
        requests = rng.choice(requests, size=keep, replace=False)
        logged = logged[logged["request_id"].isin(requests)]
    logged = logged.sort_values(["request_id", "position"]).reset_index(drop=True)
    req = logged["request_id"].to_numpy()
    starts = np.r_[0, np.flatnonzero(req[1:] != req[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(logged)])
    n, n_actions = len(logged), int(sizes.max())
    n_positions = int(logged["position"].max()) + 1
    action = np.empty(n, dtype=np.int64)
    q_model = np.empty(n)  # q(model's item at the row's slot, slot): the direct method, per row
    dist = np.zeros((n, n_actions, n_positions))
    q_hat = np.zeros((n, n_actions, n_positions))
    positions = logged["position"].to_numpy()
    p_exam = logged["p_purchase"].to_numpy()  # P(purchase | examined): free of the logged slot
    value = logged["price"].to_numpy()
    score = logged["score"].to_numpy()
    exam = curve[np.arange(n_positions)]
    for lo, size in zip(starts, sizes, strict=True):
        rows = slice(lo, lo + size)
        action[rows] = np.arange(size)  # the request's candidates, in logged-slot order
        slots = positions[rows]  # the slots they share (sorted)
        by_model = np.lexsort((slots, -score[rows]))  # candidate indices, best first
        block = np.full((n_actions, n_positions), 0.0)
        block[:size, :] = 1.0 / size  # slots outside the request: any valid distribution
        block[:size, slots] = 0.0
        block[by_model, slots] = 1.0  # the r-th best candidate takes the r-th slot
        dist[rows] = block
        q_block = p_exam[rows, None] * value[rows, None] * exam[None, :]  # (candidate, slot)
        q_hat[rows, :size, :] = q_block[None]
        q_model[rows] = q_block[by_model, slots]  # rows are in slot order
    reward = logged["purchased"].to_numpy() * value
    estimates = estimate_policy_value(
        action=action, position=positions, reward=reward, pscore=logged["pscore"].to_numpy(),
        action_dist=dist, estimated_rewards_by_reg_model=q_hat, alpha=cfg.ope_alpha,
        n_bootstrap=cfg.ope_bootstrap, random_state=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    idx = rng.integers(0, n, (cfg.ope_bootstrap, n))
    support = next(iter(estimates.values())).support
    out: dict[str, Any] = {
        "rows": n, "requests": len(starts), "reward": "purchased * price per slot",
        "support": {"rows": support, "share": support / n,
                    "meaning": "randomized impressions whose logged (item, slot) the model's order also holds; "
                               "the importance-weighted estimates (ipw, snipw, dr's correction) rest on these"}}
    for name, per_row in (("logged", reward), ("dm", q_model)):
        lo, hi = np.percentile(per_row[idx].mean(axis=1), [50 * cfg.ope_alpha, 100 - 50 * cfg.ope_alpha])
        out[name] = {"value": float(per_row.mean()), "ci_low": float(lo), "ci_high": float(hi)}
    for name, est in estimates.items():
        out[name] = {"value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high, "support": est.support}
        if not est.supported:
            out[name]["note"] = _DR_NO_SUPPORT if name == "dr" else NO_SUPPORT
    if support == 0:
        out["note"] = NO_SUPPORT
    return out


# ------------------------------------------------------------------------------ plots and report


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _plot_ndcg(path: Path, ranking: dict[str, Any], k_values: tuple[int, ...]) -> None:
    fig = _figure(8, 3.2)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, title in ((axes[0], "ndcg", "NDCG@K"), (axes[1], "ips_ndcg", "IPS-weighted NDCG@K")):
        for name, style in (("model", "o-"), ("logged", "s--")):
            values = [np.nan if ranking[name][key][str(k)] is None else ranking[name][key][str(k)] for k in k_values]
            ax.plot(k_values, values, style, label=f"{name} order")
        ax.set(title=title, xlabel="K", xticks=list(k_values))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path)


def _plot_calibration(path: Path, curve: M.ReliabilityCurve, calib: dict[str, Any]) -> None:
    fig = _figure(6.2, 5.2)
    draw_reliability(fig.subplots(), {"p_purchase x propensity": curve},
                     title=f"reliability, {len(curve.weight)} equal-mass bins")
    fig.tight_layout()
    fig.savefig(path)


def _plot_off_policy(path: Path, ope: dict[str, Any]) -> None:
    fig = _figure(7, 2.8)
    ax = fig.subplots()
    if ope.get("rows", 0) == 0:
        ax.text(0.5, 0.5, "no randomized rows (pscore): no off-policy estimates", ha="center", va="center")
        ax.set_axis_off()
    else:
        names = [n for n in ("logged", "dm", "ipw", "snipw", "dr") if n in ope]
        labels = {"logged": "logged policy (on-policy)", "dm": "model: DM (reward model)", "ipw": "model: IPS",
                  "snipw": "model: SNIPS", "dr": "model: DR"}
        y = np.arange(len(names))[::-1]
        shown = np.array([ope[n]["value"] is not None and ope[n]["ci_low"] is not None for n in names])
        v = np.array([ope[n]["value"] if s else np.nan for n, s in zip(names, shown, strict=True)], dtype=float)
        lo = np.array([ope[n]["ci_low"] if s else np.nan for n, s in zip(names, shown, strict=True)], dtype=float)
        hi = np.array([ope[n]["ci_high"] if s else np.nan for n, s in zip(names, shown, strict=True)], dtype=float)
        ax.errorbar(v[shown], y[shown], xerr=[v[shown] - lo[shown], hi[shown] - v[shown]], fmt="o", capsize=4)
        for yi in y[~shown]:
            ax.annotate("undefined: no support", (0.02, yi), xycoords=("axes fraction", "data"), va="center",
                        color="C3")
        if "dr" in ope and ope["dr"].get("note"):
            labels["dr"] = "model: DR (= DM, no support)"
        ax.set_yticks(y, [labels[n] for n in names])
        sup = ope["support"]
        ax.set(title=f"purchase value per slot, {ope['rows']:,} randomized impressions\n"
                     f"{sup['rows']:,} ({sup['share']:.1%}) support the model's order", xlabel="price x P(purchase)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def _lorenz(items: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    per_item = np.sort(pd.Series(weight).groupby(items).sum().to_numpy())
    cum = np.r_[0.0, np.cumsum(per_item)] / per_item.sum()
    return np.linspace(0, 1, cum.size), cum


def _plot_exposure(path: Path, df: pd.DataFrame, rank: np.ndarray, curve: np.ndarray,
                   exposure: dict[str, Any]) -> None:
    fig = _figure(8, 3.2)
    ax, ax2 = fig.subplots(1, 2)
    items = df["item_id"].to_numpy()
    for name, pos in (("model", rank), ("logged", df["position"].to_numpy())):
        x, cum = _lorenz(items, curve[pos])
        ax.plot(x, cum, label=f"{name} (Gini {_fmt(exposure[name]['gini'])})")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(title="exposure across items (Lorenz)", xlabel="share of items", ylabel="share of exposure")
    ax.legend()
    ax.grid(alpha=0.3)
    shares = [np.nan if v is None else v for v in (exposure["model"]["new_seller_share"],
                                                   exposure["logged"]["new_seller_share"],
                                                   exposure["new_seller_share_of_rows"])]
    ax2.bar(["model order", "logged order", "share of rows"], shares, color=["C0", "C1", "grey"])
    ax2.set(title="new sellers' share of exposure")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def _nulls(node: Any) -> Any:
    """``node`` with every non-finite float replaced by None (``null`` in JSON: "could not be computed")."""
    if isinstance(node, dict):
        return {k: _nulls(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_nulls(v) for v in node]
    if isinstance(node, float | np.floating) and not math.isfinite(float(node)):
        return None
    return node


def _fmt(value: Any, undefined: str = "undefined") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return undefined
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _estimate_text(est: dict[str, Any]) -> str:
    """``value [low, high]``, or what an estimate without a value means."""
    if est["value"] is None:
        return f"undefined ({est.get('note', 'not computable')})"
    text = f"{_fmt(est['value'])} [{_fmt(est['ci_low'])}, {_fmt(est['ci_high'])}]"
    if est.get("note"):
        return f"{text} ({est['note']})"
    if est["value"] == 0 and est.get("ci_low") == 0 and est.get("ci_high") == 0 and est.get("support"):
        # a zero that means "no data": the supporting rows hold no purchase at all
        return (f"{text} (no purchase among the {est['support']:,} supporting impressions: too few to estimate, "
                "not evidence of no value)")
    return text


_NDCG_UNDEFINED = "undefined: no request with a relevant item"
_BIN_WORDS = {"quantile": "equal-mass", "uniform": "equal-width"}


def summary_lines(metrics: dict[str, Any], *, k_values: tuple[str, ...] = ("10", "20")) -> list[str]:
    """The headline figures of an evaluation's metrics (as in ``metrics.json``), one printable line each.

    Every figure says what it measures, a figure that could not be computed says why, and the
    logged-data caveat (:data:`LOGGED_DATA_CAVEAT`) precedes the ranking metrics.

    Parameters
    ----------
    metrics : dict
        :attr:`EvaluationReport.metrics` or the parsed ``metrics.json``.
    k_values : tuple of str, default=("10", "20")
        NDCG cut-offs to show, among those evaluated (the largest evaluated one when none is).
    """
    meta, rk, cal, ope = metrics["meta"], metrics["ranking"], metrics["calibration"], metrics["off_policy"]
    ks = [k for k in k_values if k in rk["model"]["ndcg"]] or [list(rk["model"]["ndcg"])[-1]]
    lines = [f"evaluated {meta['model_version']}: {meta['rows']:,} impressions, {meta['requests']:,} requests",
             f"caveat: {LOGGED_DATA_CAVEAT}"]
    for k in ks:
        lines.append(f"NDCG@{k} against logged labels: model {_fmt(rk['model']['ndcg'][k], _NDCG_UNDEFINED)} "
                     f"(IPS-weighted {_fmt(rk['model']['ips_ndcg'][k], _NDCG_UNDEFINED)}); logged order "
                     f"{_fmt(rk['logged']['ndcg'][k], _NDCG_UNDEFINED)} "
                     f"(IPS-weighted {_fmt(rk['logged']['ips_ndcg'][k], _NDCG_UNDEFINED)})")
    bins = meta["config"]["calibration_bins"], _BIN_WORDS[meta["config"]["calibration_strategy"]]
    lines.append(f"calibration of p_purchase x propensity ({bins[0]} {bins[1]} bins): ECE {_fmt(cal['ece'])} "
                 f"= {_fmt(cal['ece_over_base_rate'], 'undefined (no purchase)')} x the purchase rate "
                 f"{_fmt(cal['purchase_rate'])}; log loss {_fmt(cal['log_loss'])}; AUC(p_purchase) "
                 f"{_fmt(cal['auc_p_purchase'], 'undefined (one class only)')}; GMV per 1,000 impressions "
                 f"predicted {_fmt(cal['predicted_gmv_per_mille'])} vs observed {_fmt(cal['observed_gmv_per_mille'])}")
    if not ope.get("rows"):
        lines.append(f"off-policy: {ope['note']}")
        return lines
    sup = ope["support"]
    lines.append(f"off-policy GMV per slot (price x purchased) on {ope['rows']:,} randomized impressions, "
                 f"{sup['rows']:,} ({sup['share']:.1%}) supporting the model's order; value [{1 - meta['config']['ope_alpha']:.0%} interval]:")
    names = {"logged": "logged policy (observed)", "dm": "model, DM (reward model alone)", "ipw": "model, IPS",
             "snipw": "model, SNIPS", "dr": "model, DR"}
    for name, label in names.items():
        if name in ope:
            lines.append(f"  {label}: {_estimate_text(ope[name])}")
    return lines


def _markdown(model_version: str, m: dict[str, Any], k_values: tuple[int, ...]) -> str:
    meta, rk, cal, ope, exp = m["meta"], m["ranking"], m["calibration"], m["off_policy"], m["exposure"]
    lines = [f"# Offline evaluation: `{model_version}`", "",
             f"{meta['rows']:,} impressions of {meta['requests']:,} requests, {meta['items']:,} items; "
             f"{ope.get('rows', 0):,} randomized impressions for off-policy estimates.", "",
             f"**Caveat:** {LOGGED_DATA_CAVEAT}.", "",
             "## Ranking (against logged labels)", "", "| K | " + " | ".join(str(k) for k in k_values) + " |",
             "|---|" + "---|" * len(k_values)]
    for name in ("model", "logged"):
        for key, label in (("ndcg", "NDCG"), ("ips_ndcg", "IPS-NDCG")):
            lines.append(f"| {label}, {name} order | " + " | ".join(_fmt(rk[name][key][str(k)]) for k in k_values)
                         + " |")
    lines += ["", f"MRR: model {_fmt(rk['model']['mrr'])}, logged {_fmt(rk['logged']['mrr'])}. "
              "Requests without a relevant item are left out (their NDCG is 0/0); \"undefined\" means none had one.",
              "",
              "Labels were observed where the logging policy put the items, and top slots are examined more, "
              "so plain NDCG favours the logged order. IPS-NDCG divides each gain by its slot's examination "
              "probability, but being normalised per request it cannot undo the bias in requests with a single "
              "relevant item; compare models with each other here, and read value from the off-policy section.",
              "",
              "![NDCG by K](ndcg_by_k.png)", "", "## Calibration of p_purchase (as logged: x propensity)", "",
              f"ECE over {meta['config']['calibration_bins']} {_BIN_WORDS[meta['config']['calibration_strategy']]} "
              "bins; `ece_over_base_rate` is ECE divided by the purchase rate "
              "(0.5: predictions off by half the base rate on average). The diagram is on log scales with the "
              "base rate marked.", "",
              "| metric | value |",
              "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in cal.items()]
    lines += ["", "![calibration](calibration.png)", "", "## Off-policy value of the model's ranking", ""]
    if ope.get("rows", 0):
        sup = ope["support"]
        lines += [f"Reward: purchase value (price x purchased) per slot on {ope['rows']:,} impressions of "
                  f"{ope['requests']:,} randomized requests; "
                  "the model re-orders each request's candidates over the same slots. "
                  f"Support: {sup['rows']:,} of them ({sup['share']:.1%}) hold an (item, slot) that the model's "
                  "order holds too; the importance-weighted estimates rest on those alone.", "",
                  "| estimator | value | interval |", "|---|---|---|"]
        for name in ("logged", "dm", "ipw", "snipw", "dr"):
            if name in ope:
                est = ope[name]
                if est["value"] is None:
                    lines.append(f"| {name} | undefined: no support | - |")
                else:
                    lines.append(f"| {name} | {_fmt(est['value'])} | [{_fmt(est['ci_low'])}, {_fmt(est['ci_high'])}] |")
        notes = sorted({ope[n]["note"] for n in ("ipw", "snipw", "dr") if n in ope and ope[n].get("note")})
        if notes:
            lines += [""] + [f"- {note}" for note in notes]
    else:
        lines.append(ope["note"])
    lines += ["", "![off-policy](off_policy.png)", "", "## Exposure", "", "| order | Gini | new-seller share | "
              "coverage@10 |", "|---|---|---|---|"]
    for name in ("model", "logged"):
        lines.append(f"| {name} | {_fmt(exp[name]['gini'])} | {_fmt(exp[name]['new_seller_share'])} | "
                     f"{_fmt(exp[name]['coverage_at_10'], 'undefined: no item in the top 10')} |")
    lines += ["", "![exposure](exposure.png)", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ entry points


def evaluate_scored(
    data: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    model_version: str = "unversioned",
    config: EvaluationConfig | None = None,
    run: Run | str | None = None,
    tracking_uri: str | None = None,
) -> EvaluationReport:
    """Evaluate scored logged data and write a report folder (Markdown, PNG plots, metrics JSON).

    Parameters
    ----------
    data : pandas.DataFrame
        One row per logged impression with :data:`REQUIRED_COLUMNS` (and optionally
        :data:`OPTIONAL_COLUMNS`); see the module docstring.
    out_dir : path
        Folder for ``report.md``, ``metrics.json`` and the plots (created; files replaced).
    model_version : str, default="unversioned"
        Named in the report and the metrics.
    config : EvaluationConfig, optional
    run : mlflow Run or run id, optional
        When given, metrics and the report folder are logged to this MLflow run.
    tracking_uri : str, optional
        MLflow tracking URI for ``run``; default ``mlflow.get_tracking_uri()``.

    Returns
    -------
    EvaluationReport

    Raises
    ------
    TypeError, ValueError
        If ``data`` misses a column or holds values out of range (the message names the column).
    """
    cfg = EvaluationConfig() if config is None else config
    if not isinstance(cfg, EvaluationConfig):
        raise TypeError(f"config must be an EvaluationConfig, got {type(cfg).__name__}")
    if not isinstance(model_version, str) or not model_version:
        raise ValueError(f"model_version must be a non-empty str, got {model_version!r}")
    df = _check(data)
    rank = _model_rank(df)
    curve = _examination_curve(df, int(max(df["position"].max(), rank.max())) + 1)
    calibration, reliability = _calibration_metrics(df, cfg)
    ranking = _ranking_metrics(df, cfg)
    exposure = _exposure_metrics(df, rank, curve)
    ope = _off_policy(df, rank, curve, cfg)
    metrics: dict[str, Any] = _nulls({
        "meta": {"model_version": model_version, "rows": len(df), "requests": int(df["request_id"].nunique()),
                 "items": int(df["item_id"].nunique()), "config": asdict(cfg), "schema_version": 2},
        "ranking": ranking, "calibration": calibration, "off_policy": ope, "exposure": exposure,
        "reliability": {**{k: getattr(reliability, k).tolist() for k in
                           ("mean_predicted", "observed_rate", "weight", "count", "bin_lower", "bin_upper")},
                        "base_rate": reliability.base_rate},
    })
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _plot_ndcg(out / "ndcg_by_k.png", metrics["ranking"], cfg.k_values)
    _plot_calibration(out / "calibration.png", reliability, metrics["calibration"])
    _plot_off_policy(out / "off_policy.png", metrics["off_policy"])
    _plot_exposure(out / "exposure.png", df, rank, curve, metrics["exposure"])
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=float, allow_nan=False))
    (out / REPORT_FILE).write_text(_markdown(model_version, metrics, cfg.k_values))
    files = tuple(str(out / f) for f in (REPORT_FILE, METRICS_FILE, *PLOT_FILES))
    report = EvaluationReport(out_dir=str(out), model_version=model_version, metrics=metrics, files=files)
    logger.info("evaluation of %s written to %s: NDCG@%d %s (logged order %s; %s)", model_version, out,
                cfg.k_values[-1], _fmt(ranking["model"]["ndcg"][str(cfg.k_values[-1])]),
                _fmt(ranking["logged"]["ndcg"][str(cfg.k_values[-1])]), LOGGED_DATA_CAVEAT)
    if run is not None:
        log_to_mlflow(report, run, tracking_uri=tracking_uri)
    return report


def log_to_mlflow(report: EvaluationReport, run: Run | str, *, tracking_uri: str | None = None) -> None:
    """Log the report's metrics (prefixed ``eval_``) and its folder (artifact path ``evaluation``) to a run.

    Parameters
    ----------
    report : EvaluationReport
    run : mlflow Run (or ActiveRun) or run id
    tracking_uri : str, optional
        Default ``mlflow.get_tracking_uri()``.
    """
    import mlflow
    from mlflow.entities import Metric, RunTag

    if isinstance(run, str):
        run_id = run
    elif hasattr(run, "info"):
        run_id = run.info.run_id
    else:
        raise TypeError(f"run must be an mlflow Run or a run id, got {type(run).__name__}")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri or mlflow.get_tracking_uri())
    now = int(pd.Timestamp.now(tz="UTC").timestamp() * 1000)
    metrics = [Metric(f"eval_{k}", v, now, 0) for k, v in sorted(report.flat_metrics().items())]
    for lo in range(0, len(metrics), 900):  # the REST API takes at most 1000 per batch
        client.log_batch(run_id, metrics=metrics[lo: lo + 900])
    client.log_batch(run_id, tags=[RunTag("evaluation.model_version", report.model_version)])
    client.log_artifacts(run_id, report.out_dir, artifact_path="evaluation")
    logger.info("logged %d evaluation metrics and the report to MLflow run %s", len(metrics), run_id)
