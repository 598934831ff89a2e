"""The trained-model folder: file names and the versioned ``metadata.json`` beside the models.

Layout (every file in a safe format: text, JSON, ``.npz`` without pickle, a shared library)::

    metadata.json     format_version, features, training window, metrics, params, files
    ranker.txt        LightGBM text model (LambdaMART)
    purchase.txt      LightGBM text model (binary: P(purchase), or P(purchase | click) with click.txt)
    click.txt         LightGBM text model (binary, P(click | examined); factorised purchase model only)
    calibrator.npz    the calibrator (kind "isotonic", "platt" or "none" and its parameters)
    ranker.so, purchase.so, click.so   compiled models (when compiling succeeded)
    tuning.json       Optuna study summary (when tuning ran)
    reliability.png, examination.png   figures
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["METADATA_FILE", "METADATA_VERSION", "read_metadata", "write_metadata"]

METADATA_FILE = "metadata.json"
METADATA_VERSION = 1


def write_metadata(model_dir: str | os.PathLike[str], metadata: dict[str, Any]) -> Path:
    """Write ``metadata`` (with ``format_version`` set) as ``metadata.json``, atomically."""
    root = Path(model_dir)
    path = root / METADATA_FILE
    tmp = root / (METADATA_FILE + ".tmp")
    tmp.write_text(json.dumps({"format_version": METADATA_VERSION, **metadata}, indent=2, sort_keys=True,
                              allow_nan=False))
    os.replace(tmp, path)
    return path


def read_metadata(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``metadata.json`` from ``model_dir``.

    Raises
    ------
    FileNotFoundError
        When the folder holds no metadata file.
    ValueError
        When its ``format_version`` is not :data:`METADATA_VERSION`.
    """
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {model_dir} holds no trained ranking models")
    meta: dict[str, Any] = json.loads(path.read_text())
    if meta.get("format_version") != METADATA_VERSION:
        raise ValueError(f"{path}: format_version {meta.get('format_version')!r}, expected {METADATA_VERSION}")
    return meta
