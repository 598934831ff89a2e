"""The canary rollout controller against a real embedded MLflow registry.

The logs are synthetic traffic generated with known effects (the challenger as good, worse on
GMV, slower, failing more), with users split by serving's own routing hash: inputs to the
statistics, not stand-ins for a component.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from infra.canary import OfflineGateInput, evaluate_stage, offline_gate, p95_latency_test
from infra.registry import FeedRegistry
from infra.release_config import RegistryConfig, RolloutConfig
from infra.rollout import (
    NoActiveRolloutError,
    NoChampionError,
    OfflineGateRequiredError,
    RolloutController,
    RolloutInProgressError,
)
from infra.rollout_state import RolloutStateError, StateStore, current_rollout
from infra.stage_logs import REQUEST_METRICS_SCHEMA, StageLogs
from serving.routing import arm_for

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

CONFIG = RolloutConfig(stages=(0.05, 0.25, 0.5, 1.0), looks_per_stage=1, min_users_per_arm=100,
                       min_requests_per_arm=300, warmup_seconds=0.0, gmv_margin=0.25, ctr_margin=0.2,
                       latency_p95_margin=0.2, error_rate_margin=0.01, n_bootstrap=200, poll_seconds=600.0)


class Clock:
    """Controllable UTC time: ``sleep`` moves it forward."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def synthetic_logs(*, start: datetime, share: float, salt: str, seed: int, n_users: int = 10_000,
                   hours: float = 1.0, gmv_factor: float = 1.0, ctr_factor: float = 1.0,
                   latency_factor: float = 1.0, challenger_error_rate: float = 0.002,
                   event_delay: timedelta = timedelta(seconds=20)) -> StageLogs:
    """One stage of traffic: users split by ``arm_for``; the challenger differs by the given factors."""
    rng = np.random.default_rng(seed)
    users = np.arange(n_users, dtype=np.int64)
    arms = np.array([arm_for(int(u), salt, share) for u in users])
    taste = rng.gamma(4.0, 0.25, n_users)  # per-user propensity: requests of one user are correlated
    n_req = rng.poisson(2.0, n_users) + 1
    req_user, req_arm = np.repeat(users, n_req), np.repeat(arms, n_req)
    n = req_user.size
    challenger = req_arm == "challenger"
    ts = (pd.Timestamp(start) + pd.to_timedelta(rng.uniform(0.0, hours * 3600.0, n), unit="s")).floor("us")
    latency = rng.lognormal(np.log(8.0), 0.35, n) * np.where(challenger, latency_factor, 1.0)
    error = rng.random(n) < np.where(challenger, challenger_error_rate, 0.002)
    keys = np.array([f"s{seed}-r{i}" for i in range(n)])
    requests = pd.DataFrame({"request_key": keys, "ts": ts, "user_id": req_user, "arm": req_arm,
                             "model_version": np.where(challenger, "2", "1"), "latency_ms": latency,
                             "error": error, "status_code": np.where(error, "INTERNAL", "OK")})

    feed = 4
    ok = ~error
    imp_req = np.repeat(np.flatnonzero(ok), feed)
    m = imp_req.size
    impressions = pd.DataFrame({"impression_id": np.arange(m, dtype=np.int64) + seed * 10_000_000,
                                "ts": ts[imp_req], "user_id": req_user[imp_req], "arm": req_arm[imp_req],
                                "request_key": keys[imp_req]})
    imp_ch = challenger[imp_req]
    imp_taste = taste[req_user[imp_req]]
    clicked = rng.random(m) < 0.2 * imp_taste * np.where(imp_ch, ctr_factor, 1.0)
    bought = rng.random(m) < 0.15 * imp_taste * np.where(imp_ch, gmv_factor, 1.0)
    events = pd.concat([
        pd.DataFrame({"ts": impressions["ts"][clicked] + event_delay, "type": "click",
                      "impression_id": impressions["impression_id"][clicked], "quantity": 1,
                      "price_paid": np.nan}),
        pd.DataFrame({"ts": impressions["ts"][bought] + 3 * event_delay, "type": "purchase",
                      "impression_id": impressions["impression_id"][bought], "quantity": 1,
                      "price_paid": rng.lognormal(np.log(40.0), 0.3, int(bought.sum()))}),
    ], ignore_index=True)
    return StageLogs(impressions=impressions, events=events, requests=requests)


def traffic(controller: RolloutController, clock: Clock, **effects: Any) -> Callable[[], StageLogs]:
    """A logs provider: an hour of traffic for the current stage, the clock moved past it."""

    def provide() -> StageLogs:
        state = controller.status()
        assert state is not None
        start = datetime.fromisoformat(state.stage_started_at)
        clock.now = max(clock.now, start + timedelta(hours=1, seconds=1))
        return synthetic_logs(start=start, share=state.challenger_share, salt=state.salt,
                              seed=10 * len(state.history) + state.looks_done, **effects)

    return provide


def gate_data(*, challenger_best: bool, n: int = 3000, seed: int = 0) -> OfflineGateInput:
    """Uniform-random logging over 8 items x 2 slots; item ``a`` earns ``2a`` GMV on average."""
    rng = np.random.default_rng(seed)
    n_actions, n_positions = 8, 2
    mu = 2.0 * np.arange(n_actions)
    action = rng.integers(0, n_actions, n)
    reward = mu[action] * rng.exponential(1.0, n)

    def policy(item: int) -> np.ndarray:
        dist = np.full((n, n_actions, n_positions), 0.1 / (n_actions - 1))
        dist[:, item, :] = 0.9
        return dist

    q = np.broadcast_to(mu[None, :, None], (n, n_actions, n_positions)).copy()
    return OfflineGateInput(action=action, position=rng.integers(0, n_positions, n), reward=reward,
                            pscore=np.full(n, 1.0 / n_actions), champion_action_dist=policy(n_actions - 1),
                            champion_estimated_rewards=q,
                            challenger_action_dist=policy(n_actions - 1 if challenger_best else 0),
                            challenger_estimated_rewards=q)


@pytest.fixture
def registry(registry_data_dir: Path, model_name: str) -> FeedRegistry:
    return FeedRegistry(RegistryConfig(model_name=model_name), data_dir=registry_data_dir)


@pytest.fixture
def versions(registry: FeedRegistry, tmp_path: Path, make_bundle) -> tuple[str, str]:
    """Version 1 is champion, version 2 the challenger."""
    v1 = registry.register_bundle(make_bundle(tmp_path / "b1", "one"), check=False).version
    registry.promote(v1, reason="first model")
    v2 = registry.register_bundle(make_bundle(tmp_path / "b2", "two"), check=False).version
    return v1, v2


def controller_for(registry: FeedRegistry, tmp_path: Path, clock: Clock, config: RolloutConfig = CONFIG,
                   ) -> RolloutController:
    return RolloutController(config, registry, data_dir=tmp_path / "data", clock=clock)


def test_a_better_challenger_passes_the_gate_and_every_stage_and_is_promoted(
        registry: FeedRegistry, versions: tuple[str, str], tmp_path: Path) -> None:
    v1, v2 = versions
    clock = Clock()
    ctl = controller_for(registry, tmp_path, clock)
    state = ctl.start(gate=gate_data(challenger_best=True))
    assert (state.status, state.stage_index, state.challenger_share) == ("canary", 0, 0.05)
    view = current_rollout(ctl.store.state_dir)
    assert (view.champion_version, view.challenger_version, view.challenger_share) == (v1, v2, 0.05)

    final = ctl.run(logs_provider=traffic(ctl, clock, gmv_factor=1.1), sleep=clock.sleep)

    assert final.status == "promoted"
    assert [t.action for t in final.history] == ["gate_passed", "advance", "advance", "advance", "advance", "promote"]
    assert [t.share for t in final.history if t.action == "advance"] == [0.05, 0.25, 0.5, 1.0]
    assert registry.aliases() == {"champion": v2, "previous-champion": v1}
    view = current_rollout(ctl.store.state_dir)
    assert (view.status, view.champion_version, view.challenger_version, view.challenger_share) == \
        ("promoted", v2, None, 0.0)

    evaluations = [r for r in ctl.store.read_audit() if r["event"] == "evaluation"]
    assert [e["decision"] for e in evaluations] == ["advance"] * 3
    assert all(c["verdict"] == "pass" for e in evaluations for c in e["checks"])
    assert {c["metric"] for c in evaluations[0]["checks"]} == {"gmv_per_request", "ctr", "error_rate",
                                                               "latency_p95_ms"}
    transitions = [r for r in ctl.store.read_audit() if r["event"] == "transition"]
    assert len(transitions) == len(final.history) and all(r["reason"] and r["ts"] for r in transitions)
    tags = registry.version(v2).tags  # the state mirrored on the challenger's version
    assert tags["feedrank.rollout.status"] == "promoted" and tags["feedrank.rollout.id"] == final.rollout_id
    assert json.loads(tags["feedrank.rollout.summary"])["last_action"] == "promote"
    assert sum(k.startswith("feedrank.rollout.transition.") for k in tags) == len(final.history)
    assert json.loads(tags["feedrank.rollout.transition.000"])["action"] == "gate_passed"
    assert "offline gate passes" in tags["feedrank.rollout.transition.000"]


@pytest.mark.parametrize(("effects", "metric"), [
    ({"gmv_factor": 0.4}, "gmv_per_request"),
    ({"latency_factor": 1.6}, "latency_p95_ms"),
    ({"challenger_error_rate": 0.08}, "error_rate"),
])
def test_a_worse_challenger_is_rolled_back_automatically(registry: FeedRegistry, versions: tuple[str, str],
                                                         tmp_path: Path, effects: dict, metric: str) -> None:
    v1, v2 = versions
    clock = Clock()
    ctl = controller_for(registry, tmp_path, clock)
    ctl.start(skip_gate_reason="gate tested elsewhere")

    final = ctl.run(logs_provider=traffic(ctl, clock, **effects), sleep=clock.sleep)

    assert final.status == "rolled_back" and final.challenger_share == 0.0
    assert [t.action for t in final.history] == ["gate_skipped", "advance", "rollback", "aliases_restored"]
    rollback = final.history[-2]
    assert rollback.stage_index == 0 and f"{metric} fail" in rollback.reason
    assert registry.aliases() == {"champion": v1}  # challenger alias gone, champion untouched
    assert registry.version(v2).tags["feedrank.status"] == "rejected"
    assert registry.version(v2).tags["feedrank.rollout.status"] == "rolled_back"
    view = current_rollout(ctl.store.state_dir)
    assert (view.champion_version, view.challenger_version, view.challenger_share) == (v1, None, 0.0)


def test_insufficient_data_holds_without_spending_a_look(registry: FeedRegistry, versions: tuple[str, str],
                                                         tmp_path: Path) -> None:
    clock = Clock()
    ctl = controller_for(registry, tmp_path, clock)
    state = ctl.start(skip_gate_reason="test")
    clock.sleep(3600)
    result = ctl.step()  # nothing logged yet: the log folders do not even exist
    assert result.evaluation.decision == "hold" and "insufficient data" in result.evaluation.reason
    for folder in (CONFIG.impressions_dir, CONFIG.events_dir, CONFIG.requests_dir):
        # the servers started (folders created) and are still writing their first files
        (tmp_path / "data" / folder).mkdir(parents=True)
        (tmp_path / "data" / folder / ".part-0.parquet.tmp").write_bytes(b"PAR1")
    result = ctl.step()
    assert result.evaluation.decision == "hold" and "insufficient data" in result.evaluation.reason
    small = synthetic_logs(start=clock.now - timedelta(minutes=50), share=0.05, salt=state.salt, seed=1,
                           n_users=600)
    result = ctl.step(small)
    assert result.evaluation.decision == "hold" and result.evaluation.look is None
    assert "challenger: " in result.evaluation.reason
    full = synthetic_logs(start=clock.now - timedelta(minutes=50), share=0.05, salt=state.salt, seed=2)
    no_events = StageLogs(full.impressions, full.events.iloc[0:0], full.requests)  # event log not arrived
    result = ctl.step(no_events)
    assert result.evaluation.decision == "hold" and "no clicks or purchases" in result.evaluation.reason
    again = ctl.status()
    assert again is not None and (again.status, again.stage_index, again.looks_done) == ("canary", 0, 0)


def test_inconclusive_at_the_last_look_rolls_back(registry: FeedRegistry, versions: tuple[str, str],
                                                  tmp_path: Path) -> None:
    clock = Clock()
    # Enough users to test, far too few to show that GMV is not worse at all: inconclusive twice.
    config = replace(CONFIG, looks_per_stage=2, gmv_margin=0.0, min_users_per_arm=20, min_requests_per_arm=50)
    ctl = controller_for(registry, tmp_path, clock, config)
    ctl.start(skip_gate_reason="test")
    provide = traffic(ctl, clock, n_users=1000)
    first = ctl.step(provide())
    assert first.evaluation.decision == "hold" and first.evaluation.look == 1
    assert first.state.looks_done == 1
    second = ctl.step(provide())
    assert second.evaluation.decision == "rollback" and second.evaluation.look == 2
    assert "inconclusive at the last look" in second.evaluation.reason
    assert second.state.status == "rolled_back"
    # The first look used a stricter (O'Brien-Fleming) level than the last.
    assert first.evaluation.alpha_look is not None and second.evaluation.alpha_look is not None
    assert first.evaluation.alpha_look < second.evaluation.alpha_look <= config.alpha


def test_a_killed_controller_resumes_at_the_recorded_stage(registry: FeedRegistry, versions: tuple[str, str],
                                                           registry_data_dir: Path, tmp_path: Path) -> None:
    v1, v2 = versions
    clock = Clock()
    first = controller_for(registry, tmp_path, clock)
    started = first.start(skip_gate_reason="test")
    after = first.step(traffic(first, clock)()).state
    assert (after.stage_index, after.challenger_share) == (1, 0.25)
    del first  # the process dies; only the files and the registry remain

    fresh_registry = FeedRegistry(registry.config, data_dir=registry_data_dir)
    second = controller_for(fresh_registry, tmp_path, clock)
    resumed = second.status()
    assert resumed is not None
    assert (resumed.rollout_id, resumed.stage_index, resumed.challenger_share, resumed.salt) == \
        (started.rollout_id, 1, 0.25, started.salt)
    final = second.run(logs_provider=traffic(second, clock), sleep=clock.sleep)
    assert final.status == "promoted"
    assert [t.share for t in final.history if t.action == "advance"] == [0.05, 0.25, 0.5, 1.0]
    assert fresh_registry.aliases() == {"champion": v2, "previous-champion": v1}


def _cli_config(registry: FeedRegistry, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A feedrank YAML for the rollout commands: ``(config file, data dir, served logs root)``."""
    import yaml

    data, logs_root = tmp_path / "data", tmp_path / "served"
    cfg = {"infra": {"data_dir": str(data), "registry": {"tracking_uri": registry.tracking_uri,
                                                        "model_name": registry.model_name},
                     "rollout": {"looks_per_stage": 1, "min_users_per_arm": 100, "min_requests_per_arm": 300,
                                 "warmup_seconds": 0, "gmv_margin": 0.25, "ctr_margin": 0.2,
                                 "latency_p95_margin": 0.2, "error_rate_margin": 0.01, "n_bootstrap": 200,
                                 "impressions_dir": str(logs_root / "impressions"),
                                 "events_dir": str(logs_root / "events"),
                                 "requests_dir": str(logs_root / "requests")}}}
    path = tmp_path / "feedrank.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, data, logs_root


def _log_stage_traffic(data: Path, logs_root: Path, part: str, seed: int) -> None:
    """Write traffic of the current stage, from its start until now (events included), as Parquet."""
    state = StateStore(data / "rollout").load()
    assert state is not None
    start = datetime.fromisoformat(state.stage_started_at)
    span = max((datetime.now(UTC) - start).total_seconds(), 0.01)
    _write_parquet(synthetic_logs(start=start, share=state.challenger_share, salt=state.salt, seed=seed,
                                  hours=span / 7200.0, event_delay=timedelta(seconds=span / 8.0)), logs_root, part)


def test_a_killed_controller_process_resumes_at_the_recorded_stage(registry: FeedRegistry, versions: tuple[str, str],
                                                                   tmp_path: Path) -> None:
    """``feedrank rollout auto`` in its own process, SIGKILLed while it waits for its next look."""
    import os
    import signal
    import time

    from infra.cli import main

    path, data, logs_root = _cli_config(registry, tmp_path)
    base = ["--config", str(path), "rollout"]
    assert main([*base, "start", "--skip-offline-gate", "kill test"]) == 0
    started = StateStore(data / "rollout").load()
    assert started is not None and started.stage_index == 0
    _log_stage_traffic(data, logs_root, "stage0", seed=1)

    auto = subprocess.Popen([sys.executable, "-m", "infra.cli", *base, "auto", "--poll-seconds", "3600"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180.0
        while (state := StateStore(data / "rollout").load()) is not None and state.stage_index < 1:
            assert auto.poll() is None, f"rollout auto exited with {auto.returncode}"
            assert time.monotonic() < deadline, "rollout auto did not advance within 180 s"
            time.sleep(0.2)
    finally:
        os.kill(auto.pid, signal.SIGKILL)  # mid-rollout: the process waits an hour for its next look
        auto.wait(timeout=30)
    assert auto.returncode == -signal.SIGKILL

    store = StateStore(data / "rollout")
    killed = store.load()
    assert killed is not None
    assert (killed.rollout_id, killed.salt, killed.status, killed.stage_index, killed.challenger_share) == \
        (started.rollout_id, started.salt, "canary", 1, 0.25)
    _log_stage_traffic(data, logs_root, "stage1", seed=2)
    assert main([*base, "advance"]) == 0  # a new controller: the dead one's lock is gone, it goes on from 25 %
    resumed = store.load()
    assert resumed is not None and (resumed.rollout_id, resumed.stage_index, resumed.challenger_share) == \
        (started.rollout_id, 2, 0.5)
    assert [t.share for t in resumed.history if t.action == "advance"] == [0.05, 0.25, 0.5]
    assert [r["stage_index"] for r in store.read_audit() if r["event"] == "evaluation"] == [0, 1]
    assert registry.alias_version("champion") == versions[0]


class CrashingRegistry(FeedRegistry):
    """The real registry, whose process is killed the first time it would move the champion alias."""

    crashes = 1

    def promote(self, version: str, *, reason: str) -> None:
        if self.crashes:
            self.crashes -= 1
            raise KeyboardInterrupt("killed during promotion")
        super().promote(version, reason=reason)


def test_an_interrupted_promotion_is_finished_by_the_next_controller(
        versions: tuple[str, str], registry: FeedRegistry, registry_data_dir: Path, tmp_path: Path) -> None:
    v1, v2 = versions
    clock = Clock()
    config = replace(CONFIG, stages=(0.5, 1.0))
    crashing = CrashingRegistry(registry.config, data_dir=registry_data_dir)
    first = controller_for(crashing, tmp_path, clock, config)
    first.start(skip_gate_reason="test")
    with pytest.raises(KeyboardInterrupt):
        first.step(traffic(first, clock)())
    on_disk = first.status()
    assert on_disk is not None and on_disk.status == "promoting"
    view = current_rollout(first.store.state_dir)  # servers already send everyone to the challenger
    assert (view.challenger_version, view.challenger_share) == (v2, 1.0)
    assert registry.aliases()["champion"] == v1

    state = controller_for(registry, tmp_path, clock, config).resume()
    assert state is not None and state.status == "promoted" and state.history[-1].reason
    assert registry.aliases() == {"champion": v2, "previous-champion": v1}


def test_the_offline_gate_blocks_a_clearly_worse_challenger(registry: FeedRegistry, versions: tuple[str, str],
                                                            tmp_path: Path) -> None:
    v1, v2 = versions
    worse = gate_data(challenger_best=False)
    result = offline_gate(worse, tolerance=0.02, n_bootstrap=100)
    assert not result.passed and result.challenger_value < 0.5 * result.champion_value
    assert offline_gate(gate_data(challenger_best=True), tolerance=0.0, n_bootstrap=100).passed

    ctl = controller_for(registry, tmp_path, Clock())
    state = ctl.start(gate=worse)
    assert state.status == "gate_failed" and state.stage_index == -1 and state.challenger_share == 0.0
    assert "offline gate fails" in state.history[-1].reason
    assert registry.aliases() == {"champion": v1}
    audit = ctl.store.read_audit()[-1]
    assert audit["action"] == "gate_failed" and audit["details"]["passed"] is False
    assert current_rollout(ctl.store.state_dir).challenger_share == 0.0


def test_operator_commands_and_their_errors(registry: FeedRegistry, versions: tuple[str, str],
                                            tmp_path: Path) -> None:
    v1, v2 = versions
    clock = Clock()
    ctl = controller_for(registry, tmp_path, clock)
    with pytest.raises(NoActiveRolloutError):
        ctl.rollback(reason="nothing running")
    with pytest.raises(OfflineGateRequiredError):
        ctl.start()
    ctl.start(skip_gate_reason="test")
    with pytest.raises(RolloutInProgressError):
        ctl.start(skip_gate_reason="again")
    for _ in range(3):
        state = ctl.advance(reason="load test environment")
    assert state.status == "promoted" and registry.aliases()["champion"] == v2
    manual = [t.reason for t in state.history if t.action == "advance"][1:]  # the first opened the canary
    assert manual == ["manual: load test environment"] * 3
    state = ctl.rollback(reason="support tickets about empty feeds")
    assert state.status == "rolled_back"
    assert registry.aliases() == {"champion": v1}
    view = current_rollout(ctl.store.state_dir)
    assert (view.champion_version, view.challenger_share) == (v1, 0.0)


def test_the_first_model_is_promoted_with_initial(registry: FeedRegistry, tmp_path: Path, make_bundle) -> None:
    v1 = registry.register_bundle(make_bundle(tmp_path / "b1", "one"), check=False).version
    ctl = controller_for(registry, tmp_path, Clock())
    with pytest.raises(NoChampionError, match="--initial"):
        ctl.start(skip_gate_reason="test")
    state = ctl.start(initial=True)
    assert state.status == "promoted" and registry.aliases() == {"champion": v1}
    with pytest.raises(NoActiveRolloutError, match="initial model"):
        ctl.rollback(reason="nothing earlier")


def _write_parquet(logs: StageLogs, root: Path, part: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, frame in (("impressions", logs.impressions), ("events", logs.events)):
        (root / name).mkdir(parents=True, exist_ok=True)
        frame.to_parquet(root / name / f"{part}.parquet", index=False)
    (root / "requests").mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(logs.requests, schema=REQUEST_METRICS_SCHEMA, preserve_index=False)
    pq.write_table(table, root / "requests" / f"{part}.parquet")


def test_cli_start_status_advance_rollback(registry: FeedRegistry, versions: tuple[str, str], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from infra.cli import main

    v1, _ = versions
    path, data, logs_root = _cli_config(registry, tmp_path)
    base = ["--config", str(path), "rollout"]

    assert main([*base, "start", "--skip-offline-gate", "cli test"]) == 0
    assert "status      canary, stage 1/4, challenger share 5%" in capsys.readouterr().out
    # Traffic (and its clicks and purchases) between the stage start and now, in real time.
    _log_stage_traffic(data, logs_root, "p0", seed=3)

    assert main([*base, "advance"]) == 0
    out = capsys.readouterr().out
    assert "evaluation: ADVANCE" in out and "latency_p95_ms" in out and "share 25%" in out
    assert main([*base, "rollback", "--reason", "cli test"]) == 0
    assert "rolled_back" in capsys.readouterr().out
    assert main([*base, "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "rolled_back"
    assert registry.aliases() == {"champion": v1}
    assert main([*base, "advance"]) == 3
    assert "no rollout in its canary stages" in capsys.readouterr().err


def test_p95_latency_test_known_answers() -> None:
    rng = np.random.default_rng(5)
    users = rng.integers(0, 2000, 20_000)
    base = rng.lognormal(np.log(10.0), 0.4, 20_000)
    same = p95_latency_test(base[:10_000], users[:10_000], base[10_000:], users[10_000:], alpha=0.05,
                            n_bootstrap=300, seed=0)
    assert same[3] < 0.0 < same[4]
    slow = p95_latency_test(base[:10_000], users[:10_000], 1.3 * base[10_000:], users[10_000:], alpha=0.05,
                            n_bootstrap=300, seed=0)
    assert slow[3] < 0.3 < slow[4] and slow[3] > 0.15
    assert slow[0] == pytest.approx(np.quantile(base[:10_000], 0.95, method="inverted_cdf"))


def test_evaluate_stage_rejects_a_sample_ratio_mismatch() -> None:
    logs = synthetic_logs(start=T0, share=0.05, salt="s", seed=2)
    dropped = logs.requests[(logs.requests["arm"] == "champion") | (logs.requests["user_id"] % 3 != 0)]
    ev = evaluate_stage(StageLogs(logs.impressions, logs.events, dropped), config=CONFIG, share=0.05, look=1)
    assert ev.decision == "rollback" and "sample ratio mismatch" in ev.reason


def test_state_store_detects_corruption_and_concurrent_controllers(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.load() is None and current_rollout(tmp_path).status == "none"
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(RolloutStateError, match="not valid JSON"):
        store.load()
    with store.lock():
        with pytest.raises(RolloutStateError, match="another rollout controller"):
            with StateStore(tmp_path).lock():
                pass


def test_serving_can_read_the_rollout_without_mlflow_or_statistics() -> None:
    code = ("import sys; import infra.rollout_state, infra.rollout; "
            "heavy = [m for m in ('mlflow', 'statsmodels', 'scipy') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stdout + out.stderr
