"""Feature drift: population stability index and Jensen-Shannon distance per feature.

Both compare the binned distribution of a feature in a reference sample (the training set, or
an earlier serving window) with a current one (a window of served feature vectors). Bins are
fixed by the reference (:func:`reference_bins`) and missing values are a bin of their own, so a
feature that turns missing at serving drifts as much as one that shifts::

    PSI = sum_b (c_b - r_b) * ln(c_b / r_b)          (r, c: bin shares; empty bins get epsilon)
    JS  = sqrt( (KL(r || m) + KL(c || m)) / 2 ),  m = (r + c) / 2, base-2 logs, in [0, 1]

Levels come from effect-size thresholds (:class:`~monitoring.config.DriftConfig`), never from
p-values, which at serving volumes call every negligible difference significant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from monitoring.config import DriftConfig

__all__ = ["DriftReport", "FeatureDrift", "LEVELS", "bin_shares", "feature_drift", "jensen_shannon_distance",
           "population_stability_index", "reference_bins"]

LEVELS = ("ok", "warn", "alert", "insufficient")


def reference_bins(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges from the reference's finite values, shape (<= bins - 1,).

    Quantile edges at ``1/bins, 2/bins, ...`` (duplicates dropped); a reference with at most
    ``bins`` distinct values gets one bin per value instead (edges halfway between them), so
    codes and flags are not lumped together. A value equal to an edge falls in the lower bin.
    """
    finite = reference[np.isfinite(reference)]
    if not len(finite):
        return np.zeros(0)
    distinct = np.unique(finite)
    if len(distinct) <= bins:
        return (distinct[:-1] + distinct[1:]) / 2.0
    return np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each bin of ``edges`` and, last, the share missing (NaN), shape (len(edges) + 2,)."""
    values = np.asarray(values, dtype=np.float64)
    counts = np.zeros(len(edges) + 2)
    missing = np.isnan(values)
    idx = np.searchsorted(edges, values[~missing], side="left")
    counts[: len(edges) + 1] = np.bincount(idx, minlength=len(edges) + 1)
    counts[-1] = missing.sum()
    return counts / max(len(values), 1)


def population_stability_index(ref: np.ndarray, cur: np.ndarray, epsilon: float = 1e-4) -> float:
    """PSI of two share vectors over the same bins (see the module docstring)."""
    r = np.maximum(ref, epsilon)
    c = np.maximum(cur, epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def jensen_shannon_distance(ref: np.ndarray, cur: np.ndarray) -> float:
    """Jensen-Shannon distance of two share vectors (base 2, in [0, 1]); scipy's implementation."""
    from scipy.spatial.distance import jensenshannon

    if not ref.sum() or not cur.sum():
        return float("nan")
    return float(jensenshannon(ref, cur, base=2.0))


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one feature between a reference and a current sample."""

    feature: str
    psi: float
    js: float
    level: str
    rows_reference: int
    rows_current: int
    missing_reference: float
    missing_current: float
    mean_reference: float
    mean_current: float


@dataclass(frozen=True)
class DriftReport:
    """Drift of every compared feature, and the thresholds that judged it."""

    features: tuple[FeatureDrift, ...]
    config: DriftConfig
    reference: str
    current: str

    def flagged(self, level: str = "alert") -> list[str]:
        """Features at ``level`` ("alert") or, for "warn", at warn or alert."""
        if level not in ("warn", "alert"):
            raise ValueError(f"level must be 'warn' or 'alert', got {level!r}")
        wanted = {"alert"} if level == "alert" else {"warn", "alert"}
        return [f.feature for f in self.features if f.level in wanted]

    def to_frame(self) -> pd.DataFrame:
        """One row per feature, largest PSI first."""
        return rows_frame(self.features, "psi")


def rows_frame(rows: Sequence[object], sort_by: str) -> pd.DataFrame:
    """A frame of per-feature result dataclasses, largest ``sort_by`` first (ties keep their order)."""
    frame = pd.DataFrame([r.__dict__ for r in rows])
    return frame.sort_values(sort_by, ascending=False, kind="stable").reset_index(drop=True) if len(frame) else frame


def _level(psi: float, js: float, enough: bool, config: DriftConfig) -> str:
    if not enough:
        return "insufficient"
    if psi >= config.psi_alert or js >= config.js_alert:
        return "alert"
    if psi >= config.psi_warn or js >= config.js_warn:
        return "warn"
    return "ok"


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def feature_drift(reference: pd.DataFrame, current: pd.DataFrame, *, features: Sequence[str] | None = None,
                  config: DriftConfig | None = None, reference_name: str = "reference",
                  current_name: str = "current") -> DriftReport:
    """PSI and JS distance of each feature between ``reference`` and ``current`` rows.

    Parameters
    ----------
    reference, current : DataFrame
        One row per scored (request, item), one numeric column per feature (NaN = missing).
    features : sequence of str, optional
        The features to compare; default every column the two frames share that is numeric in
        ``reference`` (so a model's feature list is read from the data, never assumed).
    config : DriftConfig, optional
    reference_name, current_name : str
        Labels carried into the report (e.g. ``"training"``, ``"serving 2026-01-12"``).

    Raises
    ------
    KeyError
        When a requested feature is missing from either frame.
    """
    config = config or DriftConfig()
    if features is None:
        features = [c for c in reference.columns if c in current.columns
                    and pd.api.types.is_numeric_dtype(reference[c].dtype)]
    missing = [f for f in features if f not in reference.columns or f not in current.columns]
    if missing:
        raise KeyError(f"features missing from the reference or the current rows: {missing[:5]}")
    out = []
    for name in features:
        ref = reference[name].to_numpy(dtype=np.float64, na_value=np.nan)
        cur = current[name].to_numpy(dtype=np.float64, na_value=np.nan)
        edges = reference_bins(ref, config.bins)
        r, c = bin_shares(ref, edges), bin_shares(cur, edges)
        enough = len(ref) >= config.min_rows and len(cur) >= config.min_rows
        psi = population_stability_index(r, c, config.epsilon) if len(ref) and len(cur) else float("nan")
        js = jensen_shannon_distance(r, c)
        out.append(FeatureDrift(feature=name, psi=psi, js=js, level=_level(psi, js, enough, config),
                                rows_reference=len(ref), rows_current=len(cur),
                                missing_reference=float(np.isnan(ref).mean()) if len(ref) else float("nan"),
                                missing_current=float(np.isnan(cur).mean()) if len(cur) else float("nan"),
                                mean_reference=_mean(ref), mean_current=_mean(cur)))
    return DriftReport(features=tuple(out), config=config, reference=reference_name, current=current_name)
