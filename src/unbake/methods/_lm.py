"""Building blocks of the language-model methods, each written once.

:class:`LMUnlearner` runs phases of the shared loop on a causal LM: its streams are the
forget and retain sets tokenised by the model's own tokenizer (loss on answer tokens
only). The losses below are the pieces the method files combine, as open-unlearning's
methods override one ``compute_loss`` over paired forget and retain batches.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from unbake._validation import Interval
from unbake.methods._blocks import LoopUnlearner
from unbake.methods.base import MethodTags, UnlearnTask
from unbake.training import TrainedModel
from unbake.training.lm import answer_nll, lm_loss, lm_streams
from unbake.training.loop import Batches

__all__ = [
    "LMUnlearner",
    "PreferenceUnlearner",
    "lm_tags",
    "log_likelihood",
    "npo_loss",
    "ref_log_likelihood",
    "retain_nll",
]


class LMUnlearner(LoopUnlearner):
    """Base of the methods that unlearn a causal LM on the loop (``hf:`` models only).

    Subclasses store ``epochs``, ``lr``, ``batch_size`` and ``retain_weight`` (where they
    read the retain set) and implement ``_phases``.
    """

    _parameter_constraints: ClassVar[dict[str, list]] = {
        **LoopUnlearner._parameter_constraints,
        "retain_weight": [Interval(float, 0, None, closed="left")],
        "beta": [Interval(float, 0, None, closed="neither")],
    }

    def _streams(self, task: UnlearnTask, model: TrainedModel):
        return lm_streams(model.module, model.spec, forget=task.forget, retain=task.retain)


class PreferenceUnlearner(LMUnlearner):
    """Shared constructor of the preference methods (NPO, SimNPO, IdkPO): ``beta``, ``retain_weight``."""

    def __init__(
        self,
        *,
        epochs: int = 2,
        lr: float = 1e-4,
        batch_size: int = 8,
        beta: float = 0.1,
        retain_weight: float = 1.0,
    ) -> None:
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.beta = beta
        self.retain_weight = retain_weight


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
