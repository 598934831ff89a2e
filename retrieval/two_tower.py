"""The two-tower retriever: user-tower vector -> FAISS over item vectors, popularity for the rest.

A user is *warm* when the user state holds at least one interaction of theirs; warm users get
the nearest items by inner product (out-of-stock items are filtered inside FAISS), and
whatever FAISS cannot deliver (fewer results, -1 ids, excluded items) is padded from
popularity and re-scored by the model, so each row stays in model-score order. Cold and
unknown users get popularity by context segment.

Importing this module imports torch and faiss.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import torch

from retrieval.config import RetrievalConfig
from retrieval.index import ItemIndex
from retrieval.inputs import ItemCatalog, UserHistory, UserState, item_id_rows
from retrieval.logs import EventLog
from retrieval.model import TwoTowerModel, user_batch
from retrieval.popularity import SegmentPopularity
from retrieval.retriever import RequestContext, Retriever, _Requests
from retrieval.train import FittedTwoTower, embed_items, torch_settings

__all__ = ["TwoTowerRetriever", "catalog_is_content_less"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _TowerRequests(_Requests):
    vectors: np.ndarray  # (n, D); rows of cold users are unused
    warm: np.ndarray  # (n,) bool


class TwoTowerRetriever(Retriever):
    """Candidates from the two-tower model and a FAISS index.

    Parameters
    ----------
    model : TwoTowerModel
    catalog : ItemCatalog
    item_vectors : ndarray of float32, shape (len(catalog), D)
        Row r is the vector of ``catalog.item_ids[r]``.
    index : ItemIndex
        Over ``item_vectors`` (ids = catalog rows).
    popularity : SegmentPopularity
    users : UserState
    config : RetrievalConfig
    trained_item_ids, trained_user_ids : ndarray of int64, sorted
        Ids whose id embeddings were trained (others use content only).
    metadata : dict, optional
        Training window, metrics and the like, saved with the artifacts.
    """

    def __init__(self, *, model: TwoTowerModel, catalog: ItemCatalog, item_vectors: np.ndarray, index: ItemIndex,
                 popularity: SegmentPopularity, users: UserState, config: RetrievalConfig,
                 trained_item_ids: np.ndarray, trained_user_ids: np.ndarray,
                 metadata: dict[str, Any] | None = None) -> None:
        super().__init__(catalog=catalog, popularity=popularity, users=users, config=config.serving)
        if item_vectors.shape[0] != len(catalog) or index.ntotal != len(catalog):
            raise ValueError(f"item_vectors ({item_vectors.shape[0]}) and index ({index.ntotal}) must have one row per "
                             f"catalog item ({len(catalog)})")
        self.state = users  # the same object as ``users``, typed as present
        self.model = model
        self.item_vectors = item_vectors
        self.index = index
        self.retrieval_config = config
        self.trained_item_ids = np.asarray(trained_item_ids, dtype=np.int64)
        self.trained_user_ids = np.asarray(trained_user_ids, dtype=np.int64)
        self.metadata = dict(metadata or {})
        self._trained_items = item_id_rows(catalog.item_ids, self.trained_item_ids)
        # In a catalog without item content (one category, one seller, one price band) the items
        # without an own vector would all get one shared vector: they are left out of the search and
        # reached through the popularity fallback instead, after the model's candidates.
        self.content_less = catalog_is_content_less(catalog)
        self._searchable = self._eligible & ((self._trained_items >= 0) | (not self.content_less))

    @classmethod
    def from_fitted(cls, fitted: FittedTwoTower, log: EventLog, *, as_of_us: int | None = None,
                    index_kind: str | None = None) -> TwoTowerRetriever:
        """Embed the catalog and snapshot users and popularity as of ``as_of_us`` (default: the end of training).

        ``index_kind`` ("exact", "hnsw", "ivf") overrides the choice by catalog size.
        """
        config = fitted.config
        as_of = fitted.window.train_end_us if as_of_us is None else int(as_of_us)
        history = fitted.history if as_of == fitted.window.train_end_us else UserHistory(
            log, fitted.catalog, config.model, end_us=as_of)
        users = history.state_at(as_of)
        popularity = SegmentPopularity.fit(log, devices=history.devices, hour_bands=config.model.hour_bands,
                                           config=config.serving, end_us=as_of)
        trained = item_id_rows(fitted.catalog.item_ids, fitted.trained_item_ids)
        with torch_settings(config.training.num_threads):
            vectors = embed_items(fitted.model, fitted.catalog, as_of, trained)
        index = ItemIndex.build(vectors, config.index, kind=index_kind, seed=config.training.seed)
        window = fitted.window
        metadata = {
            "training_window": {"train_start_us": window.train_start_us,
                                "validation_start_us": window.validation_start_us,
                                "train_end_us": window.train_end_us},
            "as_of_us": as_of,
            "training": {"examples": fitted.n_examples, "best_epoch": fitted.best_epoch,
                         "validation_recall": fitted.validation_recall,
                         "examples_per_second": fitted.examples_per_second,
                         "epochs": [dataclasses.asdict(e) for e in fitted.epochs]},
        }
        return cls(model=fitted.model, catalog=fitted.catalog, item_vectors=vectors, index=index,
                   popularity=popularity, users=users, config=config, trained_item_ids=fitted.trained_item_ids,
                   trained_user_ids=fitted.trained_user_ids, metadata=metadata)._calibrate_index()

    @property
    def searchable(self) -> np.ndarray:
        """Catalog rows the index search may return (bool per row): in stock, and with an own vector
        in a content-less catalog."""
        return self._searchable

    def with_index(self, index: ItemIndex) -> TwoTowerRetriever:
        """The same retriever searching ``index`` (e.g. exact search, for comparison)."""
        return TwoTowerRetriever(model=self.model, catalog=self.catalog, item_vectors=self.item_vectors, index=index,
                                 popularity=self.popularity, users=self.state, config=self.retrieval_config,
                                 trained_item_ids=self.trained_item_ids, trained_user_ids=self.trained_user_ids,
                                 metadata=self.metadata)

    def with_catalog(self, catalog: ItemCatalog, *, as_of_us: int, index_kind: str | None = None) -> TwoTowerRetriever:
        """Re-embed a new catalog (new items get content-only vectors) and rebuild the index."""
        trained = item_id_rows(catalog.item_ids, self.trained_item_ids)
        with torch_settings(self.retrieval_config.training.num_threads):
            vectors = embed_items(self.model, catalog, as_of_us, trained)
        index = ItemIndex.build(vectors, self.retrieval_config.index, kind=index_kind,
                                seed=self.retrieval_config.training.seed)
        return TwoTowerRetriever(model=self.model, catalog=catalog, item_vectors=vectors, index=index,
                                 popularity=self.popularity, users=self.state, config=self.retrieval_config,
                                 trained_item_ids=self.trained_item_ids, trained_user_ids=self.trained_user_ids,
                                 metadata={**self.metadata, "as_of_us": int(as_of_us)})._calibrate_index()

    def _calibrate_index(self) -> TwoTowerRetriever:
        """Make an approximate index find ``index.target_recall`` of the exact top K for a seeded
        sample of the snapshot's warm users, or fall back to one that does (IVF, then exact search:
        :meth:`~retrieval.index.ItemIndex.keep_promise`); the settings kept go into this retriever's
        config (and so into its saved artifact), the measurements into ``metadata["index_calibration"]``."""
        cfg = self.retrieval_config
        if self.index.kind == "exact" or cfg.index.target_recall <= 0:
            return self
        ids = np.asarray(self.state.user_ids, dtype=np.int64)
        n = min(len(ids), cfg.index.calibration_queries)
        sample = np.sort(np.random.default_rng(cfg.training.seed).choice(ids, n, replace=False)) if n else ids
        vectors, warm = self.user_vectors(sample)
        self.index, measured = self.index.keep_promise(self.item_vectors, vectors[warm], cfg.serving.k,
                                                       seed=cfg.training.seed, allowed=self._searchable)
        if measured:
            self.retrieval_config = dataclasses.replace(cfg, index=self.index.config)
            self.metadata["index_calibration"] = measured
        return self

    def user_vectors(self, user_ids: np.ndarray, context: RequestContext | None = None) -> tuple[np.ndarray, np.ndarray]:
        """User-tower vectors (float32, shape (n, D)) and whether each user is warm (bool, shape (n,))."""
        requests = self._requests(np.asarray(user_ids, dtype=np.int64), context)
        return requests.vectors, requests.warm

    def _requests(self, ids: np.ndarray, context: RequestContext | None) -> _TowerRequests:
        base = super()._requests(ids, context)
        users = self.state
        warm = (base.codes >= 0)
        warm[warm] = users.history_count[base.codes[warm]] > 0
        dim = self.item_vectors.shape[1]
        vectors = np.zeros((len(ids), dim), dtype=np.float32)
        if warm.any():
            codes = base.codes[warm]
            inputs = users.inputs(codes, self.catalog, self.retrieval_config.model, device=base.devices[warm],
                                  hours=np.maximum(base.hours[warm], 0))
            batch = user_batch(inputs, self.catalog, self.retrieval_config.model, self._trained_items,
                               np.isin(users.user_ids[codes], self.trained_user_ids))
            if self.model.training:  # eval() walks every module: ~40 us a request when already in eval mode
                self.model.eval()
            with _inference(self.retrieval_config.training.num_threads):
                vectors[warm] = self.model.user_vectors(batch).numpy()
        return _TowerRequests(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)}, vectors=vectors,
                              warm=warm)

    def _candidates(self, requests: _Requests, n_fetch: int) -> tuple[np.ndarray, np.ndarray]:
        assert isinstance(requests, _TowerRequests)
        n = len(requests.user_ids)
        rows = np.full((n, n_fetch), -1, dtype=np.int64)
        scores = np.zeros((n, n_fetch), dtype=np.float32)
        warm = np.flatnonzero(requests.warm)
        if len(warm):
            found_scores, found_rows = self.index.search(requests.vectors[warm], n_fetch, allowed=self._searchable)
            rows[warm], scores[warm] = found_rows, found_scores
        return rows, scores

    def _pad_scores(self, i: int, requests: _Requests, rows: np.ndarray) -> np.ndarray | None:
        assert isinstance(requests, _TowerRequests)
        if not requests.warm[i]:
            return None
        scores = self.item_vectors[rows] @ requests.vectors[i]
        blind = ~self._searchable[rows]  # no vector of their own: popularity order, below the model's picks
        scores[blind] = -2.0 - np.arange(int(blind.sum()), dtype=np.float32) / max(len(rows), 1)
        return scores


def catalog_is_content_less(catalog: ItemCatalog) -> bool:
    """True when no item content tells items apart: one category, one seller and one price band."""
    return all(len(np.unique(values)) <= 1 for values in (catalog.category_ids, catalog.seller_ids,
                                                           catalog.price_band))


def _inference(num_threads: int) -> torch.inference_mode:
    """Per-request inference: no autograd, no RNG (the tower is in eval mode), and the thread
    count set only when it differs. Unlike :func:`torch_settings` it touches no process-wide
    state per call: a server's concurrent requests would otherwise race on it (each call set
    and restored the thread count, deterministic mode and the RNG state around 1 ms of work)."""
    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    return torch.inference_mode()
