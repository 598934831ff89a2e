"""Wiring of the serving process: registry bundles + rollout state -> a hot-reloadable router.

``build_router(config)`` returns a :class:`serving.router.Router` whose loader, at start-up
and on every admin Reload:

1. reads the rollout state (:func:`infra.rollout_state.current_rollout`): the champion and
   challenger versions, the challenger's share and the rollout's salt; with no rollout, the
   registry's ``champion`` alias (or, before any promotion, ``challenger``) serves everyone;
2. downloads each version's bundle (cached by version), verifies every file against the
   SHA-256 registered with it, loads every component in a child process first
   (:func:`serving.bundle_check.ensure_checked`: a native crash there rejects the version and
   leaves this process serving), then loads it into a
   :class:`serving.model_pipeline.ModelPipeline`, reading users online from Feast when a
   feature store is configured (the bundle's user snapshot as fallback);
3. falls back as DESIGN.md defines: a version that fails to load -> the previous champion
   (``previous-champion`` alias); no loadable version at all -> the popularity pipeline over
   the last loaded item snapshot, or :class:`~serving.errors.ModelUnavailable`. A challenger
   that does not load leaves its users with the champion and has the rollout controller roll
   it back with the reason (:meth:`infra.rollout.RolloutController.reject_unloadable`). What
   did not load is listed in the state's ``failures``, so the reload counts and reports as
   failed.

:class:`RolloutWatcher` reloads the router whenever the rollout controller replaces
``state.json`` (a new stage's share, a rollback, a promotion), so a serving process follows a
rollout without anyone calling the admin Reload; ``feedrank serve`` runs one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
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

# How long a serving process keeps asking for the rollback of a challenger it cannot load while
# another rollout controller holds the state lock.
_ROLLBACK_RETRY_SECONDS = 5.0


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
        self._rejected: dict[str, str] = {}  # version -> why it failed its checks (versions are immutable)
        self._failures: list[str] = []  # what the current load could not load, for RouterState.failures
        self._last: PipelineBase | None = None

    def _pipeline(self, version: str) -> PipelineBase:
        """The loaded pipeline of ``version``; its bundle is verified and checked in a child process first.

        A version whose files or load check fail is remembered as rejected (no second child
        process for it); a download that fails is retried at the next load.
        """
        from serving.bundle import BundleError
        from serving.bundle_check import ensure_checked

        if version in self._rejected:
            raise BundleError(self._rejected[version])
        if version not in self._pipelines:
            bundle = self.registry.download_bundle(version, self.cache_dir / f"v{version}")
            try:
                ensure_checked(bundle)  # checksums, then (once per folder) every component in a child process
            except BundleError as exc:
                self._rejected[version] = f"version {version} refused: {exc}"
                logger.error("%s", self._rejected[version])
                raise BundleError(self._rejected[version]) from None
            cfg = self.config.serving
            self._pipelines[version] = ModelPipeline.from_bundle(
                bundle, version=version, reranker=Reranker(cfg.rerank), exploration=cfg.exploration,
                impression_log=self.impression_log, user_source=self.user_source, feature_log=self.feature_log)
        self._last = self._pipelines[version]
        return self._pipelines[version]

    def _try(self, version: str, role: str) -> PipelineBase | None:
        try:
            return self._pipeline(version)
        except Exception as exc:  # noqa: BLE001 - a version that does not load is skipped, with its reason
            if version not in self._rejected:
                logger.error("%s version %s could not be loaded: %s", role, version, exc, exc_info=True)
            self._failures.append(f"{role} {exc}" if version in self._rejected else
                                  f"{role} version {version} could not be loaded: {exc}")
            return None

    def _load_with_fallback(self, version: str | None, role: str) -> PipelineBase:
        tried = []
        for candidate in (version, self.registry.alias_version("previous-champion")):
            if candidate is None or candidate in tried:
                continue
            tried.append(candidate)
            pipeline = self._try(candidate, role)
            if pipeline is not None:
                return pipeline
        if self._last is not None:
            logger.error("no %s version loads; serving popularity over the last item snapshot", role)
            cfg = self.config.serving
            return PopularityPipeline(snapshot=self._last.snapshot, reranker=Reranker(cfg.rerank),
                                      exploration=cfg.exploration, impression_log=self.impression_log,
                                      versions=ModelVersions("popularity", "popularity", "none"))
        raise ModelUnavailable(f"no loadable {role} model (tried versions {tried}): {'; '.join(self._failures)}")

    def _roll_back_unloadable(self, version: str, reason: str) -> None:
        """Have the rollout controller roll back the rollout whose challenger ``version`` does not load.

        Another controller may hold the state lock for a moment (a stage evaluation): the call is
        retried for up to ``_ROLLBACK_RETRY_SECONDS``; after that the failure is logged, and
        the next reload (any change of the rollout state, or an admin Reload) asks again.
        """
        from infra.rollout import RolloutController
        from infra.rollout_state import RolloutStateError

        controller = RolloutController(self.config.infra.rollout, self.registry, data_dir=self.config.infra.data_dir)
        deadline = time.monotonic() + _ROLLBACK_RETRY_SECONDS
        while True:
            try:
                state = controller.reject_unloadable(version, reason=reason)
                break
            except RolloutStateError as exc:  # the lock is held; the state file itself is fine
                if time.monotonic() > deadline:
                    logger.error("could not roll back challenger version %s: %s", version, exc)
                    return
                time.sleep(0.25)
            except Exception:  # noqa: BLE001 - serving goes on with the champion either way
                logger.exception("could not roll back challenger version %s", version)
                return
        if state is not None:
            logger.warning("rollout %s rolled back: challenger version %s does not load", state.rollout_id, version)

    def __call__(self) -> RouterState:
        from infra.rollout_state import current_rollout

        self._failures = []
        view = current_rollout(data_path(self.config, self.config.infra.rollout.state_dir))
        champion = view.champion_version or self.registry.alias_version("champion") \
            or self.registry.alias_version("challenger")
        champion_pipe = self._load_with_fallback(champion, "champion")
        challenger_pipe = None
        if view.challenger_version and view.challenger_share > 0:
            # a broken challenger must not take the champion down: its users get the champion
            challenger_pipe = self._try(view.challenger_version, "challenger")
            if challenger_pipe is None:
                self._roll_back_unloadable(view.challenger_version, self._failures[-1])
        return RouterState(champion=champion_pipe, challenger=challenger_pipe,
                           challenger_share=view.challenger_share if challenger_pipe else 0.0,
                           salt=view.salt or self.config.serving.rollout_salt, failures=tuple(self._failures))


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
                                 realtime_refs=[f"user_realtime:{c}" for c in REALTIME_INPUTS], fallback=snapshot,
                                 timeout_seconds=config.serving.online_read_timeout_ms / 1000.0)

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
