"""Selective Synaptic Dampening: shrink the weights far more important to the forget set."""

from __future__ import annotations

import torch

from unbake._validation import Interval, hyperparameter
from unbake.data.sources import concat_rows
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
class SSD(Unlearner):
    """Selective Synaptic Dampening (Foster et al., "Fast Machine Unlearning Without
    Retraining Through Selective Synaptic Dampening", AAAI 2024).

        I_D ← diag Fisher of θ_o over the training data D (forget set + retain rows)
        I_f ← diag Fisher of θ_o over the forget set
        for each weight i with I_f,i > α·I_D,i:   θ_i ← θ_i · min(λ·I_D,i / I_f,i, 1)

    What it reads: the whole forget set, and ``retain_samples`` seeded retain rows (all of
    them when ``None``), only to estimate I_D; it takes no gradient step, so it needs no
    retain data beyond that importance estimate, which depends only on the original model
    and could be computed once at training time. When to use: retraining-free, in seconds,
    when a one-shot edit is enough.
    """

    name = "ssd"
    tags = MethodTags(
        cost="per-sample gradients over the forget set and the retain rows read (no training)",
        limits="reads retain data only for the importance estimate over D",
    )
    search_space = {
        "alpha": Knob(1.0, 50.0, log=True),
        "dampening": Knob(0.1, 2.0, log=True),
        "retain_samples": RETAIN_SAMPLES_KNOB,
    }

    alpha: float = hyperparameter(
        5.0,
        help="Selection threshold α: a weight is dampened when I_f > α·I_D.",
        constraints=[Interval(float, 0, None, closed="neither")],
    )
    dampening: float = hyperparameter(
        0.5,
        help="Dampening λ: a selected weight is scaled by min(λ·I_D / I_f, 1).",
        constraints=[Interval(float, 0, None, closed="neither")],
    )
    retain_samples: int | None = RETAIN_SAMPLES(None)

    def _unlearn(self, task: UnlearnTask, seed: int):
        model = copy_model(task.original, device=resolve_device(task.device))
        module = model.module
        X_f, y_f = task.forget.tensors()
        X_r, y_r = task.retain.tensors()  # the retain_samples rows Unlearner.unlearn drew
        imp_f = diag_fisher(module, X_f, y_f)
        both = concat_rows(X_f, X_r)  # a tensor, or streamed rows diag_fisher reads in batches
        imp_d = diag_fisher(module, both, torch.cat([y_f, y_r]))  # type: ignore[arg-type]
        dampened = 0
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name not in imp_f:
                    continue
                selected = imp_f[name] > self.alpha * imp_d[name]
                factor = (self.dampening * imp_d[name] / imp_f[name].clamp_min(1e-30)).clamp(max=1)
                p.mul_(torch.where(selected, factor, torch.ones_like(factor)))
                dampened += int(selected.sum())
        return model, {"dampened_weights": dampened}
