"""Position bias: the examination probability of each slot, estimated from randomized traffic.

Why this estimator
------------------
The logs carry a small share of requests whose top ``N`` items were shuffled uniformly at
random (``randomized`` is true and ``propensity`` is the exact ``1 / N``). In those slots
every position receives the same distribution of items, so under the position-based model
``P(click | item, slot p) = e(p) * a(item)``::

    CTR_rand(p) = e(p) * E[a(item) | item in the shuffled top N]   for p < N
    e(p) / e(0) = CTR_rand(p) / CTR_rand(0)

The ratio is unbiased in the limit and needs no model of relevance. The alternatives were
considered and not taken:

- *Intervention harvesting* (Agarwal et al., WSDM 2019) recovers the same ratios from
  differences between several logging policies when no randomization exists; here exact
  randomization exists, so harvesting would add assumptions (policies overlapping on the
  same query distribution) to reach an estimate the shuffle gives directly.
- *A click model fitted by EM on all traffic* (regression EM, Wang et al., WSDM 2018) uses
  far more impressions but must model relevance jointly and inherits that model's errors;
  on the simulator the shuffle share (2% by default) already gives tight curves.

The raw ratios are smoothed by a non-increasing isotonic fit (weighted by impressions),
positions without enough randomized impressions are interpolated, and positions past the
randomized range are extrapolated by a power law ``e(p) = (p + 1) ** -eta`` fitted to the
estimated curve (capped at the last estimated value). Propensities are normalised to
``e(0) = 1``; IPS weights are ``min(1 / e(p), max_weight)``.

What this assumes: clicks follow the position-based model and the intervention is a
uniform shuffle of the top N (the contract's randomized traffic). Pairwise swaps of
neighbours would need the harvesting estimator instead.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["PositionBiasEstimator", "examination_inputs_from_logs"]

logger = logging.getLogger(__name__)


def _as_1d(name: str, values: Any, dtype: Any) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be array-like of {np.dtype(dtype).name}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {arr.shape}")
    return arr


class PositionBiasEstimator:
    """Estimate examination probability per 0-based position from randomized impressions.

    Parameters
    ----------
    min_impressions : int, default 200
        Randomized impressions (sample-weighted) a position needs to be estimated directly.
    monotone : bool, default True
        Smooth the raw ratios with a non-increasing isotonic fit.

    Attributes
    ----------
    examination_ : ndarray of float, shape (P,)
        Estimated ``e(p) / e(0)`` for positions ``0..P-1`` (P = one past the largest
        randomized position seen).
    raw_examination_ : ndarray of float, shape (P,)
        The unsmoothed ratios ``CTR(p) / CTR(0)``; NaN where a position had too few impressions.
    stderr_ : ndarray of float, shape (P,)
        Delta-method standard errors of the raw ratios.
    impressions_, clicks_ : ndarray of float, shape (P,)
        Sample-weighted randomized impressions and clicks per position.
    eta_ : float
        Exponent of the power law fitted to the curve, used beyond position P-1.
    """

    def __init__(self, *, min_impressions: int = 200, monotone: bool = True) -> None:
        self.min_impressions = min_impressions
        self.monotone = monotone

    # ------------------------------------------------------------------ fit
    def fit(self, position: Any, clicked: Any, randomized: Any, *,
            sample_weight: Any = None) -> PositionBiasEstimator:
        """Estimate the curve from impressions.

        Parameters
        ----------
        position : array-like of int, shape (n,)
            0-based slot of each impression; NaN/negative rows are ignored when not randomized.
        clicked : array-like of bool, shape (n,)
        randomized : array-like of bool, shape (n,)
            True where the item's slot was drawn by the uniform shuffle (randomized request
            and a known propensity); only these rows are used.
        sample_weight : array-like of float, shape (n,), optional
            E.g. ``1 / keep-rate`` of negative downsampling.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            On mismatched lengths, negative weights, invalid positions in randomized rows, or
            when position 0 has fewer than ``min_impressions`` randomized impressions.
        """
        if not isinstance(self.min_impressions, int | np.integer) or self.min_impressions < 1:
            raise ValueError(f"min_impressions must be an integer >= 1, got {self.min_impressions!r}")
        rand = _as_1d("randomized", randomized, bool)
        clk = _as_1d("clicked", clicked, bool)
        pos = _as_1d("position", position, np.float64)
        w = np.ones(len(pos)) if sample_weight is None else _as_1d("sample_weight", sample_weight, np.float64)
        if not (len(pos) == len(clk) == len(rand) == len(w)):
            raise ValueError(f"position, clicked, randomized and sample_weight must have the same length, got "
                             f"{len(pos)}, {len(clk)}, {len(rand)}, {len(w)}")
        if not np.all(np.isfinite(w)) or (w < 0).any():
            raise ValueError("sample_weight must be finite and >= 0")
        p = pos[rand]
        if len(p) and (np.isnan(p).any() or (p < 0).any() or (p != np.floor(p)).any()):
            raise ValueError("position must hold non-negative integers on randomized rows")
        if len(p) == 0:
            raise ValueError("randomized has no true rows: no randomized traffic to estimate position bias from")
        p = p.astype(np.int64)
        n_pos = int(p.max()) + 1
        imps = np.bincount(p, weights=w[rand], minlength=n_pos)
        sq = np.bincount(p, weights=w[rand] ** 2, minlength=n_pos)
        clicks = np.bincount(p, weights=w[rand] * clk[rand], minlength=n_pos)
        if imps[0] < self.min_impressions:
            raise ValueError(f"position 0 has {imps[0]:.0f} randomized impressions, fewer than min_impressions="
                             f"{self.min_impressions}: not enough randomized traffic")
        if clicks[0] <= 0:
            raise ValueError("no clicks at position 0 in randomized traffic: the curve cannot be normalised")

        covered = imps >= self.min_impressions
        ctr = np.divide(clicks, imps, out=np.zeros(n_pos), where=imps > 0)
        n_eff = np.divide(imps ** 2, sq, out=np.zeros(n_pos), where=sq > 0)
        var = np.divide(ctr * (1 - ctr), n_eff, out=np.full(n_pos, np.inf), where=n_eff > 0)
        raw = np.where(covered, ctr / ctr[0], np.nan)
        # Delta method for CTR(p) / CTR(0): Var ~ var_p / c0^2 + c_p^2 var_0 / c0^4.
        stderr = np.full(n_pos, np.nan)
        stderr[covered] = np.sqrt(var[covered] / ctr[0] ** 2 + ctr[covered] ** 2 * var[0] / ctr[0] ** 4)
        stderr[0] = 0.0  # the ratio is 1 there by definition

        idx = np.flatnonzero(covered)
        values = ctr[idx]
        if self.monotone and len(idx) > 1:
            from sklearn.isotonic import IsotonicRegression

            values = IsotonicRegression(increasing=False).fit(idx, values, sample_weight=imps[idx]).predict(idx)
        if values[0] <= 0:
            raise ValueError("the smoothed click-through rate at position 0 is 0: the curve cannot be normalised")
        curve_covered = np.clip(values / values[0], 0.0, 1.0)
        curve = np.interp(np.arange(n_pos), idx, curve_covered)

        self.impressions_ = imps
        self.clicks_ = clicks
        self.raw_examination_ = raw
        self.stderr_ = stderr
        self.examination_ = curve
        self.eta_ = _fit_power_law(idx, curve_covered, imps[idx])
        if (~covered).any():
            logger.info("position bias: %d of %d positions had fewer than %d randomized impressions "
                        "(interpolated)", int((~covered).sum()), n_pos, self.min_impressions)
        return self

    # ------------------------------------------------------------------ use
    def _check_fitted(self) -> None:
        if not hasattr(self, "examination_"):
            raise RuntimeError("PositionBiasEstimator is not fitted: call fit() or from_dict() first")

    def propensity(self, position: Any) -> np.ndarray:
        """Examination probability ``e(p) / e(0)`` at each position (shape (n,)).

        Positions past the estimated range follow the fitted power law, capped at the last
        estimated value; NaN positions (slot not logged) give 1.0.
        """
        self._check_fitted()
        pos = _as_1d("position", position, np.float64)
        if (pos[~np.isnan(pos)] < 0).any():
            raise ValueError("position must be >= 0")
        out = np.ones(len(pos))
        known = ~np.isnan(pos)
        p = pos[known].astype(np.int64)
        n = len(self.examination_)
        inside = p < n
        vals = np.empty(len(p))
        vals[inside] = self.examination_[p[inside]]
        tail = np.minimum((p[~inside] + 1.0) ** -self.eta_, self.examination_[-1])
        vals[~inside] = tail
        out[known] = vals
        return out

    def ips_weights(self, position: Any, *, max_weight: float) -> np.ndarray:
        """Inverse-propensity weights ``min(1 / e(p), max_weight)`` (shape (n,)); 1 where no slot is logged.

        Raises
        ------
        ValueError
            When ``max_weight < 1``.
        """
        if not max_weight >= 1.0:
            raise ValueError(f"max_weight must be >= 1, got {max_weight!r}")
        e = self.propensity(position)
        return np.minimum(1.0 / np.maximum(e, 1.0 / max_weight), max_weight)

    def plot(self, path: str | os.PathLike[str], *, truth: Any = None, title: str = "Examination by position") -> Path:
        """Draw the estimated curve, the raw ratios with 95% intervals and, optionally, the truth (PNG).

        Parameters
        ----------
        path : output file
        truth : array-like of float, shape (P,), optional
            True examination probabilities of positions ``0..P-1`` (e.g. from the simulator).
        title : str

        Returns
        -------
        Path of the written file.
        """
        self._check_fitted()
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        pos = np.arange(len(self.examination_))
        fig, ax = plt.subplots(figsize=(6.0, 4.0))
        ok = ~np.isnan(self.raw_examination_)
        ax.errorbar(pos[ok], self.raw_examination_[ok], yerr=1.96 * self.stderr_[ok], fmt="o", markersize=3,
                    color="tab:grey", label="raw ratio CTR(p)/CTR(0), 95% CI")
        ax.plot(pos, self.examination_, color="tab:blue", label=f"estimate (power-law tail eta={self.eta_:.2f})")
        if truth is not None:
            t = np.asarray(truth, dtype=np.float64)
            ax.plot(np.arange(len(t)), t, color="tab:red", linestyle="--", label="truth")
        ax.set_xlabel("position (0 = top)")
        ax.set_ylabel("examination probability / e(0)")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description of the fitted curve (for the model's metadata file)."""
        self._check_fitted()
        return {
            "examination": [float(v) for v in self.examination_],
            "raw_examination": [None if np.isnan(v) else float(v) for v in self.raw_examination_],
            "stderr": [None if np.isnan(v) else float(v) for v in self.stderr_],
            "impressions": [float(v) for v in self.impressions_],
            "clicks": [float(v) for v in self.clicks_],
            "eta": float(self.eta_),
            "min_impressions": int(self.min_impressions),
            "monotone": bool(self.monotone),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PositionBiasEstimator:
        """Rebuild a fitted estimator from :meth:`to_dict` output."""
        est = cls(min_impressions=int(data["min_impressions"]), monotone=bool(data["monotone"]))
        nan = float("nan")
        est.examination_ = np.asarray(data["examination"], dtype=np.float64)
        est.raw_examination_ = np.asarray([nan if v is None else v for v in data["raw_examination"]], dtype=np.float64)
        est.stderr_ = np.asarray([nan if v is None else v for v in data["stderr"]], dtype=np.float64)
        est.impressions_ = np.asarray(data["impressions"], dtype=np.float64)
        est.clicks_ = np.asarray(data["clicks"], dtype=np.float64)
        est.eta_ = float(data["eta"])
        return est


def _fit_power_law(positions: np.ndarray, curve: np.ndarray, weight: np.ndarray) -> float:
    """Least-squares ``eta`` of ``log e(p) = -eta * log(p + 1)`` over positive curve values."""
    ok = (curve > 0) & (positions > 0)
    if not ok.any():
        return 0.0
    x = np.log(positions[ok] + 1.0)
    y = np.log(curve[ok])
    w = weight[ok]
    return float(max(0.0, -np.sum(w * x * y) / np.sum(w * x * x)))


def examination_inputs_from_logs(impressions: pd.DataFrame, events: pd.DataFrame) -> dict[str, np.ndarray]:
    """Turn contract ``impressions`` and ``events`` tables into :meth:`PositionBiasEstimator.fit` inputs.

    An impression counts as clicked when a ``click`` event names its ``impression_id``; a row
    is randomized when its request was randomized and its propensity is known.

    Returns
    -------
    dict with ``position``, ``clicked``, ``randomized`` (arrays of shape (n_impressions,))

    Raises
    ------
    ValueError
        When a required column is missing.
    """
    for name, frame, cols in (("impressions", impressions, ("impression_id", "position", "randomized", "propensity")),
                              ("events", events, ("type", "impression_id"))):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} is missing columns {missing}")
    clicks = events.loc[(events["type"] == "click") & events["impression_id"].notna(), "impression_id"]
    clicked = impressions["impression_id"].isin(clicks.astype("int64")).to_numpy()
    randomized = (impressions["randomized"].fillna(False).astype(bool) & impressions["propensity"].notna()).to_numpy()
    position = impressions["position"].astype("float64").to_numpy()
    return {"position": position, "clicked": clicked, "randomized": randomized}
