"""feedrank evaluate: metrics, plots and report on scored simulator logs; MLflow; the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from experiments.config import SimulatorConfig
from experiments.evaluate import (
    LOGGED_DATA_CAVEAT,
    NO_SUPPORT,
    PLOT_FILES,
    EvaluationConfig,
    evaluate_scored,
    read_scored,
    summary_lines,
)
from experiments.simulator import MarketplaceSimulator, Requests
from experiments.simulator import behaviour as bh
from experiments.simulator.world import DEVICES
from infra.cli import main

# Ten simulated days; impressions of the first three are evaluated, so every one has its full
# 7-day purchase window inside the log (later purchases are cut off at the end of the period).
CONFIG = SimulatorConfig(users=1000, items=1500, sellers=80, categories=12, days=10, randomized_share=0.15, seed=21)
EVAL_DAYS = 3
GRADE = {"click": 1, "add_to_cart": 2, "purchase": 3}


def _read(root: Path, table: str) -> pd.DataFrame:
    return ds.dataset(root / table, format="parquet").to_table().to_pandas()


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """Logged impressions of a simulated marketplace with their labels, and the simulator."""
    sim = MarketplaceSimulator(CONFIG)
    root = tmp_path_factory.mktemp("eval") / "logs"
    sim.run(root, progress=False)
    imp, ev = _read(root, "impressions"), _read(root, "events")
    imp = imp[imp["ts"] < pd.Timestamp(CONFIG.start_date, tz="UTC") + pd.Timedelta(days=EVAL_DAYS)]
    imp = imp.reset_index(drop=True)
    ev = ev[ev["impression_id"].notna()]
    grade = ev.assign(g=ev["type"].map(GRADE)).groupby("impression_id")["g"].max()
    imp["label"] = imp["impression_id"].map(grade).fillna(0).astype(float).to_numpy()
    imp["purchased"] = (imp["label"] == 3).astype(int)
    imp["device_code"] = imp["device"].map({d: i for i, d in enumerate(DEVICES)}).to_numpy()
    imp["hour"] = imp["ts"].dt.hour.to_numpy()
    return sim, imp


def _scored(sim: MarketplaceSimulator, imp: pd.DataFrame, model: str) -> pd.DataFrame:
    """Scored evaluation data.

    The oracle scores by the true expected NDCG gain of an examined item,
    ``E[2**label - 1] = a [(1 - q_c) 1 + q_c (1 - q_b) 3 + q_c q_b 7]`` (label 1 click, 2 cart,
    3 purchase), with the true purchase probability; popularity by the incumbent's score, with
    the overall purchase rate (calibrated in the large, uninformative).
    """
    w = sim.world
    users, items, pos = imp["user_id"].to_numpy(), imp["item_id"].to_numpy(), imp["position"].to_numpy()
    if model == "oracle":
        a = bh.attractiveness(w, users, items, imp["device_code"].to_numpy(), imp["hour"].to_numpy(), sim.params)
        qc, qb = bh.cart_given_click(w, users, items, sim.params), bh.buy_given_cart(w, users, items, sim.params)
        score = a * ((1 - qc) + 3 * qc * (1 - qb) + 7 * qc * qb)
        p_purchase = a * qc * qb  # given examination
    else:
        rate = imp["purchased"].sum() / sim.examination(pos).sum()  # calibrated in the large
        score, p_purchase = w.item_log_popularity[items], np.full(len(imp), rate)
    return pd.DataFrame({
        "request_id": imp["request_id"], "item_id": imp["item_id"], "position": imp["position"].astype("int64"),
        "label": imp["label"], "score": score, "p_purchase": p_purchase, "purchased": imp["purchased"],
        "price": w.item_price[items], "margin_rate": w.item_margin[items], "propensity": sim.examination(pos),
        "pscore": imp["propensity"], "is_new_seller": w.item_is_new_seller[items]})


@pytest.fixture(scope="module")
def reports(logged, tmp_path_factory):
    sim, imp = logged
    out = tmp_path_factory.mktemp("reports")
    return {m: evaluate_scored(_scored(sim, imp, m), out / m, model_version=m) for m in ("oracle", "popularity")}


def _true_value_of_reranking(sim: MarketplaceSimulator, imp: pd.DataFrame, scored: pd.DataFrame) -> float:
    """Exact expected purchase value per slot when the model re-orders each randomized request's items."""
    rand = imp[scored["pscore"].notna().to_numpy()].assign(score=scored.loc[scored["pscore"].notna(), "score"].values)
    rand = rand.sort_values(["request_id", "position"])
    reqs = rand.groupby("request_id", sort=True).agg(user_id=("user_id", "first"), ts=("ts", "first"),
                                                     device=("device_code", "first"))
    width = int(rand["position"].max()) + 1
    served = np.full((len(reqs), width), -1, dtype=np.int64)
    row = np.searchsorted(reqs.index.to_numpy(), rand["request_id"].to_numpy())
    for r, group in rand.assign(row=row).groupby("row"):
        slots = np.sort(group["position"].to_numpy())
        served[r, slots] = group.sort_values(["score", "position"], ascending=[False, True])["item_id"].to_numpy()
    requests = Requests(request_id=reqs.index.to_numpy(), user_id=reqs["user_id"].to_numpy(),
                        ts_us=((reqs["ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)).to_numpy(),
                        device=reqs["device"].to_numpy().astype(np.int8))
    expected = sim.expected_outcome(requests, served)
    value = expected.purchase * np.where(served >= 0, sim.world.item_price[np.maximum(served, 0)], 0.0)
    return float(value.sum() / len(rand))


def test_report_folder_holds_markdown_plots_and_metrics(reports):
    rep = reports["oracle"]
    out = Path(rep.out_dir)
    for name in ("report.md", "metrics.json", *PLOT_FILES):
        assert (out / name).is_file() and (out / name).stat().st_size > 500, name
    assert all(Path(f).is_file() for f in rep.files)
    text = (out / "report.md").read_text()
    assert "`oracle`" in text and "![NDCG by K](ndcg_by_k.png)" in text and "| dr |" in text and "| dm |" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["meta"]["model_version"] == "oracle" and metrics["meta"]["rows"] == rep.metrics["meta"]["rows"]
    assert set(metrics["ranking"]["model"]["ips_ndcg"]) == {"1", "3", "5", "10", "20"}
    flat = rep.flat_metrics()
    assert "ranking_model_ndcg_10" in flat and "off_policy_dr_value" in flat and "calibration_ece" in flat
    assert all(np.isfinite(v) for v in flat.values())


def test_the_oracle_beats_popularity_and_the_logged_order(reports):
    oracle, pop = reports["oracle"].metrics, reports["popularity"].metrics
    for key in ("ndcg", "ips_ndcg"):
        assert oracle["ranking"]["model"][key]["10"] > pop["ranking"]["model"][key]["10"]
    # Logged labels favour the logged order (top slots were examined more); IPS weighting takes
    # back more of the logged order's NDCG than of the model's.
    gap = {o: oracle["ranking"][o]["ndcg"]["10"] - oracle["ranking"][o]["ips_ndcg"]["10"] for o in ("model", "logged")}
    assert gap["logged"] > gap["model"] + 0.01, gap
    assert oracle["calibration"]["auc_p_purchase"] > 0.75 and oracle["calibration"]["auc_score"] > 0.75
    assert oracle["calibration"]["log_loss"] < pop["calibration"]["log_loss"]
    # The oracle's p_purchase is the truth: calibrated, and its predicted GMV matches what was bought.
    assert oracle["calibration"]["ece"] < 0.01
    cal = oracle["calibration"]
    assert cal["predicted_gmv_per_mille"] == pytest.approx(cal["observed_gmv_per_mille"], rel=0.2)
    for rep in (oracle, pop):
        for order in ("model", "logged"):
            assert 0 <= rep["exposure"][order]["gini"] < 1 and 0 <= rep["exposure"][order]["new_seller_share"] < 1


def test_off_policy_interval_covers_the_true_value_of_the_models_ranking(logged, reports):
    sim, imp = logged
    ope = reports["oracle"].metrics["off_policy"]
    scored = _scored(sim, imp, "oracle")
    truth = _true_value_of_reranking(sim, imp, scored)
    assert ope["rows"] == int(scored["pscore"].notna().sum()) and ope["rows"] > 3000
    # The oracle's reward model is the truth, so the direct method is the exact value: this checks
    # the whole mapping of candidates to slots.
    assert ope["dm"]["value"] == pytest.approx(truth, rel=1e-9)
    for name in ("ipw", "snipw", "dr"):
        assert ope[name]["ci_low"] < truth < ope[name]["ci_high"], (name, ope[name], truth)
    # Purchases are rare and a deterministic re-ranking matches the logged slot 1 time in 20, so
    # the importance-weighted intervals are wide; the model's value is still above the shuffle's.
    assert ope["dm"]["ci_low"] > ope["logged"]["ci_high"]


def test_off_policy_intervals_cover_the_truth_for_a_misspecified_model_too(logged, reports):
    """Popularity's reward model (a constant purchase rate) is wrong; IPS and DR do not need it right."""
    sim, imp = logged
    ope = reports["popularity"].metrics["off_policy"]
    truth = _true_value_of_reranking(sim, imp, _scored(sim, imp, "popularity"))
    assert abs(ope["dm"]["value"] - truth) > 0.05 * truth  # the direct method is off
    for name in ("ipw", "snipw", "dr"):
        assert ope[name]["ci_low"] < truth < ope[name]["ci_high"], (name, ope[name], truth)


def test_without_randomized_rows_the_report_says_so(logged, tmp_path):
    sim, imp = logged
    scored = _scored(sim, imp, "oracle").drop(columns=["pscore", "margin_rate"])
    rep = evaluate_scored(scored, tmp_path / "r", model_version="no-pscore",
                          config=EvaluationConfig(k_values=(5, 10)))
    assert rep.metrics["off_policy"]["rows"] == 0
    assert "off-policy estimates skipped" in (tmp_path / "r" / "report.md").read_text()
    assert (tmp_path / "r" / "off_policy.png").is_file()
    assert "predicted_margin_per_mille" not in rep.metrics["calibration"]


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"request_id": [1, 1, 2, 2], "item_id": [10, 11, 10, 12], "position": [0, 1, 0, 1],
                         "label": [1.0, 0.0, 0.0, 3.0], "score": [0.2, 0.1, 0.5, 0.4],
                         "p_purchase": [0.1, 0.05, 0.2, 0.3], "purchased": [0, 0, 0, 1],
                         "price": [10.0, 20.0, 10.0, 5.0], "propensity": [1.0, 0.5, 1.0, 0.5],
                         "is_new_seller": [False, True, False, False]})


def test_an_off_policy_estimate_without_support_is_explained_not_zero(tmp_path):
    # Every request is randomized (pscore given) and the model reverses each logged order, so its
    # order holds no (item, slot) of the logs: IPS and SNIPS are undefined, DR is its reward model.
    scored = _frame().assign(score=[0.1, 0.2, 0.4, 0.5], pscore=0.5)
    rep = evaluate_scored(scored, tmp_path / "r", model_version="reversed", config=EvaluationConfig(k_values=(1, 2)))
    ope = rep.metrics["off_policy"]
    assert ope["support"]["rows"] == 0 and ope["note"] == NO_SUPPORT
    for name in ("ipw", "snipw"):
        assert ope[name]["value"] is None and ope[name]["ci_low"] is None and ope[name]["note"] == NO_SUPPORT
    assert ope["dr"]["value"] == pytest.approx(ope["dm"]["value"]) and "direct method" in ope["dr"]["note"]

    def refuse(constant: str) -> None:
        raise AssertionError(f"metrics.json holds {constant}")

    stored = json.loads((tmp_path / "r" / "metrics.json").read_text(), parse_constant=refuse)
    assert stored["off_policy"]["ipw"]["value"] is None
    assert "off_policy_ipw_value" not in rep.flat_metrics()
    text = (tmp_path / "r" / "report.md").read_text()
    assert "| ipw | undefined: no support | - |" in text and NO_SUPPORT in text and LOGGED_DATA_CAVEAT in text
    assert " 0 [0, 0]" not in text
    lines = summary_lines(rep.metrics)
    assert lines[1] == f"caveat: {LOGGED_DATA_CAVEAT}"
    assert any(line.strip().startswith("model, IPS: undefined (no support") for line in lines), lines
    assert any("0 (0.0%) supporting the model's order" in line for line in lines), lines


@pytest.mark.parametrize(("change", "error", "match"), [
    (lambda f: f.drop(columns=["score"]), ValueError, "missing \\['score'\\]"),
    (lambda f: f.assign(p_purchase=[0.1, 1.5, 0.2, 0.3]), ValueError, "p_purchase must be in \\[0, 1\\]"),
    (lambda f: f.assign(propensity=[1.0, 0.0, 1.0, 0.5]), ValueError, "propensity must be in \\(0, 1\\]"),
    (lambda f: f.assign(price=[10.0, -1.0, 10.0, 5.0]), ValueError, "price must be > 0"),
    (lambda f: f.assign(purchased=[0, 2, 0, 1]), ValueError, "purchased must be binary"),
    (lambda f: f.assign(position=[0, 0, 0, 1]), ValueError, "request_id, position"),
    (lambda f: f.assign(position=[0.0, 1.0, 0.0, 1.0]), TypeError, "position must hold integers"),
    (lambda f: f.assign(label=[1.0, np.nan, 0.0, 3.0]), ValueError, "label must have no missing values"),
    (lambda f: f.assign(pscore=[0.5, 0.0, None, None]), ValueError, "pscore must be in \\(0, 1\\]"),
    (lambda f: f.iloc[:0], ValueError, "at least one row"),
])
def test_invalid_scored_data_names_the_column(tmp_path, change, error, match):
    with pytest.raises(error, match=match):
        evaluate_scored(change(_frame()), tmp_path / "r")


def test_evaluation_config_is_checked():
    with pytest.raises(ValueError, match="k_values"):
        EvaluationConfig(k_values=(0, 5))
    with pytest.raises(ValueError, match="calibration_strategy"):
        EvaluationConfig(calibration_strategy="equal")


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """A temporary MLflow tracking store (SQLite) with an experiment whose artifacts stay in the temp folder."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("evaluate-test", artifact_location=(root / "artifacts").as_uri())
    yield uri, experiment
    mlflow.set_tracking_uri(previous)


def test_report_is_logged_to_an_mlflow_run(logged, tmp_path, mlflow_store):
    import mlflow

    uri, experiment = mlflow_store
    sim, imp = logged
    with mlflow.start_run(experiment_id=experiment) as run:
        rep = evaluate_scored(_scored(sim, imp, "popularity"), tmp_path / "r", model_version="pop-v1", run=run)
    client = mlflow.MlflowClient(tracking_uri=uri)
    logged_run = client.get_run(run.info.run_id)
    assert logged_run.data.metrics["eval_ranking_model_ndcg_10"] == pytest.approx(
        rep.metrics["ranking"]["model"]["ndcg"]["10"])
    assert len([k for k in logged_run.data.metrics if k.startswith("eval_")]) == len(rep.flat_metrics())
    assert logged_run.data.tags["evaluation.model_version"] == "pop-v1"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/report.md", "evaluation/metrics.json", "evaluation/ndcg_by_k.png"} <= artifacts


def test_cli_evaluate_writes_the_report_and_logs_to_a_run(logged, tmp_path, mlflow_store, capsys):
    import mlflow

    uri, experiment = mlflow_store
    sim, imp = logged
    scored = tmp_path / "oracle-v2.parquet"
    _scored(sim, imp, "oracle").to_parquet(scored)
    run_id = mlflow.MlflowClient(tracking_uri=uri).create_run(experiment).info.run_id
    rc = main(["evaluate", str(scored), "--out", str(tmp_path / "report"), "--k", "5", "10",
               "--mlflow-run-id", run_id, "--tracking-uri", uri])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "evaluated oracle-v2" in out and "NDCG@10" in out and "off-policy GMV per slot" in out
    assert f"caveat: {LOGGED_DATA_CAVEAT}" in out
    assert (tmp_path / "report" / "report.md").is_file()
    assert "eval_ranking_model_ndcg_5" in mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics

    csv = tmp_path / "bad.csv"
    _frame().drop(columns=["propensity"]).to_csv(csv, index=False)
    assert main(["evaluate", str(csv), "--out", str(tmp_path / "bad")]) == 2
    assert "missing ['propensity']" in capsys.readouterr().err
    assert len(read_scored(csv)) == 4


def test_a_zero_estimate_from_supporting_rows_without_a_purchase_says_so():
    from experiments.evaluate import _estimate_text

    text = _estimate_text({"value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "support": 203})
    assert "no purchase among the 203 supporting impressions" in text
    assert _estimate_text({"value": 0.5, "ci_low": 0.1, "ci_high": 0.9, "support": 203}).endswith("]")
