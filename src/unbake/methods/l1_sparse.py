"""ℓ1-sparse fine-tuning: fine-tune on the retain set with an ℓ1 penalty on the weights."""

from __future__ import annotations

from unbake._validation import Interval
from unbake.methods._blocks import LoopUnlearner, ce
from unbake.methods.base import Knob, MethodTags, register_method
from unbake.training.loop import Phase


@register_method
class L1Sparse(LoopUnlearner):
    """ℓ1-sparse unlearning (Jia et al., "Model Sparsity Can Simplify Machine Unlearning",
    NeurIPS 2023).

        for epoch in 1..epochs, for each retain batch B_r, at step t of T:
            γ_t ← γ · (1 − t/T)                      (linearly decaying penalty)
            θ ← θ − η ∇[ ℓ(B_r) + γ_t · ‖θ‖₁ ]

    When to use: when fine-tuning alone forgets too little; sparsity shrinks the weights
    that only the forget set used. Cost: ``epochs`` passes over the ``retain_samples`` retain rows (all by default).
    """

    name = "l1_sparse"
    tags = MethodTags(
        reads=("retain",), cost="`epochs` passes over the `retain_samples` retain rows"
    )
    _parameter_constraints = {
        **LoopUnlearner._parameter_constraints,
        "gamma": [Interval(float, 0, None, closed="left")],
    }
    search_space = {**LoopUnlearner.search_space, "gamma": Knob(1e-5, 1e-2, log=True)}

    def __init__(
        self,
        *,
        epochs: int = 5,
        lr: float = 1e-3,
        batch_size: int = 64,
        retain_samples: int | None = None,
        gamma: float = 2e-3,
    ) -> None:
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.retain_samples = retain_samples
        self.gamma = gamma

    def _phases(self, task, model, seed):
        total = self.epochs * -(-len(task.retain) // self.batch_size)
        t = [0]

        def step(m, got, _):
            gamma = self.gamma * (1 - t[0] / total)
            t[0] += 1
            l1 = sum(p.abs().sum() for p in m.parameters() if p.requires_grad)
            return ce(m, got["retain"]) + gamma * l1

        return [Phase("retain", step, epochs=self.epochs)], []
