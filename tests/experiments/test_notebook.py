"""experiments/ab_analysis.ipynb runs headless, start to end, writing only to a temp folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from experiments.ab_simulation import ABSimulationConfig, run_ab_simulation
from experiments.config import SimulatorConfig
from experiments.policies import HistoryAffinityPolicy, PopularityPolicy
from experiments.simulator import MarketplaceSimulator

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "experiments" / "ab_analysis.ipynb"


def _execute(nb: nbformat.NotebookNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Run ``nb`` with the venv's kernel in ``tmp_path``; every file the kernel writes lands there."""
    for var, sub in (("FEEDRANK_NOTEBOOK_DIR", "work"), ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "mpl"),
                     ("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_DATA_DIR", "jupyter")):
        (tmp_path / sub).mkdir(exist_ok=True)
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports this checkout, installed or not
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(nb, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    return nb


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def _summary(nb: nbformat.NotebookNode) -> dict:
    cell = next(c for c in nb.cells if "summary" in c.metadata.get("tags", []))
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    line = next(s for s in text.splitlines() if s.startswith("SUMMARY "))
    return json.loads(line[len("SUMMARY "):])


def test_notebook_simulates_and_analyses_an_ab_test_without_errors(tmp_path, monkeypatch):
    nb = _execute(nbformat.read(NOTEBOOK, as_version=4), tmp_path, monkeypatch)
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 8  # data, SRM, A/A, forest, CUPED, power, guardrails, sequential
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    for key in ("SRM: none detected", "pre-period GMV per user", "variance reduction", "MDE at",
                "clustered / naive standard error", "decision:"):
        assert key in text, key
    summary = _summary(nb)
    assert summary["srm_p_value"] > 0.001 and summary["cuped_variance_reduction"] > 0
    assert summary["true_relative_lift"] > 0
    assert set(summary["covered"]) == {"gmv_per_user (welch)", "gmv_per_user (cuped)", "gmv_per_request (delta)",
                                       "gmv_per_request (clustered ols)", "gmv_per_request (naive ols)"}
    # The A/A section shows what clustering is for: naive request-level errors reject far too often.
    fpr = summary["aa_false_positive_rate"]
    assert fpr["requests, clustered SE"] < 0.1 < fpr["requests, naive SE"] and fpr["per-user Welch"] < 0.1
    assert summary["clustered_over_naive_se"] > 1.1
    assert set(summary["guardrails_passed"]) == {"requests_per_user", "clicks_per_request", "purchases_per_request",
                                                 "gmv_per_request"}
    assert summary["sequential_looks"] >= 1
    # The simulation went to the temp folder given by the environment, nowhere else.
    assert (tmp_path / "work" / "ab-logs" / "_ab" / "experiment.json").is_file()


def test_notebook_reads_other_logs_given_an_arm_column_and_a_start(tmp_path, monkeypatch):
    """The parameter cell points at logs without the simulator's metadata (so without truth)."""
    sim = MarketplaceSimulator(SimulatorConfig(users=2500, items=1000, sellers=60, categories=12, days=6, seed=3))
    logs = tmp_path / "their-logs"
    result = run_ab_simulation(sim, PopularityPolicy.from_simulator(sim), HistoryAffinityPolicy.from_history, logs,
                               config=ABSimulationConfig(pre_days=2, experiment_days=4), progress=False)
    shutil.rmtree(logs / "_ab")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source += (f"\nLOG_DIR = {str(logs)!r}\nEXPERIMENT_START = {result.experiment_start.isoformat()!r}\n"
                      f"EXPERIMENT_END = {result.experiment_end.isoformat()!r}\n")
    nb = _execute(nb, tmp_path, monkeypatch)
    assert not [o for o in _outputs(nb) if o.output_type == "error"]
    summary = _summary(nb)
    assert summary["true_relative_lift"] is None and summary["covered"] is None
    assert not (tmp_path / "work" / "ab-logs").exists()  # nothing simulated this time
