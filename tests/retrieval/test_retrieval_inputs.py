"""Point-in-time inputs: histories, content and examples use only what happened before."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval import ItemCatalog, RetrievalConfig, UserHistory
from retrieval.inputs import USER_NUMERIC, build_examples, hash_ids
from tests.retrieval.helpers import HOUR, T0

CFG = RetrievalConfig().model


def test_hash_ids_is_stable_in_range_and_salted_by_kind():
    ids = np.arange(1000, dtype=np.int64)
    a = hash_ids(ids, 97, "item")
    assert a.min() >= 0 and a.max() < 97
    np.testing.assert_array_equal(a, hash_ids(ids, 97, "item"))
    assert (a != hash_ids(ids, 97, "user")).mean() > 0.9
    assert len(np.unique(hash_ids(ids, 1 << 20, "item"))) >= 997  # birthday collisions: ~0.5 expected


def test_user_features_use_only_events_strictly_before(tiny_log):
    catalog = ItemCatalog.from_log(tiny_log, CFG)
    history = UserHistory(tiny_log, catalog, CFG)
    code = history.user_codes(np.array([1]))
    # At exactly T0+2h the purchase at T0+2h is not history yet; the click at T0+1h is.
    at = history.inputs_at(code, np.array([T0 + 2 * HOUR]))
    recent = catalog.item_ids[at.recent[0][at.recent[0] >= 0]]
    assert recent.tolist() == [100]
    counts = dict(zip(USER_NUMERIC, at.numeric[0], strict=True))
    assert counts["log_purchases"] == 0 and counts["log_clicks"] == pytest.approx(np.log1p(1) / 5)
    later = history.inputs_at(code, np.array([T0 + 6 * HOUR]))
    assert catalog.item_ids[later.recent[0][later.recent[0] >= 0]].tolist() == [104, 101, 100, 100]
    before_all = history.inputs_at(code, np.array([T0]))
    assert (before_all.recent == -1).all() and before_all.numeric[0, -1] == 0  # has_history = 0


def test_history_end_cuts_off_later_rows(tiny_log):
    catalog = ItemCatalog.from_log(tiny_log, CFG)
    history = UserHistory(tiny_log, catalog, CFG, end_us=T0 + 3 * HOUR)
    state = history.state_at(T0 + 10 * HOUR)
    row = state.codes(np.array([1]))[0]
    assert state.recent_item_ids[row][state.recent_item_ids[row] >= 0].tolist() == [100, 100]
    assert state.purchased(row).tolist() == [100]
    assert state.history_count[state.codes(np.array([3]))[0]] == 0


def test_item_content_is_point_in_time(tiny_log):
    catalog = ItemCatalog.from_log(tiny_log, CFG)
    rows = catalog.rows(np.array([100, 109]))  # seller 10 is old, seller 11 joined at T0 - 1 day
    early = catalog.content(rows, T0 - 2 * 86_400_000_000, CFG)["numeric"]
    now = catalog.content(rows, T0, CFG)["numeric"]
    assert now[:, 0].tolist() == [0.0, 1.0]  # new-seller flag
    assert early[1, 2] < now[1, 2]  # log age grows with time
    assert catalog.rows(np.array([5, 100])).tolist() == [-1, 0]
    bands = catalog.price_band
    assert bands.min() >= 0 and bands.max() < CFG.price_bands


def test_examples_take_hard_negatives_from_the_same_request_and_never_clicked_items(tiny_log):
    catalog = ItemCatalog.from_log(tiny_log, CFG)
    history = UserHistory(tiny_log, catalog, CFG)
    ex = build_examples(tiny_log, history, start_us=T0, end_us=T0 + 10 * HOUR, positive_types=("click", "purchase"),
                        purchase_weight=3.0)
    items = catalog.item_ids[ex.item_row]
    assert sorted(items.tolist()) == [100, 100, 101, 104, 105]
    pools = {int(catalog.item_ids[r]): sorted(catalog.item_ids[ex.negative_rows[s:s + c]].tolist())
             for r, s, c in zip(ex.item_row, ex.negative_start, ex.negative_count, strict=True)}
    assert pools[101] == [102, 103]  # request 7 showed 101 (clicked), 102 and 103
    # The search click on 104 at T0+5h borrows user 1's last earlier request (7).
    assert pools[104] == [102, 103]
    assert pools[105] == [106]
    assert ex.weight[items == 100].tolist() in ([1.0, 3.0], [3.0, 1.0])
    assert ex.from_feed[items == 104].tolist() == [False] and ex.from_feed[items == 101].tolist() == [True]
    # Point in time: the example for the click on 101 at T0+3h sees only item 100's events.
    i = int(np.flatnonzero(items == 101)[0])
    assert sorted(set(catalog.item_ids[ex.user.recent[i][ex.user.recent[i] >= 0]].tolist())) == [100]
