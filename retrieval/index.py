"""FAISS inner-product index over item vectors, chosen by catalog size.

Below ``IndexConfig.exact_threshold`` items the index is exact (``IndexFlatIP``); above it,
HNSW (``IndexHNSWFlat``) or IVF (``IndexIVFFlat``) with the configured parameters. Rows of
the index are catalog rows. Searches may be restricted to allowed rows (out-of-stock items
are left out inside FAISS, with an ``IDSelectorBitmap``); FAISS answers -1 where it finds
fewer than k results, and the caller pads.

Importing this module imports faiss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np

from retrieval.config import IndexConfig

__all__ = ["INDEX_KINDS", "ItemIndex", "ann_recall_score", "faiss_threads"]

logger = logging.getLogger(__name__)

INDEX_KINDS: tuple[str, ...] = ("exact", "hnsw", "ivf")


@contextlib.contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """Run a block with ``faiss.omp_set_num_threads(n)``, restoring the previous count after."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


class ItemIndex:
    """A FAISS index whose ids are catalog rows.

    Parameters
    ----------
    index : faiss.Index
    kind : {"exact", "hnsw", "ivf"}
    config : IndexConfig
        Search parameters (``hnsw_ef_search``, ``ivf_nprobe``, ``faiss_threads``).

    Use :meth:`build` or :meth:`load` rather than the constructor.
    """

    def __init__(self, index: Any, kind: str, config: IndexConfig) -> None:
        if kind not in INDEX_KINDS:
            raise ValueError(f"kind must be one of {list(INDEX_KINDS)}, got {kind!r}")
        self.index = index
        self.kind = kind
        self.config = config

    @classmethod
    def build(cls, vectors: np.ndarray, config: IndexConfig, *, kind: str | None = None, seed: int = 0) -> ItemIndex:
        """Index ``vectors`` (float32, shape (n, d)); ``kind`` overrides the choice by size.

        Raises
        ------
        ValueError
            ``vectors`` is not a finite 2-D array, or ``kind`` is unknown.
        """
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] < 1:
            raise ValueError(f"vectors must have shape (n_items, dim), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("vectors must be finite")
        n, d = x.shape
        if kind is None:
            kind = "exact" if n < config.exact_threshold else config.ann
        if kind not in INDEX_KINDS:
            raise ValueError(f"kind must be one of {list(INDEX_KINDS)}, got {kind!r}")
        index: Any
        with faiss_threads(os.cpu_count() or 1):
            if kind == "exact":
                index = faiss.IndexFlatIP(d)
            elif kind == "hnsw":
                index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efConstruction = config.hnsw_ef_construction
            else:
                nlist = config.ivf_nlist or max(1, int(4 * math.sqrt(n)))
                nlist = max(1, min(nlist, n // 39 or 1))
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
                sample = x
                if n > 256 * nlist:
                    sample = x[np.sort(np.random.default_rng(seed).choice(n, 256 * nlist, replace=False))]
                index.cp.seed = seed
                index.train(sample)
            if n:
                index.add(x)
        logger.info("built %s index over %d items of dim %d", kind, n, d)
        return cls(index, kind, config)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by inner product.

        Parameters
        ----------
        queries : ndarray of float32, shape (n, d)
        k : int
        allowed : ndarray of bool, shape (ntotal,), optional
            Only these rows may be returned.

        Returns
        -------
        scores : ndarray of float32, shape (n, k)
        rows : ndarray of int64, shape (n, k)
            -1 where fewer than ``k`` rows were found.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = int(k)
        if k < 1 or len(q) == 0 or self.ntotal == 0:
            return np.zeros((len(q), max(k, 0)), np.float32), np.full((len(q), max(k, 0)), -1, np.int64)
        fx: Any = faiss  # the SWIG wrappers' keyword constructors are not in faiss's type stubs
        sel = None
        if allowed is not None and not allowed.all():
            sel = fx.IDSelectorBitmap(np.packbits(np.asarray(allowed, dtype=bool), bitorder="little"))
        if self.kind == "hnsw":
            params = fx.SearchParametersHNSW(efSearch=max(self.config.hnsw_ef_search, k), sel=sel)
        elif self.kind == "ivf":
            params = fx.SearchParametersIVF(nprobe=self.config.ivf_nprobe, sel=sel)
        else:
            params = fx.SearchParameters(sel=sel)
        with faiss_threads(self.config.faiss_threads):
            scores, rows = self.index.search(q, k, params=params)
        return scores, rows.astype(np.int64)

    def calibrate(self, vectors: np.ndarray, queries: np.ndarray, k: int) -> dict[str, Any]:
        """Raise an HNSW index's search beam until its recall@k against exact search of ``queries``
        reaches ``config.target_recall``; returns what was measured (empty when not calibrated).

        ``vectors`` are the indexed vectors (for the exact answers). Beams tried: the configured
        one (at least k), then 1.5x, 2x, 3x, 4x, 6x and 8x it; the first that reaches the target is
        kept in ``config.hnsw_ef_search``, else the widest (with a warning).
        """
        target = self.config.target_recall
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.kind != "hnsw" or target <= 0 or len(q) == 0 or self.ntotal == 0:
            return {}
        k = min(int(k), self.ntotal)
        # exact answers from an exact index (faiss searches it in blocks: no queries x items matrix)
        exact = ItemIndex.build(vectors, self.config, kind="exact").search(q, k)[1]
        base = max(self.config.hnsw_ef_search, k)
        recall, ef = float("nan"), base
        for factor in (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0):
            ef = int(base * factor)
            self.config = dataclasses.replace(self.config, hnsw_ef_search=ef)
            recall = ann_recall_score(self.search(q, k)[1], exact)
            if recall >= target:
                break
        else:
            logger.warning("HNSW recall@%d reaches only %.3f at efSearch %d (target %.2f)", k, recall, ef, target)
        logger.info("HNSW efSearch %d: recall@%d %.4f against exact search (%d queries; target %.2f)", ef, k, recall,
                    len(q), target)
        return {"ef_search": ef, "ann_recall": recall, "k": k, "queries": len(q), "target_recall": target}

    def keep_promise(self, vectors: np.ndarray, queries: np.ndarray, k: int, *, seed: int = 0,
                     allowed: np.ndarray | None = None) -> tuple[ItemIndex, dict[str, Any]]:
        """This index, calibrated to ``config.target_recall``, or the fallback that keeps it.

        ``vectors`` are the indexed vectors (for the exact answers and a fallback's build);
        ``allowed`` (bool per row) restricts every search, as serving restricts it. An
        approximate index must find at least ``target_recall`` of the exact top ``k`` of
        ``queries`` and be faster than exact search, or it is replaced:

        1. HNSW: the search beam is raised as in :meth:`calibrate` (up to 8x the configured one,
           and no further once a search takes longer than exact search: the budget);
        2. if HNSW misses the target (or is slower than exact search), IVF with ``nprobe`` doubled
           from ``ivf_nprobe`` up to ``nlist`` until it reaches the target (same budget);
        3. if IVF misses too (or is slower, or needs every list), exact search: at this size
           nothing approximate keeps the promise.

        Each step is logged, and a fallback with a warning. Exact indexes and ``target_recall``
        0 are returned unchanged (with an empty record). This index's search settings may change.

        Returns
        -------
        index : ItemIndex
        record : dict
            ``requested`` and chosen ``kind``, its ``ann_recall`` and ``ms_per_query``, the exact
            search's ``exact_ms_per_query``, every setting ``tried`` (kind, parameter, recall,
            ms per query), ``fallback`` (why, or None), ``k``, ``queries``, ``target_recall``.
        """
        cls, index, config = type(self), self, self.config
        q = np.ascontiguousarray(queries, dtype=np.float32)
        target = config.target_recall
        if index.kind == "exact" or target <= 0 or len(q) == 0 or index.ntotal == 0:
            return index, {}
        k = min(int(k), index.ntotal)
        exact = cls.build(vectors, config, kind="exact")
        exact_rows, exact_ms = _timed_search(exact, q, k, allowed)
        tried: list[dict[str, Any]] = []

        def measure(candidate: ItemIndex, parameter: str, value: int) -> tuple[float, float]:
            rows, ms = _timed_search(candidate, q, k, allowed)
            recall = ann_recall_score(rows, exact_rows)
            tried.append({"kind": candidate.kind, parameter: value, "recall": round(recall, 4),
                          "ms_per_query": round(ms, 4)})
            logger.info("%s %s %d: recall@%d %.4f, %.3f ms per query (exact %.3f ms; target %.2f)", candidate.kind,
                        parameter, value, k, recall, ms, exact_ms, target)
            return recall, ms

        requested, reasons = index.kind, []
        if index.kind == "hnsw":
            base = max(config.hnsw_ef_search, k)
            for factor in (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0):
                index.config = dataclasses.replace(index.config, hnsw_ef_search=int(base * factor))
                recall, ms = measure(index, "ef_search", index.config.hnsw_ef_search)
                if recall >= target or ms > exact_ms:  # a wider beam is only slower than exact search
                    break
            if recall >= target and ms <= exact_ms:
                return index, _record(requested, index, recall, ms, exact_ms, tried, None, k, len(q), target)
            reasons.append(f"hnsw reached recall {recall:.3f} at efSearch {index.config.hnsw_ef_search} "
                           f"({ms:.3f} ms per query, exact {exact_ms:.3f} ms)")
            index = cls.build(vectors, config, kind="ivf", seed=seed)
        nlist = int(index.index.nlist)
        nprobe = min(config.ivf_nprobe, nlist)
        while True:
            index.config = dataclasses.replace(index.config, ivf_nprobe=nprobe)
            recall, ms = measure(index, "nprobe", nprobe)
            if recall >= target or nprobe >= nlist or ms > exact_ms:
                break
            nprobe = min(2 * nprobe, nlist)
        if recall >= target and ms <= exact_ms and nprobe < nlist:  # every list probed is exact search, slower
            reason = "; ".join(reasons) or None
            if reason:
                logger.warning("%s: falling back to IVF (nprobe %d, recall %.3f)", reason, nprobe, recall)
            return index, _record(requested, index, recall, ms, exact_ms, tried, reason, k, len(q), target)
        reasons.append(f"ivf reached recall {recall:.3f} at nprobe {nprobe} of {nlist} ({ms:.3f} ms per query, "
                       f"exact {exact_ms:.3f} ms)")
        reason = "; ".join(reasons)
        logger.warning("%s: falling back to exact search over %d items", reason, exact.ntotal)
        return exact, _record(requested, exact, 1.0, exact_ms, exact_ms, tried, reason, k, len(q), target)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index with ``faiss.write_index``."""
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str], kind: str, config: IndexConfig) -> ItemIndex:
        """Read an index written by :meth:`save`."""
        return cls(faiss.read_index(str(path)), kind, config)


def _timed_search(index: ItemIndex, queries: np.ndarray, k: int,
                  allowed: np.ndarray | None) -> tuple[np.ndarray, float]:
    """Rows found for ``queries`` and the mean milliseconds per query (searched one by one, as served)."""
    rows = np.empty((len(queries), k), dtype=np.int64)
    t0 = time.perf_counter()
    for i in range(len(queries)):
        rows[i] = index.search(queries[i:i + 1], k, allowed=allowed)[1][0]
    return rows, (time.perf_counter() - t0) / len(queries) * 1e3


def _record(requested: str, index: ItemIndex, recall: float, ms: float, exact_ms: float, tried: list,
            fallback: str | None, k: int, queries: int, target: float) -> dict[str, Any]:
    params = {"hnsw": {"ef_search": index.config.hnsw_ef_search}, "ivf": {"nprobe": index.config.ivf_nprobe,
                                                                         "nlist": int(getattr(index.index, "nlist", 0))},
              "exact": {}}[index.kind]
    return {"requested": requested, "kind": index.kind, **params, "ann_recall": recall, "ms_per_query": round(ms, 4),
            "exact_ms_per_query": round(exact_ms, 4), "tried": tried, "fallback": fallback, "k": k,
            "queries": queries, "target_recall": target}


def ann_recall_score(approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean share of each query's exact top-k that the approximate top-k also found.

    Parameters
    ----------
    approx_rows, exact_rows : ndarray of int64, shape (n, k)
        -1 entries (no result) of ``exact_rows`` are not counted.
    """
    approx = np.asarray(approx_rows)
    exact = np.asarray(exact_rows)
    if approx.shape[0] != exact.shape[0]:
        raise ValueError(f"approx_rows and exact_rows must have the same number of queries, "
                         f"got {approx.shape[0]} and {exact.shape[0]}")
    shares = []
    for a, e in zip(approx, exact, strict=True):
        e = e[e >= 0]
        if len(e):
            shares.append(np.isin(e, a[a >= 0]).mean())
    return float(np.mean(shares)) if shares else float("nan")
