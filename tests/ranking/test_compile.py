"""Compiled models predict what LightGBM predicts; without a compiler everything falls back to LightGBM."""

from __future__ import annotations

import shutil

import lightgbm as lgb
import numpy as np
import pytest

from ranking.compile import (
    CompilationError,
    CompiledModelUnavailableWarning,
    CompiledPredictor,
    NativePredictor,
    compile_model,
    load_predictor,
    resolve_toolchain,
)
from ranking.ranker import LambdaRankObjective

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A LambdaMART ranker (custom objective, raw scores) and a binary model, as LightGBM text files."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 12))
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values take LightGBM's default branches
    y_rank = np.clip((X[:, 0] + rng.normal(size=3000)).round(), 0, 3)
    sizes = np.full(150, 20)
    y_bin = (np.nan_to_num(X[:, 1]) + rng.normal(size=3000) > 1.5).astype(float)
    params = {"num_leaves": 15, "verbosity": -1, "num_threads": 1}
    root = tmp_path_factory.mktemp("compile")
    ranker = lgb.train({**params, "objective": LambdaRankObjective(y_rank, sizes)},
                       lgb.Dataset(X, y_rank, group=sizes), 30)
    purchase = lgb.train({**params, "objective": "binary"}, lgb.Dataset(X, y_bin), 30)
    ranker.save_model(str(root / "ranker.txt"))
    purchase.save_model(str(root / "purchase.txt"))
    return root, X


def test_a_model_compiled_again_to_the_same_path_is_the_one_loaded(models, tmp_path):
    """dlopen hands back a library already loaded from the same path: the second model compiled to
    ``ranker.so`` in one process was scored by the first one's trees (the 0.0349 "difference")."""
    root, X = models
    lib = tmp_path / "ranker.so"
    loaded = []  # the first library stays loaded (a serving pipeline, a scorer) while the second comes
    for name in ("ranker", "purchase"):  # two different models, one library path, one process
        lib.unlink(missing_ok=True)
        compile_model(root / f"{name}.txt", lib)
        loaded.append(CompiledPredictor.load(lib, raw_score=True))
        ours = loaded[-1].predict(X)
        assert np.max(np.abs(ours - NativePredictor.load(root / f"{name}.txt", raw_score=True).predict(X))) <= TOLERANCE


@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("name, raw", [("ranker", True), ("purchase", False)])
def test_compiled_predictions_equal_lightgbm(models, name, raw, quantize, tmp_path):
    root, X = models
    lib = compile_model(root / f"{name}.txt", tmp_path / f"{name}.so", quantize=quantize)
    compiled = CompiledPredictor.load(lib, raw_score=raw)
    native = NativePredictor.load(root / f"{name}.txt", raw_score=raw)
    ours, theirs = compiled.predict(X), native.predict(X)
    assert ours.shape == theirs.shape == (len(X),)
    assert np.max(np.abs(ours - theirs)) <= TOLERANCE
    if not raw:
        assert 0 < ours.min() and ours.max() < 1  # probabilities, not margins
    loaded = load_predictor(root / f"{name}.txt", lib, raw_score=raw)
    assert loaded.kind == "compiled"


def test_a_missing_compiler_is_a_compilation_error(models, tmp_path, monkeypatch):
    root, _ = models
    monkeypatch.setenv("CC", "/nonexistent/bin/cc")
    assert resolve_toolchain("") == "/nonexistent/bin/cc"
    assert resolve_toolchain("clang") == "clang"
    with pytest.raises(CompilationError, match="/nonexistent/bin/cc"):
        compile_model(root / "ranker.txt", tmp_path / "ranker.so")
    assert not (tmp_path / "ranker.so").exists()


def test_missing_model_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_path"):
        compile_model(tmp_path / "nope.txt", tmp_path / "nope.so")


@pytest.mark.parametrize("make_lib, match", [
    (lambda root, tmp: tmp / "absent.so", "does not exist"),
    (lambda root, tmp: (tmp / "garbage.so").write_bytes(b"not a library") and tmp / "garbage.so", "could not be loaded"),
])
def test_load_predictor_falls_back_with_a_warning(models, tmp_path, make_lib, match):
    root, X = models
    lib = make_lib(root, tmp_path)
    with pytest.warns(CompiledModelUnavailableWarning, match=match):
        predictor = load_predictor(root / "purchase.txt", lib, raw_score=False)
    assert predictor.kind == "lightgbm"
    np.testing.assert_allclose(predictor.predict(X), lgb.Booster(model_file=str(root / "purchase.txt")).predict(X))


def test_load_predictor_refuses_a_library_of_another_model(models, tmp_path):
    root, X = models
    other = lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1},
                      lgb.Dataset(X[:, :5], (np.nan_to_num(X[:, 0]) > 0).astype(float)), 5)
    other.save_model(str(tmp_path / "other.txt"))
    lib = compile_model(tmp_path / "other.txt", tmp_path / "other.so")
    with pytest.warns(CompiledModelUnavailableWarning, match="expects 5 features"):
        predictor = load_predictor(root / "purchase.txt", lib, raw_score=False)
    assert predictor.kind == "lightgbm"
