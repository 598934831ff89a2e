"""Load every component of a feed bundle in a child process before the bundle may serve.

A bundle's models are read by native code (LightGBM's model parser, ``dlopen`` of the compiled
rankers, FAISS, torch) that can end the whole process on a bad file: a truncated LightGBM text
model ends in a C++ ``terminate`` (SIGABRT), not an exception. So a bundle is first loaded by a
short-lived child process, ``python -m serving.bundle_check <bundle_dir>``, which does what a
serving process does and a little more (:func:`check_bundle`):

1. checks every file against the SHA-256 recorded in ``bundle.json`` (when recorded);
2. loads the pipeline as serving does (two-tower towers, FAISS index, item and user
   snapshots, LightGBM ranker and purchase model, calibrator, compiled libraries);
3. loads each compiled library the ranking metadata lists and compares it with its LightGBM
   source on assembled feature rows (a known user and a cold one), within the tolerance
   training holds them to (:data:`ranking.train.COMPILE_TOLERANCE`);
4. ranks a feed for a known and an unknown user and checks the scores are finite.

The parent (:func:`check_bundle_isolated`) sees an exit code, a signal or a timeout, never a
crash of its own, and turns any failure into a :class:`BundleCheckError` with the reason.
The registry runs it at registration (a bundle that fails is refused); a serving process runs
it before loading a version it has not checked on this host (:func:`ensure_checked`), so a bad
version is rejected while the loaded ones keep serving.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from serving.bundle import (
    MANIFEST_NAME,
    MARKER_PREFIX,
    BundleError,
    files_digest,
    read_bundle_manifest,
    verify_files,
)

__all__ = ["CHECKED_MARKER", "BundleCheckError", "check_bundle", "check_bundle_isolated", "die_with_parent",
           "ensure_checked"]

#: Written into a checked bundle folder (a serving cache): the :func:`files_digest` that passed.
CHECKED_MARKER = MARKER_PREFIX + "checked"
_RESULT_PREFIX = "FEEDRANK_BUNDLE_CHECK "
_STEP_PREFIX = "feedrank bundle check: loading "
_PARENT_ENV = "FEEDRANK_BUNDLE_CHECK_PARENT"
_DEFAULT_TIMEOUT_SECONDS = 300.0


class BundleCheckError(BundleError):
    """A bundle failed its load check; the message says which component and why."""


def die_with_parent(sig: int = signal.SIGKILL, *, parent_pid: int | None = None) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``).

    Called first thing by the child processes serving starts (bundle checks, the serving
    processes of ``feedrank serve --processes N``), so none outlives a parent killed with
    SIGKILL. ``parent_pid`` closes the race of a parent that died before the call: if the
    process was already re-parented, it signals itself. A no-op where ``prctl`` is unavailable.
    (Called in the child rather than as ``preexec_fn``: code between fork and exec in a
    process with gRPC's threads may deadlock.)
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def check_bundle(bundle_dir: str | os.PathLike[str], *, rows: int = 256) -> dict[str, Any]:
    """Load everything in ``bundle_dir`` in this process and exercise it (steps 1-4 above).

    Run it in a child (:func:`check_bundle_isolated`): a bad native file may end the process.

    Returns
    -------
    dict
        What was checked: ``compiled`` (max abs difference per compiled library), ``rows``,
        ``items`` (feed length for the known and the cold user), ``seconds``.

    Raises
    ------
    BundleError
        Naming the component that failed and why.
    """
    import numpy as np

    from ranking.artifacts import read_metadata
    from ranking.calibration import load_calibrator
    from ranking.compile import CompiledPredictor, NativePredictor
    from ranking.train import COMPILE_TOLERANCE
    from retrieval.artifacts import load_two_tower
    from serving.exploration import ExplorationConfig
    from serving.metrics import StageTimer
    from serving.model_pipeline import ModelPipeline
    from serving.requests import FeedRequest
    from serving.rerank import RerankConfig, Reranker

    start = time.perf_counter()
    root = Path(bundle_dir)
    manifest = read_bundle_manifest(root)
    if manifest.files:
        _step("checksums of every file")
        verify_files(root, manifest)
    model_dir = manifest.component_path(root, "ranker")
    meta = read_metadata(model_dir)
    rel = model_dir.relative_to(root.resolve())
    # each component alone first, so that a failure (or a crash, reported by the parent) names its file
    stage_features = meta.get("stage_features") or {}
    models = [("ranker", True)] + [(name, False) for name in (meta.get("funnel") or ["purchase"])]
    widths = {"ranker": len(meta["features"]), "purchase": len(meta["purchase_features"]),
              **{name: len(names) for name, names in stage_features.items()}}
    for name, raw in models:
        _step(f"LightGBM model {rel / meta['files'][name]}")
        _load(f"LightGBM model {rel / meta['files'][name]}",
              lambda name=name, raw=raw: NativePredictor.load(model_dir / meta["files"][name], raw_score=raw))
    _step(f"calibrator {rel / meta['files']['calibrator']}")
    _load(f"calibrator {rel / meta['files']['calibrator']}",
          lambda: load_calibrator(model_dir / meta["files"]["calibrator"]))
    compiled_libs = {}
    for name, raw in models:
        lib = meta["files"].get(f"{name}_lib")
        if lib is not None:
            _step(f"compiled library {rel / lib}")
            compiled_libs[name] = _load(f"compiled library {rel / lib}",
                                        lambda lib=lib, raw=raw: CompiledPredictor.load(model_dir / lib, raw_score=raw))
    _step(f"two-tower model and index {manifest.components['retrieval']}")
    _load(f"two-tower model and index {manifest.components['retrieval']}",
          lambda: load_two_tower(manifest.component_path(root, "retrieval")))
    _step("the whole pipeline")
    pipeline = _load("the pipeline", lambda: ModelPipeline.from_bundle(
        root, version="check", reranker=Reranker(RerankConfig()), exploration=ExplorationConfig(share=0.0)))

    snapshot = pipeline.snapshot
    n = min(rows, len(snapshot))
    users = pipeline.users
    known_users = users.user_ids()
    known = int(known_users[0]) if len(known_users) else None
    now_us = int(time.time() * 1e6)
    matrices = [pipeline.assembler.assemble(ts_us=now_us, device="mobile", user_row=row, realtime_row=None,
                                            rows=np.arange(n))
                for row in ((users.snapshot_row(known) if known is not None else None), None)]
    X = np.vstack(matrices)

    compiled: dict[str, float] = {}
    for name, raw in models:
        if name not in compiled_libs:
            continue
        lib = rel / meta["files"][f"{name}_lib"]
        Xm = X if widths[name] == X.shape[1] else np.hstack([X, np.zeros((len(X), 1))])  # the slot, at 0
        _step(f"compiled library {lib} against {rel / meta['files'][name]}")
        got = _load(f"compiled library {lib}", lambda p=compiled_libs[name], Xm=Xm: p.predict(Xm))
        want = NativePredictor.load(model_dir / meta["files"][name], raw_score=raw).predict(Xm)
        diff = float(np.max(np.abs(got - want))) if len(got) else 0.0
        if not diff <= COMPILE_TOLERANCE:
            raise BundleCheckError(f"compiled library {lib} differs from {rel / meta['files'][name]} by up to "
                                   f"{diff:.3g} (> {COMPILE_TOLERANCE}) on {len(Xm)} assembled rows")
        compiled[name] = diff

    items = []
    _step("ranking feeds")
    cold = int(known_users.max()) + 1 if known is not None else 1
    for user in ((known,) if known is not None else ()) + (cold,):
        request = FeedRequest(request_id=f"bundle-check-{user}", user_id=int(user), k=10, candidate_count=max(10, n),
                              exclude_item_ids=np.zeros(0, np.int64), device="mobile", country=None, hour=12,
                              day_of_week=2, ts_us=now_us)
        try:
            result = pipeline.rank(request, arm="check", timer=StageTimer(), deadline=None)
        except Exception as exc:  # noqa: BLE001
            raise BundleCheckError(f"ranking a feed for user {user} failed: {type(exc).__name__}: {exc}") from exc
        scores = [it.score for it in result.items] + [it.p_purchase for it in result.items]
        if not result.items or not np.isfinite(scores).all():
            raise BundleCheckError(f"the feed ranked for user {user} is empty or has non-finite scores")
        items.append(len(result.items))
    return {"compiled": compiled, "rows": int(len(X)), "items": items,
            "seconds": round(time.perf_counter() - start, 3)}


def _step(what: str) -> None:
    """Say on stderr what is loaded next: when native code kills the process, the parent names it."""
    print(f"{_STEP_PREFIX}{what}", file=sys.stderr, flush=True)


def _load(what: str, load: Any) -> Any:
    try:
        return load()
    except Exception as exc:  # noqa: BLE001 - any failure to load refuses the bundle, with its reason
        raise BundleCheckError(f"{what} does not load: {type(exc).__name__}: {exc}") from exc


def check_bundle_isolated(bundle_dir: str | os.PathLike[str], *,
                          timeout_seconds: float = _DEFAULT_TIMEOUT_SECONDS) -> dict[str, Any]:
    """:func:`check_bundle` in a child process; returns its report.

    Raises
    ------
    BundleCheckError
        The child reported a failure, died of a signal (the native error's last lines of
        stderr are quoted), or did not finish within ``timeout_seconds``.
    """
    root = Path(bundle_dir).resolve()
    try:
        done = subprocess.run([sys.executable, "-m", "serving.bundle_check", str(root)], capture_output=True,
                              encoding="utf-8", errors="replace", timeout=timeout_seconds,
                              env={**os.environ, _PARENT_ENV: str(os.getpid())})
    except subprocess.TimeoutExpired:
        raise BundleCheckError(f"loading {root} did not finish within {timeout_seconds:g} s") from None
    result = None
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_RESULT_PREFIX):
            result = json.loads(line[len(_RESULT_PREFIX):])
            break
    if done.returncode == 0 and result is not None and result.get("ok"):
        return result["report"]
    if result is not None and result.get("error"):
        raise BundleCheckError(result["error"])
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    steps = [i for i, line in enumerate(lines) if line.startswith(_STEP_PREFIX)]
    what = lines[steps[-1]][len(_STEP_PREFIX):] if steps else "the bundle"
    said = list(dict.fromkeys(lines[steps[-1] + 1:] if steps else lines))  # native errors repeat themselves
    tail = " | ".join(line[:200] for line in said[-3:]) or "no message"
    if done.returncode < 0:
        raise BundleCheckError(f"{what} killed the checking process with {signal.Signals(-done.returncode).name} "
                               f"({tail})")
    raise BundleCheckError(f"{what} failed to load (exit code {done.returncode}: {tail})")


def ensure_checked(bundle_dir: str | os.PathLike[str], *, timeout_seconds: float = _DEFAULT_TIMEOUT_SECONDS) -> None:
    """Verify the files of a downloaded bundle and, unless this folder passed before, check it in a child.

    The first pass writes :data:`CHECKED_MARKER` with the files' digest, so the other serving
    processes on this host (and restarts) verify the checksums only.

    Raises
    ------
    BundleError
        No checksums recorded, or a file changed (:func:`serving.bundle.verify_files`).
    BundleCheckError
        The child check failed.
    """
    root = Path(bundle_dir)
    manifest = read_bundle_manifest(root)
    verify_files(root, manifest)
    digest = files_digest(manifest.files)
    marker = root / CHECKED_MARKER
    try:
        if marker.read_text().strip() == digest:
            return
    except FileNotFoundError:
        pass
    check_bundle_isolated(root, timeout_seconds=timeout_seconds)
    # one temporary name per process *and* thread: replicas in one process check the same folder at once
    tmp = root / f"{CHECKED_MARKER}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_text(digest + "\n")
    os.replace(tmp, marker)


def _main(argv: list[str]) -> int:
    if os.environ.get(_PARENT_ENV):  # started by check_bundle_isolated: end with it
        die_with_parent(signal.SIGKILL, parent_pid=int(os.environ[_PARENT_ENV]))
    if len(argv) != 1 or not (Path(argv[0]) / MANIFEST_NAME).is_file():
        print(f"usage: python -m serving.bundle_check BUNDLE_DIR (a folder with {MANIFEST_NAME})", file=sys.stderr)
        return 2
    import warnings

    warnings.simplefilter("ignore")  # the report says what matters; LightGBM's fallback warnings are noise here
    try:
        report = check_bundle(argv[0])
    except BundleError as exc:
        print(_RESULT_PREFIX + json.dumps({"ok": False, "error": str(exc)}), flush=True)
        return 1
    except Exception as exc:  # noqa: BLE001 - reported to the parent as the reason
        print(_RESULT_PREFIX + json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(_RESULT_PREFIX + json.dumps({"ok": True, "report": report}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
