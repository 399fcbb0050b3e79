"""Verification: named metrics (utility, membership inference) and the gap to retraining."""

from unbake.evaluation import attacks as _attacks  # noqa: F401  (registers the attacks)
from unbake.evaluation import tofu as _tofu  # noqa: F401  (registers TOFU's metrics)
from unbake.evaluation.base import (
    METRICS,
    EvalContext,
    Evaluation,
    Metric,
    Result,
    avg_gap,
    evaluate,
    gap_metrics,
    result_specs,
)
from unbake.evaluation.metrics import best_threshold, roc_auc, roc_summary
from unbake.evaluation.utility import accuracy, per_sample_loss

__all__ = [
    "METRICS",
    "EvalContext",
    "Evaluation",
    "Metric",
    "Result",
    "accuracy",
    "avg_gap",
    "best_threshold",
    "evaluate",
    "gap_metrics",
    "per_sample_loss",
    "result_specs",
    "roc_auc",
    "roc_summary",
]
