"""The two-tower model: a user tower and an item tower whose outputs meet in an inner product.

Item tower::

    v = normalize(MLP([id_emb(h(item)) * keep_item, emb(category), emb(seller), emb(price_band),
                       new_seller, new_item, log_age, log_price_z]))

User tower::

    u = normalize(MLP([id_emb(h(user)) * keep_user, emb(country), emb(device), emb(hour_band),
                       mean_{j in recent}(id_emb(h(item_j)) * keep_j + emb(category_j)), counts...]))

``score(u, i) = <u, v_i>`` (a cosine, since both are unit vectors). ``keep`` is 0 for ids the
model never trained on, so a brand-new item's vector comes from its content alone; during
training ids are hidden at random (``id_dropout``) so that content-only path is trained too.
Items with an own vector have their own row of the item-id table (``h(item)`` is their rank
among the trained items, :func:`~retrieval.inputs.item_id_rows`: no two share one); user ids
are hashed.

Importing this module imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.config import TwoTowerConfig
from retrieval.inputs import CONTENT_NUMERIC, USER_NUMERIC, ItemCatalog, UserInputs, hash_ids

__all__ = ["ItemBatch", "TwoTowerModel", "UserBatch", "item_batch", "user_batch"]


@dataclass(frozen=True)
class ItemBatch:
    """Item-tower input tensors for n items (see :func:`item_batch`)."""

    item: torch.Tensor
    category: torch.Tensor
    seller: torch.Tensor
    price_band: torch.Tensor
    numeric: torch.Tensor
    id_keep: torch.Tensor


@dataclass(frozen=True)
class UserBatch:
    """User-tower input tensors for n users (see :func:`user_batch`)."""

    user: torch.Tensor
    country: torch.Tensor
    device: torch.Tensor
    hour_band: torch.Tensor
    recent_item: torch.Tensor
    recent_category: torch.Tensor
    recent_keep: torch.Tensor
    recent_mask: torch.Tensor
    numeric: torch.Tensor
    id_keep: torch.Tensor


def item_batch(catalog: ItemCatalog, rows: np.ndarray, ts_us: np.ndarray | int, config: TwoTowerConfig,
               trained_items: np.ndarray) -> ItemBatch:
    """Tensors of catalog ``rows`` as of ``ts_us``.

    ``trained_items`` (int64 per catalog row, :func:`~retrieval.inputs.item_id_rows`) is the row of
    each item's own id embedding, -1 for items without one (their id embedding is hidden).
    """
    content = catalog.content(rows, ts_us, config)
    id_rows = _id_rows(trained_items)[rows]
    return ItemBatch(
        item=torch.from_numpy(np.maximum(id_rows, 0)),
        category=torch.from_numpy(content["category"]),
        seller=torch.from_numpy(content["seller"]),
        price_band=torch.from_numpy(content["price_band"]),
        numeric=torch.from_numpy(content["numeric"]),
        id_keep=torch.from_numpy((id_rows >= 0).astype(np.float32)),
    )


def user_batch(inputs: UserInputs, catalog: ItemCatalog, config: TwoTowerConfig, trained_items: np.ndarray,
               trained_users: np.ndarray) -> UserBatch:
    """Tensors of :class:`UserInputs`; ``trained_items`` as in :func:`item_batch`, ``trained_users``
    (bool, shape (n,)) keeps the user-id embeddings."""
    recent = inputs.recent
    mask = recent >= 0
    safe = np.where(mask, recent, 0)
    if len(catalog):
        id_rows = _id_rows(trained_items)[safe]
        recent_item = np.maximum(id_rows, 0)
        recent_cat = hash_ids(catalog.category_ids[safe].ravel(), config.category_buckets, "category").reshape(
            recent.shape)
        keep = ((id_rows >= 0) & mask).astype(np.float32)
    else:
        recent_item = recent_cat = np.zeros(recent.shape, np.int64)
        keep = np.zeros(recent.shape, np.float32)
    return UserBatch(
        user=torch.from_numpy(inputs.user),
        country=torch.from_numpy(inputs.country),
        device=torch.from_numpy(inputs.device),
        hour_band=torch.from_numpy(inputs.hour_band),
        recent_item=torch.from_numpy(recent_item.astype(np.int64)),
        recent_category=torch.from_numpy(recent_cat),
        recent_keep=torch.from_numpy(keep),
        recent_mask=torch.from_numpy(mask.astype(np.float32)),
        numeric=torch.from_numpy(inputs.numeric),
        id_keep=torch.from_numpy(np.asarray(trained_users, dtype=np.float32)),
    )


def _id_rows(trained_items: np.ndarray) -> np.ndarray:
    rows = np.asarray(trained_items)
    if not np.issubdtype(rows.dtype, np.integer):  # a bool mask (the format before item_id_rows) would pass silently
        raise TypeError(f"trained_items must be int64 id-embedding rows per catalog row (retrieval.inputs.item_id_rows), "
                        f"got dtype {rows.dtype}")
    return rows


class TwoTowerModel(nn.Module):
    """User and item towers over hashed ids and content features.

    Parameters
    ----------
    config : TwoTowerConfig
    n_countries, n_devices : int
        Vocabulary sizes, including code 0 for unknown.
    """

    def __init__(self, config: TwoTowerConfig, *, n_countries: int, n_devices: int) -> None:
        super().__init__()
        self.config = config
        c = config
        # The large hashed tables get sparse gradients (updated by SparseAdam, row by row).
        self.item_id = nn.Embedding(c.item_buckets, c.id_dim, sparse=True)
        self.user_id = nn.Embedding(c.user_buckets, c.id_dim, sparse=True)
        self.seller = nn.Embedding(c.seller_buckets, c.feature_dim, sparse=True)
        self.category = nn.Embedding(c.category_buckets, c.feature_dim)
        self.price_band = nn.Embedding(c.price_bands, c.feature_dim)
        self.country = nn.Embedding(n_countries, c.feature_dim)
        self.device = nn.Embedding(n_devices, c.feature_dim)
        self.hour_band = nn.Embedding(len(c.hour_bands), c.feature_dim)
        for emb in (self.item_id, self.user_id, self.category, self.seller, self.price_band, self.country,
                    self.device, self.hour_band):
            nn.init.normal_(emb.weight, std=0.05)
        item_in = c.id_dim + 3 * c.feature_dim + len(CONTENT_NUMERIC)
        user_in = 2 * c.id_dim + 4 * c.feature_dim + len(USER_NUMERIC)
        self.item_mlp = nn.Sequential(nn.Linear(item_in, c.hidden_dim), nn.ReLU(), nn.Linear(c.hidden_dim,
                                                                                             c.embedding_dim))
        self.user_mlp = nn.Sequential(nn.Linear(user_in, c.hidden_dim), nn.ReLU(), nn.Linear(c.hidden_dim,
                                                                                             c.embedding_dim))

    def sparse_parameters(self) -> list[torch.Tensor]:
        """Parameters with sparse gradients (the hashed id tables)."""
        return [self.item_id.weight, self.user_id.weight, self.seller.weight]

    def dense_parameters(self) -> list[torch.Tensor]:
        """Every other parameter."""
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]

    def item_vectors(self, batch: ItemBatch) -> torch.Tensor:
        """Unit item vectors, shape (n, embedding_dim)."""
        x = torch.cat([self.item_id(batch.item) * batch.id_keep[:, None], self.category(batch.category),
                       self.seller(batch.seller), self.price_band(batch.price_band), batch.numeric], dim=1)
        return F.normalize(self.item_mlp(x), dim=1)

    def user_vectors(self, batch: UserBatch) -> torch.Tensor:
        """Unit user vectors, shape (n, embedding_dim)."""
        recent = torch.cat([self.item_id(batch.recent_item) * batch.recent_keep[..., None],
                            self.category(batch.recent_category)], dim=-1) * batch.recent_mask[..., None]
        pooled = recent.sum(dim=1) / batch.recent_mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        x = torch.cat([self.user_id(batch.user) * batch.id_keep[:, None], self.country(batch.country),
                       self.device(batch.device), self.hour_band(batch.hour_band), pooled, batch.numeric], dim=1)
        return F.normalize(self.user_mlp(x), dim=1)

    def arrays(self) -> dict[str, np.ndarray]:
        """The parameters as plain float32 arrays (``state_dict`` names), for an ``.npz`` file."""
        return {name: t.detach().cpu().numpy().copy() for name, t in self.state_dict().items()}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Load parameters saved by :meth:`arrays`; raises ValueError on a missing or misshapen one."""
        state = self.state_dict()
        missing = sorted(set(state) - set(arrays))
        if missing:
            raise ValueError(f"arrays lack parameters {missing}")
        for name, tensor in state.items():
            if tuple(arrays[name].shape) != tuple(tensor.shape):
                raise ValueError(f"parameter {name} has shape {arrays[name].shape}, expected {tuple(tensor.shape)}")
        self.load_state_dict({name: torch.from_numpy(np.asarray(arrays[name])) for name in state})
