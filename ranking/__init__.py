"""Ranking: IPS-weighted LambdaMART, a calibrated purchase model, expected GMV, tuning and compilation.

Heavy libraries (LightGBM, treelite, tl2cgen, Optuna, matplotlib) are imported where they are
used, so importing the package stays cheap.
"""

from ranking.calibration import (
    IsotonicCalibrator,
    ReliabilityCurve,
    draw_reliability,
    expected_calibration_error,
    plot_reliability_diagram,
    reliability_curve,
)
from ranking.compile import (
    CompilationError,
    CompiledModelUnavailableWarning,
    CompiledPredictor,
    NativePredictor,
    compile_model,
    load_predictor,
)
from ranking.config import CompileConfig, GBDTParams, PropensityConfig, RankingConfig, TuningConfig
from ranking.propensity import PositionBiasEstimator, examination_inputs_from_logs
from ranking.purchase import PurchaseModel
from ranking.ranker import LambdaMARTRanker, LambdaRankObjective
from ranking.scorer import ExpectedGMVScorer, ScoredCandidates
from ranking.train import TrainingResult, split_by_time, train_ranking_models
from ranking.tuning import TuningResult, tune_ranker

__all__ = [
    "CompilationError",
    "CompileConfig",
    "CompiledModelUnavailableWarning",
    "CompiledPredictor",
    "ExpectedGMVScorer",
    "GBDTParams",
    "IsotonicCalibrator",
    "LambdaMARTRanker",
    "LambdaRankObjective",
    "NativePredictor",
    "PositionBiasEstimator",
    "PropensityConfig",
    "PurchaseModel",
    "RankingConfig",
    "ReliabilityCurve",
    "ScoredCandidates",
    "TrainingResult",
    "TuningConfig",
    "TuningResult",
    "compile_model",
    "draw_reliability",
    "examination_inputs_from_logs",
    "expected_calibration_error",
    "load_predictor",
    "plot_reliability_diagram",
    "reliability_curve",
    "split_by_time",
    "train_ranking_models",
    "tune_ranker",
]
