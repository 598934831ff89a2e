"""Isotonic calibration of purchase probabilities and reliability diagrams.

Expected calibration error and the reliability curve are defined once in
:mod:`features.metrics` and re-exported here (equal-mass bins by default; see there why).

The calibrator is stored as two arrays (the isotonic fit's breakpoints) in an ``.npz``
file read with ``allow_pickle=False``; prediction is linear interpolation between the
breakpoints, clipped at the ends — what scikit-learn's ``IsotonicRegression.predict`` does
with ``out_of_bounds="clip"``, without needing scikit-learn (or pickle) at serving time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from features.metrics import (
    BinStrategy,
    ReliabilityCurve,
    _binary_1d,
    _check_lengths,
    _float_1d,
    _row_weights,
    expected_calibration_error,
    reliability_curve,
)

__all__ = [
    "IsotonicCalibrator",
    "ReliabilityCurve",
    "draw_reliability",
    "expected_calibration_error",
    "plot_reliability_diagram",
    "reliability_curve",
]

logger = logging.getLogger(__name__)

_FORMAT_VERSION = 1


class IsotonicCalibrator:
    """Monotone map from model scores to probabilities, fitted by isotonic regression.

    Takes no parameters: the fit is scikit-learn's ``IsotonicRegression(increasing=True,
    y_min=0, y_max=1, out_of_bounds="clip")``; prediction interpolates its breakpoints.

    Attributes
    ----------
    x_thresholds_, y_thresholds_ : ndarray of float, shape (m,)
        Breakpoints of the fitted non-decreasing step-linear function.
    """

    def fit(self, scores: Any, y_true: Any, *, sample_weight: Any = None) -> IsotonicCalibrator:
        """Fit on held-out scores (shape (n,)) and binary outcomes (shape (n,)).

        Raises
        ------
        TypeError, ValueError
            On malformed inputs.
        """
        from sklearn.isotonic import IsotonicRegression

        y, s = _binary_1d(y_true, "y_true"), _float_1d(scores, "scores")
        _check_lengths(y_true=y, scores=s)
        w = _row_weights(sample_weight, y)
        iso = IsotonicRegression(increasing=True, y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(s, y, sample_weight=w)
        self.x_thresholds_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.y_thresholds_ = np.asarray(iso.y_thresholds_, dtype=np.float64)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "x_thresholds_"):
            raise RuntimeError("IsotonicCalibrator is not fitted: call fit() or load() first")

    def predict(self, scores: Any) -> np.ndarray:
        """Calibrated probabilities for ``scores`` (shape (n,)), clipped to the fitted range."""
        self._check_fitted()
        s = np.asarray(scores, dtype=np.float64)
        if len(self.x_thresholds_) == 1:
            return np.full(s.shape, self.y_thresholds_[0])
        return np.interp(s, self.x_thresholds_, self.y_thresholds_)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the breakpoints as an ``.npz`` (no pickle)."""
        self._check_fitted()
        path = Path(path)
        with open(path, "wb") as fh:
            np.savez(fh, x_thresholds=self.x_thresholds_, y_thresholds=self.y_thresholds_,
                     format_version=np.array(_FORMAT_VERSION))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> IsotonicCalibrator:
        """Read breakpoints written by :meth:`save` (``allow_pickle=False``).

        Raises
        ------
        ValueError
            When the file is not a calibrator of a known format version.
        """
        with np.load(path, allow_pickle=False) as data:
            if "format_version" not in data or int(data["format_version"]) != _FORMAT_VERSION:
                raise ValueError(f"{path}: not an IsotonicCalibrator file of format version {_FORMAT_VERSION}")
            x, y = np.asarray(data["x_thresholds"], np.float64), np.asarray(data["y_thresholds"], np.float64)
        if x.ndim != 1 or x.shape != y.shape or len(x) == 0 or (np.diff(x) < 0).any() or (np.diff(y) < 0).any():
            raise ValueError(f"{path}: breakpoints must be two non-decreasing 1-D arrays of the same length")
        cal = cls()
        cal.x_thresholds_, cal.y_thresholds_ = x, y
        return cal


def draw_reliability(ax: Any, curves: Mapping[str, ReliabilityCurve], *, title: str = "Reliability") -> None:
    """Draw reliability curves on log-log axes, with the diagonal and the base rate marked.

    Purchase probabilities span several orders of magnitude below the base rate and a few
    above it, so both axes are logarithmic: a curve twice too high sits a constant distance
    above the diagonal wherever it is. Bins where nothing was observed (rate 0 has no
    logarithm) are drawn as open triangles on the bottom edge. The legend gives each curve's
    ECE and ECE over the base rate.

    Parameters
    ----------
    ax : matplotlib Axes
    curves : mapping of str to ReliabilityCurve
        One line per name, e.g. ``{"uncalibrated": ..., "isotonic": ...}``; they share labels,
        so their base rates are equal and the first one's is marked.
    title : str
    """
    if not curves:
        raise ValueError("curves must name at least one reliability curve")
    positive = [c.mean_predicted[c.mean_predicted > 0] for c in curves.values()]
    positive += [c.observed_rate[c.observed_rate > 0] for c in curves.values()]
    values = np.concatenate(positive) if any(v.size for v in positive) else np.array([1e-4, 1.0])
    lo, hi = float(values.min()) / 2.0, min(1.0, float(values.max()) * 2.0)
    base = next(iter(curves.values())).base_rate
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    if base > 0:
        ax.axhline(base, color="black", linestyle=":", linewidth=1, label=f"base rate {base:.3g}")
        ax.axvline(base, color="black", linestyle=":", linewidth=1)
    for i, (name, curve) in enumerate(curves.items()):
        ece = curve.calibration_error()
        rel = curve.calibration_error(relative=True)
        rel_txt = f", {rel:.2f}x base rate" if np.isfinite(rel) else ""
        seen = (curve.observed_rate > 0) & (curve.mean_predicted > 0)
        ax.plot(curve.mean_predicted[seen], curve.observed_rate[seen], marker="o", color=f"C{i}",
                label=f"{name} (ECE {ece:.2g}{rel_txt})")
        empty = (curve.observed_rate == 0) & (curve.mean_predicted > 0)
        if empty.any():
            ax.plot(curve.mean_predicted[empty], np.full(int(empty.sum()), lo), linestyle="none", marker="v",
                    markerfacecolor="none", color=f"C{i}", label=f"{name}: bins with no positive (at the floor)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo * 0.9, hi)
    ax.set_xlabel("mean predicted probability per bin (log)")
    ax.set_ylabel("observed frequency per bin (log)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", fontsize="small")


def plot_reliability_diagram(y_true: Any, probabilities: dict[str, Any], path: str | os.PathLike[str], *,
                             n_bins: int = 15, strategy: BinStrategy = "quantile", sample_weight: Any = None,
                             title: str = "Reliability") -> Path:
    """Draw a reliability diagram (one line per named probability array) to a PNG, on log scales.

    Parameters
    ----------
    y_true : array-like of {0, 1}, shape (n,)
    probabilities : dict of str to array-like of float, shape (n,)
        E.g. ``{"uncalibrated": p_raw, "isotonic": p_cal}``; the legend shows each ECE, absolute
        and over the base rate.
    path : output file (PNG)
    n_bins : int, default 15
    strategy : {"quantile", "uniform"}, default "quantile" (equal-mass bins)
    sample_weight : array-like, shape (n,), optional
    title : str

    Returns
    -------
    Path of the written file.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not probabilities:
        raise ValueError("probabilities must name at least one array")
    curves = {name: reliability_curve(y_true, prob, n_bins, strategy, sample_weight=sample_weight)
              for name, prob in probabilities.items()}
    fig = Figure(figsize=(6.0, 5.2), dpi=110)
    FigureCanvasAgg(fig)
    draw_reliability(fig.subplots(), curves, title=f"{title} ({strategy} bins)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
