"""The MLflow registry of feed bundles: runs, versions, aliases, download by alias.

Where it lives (:class:`~infra.release_config.RegistryConfig`): by default an embedded
registry, a SQLite database ``<data_dir>/mlflow/mlflow.db`` with artifacts under
``<data_dir>/mlflow/artifacts``, needing no server; a ``tracking_uri`` in the configuration
(``http://mlflow:5000``, ``postgresql://...``) points the same code at a shared server.

What is registered: one *feed bundle* per version (see :mod:`serving.bundle` for why the
retrieval model, ranker and purchase model travel together) under one registered model
(``infra.registry.model_name``). Each version carries tags: ``metric.<name>`` per metric,
``data_window.start``/``data_window.end``, ``feature_list`` (JSON), ``feature_count``,
``git_commit`` (and ``git_dirty``), ``bundle.components``, ``bundle.files_sha256`` (the digest of
the SHA-256 of every bundle file recorded in its ``bundle.json``); the run that produced it logs the
same as params, metrics and artifacts (``feature_list.json``, ``bundle/``, ``plots/``).

Aliases and what moves them:

========================  ==================================================================
``challenger``            set on every new version by :meth:`FeedRegistry.register_bundle`;
                          removed by :meth:`~FeedRegistry.promote` and :meth:`~FeedRegistry.reject`
``champion``              set by :meth:`~FeedRegistry.promote`; restored by
                          :meth:`~FeedRegistry.rollback`
``previous-champion``     the champion a promotion replaced (also recorded as the tag
                          ``feedrank.previous_champion`` on the new champion, so rollbacks can
                          walk back more than one step)
========================  ==================================================================

Every alias operation is idempotent (repeating it after a crash leaves the same aliases), which
the rollout controller relies on to finish an interrupted transition.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow.artifacts
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from infra.release_config import RegistryConfig
from serving.bundle import (
    BundleError,
    BundleManifest,
    DataWindow,
    files_digest,
    read_bundle_manifest,
    verify_files,
    with_file_checksums,
)

__all__ = [
    "CHALLENGER_ALIAS",
    "CHAMPION_ALIAS",
    "PREVIOUS_CHAMPION_ALIAS",
    "AliasNotFoundError",
    "FeedRegistry",
    "ModelVersionInfo",
    "NothingToRollBackError",
    "RegistryError",
    "RunLog",
    "embedded_artifact_root",
    "embedded_tracking_uri",
    "git_commit",
]

logger = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
PREVIOUS_CHAMPION_ALIAS = "previous-champion"

_TAG_STATUS = "feedrank.status"
_TAG_FILES = "bundle.files_sha256"
_TAG_PREVIOUS = "feedrank.previous_champion"
_BUNDLE_ARTIFACT = "bundle"
_REPO_ROOT = Path(__file__).resolve().parents[1]


class RegistryError(RuntimeError):
    """The registry could not do what was asked (unreachable store, unknown version, MLflow error)."""


class AliasNotFoundError(RegistryError):
    """No version of the registered model holds the alias."""


class NothingToRollBackError(RegistryError):
    """Rollback was asked for but no earlier champion is recorded."""


def embedded_tracking_uri(data_dir: str | os.PathLike[str]) -> str:
    """``sqlite:///<abs data_dir>/mlflow/mlflow.db``: the embedded backend store."""
    return f"sqlite:///{(Path(data_dir) / 'mlflow' / 'mlflow.db').resolve()}"


def embedded_artifact_root(data_dir: str | os.PathLike[str]) -> str:
    """``file://<abs data_dir>/mlflow/artifacts``: the embedded artifact root."""
    return (Path(data_dir) / "mlflow" / "artifacts").resolve().as_uri()


def git_commit(repo: str | os.PathLike[str] = _REPO_ROOT) -> tuple[str, bool]:
    """``(commit, dirty)`` of the checkout; ``FEEDRANK_GIT_COMMIT`` wins (images without ``.git``).

    Returns ``("unknown", False)`` when neither the variable nor git can tell.
    """
    from_env = os.environ.get("FEEDRANK_GIT_COMMIT", "").strip()
    if from_env:
        return from_env, False
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return head, bool(status.strip())


def _holds_version(folder: Path, stamp: str) -> bool:
    """``folder`` holds a complete download of the bundle ``stamp`` (``<model>/<version>``)."""
    marker = folder / ".feedrank-version"
    try:
        if marker.read_text().strip() != stamp:
            return False
    except (FileNotFoundError, NotADirectoryError):
        return False
    read_bundle_manifest(folder)
    return True


def _verify_download(mv: ModelVersionInfo, folder: Path) -> None:
    """Every file of ``folder`` matches its recorded SHA-256, and the record matches the version's tag.

    Raises
    ------
    BundleError
        Naming the changed file, or saying that ``bundle.json``'s checksums are not the registered ones.
    """
    manifest = read_bundle_manifest(folder)
    verify_files(folder, manifest)
    registered = mv.tags.get(_TAG_FILES)
    if registered is None:
        raise BundleError(f"{mv.name} version {mv.version} was registered without file checksums "
                          f"(no {_TAG_FILES} tag); register the bundle again")
    if files_digest(manifest.files) != registered:
        raise BundleError(f"{mv.name} version {mv.version}: the checksums in {folder / 'bundle.json'} are not "
                          "the registered ones (bundle.json was changed after registration)")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST"


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered bundle version, as read from the registry.

    Attributes
    ----------
    name, version : str
        Registered model and version number (a string, as MLflow gives it).
    aliases : tuple of str
        Aliases pointing at this version.
    tags : mapping of str to str
    source : str
        Artifact URI of the bundle folder.
    run_id : str or None
        Run that logged the bundle.
    """

    name: str
    version: str
    aliases: tuple[str, ...]
    tags: Mapping[str, str]
    source: str
    run_id: str | None

    @property
    def metrics(self) -> dict[str, float]:
        """Metrics recorded at registration (tags ``metric.<name>``)."""
        return {k[len("metric."):]: float(v) for k, v in self.tags.items() if k.startswith("metric.")}

    @property
    def data_window(self) -> DataWindow | None:
        start, end = self.tags.get("data_window.start"), self.tags.get("data_window.end")
        return DataWindow(start, end) if start and end else None

    @property
    def feature_list(self) -> tuple[str, ...]:
        return tuple(json.loads(self.tags.get("feature_list", "[]")))

    @property
    def git_commit(self) -> str | None:
        return self.tags.get("git_commit")


class RunLog:
    """An open MLflow run; created by :meth:`FeedRegistry.start_run`.

    Every method writes immediately (no buffering), so a crash loses nothing logged before it.
    """

    def __init__(self, client: MlflowClient, run_id: str, artifact_uri: str) -> None:
        self._client = client
        self.run_id = run_id
        self.artifact_uri = artifact_uri

    def log_params(self, params: Mapping[str, object]) -> None:
        """Log parameters (values as strings; at most 6,000 characters each)."""
        items = [Param(str(k), str(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float], *, step: int | None = None) -> None:
        """Log numeric metrics (one point each, at ``step`` if given)."""
        ts = int(datetime.now(UTC).timestamp() * 1000)
        items = [Metric(str(k), float(v), ts, step or 0) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self._client.log_batch(self.run_id, metrics=items[start:start + 1000])

    def set_tags(self, tags: Mapping[str, object]) -> None:
        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        for start in range(0, len(items), 100):
            self._client.log_batch(self.run_id, tags=items[start:start + 100])

    def log_plot(self, figure: Any, filename: str) -> None:
        """Save a matplotlib figure as ``plots/<filename>`` (e.g. ``"calibration.png"``)."""
        self._client.log_figure(self.run_id, figure, f"plots/{filename}")

    def log_plot_file(self, path: str | os.PathLike[str]) -> None:
        """Log an image already on disk under ``plots/``."""
        self._client.log_artifact(self.run_id, str(path), "plots")

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Log a file, or a folder's contents, under ``artifact_path``."""
        if Path(path).is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, obj: Any, filename: str) -> None:
        """Log a JSON-serialisable object as an artifact file (``.json`` or ``.yaml``)."""
        self._client.log_dict(self.run_id, obj, filename)


class FeedRegistry:
    """Feed bundles in MLflow: runs, registration, aliases and download.

    Parameters
    ----------
    config : RegistryConfig
        Where the registry lives and the registered model's name.
    data_dir : path
        ``infra.data_dir``; the embedded store goes under ``<data_dir>/mlflow``.

    The constructor does no I/O; the MLflow client is created on first use.
    """

    def __init__(self, config: RegistryConfig, *, data_dir: str | os.PathLike[str]) -> None:
        if not isinstance(config, RegistryConfig):
            raise TypeError(f"config must be a RegistryConfig, got {type(config).__name__}")
        self.config = config
        self.data_dir = Path(data_dir)
        self._client_: MlflowClient | None = None
        self._experiment_id_: str | None = None

    # ------------------------------------------------------------------ locations
    @property
    def embedded(self) -> bool:
        """True when no tracking URI is configured (SQLite + local artifacts)."""
        return not self.config.tracking_uri

    @property
    def tracking_uri(self) -> str:
        return self.config.tracking_uri or embedded_tracking_uri(self.data_dir)

    @property
    def artifact_location(self) -> str | None:
        """Artifact root for a newly created experiment (None: the server decides)."""
        if self.config.artifact_location:
            return self.config.artifact_location
        return embedded_artifact_root(self.data_dir) if self.embedded else None

    @property
    def model_name(self) -> str:
        return self.config.model_name

    @property
    def _client(self) -> MlflowClient:
        if self._client_ is None:
            if self.embedded:
                (self.data_dir / "mlflow" / "artifacts").mkdir(parents=True, exist_ok=True)
            self._client_ = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client_

    def _experiment_id(self) -> str:
        if self._experiment_id_ is None:
            exp = self._client.get_experiment_by_name(self.config.experiment)
            if exp is None:
                try:
                    self._experiment_id_ = self._client.create_experiment(
                        self.config.experiment, artifact_location=self.artifact_location)
                except MlflowException:  # created concurrently by another process
                    exp = self._client.get_experiment_by_name(self.config.experiment)
                    if exp is None:
                        raise
                    self._experiment_id_ = exp.experiment_id
            else:
                self._experiment_id_ = exp.experiment_id
        return self._experiment_id_

    # ------------------------------------------------------------------ runs
    @contextlib.contextmanager
    def start_run(self, name: str, *, params: Mapping[str, object], data_window: DataWindow,
                  feature_list: tuple[str, ...] | list[str], tags: Mapping[str, str] | None = None,
                  ) -> Iterator[RunLog]:
        """Open a run that records what every feedrank run must: params, data window, features, commit.

        Logs ``params`` plus ``data_window_start``/``data_window_end`` and ``feature_count`` as
        params, the feature list as ``feature_list.json``, and the git commit as the tags
        ``git_commit``/``git_dirty``/``mlflow.source.git.commit``. Metrics and plots are logged
        through the yielded :class:`RunLog`. The run ends FINISHED, or FAILED if the block raises.

        Raises
        ------
        TypeError
            If ``data_window`` is not a DataWindow.
        RegistryError
            If MLflow cannot create the run.
        """
        if not isinstance(data_window, DataWindow):
            raise TypeError(f"data_window must be a DataWindow, got {type(data_window).__name__}")
        features = list(feature_list)
        commit, dirty = git_commit()
        run_tags = {"mlflow.runName": name, "mlflow.source.git.commit": commit, "git_commit": commit,
                    "git_dirty": str(dirty).lower(), "data_window.start": data_window.start,
                    "data_window.end": data_window.end, **(tags or {})}
        try:
            run = self._client.create_run(self._experiment_id(), run_name=name, tags=run_tags)
        except MlflowException as exc:
            raise RegistryError(f"could not create run {name!r} at {self.tracking_uri}: {exc}") from exc
        log = RunLog(self._client, run.info.run_id, run.info.artifact_uri)
        try:
            log.log_params({**params, "data_window_start": data_window.start, "data_window_end": data_window.end,
                            "feature_count": len(features)})
            log.log_dict(features, "feature_list.json")
            yield log
        except BaseException:
            self._client.set_terminated(log.run_id, status="FAILED")
            raise
        self._client.set_terminated(log.run_id, status="FINISHED")
        logger.info("run %s (%s) finished", name, log.run_id)

    # ------------------------------------------------------------------ registration
    def _ensure_registered_model(self) -> None:
        try:
            self._client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if not _not_found(exc):
                raise RegistryError(f"registry at {self.tracking_uri} failed: {exc}") from exc
            try:
                self._client.create_registered_model(
                    self.model_name, description="feedrank feed bundles: retrieval + ranker + purchase model")
            except MlflowException as again:
                if again.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise RegistryError(f"could not create registered model {self.model_name!r}: {again}") from again

    def register_bundle(self, bundle_dir: str | os.PathLike[str], *, metrics: Mapping[str, float] | None = None,
                        run: RunLog | None = None, description: str = "", check: bool = True) -> ModelVersionInfo:
        """Log a bundle folder to a run, register it as a new version and give it the alias ``challenger``.

        Before anything is logged, the SHA-256 of every file is recorded in the bundle's
        ``bundle.json`` (serving verifies them before it loads anything), and with ``check`` the
        bundle is loaded in a separate process (:func:`serving.bundle_check.check_bundle_isolated`:
        LightGBM models, calibrator, towers, FAISS index, compiled libraries against their
        LightGBM source, a feed ranked); a bundle that fails is refused with the reason.

        Parameters
        ----------
        bundle_dir : path
            A folder with a valid ``bundle.json`` (see :mod:`serving.bundle`).
        metrics : mapping of str to float, optional
            Evaluation metrics; merged over the manifest's ``metrics``, logged to the run and
            tagged on the version as ``metric.<name>``.
        run : RunLog, optional
            The training run to attach the bundle to; without it a ``register-bundle`` run is
            opened (and closed) carrying the manifest's data window and feature list.
        description : str
            Version description shown in the UI.
        check : bool, default True
            Load the bundle in a separate process first. False registers without loading it
            (for the registry's own bookkeeping tests, or to force a bundle in so that serving's
            defences can be exercised); serving checks it anyway before it serves it.

        Returns
        -------
        ModelVersionInfo
            The new version, already holding the ``challenger`` alias.

        Raises
        ------
        BundleError
            If the bundle is invalid (:class:`serving.bundle_check.BundleCheckError` when it
            does not load).
        RegistryError
            If MLflow fails.
        """
        manifest = with_file_checksums(bundle_dir)
        if check:
            from serving.bundle_check import check_bundle_isolated

            report = check_bundle_isolated(bundle_dir)
            logger.info("bundle %s loads in a separate process: %s", bundle_dir, report)
        all_metrics = {**manifest.metrics, **(metrics or {})}
        if run is None:
            with self.start_run("register-bundle", params={"bundle_format": manifest.format_version},
                                data_window=manifest.data_window, feature_list=manifest.feature_list) as own:
                return self._register(bundle_dir, manifest, all_metrics, own, description)
        return self._register(bundle_dir, manifest, all_metrics, run, description)

    def _register(self, bundle_dir: str | os.PathLike[str], manifest: BundleManifest, metrics: Mapping[str, float],
                  run: RunLog, description: str) -> ModelVersionInfo:
        run.log_metrics(metrics)
        run.log_artifact(bundle_dir, _BUNDLE_ARTIFACT)
        commit, dirty = git_commit()
        tags: dict[str, str] = {
            "data_window.start": manifest.data_window.start,
            "data_window.end": manifest.data_window.end,
            "feature_list": json.dumps(list(manifest.feature_list)),
            "feature_count": str(len(manifest.feature_list)),
            "git_commit": commit,
            "git_dirty": str(dirty).lower(),
            "bundle.format_version": str(manifest.format_version),
            "bundle.components": ",".join(sorted(manifest.components)),
            "bundle.created_at": manifest.created_at,
            _TAG_FILES: files_digest(manifest.files),
            _TAG_STATUS: "registered",
            **{f"metric.{k}": repr(float(v)) for k, v in metrics.items()},
        }
        self._ensure_registered_model()
        try:
            mv = self._client.create_model_version(self.model_name, source=f"{run.artifact_uri}/{_BUNDLE_ARTIFACT}",
                                                   run_id=run.run_id, tags=tags, description=description or None)
            self._client.set_registered_model_alias(self.model_name, CHALLENGER_ALIAS, mv.version)
        except MlflowException as exc:
            raise RegistryError(f"could not register {bundle_dir} as {self.model_name}: {exc}") from exc
        logger.info("registered %s version %s (challenger) from %s", self.model_name, mv.version, bundle_dir)
        return self.version(mv.version)

    # ------------------------------------------------------------------ reading
    def version(self, version: str | int) -> ModelVersionInfo:
        """The version ``version``; raises :class:`RegistryError` if it does not exist."""
        try:
            mv = self._client.get_model_version(self.model_name, str(version))
        except MlflowException as exc:
            raise RegistryError(f"{self.model_name} version {version} not found: {exc.message}") from exc
        return ModelVersionInfo(name=mv.name, version=str(mv.version), aliases=tuple(mv.aliases or ()),
                                tags=dict(mv.tags or {}), source=mv.source or "", run_id=mv.run_id)

    def version_by_alias(self, alias: str) -> ModelVersionInfo:
        """The version holding ``alias``; raises :class:`AliasNotFoundError` if none does."""
        version = self.alias_version(alias)
        if version is None:
            raise AliasNotFoundError(f"{self.model_name} has no version with alias {alias!r}")
        return self.version(version)

    def alias_version(self, alias: str) -> str | None:
        """The version number holding ``alias``, or None."""
        return self.aliases().get(alias)

    def aliases(self) -> dict[str, str]:
        """All aliases of the registered model (alias -> version); empty if it does not exist yet."""
        try:
            model = self._client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if _not_found(exc):
                return {}
            raise RegistryError(f"registry at {self.tracking_uri} failed: {exc}") from exc
        return {str(k): str(v) for k, v in (model.aliases or {}).items()}

    def download_bundle(self, ref: str, dst: str | os.PathLike[str]) -> Path:
        """Download the bundle of an alias (``"champion"``) or a version (``"3"``) into ``dst``.

        ``dst`` ends up holding the bundle's files (``dst/bundle.json``, ...). Versions are
        immutable, so an existing valid bundle at ``dst`` of the same version is reused; the
        download goes to a temporary sibling and is renamed into place, so a reader never
        sees half a bundle.

        Raises
        ------
        AliasNotFoundError, RegistryError, BundleError
        """
        mv = self.version(ref) if ref.isdigit() else self.version_by_alias(ref)
        target = Path(dst)
        stamp = f"{mv.name}/{mv.version}"
        if _holds_version(target, stamp):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp),
                                                        tracking_uri=self.tracking_uri)
            _verify_download(mv, Path(local))
            Path(local, ".feedrank-version").write_text(f"{stamp}\n")
            # Replicas sharing a cache download the same version at once: the first to finish wins,
            # and the others keep its copy (removing it would pull files from under its loader).
            if _holds_version(target, stamp):
                return target
            if target.exists():
                shutil.rmtree(target)
            try:
                os.replace(local, target)
            except OSError:
                if _holds_version(target, stamp):
                    return target
                raise
        except MlflowException as exc:
            raise RegistryError(f"could not download {mv.name} version {mv.version} from {mv.source}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("downloaded %s version %s (%s) to %s", mv.name, mv.version, ref, target)
        return target

    # ------------------------------------------------------------------ aliases
    def set_tags(self, version: str, tags: Mapping[str, str]) -> None:
        """Set tags on a version (values as strings)."""
        try:
            for key, value in tags.items():
                self._client.set_model_version_tag(self.model_name, str(version), key, str(value))
        except MlflowException as exc:
            raise RegistryError(f"could not tag {self.model_name} version {version}: {exc}") from exc

    def _set_alias(self, alias: str, version: str) -> None:
        try:
            self._client.set_registered_model_alias(self.model_name, alias, str(version))
        except MlflowException as exc:
            raise RegistryError(f"could not set alias {alias!r} -> {version}: {exc}") from exc

    def _delete_alias(self, alias: str) -> None:
        try:
            self._client.delete_registered_model_alias(self.model_name, alias)
        except MlflowException as exc:
            if not _not_found(exc):
                raise RegistryError(f"could not delete alias {alias!r}: {exc}") from exc

    def set_challenger(self, version: str) -> None:
        """Point ``challenger`` at ``version`` (e.g. to retry an older version)."""
        self.version(version)
        self._set_alias(CHALLENGER_ALIAS, version)

    def promote(self, version: str, *, reason: str) -> None:
        """Make ``version`` the champion; the replaced champion becomes ``previous-champion``.

        Idempotent: promoting the current champion again only re-aligns ``previous-champion``
        with the recorded tag (the state a crash half-way through would leave).
        """
        version = str(version)
        self.version(version)
        aliases = self.aliases()
        current = aliases.get(CHAMPION_ALIAS)
        if current != version:
            if current is not None:  # recorded on the new champion before any alias moves
                self.set_tags(version, {_TAG_PREVIOUS: current})
            self._set_alias(CHAMPION_ALIAS, version)
            if current is not None:
                self.set_tags(current, {_TAG_STATUS: "retired", "feedrank.retired_at": _now_iso()})
        previous = self.version(version).tags.get(_TAG_PREVIOUS)
        if previous:
            self._set_alias(PREVIOUS_CHAMPION_ALIAS, previous)
        if aliases.get(CHALLENGER_ALIAS) == version:
            self._delete_alias(CHALLENGER_ALIAS)
        self.set_tags(version, {_TAG_STATUS: "champion", "feedrank.promoted_at": _now_iso(),
                                "feedrank.promotion_reason": reason})
        logger.info("%s version %s promoted to champion (previous %s): %s", self.model_name, version, previous, reason)

    def reject(self, version: str, *, reason: str) -> None:
        """Take ``challenger`` off ``version`` (if it holds it) and tag it rejected; the champion is untouched."""
        version = str(version)
        if self.alias_version(CHALLENGER_ALIAS) == version:
            self._delete_alias(CHALLENGER_ALIAS)
        self.set_tags(version, {_TAG_STATUS: "rejected", "feedrank.rejected_at": _now_iso(),
                                "feedrank.rejection_reason": reason})
        logger.info("%s version %s rejected: %s", self.model_name, version, reason)

    def rollback(self, *, reason: str, to_version: str | None = None) -> str:
        """Restore an earlier champion; returns the version that is champion afterwards.

        Parameters
        ----------
        reason : str
            Recorded on the demoted version.
        to_version : str, optional
            The version to restore; default: the current champion's recorded predecessor.

        Raises
        ------
        NothingToRollBackError
            If there is no champion, or no predecessor is recorded and none is given.
        """
        current = self.alias_version(CHAMPION_ALIAS)
        target = str(to_version) if to_version is not None else None
        if target is None:
            if current is None:
                raise NothingToRollBackError(f"{self.model_name} has no champion to roll back")
            target = self.version(current).tags.get(_TAG_PREVIOUS) or self.alias_version(PREVIOUS_CHAMPION_ALIAS)
            if not target or target == current:
                raise NothingToRollBackError(f"{self.model_name} version {current} has no recorded previous champion")
        self.version(target)
        if current != target:
            self._set_alias(CHAMPION_ALIAS, target)
            if current is not None:
                self.set_tags(current, {_TAG_STATUS: "rolled_back", "feedrank.rolled_back_at": _now_iso(),
                                        "feedrank.rollback_reason": reason})
        before = self.version(target).tags.get(_TAG_PREVIOUS)
        if before:
            self._set_alias(PREVIOUS_CHAMPION_ALIAS, before)
        else:
            self._delete_alias(PREVIOUS_CHAMPION_ALIAS)
        self.set_tags(target, {_TAG_STATUS: "champion", "feedrank.restored_at": _now_iso()})
        logger.info("%s champion rolled back from %s to %s: %s", self.model_name, current, target, reason)
        return target
