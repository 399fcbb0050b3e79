"""Fisher forgetting: Gaussian noise scaled by the inverse Fisher of the retain loss."""

from __future__ import annotations

import torch

from unbake._validation import Interval, hyperparameter
from unbake.methods._blocks import diag_fisher
from unbake.methods.base import (
    RETAIN_SAMPLES,
    RETAIN_SAMPLES_KNOB,
    Knob,
    MethodTags,
    Unlearner,
    UnlearnTask,
    copy_model,
    register_method,
)
from unbake.training import resolve_device


@register_method
class FisherForgetting(Unlearner):
    """Fisher forgetting (Golatkar et al., "Eternal Sunshine of the Spotless Net:
    Selective Forgetting in Deep Networks", CVPR 2020).

        F ← diag Fisher of θ_o over the retain rows read (``retain_samples``; all by default)
        v ← α · min(1/(F + ε), cap), averaged over each output unit's incoming weights
        θ ← θ_o + sqrt(v) ⊙ ξ,   ξ ~ N(0, I) from the seeded generator

    Weights the retain set does not need (small F) get large noise, those it relies on
    almost none. When to use: class-wise forgetting, where whole units serve only the
    forgotten class.
    """

    name = "fisher"
    tags = MethodTags(
        cost="per-sample gradients over the retain rows read (no training)",
        limits="random forgetting (forget and retain share their weights); on class-wise "
        "forgetting, noise large enough to forget also costs retain accuracy",
    )
    search_space = {"alpha": Knob(1e-9, 1e-4, log=True), "retain_samples": RETAIN_SAMPLES_KNOB}

    alpha: float = hyperparameter(
        1e-6,
        help="Scale α of the noise variance.",
        constraints=[Interval(float, 0, None, closed="neither")],
    )
    cap: float = hyperparameter(
        1e4,
        help="Cap on the inverse Fisher 1/(F + ε) before scaling.",
        constraints=[Interval(float, 0, None, closed="neither")],
    )
    retain_samples: int | None = RETAIN_SAMPLES(None)

    def _unlearn(self, task: UnlearnTask, seed: int):
        model = copy_model(task.original, device=resolve_device(task.device))
        module = model.module
        fisher = diag_fisher(module, *task.retain.tensors())
        generator = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name not in fisher:
                    continue
                var = self.alpha * (1.0 / (fisher[name] + 1e-8)).clamp(max=self.cap)
                if var.ndim > 1:  # one variance per output unit: the mean over its inputs
                    var = var.flatten(1).mean(1).view(-1, *[1] * (var.ndim - 1)).expand_as(var)
                noise = torch.randn(p.shape, generator=generator).to(p.device)
                p.add_(var.sqrt() * noise)
        return model, {}
