"""Building blocks the approximate methods share, each written once.

A frozen teacher, the KL distillation loss, random wrong labels, a diagonal Fisher over a
stream, weight-saliency masks and the hook that confines updates to them, and
:class:`LoopUnlearner`, the base of every method that runs phases of the training loop.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from unbake._budget import check_time_budget
from unbake._validation import Hyperparameter, Interval
from unbake.methods.base import (
    RETAIN_SAMPLES_KNOB,
    Knob,
    Unlearner,
    UnlearnTask,
    copy_model,
    gradient_config,
)
from unbake.training import TrainedModel, resolve_device
from unbake.training.loop import Batches, Hook, Phase, run_phases

__all__ = [
    "TEMPERATURE",
    "GradientMask",
    "LoopUnlearner",
    "diag_fisher",
    "frozen_teacher",
    "kl_distill",
    "perturb_",
    "random_wrong_labels",
    "reinitialised",
    "saliency_mask",
]

_CHUNK = 256

#: ``temperature`` of the methods that distil with :func:`kl_distill`.
TEMPERATURE = Hyperparameter(
    "Temperature of the KL distillation.", [Interval(float, 0, None, closed="neither")]
)


def frozen_teacher(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` in eval mode with no gradients: a fixed reference."""
    teacher = copy.deepcopy(module).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def kl_distill(
    student_out: torch.Tensor, teacher_out: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(teacher ‖ student) of the tempered softmaxes, batch mean, scaled by T² (Hinton).

    Takes logits or log-probabilities alike (``log_softmax`` is idempotent on the latter).
    """
    t = float(temperature)
    s = F.log_softmax(student_out / t, dim=1)
    q = F.log_softmax(teacher_out / t, dim=1)
    return F.kl_div(s, q, reduction="batchmean", log_target=True) * t * t


def random_wrong_labels(
    y: torch.Tensor, n_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """A label drawn uniformly from the *other* classes for each row of ``y``."""
    shift = torch.randint(1, n_classes, y.shape, generator=generator).to(y.device)
    return (y + shift) % n_classes


def reinitialised(module: nn.Module, seed: int) -> nn.Module:
    """A copy of ``module`` with every layer's ``reset_parameters()`` re-run under ``seed``.

    The global RNG is forked, so the caller's random state is untouched.
    """
    fresh = copy.deepcopy(module)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for layer in fresh.modules():
            reset = getattr(layer, "reset_parameters", None)
            if callable(reset):
                reset()
    return fresh


@torch.no_grad()
def perturb_(module: nn.Module, scale: float, seed: int) -> nn.Module:
    """Add seeded Gaussian noise to every trainable tensor of ``module``, in place.

    Each tensor ``p`` moves by ``scale × rms(p) × N(0, 1)``, so the noise is the same
    *relative* size in every layer. ``scale == 0`` leaves the weights untouched.
    """
    if scale:
        generator = torch.Generator().manual_seed(int(seed))
        for p in _named_trainable(module).values():
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            p.add_(noise.to(p.device) * float(scale) * p.pow(2).mean().sqrt())
    return module


def _named_trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    return {k: p for k, p in module.named_parameters() if p.requires_grad}


def diag_fisher(module: nn.Module, X: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The empirical diagonal Fisher ``mean_i (∇θ ℓ(x_i, y_i))²`` over a stream.

    Per-sample gradients via ``torch.func`` in chunks, with the module in eval mode (so
    batch-norm uses its running statistics). Keys are parameter names.
    """
    module = module.eval()
    params = {k: p.detach() for k, p in _named_trainable(module).items()}
    buffers = {k: b.detach() for k, b in module.named_buffers()}
    device = next(module.parameters()).device

    def loss(p, x, t):
        out = functional_call(module, (p, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(out, t.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(0, len(y), _CHUNK):
        check_time_budget()
        g = per_sample(params, X[i : i + _CHUNK].to(device), y[i : i + _CHUNK].to(device))
        for k in total:
            total[k] += g[k].pow(2).sum(0)
    n = max(len(y), 1)
    return {k: v / n for k, v in total.items()}


def saliency_mask(
    module: nn.Module, X: torch.Tensor, y: torch.Tensor, fraction: float
) -> dict[str, torch.Tensor]:
    """SalUn's weight saliency: the ``fraction`` of weights with the largest |∇ forget loss|.

    One gradient of the mean cross-entropy over ``(X, y)``, thresholded globally across
    all trainable parameters. Returns a boolean mask per parameter name.
    """
    module = module.eval()
    params = _named_trainable(module)
    device = next(module.parameters()).device
    grads = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(0, len(y), _CHUNK):
        xb, yb = X[i : i + _CHUNK].to(device), y[i : i + _CHUNK].to(device)
        loss = F.cross_entropy(module(xb), yb, reduction="sum") / len(y)
        for k, g in zip(params, torch.autograd.grad(loss, list(params.values())), strict=True):
            grads[k] += g
    flat = torch.cat([g.abs().flatten() for g in grads.values()])
    keep = max(1, round(fraction * flat.numel()))
    threshold = torch.topk(flat, keep, sorted=True).values[-1]
    return {k: g.abs() >= threshold for k, g in grads.items()}


class GradientMask:
    """A loop hook that updates only the weights inside ``mask``.

    After the backward pass it zeroes the gradient outside the mask and notes those
    weights and their optimiser state; after the step it puts both back, so neither
    weight decay nor momentum nor Adam's moments move a weight outside the mask.
    """

    def __init__(self, mask: dict[str, torch.Tensor]) -> None:
        self.mask = mask
        self._saved: list[tuple[torch.Tensor, nn.Parameter, torch.Tensor, dict]] = []

    def after_backward(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._saved = []
        for name, p in model.named_parameters():
            if name not in self.mask or p.grad is None:
                continue
            m = self.mask[name]
            p.grad.mul_(m)
            state = {
                k: v.clone()
                for k, v in optimizer.state.get(p, {}).items()
                if torch.is_tensor(v) and v.shape == p.shape
            }
            self._saved.append((m, p, p.detach().clone(), state))

    @torch.no_grad()
    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for m, p, before, state in self._saved:
            p.copy_(torch.where(m, p, before))
            for k, v in optimizer.state.get(p, {}).items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    v.copy_(torch.where(m, v, state.get(k, torch.zeros_like(v))))


class LoopUnlearner(Unlearner):
    """Base of the methods that run phases of the training loop on a copy of the original.

    A subclass declares ``epochs``, ``lr`` and ``batch_size`` (``EPOCHS``, ``LR`` and
    ``BATCH_SIZE`` of :mod:`unbake.methods.base`, with its own defaults),
    ``retain_samples`` when it reads the retain set (each epoch then walks that many
    seeded retain rows, not all), and its own knobs, and implements :meth:`_phases`,
    which may prepare a teacher or a mask and returns the phases to run and any hooks.
    The optimiser is the original's (Adam by default), or the one a method declares as
    its ``optimizer`` hyperparameter (``"sgd"`` or ``"adam"``), with the method's lr and
    batch size and a constant schedule.
    """

    #: The ranges ``unbake tune`` searches for the knobs most loop methods share.
    search_space: ClassVar[dict[str, Knob]] = {
        "epochs": Knob(1, 5),
        "lr": Knob(1e-4, 1e-2, log=True),
        "retain_samples": RETAIN_SAMPLES_KNOB,
    }

    def _phases(
        self, task: UnlearnTask, model: TrainedModel, seed: int
    ) -> tuple[Sequence[Phase], Sequence[Hook]]:
        raise NotImplementedError

    def _streams(
        self, task: UnlearnTask, model: TrainedModel
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The loop's named streams: ``forget`` and ``retain`` as tensors."""
        return {"forget": task.forget.tensors(), "retain": task.retain.tensors()}

    def _unlearn(self, task: UnlearnTask, seed: int) -> tuple[TrainedModel, dict[str, Any]]:
        model = copy_model(task.original, device=resolve_device(task.device))
        phases, hooks = self._phases(task, model, seed)
        knobs = self.get_params()  # each subclass declares epochs, lr and batch_size
        config = gradient_config(
            task.original.config,
            epochs=knobs["epochs"],
            lr=knobs["lr"],
            batch_size=knobs["batch_size"],
            optimizer=getattr(self, "optimizer", None),
        )
        streams = self._streams(task, model)
        run_phases(
            model.module, streams, phases, config, seed=seed, hooks=hooks, description=self.name
        )
        return model, {"forget_samples": len(task.forget)}


def ce(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of ``model`` on one ``(x, y)`` batch."""
    x, y = batch
    return F.cross_entropy(model(x), y)


def retain_ce(model: nn.Module, got: Batches) -> torch.Tensor:
    """Cross-entropy on the retain batch, or zero when the step has none."""
    return ce(model, got["retain"]) if "retain" in got else torch.zeros(())
