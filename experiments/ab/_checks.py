"""Input checks shared by the A/B modules; messages name the argument and what was expected."""

from __future__ import annotations

from typing import Any

import numpy as np


def fail(name: str, expected: str, got: Any) -> ValueError:
    """Build ``ValueError("<name> must be <expected>, got <got>")``."""
    return ValueError(f"{name} must be {expected}, got {got}")


def float_1d(values: Any, name: str, *, min_size: int = 1) -> np.ndarray:
    """Return ``values`` as a finite float64 1-D array with at least ``min_size`` entries."""
    if values is None or isinstance(values, (str, bytes, dict)):
        raise TypeError(f"{name} must be array-like, got {type(values).__name__}")
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise fail(name, "a 1-D array", f"shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must hold numbers, got dtype {arr.dtype}")
    if arr.size < min_size:
        raise fail(name, f"of length >= {min_size}", arr.size)
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise fail(name, "finite (no NaN or inf)", f"{int(np.sum(~np.isfinite(arr)))} non-finite values")
    return arr


def same_length(**arrays: np.ndarray) -> None:
    """Raise ValueError naming the first array whose length differs from the first one's."""
    (first, ref), *rest = arrays.items()
    for name, arr in rest:
        if arr.shape[0] != ref.shape[0]:
            raise fail(name, f"of the same length as {first} ({ref.shape[0]})", arr.shape[0])


def real(value: Any, name: str) -> float:
    """Return a finite real number as float, or raise TypeError / ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not np.isfinite(value):
        raise fail(name, "finite", value)
    return float(value)


def open_unit(value: Any, name: str) -> float:
    """Return a number strictly between 0 and 1."""
    x = real(value, name)
    if not 0.0 < x < 1.0:
        raise fail(name, "in (0, 1)", value)
    return x


def positive(value: Any, name: str) -> float:
    """Return a number > 0."""
    x = real(value, name)
    if x <= 0.0:
        raise fail(name, "> 0", value)
    return x


def integer(value: Any, name: str, *, minimum: int) -> int:
    """Return an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise fail(name, f">= {minimum}", value)
    return int(value)
