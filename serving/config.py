"""Configuration of the serving process (the ``serving`` section)."""

from __future__ import annotations

from dataclasses import dataclass, field

from features.config import check
from serving.exploration import ExplorationConfig
from serving.rerank import RerankConfig

__all__ = ["LimitsConfig", "ServingConfig"]


@dataclass(frozen=True)
class LimitsConfig:
    """What a RankFeed request may ask for; anything outside is INVALID_ARGUMENT."""

    max_k: int = 200
    default_candidate_count: int = 500
    max_candidates: int = 2000
    max_excluded: int = 1000
    max_id_chars: int = 128
    max_message_bytes: int = 4 * 1024 * 1024
    max_explain_top: int = 50

    def __post_init__(self) -> None:
        check(self.max_k >= 1, "max_k", ">= 1", self.max_k)
        check(self.max_k <= self.max_candidates, "max_candidates", f">= max_k ({self.max_k})", self.max_candidates)
        check(1 <= self.default_candidate_count <= self.max_candidates, "default_candidate_count",
              f"in [1, max_candidates={self.max_candidates}]", self.default_candidate_count)
        check(self.max_excluded >= 0, "max_excluded", ">= 0", self.max_excluded)
        check(self.max_id_chars >= 1, "max_id_chars", ">= 1", self.max_id_chars)
        check(self.max_message_bytes >= 1024, "max_message_bytes", ">= 1024", self.max_message_bytes)
        check(self.max_explain_top >= 1, "max_explain_top", ">= 1", self.max_explain_top)


@dataclass(frozen=True)
class ServingConfig:
    """The ``serving`` section.

    Parameters
    ----------
    host, port : where the gRPC server listens (port 0 picks a free one).
    max_workers : threads answering calls (per process).
    ranking_slots : ranking pipelines a process runs at once; further RankFeed calls wait their
        turn in arrival order, their deadline still running (0: no limit, every thread computes).
        A process is bound by its GIL, so more than one only interleaves them
        (:mod:`serving.admission`).
    retrieval_batch : with ranking slots, the slot holder fetches candidates for itself and up to
        ``retrieval_batch - 1`` calls queued behind it (same arm) in one retriever call: one user
        tower pass and one index search for several users cost about half as much per user
        (1 disables it).
    processes : serving processes ``feedrank serve`` runs on the one port (SO_REUSEPORT, which
        gRPC sets on Linux; the kernel spreads connections over them). A Python process is bound
        by its GIL, so a host uses more than one core only through more processes.
    port_per_process : with several processes, process i listens on ``port + i`` instead, for a
        load balancer or client that spreads its connections over the ports. The kernel assigns
        each connection to a shared port's process by a hash, which splits a few long-lived
        connections unevenly (8 over 2 processes: 4/4 only 27% of the time), and the calls of
        the busier process wait in a longer queue (docs/serving.md, "One process per core").
    grace_seconds : how long shutdown waits for in-flight calls.
    online_read_timeout_ms : how long a request waits for the user's online-store row before it
        takes the bundle snapshot's (a read takes ~0.2-0.5 ms; a locked or stuck store must not
        hold the ranking slot, :class:`serving.features.FeastUserFeatures`).
    metrics_port : Prometheus HTTP port on ``host`` (0 disables).
    admin_token_env : environment variable holding the bearer token admin calls need
        (unset or empty: admin calls are open, which is only sensible on loopback).
    tls_cert_file, tls_key_file : PEM files; both set switches the port to TLS.
    impression_log_dir : where served impressions are logged ("" disables).
    feature_sample_share : share of requests whose served items' feature vectors are logged
        beside the impressions (``served_features/``, for drift and skew monitoring; 0 disables).
    rollout_salt : salt of the user hash that assigns arms.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    max_workers: int = 8
    ranking_slots: int = 1
    retrieval_batch: int = 8
    processes: int = 1
    port_per_process: bool = False
    grace_seconds: float = 5.0
    online_read_timeout_ms: float = 25.0
    metrics_port: int = 0
    admin_token_env: str = "FEEDRANK_ADMIN_TOKEN"
    tls_cert_file: str = ""
    tls_key_file: str = ""
    impression_log_dir: str = ""
    feature_sample_share: float = 0.01
    rollout_salt: str = "feedrank-rollout"
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)

    def __post_init__(self) -> None:
        check(0 <= self.port <= 65535, "port", "in [0, 65535]", self.port)
        check(0 <= self.metrics_port <= 65535, "metrics_port", "in [0, 65535]", self.metrics_port)
        check(self.max_workers >= 1, "max_workers", ">= 1", self.max_workers)
        check(self.ranking_slots >= 0, "ranking_slots", ">= 0", self.ranking_slots)
        check(self.retrieval_batch >= 1, "retrieval_batch", ">= 1", self.retrieval_batch)
        check(self.processes >= 1, "processes", ">= 1", self.processes)
        check(self.processes == 1 or self.port != 0, "port", "a fixed port (not 0) when processes > 1", self.port)
        check(self.port + (self.processes - 1 if self.port_per_process else 0) <= 65535, "port",
              f"<= {65536 - self.processes} with a port per process", self.port)
        check(self.grace_seconds >= 0, "grace_seconds", ">= 0", self.grace_seconds)
        check(0.0 <= self.feature_sample_share <= 1.0, "feature_sample_share", "in [0, 1]",
              self.feature_sample_share)
        check(self.online_read_timeout_ms > 0, "online_read_timeout_ms", "> 0", self.online_read_timeout_ms)
        check(bool(self.tls_cert_file) == bool(self.tls_key_file), "tls_key_file",
              "set together with tls_cert_file", self.tls_key_file)
        check(len(self.rollout_salt.encode()) in range(1, 65), "rollout_salt", "1-64 bytes", self.rollout_salt)
