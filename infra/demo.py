"""``make demo``: the whole platform on a simulated marketplace, end to end.

simulate -> train (ETL, Feast, retrieval, ranking, evaluation) -> register -> promote the
first champion -> serve over gRPC -> rank feeds for a few users (printed as tables) ->
offline evaluation summary -> a short canary: a retrained challenger starts at the first
stage and the served arms show the split -> the monitoring report of what was served (drift
against training, freshness). Ends by saying where everything is.

    python -m infra.demo [--config infra/demo.yaml]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from infra.config import load_config

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _cli(config_path: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "infra.cli", "--config", str(config_path), *args], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEMO_CONFIG))
    parser.add_argument("--port", type=int, default=50761)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config_path = Path(args.config)
    config = load_config(config_path)
    data = Path(config.infra.data_dir)
    start = time.perf_counter()
    shutil.rmtree(data, ignore_errors=True)

    _say("1/6 simulate a marketplace")
    _cli(config_path, "simulate", "--out", str(data / "logs"))

    _say("2/6 train: ETL -> Feast -> two-tower + FAISS -> LambdaMART + calibrated purchase model -> registry")
    _cli(config_path, "train")
    _cli(config_path, "rollout", "start", "--initial")  # the very first model becomes champion

    _say("3/6 serve over gRPC and rank feeds for a few users")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "infra.cli", "--config", str(config_path), "serve",
                               "--port", str(args.port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    try:
        _wait_for_health(args.port, server)
        _cli(config_path, "rank", "--address", f"127.0.0.1:{args.port}", "--user", "3", "--user", "42",
             "--user", "999999", "--k", "10", "--device", "mobile", "--hour", "20")
        print("\nwhy these items (TreeSHAP contributions to the ranker's score and the purchase log-odds):")
        _cli(config_path, "rank", "--address", f"127.0.0.1:{args.port}", "--user", "3", "--k", "3",
             "--device", "mobile", "--hour", "20", "--explain", "--explain-top", "4")

        _say("4/6 the bundle on the simulator's truth, then the offline evaluation (held-out slice)")
        _print_truth(config_path, data)
        _print_evaluation(json.loads((data / "train" / "evaluation" / "metrics.json").read_text()))

        _say("5/6 a short canary: retrain the ranker as a challenger and start the rollout")
        state_file = data / "train" / "train_state.json"
        state = json.loads(state_file.read_text())
        for step in ("ranking", "snapshots", "evaluate", "register"):
            state["completed"].pop(step, None)
        state_file.write_text(json.dumps(state))
        os.environ["FEEDRANK_RANKING__SEED"] = "1"  # a different ranker on the same data
        try:
            _cli(config_path, "train")
        finally:
            os.environ.pop("FEEDRANK_RANKING__SEED")
        _cli(config_path, "rollout", "start", "--skip-offline-gate", "demo: same data, retrained ranker")
        _cli(config_path, "rollout", "status")
        from serving.client import FeedClient

        with FeedClient(f"127.0.0.1:{args.port}") as client:
            client.reload()
            arms = [client.rank(u, k=10).arm for u in range(400)]
        print(f"after reload, 400 users: {arms.count('challenger')} on the challenger, "
              f"{arms.count('champion')} on the champion")
    finally:
        server.terminate()
        server.wait(timeout=30)

    _say("monitoring: drift of the served features against training, freshness (feedrank monitor report)")
    _cli(config_path, "monitor", "report", "--out", str(data / "monitor"))

    _say(f"6/6 done in {time.perf_counter() - start:.0f} s")
    print(f"logs:                 {data / 'logs'}")
    print(f"features (ETL, Feast): {data / 'train' / 'features'}")
    print(f"bundle:               {data / 'train' / 'bundle'}")
    print(f"evaluation report:    {data / 'train' / 'evaluation' / 'report.md'} (plots beside it)")
    print(f"truth evaluation:     {data / 'train' / 'evaluation' / 'truth.json'} and truth_waterfall.png")
    print(f"metrics by slice:     {data / 'train' / 'evaluation' / 'slices.md'} (device, new buyers, new-seller "
          "items, categories, price bands; slices.png)")
    print(f"ranking plots:        {data / 'train' / 'bundle' / 'ranking'}/*.png")
    print(f"served impressions:   {data / 'serving'} (served feature sample in served_features/)")
    print(f"monitoring report:    {data / 'monitor' / 'report.md'} (and report.html, plots beside it)")
    print(f"MLflow UI:            make mlflow-ui  (embedded registry in {data / 'mlflow'})")
    return 0


def _print_truth(config_path: Path, data: Path) -> None:
    """Expected GMV per request of the bundle and of the baselines, on requests of the day after the logs."""
    from experiments.simulator import MarketplaceSimulator
    from experiments.truth import judge_bundle, plot_waterfall, truth_table

    sim = MarketplaceSimulator.from_logs(data / "logs")
    judged = judge_bundle(sim, data / "train" / "bundle", data / "logs", day=sim.config.days, n_requests=1000)
    gmv = judged["gmv_per_request"]
    notes = {"full_system": "the bundle as served (re-ranking, exploration)",
             "stage_model": "the bundle's scores, no re-ranking",
             "logged_policy": "the incumbent that wrote the logs (noisy popularity)",
             "popularity": "the incumbent without noise", "popularity_logs": "popularity from logged counts",
             "category_affinity": "no-ML heuristic: category affinity x popularity",
             "oracle": "true best: the headroom", "stage_retrieval_ceiling": "true best of the retrieved candidates"}
    shown = {k: v for k, v in gmv.items() if k in notes}
    print(f"expected GMV per request on {judged['requests']:,} requests of day {judged['day']} (after the logs), "
          "exact under the simulator's buyer model:")
    print(truth_table(shown, baseline="popularity", labels=notes, unit="GMV/request"))
    diag = judged["diagnostics"]
    print(f"model vs logged policy: {gmv['full_system'] / gmv['logged_policy']:.2f}x; Spearman(score, true value) "
          f"within candidates {diag['spearman']['model']:.2f}; served P / true P {diag['served_p_over_true_p']:.2f}")
    figure = plot_waterfall(gmv, data / "train" / "evaluation" / "truth_waterfall.png",
                            baselines=("logged_policy", "popularity", "category_affinity"))
    (data / "train" / "evaluation" / "truth.json").write_text(json.dumps(judged, indent=2))
    print(f"truth figures: {figure.parent / 'truth.json'}; where the value goes: {figure}")


def _print_evaluation(m: dict) -> None:
    """The headline figures of experiments.evaluate's metrics.json, each saying what it means."""
    from experiments.evaluate import summary_lines

    exp = m["exposure"]
    print(f"held-out slice: {m['meta']['rows']:,} impressions in {m['meta']['requests']:,} requests")
    for line in summary_lines(m)[1:]:
        print(line)
    print("exposure:", json.dumps({k: exp[k] for k in ("model", "logged")}, default=str))


def _wait_for_health(port: int, server: subprocess.Popen, timeout: float = 120.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with code {server.returncode}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.5)
    raise TimeoutError(f"the server did not become healthy within {timeout:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
