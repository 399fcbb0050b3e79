"""The seeded optimisation loop that training and every gradient-based method share.

Determinism: the batch order comes from a ``torch.Generator`` seeded explicitly, and the
model's initial weights from :func:`unbake.models.build_model`'s seed, so on CPU the same
seed and thread count give bitwise-identical weights. The global RNG is never drawn from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from unbake._progress import progress
from unbake.exceptions import InvalidParameterError
from unbake.training.config import TrainConfig

__all__ = ["LossFn", "batches", "make_optimizer", "optimize", "resolve_device"]

#: ``loss_fn(model, x, y) -> scalar`` computed on one batch.
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"`` picks CUDA when available, else the CPU.

    A device this machine does not have is refused with :class:`InvalidParameterError`.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidParameterError(
            f"Unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto."
        ) from None
    available = {
        "cpu": lambda: True,
        "cuda": torch.cuda.is_available,
        "mps": torch.backends.mps.is_available,
    }
    if not available.get(dev.type, lambda: False)():
        raise InvalidParameterError(
            f"Device {device!r} is not available on this machine; use cpu or auto."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InvalidParameterError(
            f"Device {device!r} does not exist: this machine has "
            f"{torch.cuda.device_count()} CUDA devices; use cuda:0 or auto."
        )
    return dev


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of one shuffled epoch over ``n`` rows."""
    order = torch.randperm(n, generator=generator)
    yield from order.split(batch_size)


def make_optimizer(
    params, config: TrainConfig, *, lr: float | None = None
) -> torch.optim.Optimizer:
    lr = config.lr if lr is None else lr
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps: int):
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=max(steps // 3, 1), gamma=config.step_gamma
        )
    return None


def optimize(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int,
    loss_fn: LossFn = cross_entropy,
    description: str = "training",
    params=None,
) -> nn.Module:
    """Minimise ``loss_fn`` over ``(X, y)`` for ``config.epochs`` epochs, in place.

    ``params`` restricts the update to some parameters (default: all).
    """
    n = len(y)
    if n == 0 or config.epochs == 0:
        return model
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(int(seed))
    optimizer = make_optimizer(model.parameters() if params is None else params, config)
    steps_per_epoch = -(-n // config.batch_size)
    scheduler = _scheduler(optimizer, config, config.epochs * steps_per_epoch)
    model.train()
    with progress(config.epochs * steps_per_epoch, description) as bar:
        for _ in range(config.epochs):
            for idx in batches(n, config.batch_size, generator):
                xb, yb = X[idx].to(device), y[idx].to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model, xb, yb)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                bar.advance()
    model.eval()
    return model
