"""Wiring of the serving process: registry bundles + rollout state -> a hot-reloadable router.

``build_router(config)`` returns a :class:`serving.router.Router` whose loader, at start-up
and on every admin Reload:

1. reads the rollout state (:func:`infra.rollout_state.current_rollout`): the champion and
   challenger versions, the challenger's share and the rollout's salt; with no rollout, the
   registry's ``champion`` alias (or, before any promotion, ``challenger``) serves everyone;
2. downloads each version's bundle (cached by version) and loads it into a
   :class:`serving.model_pipeline.ModelPipeline`, reading users online from Feast when a
   feature store is configured (the bundle's user snapshot as fallback);
3. falls back as DESIGN.md defines: a version that fails to load -> the previous champion
   (``previous-champion`` alias); no loadable version at all -> the popularity pipeline over
   the last loaded item snapshot, or :class:`~serving.errors.ModelUnavailable`.

:class:`RolloutWatcher` reloads the router whenever the rollout controller replaces
``state.json`` (a new stage's share, a rollback, a promotion), so a serving process follows a
rollout without anyone calling the admin Reload; ``feedrank serve`` runs one.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.config import FeedrankConfig
from serving.errors import ModelUnavailable
from serving.impression_log import ImpressionLog, ServedFeatureLog
from serving.model_pipeline import ModelPipeline
from serving.pipeline import PipelineBase, PopularityPipeline
from serving.rerank import Reranker
from serving.router import ModelVersions, Router, RouterState

__all__ = ["RolloutWatcher", "build_router", "data_path"]

logger = logging.getLogger(__name__)


def data_path(config: FeedrankConfig, relative: str) -> Path:
    """``relative`` under ``infra.data_dir`` unless it is absolute."""
    path = Path(relative)
    return path if path.is_absolute() else Path(config.infra.data_dir) / path


class _Loader:
    def __init__(self, config: FeedrankConfig, *, impression_log: ImpressionLog | None,
                 user_source: Callable[[Any], Any] | None, feature_log: ServedFeatureLog | None = None) -> None:
        from infra.registry import FeedRegistry

        self.config = config
        self.registry = FeedRegistry(config.infra.registry, data_dir=config.infra.data_dir)
        self.impression_log = impression_log
        self.feature_log = feature_log
        self.user_source = user_source
        self.cache_dir = data_path(config, "serving/bundles")
        self._pipelines: dict[str, PipelineBase] = {}
        self._last: PipelineBase | None = None

    def _pipeline(self, version: str) -> PipelineBase:
        if version not in self._pipelines:
            bundle = self.registry.download_bundle(version, self.cache_dir / f"v{version}")
            cfg = self.config.serving
            self._pipelines[version] = ModelPipeline.from_bundle(
                bundle, version=version, reranker=Reranker(cfg.rerank), exploration=cfg.exploration,
                impression_log=self.impression_log, user_source=self.user_source, feature_log=self.feature_log)
        self._last = self._pipelines[version]
        return self._pipelines[version]

    def _load_with_fallback(self, version: str | None, role: str) -> PipelineBase:
        tried = []
        for candidate in (version, self.registry.alias_version("previous-champion")):
            if candidate is None or candidate in tried:
                continue
            tried.append(candidate)
            try:
                return self._pipeline(candidate)
            except Exception:
                logger.exception("%s version %s could not be loaded", role, candidate)
        if self._last is not None:
            logger.error("no %s version loads; serving popularity over the last item snapshot", role)
            cfg = self.config.serving
            return PopularityPipeline(snapshot=self._last.snapshot, reranker=Reranker(cfg.rerank),
                                      exploration=cfg.exploration, impression_log=self.impression_log,
                                      versions=ModelVersions("popularity", "popularity", "none"))
        raise ModelUnavailable(f"no loadable {role} model (tried versions {tried})")

    def __call__(self) -> RouterState:
        from infra.rollout_state import current_rollout

        view = current_rollout(data_path(self.config, self.config.infra.rollout.state_dir))
        champion = view.champion_version or self.registry.alias_version("champion") \
            or self.registry.alias_version("challenger")
        champion_pipe = self._load_with_fallback(champion, "champion")
        challenger_pipe = None
        if view.challenger_version and view.challenger_share > 0:
            try:
                challenger_pipe = self._pipeline(view.challenger_version)
            except Exception:  # a broken challenger must not take the champion down: its users get the champion
                logger.exception("challenger version %s could not be loaded; champion serves everyone",
                                 view.challenger_version)
        return RouterState(champion=champion_pipe, challenger=challenger_pipe,
                           challenger_share=view.challenger_share if challenger_pipe else 0.0,
                           salt=view.salt or self.config.serving.rollout_salt)


def build_router(config: FeedrankConfig, *, impression_log: ImpressionLog | None = None,
                 user_source: Callable[[Any], Any] | None = None,
                 feature_log: ServedFeatureLog | None = None) -> Router:
    """A router over the registry's bundles and the rollout state (loads now; reloads on demand);
    ``feature_log`` receives the sampled requests' served feature vectors."""
    return Router(_Loader(config, impression_log=impression_log, user_source=user_source, feature_log=feature_log))


def feast_user_source(config: FeedrankConfig, features_dir: str | Path) -> Callable[[Any], Any]:
    """Wrap a bundle's user snapshot into Feast online reads (snapshot as fallback)."""
    from features.derived import REALTIME_INPUTS
    from features.store import open_store
    from serving.features import FeastUserFeatures

    store = open_store(features_dir, config.features.feast)

    def wrap(snapshot: Any) -> FeastUserFeatures:
        return FeastUserFeatures(store, snapshot_refs=[f"user_snapshot:{c}" for c in snapshot.columns],
                                 realtime_refs=[f"user_realtime:{c}" for c in REALTIME_INPUTS], fallback=snapshot)

    return wrap


class RolloutWatcher:
    """Reload ``router`` when the rollout state file changes; polls it from a daemon thread.

    The controller replaces ``state.json`` atomically (a rename), so a change of its inode, size
    or modification time means a new state. A reload that fails keeps the current arms and is
    retried at the next poll.

    Parameters
    ----------
    router : Router
    state_dir : path
        ``<infra.data_dir>/<infra.rollout.state_dir>``.
    interval_seconds : float, default 5.0
        Poll interval; keep it well below ``infra.rollout.warmup_seconds`` (default 60), the
        part of each stage left out of its evaluation while servers pick up the new share.
    """

    def __init__(self, router: Router, state_dir: str | os.PathLike[str], *, interval_seconds: float = 5.0) -> None:
        if not interval_seconds > 0:
            raise ValueError(f"interval_seconds must be > 0, got {interval_seconds!r}")
        from infra.rollout_state import STATE_FILE

        self.router = router
        self.state_file = Path(state_dir) / STATE_FILE
        self.interval_seconds = float(interval_seconds)
        self.reloads = 0
        self._seen: tuple[int, int, int] | None = None  # an existing state file: one reload at the first poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.state_file.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def check(self) -> bool:
        """Reload now if the state file changed since the last successful reload; True if reloaded."""
        current = self._signature()
        if current == self._seen:
            return False
        try:
            self.router.reload()
        except Exception:  # noqa: BLE001 - keep serving the current arms; retry at the next poll
            logger.exception("reload after a rollout state change failed; retrying in %.1f s", self.interval_seconds)
            return False
        self._seen = current
        self.reloads += 1
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            self.check()

    def start(self) -> RolloutWatcher:
        self._thread = threading.Thread(target=self._run, name="rollout-watcher", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_seconds + 5.0)
            self._thread = None
