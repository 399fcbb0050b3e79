"""Negative preference optimisation (NPO) and its reference-free form, SimNPO."""

from __future__ import annotations

import torch.nn.functional as F

from unbake._validation import hyperparameter
from unbake.methods._blocks import frozen_teacher
from unbake.methods._lm import (
    BETA,
    PreferenceUnlearner,
    lm_tags,
    log_likelihood,
    npo_loss,
    ref_log_likelihood,
    retain_nll,
)
from unbake.methods.base import register_method
from unbake.training.lm import answer_nll
from unbake.training.loop import Phase

_COST = "`epochs` passes over the forget set, each paired with retain batches"


@register_method
class NPO(PreferenceUnlearner):
    """Negative Preference Optimisation, with the retain term (NPO+RT).

    Zhang, Lin, Bai and Mei, "Negative Preference Optimization: From Catastrophic Collapse
    to Effective Unlearning" (COLM 2024). DPO with only a rejected answer: the loss is
    bounded, so it does not collapse as gradient ascent does.

        L = (2/β) E_f[ log(1 + (π_θ(y|x) / π_ref(y|x))^β) ] + retain_weight · CE(B_r)

    π_ref is the original model, frozen.
    """

    name = "npo"
    tags = lm_tags(cost=_COST + "; a frozen copy of the original as reference")

    def _phases(self, task, model, seed):
        reference = frozen_teacher(model.module)

        def step(m, got, _):
            forget = got["forget"]
            ratio = log_likelihood(m, forget) - ref_log_likelihood(reference, forget)
            return npo_loss(ratio, self.beta) + retain_nll(m, got, self.retain_weight)

        return [Phase("forget", step, self.epochs, paired=("retain",))], []


@register_method
class SimNPO(PreferenceUnlearner):
    """SimNPO: NPO without a reference model, on the length-normalised log-likelihood.

    Fan, Liu, Lin, Jia, Zhang, Mei and Liu, "Simplicity Prevails: Rethinking Negative
    Preference Optimization for LLM Unlearning" (2024).

        L = −(2/β) E_f[ log σ(−(β/|y|) log π_θ(y|x) − γ) ] + retain_weight · CE(B_r)
    """

    name = "simnpo"
    tags = lm_tags(cost=_COST)

    beta: float = BETA(2.5)
    gamma: float = hyperparameter(
        0.0, help="Reward margin γ subtracted inside the log-sigmoid.", constraints=[float]
    )

    def _phases(self, task, model, seed):
        def step(m, got, _):
            nll, counts = answer_nll(m, *got["forget"])
            margin = (self.beta / counts.clamp_min(1)) * nll - self.gamma  # −(β/|y|)·log π − γ
            loss = -(2.0 / self.beta) * F.logsigmoid(margin).mean()
            return loss + retain_nll(m, got, self.retain_weight)

        return [Phase("forget", step, self.epochs, paired=("retain",))], []
