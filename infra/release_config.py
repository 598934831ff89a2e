"""Configuration of model release: the MLflow registry and the canary rollout controller.

Both sections live under ``infra`` (``infra.registry.*``, ``infra.rollout.*``); they are kept
in this small module, apart from the loader in :mod:`infra.config`, so that reading them
imports neither MLflow nor the statistics stack.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from features.config import check

__all__ = ["RegistryConfig", "RolloutConfig"]

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True)
class RegistryConfig:
    """Where models are tracked and registered.

    Parameters
    ----------
    tracking_uri : str
        Empty (default): the embedded registry, a SQLite file
        ``sqlite:///<infra.data_dir>/mlflow/mlflow.db`` with artifacts under
        ``<infra.data_dir>/mlflow/artifacts``. Otherwise the URI of a shared MLflow tracking
        server (``http://mlflow.internal:5000``) or database (``postgresql://...``); the same
        code then talks to it, nothing else changes.
    artifact_location : str
        Artifact root of the experiment when it is created. Empty: the embedded folder for the
        embedded registry, the server's default (``--default-artifact-root`` or proxied
        ``mlflow-artifacts:``) for a server.
    experiment : str
        MLflow experiment that training and registration runs go to.
    model_name : str
        Registered model holding the feed bundles (one version per trained bundle).
    ui_port : int
        Port of ``make mlflow-ui`` (bound to 127.0.0.1 only).
    """

    tracking_uri: str = ""
    artifact_location: str = ""
    experiment: str = "feedrank"
    model_name: str = "feedrank-feed"
    ui_port: int = 5000

    def __post_init__(self) -> None:
        check(self.tracking_uri == self.tracking_uri.strip(), "tracking_uri", "free of surrounding spaces",
              self.tracking_uri)
        check(bool(self.experiment.strip()), "experiment", "a non-empty name", self.experiment)
        check(bool(_MODEL_NAME.match(self.model_name)), "model_name",
              "1-128 letters, digits, '_', '.', '-' (starting with a letter or digit)", self.model_name)
        check(1 <= self.ui_port <= 65535, "ui_port", "a TCP port in [1, 65535]", self.ui_port)


@dataclass(frozen=True)
class RolloutConfig:
    """The canary: its stages, the offline gate, the online guardrails and the controller's waits.

    Parameters
    ----------
    stages : tuple of float
        Challenger traffic shares, strictly increasing in (0, 1] and ending at 1.0; reaching the
        last one promotes the challenger to champion.
    offline_gate_tolerance : float
        Before the first stage the challenger's doubly-robust GMV per request must be at least
        ``champion * (1 - tolerance)`` (``champion - tolerance * |champion|``).
    alpha : float
        Overall two-sided level of each guardrail test within a stage, spent over the stage's
        looks with O'Brien-Fleming boundaries.
    looks_per_stage : int
        Planned evaluations with enough data per stage; a stage still inconclusive at its last
        look fails (the challenger could not show it is no worse) and rolls back.
    min_users_per_arm, min_requests_per_arm : int
        Below these counts in either arm an evaluation holds without spending a look.
    warmup_seconds : float
        Data of the first seconds of a stage are left out (servers reload the new share).
    attribution_hours : float
        Clicks and purchases count for an impression when they follow it within this horizon.
    gmv_margin, ctr_margin : float
        Non-inferiority margins, relative (0.05 = the challenger may be at most 5 % worse).
    latency_p95_margin : float
        Relative margin on the p95 request latency (0.10 = at most 10 % slower).
    error_rate_margin : float
        Absolute margin on the request error rate (0.002 = 0.2 percentage points).
    srm_alpha : float
        Level of the sample-ratio-mismatch check on users per arm; a mismatch fails the stage.
    n_bootstrap : int
        Resamples of the user-clustered bootstrap behind the p95 latency test.
    seed : int
        Seed of that bootstrap.
    poll_seconds : float
        ``feedrank rollout auto``: wait between evaluations.
    max_wait_seconds : float
        ``feedrank rollout auto``: give up (leaving the rollout where it is) after this long.
    state_dir : str
        Rollout state and audit log, relative to ``infra.data_dir`` unless absolute.
    impressions_dir, events_dir, requests_dir : str
        Serving's impression log, the outcome event log and serving's request-metrics log
        (Parquet folders), relative to ``infra.data_dir`` unless absolute.
    """

    stages: tuple[float, ...] = (0.05, 0.25, 0.5, 1.0)
    offline_gate_tolerance: float = 0.02
    alpha: float = 0.05
    looks_per_stage: int = 5
    min_users_per_arm: int = 200
    min_requests_per_arm: int = 2000
    warmup_seconds: float = 60.0
    attribution_hours: float = 24.0
    gmv_margin: float = 0.05
    ctr_margin: float = 0.03
    latency_p95_margin: float = 0.10
    error_rate_margin: float = 0.002
    srm_alpha: float = 0.001
    n_bootstrap: int = 400
    seed: int = 0
    poll_seconds: float = 300.0
    max_wait_seconds: float = 86400.0
    state_dir: str = "rollout"
    impressions_dir: str = "serving/impressions"
    events_dir: str = "logs/events"
    requests_dir: str = "serving/requests"

    def __post_init__(self) -> None:
        s = self.stages
        check(len(s) >= 1 and all(0.0 < v <= 1.0 for v in s), "stages", "shares in (0, 1]", s)
        check(all(a < b for a, b in zip(s, s[1:], strict=False)), "stages", "strictly increasing", s)
        check(s[-1] == 1.0, "stages", "ending at 1.0 (the last stage promotes)", s)
        check(0.0 <= self.offline_gate_tolerance < 1.0, "offline_gate_tolerance", "in [0, 1)",
              self.offline_gate_tolerance)
        check(0.0 < self.alpha < 1.0, "alpha", "in (0, 1)", self.alpha)
        check(1 <= self.looks_per_stage <= 50, "looks_per_stage", "in [1, 50]", self.looks_per_stage)
        check(self.min_users_per_arm >= 2, "min_users_per_arm", ">= 2", self.min_users_per_arm)
        check(self.min_requests_per_arm >= 2, "min_requests_per_arm", ">= 2", self.min_requests_per_arm)
        for name in ("warmup_seconds", "gmv_margin", "ctr_margin", "latency_p95_margin", "error_rate_margin"):
            value = getattr(self, name)
            check(math.isfinite(value) and value >= 0.0, name, ">= 0", value)
        check(self.attribution_hours > 0.0, "attribution_hours", "> 0", self.attribution_hours)
        check(0.0 < self.srm_alpha < 1.0, "srm_alpha", "in (0, 1)", self.srm_alpha)
        check(self.n_bootstrap >= 50, "n_bootstrap", ">= 50", self.n_bootstrap)
        check(self.seed >= 0, "seed", ">= 0", self.seed)
        check(self.poll_seconds > 0.0, "poll_seconds", "> 0", self.poll_seconds)
        check(self.max_wait_seconds > 0.0, "max_wait_seconds", "> 0", self.max_wait_seconds)
        for name in ("state_dir", "impressions_dir", "events_dir", "requests_dir"):
            check(bool(getattr(self, name).strip()), name, "a non-empty path", getattr(self, name))
