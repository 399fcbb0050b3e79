"""Bad teacher: distil a competent teacher on the retain set and a random one on the forget set."""

from __future__ import annotations

from unbake.methods._blocks import (
    TEMPERATURE,
    LoopUnlearner,
    frozen_teacher,
    kl_distill,
    reinitialised,
)
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
class BadTeacher(LoopUnlearner):
    """Bad teaching (Chundawat et al., "Can Bad Teaching Induce Forgetting? Unlearning in
    Deep Networks Using an Incompetent Teacher", AAAI 2023).

        good ← a frozen copy of θ_o;  bad ← the same architecture, freshly initialised (seeded)
        for epoch in 1..epochs, for each retain batch B_r, paired with a forget batch B_f:
            θ ← θ − η ∇[ KL(good(B_r) ‖ student(B_r)) + KL(bad(B_f) ‖ student(B_f)) ]

    KL at temperature ``temperature``. When to use: class-wise forgetting, or any request
    where forgotten samples should get the answers of a model that never learned anything.
    """

    name = "bad_teacher"
    tags = MethodTags(
        cost="`epochs` passes over the `retain_samples` retain rows (plus one forget batch a step), "
        "two teacher forward passes per step",
        limits="random forgetting: forgotten samples get random answers, below the test "
        "accuracy a retrained model would give them",
    )
    search_space = {**LoopUnlearner.search_space, "temperature": Knob(0.5, 4.0)}

    epochs: int = EPOCHS(1)
    lr: float = LR(1e-3)
    batch_size: int = BATCH_SIZE(64)
    retain_samples: int | None = RETAIN_SAMPLES(None)
    temperature: float = TEMPERATURE(1.0)

    def _phases(self, task, model, seed):
        good = frozen_teacher(model.module)
        bad = frozen_teacher(reinitialised(model.module, seed))
        t = self.temperature

        def step(m, got, _):
            (x_r, _r), (x_f, _f) = got["retain"], got["forget"]
            return kl_distill(m(x_r), good(x_r), t) + kl_distill(m(x_f), bad(x_f), t)

        return [Phase("retain", step, epochs=self.epochs, paired=("forget",))], []
