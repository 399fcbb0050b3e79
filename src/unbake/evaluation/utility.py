"""Utility: accuracy on the forget, retain and test sets (FA, RA, TA)."""

from __future__ import annotations

import numpy as np

from unbake.data import Samples
from unbake.data.text import TextSamples
from unbake.evaluation.base import EvalContext, Metric, Result, register_metric
from unbake.evaluation.metrics import nll
from unbake.training import TrainedModel

__all__ = ["Utility", "accuracy", "per_sample_loss"]


def per_sample_loss(
    model: TrainedModel, samples: Samples | TextSamples
) -> tuple[np.ndarray, np.ndarray]:
    """(cross-entropy loss, correct?) for every sample, from the model's log-probabilities.

    For text: the mean loss over the answer tokens, and whether every answer token is
    the model's top prediction (:func:`unbake.training.lm.answer_loss_and_match`).
    """
    if len(samples) == 0:
        return np.empty(0), np.empty(0, dtype=bool)
    if isinstance(samples, TextSamples):
        from unbake.training.lm import answer_loss_and_match

        return answer_loss_and_match(model, samples)
    lp = model.log_proba(samples.X).double().numpy()
    return nll(lp, samples.y), lp.argmax(1) == samples.y


def _pct(correct: np.ndarray) -> float:
    return float(correct.mean() * 100.0) if len(correct) else float("nan")


def accuracy(model: TrainedModel, samples: Samples) -> float:
    """Top-1 accuracy in percent."""
    return _pct(per_sample_loss(model, samples)[1])


@register_metric
class Utility(Metric):
    """Top-1 accuracy (%) on the forget, retain and test sets."""

    name = "utility"
    order = 0
    results = (
        Result("fa", "FA", "forget accuracy (%)", gap=True, column=True),
        Result("ra", "RA", "retain accuracy (%)", gap=True, column=True),
        Result("ta", "TA", "test accuracy (%)", gap=True, column=True),
    )

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        out = {}
        for key, split in (("fa", "forget"), ("ra", "retain"), ("ta", "test")):
            out[key] = _pct(ctx.correct(split))
        return out
