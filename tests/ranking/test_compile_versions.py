"""The compiler (treelite) and the runtime that tl2cgen embeds are the same Treelite version."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from ranking.compile import CompilationError, compile_model


def test_compiling_prints_no_treelite_version_warning(tmp_path, capfd):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 7}, lgb.Dataset(x, x[:, 0] > 0), 5)
    booster.save_model(str(tmp_path / "model.txt"))
    try:
        compile_model(tmp_path / "model.txt", tmp_path / "model.so")
    except CompilationError as exc:  # no C compiler on this machine: nothing to check
        pytest.skip(str(exc))
    err = capfd.readouterr().err
    assert "newer Treelite version" not in err, err
