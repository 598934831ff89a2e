"""Configuration of the ranking package: the ``ranking`` section of the feedrank configuration.

Every value is checked once, in ``__post_init__``; the messages start with the field name
(``infra.config`` prefixes the section, e.g. ``ranking.ranker.num_leaves``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from features.config import check

__all__ = [
    "CompileConfig",
    "DEFAULT_PARAMS",
    "GBDTParams",
    "PropensityConfig",
    "RankingConfig",
    "TuningConfig",
    "PURCHASE_LABELS",
]

PURCHASE_LABELS: tuple[str, ...] = ("purchased_7d", "purchased_24h")


@dataclass(frozen=True)
class GBDTParams:
    """LightGBM parameters of one model (the ranker or the purchase model).

    Parameters
    ----------
    num_boost_round : int
        Upper bound on the number of trees; early stopping usually ends sooner.
    early_stopping_rounds : int
        Stop when the validation metric has not improved for this many rounds (0 = never).
    min_boost_round : int
        No fewer trees than this: earlier iterations never count as the best one (a noisy
        validation slice otherwise stops a model at two trees that has learnt nothing).
    learning_rate, num_leaves, max_depth, min_data_in_leaf, feature_fraction,
    bagging_fraction, bagging_freq, lambda_l2 :
        As in LightGBM (``max_depth = -1`` is unlimited).
    increasing, decreasing : tuple of str
        LightGBM monotone constraints by feature name: the output may only rise (fall) with
        these features (names the model does not have are ignored). Prior knowledge
        that holds in any marketplace (e.g. a higher price relative to what the buyer usually
        pays never makes a purchase more likely) keeps a model trained on few purchases from
        learning noise in the opposite direction.
    """

    num_boost_round: int = 300
    early_stopping_rounds: int = 30
    min_boost_round: int = 0
    learning_rate: float = 0.05
    num_leaves: int = 31
    max_depth: int = -1
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.9
    bagging_fraction: float = 1.0
    bagging_freq: int = 0
    lambda_l2: float = 0.0
    increasing: tuple[str, ...] = ()
    decreasing: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check(self.num_boost_round >= 1, "num_boost_round", ">= 1", self.num_boost_round)
        check(self.early_stopping_rounds >= 0, "early_stopping_rounds", ">= 0", self.early_stopping_rounds)
        check(self.min_boost_round >= 0, "min_boost_round", ">= 0", self.min_boost_round)
        check(0.0 < self.learning_rate <= 1.0, "learning_rate", "in (0, 1]", self.learning_rate)
        check(self.num_leaves >= 2, "num_leaves", ">= 2", self.num_leaves)
        check(self.max_depth == -1 or self.max_depth >= 1, "max_depth", "-1 (unlimited) or >= 1", self.max_depth)
        check(self.min_data_in_leaf >= 1, "min_data_in_leaf", ">= 1", self.min_data_in_leaf)
        check(0.0 < self.feature_fraction <= 1.0, "feature_fraction", "in (0, 1]", self.feature_fraction)
        check(0.0 < self.bagging_fraction <= 1.0, "bagging_fraction", "in (0, 1]", self.bagging_fraction)
        check(self.bagging_freq >= 0, "bagging_freq", ">= 0", self.bagging_freq)
        check(self.lambda_l2 >= 0.0, "lambda_l2", ">= 0", self.lambda_l2)
        both = set(self.increasing) & set(self.decreasing)
        check(not both, "decreasing", f"features not also in increasing (both: {sorted(both)})", self.decreasing)

    def lightgbm_params(self) -> dict[str, Any]:
        """The tree parameters as LightGBM's ``params`` keys (without objective, threads or seed)."""
        return {
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "max_depth": self.max_depth,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "lambda_l2": self.lambda_l2,
        }

    def monotone_constraints(self, feature_names: list[str]) -> list[int] | None:
        """LightGBM's ``monotone_constraints`` vector for ``feature_names`` (None without constraints)."""
        if not (self.increasing or self.decreasing):
            return None
        up, down = set(self.increasing), set(self.decreasing)
        return [1 if name in up else -1 if name in down else 0 for name in feature_names]


@dataclass(frozen=True)
class PropensityConfig:
    """Position-bias estimation from randomized traffic, and the IPS weights derived from it.

    Parameters
    ----------
    max_weight : float
        IPS weights ``1 / examination(position)`` are clipped at this value (>= 1). A
        bias-variance choice: on the simulator with its default logging policy, clipping at
        10 let the few clicks far down the feed dominate (truth NDCG@10 below the naive
        ranker's), 2-5 beat the naive ranker; with a logging order that follows popularity
        closely (more confounding), 10 did best. 5 is the default.
    min_impressions : int
        A position needs at least this many randomized impressions (sample-weighted) to be
        estimated directly; other positions are interpolated or extrapolated.
    monotone : bool
        Smooth the raw estimates with a non-increasing isotonic fit.
    """

    max_weight: float = 5.0
    min_impressions: int = 200
    monotone: bool = True

    def __post_init__(self) -> None:
        check(self.max_weight >= 1.0, "max_weight", ">= 1", self.max_weight)
        check(self.min_impressions >= 1, "min_impressions", ">= 1", self.min_impressions)


@dataclass(frozen=True)
class TuningConfig:
    """The Optuna study over the ranker's LightGBM parameters.

    Parameters
    ----------
    n_trials : int
        Budget in trials; 0 turns tuning off (the configured parameters are used as they are).
    timeout_s : float
        Wall-clock budget in seconds; 0 means no limit besides ``n_trials``.
    seed : int
        Seed of the TPE sampler (and of LightGBM in each trial).
    pruning_warmup_rounds : int
        Boosting rounds before the median pruner may stop a trial.
    """

    n_trials: int = 0
    timeout_s: float = 0.0
    seed: int = 0
    pruning_warmup_rounds: int = 30

    def __post_init__(self) -> None:
        check(self.n_trials >= 0, "n_trials", ">= 0", self.n_trials)
        check(self.timeout_s >= 0.0, "timeout_s", ">= 0", self.timeout_s)
        check(self.seed >= 0, "seed", ">= 0", self.seed)
        check(self.pruning_warmup_rounds >= 0, "pruning_warmup_rounds", ">= 0", self.pruning_warmup_rounds)


@dataclass(frozen=True)
class CompileConfig:
    """Compiling the models to a shared library (treelite, then tl2cgen and a C compiler).

    Parameters
    ----------
    enabled : bool
        Compile after training; when compiling fails the LightGBM models are used instead.
    toolchain : str
        Compiler command; empty means ``$CC``, else ``gcc``.
    quantize : bool
        tl2cgen's ``quantize`` option (thresholds as integer bin indices): identical predictions,
        and faster at every size measured (500 rows, one thread, quiet 2-core box: 300 trees x 31
        leaves p50 4.6 ms vs 10.1 ms unquantized, 100 x 31 1.5 vs 2.5 ms, 500 x 63 10.2 vs 28.3 ms).
    parallel_comp : int
        Split the generated C code into this many translation units (0 = one per 50 trees).
    """

    enabled: bool = True
    toolchain: str = ""
    quantize: bool = True
    parallel_comp: int = 0

    def __post_init__(self) -> None:
        check(self.parallel_comp >= 0, "parallel_comp", ">= 0", self.parallel_comp)


DEFAULT_PARAMS = GBDTParams()


def _ranker_defaults() -> GBDTParams:
    # Validation NDCG on click logs is noisy (a few clicks per request): a longer patience.
    return GBDTParams(early_stopping_rounds=50)


def _purchase_defaults() -> GBDTParams:
    # The later funnel stages learn from a few thousand rows: small, L2-regularised trees and at
    # least 50 of them (on the simulator's two weeks this raised E[GMV]-ordered truth GMV from
    # 1.64x to 1.76x popularity against 31-leaf trees that early-stopped at 36).
    return GBDTParams(num_boost_round=400, early_stopping_rounds=40, min_boost_round=50, num_leaves=7,
                      min_data_in_leaf=100, lambda_l2=10.0)


def _click_defaults() -> GBDTParams:
    # 15 leaves with L2 10: 1.79x against 1.76x for 31 unregularised leaves (same two weeks, same truth)
    return GBDTParams(num_boost_round=400, early_stopping_rounds=40, min_boost_round=30, num_leaves=15,
                      min_data_in_leaf=100, lambda_l2=10.0)


# The purchase model as a funnel of conditional models, each stage given the one before it; the
# product of the stages is P(purchase | examined). STAGE_LABELS: the training column of each stage.
FUNNELS: dict[str, tuple[str, ...]] = {"click_cart_purchase": ("click", "cart", "purchase"),
                                       "click_then_purchase": ("click", "purchase"),
                                       "direct": ("purchase",)}
STAGE_LABELS: dict[str, str] = {"click": "clicked", "cart": "carted"}
PURCHASE_MODELS: tuple[str, ...] = tuple(FUNNELS)
CALIBRATION_KINDS: tuple[str, ...] = ("auto", "isotonic", "platt", "none")


@dataclass(frozen=True)
class RankingConfig:
    """The ``ranking`` section: IPS-weighted LambdaMART, the purchase model, scoring and export.

    Parameters
    ----------
    ranker, purchase, click, cart : GBDTParams
        LightGBM parameters of the LambdaMART ranker and of each stage of the purchase funnel
        (``click`` and ``cart`` are used only by the funnels that have those stages).
    purchase_model : {"click_cart_purchase", "click_then_purchase", "direct"}
        How P(purchase | examined) is learnt (:data:`FUNNELS`): a product of conditional models,
        P(click | examined) from every impression (the slot as a feature, asked at slot 0), then
        P(cart | click) from the clicked impressions, then P(purchase | cart) from the carted ones.
        Each stage learns from many more positives than purchases alone give (on the simulator's
        two weeks: 21.7k clicks, 5.8k carts, 1.9k purchases), and the later stages see price and
        seller effects free of where the item was shown. ``"direct"``: one model of purchase on
        every impression.
    calibration : {"auto", "isotonic", "platt", "none"}
        Map from the model's P to the calibrated P; ``"auto"`` picks by held-out log loss on the
        calibration slice (``ranking.calibration.select_calibrator``).
    propensity : PropensityConfig
    tuning : TuningConfig
    compile : CompileConfig
    ips_weighting : bool
        Train the ranker with inverse-propensity pair weights; false gives the naive ranker.
    eval_at : tuple of int
        NDCG cut-offs reported on the validation and test slices.
    stop_at : int
        The NDCG cut-off that early stopping and tuning optimise (one of ``eval_at``).
    truncation_level : int
        LambdaRank considers pairs with at least one document in the top ``truncation_level``.
    valid_fraction, test_fraction : float
        Shares of requests, by time, in the validation slice (early stopping, calibration)
        and the last, held-out test slice (reported metrics). Their sum is below 1.
    purchase_label : {"purchased_7d", "purchased_24h"}
        The purchase model's target.
    complete_labels_only : bool
        Train and calibrate the purchase model only on rows whose label window has closed.
    purchase_position_feature : bool
        Give the purchase model the logged slot as a feature and score candidates at slot 0,
        so that P(purchase) is not confounded by where the logging policy showed an item.
    calibration_bins : int
        Bins (equal-mass) of the expected calibration error and the reliability diagram.
    blend_weight : float
        ``score = E[GMV] * exp(blend_weight * z)`` with ``z`` the ranker's score standardised
        within the request; 0 orders by E[GMV] alone (the ranker breaks ties). 0.5 by default
        (see ``ranking.scorer`` for the measurements behind it).
    num_threads : int
        LightGBM threads for training and native prediction.
    seed : int
    """

    ranker: GBDTParams = field(default_factory=_ranker_defaults)
    purchase: GBDTParams = field(default_factory=_purchase_defaults)
    click: GBDTParams = field(default_factory=_click_defaults)
    cart: GBDTParams = field(default_factory=_purchase_defaults)
    propensity: PropensityConfig = field(default_factory=PropensityConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)
    ips_weighting: bool = True
    eval_at: tuple[int, ...] = (10, 20)
    stop_at: int = 20
    truncation_level: int = 30
    valid_fraction: float = 0.15
    test_fraction: float = 0.15
    purchase_label: str = "purchased_7d"
    complete_labels_only: bool = True
    purchase_position_feature: bool = True
    purchase_model: str = "click_then_purchase"
    calibration: str = "auto"
    calibration_bins: int = 15
    blend_weight: float = 0.0
    num_threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        check(len(self.eval_at) >= 1 and all(k >= 1 for k in self.eval_at), "eval_at",
              "a non-empty list of cut-offs >= 1", self.eval_at)
        check(self.stop_at in self.eval_at, "stop_at", f"one of eval_at {list(self.eval_at)}", self.stop_at)
        check(self.truncation_level >= 1, "truncation_level", ">= 1", self.truncation_level)
        check(0.0 < self.valid_fraction < 1.0, "valid_fraction", "in (0, 1)", self.valid_fraction)
        check(0.0 <= self.test_fraction < 1.0, "test_fraction", "in [0, 1)", self.test_fraction)
        check(self.valid_fraction + self.test_fraction < 0.9, "test_fraction",
              f"such that valid_fraction + test_fraction < 0.9 (valid_fraction={self.valid_fraction})",
              self.test_fraction)
        check(self.purchase_label in PURCHASE_LABELS, "purchase_label", f"one of {list(PURCHASE_LABELS)}",
              self.purchase_label)
        check(self.purchase_model in PURCHASE_MODELS, "purchase_model", f"one of {list(PURCHASE_MODELS)}",
              self.purchase_model)
        check(self.calibration in CALIBRATION_KINDS, "calibration", f"one of {list(CALIBRATION_KINDS)}",
              self.calibration)
        check(self.calibration_bins >= 2, "calibration_bins", ">= 2", self.calibration_bins)
        check(self.blend_weight >= 0.0, "blend_weight", ">= 0", self.blend_weight)
        check(self.num_threads >= 1, "num_threads", ">= 1", self.num_threads)
        check(self.seed >= 0, "seed", ">= 0", self.seed)
