"""Gradient-based approximate methods that only change the loss: fine-tuning and NegGrad."""

from __future__ import annotations

from torch.nn import functional as F

from unbake.methods.base import (
    GRADIENT_CONSTRAINTS,
    Unlearner,
    UnlearnTask,
    copy_model,
    gradient_config,
    register_method,
)
from unbake.training import optimize, resolve_device


class _SingleSetDescent(Unlearner):
    """Optimise ``_loss`` for a few epochs over one of the two sets (``_data``)."""

    _parameter_constraints = GRADIENT_CONSTRAINTS
    _data: str  # "retain" or "forget"

    def __init__(self, *, epochs: int = 5, lr: float = 1e-3, batch_size: int = 64) -> None:
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size

    @staticmethod
    def _loss(model, x, y):
        raise NotImplementedError

    def _unlearn(self, task: UnlearnTask, seed: int):
        model = copy_model(task.original, device=resolve_device(task.device))
        data = getattr(task, self._data)
        config = gradient_config(
            task.original.config, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size
        )
        X, y = data.tensors()
        optimize(model.module, X, y, config, seed=seed, loss_fn=self._loss, description=self.name)
        return model, {f"{self._data}_samples": len(data)}


@register_method
class Finetune(_SingleSetDescent):
    """Fine-tune on the retain set only, relying on catastrophic forgetting.

    Warnecke et al., "Machine Unlearning of Features and Labels" (NDSS 2023) and the
    "FT" baseline of Jia et al., "Model Sparsity Can Simplify Machine Unlearning"
    (NeurIPS 2023).
    """

    name = "finetune"
    _data = "retain"

    @staticmethod
    def _loss(model, x, y):
        return F.cross_entropy(model(x), y)


@register_method
class NegGrad(_SingleSetDescent):
    """Gradient ascent on the forget set (the "GA"/"NegGrad" baseline).

    Thudi et al., "Unrolling SGD" (EuroS&P 2022); Golatkar et al., "Eternal Sunshine of
    the Spotless Net" (CVPR 2020). Needs no retain data, and can overshoot: keep
    ``epochs`` and ``lr`` small.
    """

    name = "neggrad"
    needs_retain_data = False
    _data = "forget"

    def __init__(self, *, epochs: int = 3, lr: float = 1e-4, batch_size: int = 64) -> None:
        super().__init__(epochs=epochs, lr=lr, batch_size=batch_size)

    @staticmethod
    def _loss(model, x, y):
        return -F.cross_entropy(model(x), y)
