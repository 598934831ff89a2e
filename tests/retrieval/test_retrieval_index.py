"""The FAISS index: choice by size, recall against exact search, allowed rows, short results."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval import IndexConfig
from retrieval.index import ItemIndex, ann_recall_score


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return _unit(rng, 10_000, 32), _unit(rng, 100, 32)


def test_ann_recall_at_configured_parameters_is_at_least_095_on_random_vectors(vectors):
    items, queries = vectors
    config = IndexConfig(exact_threshold=1_000)  # force the configured ANN kind at this size
    ann = ItemIndex.build(items, config)
    assert ann.kind == config.ann
    exact = ItemIndex.build(items, config, kind="exact")
    for k in (100, 500):
        recall = ann_recall_score(ann.search(queries, k)[1], exact.search(queries, k)[1])
        assert recall >= 0.95, (k, recall)


def test_exact_search_matches_numpy(vectors):
    items, queries = vectors
    index = ItemIndex.build(items, IndexConfig())
    assert index.kind == "exact" and index.ntotal == len(items) and index.dim == 32
    scores, rows = index.search(queries[:5], 10)
    truth = np.argsort(-(queries[:5] @ items.T), axis=1)[:, :10]
    np.testing.assert_array_equal(rows, truth)
    np.testing.assert_allclose(scores, np.take_along_axis(queries[:5] @ items.T, truth, axis=1), rtol=1e-5)


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_allowed_rows_and_short_results(kind, vectors):
    items, queries = vectors
    index = ItemIndex.build(items[:2_000], IndexConfig(), kind=kind)
    allowed = np.zeros(2_000, dtype=bool)
    allowed[::7] = True
    _, rows = index.search(queries[:3], 50, allowed=allowed)
    found = rows[rows >= 0]
    assert len(found) and allowed[found].all()
    _, rows = index.search(queries[:3], 2_500)  # more than the index holds: FAISS pads with -1
    assert (rows == -1).any() and rows.shape == (3, 2_500)


def test_ann_recall_score_known_answers():
    exact = np.array([[1, 2, 3, 4], [5, 6, -1, -1]])
    approx = np.array([[4, 3, 9, 9], [6, 5, 7, 8]])
    assert ann_recall_score(approx, exact) == pytest.approx((0.5 + 1.0) / 2)
    with pytest.raises(ValueError, match="same number of queries"):
        ann_recall_score(approx[:1], exact)


@pytest.mark.parametrize(("vectors_", "kind", "match"), [
    (np.zeros(5, np.float32), None, "shape"),
    (np.full((3, 2), np.nan, np.float32), None, "finite"),
    (np.zeros((3, 2), np.float32), "lsh", "kind must be one of"),
])
def test_build_rejects_bad_input(vectors_, kind, match):
    with pytest.raises(ValueError, match=match):
        ItemIndex.build(vectors_, IndexConfig(), kind=kind)


def test_save_and_load_round_trip(tmp_path, vectors):
    items, queries = vectors
    index = ItemIndex.build(items[:3_000], IndexConfig(), kind="hnsw")
    index.save(tmp_path / "i.faiss")
    loaded = ItemIndex.load(tmp_path / "i.faiss", "hnsw", IndexConfig())
    np.testing.assert_array_equal(index.search(queries, 20)[1], loaded.search(queries, 20)[1])


def test_hnsw_calibration_raises_the_beam_until_the_target_recall():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(40, 16))
    x = centers[rng.integers(0, 40, 20_000)] + 0.25 * rng.normal(size=(20_000, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q = x[rng.choice(len(x), 150, replace=False)] + 0.1 * rng.normal(size=(150, 16)).astype(np.float32)
    k = 50
    exact = np.argsort(-(q @ x.T), axis=1)[:, :k]
    # a deliberately weak graph and beam: the configured search misses much of the exact top k
    config = IndexConfig(exact_threshold=0, hnsw_m=8, hnsw_ef_construction=32, hnsw_ef_search=1, target_recall=0.97)
    index = ItemIndex.build(x, config, kind="hnsw")
    before = ann_recall_score(index.search(q, k)[1], exact)
    measured = index.calibrate(x, q, k)
    after = ann_recall_score(index.search(q, k)[1], exact)
    assert before < 0.97 <= measured["ann_recall"]
    assert after == pytest.approx(measured["ann_recall"])
    assert index.config.hnsw_ef_search == measured["ef_search"] > k
    # exact and IVF indexes, and a target of 0, are left alone
    assert ItemIndex.build(x, config, kind="exact").calibrate(x, q, k) == {}
    untouched = ItemIndex.build(x, IndexConfig(hnsw_ef_search=64, target_recall=0.0), kind="hnsw")
    assert untouched.calibrate(x, q, k) == {} and untouched.config.hnsw_ef_search == 64


def test_an_index_that_cannot_keep_the_target_recall_falls_back_and_says_so(caplog):
    # Random 64-d directions and a graph of degree 2: HNSW cannot find 0.99 of the exact top 10
    # within 8x its beam, so the builder falls back (IVF with a calibrated nprobe, or exact search).
    rng = np.random.default_rng(4)
    x = rng.normal(size=(20_000, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q = rng.normal(size=(100, 64)).astype(np.float32)
    k = 10
    config = IndexConfig(exact_threshold=0, hnsw_m=2, hnsw_ef_construction=8, hnsw_ef_search=1, target_recall=0.99,
                         ivf_nprobe=1)
    index = ItemIndex.build(x, config, kind="hnsw")
    with caplog.at_level("WARNING", logger="retrieval.index"):
        kept, record = index.keep_promise(x, q, k)
    hnsw = [t for t in record["tried"] if t["kind"] == "hnsw"]
    assert 1 <= len(hnsw) <= 7 and max(t["recall"] for t in hnsw) < 0.99
    assert record["requested"] == "hnsw" and record["kind"] == kept.kind in ("ivf", "exact")
    assert "hnsw reached recall" in record["fallback"] and "falling back" in caplog.text
    exact = np.argsort(-(q @ x.T), axis=1)[:, :k]
    recall = ann_recall_score(kept.search(q, k)[1], exact)
    assert recall == pytest.approx(record["ann_recall"]) and recall >= 0.99
    assert record["ms_per_query"] > 0 and record["exact_ms_per_query"] > 0
    if kept.kind == "ivf":
        assert kept.config.ivf_nprobe == record["nprobe"] and [t for t in record["tried"] if t["kind"] == "ivf"]
    # an index that keeps the promise stays as it is, and an exact one is not measured at all
    good = ItemIndex.build(x[:2_000], IndexConfig(exact_threshold=0, target_recall=0.5), kind="hnsw")
    assert ItemIndex.build(x, config, kind="exact").keep_promise(x, q, k)[1] == {}
    assert good.keep_promise(x[:2_000], q, k)[0].kind in ("hnsw", "ivf", "exact")
