"""Artifacts: a saved retriever loads back into the same answers, without pickle."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from retrieval import ArtifactError, RequestContext, load_two_tower, save_two_tower
from retrieval.artifacts import FORMAT_VERSION


@pytest.fixture(scope="module")
def saved(tmp_path_factory, small_retriever):
    return save_two_tower(small_retriever, tmp_path_factory.mktemp("artifact") / "two_tower",
                          metrics={"recall@500": 0.5})


def test_round_trip_gives_identical_recommendations(saved, small_retriever):
    loaded = load_two_tower(saved)
    state = small_retriever.state
    users = np.concatenate([state.user_ids[:60], [10**9]])
    ctx = RequestContext(device="mobile", hour=21)
    ids, scores = small_retriever.recommend(users, ctx, k=100)
    ids2, scores2 = loaded.recommend(users, ctx, k=100)
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_allclose(scores, scores2, rtol=1e-6)
    np.testing.assert_array_equal(loaded.item_vectors, small_retriever.item_vectors)
    assert loaded.index.kind == small_retriever.index.kind
    assert loaded.metadata["metrics"] == {"recall@500": 0.5}


def test_metadata_describes_the_model(saved, small_retriever):
    meta = json.loads((saved / "metadata.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["dims"]["embedding_dim"] == small_retriever.item_vectors.shape[1]
    assert meta["dims"]["n_items"] == len(small_retriever.catalog)
    assert meta["index"]["kind"] == "exact" and meta["index"]["params"]["hnsw_ef_search"] == 512
    assert meta["training_window"]["train_end_us"] == small_retriever.metadata["training_window"]["train_end_us"]
    assert meta["config"]["model"]["hour_bands"] == [0, 6, 12, 18]
    assert "item_ids.npy" in meta["item_id_mapping"]
    assert len(meta["training"]["epochs"]) >= 1


def test_arrays_hold_no_pickled_objects(saved):
    for path in saved.glob("*.np[yz]"):
        loaded = np.load(path, allow_pickle=False)  # raises on object arrays
        if path.suffix == ".npz":
            with zipfile.ZipFile(path) as z:
                assert all(name.endswith(".npy") for name in z.namelist())
            for key in loaded.files:
                assert loaded[key].dtype != object
            loaded.close()
        else:
            assert loaded.dtype != object


def test_broken_artifacts_raise_artifact_error(saved, tmp_path):
    with pytest.raises(ArtifactError, match="no metadata.json"):
        load_two_tower(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in saved.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "index.faiss").unlink()
    with pytest.raises(ArtifactError, match="lacks"):
        load_two_tower(broken)
    meta = json.loads((saved / "metadata.json").read_text())
    meta["format_version"] = 99
    (broken / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=f"version {FORMAT_VERSION}"):
        load_two_tower(broken)
