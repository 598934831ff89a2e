"""Offline metrics cut by slices, with bootstrap intervals: ``feedrank evaluate --slices``.

Input: the scored frame of :mod:`experiments.evaluate` plus the slice columns it carries:
``device``, ``is_new_buyer`` (new vs returning buyer), ``is_new_seller`` (new-seller items),
``category_id`` and ``price`` (cut into ``price_bands`` quantile bands of the whole frame).
Request-level slices (device, buyer) keep whole requests; item-level slices (seller, category,
price band) keep each request's items of that kind, so NDCG there says how well the model orders
those items among themselves.

Per slice value: requests, impressions, purchases, NDCG@K of the model's order and of the logged
order (exponential gain, :func:`experiments.metrics.ndcg_score`), their difference, the purchase
rate, and calibration as predicted / observed purchases (``sum(p_purchase * propensity) /
sum(purchased)``). Intervals are percentile bootstraps over requests (each draw reweights the
requests by multinomial counts, the same draw for every metric of a slice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments import metrics as M

__all__ = ["DEFAULT_SLICES", "SliceConfig", "slice_metrics", "write_slice_report"]

DEFAULT_SLICES: tuple[str, ...] = ("device", "is_new_buyer", "is_new_seller", "category_id", "price_band")
_REQUEST_LEVEL = {"device", "is_new_buyer"}


@dataclass(frozen=True)
class SliceConfig:
    """How slices are cut and judged.

    Parameters
    ----------
    k : NDCG cut-off.
    price_bands : quantile bands of ``price``.
    min_requests : slice values with fewer requests are left out (their intervals say nothing).
    max_categories : the largest categories by impressions are sliced; the rest are one "other".
    n_boot : bootstrap draws; ``level`` the interval's coverage; ``seed`` the draws' seed.
    """

    k: int = 10
    price_bands: int = 4
    min_requests: int = 30
    max_categories: int = 10
    n_boot: int = 200
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, low in (("k", self.k, 1), ("price_bands", self.price_bands, 2),
                                 ("min_requests", self.min_requests, 1), ("max_categories", self.max_categories, 1),
                                 ("n_boot", self.n_boot, 10)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not 0.5 <= self.level < 1:
            raise ValueError(f"level must be in [0.5, 1), got {self.level!r}")


def _slice_values(data: pd.DataFrame, name: str, config: SliceConfig) -> pd.Series:
    if name == "price_band":
        edges = np.unique(np.quantile(data["price"], np.linspace(0, 1, config.price_bands + 1)[1:-1]))
        band = np.searchsorted(edges, data["price"].to_numpy(), side="right")
        labels = [f"<= {edges[0]:.2f}"] + [f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(edges[:-1], edges[1:],
                                                                                      strict=True)] + [f"> {edges[-1]:.2f}"]
        return pd.Series([labels[b] for b in band], index=data.index)
    if name not in data.columns:
        raise KeyError(f"slice {name!r} needs a column {name!r} in the scored data")
    values = data[name]
    if name == "category_id":
        top = values.value_counts().index[:config.max_categories]
        return values.where(values.isin(top), other=-1).map(lambda v: "other" if v == -1 else str(v))
    if name in ("is_new_buyer", "is_new_seller"):
        word = "buyer" if name == "is_new_buyer" else "seller items"
        return values.astype(bool).map({True: f"new {word}", False: f"returning {word}" if name == "is_new_buyer"
                                        else f"established {word}"})
    return values.fillna("unknown").astype(str)


def _metrics(sub: pd.DataFrame, codes: np.ndarray, weight: np.ndarray, k: int) -> dict[str, float]:
    w = weight[codes]
    purchased = sub["purchased"].to_numpy(np.float64)
    predicted = (sub["p_purchase"] * sub["propensity"]).to_numpy(np.float64)
    label = sub["label"].to_numpy(np.float64)
    out = {"purchase_rate": float((w * purchased).sum() / w.sum()),
           "predicted_over_observed": float((w * predicted).sum() / (w * purchased).sum())
           if (w * purchased).sum() > 0 else float("nan")}
    if (label > 0).any():
        group = sub["request_id"].to_numpy()
        model = M.ndcg_score(label, sub["score"].to_numpy(np.float64), group, k, sample_weight=w)
        logged = M.ndcg_score(label, -sub["position"].to_numpy(np.float64), group, k, sample_weight=w)
        out |= {"ndcg_model": model, "ndcg_logged": logged, "ndcg_difference": model - logged}
    return out


def slice_metrics(data: pd.DataFrame, *, slices: Sequence[str] = DEFAULT_SLICES,
                  config: SliceConfig | None = None) -> pd.DataFrame:
    """One row per (slice, value) with each metric and its interval (``<metric>_low``/``_high``).

    Raises
    ------
    KeyError
        When a slice's column is missing (``price_band`` needs ``price``).
    """
    config = config or SliceConfig()
    rng = np.random.default_rng(config.seed)
    alpha = (1 - config.level) / 2
    rows: list[dict[str, Any]] = []
    for name in slices:
        values = _slice_values(data, name, config)
        for value in sorted(values.unique(), key=str):
            sub = data[values == value]
            requests, codes = np.unique(sub["request_id"].to_numpy(), return_inverse=True)
            if len(requests) < config.min_requests:
                continue
            point = _metrics(sub, codes, np.ones(len(requests)), config.k)
            draws = [_metrics(sub, codes, rng.multinomial(len(requests), np.full(len(requests), 1 / len(requests)))
                              .astype(np.float64), config.k) for _ in range(config.n_boot)]
            row: dict[str, Any] = {"slice": name, "value": value, "level": "request" if name in _REQUEST_LEVEL
                                   else "item", "requests": len(requests), "impressions": len(sub),
                                   "purchases": int(sub["purchased"].sum())}
            for metric, estimate in point.items():
                boot = np.array([d.get(metric, np.nan) for d in draws])
                boot = boot[np.isfinite(boot)]
                row[metric] = estimate
                row[f"{metric}_low"], row[f"{metric}_high"] = (np.quantile(boot, [alpha, 1 - alpha])
                                                               if len(boot) else (np.nan, np.nan))
            rows.append(row)
    return pd.DataFrame(rows)


def write_slice_report(table: pd.DataFrame, out_dir: str | Path, *, config: SliceConfig | None = None) -> Path:
    """``slices.md``, ``slices.json`` and ``slices.png`` (NDCG difference per slice value, with intervals)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    config = config or SliceConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_json(out / "slices.json", orient="records", indent=2)
    shown = table.dropna(subset=["ndcg_difference"]) if "ndcg_difference" in table.columns else table.iloc[:0]
    fig = Figure(figsize=(8, 0.28 * max(len(shown), 1) + 1.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(shown))
    if len(shown):
        est = shown["ndcg_difference"].to_numpy()
        err = np.vstack([est - shown["ndcg_difference_low"].to_numpy(), shown["ndcg_difference_high"].to_numpy() - est])
        ax.errorbar(est, y, xerr=np.clip(err, 0, None), fmt="o", capsize=3)
        ax.set_yticks(y, [f"{s}: {v}" for s, v in zip(shown["slice"], shown["value"], strict=True)], fontsize=7)
    ax.axvline(0.0, color="grey", linestyle="--")
    ax.invert_yaxis()
    ax.set_xlabel(f"NDCG@{config.k}: model - logged order ({config.level:.0%} bootstrap interval)")
    ax.set_title("Model vs logged order by slice")
    fig.tight_layout()
    fig.savefig(out / "slices.png")
    cols = [c for c in ("slice", "value", "level", "requests", "impressions", "purchases", "ndcg_model",
                        "ndcg_logged", "ndcg_difference", "ndcg_difference_low", "ndcg_difference_high",
                        "purchase_rate", "predicted_over_observed", "predicted_over_observed_low",
                        "predicted_over_observed_high") if c in table.columns]
    md = ["# Metrics by slice", "",
          f"NDCG@{config.k} of the model's and the logged order, purchase rate and calibration (predicted / observed "
          f"purchases) per slice value, with {config.level:.0%} bootstrap intervals over requests "
          f"({config.n_boot} draws); values with fewer than {config.min_requests} requests are left out. "
          "Item-level slices rank a request's items of that kind among themselves.", "",
          table[cols].to_markdown(index=False, floatfmt=".4g") if len(table) else "(no slice value has enough requests)",
          "", "![NDCG difference by slice](slices.png)", ""]
    (out / "slices.md").write_text("\n".join(md))
    return out / "slices.md"
