"""Save and load a two-tower retriever as plain files (no pickle anywhere).

Layout of an artifact folder::

    metadata.json        format version, config, dimensions, vocabularies, index kind and
                         parameters, training window, metrics, library versions, file list
    model.npz            the towers' parameters (state_dict names -> float32 arrays); the
                         code that reads them is retrieval.model.TwoTowerModel
    item_embeddings.npy  float32 (n_items, D); row r is the vector of item_ids.npy[r]
    item_ids.npy         int64 (n_items,): the item-id mapping (row r <-> FAISS id r)
    index.faiss          the FAISS index (faiss.write_index)
    catalog.npz          item content arrays (to embed new items and check stock)
    user_state.npz       users' recent items, counts and purchases as of ``as_of_us``
    popularity.npz       popularity by context segment
    trained_ids.npz      ids whose id embeddings were trained

Every ``.npz``/``.npy`` is read with ``allow_pickle=False``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import typing
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.config import RetrievalConfig
from retrieval.errors import ArtifactError

if typing.TYPE_CHECKING:
    from retrieval.two_tower import TwoTowerRetriever

__all__ = ["FORMAT_VERSION", "load_two_tower", "save_two_tower"]

FORMAT = "feedrank-retrieval-two-tower"
FORMAT_VERSION = 2  # 2: items with an own vector have their own id-embedding row (item_id_rows)
_FILES = ("model.npz", "item_embeddings.npy", "item_ids.npy", "index.faiss", "catalog.npz", "user_state.npz",
          "popularity.npz", "trained_ids.npz")


def save_two_tower(retriever: TwoTowerRetriever, path: str | os.PathLike[str], *,
                   metrics: dict[str, Any] | None = None) -> Path:
    """Write ``retriever`` into the folder ``path`` (created; existing files are overwritten).

    Parameters
    ----------
    retriever : TwoTowerRetriever
    path : path-like
    metrics : dict, optional
        Evaluation figures to record in ``metadata.json`` (JSON-serialisable).

    Returns
    -------
    Path
        The folder.
    """
    import faiss
    import torch

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    _savez(out / "model.npz", retriever.model.arrays())
    np.save(out / "item_embeddings.npy", np.ascontiguousarray(retriever.item_vectors, dtype=np.float32))
    np.save(out / "item_ids.npy", retriever.catalog.item_ids.astype(np.int64))
    retriever.index.save(out / "index.faiss")
    _savez(out / "catalog.npz", retriever.catalog.to_arrays())
    _savez(out / "user_state.npz", retriever.state.to_arrays())
    _savez(out / "popularity.npz", retriever.popularity.to_arrays())
    np.savez(out / "trained_ids.npz", item_ids=retriever.trained_item_ids, user_ids=retriever.trained_user_ids)
    config = retriever.retrieval_config
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(config),
        "dims": {"embedding_dim": int(retriever.item_vectors.shape[1]), "n_items": len(retriever.catalog),
                 "n_users": len(retriever.state.user_ids), "n_countries": len(retriever.state.countries),
                 "n_devices": len(retriever.state.devices)},
        "item_id_mapping": "item_ids.npy: row r of item_embeddings.npy and FAISS id r is item_ids[r]",
        "vocabularies": {"countries": list(retriever.state.countries.values),
                         "devices": list(retriever.state.devices.values),
                         "popularity_devices": list(retriever.popularity.devices.values)},
        "hour_bands": list(retriever.popularity.hour_bands),
        "user_state_as_of_us": retriever.state.as_of_us,
        "index": {"kind": retriever.index.kind, "ntotal": retriever.index.ntotal,
                  "params": dataclasses.asdict(retriever.index.config)},
        "metrics": metrics if metrics is not None else retriever.metadata.get("metrics", {}),
        "versions": {"torch": torch.__version__, "faiss": faiss.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "files": list(_FILES),
        **{k: v for k, v in retriever.metadata.items() if k not in ("metrics",)},
    }
    (out / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=_json_default) + "\n")
    return out


def load_two_tower(path: str | os.PathLike[str]) -> TwoTowerRetriever:
    """Read a retriever written by :func:`save_two_tower`.

    Raises
    ------
    ArtifactError
        A file is missing, the format or its version differs, or the arrays disagree in shape.
    """
    from retrieval.index import ItemIndex
    from retrieval.inputs import ItemCatalog, UserState, Vocabulary
    from retrieval.model import TwoTowerModel
    from retrieval.popularity import SegmentPopularity
    from retrieval.two_tower import TwoTowerRetriever

    root = Path(path)
    meta_path = root / "metadata.json"
    if not meta_path.exists():
        raise ArtifactError(f"{root} holds no metadata.json: not a retrieval artifact")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{meta_path}: expected format {FORMAT} version {FORMAT_VERSION}, got "
                            f"{meta.get('format')} version {meta.get('format_version')}")
    missing = [f for f in _FILES if not (root / f).exists()]
    if missing:
        raise ArtifactError(f"{root} lacks {missing}")
    try:
        config = config_from_dict(meta["config"])
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{meta_path}: invalid config: {exc}") from None
    countries = Vocabulary(tuple(meta["vocabularies"]["countries"]))
    devices = Vocabulary(tuple(meta["vocabularies"]["devices"]))
    model = TwoTowerModel(config.model, n_countries=meta["dims"]["n_countries"], n_devices=meta["dims"]["n_devices"])
    try:
        with np.load(root / "model.npz", allow_pickle=False) as arrays:
            model.load_arrays({k: arrays[k] for k in arrays.files})
        model.eval()
        vectors = np.load(root / "item_embeddings.npy", allow_pickle=False)
        item_ids = np.load(root / "item_ids.npy", allow_pickle=False)
        with np.load(root / "catalog.npz", allow_pickle=False) as arrays:
            catalog = ItemCatalog.from_arrays({k: arrays[k] for k in arrays.files})
        with np.load(root / "user_state.npz", allow_pickle=False) as arrays:
            users = UserState.from_arrays({k: arrays[k] for k in arrays.files}, as_of_us=meta["user_state_as_of_us"],
                                          countries=countries, devices=devices)
        with np.load(root / "popularity.npz", allow_pickle=False) as arrays:
            popularity = SegmentPopularity.from_arrays(
                {k: arrays[k] for k in arrays.files}, devices=Vocabulary(tuple(meta["vocabularies"]["popularity_devices"])),
                hour_bands=tuple(meta["hour_bands"]))
        with np.load(root / "trained_ids.npz", allow_pickle=False) as arrays:
            trained_items, trained_users = arrays["item_ids"], arrays["user_ids"]
    except (ValueError, KeyError) as exc:
        raise ArtifactError(f"{root}: {exc}") from None
    if not np.array_equal(item_ids, catalog.item_ids) or vectors.shape != (len(catalog), meta["dims"]["embedding_dim"]):
        raise ArtifactError(f"{root}: item_ids.npy, item_embeddings.npy and catalog.npz disagree")
    index = ItemIndex.load(root / "index.faiss", meta["index"]["kind"], config.index)
    if index.ntotal != len(catalog):
        raise ArtifactError(f"{root}: index.faiss holds {index.ntotal} vectors for {len(catalog)} items")
    extra = {k: meta[k] for k in ("training_window", "as_of_us", "training", "index_calibration") if k in meta}
    return TwoTowerRetriever(model=model, catalog=catalog, item_vectors=vectors, index=index, popularity=popularity,
                             users=users, config=config, trained_item_ids=trained_items,
                             trained_user_ids=trained_users, metadata={**extra, "metrics": meta.get("metrics", {})})


def config_from_dict(data: dict[str, Any]) -> RetrievalConfig:
    """Rebuild a :class:`RetrievalConfig` from ``dataclasses.asdict`` output (lists become tuples)."""
    sections = {}
    for f in dataclasses.fields(RetrievalConfig):
        cls = typing.get_type_hints(RetrievalConfig)[f.name]
        values = dict(data.get(f.name, {}))
        for key, value in values.items():
            if isinstance(value, list):
                values[key] = tuple(value)
        sections[f.name] = cls(**values)
    return RetrievalConfig(**sections)


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types the first keyword as allow_pickle


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
