"""Random labels: train on the forget set relabelled at random, together with the retain set."""

from __future__ import annotations

from unbake.methods._blocks import LoopUnlearner, ce, random_wrong_labels
from unbake.methods.base import BATCH_SIZE, EPOCHS, LR, RETAIN_SAMPLES, MethodTags, register_method
from unbake.training.loop import Phase


@register_method
class RandomLabel(LoopUnlearner):
    """Random-label unlearning (the baseline of Golatkar et al., "Eternal Sunshine of the
    Spotless Net", CVPR 2020; also Graves et al., "Amnesiac Machine Learning", AAAI 2021).

        for epoch in 1..epochs, for each retain batch B_r, paired with a forget batch B_f:
            ỹ_f ← a uniformly drawn *wrong* label for each row of B_f (seeded generator)
            θ ← θ − η ∇[ ℓ(B_r) + ℓ(x_f, ỹ_f) ]

    When to use: class-wise forgetting, where the retrained model should answer anything
    but the forgotten label.
    """

    name = "random_label"
    tags = MethodTags(
        cost="`epochs` passes over the `retain_samples` retain rows (plus one forget batch a step)",
        limits="random forgetting: it pushes the forget set below the test accuracy",
    )

    epochs: int = EPOCHS(2)
    lr: float = LR(1e-3)
    batch_size: int = BATCH_SIZE(64)
    retain_samples: int | None = RETAIN_SAMPLES(None)

    def _phases(self, task, model, seed):
        n_classes = model.n_classes

        def step(m, got, generator):
            x_f, y_f = got["forget"]
            wrong = random_wrong_labels(y_f, n_classes, generator)
            return ce(m, got["retain"]) + ce(m, (x_f, wrong))

        return [Phase("retain", step, epochs=self.epochs, paired=("forget",))], []
