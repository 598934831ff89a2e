"""The rows monitoring compares: the training set, served-feature windows, request and impression logs.

Feature names always come from the data or the bundle's metadata (``bundle.json``
``feature_list``), never from a list kept here, so a model with new features is monitored as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

__all__ = ["bundle_features", "read_log_table", "served_window", "training_reference"]


def bundle_features(bundle_dir: str | Path) -> list[str]:
    """The ranker's features, in order, from a bundle's manifest."""
    from serving.bundle import read_bundle_manifest

    return list(read_bundle_manifest(Path(bundle_dir)).feature_list)


def training_reference(features_dir: str | Path, features: Sequence[str], *, max_rows: int = 200_000,
                       seed: int = 0) -> pd.DataFrame:
    """A uniform sample of at most ``max_rows`` rows of the ETL's ``training/`` table, ``features`` only.

    Raises
    ------
    FileNotFoundError
        When ``<features_dir>/training`` does not exist.
    KeyError
        When the table lacks one of ``features``.
    """
    path = Path(features_dir) / "training"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: the ETL's training table (run `feedrank etl` or `feedrank train`)")
    data = ds.dataset(path, format="parquet", partitioning="hive")
    missing = [f for f in features if f not in data.schema.names]
    if missing:
        raise KeyError(f"{path} lacks features {missing[:5]} (a bundle trained on other features?)")
    table = data.to_table(columns=list(features))
    if table.num_rows > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(table.num_rows, max_rows, replace=False))
        table = table.take(keep)
    return table.to_pandas()


def served_window(log_dir: str | Path, *, start_us: int | None = None, end_us: int | None = None) -> pd.DataFrame:
    """Served-feature rows (``<log_dir>/served_features``) with ``start_us <= ts < end_us``."""
    from serving.impression_log import read_served_features

    return read_served_features(log_dir, start_us=start_us, end_us=end_us).to_pandas()


def read_log_table(log_dir: str | Path, name: str, *, start_us: int | None = None,
                   end_us: int | None = None) -> pd.DataFrame | None:
    """A serving log table (``requests``, ``impressions``) in ``[start_us, end_us)``; None when absent."""
    path = Path(log_dir) / name
    files = sorted(path.glob("part-*.parquet")) if path.is_dir() else []
    if not files:
        return None
    frame = ds.dataset(files, format="parquet").to_table().to_pandas()
    ts = frame["ts"].astype("datetime64[us, UTC]").astype("int64")
    keep = np.ones(len(frame), dtype=bool)
    if start_us is not None:
        keep &= (ts >= start_us).to_numpy()
    if end_us is not None:
        keep &= (ts < end_us).to_numpy()
    return frame[keep].reset_index(drop=True)
