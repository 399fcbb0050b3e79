"""The two simplest baselines: fine-tuning on the retain set, and gradient ascent (NegGrad)."""

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
class Finetune(LoopUnlearner):
    """Fine-tune on the retain set only, relying on catastrophic forgetting.

    Warnecke et al., "Machine Unlearning of Features and Labels" (NDSS 2023); the "FT"
    baseline of Jia et al., "Model Sparsity Can Simplify Machine Unlearning" (NeurIPS 2023).

        for epoch in 1..epochs, for each retain batch B_r:  θ ← θ − η ∇ℓ(B_r)

    When to use: a baseline.
    """

    name = "finetune"
    tags = MethodTags(
        reads=("retain",),
        cost="`epochs` passes over the `retain_samples` retain rows",
        limits="does not target the forget set; forgets only what further training overwrites",
    )

    epochs: int = EPOCHS(3)
    lr: float = LR(5e-3)
    batch_size: int = BATCH_SIZE(64)
    retain_samples: int | None = RETAIN_SAMPLES(None)

    def _phases(self, task, model, seed):
        return [Phase("retain", lambda m, got, _: ce(m, got["retain"]), epochs=self.epochs)], []


@register_method
class NegGrad(LoopUnlearner):
    """Gradient ascent on the forget set (the "GA"/"NegGrad" baseline).

    Thudi et al., "Unrolling SGD" (EuroS&P 2022); Golatkar et al., "Eternal Sunshine of
    the Spotless Net" (CVPR 2020).

        for epoch in 1..epochs, for the first max_steps forget batches B_f of a
        seeded shuffle:  θ ← θ + η ∇ℓ(B_f)

    When to use: when no retain data is available (it reads none). The loss it climbs
    has no top, and with Adam every step moves each weight by about ``lr`` in the same
    direction, so ``max_steps`` caps the batches of each pass; keep it, ``epochs`` and
    ``lr`` small, and prefer ``neggrad_plus`` when retain data exists.
    """

    name = "neggrad"
    tags = MethodTags(
        reads=("forget",),
        cost="`epochs` passes over at most `max_steps` forget batches",
        limits="overshoots on random forgetting: with defaults set for class-wise "
        "forgetting it drags retain and test accuracy down",
    )
    search_space = {
        "epochs": Knob(1, 5),
        "lr": Knob(3e-6, 3e-4, log=True),
        "max_steps": Knob(1, 64, log=True),
    }

    epochs: int = EPOCHS(4)
    lr: float = LR(3e-4)
    batch_size: int = BATCH_SIZE(64)
    max_steps: int | None = hyperparameter(
        None,
        help="Forget batches per pass, from a seeded shuffle (None: all of them).",
        constraints=[Interval(int, 1, None, closed="left"), None],
    )

    def _phases(self, task, model, seed):
        ascent = Phase(
            "forget",
            lambda m, got, _: -ce(m, got["forget"]),
            epochs=self.epochs,
            steps=self.max_steps,
        )
        return [ascent], []
