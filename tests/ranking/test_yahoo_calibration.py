"""Real data (the Yahoo LTR sample in ../shared/data): calibration chosen by held-out log loss never hurts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "yahoo_ltr"
pytestmark = pytest.mark.skipif(not (DATA / "rank.train").is_file(), reason="../shared/data/yahoo_ltr is absent")


@pytest.mark.parametrize("threshold", [2, 3])
def test_the_chosen_calibration_is_never_worse_than_none_on_rank_test(threshold):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bench_yahoo_calibration import check

    got = check(DATA, threshold, seed=0, boot=50)
    v = got["variants"]
    assert v["auto"]["log_loss"] <= v["none"]["log_loss"] + 1e-12, got
    assert got["auto_choice"] in ("isotonic", "platt", "none")
    # isotonic on a few hundred calibration rows overfits: the automatic choice avoids it here
    assert v["isotonic"]["log_loss"] > v["auto"]["log_loss"]
