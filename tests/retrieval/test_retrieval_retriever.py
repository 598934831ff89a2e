"""The retriever contract: K unique servable ids per user, whatever the user, catalog or index does."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from retrieval import (
    HistoryRetriever,
    ItemCatalog,
    PopularityRetriever,
    RequestContext,
    RetrievalConfig,
    SegmentPopularity,
    UserHistory,
)
from tests.retrieval.helpers import HOUR, T0

UNKNOWN = np.array([10**9, 10**9 + 1], dtype=np.int64)


@pytest.fixture(scope="module")
def retrievers(small_retriever, small_log, small_split):
    tt = small_retriever
    serving = tt.retrieval_config.serving
    pop = PopularityRetriever(catalog=tt.catalog, popularity=tt.popularity, users=tt.state, config=serving)
    hist = HistoryRetriever.from_log(small_log, as_of_us=small_split, catalog=tt.catalog, popularity=tt.popularity,
                                     users=tt.state, config=serving)
    return {"two_tower": tt, "popularity": pop, "history": hist}


@pytest.fixture(scope="module")
def users(small_retriever):
    state = small_retriever.state
    warm = state.user_ids[state.history_count > 0][:40]
    cold = state.user_ids[state.history_count == 0][:5]
    return np.concatenate([warm, cold, UNKNOWN])


def _assert_servable(retriever, ids, scores, user_ids, k, exclude=None):
    catalog = retriever.catalog
    assert ids.shape == (len(user_ids), k) and scores.shape == ids.shape
    assert np.isfinite(scores).all()
    rows = catalog.rows(ids.ravel()).reshape(ids.shape)
    assert (rows >= 0).all(), "every id is a catalog id (never -1)"
    assert catalog.in_stock[rows].all(), "out-of-stock items are never returned"
    for i, u in enumerate(user_ids):
        assert len(np.unique(ids[i])) == k, "ids are unique within a row"
        code = retriever.users.codes(np.array([u]))[0]
        if code >= 0 and retriever.config.exclude_purchased:
            assert not np.isin(ids[i], retriever.users.purchased(code)).any(), "purchased items are excluded"
        if exclude is not None:
            assert not np.isin(ids[i], exclude[i]).any(), "the caller's exclusions are honoured"


@pytest.mark.parametrize("name", ["two_tower", "popularity", "history"])
def test_every_user_gets_k_unique_servable_ids(name, retrievers, users):
    retriever = retrievers[name]
    context = RequestContext(device=["mobile", "desktop", None] * (len(users) // 3) + ["tablet"] * (len(users) % 3),
                             hour=np.arange(len(users)) % 24)
    ids, scores = retriever.recommend(users, context, k=200)
    _assert_servable(retriever, ids, scores, users, 200)
    assert (np.diff(scores[:len(users) - 7], axis=1) <= 1e-6).all() or name == "history"


@pytest.mark.parametrize("name", ["two_tower", "popularity", "history"])
def test_exclusions_are_honoured(name, retrievers, users):
    retriever = retrievers[name]
    first, _ = retriever.recommend(users, k=50)
    exclude = [row[:10] for row in first]
    ids, scores = retriever.recommend(users, k=50, exclude=exclude)
    _assert_servable(retriever, ids, scores, users, 50, exclude=exclude)


def test_purchased_items_are_excluded_for_buyers(small_retriever):
    state = small_retriever.state
    buyers = np.flatnonzero(np.diff(state.purchased_indptr) > 0)
    assert len(buyers) > 5
    user_ids = state.user_ids[buyers]
    ids, _ = small_retriever.recommend(user_ids, k=300)
    for i, code in enumerate(buyers):
        assert not np.isin(ids[i], state.purchased(code)).any()


def test_unknown_users_get_popularity_of_their_context_segment(retrievers):
    tt, pop = retrievers["two_tower"], retrievers["popularity"]
    contexts = [RequestContext(device="mobile", hour=20), RequestContext(device="desktop", hour=10),
                RequestContext(device="tablet", hour=3), RequestContext()]
    lists = []
    for ctx in contexts:
        ids, scores = tt.recommend(UNKNOWN[:1], ctx, k=100)
        expected, expected_scores = pop.recommend(UNKNOWN[:1], ctx, k=100)
        np.testing.assert_array_equal(ids, expected)
        np.testing.assert_allclose(scores, expected_scores)
        lists.append(ids[0])
    assert any(not np.array_equal(lists[0], other) for other in lists[1:]), "segments differ"


class ShortIndex:
    """Wraps an index and drops results: only the first ``keep`` of each row survive, the rest are -1,
    and the second slot repeats the first (a fault FAISS can show with IVF/HNSW and selectors)."""

    def __init__(self, inner, keep: int) -> None:
        self.inner, self.keep = inner, keep
        self.kind, self.config = inner.kind, inner.config

    @property
    def ntotal(self) -> int:
        return self.inner.ntotal

    def search(self, queries, k, *, allowed=None):
        scores, rows = self.inner.search(queries, k, allowed=allowed)
        rows = rows.copy()
        rows[:, self.keep:] = -1
        rows[:, 1] = rows[:, 0]
        return scores, rows


def test_faiss_short_results_are_padded_from_popularity(small_retriever, users):
    short = small_retriever.with_index(ShortIndex(small_retriever.index, keep=7))
    warm = users[:40]
    ids, scores = short.recommend(warm, k=150)
    _assert_servable(short, ids, scores, warm, 150)
    full, _ = small_retriever.recommend(warm, k=150)
    catalog, state = small_retriever.catalog, small_retriever.state
    kept = short.index.search(small_retriever.user_vectors(warm)[0], 7, allowed=catalog.in_stock)[1]
    for i, code in enumerate(state.codes(warm)):
        survivors = np.setdiff1d(catalog.item_ids[kept[i][kept[i] >= 0]], state.purchased(code))
        assert np.isin(survivors, ids[i]).all(), "FAISS's own results are kept"
    assert (np.diff(scores, axis=1) <= 1e-6).all(), "padded items are scored by the model and merged in order"
    assert not np.array_equal(ids, full)


def test_tiny_catalog_returns_every_servable_item(small_retriever, retrievers, users, caplog):
    catalog = small_retriever.catalog
    keep = np.arange(30)
    tiny = ItemCatalog(**{f: getattr(catalog, f)[keep] for f in catalog.__dataclass_fields__})
    tiny = ItemCatalog(**{**tiny.__dict__, "in_stock": np.where(np.arange(30) == 3, False, True)})
    tt = small_retriever.with_catalog(tiny, as_of_us=small_retriever.state.as_of_us)
    pop = PopularityRetriever(catalog=tiny, popularity=small_retriever.popularity, users=small_retriever.state,
                              config=small_retriever.config)
    for retriever in (tt, pop):
        with caplog.at_level(logging.WARNING):
            ids, scores = retriever.recommend(users, k=500)
        assert "exceeds the servable catalog" in caplog.text
        # 29 items are in stock; the most restricted user also loses the items they bought.
        bought = [np.isin(tiny.item_ids, retriever.users.purchased(c)).sum() if c >= 0 else 0
                  for c in retriever.users.codes(users)]
        k_out = 29 - max(bought)
        _assert_servable(retriever, ids, scores, users, k_out)
        ids, scores = retriever.recommend(users, k=10)
        _assert_servable(retriever, ids, scores, users, 10)


def test_brand_new_items_get_content_vectors_and_can_be_retrieved(small_retriever, users):
    catalog = small_retriever.catalog
    as_of = small_retriever.state.as_of_us
    source = np.argsort(-small_retriever.item_vectors @ small_retriever.user_vectors(users[:1])[0][0])[:3]
    new_ids = catalog.item_ids.max() + 1 + np.arange(6)
    clone = np.repeat(source, 2)  # two new items per source item, identical content
    fields = {f: np.concatenate([getattr(catalog, f), getattr(catalog, f)[clone]]) for f in catalog.__dataclass_fields__}
    fields["item_ids"] = np.concatenate([catalog.item_ids, new_ids])
    fields["item_created_us"] = np.concatenate([catalog.item_created_us, np.full(6, as_of - HOUR)])
    fields["in_stock"] = np.concatenate([catalog.in_stock, np.ones(6, bool)])
    bigger = ItemCatalog(**fields)
    tt = small_retriever.with_catalog(bigger, as_of_us=as_of)
    vec = tt.item_vectors[bigger.rows(new_ids)]
    assert np.isfinite(vec).all()
    np.testing.assert_allclose(vec[0::2], vec[1::2], atol=1e-6)  # the id does not matter: content alone
    ids, scores = tt.recommend(users, k=300)
    _assert_servable(tt, ids, scores, users, 300)
    assert not np.isin(new_ids, tt.trained_item_ids).any()
    # They are in the index: with everything else excluded, FAISS itself returns them, model-scored.
    others = [np.setdiff1d(bigger.item_ids, new_ids)] * len(users)
    ids, scores = tt.recommend(users, k=6, exclude=others)
    _assert_servable(tt, ids, scores, users, 6, exclude=others)
    warm = tt.user_vectors(users)[1]
    for i in np.flatnonzero(warm):
        assert set(ids[i]) == set(new_ids)
        np.testing.assert_allclose(np.sort(scores[i]), np.sort(tt.item_vectors[bigger.rows(ids[i])]
                                                               @ tt.user_vectors(users[i:i + 1])[0][0]), atol=1e-5)


def test_history_and_popularity_known_answers(tiny_log):
    config = RetrievalConfig()
    catalog = ItemCatalog.from_log(tiny_log, config.model)
    history = UserHistory(tiny_log, catalog, config.model)
    state = history.state_at(T0 + 10 * HOUR)
    popularity = SegmentPopularity.fit(tiny_log, devices=history.devices, hour_bands=config.model.hour_bands,
                                       config=config.serving, end_us=T0 + 10 * HOUR)
    hist = HistoryRetriever.from_log(tiny_log, as_of_us=T0 + 10 * HOUR, catalog=catalog, popularity=popularity,
                                     users=state, config=config.serving)
    ids, scores = hist.recommend(1, k=4)
    # User 1: 100 bought (excluded), 104 and 101 clicked once each (104 more recent); then popularity: 105.
    assert ids[0].tolist()[:3] == [104, 101, 105]
    pop = PopularityRetriever(catalog=catalog, popularity=popularity, users=None, config=config.serving)
    ids, scores = pop.recommend([1, 2], k=11)
    # Weights click 1, purchase 4: 100 scores 5; 101, 104, 105 score 1 (ties by id); then the rest of the
    # catalog (no events) by recency, then id; 111 is out of stock. Without a user state nothing is excluded.
    expected = [100, 101, 104, 105, 102, 103, 106, 107, 108, 109, 110]
    assert ids.tolist() == [expected, expected]
    assert scores[0].tolist()[:5] == [5.0, 1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"user_ids": np.array([1.5])}, TypeError, "user_ids must be integers"),
    ({"user_ids": np.zeros((2, 2), np.int64)}, ValueError, "one-dimensional"),
    ({"user_ids": True}, TypeError, "user_ids"),
    ({"k": 0}, ValueError, "k must be >= 1"),
    ({"k": "5"}, TypeError, "k must be an int"),
    ({"exclude": [[1]]}, ValueError, "one item-id list per user"),
    ({"exclude": "abc"}, TypeError, "exclude must be"),
    ({"exclude": [["x"], [1]]}, TypeError, r"exclude\[0\]"),
    ({"context": {"hour": 3}}, TypeError, "context must be a RequestContext"),
    ({"context": RequestContext(hour=25)}, ValueError, "context.hour must be in"),
    ({"context": RequestContext(device=["mobile"])}, ValueError, "context.device must have one value per user"),
])
def test_invalid_arguments_name_the_argument(retrievers, kwargs, error, match):
    call = {"user_ids": np.array([1, 2]), **kwargs}
    with pytest.raises(error, match=match):
        retrievers["two_tower"].recommend(call.pop("user_ids"), **call)
