"""Champion/challenger routing with hot reload that never fails an in-flight request.

The router holds one immutable :class:`RouterState` (both arms' pipelines, the challenger's
traffic share and the salt). A request reads the state reference once and uses that
snapshot to the end; a reload builds the new pipelines first, off the request path, and
then replaces the reference in one assignment. Old pipelines stay alive for requests that
still hold them and are garbage-collected afterwards.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from serving.metrics import StageTimer
from serving.requests import FeedRequest
from serving.routing import CHALLENGER, CHAMPION, arm_for

__all__ = ["FeedItem", "FeedPipeline", "FeedResult", "ModelVersions", "Router", "RouterState"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelVersions:
    retrieval: str
    ranker: str
    purchase_model: str


@dataclass(frozen=True)
class FeedItem:
    item_id: int
    score: float
    p_purchase: float
    expected_gmv: float
    seller_id: int
    category_id: int
    reasons: tuple[str, ...]
    propensity: float
    explanation: Any = None  # ranking.explain.ItemExplanation when the request asked to explain
    is_new_seller: bool = False


@dataclass(frozen=True)
class FeedResult:
    items: list[FeedItem]
    randomized: bool
    fallbacks: tuple[str, ...]


class FeedPipeline(Protocol):
    """One arm's models composed into a feed: retrieve, assemble features, score, re-rank."""

    versions: ModelVersions

    def rank(self, request: FeedRequest, *, arm: str, timer: StageTimer, deadline: float | None,
             candidates: np.ndarray | None = None) -> FeedResult:
        """Rank a feed for ``request``; ``deadline`` is a ``time.monotonic()`` instant or None;
        ``candidates`` as :meth:`retrieve_many` returned them (None: retrieve now)."""
        ...

    def retrieve_many(self, requests: Sequence[FeedRequest]) -> list[np.ndarray | None]:
        """Candidates of several requests in one batch (None where the pipeline does not batch)."""
        ...


@dataclass(frozen=True)
class RouterState:
    """Both arms' pipelines, the challenger's share and salt.

    ``failures`` says what the loader could not load for this state (e.g. a challenger that
    failed its checks, whose users the champion serves): the state serves, but the reload
    that built it is counted and reported as failed.
    """

    champion: FeedPipeline
    challenger: FeedPipeline | None
    challenger_share: float
    salt: str
    failures: tuple[str, ...] = ()


class Router:
    """Picks each user's arm and pipeline; ``reload()`` swaps in a new state atomically.

    Parameters
    ----------
    loader : callable returning RouterState
        Builds the state (loads models from the registry, reads the rollout share).
    """

    def __init__(self, loader: Callable[[], RouterState]) -> None:
        self._loader = loader
        self._reload_lock = threading.Lock()
        self._listeners: list[Callable[[str], None]] = []
        self._state = loader()

    def add_reload_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(outcome)`` after every reload, ``"ok"`` or ``"failed"`` (it raised, or the
        new state lists ``failures``), whoever asked for it (admin call, rollout watcher)."""
        self._listeners.append(listener)

    def _notify(self, outcome: str) -> None:
        for listener in self._listeners:
            listener(outcome)

    @property
    def state(self) -> RouterState:
        return self._state

    def pick(self, user_id: int) -> tuple[str, FeedPipeline]:
        state = self._state  # one read: the request keeps this snapshot whatever reloads happen
        if state.challenger is not None and arm_for(user_id, state.salt, state.challenger_share) == CHALLENGER:
            return CHALLENGER, state.challenger
        return CHAMPION, state.champion

    def reload(self) -> RouterState:
        """Build a new state with the loader and swap it in; on failure keep the current one and re-raise.

        A state with ``failures`` is swapped in (it serves what did load) and returned; the
        caller reports it.
        """
        with self._reload_lock:
            try:
                new = self._loader()
            except Exception:
                self._notify("failed")
                raise
            self._state = new
            logger.info("router reloaded: champion %s, challenger %s at %.0f%%%s", new.champion.versions,
                        new.challenger.versions if new.challenger else None, 100 * new.challenger_share,
                        f"; not loaded: {'; '.join(new.failures)}" if new.failures else "")
            self._notify("failed" if new.failures else "ok")
            return new
