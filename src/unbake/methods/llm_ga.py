"""Gradient ascent and gradient difference on a causal language model."""

from __future__ import annotations

from unbake.methods._lm import RETAIN_WEIGHT, LMUnlearner, lm_tags, retain_nll
from unbake.methods.base import BATCH_SIZE, EPOCHS, LR, register_method
from unbake.training.lm import lm_loss
from unbake.training.loop import Phase


@register_method
class LLMGradientAscent(LMUnlearner):
    """Gradient ascent on the forget set's answer tokens (the "GA" baseline of TOFU).

    Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs" (COLM 2024); Jang et
    al., "Knowledge Unlearning for Mitigating Privacy Risks in Language Models" (ACL 2023).

        for each forget batch B_f:  θ ← θ + η ∇ CE(answers of B_f)

    Keep ``epochs`` and ``lr`` small.
    """

    name = "llm_ga"
    tags = lm_tags(
        reads=("forget",),
        cost="`epochs` passes over the forget set",
        limits="unbounded loss: run long, it destroys the model's fluency",
    )

    epochs: int = EPOCHS(2)
    lr: float = LR(1e-4)
    batch_size: int = BATCH_SIZE(8)

    def _phases(self, task, model, seed):
        return [Phase("forget", lambda m, got, _: -lm_loss(m, *got["forget"]), self.epochs)], []


@register_method
class LLMGradDiff(LMUnlearner):
    """Gradient difference: ascent on the forget answers, descent on the retain answers.

    Liu et al., "Continual Learning and Private Unlearning" (CoLLAs 2022); the "GradDiff"
    baseline of Maini et al., TOFU (COLM 2024).

        for each forget batch B_f with a retain batch B_r:
            θ ← θ − η ∇ [ −CE(B_f) + retain_weight · CE(B_r) ]
    """

    name = "llm_graddiff"
    tags = lm_tags(cost="`epochs` passes over the forget set, each paired with retain batches")

    epochs: int = EPOCHS(2)
    lr: float = LR(1e-4)
    batch_size: int = BATCH_SIZE(8)
    retain_weight: float = RETAIN_WEIGHT(1.0)

    def _phases(self, task, model, seed):
        def step(m, got, _):
            return -lm_loss(m, *got["forget"]) + retain_nll(m, got, self.retain_weight)

        return [Phase("forget", step, self.epochs, paired=("retain",))], []
