"""Calibration of purchase probabilities and reliability diagrams.

Expected calibration error and the reliability curve are defined once in
:mod:`features.metrics` and re-exported here (equal-mass bins by default; see there why).

Three calibrators share one interface (``fit``, ``predict``, ``save``; :func:`load_calibrator`
reads any of them back):

- :class:`IsotonicCalibrator`: the isotonic fit's breakpoints; prediction is linear
  interpolation between them, clipped at the ends (scikit-learn's ``IsotonicRegression``
  with ``out_of_bounds="clip"``), without scikit-learn or pickle at serving time.
- :class:`PlattCalibrator`: ``sigmoid(a * logit(p) + b)`` (Platt scaling on the model's
  logit, fitted by scikit-learn's logistic regression): two parameters, so it cannot overfit
  a small validation slice the way a step function can, and it keeps the model's order.
- :class:`IdentityCalibrator`: the model's own probabilities.

:func:`select_calibrator` picks among them by held-out log loss (two-fold on the calibration
slice), so calibration is chosen only where it helps. Every calibrator keeps predictions in
``[PROB_FLOOR, 1 - PROB_FLOOR]``: a probability of exactly 0 would make an item worthless
whatever its price, and log loss infinite. Files are ``.npz`` read with ``allow_pickle=False``.
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
    "CALIBRATORS",
    "PROB_FLOOR",
    "IdentityCalibrator",
    "IsotonicCalibrator",
    "PlattCalibrator",
    "load_calibrator",
    "select_calibrator",
    "ReliabilityCurve",
    "draw_reliability",
    "expected_calibration_error",
    "plot_reliability_diagram",
    "reliability_curve",
]

logger = logging.getLogger(__name__)

_FORMAT_VERSION = 1  # isotonic breakpoints without a kind (still read)
_KIND_FORMAT_VERSION = 2  # every calibrator: a "kind" and its parameters
PROB_FLOOR = 1e-6
CALIBRATORS: tuple[str, ...] = ("isotonic", "platt", "none")


def _clip(p: np.ndarray) -> np.ndarray:
    return np.clip(p, PROB_FLOOR, 1.0 - PROB_FLOOR)


def _fit_inputs(y_true: Any, scores: Any, sample_weight: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary outcomes, scores and row weights, checked by the shared validators of ``features.metrics``."""
    y, s = _binary_1d(y_true, "y_true"), _float_1d(scores, "scores")
    _check_lengths(y_true=y, scores=s)
    return y, s, _row_weights(sample_weight, y)


def _logit(p: np.ndarray) -> np.ndarray:
    q = _clip(np.asarray(p, dtype=np.float64))
    return np.log(q) - np.log1p(-q)


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

        y, s, w = _fit_inputs(y_true, scores, sample_weight)
        iso = IsotonicRegression(increasing=True, y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(s, y, sample_weight=w)
        self.x_thresholds_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.y_thresholds_ = np.asarray(iso.y_thresholds_, dtype=np.float64)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "x_thresholds_"):
            raise RuntimeError("IsotonicCalibrator is not fitted: call fit() or load() first")

    kind = "isotonic"

    def predict(self, scores: Any) -> np.ndarray:
        """Calibrated probabilities for ``scores`` (shape (n,)), clipped to the fitted range and
        to ``[PROB_FLOOR, 1 - PROB_FLOOR]``."""
        self._check_fitted()
        s = np.asarray(scores, dtype=np.float64)
        if len(self.x_thresholds_) == 1:
            return _clip(np.full(s.shape, self.y_thresholds_[0]))
        return _clip(np.interp(s, self.x_thresholds_, self.y_thresholds_))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the breakpoints as an ``.npz`` (no pickle)."""
        self._check_fitted()
        path = Path(path)
        with open(path, "wb") as fh:
            np.savez(fh, kind=np.array(self.kind), x_thresholds=self.x_thresholds_, y_thresholds=self.y_thresholds_,
                     format_version=np.array(_KIND_FORMAT_VERSION))
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
            version = int(data["format_version"]) if "format_version" in data else None
            kind = str(data["kind"]) if "kind" in data else "isotonic"
            if version not in (_FORMAT_VERSION, _KIND_FORMAT_VERSION) or kind != "isotonic":
                raise ValueError(f"{path}: not an IsotonicCalibrator file (format version {version}, kind {kind})")
            x, y = np.asarray(data["x_thresholds"], np.float64), np.asarray(data["y_thresholds"], np.float64)
        if x.ndim != 1 or x.shape != y.shape or len(x) == 0 or (np.diff(x) < 0).any() or (np.diff(y) < 0).any():
            raise ValueError(f"{path}: breakpoints must be two non-decreasing 1-D arrays of the same length")
        cal = cls()
        cal.x_thresholds_, cal.y_thresholds_ = x, y
        return cal


class PlattCalibrator:
    """``p = sigmoid(a * logit(score) + b)``, fitted by (nearly unpenalised) logistic regression.

    Attributes
    ----------
    a_, b_ : float
        Slope and intercept on the model's logit.
    """

    kind = "platt"

    def fit(self, scores: Any, y_true: Any, *, sample_weight: Any = None) -> PlattCalibrator:
        """Fit on held-out probabilities ``scores`` (shape (n,)) and binary outcomes (shape (n,))."""
        from sklearn.linear_model import LogisticRegression

        y, s, w = _fit_inputs(y_true, scores, sample_weight)
        if y.min() == y.max():
            raise ValueError("y_true must hold both classes to fit a Platt calibrator")
        model = LogisticRegression(C=1e6, max_iter=1000).fit(_logit(s)[:, None], y, sample_weight=w)
        self.a_, self.b_ = float(model.coef_[0, 0]), float(model.intercept_[0])
        return self

    def predict(self, scores: Any) -> np.ndarray:
        if not hasattr(self, "a_"):
            raise RuntimeError("PlattCalibrator is not fitted: call fit() or load_calibrator() first")
        z = self.a_ * _logit(np.asarray(scores, dtype=np.float64)) + self.b_
        return _clip(1.0 / (1.0 + np.exp(-z)))

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        with open(path, "wb") as fh:
            np.savez(fh, kind=np.array(self.kind), a=np.array(self.a_), b=np.array(self.b_),
                     format_version=np.array(_KIND_FORMAT_VERSION))
        return path


class IdentityCalibrator:
    """The model's probabilities as they are (kept off exactly 0 and 1)."""

    kind = "none"

    def fit(self, scores: Any, y_true: Any, *, sample_weight: Any = None) -> IdentityCalibrator:
        _fit_inputs(y_true, scores, sample_weight)
        return self

    def predict(self, scores: Any) -> np.ndarray:
        return _clip(np.asarray(scores, dtype=np.float64))

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        with open(path, "wb") as fh:
            np.savez(fh, kind=np.array(self.kind), format_version=np.array(_KIND_FORMAT_VERSION))
        return path


Calibrator = IsotonicCalibrator | PlattCalibrator | IdentityCalibrator


def _new(kind: str) -> Calibrator:
    if kind == "isotonic":
        return IsotonicCalibrator()
    return PlattCalibrator() if kind == "platt" else IdentityCalibrator()


def load_calibrator(path: str | os.PathLike[str]) -> Calibrator:
    """Read any calibrator written by ``save`` (``allow_pickle=False``).

    Raises
    ------
    ValueError
        When the file is not a calibrator of a known kind and format version.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            kind = str(data["kind"]) if "kind" in data else "isotonic"
            version = int(data["format_version"]) if "format_version" in data else None
            params = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable calibrator file ({exc})") from None
    if kind == "isotonic":
        return IsotonicCalibrator.load(path)
    if version != _KIND_FORMAT_VERSION or kind not in CALIBRATORS:
        raise ValueError(f"{path}: unknown calibrator (kind {kind!r}, format version {version})")
    cal = _new(kind)
    if isinstance(cal, PlattCalibrator):
        a, b = float(params["a"]), float(params["b"])
        if not (np.isfinite(a) and np.isfinite(b)):
            raise ValueError(f"{path}: Platt parameters must be finite, got a={a}, b={b}")
        cal.a_, cal.b_ = a, b
    return cal


def _log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    q = _clip(p)
    return float(-np.average(y * np.log(q) + (1 - y) * np.log1p(-q), weights=w))


def select_calibrator(scores: Any, y_true: Any, *, sample_weight: Any = None, kind: str = "auto",
                      seed: int = 0) -> tuple[Calibrator, dict[str, float]]:
    """Choose and fit the calibrator of lowest held-out log loss on ``(scores, y_true)``.

    With ``kind="auto"`` each of :data:`CALIBRATORS` is fitted on one random half of the rows and
    scored on the other, both ways; the kind with the lowest mean log loss is refitted on all
    rows. So calibration is applied only where it beats the model's own probabilities out of
    sample, and it never makes the held-out log loss worse than "none" by more than noise.
    Any other ``kind`` fits that calibrator.

    Returns
    -------
    (calibrator, log loss of each kind tried; empty when ``kind`` was given)
    """
    y, s, w = _fit_inputs(y_true, scores, sample_weight)
    if kind != "auto":
        if kind not in CALIBRATORS:
            raise ValueError(f"kind must be 'auto' or one of {list(CALIBRATORS)}, got {kind!r}")
        return _new(kind).fit(s, y, sample_weight=w), {}
    half = np.random.default_rng(seed).random(len(y)) < 0.5
    losses: dict[str, float] = {}
    for name in CALIBRATORS:
        total = 0.0
        for fit_rows in (half, ~half):
            held = ~fit_rows
            if y[fit_rows].min() == y[fit_rows].max() or not held.any():
                total = float("inf")
                break
            cal = _new(name).fit(s[fit_rows], y[fit_rows], sample_weight=w[fit_rows])
            total += _log_loss(y[held], cal.predict(s[held]), w[held]) / 2
        losses[name] = total
    best = min(losses, key=lambda k: (losses[k], CALIBRATORS.index(k)))
    if not np.isfinite(losses[best]):
        best = "none"
    logger.info("calibrator chosen by held-out log loss: %s (%s)", best,
                ", ".join(f"{k} {v:.5f}" for k, v in losses.items()))
    return _new(best).fit(s, y, sample_weight=w), losses


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
