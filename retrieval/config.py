"""Configuration of the retrieval package: the two-tower model, its training, the index, serving.

``infra`` builds :class:`RetrievalConfig` from the ``retrieval`` section of the YAML and
passes it down; every rule is checked once, in ``__post_init__``, with a message that
names the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from features.config import check
from features.contract import EVENT_TYPES
from features.popularity import DEFAULT_POPULARITY_WEIGHTS

__all__ = ["IndexConfig", "RetrievalConfig", "ServingConfig", "TrainingConfig", "TwoTowerConfig"]

_ANN_KINDS = ("hnsw", "ivf")


@dataclass(frozen=True)
class TwoTowerConfig:
    """Shape of the two towers and of their inputs.

    Parameters
    ----------
    embedding_dim : int
        Dimension of the user and item vectors (L2-normalised; their inner product is the score).
    id_dim : int
        Dimension of the hashed user-id and item-id embeddings.
    feature_dim : int
        Dimension of each categorical feature embedding (category, seller, price band, ...).
    hidden_dim : int
        Width of the one hidden layer of each tower's MLP.
    user_buckets, item_buckets, seller_buckets, category_buckets : int
        Hash buckets of each id embedding (ids are hashed, so unseen ids need no vocabulary).
    price_bands : int
        An item's price band is its price quantile within its category, in this many bands.
    history_length : int
        Most recent interactions mean-pooled into the user tower.
    history_impressions : bool
        Also pool the user's impressions into the history (for sources whose impressions are the
        user's own page views, like the Taobao log; feed impressions are mostly ignored items).
    hour_bands : tuple of int
        Start hours (UTC, ascending, first 0) of the hour bands used as request context.
    new_seller_days : float
        A seller younger than this (at the example's time) is a new seller.
    id_dropout : float
        Probability, per training example, of hiding the item-id (and user-id) embedding so the
        towers learn to work from content alone; unseen ids are always hidden at inference.
    min_item_examples : int
        An item's id embedding is used (in training and serving) only once it had this many training
        positives; sparser and brand-new items get a vector from content alone.
    """

    embedding_dim: int = 32
    id_dim: int = 32
    feature_dim: int = 16
    hidden_dim: int = 128
    user_buckets: int = 131072
    item_buckets: int = 262144
    seller_buckets: int = 16384
    category_buckets: int = 4096
    price_bands: int = 10
    history_length: int = 20
    history_impressions: bool = False
    hour_bands: tuple[int, ...] = (0, 6, 12, 18)
    new_seller_days: float = 30.0
    id_dropout: float = 0.3
    min_item_examples: int = 5

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "id_dim", "feature_dim", "hidden_dim", "user_buckets", "item_buckets",
                     "seller_buckets", "category_buckets", "history_length"):
            check(getattr(self, name) >= 1, name, ">= 1", getattr(self, name))
        check(self.price_bands >= 1, "price_bands", ">= 1", self.price_bands)
        bands = self.hour_bands
        check(len(bands) >= 1 and bands[0] == 0 and all(a < b for a, b in zip(bands, bands[1:], strict=False))
              and bands[-1] <= 23, "hour_bands", "ascending hours in [0, 23] starting at 0", bands)
        check(self.new_seller_days > 0, "new_seller_days", "> 0", self.new_seller_days)
        check(0.0 <= self.id_dropout < 1.0, "id_dropout", "in [0, 1)", self.id_dropout)
        check(self.min_item_examples >= 1, "min_item_examples", ">= 1", self.min_item_examples)


@dataclass(frozen=True)
class TrainingConfig:
    """How the two towers are trained.

    Parameters
    ----------
    positive_types : tuple of str
        Event types that make a positive example.
    purchase_weight : float
        Loss weight of a purchase example (clicks and add-to-carts weigh 1).
    hard_negatives : int
        Items shown in the same request and not clicked, drawn per example (0 disables them).
    temperature : float
        Softmax temperature over cosine scores.
    logq_weight : float
        Strength of the logQ correction: in-batch logits are reduced by ``logq_weight * log q(item)``
        where ``q`` is the item's share of training positives (1 = the full correction).
    exposure_weight : float
        Strength of the exposure correction for examples the feed showed: their in-batch logits are
        raised by ``exposure_weight * log e(item)``, where ``e`` is the item's share of impressions, so
        the model explains "shown often" by exposure and learns the preference that remains
        (0 = learn the logged distribution, exposure included).
    feed_weight : float
        Loss weight of examples the feed showed, relative to off-feed ones (search, direct): below 1,
        the model leans on what buyers seek out rather than on what the logging policy exposed.
    validation_positives : {"all", "off_feed"}
        Which held-out positives early stopping recalls: all, or only those the feed did not show
        (search and direct traffic, which the logging policy's exposure does not drive). Logged feed
        clicks mostly measure what the logging policy chose to show, so "all" stops at a
        popularity-like model; "off_feed" falls back to all positives when the window has none.
    batch_size, max_epochs, patience : int
        Early stopping stops after ``patience`` epochs without a better validation recall.
    learning_rate, weight_decay : float
        Adam.
    validation_split : {"time", "last"}
        What early stopping holds out: "time", the last ``validation_days`` of the training window;
        "last", the last positive of up to ``max_validation_users`` sampled users who have at least
        two (leave-last-out: for logs with an order but no real timestamps, or short windows).
    validation_days : float
        The last ``validation_days`` of the training window are held out for early stopping
        (``validation_split="time"``).
    early_stopping_k : int
        The K of the validation recall@K that early stopping watches.
    max_validation_users : int
        Validation recall is computed over at most this many users (a seeded sample).
    num_threads : int
        ``torch.set_num_threads`` while training and embedding. One by default: on a busy 2-core
        machine two threads wait for each other (the measurements are in docs/retrieval.md).
    seed : int
    """

    positive_types: tuple[str, ...] = ("click", "purchase")
    purchase_weight: float = 2.0
    hard_negatives: int = 2
    temperature: float = 0.05
    logq_weight: float = 1.0
    exposure_weight: float = 0.0
    feed_weight: float = 1.0
    validation_positives: str = "off_feed"
    batch_size: int = 256
    max_epochs: int = 20
    patience: int = 3
    learning_rate: float = 0.003
    weight_decay: float = 0.0
    validation_split: str = "time"
    validation_days: float = 1.0
    early_stopping_k: int = 100
    max_validation_users: int = 5000
    num_threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        check(len(self.positive_types) >= 1 and set(self.positive_types) <= set(EVENT_TYPES), "positive_types",
              f"a non-empty subset of {list(EVENT_TYPES)}", self.positive_types)
        check(self.purchase_weight > 0, "purchase_weight", "> 0", self.purchase_weight)
        check(self.hard_negatives >= 0, "hard_negatives", ">= 0", self.hard_negatives)
        check(self.temperature > 0, "temperature", "> 0", self.temperature)
        check(self.logq_weight >= 0, "logq_weight", ">= 0", self.logq_weight)
        check(self.exposure_weight >= 0, "exposure_weight", ">= 0", self.exposure_weight)
        check(self.feed_weight > 0, "feed_weight", "> 0", self.feed_weight)
        check(self.validation_positives in ("all", "off_feed"), "validation_positives", "one of ['all', 'off_feed']",
              self.validation_positives)
        for name in ("batch_size", "max_epochs", "patience", "early_stopping_k", "max_validation_users",
                     "num_threads"):
            check(getattr(self, name) >= 1, name, ">= 1", getattr(self, name))
        check(self.batch_size >= 2, "batch_size", ">= 2 (in-batch negatives)", self.batch_size)
        check(self.learning_rate > 0, "learning_rate", "> 0", self.learning_rate)
        check(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        check(self.validation_split in ("time", "last"), "validation_split", "one of ['time', 'last']",
              self.validation_split)
        check(self.validation_days > 0, "validation_days", "> 0", self.validation_days)
        check(self.seed >= 0, "seed", ">= 0", self.seed)


@dataclass(frozen=True)
class IndexConfig:
    """Which FAISS index holds the item vectors.

    Parameters
    ----------
    exact_threshold : int
        Catalogs with fewer items than this get an exact inner-product index (``IndexFlatIP``);
        larger ones get the approximate index named by ``ann``.
    ann : {"hnsw", "ivf"}
    hnsw_m, hnsw_ef_construction, hnsw_ef_search : int
        HNSW graph degree, build beam and search beam (the search beam is raised to K when smaller).
    ivf_nlist : int
        Inverted lists; 0 picks ``4 * sqrt(n_items)``.
    ivf_nprobe : int
        Lists visited per query.
    faiss_threads : int
        ``faiss.omp_set_num_threads`` for searches (1 suits one query at a time).
    target_recall : float
        When an HNSW index is built for a trained model, its search beam is raised until the
        ANN recall against exact search of ``calibration_queries`` users' top K reaches this
        (0 keeps ``hnsw_ef_search`` as configured). How far the beam must go depends on how
        the model spreads its vectors, which no fixed setting anticipates.
    calibration_queries : int
        Users (sampled from the snapshot, seeded) whose queries calibrate the beam.
    """

    exact_threshold: int = 50_000
    ann: str = "hnsw"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 512
    ivf_nlist: int = 0
    ivf_nprobe: int = 64
    faiss_threads: int = 1
    target_recall: float = 0.95
    calibration_queries: int = 300

    def __post_init__(self) -> None:
        check(self.exact_threshold >= 0, "exact_threshold", ">= 0", self.exact_threshold)
        check(0.0 <= self.target_recall <= 1.0, "target_recall", "in [0, 1] (0 = no calibration)", self.target_recall)
        check(self.calibration_queries >= 1, "calibration_queries", ">= 1", self.calibration_queries)
        check(self.ann in _ANN_KINDS, "ann", f"one of {list(_ANN_KINDS)}", self.ann)
        for name in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nprobe", "faiss_threads"):
            check(getattr(self, name) >= 1, name, ">= 1", getattr(self, name))
        check(self.ivf_nlist >= 0, "ivf_nlist", ">= 0 (0 = automatic)", self.ivf_nlist)


@dataclass(frozen=True)
class ServingConfig:
    """Candidate lists: their size, exclusions and the popularity fallback.

    Parameters
    ----------
    k : int
        Candidates per request.
    exclude_purchased : bool
        Leave out items the user bought before (set false where repeat purchases are normal).
    popularity_weights : tuple of float
        Weights of click, add-to-cart and purchase events in the popularity counts; default
        :data:`features.popularity.DEFAULT_POPULARITY_WEIGHTS` (1, 2, 4).
    popularity_global_weight : float
        A segment's popularity score is its own count plus this times the global count, so
        thin segments are completed by what is popular everywhere.
    popularity_depth : int
        Items kept per context segment; a row that needs more is completed from the global order.
    """

    k: int = 500
    exclude_purchased: bool = True
    popularity_weights: tuple[float, ...] = DEFAULT_POPULARITY_WEIGHTS
    popularity_global_weight: float = 0.1
    popularity_depth: int = 2000

    def __post_init__(self) -> None:
        check(self.k >= 1, "k", ">= 1", self.k)
        check(len(self.popularity_weights) == len(EVENT_TYPES) and all(w >= 0 for w in self.popularity_weights),
              "popularity_weights", f"{len(EVENT_TYPES)} non-negative weights ({', '.join(EVENT_TYPES)})",
              self.popularity_weights)
        check(self.popularity_global_weight >= 0, "popularity_global_weight", ">= 0", self.popularity_global_weight)
        check(self.popularity_depth >= 1, "popularity_depth", ">= 1", self.popularity_depth)


@dataclass(frozen=True)
class RetrievalConfig:
    """The ``retrieval`` section of the feedrank configuration."""

    model: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
