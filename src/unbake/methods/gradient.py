"""The two simplest baselines: fine-tuning on the retain set, and gradient ascent (NegGrad)."""

from __future__ import annotations

from unbake.methods._blocks import LoopUnlearner, ce
from unbake.methods.base import MethodTags, register_method
from unbake.training.loop import Phase


@register_method
class Finetune(LoopUnlearner):
    """Fine-tune on the retain set only, relying on catastrophic forgetting.

    Warnecke et al., "Machine Unlearning of Features and Labels" (NDSS 2023); the "FT"
    baseline of Jia et al., "Model Sparsity Can Simplify Machine Unlearning" (NeurIPS 2023).

        for epoch in 1..epochs, for each retain batch B_r:  θ ← θ − η ∇ℓ(B_r)

    When to use: a baseline. It forgets only what more training on the retain set happens
    to overwrite, so on a memorised forget set it barely moves. Cost: ``epochs`` passes
    over the ``retain_samples`` retain rows (all by default).
    """

    name = "finetune"
    tags = MethodTags(
        reads=("retain",),
        cost="`epochs` passes over the `retain_samples` retain rows",
        limits="does not target the forget set; forgets only what further training overwrites",
    )

    def __init__(
        self,
        *,
        epochs: int = 3,
        lr: float = 5e-3,
        batch_size: int = 64,
        retain_samples: int | None = None,
    ) -> None:
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.retain_samples = retain_samples

    def _phases(self, task, model, seed):
        return [Phase("retain", lambda m, got, _: ce(m, got["retain"]), epochs=self.epochs)], []


@register_method
class NegGrad(LoopUnlearner):
    """Gradient ascent on the forget set (the "GA"/"NegGrad" baseline).

    Thudi et al., "Unrolling SGD" (EuroS&P 2022); Golatkar et al., "Eternal Sunshine of
    the Spotless Net" (CVPR 2020).

        for epoch in 1..epochs, for each forget batch B_f:  θ ← θ + η ∇ℓ(B_f)

    When to use: when no retain data is available (it reads none). It overshoots easily
    and drags the retain accuracy down with it: keep ``epochs`` and ``lr`` small, and
    prefer ``neggrad_plus`` when retain data exists. Cost: ``epochs`` passes over the
    forget set.
    """

    name = "neggrad"
    tags = MethodTags(
        reads=("forget",),
        cost="`epochs` passes over the forget set",
        limits="overshoots on random forgetting: with defaults set for class-wise "
        "forgetting it drags retain and test accuracy down",
    )
    search_space = {k: v for k, v in LoopUnlearner.search_space.items() if k != "retain_samples"}

    def __init__(self, *, epochs: int = 4, lr: float = 3e-4, batch_size: int = 64) -> None:
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size

    def _phases(self, task, model, seed):
        return [Phase("forget", lambda m, got, _: -ce(m, got["forget"]), epochs=self.epochs)], []
