"""Compile LightGBM models to shared libraries (treelite, then tl2cgen and a C compiler), and load them.

A compiled model predicts exactly what LightGBM predicts (float64 thresholds and inputs;
a test holds them within 1e-5). Whether it is faster depends on the model's size: on
these machines 300 trees of 31 leaves score 500 rows faster compiled, while at 500 trees
of 63 leaves tl2cgen's default build was slower than LightGBM and its ``quantize=1`` build
faster (quantized is the configured default, ``ranking.compile.quantize``); ``benchmarks/bench_scoring.py`` measures it. When compiling fails (no compiler,
a broken toolchain) or a library cannot be loaded, :func:`load_predictor` falls back to
LightGBM and warns with :class:`CompiledModelUnavailableWarning`.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    "CompilationError",
    "CompiledModelUnavailableWarning",
    "CompiledPredictor",
    "NativePredictor",
    "Predictor",
    "compile_model",
    "load_predictor",
    "resolve_toolchain",
    "warn_compiled_unavailable",
]

logger = logging.getLogger(__name__)

_TREES_PER_UNIT = 50


class CompilationError(RuntimeError):
    """A model could not be compiled to a shared library (the message says why)."""


class CompiledModelUnavailableWarning(RuntimeWarning):
    """A compiled model was wanted but LightGBM is used instead."""


class Predictor(Protocol):
    """Scores a dense float64 feature matrix (n, d); ``kind`` says which engine does it."""

    kind: str
    n_features: int

    def predict(self, X: np.ndarray) -> np.ndarray:
        """One prediction per row, shape (n,)."""
        ...


def resolve_toolchain(configured: str = "") -> str:
    """The compiler command: ``configured`` when set, else ``$CC``, else ``gcc``."""
    return configured or os.environ.get("CC", "") or "gcc"


def compile_model(model_path: str | os.PathLike[str], lib_path: str | os.PathLike[str], *, toolchain: str = "",
                  quantize: bool = False, parallel_comp: int = 0, nthread: int = 1) -> Path:
    """Compile a LightGBM text model to a shared library.

    Parameters
    ----------
    model_path : path of a LightGBM text model
    lib_path : path of the library to write (``.so``)
    toolchain : str, default ""
        Compiler command (see :func:`resolve_toolchain`).
    quantize : bool, default False
        tl2cgen's ``quantize`` (compare integer bin indices instead of float thresholds).
    parallel_comp : int, default 0
        Translation units; 0 picks one per 50 trees.
    nthread : int, default 1
        Compiler processes run at once.

    Returns
    -------
    Path of the library.

    Raises
    ------
    FileNotFoundError
        When ``model_path`` does not exist.
    CompilationError
        When treelite cannot read the model or the compiler is missing or fails.
    """
    import tl2cgen
    import treelite

    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"model_path {model_path} not found")
    lib_path = Path(lib_path)
    compiler = resolve_toolchain(toolchain)
    try:
        model = treelite.frontend.load_lightgbm_model(str(model_path))
        units = parallel_comp or max(1, model.num_tree // _TREES_PER_UNIT)
        params: dict[str, Any] = {"parallel_comp": int(units)}
        if quantize:
            params["quantize"] = 1
        tl2cgen.export_lib(model, toolchain=compiler, libpath=str(lib_path), params=params, nthread=max(1, nthread))
    except (ValueError, OSError, RuntimeError, treelite.TreeliteError, tl2cgen.TL2cgenError) as exc:
        raise CompilationError(f"compiling {model_path.name} with toolchain {compiler!r} failed: {exc}") from exc
    logger.info("compiled %s to %s (%s, quantize=%s)", model_path.name, lib_path, compiler, quantize)
    return lib_path


class NativePredictor:
    """LightGBM's own prediction of a text model.

    Parameters
    ----------
    booster : lightgbm.Booster
    raw_score : bool
        Raw margins (the ranker) or transformed outputs (probabilities of a binary model).
    num_threads : int, default 1
    """

    kind = "lightgbm"

    def __init__(self, *, booster: Any, raw_score: bool, num_threads: int = 1) -> None:
        self.booster = booster
        self.raw_score = raw_score
        self.num_threads = num_threads
        self.n_features = int(booster.num_feature())

    @classmethod
    def load(cls, model_path: str | os.PathLike[str], *, raw_score: bool, num_threads: int = 1) -> NativePredictor:
        """Read a LightGBM text model."""
        import lightgbm as lgb

        return cls(booster=lgb.Booster(model_file=str(model_path)), raw_score=raw_score, num_threads=num_threads)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions for the rows of ``X`` (n, d), shape (n,)."""
        return np.asarray(self.booster.predict(X, raw_score=self.raw_score, num_threads=self.num_threads),
                          dtype=np.float64)


class CompiledPredictor:
    """Prediction through a tl2cgen shared library (build one with :meth:`load`).

    Parameters
    ----------
    predictor : tl2cgen.Predictor
    raw_score : bool
        Raw margins or transformed outputs, as :class:`NativePredictor`.
    lib_path : Path
        Where the library was loaded from (for messages).
    """

    kind = "compiled"

    def __init__(self, *, predictor: Any, raw_score: bool, lib_path: Path) -> None:
        self.predictor = predictor
        self.raw_score = raw_score
        self.lib_path = lib_path
        self.n_features = int(predictor.num_feature)

    @classmethod
    def load(cls, lib_path: str | os.PathLike[str], *, raw_score: bool, nthread: int = 1) -> CompiledPredictor:
        """Load a library written by :func:`compile_model`.

        The library is loaded from a copy named by its SHA-256 in a private folder of this
        process: ``dlopen`` returns the library already loaded under the same path, so a model
        compiled again to the same path (a second training in one process) would otherwise be
        scored by the old library's trees; this is how a compiled ranker once "differed from
        LightGBM" by 0.0349 in its own equality check.
        """
        import tl2cgen

        return cls(predictor=tl2cgen.Predictor(str(_private_copy(Path(lib_path))), nthread=nthread),
                   raw_score=raw_score, lib_path=Path(lib_path))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions for the rows of ``X`` (n, d), shape (n,)."""
        import tl2cgen

        out = self.predictor.predict(tl2cgen.DMatrix(X, dtype="float64"), pred_margin=self.raw_score)
        return np.asarray(out, dtype=np.float64).reshape(len(X))


def _private_copy(lib_path: Path) -> Path:
    """``lib_path`` copied to ``<private dir>/<sha256>.so`` (once per content), for ``dlopen``.

    The folder is made by :func:`tempfile.mkdtemp` (mode 0700) once per process and removed at
    exit, so no other user can plant a library under a name this process will load.
    """
    import hashlib
    import threading

    data = lib_path.read_bytes()
    copy = _lib_dir() / f"{hashlib.sha256(data).hexdigest()}{lib_path.suffix}"
    if not copy.exists():
        tmp = copy.with_name(f".{copy.name}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, copy)
    return copy


@functools.cache
def _lib_dir() -> Path:
    """This process's private folder of library copies (0700), removed at exit."""
    import atexit
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="feedrank-libs-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def load_predictor(model_path: str | os.PathLike[str], lib_path: str | os.PathLike[str] | None = None, *,
                   raw_score: bool, num_threads: int = 1) -> Predictor:
    """The compiled library when it loads and matches the model, else LightGBM with a warning.

    Parameters
    ----------
    model_path : LightGBM text model (always needed: the fallback and the reference)
    lib_path : compiled library, optional (None means LightGBM without a warning)
    raw_score : bool
    num_threads : int, default 1

    Returns
    -------
    Predictor

    Warns
    -----
    CompiledModelUnavailableWarning
        When ``lib_path`` is given but missing, unloadable, or built for another feature count.
    """
    native = NativePredictor.load(model_path, raw_score=raw_score, num_threads=num_threads)
    if lib_path is None:
        return native
    lib_path = Path(lib_path)
    reason = ""
    if not lib_path.is_file():
        reason = f"{lib_path} does not exist"
    else:
        try:
            compiled = CompiledPredictor.load(lib_path, raw_score=raw_score, nthread=num_threads)
        except Exception as exc:  # a library built elsewhere may fail in many ways; fall back on any
            reason = f"{lib_path} could not be loaded ({exc})"
        else:
            if compiled.n_features == native.n_features:
                return compiled
            reason = f"{lib_path} expects {compiled.n_features} features, the model {native.n_features}"
    warn_compiled_unavailable(reason)
    return native


def warn_compiled_unavailable(reason: str) -> None:
    """Warn (and log) that LightGBM scores instead of a compiled library, saying why."""
    message = f"compiled model unavailable, scoring with LightGBM instead: {reason}"
    warnings.warn(message, CompiledModelUnavailableWarning, stacklevel=3)
    logger.warning(message)
