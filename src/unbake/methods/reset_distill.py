"""Reset and distil: re-initialise a seeded part of the network, then distil on retain."""

from __future__ import annotations

import torch

from unbake._validation import Interval, hyperparameter
from unbake.methods._blocks import (
    TEMPERATURE,
    LoopUnlearner,
    ce,
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
class ResetDistill(LoopUnlearner):
    """Reset-and-distil, the recipe shared by top entries of the NeurIPS 2023 unlearning
    challenge (Triantafillou et al., "Are we making progress in unlearning? Findings from
    the first NeurIPS unlearning competition", 2024).

        teacher ← a frozen copy of θ_o
        θ ← θ_o with the head and a seeded ``reset_fraction`` of every other weight
            re-initialised (fresh values drawn under ``seed``)
        for epoch in 1..epochs, for each retain batch B_r:
            θ ← θ − η ∇[ KL(teacher(B_r) ‖ student(B_r)) + ℓ(B_r) ]

    KL at temperature ``temperature``. When to use: when the forget set must lose what
    the reset weights carried and the retain behaviour can be re-learned from the original;
    it never reads the forget set.
    """

    name = "reset_distill"
    tags = MethodTags(
        reads=("retain",),
        cost="`epochs` passes over the `retain_samples` retain rows, a teacher forward pass per step",
    )
    search_space = {
        **LoopUnlearner.search_space,
        "reset_fraction": Knob(0.05, 0.6),
        "temperature": Knob(1.0, 4.0),
    }

    epochs: int = EPOCHS(3)
    lr: float = LR(1e-3)
    batch_size: int = BATCH_SIZE(64)
    retain_samples: int | None = RETAIN_SAMPLES(None)
    reset_fraction: float = hyperparameter(
        0.3,
        help="Share of each weight tensor outside the head re-initialised (the head: all).",
        constraints=[Interval(float, 0, 1, closed="both")],
    )
    temperature: float = TEMPERATURE(2.0)

    def _phases(self, task, model, seed):
        module = model.module
        teacher = frozen_teacher(module)
        fresh = dict(reinitialised(module, seed).named_parameters())
        head = {id(p) for p in getattr(module, "head", torch.nn.Identity()).parameters()}
        generator = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for name, p in module.named_parameters():
                keep = torch.rand(p.shape, generator=generator) >= self.reset_fraction
                if id(p) in head:
                    keep.zero_()
                p.copy_(torch.where(keep.to(p.device), p, fresh[name]))
        t = self.temperature

        def step(m, got, _):
            x, _y = got["retain"]
            return kl_distill(m(x), teacher(x), t) + ce(m, got["retain"])

        return [Phase("retain", step, epochs=self.epochs)], []
