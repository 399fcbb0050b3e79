"""Training checkpoints kept for TracIn (Pruthi et al., NeurIPS 2020).

TracIn sums, over checkpoints θ₁ … θ_k taken during training, each checkpoint's
learning rate times a gradient product; a sample's *self*-influence is
``Σᵢ ηᵢ ‖∇θ ℓ(z; θᵢ)‖²``. To compute it, training must keep the checkpoints:
:class:`TrajectoryHook` snapshots the trainable parameters (and the learning rate
in force) at ``k`` steps spaced evenly over the run — the end of every
``epochs / k``-th epoch when ``k`` divides the epochs — and the last one is the
final model itself, so only ``k − 1`` snapshots are stored.

The snapshots go into :attr:`TrainedModel.artifacts` under ``trajectory.<i>.<name>``
(saved as safetensors with the model) and the learning rates and steps into
``meta["trajectory"]``. They describe how *this* model was trained, on data that
may later be forgotten: :func:`without_trajectory` drops them, and every method that
edits a copy of a model (rather than retraining it) applies it.

Keeping them does not change training: the hook reads, never writes, and draws
nothing from any generator, so the weights are bitwise those of a run without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import torch
from torch import nn

from unbake.training.base import TrainedModel

__all__ = ["TRAJECTORY", "TrajectoryHook", "checkpoint_steps", "trajectory", "without_trajectory"]

#: The artifact-key prefix and ``meta`` key of the kept checkpoints.
TRAJECTORY = "trajectory"


def checkpoint_steps(total: int, k: int) -> list[int]:
    """The ``k`` optimiser steps (1-based) at which checkpoints are taken, evenly spaced,
    the last being ``total``.

    >>> checkpoint_steps(40, 4), checkpoint_steps(10, 3)
    ([10, 20, 30, 40], [3, 7, 10])
    """
    return [round(total * (i + 1) / k) for i in range(k)]


class TrajectoryHook:
    """A training-loop hook (:class:`unbake.training.loop.Hook`) that snapshots the
    trainable parameters and the learning rate after the given steps."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = set(steps)
        self.step = 0
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.lrs: list[float] = []
        self.taken: list[int] = []

    def after_backward(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        pass

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.step += 1
        if self.step in self.steps:
            self.snapshots.append(
                {
                    n: p.detach().cpu().clone()
                    for n, p in model.named_parameters()
                    if p.requires_grad
                }
            )
            # The rate this step used (the loop steps the scheduler after the hooks).
            self.lrs.append(float(optimizer.param_groups[0]["lr"]))
            self.taken.append(self.step)

    def store(self, model: TrainedModel) -> None:
        """Write the snapshots (all but the last: the final weights) and the rates to
        ``model``'s artifacts and meta."""
        for i, snap in enumerate(self.snapshots[:-1]):
            for name, value in snap.items():
                model.artifacts[f"{TRAJECTORY}.{i}.{name}"] = value
        model.meta[TRAJECTORY] = {"lrs": self.lrs, "steps": self.taken}


def trajectory(model: TrainedModel) -> Iterator[tuple[float, dict[str, torch.Tensor]]]:
    """``(learning rate, trainable parameters)`` of each kept checkpoint, oldest first
    (the last is the model's own weights); nothing when none were kept."""
    info = model.meta.get(TRAJECTORY)
    if not info:
        return
    device = next(model.module.parameters()).device
    final = {n: p.detach() for n, p in model.module.named_parameters() if p.requires_grad}
    lrs = info["lrs"]
    for i, lr in enumerate(lrs[:-1]):
        yield lr, {n: model.artifacts[f"{TRAJECTORY}.{i}.{n}"].to(device) for n in final}
    yield lrs[-1], final


def without_trajectory(model: TrainedModel) -> TrainedModel:
    """``model`` without its kept checkpoints (a shallow copy; ``model`` is unchanged)."""
    if TRAJECTORY not in model.meta:
        return model
    prefix = f"{TRAJECTORY}."
    return replace(
        model,
        artifacts={k: v for k, v in model.artifacts.items() if not k.startswith(prefix)},
        meta={k: v for k, v in model.meta.items() if k != TRAJECTORY},
    )
