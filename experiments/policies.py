"""Ranking policies that face the simulated buyers, and the logged history they learn from.

A :class:`RankingPolicy` is anything with a ``name`` and a ``serve(requests, available, rng)``
method returning item ids by position. Two baselines ship here:

- :class:`PopularityPolicy` -- the same feed for everybody: the most popular available items.
- :class:`HistoryAffinityPolicy` -- personalised from logged history: the buyer's category
  affinities (from their events before the experiment) times each item's popularity share
  within its category.

and :class:`PipelinePolicy` puts the full system in front of the buyers: every request goes
through a serving pipeline (``serving.model_pipeline.ModelPipeline`` loaded from a trained feed
bundle: retrieval, features, ranker, calibrated E[GMV], re-ranking, exploration).

Policies never see the simulator's latent truth (tastes, quality); what they know comes from
logs (:class:`LogHistory`) or, for :meth:`PopularityPolicy.from_simulator`, from the incumbent
logging policy's own popularity score.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from features.contract import EVENT_TYPES
from features.popularity import POPULARITY_EVENT_WEIGHTS, check_event_weights, log_popularity
from features.popularity import event_weights as weights_of_events

if TYPE_CHECKING:
    from experiments.simulator import MarketplaceSimulator, Requests
    from serving.exploration import ExplorationConfig
    from serving.pipeline import PipelineBase
    from serving.rerank import RerankConfig

__all__ = [
    "DEFAULT_EVENT_WEIGHTS",
    "HistoryAffinityPolicy",
    "LogHistory",
    "OraclePolicy",
    "PipelinePolicy",
    "PopularityPolicy",
    "RankingPolicy",
    "RealtimeUsers",
]

# How much one event says about interest: a purchase more than a cart, a cart more than a click.
# The popularity weights (click 1, add-to-cart 2, purchase 4), defined once in features.popularity.
DEFAULT_EVENT_WEIGHTS: Mapping[str, float] = POPULARITY_EVENT_WEIGHTS
# Requests scored at once by HistoryAffinityPolicy (bounds its memory to ~rows x categories x K).
_SERVE_BLOCK = 2048


@runtime_checkable
class RankingPolicy(Protocol):
    """A ranking policy: turns a batch of feed requests into ranked feeds.

    Attributes
    ----------
    name : str
        Logged in ``impressions.policy`` (a model version); read-only.
    """

    @property
    def name(self) -> str:
        """Policy name (model version) logged with every impression it serves."""
        ...

    def serve(self, requests: Requests, available: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Rank items for each request.

        Parameters
        ----------
        requests : experiments.simulator.Requests
            ``R`` feed requests (user, time, device).
        available : ndarray of bool, shape (n_items,)
            Items that may be shown (listed and in stock), indexed by item id.
        rng : numpy.random.Generator
            Randomness for stochastic policies (deterministic ones ignore it).

        Returns
        -------
        ndarray of int64, shape (R, K)
            Item ids by 0-based position; ``-1`` marks an empty slot.
        """
        ...


def _check_feed_length(feed_length: int) -> None:
    if isinstance(feed_length, bool) or not isinstance(feed_length, (int, np.integer)):
        raise TypeError(f"feed_length must be an int, got {type(feed_length).__name__}")
    if not 1 <= feed_length <= 255:
        raise ValueError(f"feed_length must be in [1, 255], got {feed_length}")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")


def _check_available(available: np.ndarray, n_items: int) -> np.ndarray:
    mask = np.asarray(available)
    if mask.dtype != np.bool_ or mask.shape != (n_items,):
        raise ValueError(f"available must be a bool array of shape ({n_items},), got {mask.dtype} {mask.shape}")
    return mask


# ------------------------------------------------------------------------------ history


@dataclass(frozen=True, eq=False)
class LogHistory:
    """Logged behaviour a policy may learn from: events and the item catalog.

    Attributes
    ----------
    events : pandas.DataFrame
        Contract ``events`` rows (at least ``user_id, item_id, type``); organic events
        (null ``impression_id``) count as history too.
    items : pandas.DataFrame
        Contract ``items`` rows (at least ``item_id, category_id``); item ids must be
        ``0 .. n_items - 1`` (dense), as the ``available`` masks of :class:`RankingPolicy` are.
    log_dir : str, optional
        The folder of contract tables the history was read from (set by :meth:`from_logs`), so
        a policy that needs the full logs (a trained model) can :meth:`export_logs` them.
    before : pandas.Timestamp, optional
        The cut-off: only rows strictly before it belong to the history (UTC).
    """

    events: pd.DataFrame
    items: pd.DataFrame
    log_dir: str | None = None
    before: pd.Timestamp | None = None

    def __post_init__(self) -> None:
        for arg, frame, cols in (("events", self.events, ("user_id", "item_id", "type")),
                                 ("items", self.items, ("item_id", "category_id"))):
            if not isinstance(frame, pd.DataFrame):
                raise TypeError(f"{arg} must be a pandas DataFrame, got {type(frame).__name__}")
            missing = [c for c in cols if c not in frame.columns]
            if missing:
                raise ValueError(f"{arg} must have columns {list(cols)}, missing {missing}")
        ids = self.items["item_id"].to_numpy()
        if len(ids) == 0 or not np.array_equal(np.sort(ids), np.arange(len(ids))):
            raise ValueError(f"items.item_id must be the dense ids 0..n_items-1, got {len(ids)} rows "
                             f"with ids in [{ids.min() if len(ids) else None}, {ids.max() if len(ids) else None}]")
        unknown = ~self.events["type"].isin(EVENT_TYPES)
        if unknown.any():
            raise ValueError(f"events.type must be one of {list(EVENT_TYPES)}, "
                             f"got {sorted(self.events.loc[unknown, 'type'].unique())[:5]}")
        bad_items = (self.events["item_id"] < 0) | (self.events["item_id"] >= len(ids))
        if bad_items.any():
            raise ValueError(f"events.item_id must be in [0, {len(ids)}), got {int(bad_items.sum())} rows outside")
        object.__setattr__(self, "before", _utc(self.before))
        if self.log_dir is not None:
            object.__setattr__(self, "log_dir", os.fspath(self.log_dir))

    @property
    def n_items(self) -> int:
        """Catalog size."""
        return len(self.items)

    @property
    def item_category(self) -> np.ndarray:
        """Category id of each item, indexed by item id (int64, shape (n_items,))."""
        out = np.empty(self.n_items, dtype=np.int64)
        out[self.items["item_id"].to_numpy()] = self.items["category_id"].to_numpy()
        return out

    @classmethod
    def from_logs(cls, log_dir: str | os.PathLike[str], *, before: pd.Timestamp | None = None) -> LogHistory:
        """Read the events (strictly before ``before`` when given) and items under ``log_dir``.

        Parameters
        ----------
        log_dir : path
            A folder with the contract tables ``events/`` and ``items/`` (Parquet).
        before : pandas.Timestamp, optional
            Keep only events with ``ts < before`` (tz-aware UTC, or naive meaning UTC).

        Raises
        ------
        FileNotFoundError
            If a table folder is missing.
        """
        root = Path(log_dir)
        for table in ("events", "items"):
            if not (root / table).is_dir():
                raise FileNotFoundError(f"{root / table} not found: log_dir must hold contract tables")
        events = ds.dataset(root / "events", format="parquet")
        ts = _utc(before)
        filt = None if ts is None else pc.field("ts") < ts.to_pydatetime()
        ev = events.to_table(columns=["ts", "user_id", "item_id", "type", "impression_id", "quantity",
                                      "price_paid"], filter=filt).to_pandas()
        items = ds.dataset(root / "items", format="parquet").to_table(
            columns=["item_id", "seller_id", "category_id", "price", "created_ts"]).to_pandas()
        return cls(events=ev, items=items, log_dir=str(root), before=ts)

    def export_logs(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write the history as contract logs: the five tables, facts strictly before ``before``.

        ``users``, ``sellers`` and ``items`` are copied; ``impressions`` and ``events`` keep the
        rows with ``ts < before`` and only the contract's columns (an A/B's ``arm`` column is
        dropped), one Parquet file each. This is what a model of the full system is trained
        on: the logs as they stood when the experiment started.

        Parameters
        ----------
        out_dir : path
            Output folder (created; must not hold the tables already).

        Returns
        -------
        pathlib.Path
            ``out_dir``.

        Raises
        ------
        ValueError
            If the history was not read by :meth:`from_logs` (no ``log_dir``).
        FileExistsError
            If ``out_dir`` already holds one of the tables.
        """
        from features.contract import TABLE_ORDER, arrow_schema

        if self.log_dir is None:
            raise ValueError("log_dir is None: only a history read by LogHistory.from_logs can export its logs")
        src, out = Path(self.log_dir), Path(out_dir)
        for table in TABLE_ORDER:
            if (out / table).exists():
                raise FileExistsError(f"{out / table} exists: out_dir must not hold contract tables already")
        for table in TABLE_ORDER:
            schema = arrow_schema(table)
            dataset = ds.dataset(src / table, format="parquet")
            filt = None
            if self.before is not None and table in ("impressions", "events"):
                filt = pc.field("ts") < self.before.to_pydatetime()
            data = dataset.to_table(columns=schema.names, filter=filt)
            (out / table).mkdir(parents=True)
            pq.write_table(data, out / table / "part-00000.parquet")
        return out

    def weighted_counts(self, key: str, weights: Mapping[str, float]) -> pd.Series:
        """Sum of event weights per value of ``key`` (``"item_id"`` or ``"user_id"``).

        ``weights`` maps event types to weights (types it leaves out weigh 0); see
        :func:`features.popularity.event_weights`.
        """
        w = weights_of_events(self.events["type"].to_numpy(), weights)
        return pd.Series(w).groupby(self.events[key].to_numpy()).sum()


def _utc(value: pd.Timestamp | str | None) -> pd.Timestamp | None:
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")


# ------------------------------------------------------------------------------ popularity


@dataclass(frozen=True, eq=False)
class PopularityPolicy:
    """Non-personalised: every request gets the ``feed_length`` available items of highest score.

    Ties are broken by lower item id, so the policy is deterministic (``rng`` is unused).

    Parameters
    ----------
    item_score : ndarray of float, shape (n_items,)
        Popularity of each item (any monotone scale; log-popularity by convention), finite.
    feed_length : int, default=20
        Items per feed, in [1, 255].
    name : str, default="popularity-v1"
        Policy name for the logs.
    """

    item_score: np.ndarray
    feed_length: int = 20
    name: str = "popularity-v1"

    def __post_init__(self) -> None:
        score = np.asarray(self.item_score, dtype=np.float64)
        if score.ndim != 1 or score.size == 0 or not np.all(np.isfinite(score)):
            raise ValueError(f"item_score must be a non-empty finite 1-D array, got shape {score.shape}")
        object.__setattr__(self, "item_score", score)
        _check_feed_length(self.feed_length)
        _check_name(self.name)

    @classmethod
    def from_simulator(cls, simulator: MarketplaceSimulator, *, feed_length: int | None = None,
                       name: str = "popularity-v1") -> PopularityPolicy:
        """The simulator's logging policy without its noise and exploration.

        Ranks by ``world.item_log_popularity``, the incumbent's historical-sales score (what
        the logging policy knows; it correlates with, but is not, the buyers' truth).
        ``feed_length`` defaults to the simulator's.
        """
        length = simulator.config.feed_length if feed_length is None else feed_length
        return cls(item_score=simulator.world.item_log_popularity, feed_length=length, name=name)

    @classmethod
    def from_history(cls, history: LogHistory, *, feed_length: int = 20, name: str = "popularity-logs-v1",
                     event_weights: Mapping[str, float] = DEFAULT_EVENT_WEIGHTS,
                     prior: float = 1.0) -> PopularityPolicy:
        """Popularity from logged counts: ``score_i = log(prior + sum of event weights on item i)``.

        The weights and the formula are :mod:`features.popularity`'s (the one definition the
        retrieval fallback and the serving snapshot also count with).

        Parameters
        ----------
        history : LogHistory
        feed_length : int, default=20
        name : str, default="popularity-logs-v1"
        event_weights : mapping of event type to weight, default click 1, add_to_cart 2, purchase 4
        prior : float, default=1.0
            Pseudo-count every item starts with, ``> 0`` (items never seen score ``log(prior)``).
        """
        if not isinstance(history, LogHistory):
            raise TypeError(f"history must be a LogHistory, got {type(history).__name__}")
        weights = check_event_weights(event_weights)
        if not np.isfinite(prior) or prior <= 0:
            raise ValueError(f"prior must be a finite number > 0, got {prior}")
        counts = np.zeros(history.n_items)
        per_item = history.weighted_counts("item_id", weights)
        counts[per_item.index.to_numpy(dtype=np.int64)] = per_item.to_numpy()
        return cls(item_score=log_popularity(counts, prior), feed_length=feed_length, name=name)

    def serve(self, requests: Requests, available: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The same top ``feed_length`` available items for every request (see :class:`RankingPolicy`)."""
        mask = _check_available(available, self.item_score.size)
        feed = self._top(mask)
        return np.broadcast_to(feed, (len(requests), self.feed_length)).copy()

    def _top(self, mask: np.ndarray) -> np.ndarray:
        ids = np.flatnonzero(mask)
        order = np.lexsort((ids, -self.item_score[ids]))[: self.feed_length]
        feed = np.full(self.feed_length, -1, dtype=np.int64)
        feed[: order.size] = ids[order]
        return feed


# ------------------------------------------------------------------------------ personalised


@dataclass(frozen=True, eq=False)
class HistoryAffinityPolicy:
    """Personalised from history: ``score(u, i) = log a_u(c_i) + log P(i | c_i)``.

    ``a_u(c)`` is buyer ``u``'s affinity to category ``c``, from the weighted events of their
    history shrunk towards the population's category shares ``s(c)``::

        a_u(c) = (n_u(c) + m * s(c)) / (n_u + m)

    (``n_u(c)``: weighted events of ``u`` on items of ``c``; ``m``: ``prior_strength``). Buyers
    without history get ``s``. ``P(i | c)`` is item ``i``'s popularity share among the
    *available* items of its category, ``exp(pop_i) / sum_{j in c} exp(pop_j)``. The product
    is the probability of ``i`` under "pick a category by affinity, then an item by
    popularity"; the feed is the ``feed_length`` items of highest score. Serving is
    deterministic (``rng`` is unused); the fitted arrays are read-only in use, and the only
    state kept between calls is a cache of the per-category candidates for the last
    availability mask.

    Parameters
    ----------
    user_ids : ndarray of int64, shape (n_known,)
        Sorted ids of buyers with history.
    log_affinity : ndarray of float, shape (n_known + 1, n_categories)
        ``log a_u(c)`` per known buyer; the last row (``log s``) serves unknown buyers.
    item_category : ndarray of int64, shape (n_items,)
        Category of each item, in ``[0, n_categories)``.
    item_popularity : ndarray of float, shape (n_items,)
        ``pop_i`` (log scale).
    feed_length : int, default=20
    name : str, default="history-affinity-v1"
    """

    user_ids: np.ndarray
    log_affinity: np.ndarray
    item_category: np.ndarray
    item_popularity: np.ndarray
    feed_length: int = 20
    name: str = "history-affinity-v1"
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        users = np.asarray(self.user_ids, dtype=np.int64)
        aff = np.asarray(self.log_affinity, dtype=np.float64)
        cat = np.asarray(self.item_category, dtype=np.int64)
        pop = np.asarray(self.item_popularity, dtype=np.float64)
        if users.ndim != 1 or np.any(np.diff(users) <= 0):
            raise ValueError("user_ids must be a strictly increasing 1-D array")
        if aff.ndim != 2 or aff.shape[0] != users.size + 1 or not np.all(aff < np.inf) or np.isnan(aff).any():
            raise ValueError(f"log_affinity must have shape (len(user_ids) + 1, n_categories) = ({users.size + 1}, C) "
                             f"with values < inf, got {aff.shape}")
        if cat.ndim != 1 or cat.size == 0 or cat.min() < 0 or cat.max() >= aff.shape[1]:
            raise ValueError(f"item_category must be a non-empty 1-D array in [0, {aff.shape[1]})")
        if pop.shape != cat.shape or not np.all(np.isfinite(pop)):
            raise ValueError(f"item_popularity must be finite with the shape of item_category {cat.shape}")
        for name, value in (("user_ids", users), ("log_affinity", aff), ("item_category", cat),
                            ("item_popularity", pop)):
            object.__setattr__(self, name, value)
        _check_feed_length(self.feed_length)
        _check_name(self.name)

    @classmethod
    def from_history(cls, history: LogHistory, *, popularity: PopularityPolicy | None = None,
                     feed_length: int = 20, name: str = "history-affinity-v1",
                     event_weights: Mapping[str, float] = DEFAULT_EVENT_WEIGHTS,
                     prior_strength: float = 2.0) -> HistoryAffinityPolicy:
        """Learn category affinities from ``history``.

        Parameters
        ----------
        history : LogHistory
            Events before the experiment and the item catalog.
        popularity : PopularityPolicy, optional
            Source of ``pop_i``; default :meth:`PopularityPolicy.from_history` on the same
            history (so the policy is built only from logs).
        feed_length : int, default=20
        name : str, default="history-affinity-v1"
        event_weights : mapping of event type to weight, default click 1, add_to_cart 2, purchase 4
        prior_strength : float, default=2.0
            ``m``: pseudo-events of the population's category mix added to every buyer, ``> 0``.
        """
        if not isinstance(history, LogHistory):
            raise TypeError(f"history must be a LogHistory, got {type(history).__name__}")
        weights = check_event_weights(event_weights)
        if not np.isfinite(prior_strength) or prior_strength <= 0:
            raise ValueError(f"prior_strength must be a finite number > 0, got {prior_strength}")
        if popularity is None:
            popularity = PopularityPolicy.from_history(history, feed_length=feed_length, event_weights=weights)
        elif not isinstance(popularity, PopularityPolicy):
            raise TypeError(f"popularity must be a PopularityPolicy, got {type(popularity).__name__}")
        if popularity.item_score.size != history.n_items:
            raise ValueError(f"popularity must score the history's {history.n_items} items, "
                             f"got {popularity.item_score.size}")
        item_cat = history.item_category
        n_cat = int(item_cat.max()) + 1
        ev = history.events
        w = weights_of_events(ev["type"].to_numpy(), weights)
        users, codes = np.unique(ev["user_id"].to_numpy(dtype=np.int64), return_inverse=True)
        counts = np.zeros((users.size, n_cat))
        np.add.at(counts, (codes, item_cat[ev["item_id"].to_numpy(dtype=np.int64)]), w)
        total = counts.sum(axis=0)
        # Population shares, themselves smoothed so no category has zero affinity.
        share = (total + 1.0) / (total.sum() + n_cat)
        aff = (counts + prior_strength * share) / (counts.sum(axis=1, keepdims=True) + prior_strength)
        log_aff = np.log(np.vstack([aff, share[None, :]]))
        return cls(user_ids=users, log_affinity=log_aff, item_category=item_cat,
                   item_popularity=popularity.item_score, feed_length=feed_length, name=name)

    def _candidates(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per category, the ``feed_length`` best available items and their ``log P(i | c)``.

        Returns ``(ids, log_p)`` of shape (n_categories, feed_length); empty slots are
        ``-1`` / ``-inf``. Cached per availability mask (it changes once a day).
        """
        hit = self._cache.get("candidates")
        if hit is not None and np.array_equal(hit[0], mask):
            return hit[1], hit[2]
        n_cat, k = self.log_affinity.shape[1], self.feed_length
        ids = np.flatnonzero(mask)
        cat, pop = self.item_category[ids], self.item_popularity[ids]
        peak = np.full(n_cat, -np.inf)
        np.maximum.at(peak, cat, pop)
        norm = np.bincount(cat, weights=np.exp(pop - peak[cat]), minlength=n_cat)
        log_norm = np.full(n_cat, -np.inf)
        log_norm[norm > 0] = np.log(norm[norm > 0]) + peak[norm > 0]
        order = np.lexsort((ids, -pop, cat))
        cat_sorted = cat[order]
        starts = np.searchsorted(cat_sorted, np.arange(n_cat))
        rank = np.arange(order.size) - starts[cat_sorted]
        keep = rank < k
        cand = np.full((n_cat, k), -1, dtype=np.int64)
        log_p = np.full((n_cat, k), -np.inf)
        sel = order[keep]
        cand[cat_sorted[keep], rank[keep]] = ids[sel]
        log_p[cat_sorted[keep], rank[keep]] = pop[sel] - log_norm[cat[sel]]
        self._cache["candidates"] = (mask.copy(), cand, log_p)
        return cand, log_p

    def serve(self, requests: Requests, available: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Feeds ranked by ``log a_u(c_i) + log P(i | c_i)`` (see :class:`RankingPolicy`)."""
        mask = _check_available(available, self.item_category.size)
        cand, log_p = self._candidates(mask)
        flat_ids, flat_lp = cand.reshape(-1), log_p.reshape(-1)
        cat_of_slot = np.repeat(np.arange(cand.shape[0]), cand.shape[1])
        k = self.feed_length
        n_known = self.user_ids.size
        pos = np.searchsorted(self.user_ids, requests.user_id)
        known = np.zeros(len(requests), dtype=bool)
        inside = pos < n_known
        known[inside] = self.user_ids[pos[inside]] == requests.user_id[inside]
        rows = np.where(known, pos, n_known)
        out = np.full((len(requests), k), -1, dtype=np.int64)
        n_slots = flat_ids.size
        take = min(k, n_slots)
        for lo in range(0, len(requests), _SERVE_BLOCK):
            aff = self.log_affinity[rows[lo: lo + _SERVE_BLOCK]]
            score = aff[:, cat_of_slot] + flat_lp[None, :]
            # Score descending, then item id ascending among the chosen.
            top = np.argpartition(-score, take - 1, axis=1)[:, :take] if take < n_slots else \
                np.broadcast_to(np.arange(n_slots), (score.shape[0], n_slots))
            top_score = np.take_along_axis(score, top, axis=1)
            top_ids = flat_ids[top]
            order = np.lexsort((top_ids, -top_score), axis=1)
            feed = np.take_along_axis(top_ids, order, axis=1)
            feed = np.where(np.isfinite(np.take_along_axis(top_score, order, axis=1)), feed, -1)
            out[lo: lo + feed.shape[0], :take] = feed
        return out


# ------------------------------------------------------------------------------ the oracle


class OraclePolicy:
    """The headroom: each buyer's ``feed_length`` available items of highest true value.

    ``value(u, i, context) = P(purchase | examined; u, i, device, hour) * price_i`` from the
    simulator's truth (:meth:`~experiments.simulator.MarketplaceSimulator.purchase_probability`);
    under the position-based buyer model, sorting by it maximises the feed's expected GMV (the
    examination curve decreases with the slot). Truth only: never deployable, it reads the
    latent tastes a real marketplace does not have.

    Parameters
    ----------
    simulator : MarketplaceSimulator
    feed_length : int, optional
        Default the simulator's.
    name : str, default="oracle"
    block : int, default=256
        Requests scored at once (memory ~ block x available items x 8 bytes, several arrays).
    """

    def __init__(self, simulator: MarketplaceSimulator, *, feed_length: int | None = None, name: str = "oracle",
                 block: int = 256) -> None:
        self.simulator = simulator
        self.feed_length = simulator.config.feed_length if feed_length is None else int(feed_length)
        _check_feed_length(self.feed_length)
        _check_name(name)
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self._name = name
        self.block = int(block)

    @property
    def name(self) -> str:
        return self._name

    def true_values(self, requests: Requests, item_ids: np.ndarray) -> np.ndarray:
        """True ``P(purchase | examined) * price`` of ``item_ids`` (shape (R, M)) for each request, shape (R, M)."""
        sim = self.simulator
        items = np.asarray(item_ids, dtype=np.int64)
        r = np.repeat(np.arange(len(requests)), items.shape[1])
        p = sim.purchase_probability(requests.user_id[r], items.reshape(-1), devices=requests.device[r],
                                     hours=requests.hour[r])
        return (p * sim.world.item_price[items.reshape(-1)]).reshape(items.shape)

    def serve(self, requests: Requests, available: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Top ``feed_length`` available items by true value (see :class:`RankingPolicy`)."""
        mask = _check_available(available, self.simulator.world.n_items)
        ids = np.flatnonzero(mask)
        k = min(self.feed_length, ids.size)
        out = np.full((len(requests), self.feed_length), -1, dtype=np.int64)
        for lo in range(0, len(requests), self.block):
            reqs = requests.take(slice(lo, lo + self.block))
            value = self.true_values(reqs, np.broadcast_to(ids, (len(reqs), ids.size)))
            top = np.argpartition(-value, k - 1, axis=1)[:, :k] if k < ids.size else \
                np.broadcast_to(np.arange(ids.size), value.shape).copy()
            order = np.argsort(-np.take_along_axis(value, top, axis=1), axis=1, kind="stable")
            out[lo: lo + len(reqs), :k] = ids[np.take_along_axis(top, order, axis=1)]
        return out


# ------------------------------------------------------------------------------ the full system

class RealtimeUsers:
    """User rows with the intraday (``user_realtime``) row the stream consumer would hold.

    Wraps a pipeline's user source (snapshot rows) and adds, for each user, the intraday row
    of :func:`features.stream.windows.intraday_rows` -- the batch definition the consumer's
    state is tested against -- over the impressions and events logged strictly before
    the time passed to :meth:`advance`. Rows handed to :meth:`add` may lie in the future
    (purchases come days after the impression): they wait until their time has come. The
    last view and last event times are kept over all rows seen; the day's counters need
    only the last 24 hours.

    Parameters
    ----------
    base : serving.features.UserFeatureSource
        Source of the snapshot rows (``user_rows(user_id)``).
    """

    def __init__(self, base) -> None:
        from features.stream.windows import OBS_COLUMNS

        self.base = base
        empty = pd.DataFrame({c: np.empty(0, dtype=np.int64) for c in OBS_COLUMNS})
        self._pending: list[pd.DataFrame] = []
        self._recent = empty
        self._last_view = pd.Series(dtype=np.int64)
        self._last_event = pd.Series(dtype=np.int64)
        self._rows: dict[int, dict[str, float]] = {}
        self.now_us: int | None = None

    def add(self, impressions: pd.DataFrame | None, events: pd.DataFrame | None) -> None:
        """Queue logged rows (contract columns; ``events`` need ``event_id``)."""
        from features.stream.windows import observations

        obs = observations(impressions, events)
        if len(obs):
            self._pending.append(obs)

    def advance(self, now_us: int) -> None:
        """Apply every queued row with ``ts < now_us`` and rebuild the intraday rows."""
        from features.stream.windows import VIEW, intraday_rows

        if self.now_us is not None and now_us <= self.now_us and not self._pending:
            return
        pending = pd.concat(self._pending, ignore_index=True) if self._pending else self._recent.iloc[:0]
        due = pending["ts_us"].to_numpy() < now_us
        self._pending = [pending[~due]] if (~due).any() else []
        applied = pending[due]
        self.now_us = now_us
        if not len(applied) and self._rows:
            return
        view = applied["kind"].to_numpy() == VIEW
        for attr, part in (("_last_view", applied[view]), ("_last_event", applied[~view])):
            latest = part.groupby("user_id")["ts_us"].max()
            current = getattr(self, attr)
            setattr(self, attr, latest if current.empty else
                    pd.concat([current, latest]).groupby(level=0).max())
        recent = pd.concat([self._recent, applied], ignore_index=True)
        self._recent = recent[recent["ts_us"].to_numpy() >= now_us - 86_400_000_000]
        rows = intraday_rows(self._recent) if len(self._recent) else None
        users = self._last_view.index.union(self._last_event.index)
        out: dict[int, dict[str, float]] = {}
        view_at = self._last_view.reindex(users)
        event_at = self._last_event.reindex(users)
        for u, lv, le in zip(users.tolist(), view_at.tolist(), event_at.tolist(), strict=True):
            out[u] = {"rt_day": -1.0, "rt_views": 0.0, "rt_clicks": 0.0, "rt_carts": 0.0, "rt_purchases": 0.0,
                      "rt_last_view_us": float("nan") if pd.isna(lv) else float(lv),
                      "rt_last_event_us": float("nan") if pd.isna(le) else float(le)}
        if rows is not None:
            for u, day, v, c, a, p in zip(rows.index.tolist(), rows["rt_day"].tolist(), rows["rt_views"].tolist(),
                                          rows["rt_clicks"].tolist(), rows["rt_carts"].tolist(),
                                          rows["rt_purchases"].tolist(), strict=True):
                out[u].update(rt_day=float(day), rt_views=float(v), rt_clicks=float(c), rt_carts=float(a),
                              rt_purchases=float(p))
        self._rows = out

    def user_rows(self, user_id: int):
        """``(snapshot_row, intraday_row, fallbacks)`` as :class:`serving.features.UserFeatureSource`."""
        snap, _, fallbacks = self.base.user_rows(user_id)
        return snap, self._rows.get(int(user_id)), fallbacks


# Serving's default candidate count (serving.config.LimitsConfig.default_candidate_count).
_DEFAULT_CANDIDATES = 500


class PipelinePolicy:
    """The full system as a :class:`RankingPolicy`: each request goes through a serving pipeline.

    Every simulated request becomes a ``serving.requests.FeedRequest`` (user, device, hour, day
    of week and time of the request; ``k = feed_length``) and is ranked by
    ``pipeline.rank`` -- the very code path of the gRPC ``RankFeed`` handler after request
    parsing: retrieval, features, scoring, expected GMV, re-ranking and the pipeline's own
    exploration. Items that are not available today are passed as the request's excluded
    items (the catalog the model was trained on may list items the simulator has since taken
    off sale), and the served ids are checked against ``available`` once more; a feed shorter
    than ``feed_length`` is padded with ``-1``. Serving is deterministic: the pipeline's
    exploration draws from the request id, and ``rng`` is unused.

    Parameters
    ----------
    pipeline : serving.pipeline.PipelineBase
        A loaded pipeline (e.g. ``ModelPipeline.from_bundle(...)``; see :meth:`from_bundle`).
    feed_length : int, default=20
        Items per feed (the request's ``k``), in [1, 255].
    candidate_count : int, default=500
        Candidates retrieved per request, ``>= feed_length``.
    name : str, optional
        Policy name for the logs; default the pipeline's ranker version.
    """

    def __init__(self, pipeline: PipelineBase, *, feed_length: int = 20,
                 candidate_count: int = _DEFAULT_CANDIDATES, name: str | None = None) -> None:
        from serving.pipeline import PipelineBase

        if not isinstance(pipeline, PipelineBase):
            raise TypeError(f"pipeline must be a serving PipelineBase, got {type(pipeline).__name__}")
        _check_feed_length(feed_length)
        if isinstance(candidate_count, bool) or not isinstance(candidate_count, (int, np.integer)):
            raise TypeError(f"candidate_count must be an int, got {type(candidate_count).__name__}")
        if candidate_count < feed_length:
            raise ValueError(f"candidate_count must be >= feed_length={feed_length}, got {candidate_count}")
        name = pipeline.versions.ranker if name is None else name
        _check_name(name)
        self.pipeline = pipeline
        self.feed_length = int(feed_length)
        self.candidate_count = int(candidate_count)
        self._name = name
        self._excluded: tuple[np.ndarray, np.ndarray] | None = None  # (mask, ids): last availability
        users = getattr(pipeline, "users", None)
        self._realtime: RealtimeUsers | None = None
        if users is not None:  # a ModelPipeline: serve the intraday rows the stream consumer would hold
            self._realtime = RealtimeUsers(users)
            pipeline.users = self._realtime  # type: ignore[attr-defined]

    def observe(self, impressions: pd.DataFrame, events: pd.DataFrame) -> None:
        """Take logged impressions and events (the live stream) into the real-time user rows.

        They count for requests after their own time, as the stream consumer's intraday row
        (``features.stream``) would: see :class:`RealtimeUsers`.
        """
        if self._realtime is not None:
            self._realtime.add(impressions, events)

    @property
    def name(self) -> str:
        """Policy name (model version) logged with every impression it serves."""
        return self._name

    def __repr__(self) -> str:
        return (f"PipelinePolicy(name={self._name!r}, feed_length={self.feed_length}, "
                f"candidate_count={self.candidate_count})")

    @classmethod
    def from_bundle(cls, bundle_dir: str | os.PathLike[str], *, version: str = "full-system-v1",
                    feed_length: int = 20, candidate_count: int = _DEFAULT_CANDIDATES,
                    rerank: RerankConfig | None = None,
                    exploration: ExplorationConfig | None = None) -> PipelinePolicy:
        """Load a feed bundle (``serving.bundle``) into a ``ModelPipeline`` and wrap it.

        Parameters
        ----------
        bundle_dir : path
            A trained bundle folder (``bundle.json`` and its components).
        version : str, default="full-system-v1"
            Model version: the pipeline's version and the policy's name.
        feed_length, candidate_count : int
            As in the constructor.
        rerank : serving.rerank.RerankConfig, optional
            Re-ranking rules; default serving's defaults.
        exploration : serving.exploration.ExplorationConfig, optional
            Randomized share of the pipeline; default serving's default (2 %).

        Raises
        ------
        serving.bundle.BundleError
            If the folder is not a complete bundle.
        """
        from serving.exploration import ExplorationConfig
        from serving.model_pipeline import ModelPipeline
        from serving.rerank import RerankConfig, Reranker

        pipeline = ModelPipeline.from_bundle(
            Path(bundle_dir), version=version, reranker=Reranker(RerankConfig() if rerank is None else rerank),
            exploration=ExplorationConfig() if exploration is None else exploration)
        return cls(pipeline, feed_length=feed_length, candidate_count=candidate_count, name=version)

    def _unavailable(self, mask: np.ndarray) -> np.ndarray:
        """Catalog ids the pipeline might serve that ``mask`` rules out (cached per mask)."""
        hit = self._excluded
        if hit is not None and np.array_equal(hit[0], mask):
            return hit[1]
        snap = self.pipeline.snapshot
        ids = snap.item_ids[snap.in_stock]
        inside = (ids >= 0) & (ids < mask.size)
        ids = np.sort(np.concatenate([ids[inside][~mask[ids[inside]]], ids[~inside]]))
        self._excluded = (mask.copy(), ids)
        return ids

    def serve(self, requests: Requests, available: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Rank each request through the pipeline (see :class:`RankingPolicy`)."""
        from experiments.simulator.world import DEVICES
        from serving.metrics import StageTimer
        from serving.requests import FeedRequest

        mask = np.asarray(available)
        if mask.dtype != np.bool_ or mask.ndim != 1:
            raise ValueError(f"available must be a 1-D bool array, got {mask.dtype} {mask.shape}")
        excluded = self._unavailable(mask)
        k = self.feed_length
        if self._realtime is not None and len(requests):
            self._realtime.advance(int(requests.ts_us.min()))
        out = np.full((len(requests), k), -1, dtype=np.int64)
        days = requests.ts_us // 86_400_000_000
        dows = (days + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
        hours = requests.hour
        self._begin(requests, mask)
        for r in range(len(requests)):
            request = FeedRequest(
                request_id=str(int(requests.request_id[r])), user_id=int(requests.user_id[r]), k=k,
                candidate_count=self.candidate_count, exclude_item_ids=excluded,
                device=DEVICES[int(requests.device[r])], country=None, hour=int(hours[r]),
                day_of_week=int(dows[r]), ts_us=int(requests.ts_us[r]))
            # pipeline.rank without the impression log: score, re-rank, explore
            scored = self.pipeline.score(request, timer=StageTimer())
            arranged = self.pipeline.arrange(request, scored)
            ids = arranged.candidates.item_ids[arranged.order]
            ok = (ids >= 0) & (ids < mask.size)
            ids = ids[ok][mask[ids[ok]]][:k]
            out[r, : ids.size] = ids
            self._record(r, scored, arranged)
        return out

    def _begin(self, requests: Requests, available: np.ndarray) -> None:
        """Called before a batch is served (a hook for instrumented subclasses)."""

    def _record(self, r: int, scored, arranged) -> None:
        """Called with each request's scores and arrangement (a hook for instrumented subclasses)."""
