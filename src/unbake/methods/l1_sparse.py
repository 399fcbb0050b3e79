"""ℓ1-sparse fine-tuning: fine-tune on the retain set with an ℓ1 penalty on the weights."""

from __future__ import annotations

from unbake._validation import Interval, hyperparameter
from unbake.methods._blocks import LoopUnlearner, ce
from unbake.methods.base import (
    BATCH_SIZE,
    EPOCHS,
    LR,
    RETAIN_SAMPLES,
    Knob,
    MethodTags,
    register_method,
)
from unbake.training.loop import Phase


@register_method
class L1Sparse(LoopUnlearner):
    """ℓ1-sparse unlearning (Jia et al., "Model Sparsity Can Simplify Machine Unlearning",
    NeurIPS 2023).

        for epoch in 1..epochs, for each retain batch B_r, at step t of T:
            γ_t ← γ · (1 − t/T)                      (linearly decaying penalty)
            θ ← θ − η ∇[ ℓ(B_r) + γ_t · ‖θ‖₁ ]

    When to use: when fine-tuning alone forgets too little; sparsity shrinks the weights
    that only the forget set used.
    """

    name = "l1_sparse"
    tags = MethodTags(
        reads=("retain",), cost="`epochs` passes over the `retain_samples` retain rows"
    )
    search_space = {**LoopUnlearner.search_space, "gamma": Knob(1e-5, 1e-2, log=True)}

    epochs: int = EPOCHS(5)
    lr: float = LR(1e-3)
    batch_size: int = BATCH_SIZE(64)
    retain_samples: int | None = RETAIN_SAMPLES(None)
    gamma: float = hyperparameter(
        2e-3,
        help="Starting strength γ of the ℓ1 penalty, decayed linearly to 0.",
        constraints=[Interval(float, 0, None, closed="left")],
    )

    def _phases(self, task, model, seed):
        total = self.epochs * -(-len(task.retain) // self.batch_size)
        t = [0]

        def step(m, got, _):
            gamma = self.gamma * (1 - t[0] / total)
            t[0] += 1
            l1 = sum(p.abs().sum() for p in m.parameters() if p.requires_grad)
            return ce(m, got["retain"]) + gamma * l1

        return [Phase("retain", step, epochs=self.epochs)], []
