"""Calibration of purchase probabilities, expected calibration error, reliability diagrams.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CALIBRATORS",
    "PROB_FLOOR",
    "IdentityCalibrator",
    "IsotonicCalibrator",
    "PlattCalibrator",
    "load_calibrator",
    "select_calibrator",
    "ReliabilityCurve",
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


def _logit(p: np.ndarray) -> np.ndarray:
    q = _clip(np.asarray(p, dtype=np.float64))
    return np.log(q) - np.log1p(-q)


def _check_inputs(y_true: Any, y_prob: Any, sample_weight: Any, *, prob_name: str = "y_prob",
                  unit_interval: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(y_prob)
    if y.ndim != 1 or p.ndim != 1 or len(y) != len(p):
        raise ValueError(f"y_true and {prob_name} must be 1-D of the same length, got shapes {y.shape} and {p.shape}")
    if len(y) == 0:
        raise ValueError("y_true must not be empty")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise TypeError(f"y_true must be numeric or bool, got dtype {y.dtype}")
    if not np.issubdtype(p.dtype, np.number):
        raise TypeError(f"{prob_name} must be numeric, got dtype {p.dtype}")
    y = y.astype(np.float64)
    p = p.astype(np.float64)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must hold only 0 and 1")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{prob_name} must be finite")
    if unit_interval and ((p < 0).any() or (p > 1).any()):
        raise ValueError(f"{prob_name} must lie in [0, 1]")
    if sample_weight is None:
        w = np.ones(len(y))
    else:
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.shape != y.shape:
            raise ValueError(f"sample_weight must have shape {y.shape}, got {w.shape}")
        if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
            raise ValueError("sample_weight must be finite, >= 0 and not all 0")
    return y, p, w


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

        y, s, w = _check_inputs(y_true, scores, sample_weight, prob_name="scores", unit_interval=False)
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

        y, s, w = _check_inputs(y_true, scores, sample_weight, prob_name="scores")
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
        _check_inputs(y_true, scores, sample_weight, prob_name="scores")
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
    return {"isotonic": IsotonicCalibrator, "platt": PlattCalibrator, "none": IdentityCalibrator}[kind]()


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
    y, s, w = _check_inputs(y_true, scores, sample_weight, prob_name="scores")
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


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin calibration: mean predicted probability, observed frequency and weight (each shape (B,))."""

    mean_predicted: np.ndarray
    observed: np.ndarray
    weight: np.ndarray


def _bin_edges(p: np.ndarray, w: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    order = np.argsort(p, kind="stable")
    cum = np.cumsum(w[order])
    targets = cum[-1] * np.arange(1, n_bins) / n_bins
    inner = p[order][np.minimum(np.searchsorted(cum, targets), len(p) - 1)]
    return np.unique(np.r_[0.0, inner, 1.0])


def reliability_curve(y_true: Any, y_prob: Any, *, n_bins: int = 15, strategy: str = "quantile",
                      sample_weight: Any = None) -> ReliabilityCurve:
    """Bin predictions and compare each bin's mean prediction with its observed frequency.

    Parameters
    ----------
    y_true : array-like of {0, 1}, shape (n,)
    y_prob : array-like of float in [0, 1], shape (n,)
    n_bins : int, default 15
    strategy : {"quantile", "uniform"}, default "quantile"
        ``quantile`` puts equal (sample-weighted) mass in each bin, which keeps bins
        informative when probabilities are small (purchases are rare); ties may merge bins.
    sample_weight : array-like of float, shape (n,), optional

    Returns
    -------
    ReliabilityCurve
        Empty bins are dropped.

    Raises
    ------
    TypeError, ValueError
        On malformed inputs, ``n_bins < 1`` or an unknown ``strategy``.
    """
    if not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    if strategy not in ("quantile", "uniform"):
        raise ValueError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}")
    y, p, w = _check_inputs(y_true, y_prob, sample_weight)
    edges = _bin_edges(p, w, int(n_bins), strategy)
    # Bin b holds edges[b] < p <= edges[b + 1] (the first bin also p = 0), so a quantile edge
    # keeps the predictions equal to it in the lower bin.
    idx = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, len(edges) - 2)
    nb = len(edges) - 1
    wsum = np.bincount(idx, weights=w, minlength=nb)
    psum = np.bincount(idx, weights=w * p, minlength=nb)
    ysum = np.bincount(idx, weights=w * y, minlength=nb)
    keep = wsum > 0
    return ReliabilityCurve(mean_predicted=psum[keep] / wsum[keep], observed=ysum[keep] / wsum[keep],
                            weight=wsum[keep])


def expected_calibration_error(y_true: Any, y_prob: Any, *, n_bins: int = 15, strategy: str = "quantile",
                               sample_weight: Any = None) -> float:
    """Expected calibration error: ``sum_b (W_b / W) * |mean_pred_b - observed_b|`` (lower is better).

    Parameters are those of :func:`reliability_curve`.

    Returns
    -------
    float in [0, 1]
    """
    curve = reliability_curve(y_true, y_prob, n_bins=n_bins, strategy=strategy, sample_weight=sample_weight)
    return float(np.sum(curve.weight * np.abs(curve.mean_predicted - curve.observed)) / curve.weight.sum())


def plot_reliability_diagram(y_true: Any, probabilities: dict[str, Any], path: str | os.PathLike[str], *,
                             n_bins: int = 15, sample_weight: Any = None, title: str = "Reliability") -> Path:
    """Draw a reliability diagram (one line per named probability array) to a PNG.

    Parameters
    ----------
    y_true : array-like of {0, 1}, shape (n,)
    probabilities : dict of str to array-like of float, shape (n,)
        E.g. ``{"uncalibrated": p_raw, "isotonic": p_cal}``; the legend shows each ECE.
    path : output file (PNG)
    n_bins : int, default 15 (equal-mass bins)
    sample_weight : array-like, shape (n,), optional
    title : str

    Returns
    -------
    Path of the written file.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not probabilities:
        raise ValueError("probabilities must name at least one array")
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    top = 0.0
    for name, prob in probabilities.items():
        curve = reliability_curve(y_true, prob, n_bins=n_bins, sample_weight=sample_weight)
        ece = expected_calibration_error(y_true, prob, n_bins=n_bins, sample_weight=sample_weight)
        ax.plot(curve.mean_predicted, curve.observed, marker="o", label=f"{name} (ECE {ece:.4f})")
        top = max(top, float(curve.mean_predicted.max()), float(curve.observed.max()))
    top = top * 1.05 or 1.0
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="perfect")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("mean predicted probability (equal-mass bins)")
    ax.set_ylabel("observed frequency")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
