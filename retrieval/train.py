"""Train the two towers: in-batch sampled softmax with logQ correction, plus hard negatives.

For a batch of B positive (user, item) pairs with unit vectors ``u_b``, ``v_b`` and, per
example, M hard negatives ``w_bm`` (items shown in the same request and not clicked)::

    logit[b, j]     = <u_b, v_j> / T - alpha * log q(item_j)      j = 1..B  (in-batch)
    logit[b, B + m] = <u_b, w_bm> / T                             m = 1..M  (hard negatives)
    loss = sum_b weight_b * CE(logit[b], b) / sum_b weight_b

``q(i)`` is item i's share of training positives: in-batch negatives are drawn in proportion
to it, and subtracting ``log q`` (Yi et al., RecSys 2019) keeps the model from learning that
popularity alone. In-batch columns holding the row's own item (a repeat in the batch) and
hard negatives equal to the positive are masked. Training stops early when recall@K on the
held-out last ``validation_days`` of the window has not improved for ``patience`` epochs,
and the best epoch's weights are kept.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from features.contract import EVENT_TYPES
from retrieval.config import RetrievalConfig
from retrieval.errors import ModelFitError
from retrieval.inputs import (
    DAY_US,
    Examples,
    ItemCatalog,
    UserHistory,
    build_examples,
    item_id_rows,
)
from retrieval.logs import EventLog
from retrieval.model import TwoTowerModel, item_batch, user_batch

__all__ = ["EpochStats", "FittedTwoTower", "TrainingWindow", "embed_items", "embed_users", "torch_settings",
           "train_two_tower"]

logger = logging.getLogger(__name__)
_EMBED_CHUNK = 65_536


@dataclass(frozen=True)
class EpochStats:
    """One epoch of training."""

    epoch: int
    loss: float
    examples_per_second: float
    validation_recall: float
    seconds: float


@dataclass(frozen=True)
class TrainingWindow:
    """Examples come from ``[train_start_us, validation_start_us)``; early stopping watches
    ``[validation_start_us, train_end_us)``; nothing at or after ``train_end_us`` is read.

    With ``validation_split="last"`` the validation events are held out by user instead (each sampled
    user's last positive) and ``validation_start_us == train_end_us``."""

    train_start_us: int
    validation_start_us: int
    train_end_us: int


@dataclass(frozen=True)
class FittedTwoTower:
    """A trained model with everything needed to embed items and users.

    Attributes
    ----------
    model : TwoTowerModel
        The best epoch's weights, in eval mode.
    catalog : ItemCatalog
    history : UserHistory
        Interactions before ``window.train_end_us``.
    trained_item_ids, trained_user_ids : ndarray of int64, sorted
        Ids that had training examples: only their id embeddings are used.
    window : TrainingWindow
    epochs : tuple of EpochStats
    best_epoch : int
    validation_recall : float
        Recall@``early_stopping_k`` of the best epoch.
    n_examples : int
    """

    config: RetrievalConfig
    model: TwoTowerModel
    catalog: ItemCatalog
    history: UserHistory
    trained_item_ids: np.ndarray
    trained_user_ids: np.ndarray
    window: TrainingWindow
    epochs: tuple[EpochStats, ...]
    best_epoch: int
    validation_recall: float
    n_examples: int

    @property
    def examples_per_second(self) -> float:
        """Mean training throughput over the epochs run."""
        return float(np.mean([e.examples_per_second for e in self.epochs]))


@contextlib.contextmanager
def torch_settings(num_threads: int, seed: int | None = None) -> Iterator[None]:
    """Run a block with ``num_threads`` intra-op threads, deterministic algorithms and, when
    ``seed`` is given, a seeded CPU RNG; the previous settings and RNG state come back after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def embed_items(model: TwoTowerModel, catalog: ItemCatalog, as_of_us: int, trained_items: np.ndarray,
                rows: np.ndarray | None = None) -> np.ndarray:
    """Unit vectors (float32, shape (n, D)) of catalog ``rows`` (all by default) as of ``as_of_us``."""
    rows = np.arange(len(catalog)) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), model.config.embedding_dim), dtype=np.float32)
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(rows), _EMBED_CHUNK):
            part = rows[lo:lo + _EMBED_CHUNK]
            out[lo:lo + len(part)] = model.item_vectors(item_batch(catalog, part, as_of_us, model.config,
                                                                   trained_items)).numpy()
    return out


def embed_users(model: TwoTowerModel, inputs, catalog: ItemCatalog, trained_items: np.ndarray,
                trained_users: np.ndarray) -> np.ndarray:
    """Unit vectors (float32, shape (n, D)) of :class:`~retrieval.inputs.UserInputs`."""
    model.eval()
    with torch.no_grad():
        return model.user_vectors(user_batch(inputs, catalog, model.config, trained_items,
                                             trained_users)).numpy()


def train_two_tower(log: EventLog, config: RetrievalConfig, *, train_end_us: int,
                    train_start_us: int | None = None) -> FittedTwoTower:
    """Train on events before ``train_end_us`` (the last ``validation_days`` are held out).

    Parameters
    ----------
    log : EventLog
    config : RetrievalConfig
    train_end_us : int
        Nothing at or after this time is read (features, labels, hard negatives, stock flags aside:
        the items table is a snapshot).
    train_start_us : int, optional
        First time examples are drawn from; default: the start of the log.

    Raises
    ------
    ValueError
        The window leaves no training examples or no validation targets.
    ModelFitError
        The loss became NaN or infinite.
    """
    tc, mc = config.training, config.model
    first_us, _ = log.time_range_us
    start = first_us if train_start_us is None else int(train_start_us)
    catalog = ItemCatalog.from_log(log, mc)
    history = UserHistory(log, catalog, mc, end_us=train_end_us)
    build: dict[str, Any] = dict(positive_types=tc.positive_types, purchase_weight=tc.purchase_weight)
    if tc.validation_split == "last":
        val_start = int(train_end_us)
        held_out = _last_positive_rows(log, history, catalog, config, start_us=start, end_us=val_start)
        train = build_examples(log, history, start_us=start, end_us=val_start, events=~held_out, **build)
        val = build_examples(log, history, start_us=start, end_us=val_start, events=held_out, **build)
        if len(val) == 0:
            raise ValueError("validation_split='last' needs users with at least two positive events before "
                             f"train_end_us={train_end_us}; none has")
    else:
        val_start = int(train_end_us - tc.validation_days * DAY_US)
        if val_start <= start:
            raise ValueError(f"train_end_us leaves no training window before the {tc.validation_days} validation "
                             f"days (train_start_us={start}, train_end_us={train_end_us})")
        train = build_examples(log, history, start_us=start, end_us=val_start, **build)
        val = build_examples(log, history, start_us=val_start, end_us=train_end_us, **build)
        if len(val) == 0:
            raise ValueError(f"the validation window [{val_start}, {train_end_us}) holds no positive events")
    if len(train) < 2:
        raise ValueError(f"the training window [{start}, {val_start}) holds {len(train)} positive events; need >= 2")

    counts = np.bincount(train.item_row, minlength=len(catalog)).astype(np.float64)
    imp = log.impressions
    shown = catalog.rows(imp.loc[(imp["ts_us"] >= start) & (imp["ts_us"] < val_start), "item_id"].to_numpy())
    learnable = _learnable_items(counts, shown, catalog, mc)
    # Only items with enough interactions get an id embedding, each its own row; sparser ones are
    # content-only in training and at serving alike, so both kinds of item vectors live in one space.
    trained_items = item_id_rows(catalog.item_ids, catalog.item_ids[learnable])
    trained_user_codes = np.unique(train.user_codes)
    log_q = np.log(np.maximum(counts, 1.0) / counts.sum()).astype(np.float32)
    exposure = np.bincount(shown[shown >= 0], minlength=len(catalog)).astype(np.float64) + 1.0
    log_e = np.log(exposure / exposure.sum()).astype(np.float32)
    if tc.validation_positives == "off_feed":
        if (~val.from_feed).any():
            val = _subset(val, ~val.from_feed)
        else:
            logger.warning("validation_positives='off_feed' but the validation window has no off-feed positives; "
                           "early stopping watches all %d positives", len(val))

    with torch_settings(tc.num_threads, tc.seed):
        model = TwoTowerModel(mc, n_countries=len(history.countries), n_devices=len(history.devices))
        gen = torch.Generator().manual_seed(tc.seed)
        rng = np.random.default_rng([tc.seed, 1])
        dense = torch.optim.Adam(model.dense_parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)
        sparse = torch.optim.SparseAdam(model.sparse_parameters(), lr=tc.learning_rate)
        validator = _Validator(val, history, catalog, val_start, tc.early_stopping_k, tc.max_validation_users,
                               trained_user_codes, np.random.default_rng([tc.seed, 2]),
                               per_event_time=tc.validation_split == "last")
        trained_user = np.isin(train.user_codes, trained_user_codes)
        best, best_state, best_epoch, stale, epochs = -1.0, None, 0, 0, []
        for epoch in range(1, tc.max_epochs + 1):
            t0 = time.perf_counter()
            model.train()
            order = torch.randperm(len(train), generator=gen).numpy()
            total, weight_sum = 0.0, 0.0
            for lo in range(0, len(order) - 1, tc.batch_size):
                idx = order[lo:lo + tc.batch_size]
                if len(idx) < 2:
                    continue
                loss, w = _batch_loss(model, train, idx, catalog, config, trained_items, trained_user, log_q, log_e, gen,
                                      rng)
                if not torch.isfinite(loss):
                    raise ModelFitError(f"loss became {loss.item()} in epoch {epoch}; lower learning_rate "
                                        f"({tc.learning_rate}) or raise temperature ({tc.temperature})")
                dense.zero_grad()
                sparse.zero_grad()
                loss.backward()
                dense.step()
                sparse.step()
                total += loss.item() * w
                weight_sum += w
            seconds = time.perf_counter() - t0
            recall = validator.recall(model, trained_items)
            stats = EpochStats(epoch=epoch, loss=total / max(weight_sum, 1e-12),
                               examples_per_second=len(order) / seconds, validation_recall=recall, seconds=seconds)
            epochs.append(stats)
            logger.info("epoch %d: loss %.4f, %.0f examples/s, validation recall@%d %.4f (%.1fs)", epoch, stats.loss,
                        stats.examples_per_second, tc.early_stopping_k, recall, seconds)
            if recall > best:
                best, best_state, best_epoch, stale = recall, copy.deepcopy(model.state_dict()), epoch, 0
            else:
                stale += 1
                if stale >= tc.patience:
                    logger.info("early stop after epoch %d: best validation recall %.4f at epoch %d", epoch, best,
                                best_epoch)
                    break
        assert best_state is not None  # max_epochs >= 1, and the first epoch always improves on -1
        model.load_state_dict(best_state)
        model.eval()
    return FittedTwoTower(
        config=config, model=model, catalog=catalog, history=history,
        trained_item_ids=catalog.item_ids[learnable],
        trained_user_ids=history.user_ids[trained_user_codes],
        window=TrainingWindow(train_start_us=start, validation_start_us=val_start, train_end_us=int(train_end_us)),
        epochs=tuple(epochs), best_epoch=best_epoch, validation_recall=best, n_examples=len(train))


def _batch_loss(model: TwoTowerModel, ex: Examples, idx: np.ndarray, catalog: ItemCatalog, config: RetrievalConfig,
                trained_items: np.ndarray, trained_user: np.ndarray, log_q: np.ndarray, log_e: np.ndarray,
                gen: torch.Generator,
                rng: np.random.Generator) -> tuple[torch.Tensor, float]:
    tc, mc = config.training, config.model
    b = len(idx)
    pos_rows = ex.item_row[idx]
    ts = ex.ts_us[idx]
    ub = user_batch(ex.user.take(idx), catalog, mc, trained_items, trained_user[idx])
    keep_user = torch.bernoulli(torch.full((b,), 1.0 - mc.id_dropout), generator=gen)
    ub = _replace(ub, id_keep=ub.id_keep * keep_user)
    u = model.user_vectors(ub)

    ib = item_batch(catalog, pos_rows, ts, mc, trained_items)
    keep_item = torch.bernoulli(torch.full((b,), 1.0 - mc.id_dropout), generator=gen)
    v = model.item_vectors(_replace(ib, id_keep=ib.id_keep * keep_item))
    logits = u @ v.T / tc.temperature - tc.logq_weight * torch.from_numpy(log_q[pos_rows])[None, :]
    if tc.exposure_weight > 0:
        feed = torch.from_numpy(ex.from_feed[idx].astype(np.float32))[:, None]
        logits = logits + tc.exposure_weight * feed * torch.from_numpy(log_e[pos_rows])[None, :]
    same = torch.from_numpy(pos_rows[:, None] == pos_rows[None, :])
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))

    m = tc.hard_negatives
    if m > 0:
        count = ex.negative_count[idx]
        pick = ex.negative_start[idx, None] + np.floor(rng.random((b, m)) * count[:, None]).astype(np.int64)
        valid = np.broadcast_to(count[:, None] > 0, (b, m))
        neg_rows = np.where(valid, ex.negative_rows[np.where(valid, pick, 0)] if len(ex.negative_rows) else 0, 0)
        valid = valid & (neg_rows != pos_rows[:, None])
        nb = item_batch(catalog, neg_rows.ravel(), np.repeat(ts, m), mc, trained_items)
        keep_neg = torch.bernoulli(torch.full((b * m,), 1.0 - mc.id_dropout), generator=gen)
        w = model.item_vectors(_replace(nb, id_keep=nb.id_keep * keep_neg)).view(b, m, -1)
        hard = torch.einsum("bd,bmd->bm", u, w) / tc.temperature
        logits = torch.cat([logits, hard.masked_fill(torch.from_numpy(~valid), float("-inf"))], dim=1)

    weight = torch.from_numpy(ex.weight[idx] * np.where(ex.from_feed[idx], tc.feed_weight, 1.0).astype(np.float32))
    per_example = F.cross_entropy(logits, torch.arange(b), reduction="none")
    total_weight = float(weight.sum())
    return (per_example * weight).sum() / total_weight, total_weight


def _learnable_items(positives: np.ndarray, shown: np.ndarray, catalog: ItemCatalog, config) -> np.ndarray:
    """Items (bool per catalog row) with at least ``min_item_examples`` training interactions: positives,
    plus the user's own page views where impressions are pooled into the history (``history_impressions``);
    at most ``item_buckets`` of them (the most interacted), one id-embedding row each."""
    interactions = positives.copy()
    if config.history_impressions:
        interactions += np.bincount(shown[shown >= 0], minlength=len(catalog))
    learnable = interactions >= config.min_item_examples
    if learnable.sum() > config.item_buckets:
        logger.warning("%d items have >= %d interactions but item_buckets is %d: only the %d most interacted get an "
                       "own vector (raise model.item_buckets)", learnable.sum(), config.min_item_examples,
                       config.item_buckets, config.item_buckets)
        top = np.argsort(-interactions, kind="stable")[:config.item_buckets]
        learnable = np.zeros(len(catalog), dtype=bool)
        learnable[top] = True
    return learnable


def _last_positive_rows(log: EventLog, history: UserHistory, catalog: ItemCatalog, config: RetrievalConfig, *,
                        start_us: int, end_us: int) -> np.ndarray:
    """Rows of ``log.events`` held out by leave-last-out validation: the last positive event (latest
    time, then latest row) in ``[start_us, end_us)`` of up to ``max_validation_users`` seeded users
    with at least two such events."""
    tc = config.training
    ev = log.events
    ts = ev["ts_us"].to_numpy()
    codes = history.user_codes(ev["user_id"].to_numpy())
    positive = ((ts >= start_us) & (ts < end_us) & (codes >= 0) & (catalog.rows(ev["item_id"].to_numpy()) >= 0)
                & np.isin(ev["type"].to_numpy(), [EVENT_TYPES.index(t) for t in tc.positive_types]))
    rows = np.flatnonzero(positive)
    order = rows[np.lexsort((rows, ts[rows], codes[rows]))]  # by user, then time, then row
    user = codes[order]
    last = np.r_[user[1:] != user[:-1], True]
    counts = np.bincount(user, minlength=len(history.user_ids))
    eligible = last & (counts[user] >= 2)
    chosen = order[eligible]
    if len(chosen) > tc.max_validation_users:
        chosen = np.sort(np.random.default_rng([tc.seed, 3]).choice(chosen, tc.max_validation_users, replace=False))
    held_out = np.zeros(len(ev), dtype=bool)
    held_out[chosen] = True
    return held_out


def _subset(ex: Examples, mask: np.ndarray) -> Examples:
    idx = np.flatnonzero(mask)
    return Examples(user=ex.user.take(idx), item_row=ex.item_row[idx], ts_us=ex.ts_us[idx], weight=ex.weight[idx],
                    negative_start=ex.negative_start[idx], negative_count=ex.negative_count[idx],
                    negative_rows=ex.negative_rows, user_codes=ex.user_codes[idx], from_feed=ex.from_feed[idx])


def _replace(batch, **changes):
    fields = {name: getattr(batch, name) for name in batch.__dataclass_fields__}
    fields.update(changes)
    return type(batch)(**fields)


class _Validator:
    """Recall@K of held-out positives by exact search over the items listed before the validation start."""

    def __init__(self, val: Examples, history: UserHistory, catalog: ItemCatalog, as_of_us: int, k: int,
                 max_users: int, trained_user_codes: np.ndarray, rng: np.random.Generator, *,
                 per_event_time: bool = False) -> None:
        users = np.unique(val.user_codes)
        if len(users) > max_users:
            users = np.sort(rng.choice(users, max_users, replace=False))
        if per_event_time:  # leave-last-out: each user as of (strictly before) their held-out event
            first = np.searchsorted(val.user_codes[np.argsort(val.user_codes, kind="stable")], users)
            times = val.ts_us[np.argsort(val.user_codes, kind="stable")][first]
        else:
            times = np.full(len(users), as_of_us, dtype=np.int64)
        self.inputs = history.inputs_at(users, times)
        self.trained_users = np.isin(users, trained_user_codes)
        self.catalog, self.as_of_us = catalog, as_of_us
        self.rows = np.flatnonzero(catalog.item_created_us < as_of_us)
        self.k = min(k, len(self.rows))
        keep = np.isin(val.user_codes, users)
        order = np.searchsorted(users, val.user_codes[keep])
        self.targets: list[set[int]] = [set() for _ in users]
        for u, r in zip(order, val.item_row[keep], strict=True):
            self.targets[u].add(int(r))

    def recall(self, model: TwoTowerModel, trained_items: np.ndarray) -> float:
        items = torch.from_numpy(embed_items(model, self.catalog, self.as_of_us, trained_items, self.rows))
        users = torch.from_numpy(embed_users(model, self.inputs, self.catalog, trained_items, self.trained_users))
        hits = []
        for lo in range(0, len(users), 1024):
            top = torch.topk(users[lo:lo + 1024] @ items.T, self.k, dim=1).indices.numpy()
            for row, cand in enumerate(self.rows[top]):
                target = self.targets[lo + row]
                hits.append(len(target.intersection(cand.tolist())) / len(target))
        return float(np.mean(hits))
