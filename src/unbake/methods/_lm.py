"""Building blocks of the language-model methods, each written once.

:class:`LMUnlearner` runs phases of the shared loop on a causal LM: its streams are the
forget and retain sets tokenised by the model's own tokenizer (loss on answer tokens
only). The losses below are the pieces the method files combine, as open-unlearning's
methods override one ``compute_loss`` over paired forget and retain batches.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from unbake._validation import Hyperparameter, Interval
from unbake.data.text import TextSamples
from unbake.methods._blocks import LoopUnlearner
from unbake.methods.base import BATCH_SIZE, EPOCHS, LR, MethodTags, UnlearnTask
from unbake.training import TrainedModel
from unbake.training.lm import answer_nll, lm_loss, lm_streams
from unbake.training.loop import Batches

__all__ = [
    "BETA",
    "LMUnlearner",
    "PreferenceUnlearner",
    "lm_tags",
    "log_likelihood",
    "npo_loss",
    "ref_log_likelihood",
    "retain_nll",
]

#: ``retain_weight``: the weight of the retain term, in every LM method that has one.
RETAIN_WEIGHT = Hyperparameter(
    "Weight of the retain term (0: forget-set loss only).",
    [Interval(float, 0, None, closed="left")],
)
#: ``beta``: the inverse temperature of the preference methods' log-sigmoid.
BETA = Hyperparameter(
    "Inverse temperature β of the preference loss.", [Interval(float, 0, None, closed="neither")]
)


class LMUnlearner(LoopUnlearner):
    """Base of the methods that unlearn a causal LM on the loop (``hf:`` models only).

    Subclasses declare ``epochs``, ``lr``, ``batch_size`` and ``retain_weight`` (where
    they read the retain set) and implement ``_phases``.
    """

    def _streams(self, task: UnlearnTask, model: TrainedModel):
        forget, retain = cast(TextSamples, task.forget), cast(TextSamples, task.retain)
        return lm_streams(model.module, model.spec, forget=forget, retain=retain)


class PreferenceUnlearner(LMUnlearner):
    """The hyperparameters the preference methods (NPO, SimNPO, IdkPO) share."""

    epochs: int = EPOCHS(2)
    lr: float = LR(1e-4)
    batch_size: int = BATCH_SIZE(8)
    beta: float = BETA(0.1)
    retain_weight: float = RETAIN_WEIGHT(1.0)


def lm_tags(**tags: Any) -> MethodTags:
    """:class:`MethodTags` of a method that unlearns language models only."""
    return MethodTags(inputs=("text",), **tags)


def log_likelihood(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Per-sample log π(answer | prompt), summed over the answer tokens."""
    nll, _ = answer_nll(model, *batch)
    return -nll


@torch.no_grad()
def ref_log_likelihood(
    reference: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """:func:`log_likelihood` under a frozen reference model, without gradients."""
    return log_likelihood(reference, batch)


def npo_loss(log_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO's ``(2/β) · mean log(1 + (π_θ/π_ref)^β)``, written ``-(2/β) logσ(-β log-ratio)``."""
    return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()


def retain_nll(model: nn.Module, got: Batches, weight: float) -> torch.Tensor:
    """``weight`` × the answer cross-entropy on the retain batch (zero without one)."""
    if "retain" not in got or weight == 0:
        return torch.zeros((), device=next(model.parameters()).device)
    return weight * lm_loss(model, *got["retain"])
