"""NegGrad+: descent on the retain set and ascent on the forget set, interleaved."""

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
class NegGradPlus(LoopUnlearner):
    """NegGrad+ (Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023).

        for epoch in 1..epochs, for each retain batch B_r, paired with a forget batch B_f:
            θ ← θ − η ∇[ β·ℓ(B_r) − (1 − β)·ℓ(B_f) ]

    When to use: the first method to try when retain data exists; tuned with the same
    budget as the rest it is a strong baseline (Cadet et al., "Deep Unlearn", 2024).
    ``beta`` trades keeping (retain) against forgetting (forget).
    """

    name = "neggrad_plus"
    tags = MethodTags(
        cost="`epochs` passes over the `retain_samples` retain rows (plus one forget batch a step)"
    )
    search_space = {**LoopUnlearner.search_space, "beta": Knob(0.8, 1.0)}

    epochs: int = EPOCHS(2)
    lr: float = LR(1e-3)
    batch_size: int = BATCH_SIZE(64)
    retain_samples: int | None = RETAIN_SAMPLES(None)
    beta: float = hyperparameter(
        0.98,
        help="Weight β of the retain loss; the forget loss gets 1 − β.",
        constraints=[Interval(float, 0, 1, closed="both")],
    )

    def _phases(self, task, model, seed):
        def step(m, got, _):
            return self.beta * ce(m, got["retain"]) - (1 - self.beta) * ce(m, got["forget"])

        return [Phase("retain", step, epochs=self.epochs, paired=("forget",))], []
