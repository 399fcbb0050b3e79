"""The seeded loop that training and every gradient-based unlearning method share.

One loop runs *phases* over *named streams*. A stream is a named ``(X, y)`` pair, such
as ``forget`` and ``retain``; ``X`` is a tensor, or streamed rows read a batch at a time
(:class:`~unbake.data.RowView`, from ``Samples.tensors()``). A :class:`Phase` walks one
shuffled epoch of its driving stream; at each batch it also draws a batch from every
paired stream (each cycles through its own shuffled epochs), hands all of them to its
step function, back-propagates the loss that step returns, runs the hooks, and takes one
optimiser step. A method is a list of phases: SCRUB alternates a *max* phase on
``forget`` with a *min* phase on ``retain``; NegGrad+ runs one phase driven by
``retain`` with ``forget`` paired; plain training (:func:`optimize`) is the single-phase
case over one stream.

Determinism: every batch order comes from one ``torch.Generator`` seeded explicitly, in
the order the loop asks for it, and the model's initial weights from
:func:`unbake.models.build_model`'s seed, so on CPU the same seed and thread count give
bitwise-identical weights. The global RNG is never drawn from.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from unbake._budget import check_time_budget
from unbake._progress import progress
from unbake._threads import threads_for
from unbake.exceptions import InvalidParameterError
from unbake.training.config import TrainConfig

__all__ = [
    "Batches",
    "Hook",
    "LossFn",
    "Phase",
    "StepFn",
    "batches",
    "make_optimizer",
    "optimize",
    "resolve_device",
    "run_phases",
]

#: ``loss_fn(model, x, y) -> scalar`` computed on one batch.
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
#: The batches one step sees, by stream name: ``{"forget": (x, y), "retain": (x, y)}``.
Batches = dict[str, tuple[torch.Tensor, torch.Tensor]]
#: ``step(model, batches, generator) -> loss`` to *minimise* (a max step returns ``-loss``).
StepFn = Callable[[nn.Module, Batches, torch.Generator], torch.Tensor]


class Hook(Protocol):
    """Called around each optimiser step: after the backward pass, and after the step."""

    def after_backward(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None: ...

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None: ...


@dataclass(frozen=True)
class Phase:
    """``epochs`` passes over the ``stream`` batches, each paired with one from ``paired``.

    ``batch_size`` sets this phase's batches of ``stream`` (default: the config's; paired
    streams always use the config's). ``steps`` caps the batches of each pass: the first
    ``steps`` of its shuffled order (default: every batch).
    """

    stream: str
    step: StepFn
    epochs: int = 1
    paired: tuple[str, ...] = ()
    name: str = ""
    batch_size: int | None = None
    steps: int | None = None


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
    available: dict[str, Callable[[], bool]] = {
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


def read_batches(X: Any, order: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
    """``X[idx]`` for each index batch of ``order``; streamed rows (a
    :class:`~unbake.data.RowView`) are read through their source, which may read ahead."""
    if hasattr(X, "read_batches"):
        yield from X.read_batches(order)
    else:
        for idx in order:
            yield X[idx]


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


@dataclass
class _Cycle:
    """Endless shuffled batches of one paired stream, reshuffled at each epoch's end."""

    n: int
    batch_size: int
    generator: torch.Generator
    _it: Iterator[torch.Tensor] = field(default_factory=lambda: iter(()))

    def next(self) -> torch.Tensor:
        idx = next(self._it, None)
        if idx is None:
            self._it = batches(self.n, self.batch_size, self.generator)
            idx = next(self._it)
        return idx


def run_phases(
    model: nn.Module,
    streams: dict[str, tuple[torch.Tensor, torch.Tensor]],
    phases: Sequence[Phase],
    config: TrainConfig,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    hooks: Sequence[Hook] = (),
    params=None,
    description: str = "training",
) -> nn.Module:
    """Run ``phases`` in order over ``streams``, updating ``model`` in place.

    One optimiser (``config``'s optimiser, lr and schedule over all steps) serves every
    phase, on ``params`` (default: all parameters). Batches are drawn from ``generator``
    (or a fresh one seeded with ``seed``). A phase over an empty stream is skipped; an
    empty paired stream is left out of the step's batches.
    """
    if generator is None:
        if seed is None:
            raise TypeError("run_phases needs a seed or a generator")
        generator = torch.Generator().manual_seed(int(seed))
    sizes = {name: len(y) for name, (_, y) in streams.items()}
    phases = [p for p in phases if p.epochs > 0 and sizes[p.stream] > 0]

    def size(p: Phase) -> int:
        return p.batch_size or config.batch_size

    def per_pass(p: Phase) -> int:
        n = -(-sizes[p.stream] // size(p))
        return n if p.steps is None else min(n, p.steps)

    total = sum(p.epochs * per_pass(p) for p in phases)
    if total == 0:
        return model
    device = next(model.parameters()).device
    optimizer = make_optimizer(model.parameters() if params is None else params, config)
    scheduler = _scheduler(optimizer, config, total)
    cycles = {name: _Cycle(n, config.batch_size, generator) for name, n in sizes.items() if n > 0}
    model.train()
    first = streams[phases[0].stream][0][: size(phases[0])].to(device)
    with threads_for(model, first), progress(total, description) as bar:
        for phase in phases:
            X, y = streams[phase.stream]
            for _ in range(phase.epochs):
                shuffled = batches(sizes[phase.stream], size(phase), generator)
                order = list(itertools.islice(shuffled, per_pass(phase)))
                for idx, bx in zip(order, read_batches(X, order), strict=True):
                    got: Batches = {phase.stream: (bx.to(device), y[idx].to(device))}
                    for other in phase.paired:
                        if other in cycles:
                            oi = cycles[other].next()
                            ox, oy = streams[other]
                            got[other] = (ox[oi].to(device), oy[oi].to(device))
                    optimizer.zero_grad(set_to_none=True)
                    loss = phase.step(model, got, generator)
                    loss.backward()
                    for hook in hooks:
                        hook.after_backward(model, optimizer)
                    optimizer.step()
                    for hook in hooks:
                        hook.after_step(model, optimizer)
                    if scheduler is not None:
                        scheduler.step()
                    bar.advance()
                    check_time_budget()
    model.eval()
    return model


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
    hooks: Sequence[Hook] = (),
) -> nn.Module:
    """Minimise ``loss_fn`` over ``(X, y)`` for ``config.epochs`` epochs, in place.

    The single-phase case of :func:`run_phases`. ``params`` restricts the update to some
    parameters (default: all); ``hooks`` run around each optimiser step.
    """

    def step(module: nn.Module, got: Batches, _: torch.Generator) -> torch.Tensor:
        return loss_fn(module, *got["train"])

    return run_phases(
        model,
        {"train": (X, y)},
        [Phase("train", step, epochs=config.epochs)],
        config,
        seed=seed,
        params=params,
        hooks=hooks,
        description=description,
    )
