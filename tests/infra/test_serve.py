"""``infra.serve.RolloutWatcher``: a serving process follows the rollout state file on its own."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from infra.rollout_state import STATE_FILE
from infra.serve import RolloutWatcher
from serving.router import ModelVersions, Router, RouterState


class _Arm:
    versions = ModelVersions("1", "1", "1")


class _Loads:
    """A router loader that counts its calls and fails while ``failing`` is set (fault injection)."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False

    def __call__(self) -> RouterState:
        self.calls += 1
        if self.failing:
            raise OSError("registry unreachable")
        return RouterState(champion=_Arm(), challenger=None, challenger_share=0.0, salt="s")


def _write_state(state_dir: Path, text: str) -> None:
    tmp = state_dir / ".state.tmp"
    tmp.write_text(text)
    tmp.replace(state_dir / STATE_FILE)  # as the controller writes it: a new file renamed over the old


def test_the_watcher_reloads_when_the_state_file_changes_and_retries_a_failed_reload(tmp_path: Path) -> None:
    loads = _Loads()
    router = Router(loads)
    watcher = RolloutWatcher(router, tmp_path, interval_seconds=0.05)
    assert not watcher.check() and loads.calls == 1  # no rollout yet: nothing to reload

    _write_state(tmp_path, '{"share": 0.05}')
    assert watcher.check() and loads.calls == 2
    assert not watcher.check() and loads.calls == 2  # unchanged

    _write_state(tmp_path, '{"share": 0.25}')
    loads.failing = True
    assert not watcher.check() and loads.calls == 3  # failed: the current arms keep serving
    loads.failing = False
    assert watcher.check() and loads.calls == 4 and watcher.reloads == 2  # retried at the next poll

    watcher.start()
    try:
        _write_state(tmp_path, '{"share": 0.5}')
        deadline = time.monotonic() + 10.0
        while loads.calls < 5:
            assert time.monotonic() < deadline, "the watcher thread did not reload within 10 s"
            time.sleep(0.02)
    finally:
        watcher.close()
    assert not any(t.name == "rollout-watcher" for t in threading.enumerate())
    with pytest.raises(ValueError, match="interval_seconds"):
        RolloutWatcher(router, tmp_path, interval_seconds=0)
