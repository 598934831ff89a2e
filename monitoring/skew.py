"""Training/serving skew: served feature values against the same rows recomputed offline.

For each sampled served row (request time, user, device, item, seller) the features are
recomputed through the training path (:func:`recompute_offline`: Feast's point-in-time join at
the request's timestamp and :func:`features.derived.derived_features`, as the ETL builds
training rows), then compared feature by feature (:func:`feature_skew`)::

    differs = |served - offline| > atol + rtol * |offline|,  or missing on exactly one side

Per feature: the share of rows that differ (mismatch rate), the mean and largest absolute
difference where both are present, and how often each side is missing. A feature is flagged
when its mismatch rate reaches ``alert_rate`` (:class:`~monitoring.config.SkewConfig`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from monitoring.config import SkewConfig
from monitoring.drift import rows_frame

__all__ = ["FeatureSkew", "SkewReport", "feature_skew", "recompute_offline"]

_KEYS = ("request_key", "ts", "user_id", "item_id", "seller_id", "device")


@dataclass(frozen=True)
class FeatureSkew:
    """Skew of one feature over the compared rows."""

    feature: str
    rows: int
    mismatch_rate: float
    mean_abs_diff: float
    max_abs_diff: float
    missing_served: float
    missing_offline: float
    flagged: bool


@dataclass(frozen=True)
class SkewReport:
    """Skew of every compared feature."""

    features: tuple[FeatureSkew, ...]
    config: SkewConfig
    requests: int

    def flagged(self) -> list[str]:
        return [f.feature for f in self.features if f.flagged]

    def to_frame(self) -> pd.DataFrame:
        """One row per feature, highest mismatch rate first."""
        return rows_frame(self.features, "mismatch_rate")


def feature_skew(served: pd.DataFrame, offline: pd.DataFrame, *, features: Sequence[str] | None = None,
                 config: SkewConfig | None = None) -> SkewReport:
    """Compare served feature values with their offline recomputation, row by row.

    Parameters
    ----------
    served, offline : DataFrame
        The same rows in the same order (same length), one column per feature.
    features : sequence of str, optional
        Default: every column both share whose name starts with ``f_`` (the features the model
        scored, read from the data).
    config : SkewConfig, optional

    Raises
    ------
    ValueError
        When the frames differ in length.
    KeyError
        When a requested feature is missing from either frame.
    """
    config = config or SkewConfig()
    if len(served) != len(offline):
        raise ValueError(f"served and offline must hold the same rows, got {len(served)} and {len(offline)}")
    if features is None:
        features = [c for c in served.columns if c.startswith("f_") and c in offline.columns]
    missing = [f for f in features if f not in served.columns or f not in offline.columns]
    if missing:
        raise KeyError(f"features missing from the served or the offline rows: {missing[:5]}")
    requests = int(served["request_key"].nunique()) if "request_key" in served.columns else len(served)
    out = []
    n = len(served)
    for name in features:
        s = served[name].to_numpy(dtype=np.float64, na_value=np.nan)
        o = offline[name].to_numpy(dtype=np.float64, na_value=np.nan)
        s_nan, o_nan = np.isnan(s), np.isnan(o)
        both = ~s_nan & ~o_nan
        diff = np.abs(s[both] - o[both])
        differs = np.zeros(n, dtype=bool)
        differs[both] = diff > config.atol + config.rtol * np.abs(o[both])
        differs |= s_nan != o_nan
        rate = float(differs.mean()) if n else float("nan")
        out.append(FeatureSkew(
            feature=name, rows=n, mismatch_rate=rate,
            mean_abs_diff=float(diff.mean()) if len(diff) else float("nan"),
            max_abs_diff=float(diff.max()) if len(diff) else float("nan"),
            missing_served=float(s_nan.mean()) if n else float("nan"),
            missing_offline=float(o_nan.mean()) if n else float("nan"),
            flagged=bool(n >= config.min_rows and rate >= config.alert_rate)))
    return SkewReport(features=tuple(out), config=config, requests=requests)


def recompute_offline(store: Any, served: pd.DataFrame, etl: Any) -> pd.DataFrame:
    """The served rows' features recomputed through Feast's point-in-time path at each request's time.

    Parameters
    ----------
    store : feast.FeatureStore
        The store over the ETL output the model was trained from (``features.store.open_store``).
    served : DataFrame
        Served-feature rows (``serving.impression_log.read_served_features``): ``ts``,
        ``user_id``, ``item_id``, ``seller_id``, ``device`` at least.
    etl : features.config.EtlConfig

    Returns
    -------
    DataFrame
        The key columns and every training feature, one row per served row, in order.
    """
    from features.store import build_training_set

    keys = [k for k in _KEYS if k in served.columns]
    entities = served[keys].reset_index(drop=True)
    entities = entities.assign(ts=pd.to_datetime(entities["ts"], utc=True))
    return build_training_set(store, entities, etl)
