"""The feed bundle: one directory holding every model a feed needs, described by ``bundle.json``.

A bundle is what the registry versions and what a rollout moves: the retrieval model (two-tower
weights, item vectors, FAISS index), the ranker, and the calibrated purchase model, trained
together from one ETL snapshot. Why one bundle rather than registering each model apart:

* They are not independent. The ranker is trained on the candidates this retrieval model
  returns (and may use its similarity as a feature); the isotonic calibration of the purchase
  model is fit on those candidates' score distribution; expected GMV multiplies the calibrated
  probability by price. Pairing a new ranker with an old retrieval index silently shifts the
  candidate distribution and miscalibrates P(purchase), i.e. the very number the feed sorts by.
* A canary judges the feed, not a component: the guardrails (GMV per request, CTR, p95 latency,
  errors) measure the combination, so the combination is the unit that is promoted and rolled
  back. One version number also names the whole policy in the impression log.
* A rollback must restore a set that was known to work together; moving one alias does that.

The cost is that retraining only the ranker makes a new bundle; unchanged components are
copied into it (a few MB), which keeps every version self-contained and reproducible.

``bundle.json`` (format 1)::

    {
      "format_version": 1,
      "components": {"retrieval": "retrieval", "ranker": "ranker/model.txt",
                     "purchase_model": "purchase", ...},      # paths relative to the bundle
      "feature_list": ["user_ctr_7d", "item_price", ...],     # ranker features, in model order
      "data_window": {"start": "2026-01-05T00:00:00Z", "end": "2026-01-12T00:00:00Z"},
      "created_at": "2026-01-12T03:14:00Z",
      "metrics": {"ndcg_at_10": 0.41, ...},                   # offline evaluation, optional
      "metadata": {"ranker_trees": 300, ...},                 # free-form scalars, optional
      "files": {"ranking/ranker.txt": "9f86d08...", ...}      # SHA-256 of every other file
    }

``files`` is written at registration (:func:`with_file_checksums`); a serving process checks
every file against it (:func:`verify_files`) before it loads anything from the bundle, so a
truncated model or a swapped shared library is refused before LightGBM parses it or ``dlopen``
maps it. The registry also tags each version with :func:`files_digest` of that mapping, so a
rewritten ``bundle.json`` does not pass either.

The components ``retrieval``, ``ranker`` and ``purchase_model`` are required; others (e.g. a
compiled ranker, a calibrator kept apart) may be added. This module uses only the standard
library, so a serving process can read a downloaded bundle without MLflow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "MANIFEST_NAME",
    "MARKER_PREFIX",
    "REQUIRED_COMPONENTS",
    "BundleError",
    "BundleManifest",
    "DataWindow",
    "file_sha256",
    "files_digest",
    "read_bundle_manifest",
    "verify_files",
    "with_file_checksums",
    "write_bundle_manifest",
]

MANIFEST_NAME = "bundle.json"
#: Files at a bundle's top whose name starts with this are bookkeeping (download and check markers), not content.
MARKER_PREFIX = ".feedrank-"
BUNDLE_FORMAT_VERSION = 1
REQUIRED_COMPONENTS: tuple[str, ...] = ("retrieval", "ranker", "purchase_model")


class BundleError(ValueError):
    """A bundle directory or its ``bundle.json`` is missing, malformed or incomplete."""


def _parse_ts(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise BundleError(f"{name} must be an ISO-8601 string, got {value!r}")
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BundleError(f"{name} must be an ISO-8601 date or datetime, got {value!r}") from None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


@dataclass(frozen=True)
class DataWindow:
    """The period of logs a model was trained on, ``[start, end)``, as ISO-8601 UTC strings."""

    start: str
    end: str

    def __post_init__(self) -> None:
        if _parse_ts(self.start, "data_window.start") >= _parse_ts(self.end, "data_window.end"):
            raise BundleError(f"data_window.end must be after start ({self.start}), got {self.end!r}")

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start, "end": self.end}


@dataclass(frozen=True)
class BundleManifest:
    """The parsed ``bundle.json`` (see the module docstring for the file format).

    Parameters
    ----------
    components : mapping of str to str
        Component name -> path relative to the bundle directory (file or folder).
    feature_list : tuple of str
        Feature names the ranker expects, in order; unique.
    data_window : DataWindow
        Training data period.
    created_at : str
        ISO-8601 time the bundle was written.
    metrics : mapping of str to float, optional
        Offline evaluation metrics.
    metadata : mapping of str to scalar, optional
        Free-form facts about the bundle (sizes, hyper-parameters).
    format_version : int
        Always :data:`BUNDLE_FORMAT_VERSION` for bundles written by this code.
    files : mapping of str to str, optional
        Path relative to the bundle (POSIX) -> SHA-256 hex digest, for every file but
        ``bundle.json``; empty until the bundle is registered.
    """

    components: Mapping[str, str]
    feature_list: tuple[str, ...]
    data_window: DataWindow
    created_at: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    metadata: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    format_version: int = BUNDLE_FORMAT_VERSION
    files: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format_version != BUNDLE_FORMAT_VERSION:
            raise BundleError(f"format_version must be {BUNDLE_FORMAT_VERSION}, got {self.format_version!r}")
        missing = [c for c in REQUIRED_COMPONENTS if c not in self.components]
        if missing:
            raise BundleError(f"components must include {list(REQUIRED_COMPONENTS)}, missing {missing}")
        for name, rel in self.components.items():
            p = PurePosixPath(rel) if isinstance(rel, str) else None
            if p is None or not rel or p.is_absolute() or ".." in p.parts:
                raise BundleError(f"components[{name!r}] must be a relative path inside the bundle, got {rel!r}")
        if not self.feature_list or not all(isinstance(f, str) and f for f in self.feature_list):
            raise BundleError(f"feature_list must be a non-empty list of names, got {list(self.feature_list)!r}")
        if len(set(self.feature_list)) != len(self.feature_list):
            raise BundleError("feature_list must not repeat a feature")
        _parse_ts(self.created_at, "created_at")
        for key, value in self.metrics.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise BundleError(f"metrics[{key!r}] must be a finite number, got {value!r}")
        for key, meta in self.metadata.items():
            if not isinstance(meta, str | int | float | bool):
                raise BundleError(f"metadata[{key!r}] must be a string, number or bool, got {meta!r}")
        for rel, digest in self.files.items():
            p = PurePosixPath(rel) if isinstance(rel, str) else None
            if p is None or not rel or p.is_absolute() or ".." in p.parts or rel == MANIFEST_NAME:
                raise BundleError(f"files must map paths inside the bundle (not {MANIFEST_NAME}), got {rel!r}")
            if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
                raise BundleError(f"files[{rel!r}] must be a SHA-256 hex digest, got {digest!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "components": dict(self.components),
            "feature_list": list(self.feature_list),
            "data_window": self.data_window.to_dict(),
            "created_at": self.created_at,
            "metrics": dict(self.metrics),
            "metadata": dict(self.metadata),
            **({"files": dict(self.files)} if self.files else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BundleManifest:
        """Build from the JSON mapping; raises :class:`BundleError` naming the bad field."""
        if not isinstance(data, Mapping):
            raise BundleError(f"{MANIFEST_NAME} must hold a JSON object, got {type(data).__name__}")
        known = {"format_version", "components", "feature_list", "data_window", "created_at", "metrics", "metadata",
                 "files"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BundleError(f"{MANIFEST_NAME}: unknown keys {unknown} (known: {sorted(known)})")
        for key in ("components", "feature_list", "data_window", "created_at"):
            if key not in data:
                raise BundleError(f"{MANIFEST_NAME}: {key} is required")
        window = data["data_window"]
        if not isinstance(window, Mapping) or set(window) != {"start", "end"}:
            raise BundleError(f"data_window must be an object with start and end, got {window!r}")
        components = data["components"]
        if not isinstance(components, Mapping):
            raise BundleError(f"components must be an object of name -> path, got {components!r}")
        features = data["feature_list"]
        if not isinstance(features, list):
            raise BundleError(f"feature_list must be a list, got {type(features).__name__}")
        for key in ("metrics", "metadata", "files"):
            if not isinstance(data.get(key, {}), Mapping):
                raise BundleError(f"{key} must be an object, got {data[key]!r}")
        return cls(
            components=dict(components),
            feature_list=tuple(features),
            data_window=DataWindow(start=window["start"], end=window["end"]),
            created_at=data["created_at"],
            metrics=dict(data.get("metrics", {})),
            metadata=dict(data.get("metadata", {})),
            format_version=data.get("format_version", BUNDLE_FORMAT_VERSION),
            files=dict(data.get("files", {})),
        )

    def times(self) -> tuple[datetime, datetime]:
        """``(created_at, data_window.end)`` as UTC datetimes (a model's age and its data's)."""
        return _parse_ts(self.created_at, "created_at"), _parse_ts(self.data_window.end, "data_window.end")

    def component_path(self, bundle_dir: str | os.PathLike[str], name: str) -> Path:
        """Absolute path of component ``name`` inside ``bundle_dir``."""
        if name not in self.components:
            raise BundleError(f"component must be one of {sorted(self.components)}, got {name!r}")
        return Path(bundle_dir).resolve() / self.components[name]


def read_bundle_manifest(bundle_dir: str | os.PathLike[str]) -> BundleManifest:
    """Read and check ``<bundle_dir>/bundle.json``; every component path must exist.

    Raises
    ------
    BundleError
        If the folder or manifest is missing, the JSON is malformed, a field is invalid, or a
        component's file or folder is absent.
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(f"bundle_dir must be a directory, got {str(root)!r}")
    path = root / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path} not found: a bundle needs its {MANIFEST_NAME}") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None
    manifest = BundleManifest.from_dict(data)
    for name in manifest.components:
        if not manifest.component_path(root, name).exists():
            raise BundleError(f"components[{name!r}] = {manifest.components[name]!r} does not exist in {root}")
    return manifest


def write_bundle_manifest(bundle_dir: str | os.PathLike[str], manifest: BundleManifest) -> Path:
    """Write ``manifest`` as ``<bundle_dir>/bundle.json`` (atomically) and return its path."""
    root = Path(bundle_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / MANIFEST_NAME
    tmp = root / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _bundle_files(root: Path) -> list[str]:
    """Every regular file under ``root`` but the manifest and the markers a download or a check
    leaves (``.feedrank-*`` at the top), as POSIX paths."""
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and rel.as_posix() != MANIFEST_NAME and not (
                len(rel.parts) == 1 and rel.name.startswith(MARKER_PREFIX)):
            out.append(rel.as_posix())
    return out


def with_file_checksums(bundle_dir: str | os.PathLike[str]) -> BundleManifest:
    """Record the SHA-256 of every file of the bundle in its ``bundle.json``; return the new manifest."""
    root = Path(bundle_dir)
    manifest = read_bundle_manifest(root)
    files = {rel: file_sha256(root / rel) for rel in _bundle_files(root)}
    updated = dataclasses.replace(manifest, files=files)
    write_bundle_manifest(root, updated)
    return updated


def files_digest(files: Mapping[str, str]) -> str:
    """One SHA-256 over a ``files`` mapping (sorted ``path digest`` lines): what the registry tags."""
    lines = "".join(f"{rel} {files[rel]}\n" for rel in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def verify_files(bundle_dir: str | os.PathLike[str], manifest: BundleManifest) -> None:
    """Check every file of the bundle against ``manifest.files``: same set of files, same SHA-256.

    Raises
    ------
    BundleError
        If the manifest records no checksums, or a file is missing, added or changed (named).
    """
    root = Path(bundle_dir)
    if not manifest.files:
        raise BundleError(f"{root / MANIFEST_NAME} records no file checksums: register the bundle "
                          "(FeedRegistry.register_bundle) before serving it")
    present = set(_bundle_files(root))
    missing = sorted(set(manifest.files) - present)
    extra = sorted(present - set(manifest.files))
    if missing or extra:
        raise BundleError(f"bundle {root} does not hold the registered files: missing {missing[:5]}, "
                          f"not registered {extra[:5]}")
    for rel in sorted(manifest.files):
        actual = file_sha256(root / rel)
        if actual != manifest.files[rel]:
            raise BundleError(f"{rel} in {root} has SHA-256 {actual[:16]}..., registered "
                              f"{manifest.files[rel][:16]}...: the file was changed or damaged")
