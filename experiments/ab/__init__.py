"""A/B statistics: assignment, SRM, effect estimates, CUPED, power, A/A, guardrails, sequential tests.

Pure functions over arrays and DataFrames; results are frozen dataclasses.
"""

from experiments.ab.aa import AATestResult, run_aa_test
from experiments.ab.assignment import SampleRatioResult, assign_arm, sample_ratio_mismatch
from experiments.ab.cuped import CupedAdjustment, CupedResult, cuped_adjust, cuped_ttest
from experiments.ab.effects import (
    EffectEstimate,
    clustered_regression,
    ratio_delta_test,
    welch_ttest,
)
from experiments.ab.guardrails import GUARDRAIL_COLUMNS, guardrail_table
from experiments.ab.power import minimum_detectable_effect, required_sample_size, statistical_power
from experiments.ab.sequential import (
    SequentialDecision,
    SequentialPlan,
    obrien_fleming_plan,
    obrien_fleming_spending,
    sequential_decision,
)

__all__ = [
    "GUARDRAIL_COLUMNS",
    "AATestResult",
    "CupedAdjustment",
    "CupedResult",
    "EffectEstimate",
    "SampleRatioResult",
    "SequentialDecision",
    "SequentialPlan",
    "assign_arm",
    "clustered_regression",
    "cuped_adjust",
    "cuped_ttest",
    "guardrail_table",
    "minimum_detectable_effect",
    "obrien_fleming_plan",
    "obrien_fleming_spending",
    "ratio_delta_test",
    "required_sample_size",
    "run_aa_test",
    "sample_ratio_mismatch",
    "sequential_decision",
    "statistical_power",
    "welch_ttest",
]
