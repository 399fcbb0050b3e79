"""Verification: utility (FA/RA/TA), membership inference, and the gap to retraining."""

from unbake.evaluation.metrics import best_threshold, roc_auc
from unbake.evaluation.utility import Evaluation, accuracy, avg_gap, evaluate, per_sample_loss

__all__ = [
    "Evaluation",
    "accuracy",
    "avg_gap",
    "best_threshold",
    "evaluate",
    "per_sample_loss",
    "roc_auc",
]
