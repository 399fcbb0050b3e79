"""The unlearning-method API: :class:`Unlearner`, :class:`UnlearnTask`, :class:`UnlearnResult`.

A method is a small subclass. Its constructor takes keyword-only hyperparameters and
does no work; ``_parameter_constraints`` declares what each may be; ``_unlearn`` does
the work. Capability flags tell the CLI, the demo and the conformance suite what the
method needs and promises, so nothing special-cases method names.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from unbake._validation import Interval, validate_params
from unbake.data import Samples
from unbake.exceptions import EmptyRequestError, UnsupportedModelError
from unbake.registry import Registry
from unbake.training import TrainConfig, TrainedModel, get_params, set_params

__all__ = ["METHODS", "UnlearnResult", "UnlearnTask", "Unlearner", "register_method"]


@dataclass
class UnlearnTask:
    """What a method is given: the trained model and the forget/retain split of its data."""

    original: TrainedModel
    forget: Samples
    retain: Samples
    device: str | torch.device | None = None

    def __post_init__(self) -> None:
        if len(self.forget) == 0:
            raise EmptyRequestError(
                "The deletion request selects no samples; name at least one sample ID, "
                "subject or class."
            )


@dataclass
class UnlearnResult:
    """The unlearned model and what producing it cost."""

    model: TrainedModel
    method: str
    params: dict[str, Any]
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


class Unlearner:
    """Base class of every unlearning method.

    Subclasses set ``name``, the capability flags, ``_parameter_constraints``, a
    keyword-only ``__init__`` that only stores its arguments, and ``_unlearn``.
    """

    name: ClassVar[str]
    #: The result is distributed exactly as retraining on the retain set.
    exact: ClassVar[bool] = False
    #: The result comes with an (ε, δ) certificate of indistinguishability.
    certified: ClassVar[bool] = False
    #: Reads the retain set (a method without it can run after the data is gone).
    needs_retain_data: ClassVar[bool] = True
    #: The training strategy the original must have been trained with (None: any).
    requires_strategy: ClassVar[str | None] = None
    #: How to train a suitable original when ``requires_strategy`` is set (demo, bench):
    #: keyword arguments of :func:`unbake.training.fit` such as model and strategy_params.
    suggested_original: ClassVar[dict[str, Any] | None] = None
    _parameter_constraints: ClassVar[dict[str, list]] = {}

    def get_params(self) -> dict[str, Any]:
        return get_params(self)

    def set_params(self, **params: Any) -> Unlearner:
        set_params(self, params, self.name)
        return self

    def supports(self, model: TrainedModel) -> str | None:
        """``None`` if this method can unlearn from ``model``, else the reason it cannot."""
        if self.requires_strategy and model.strategy != self.requires_strategy:
            return (
                f"method {self.name!r} needs a model trained with --strategy "
                f"{self.requires_strategy}, but this one was trained with {model.strategy!r}; "
                "retrain with that strategy or pick another method"
            )
        return None

    def unlearn(self, task: UnlearnTask, *, seed: int | None = None) -> UnlearnResult:
        """Remove ``task.forget`` from ``task.original``; the original is not modified."""
        validate_params(self.get_params(), self._parameter_constraints, self.name)
        reason = self.supports(task.original)
        if reason:
            raise UnsupportedModelError(f"Cannot unlearn: {reason}.")
        seed = task.original.seed if seed is None else int(seed)
        start = time.perf_counter()
        model, info = self._unlearn(task, seed)
        if task.device is not None and str(task.device).startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        model.module.eval()
        return UnlearnResult(model, self.name, self.get_params(), seconds, info)

    def _unlearn(self, task: UnlearnTask, seed: int) -> tuple[TrainedModel, dict[str, Any]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


METHODS: Registry[Unlearner] = Registry("unlearning method")


def register_method(cls: type[Unlearner]) -> type[Unlearner]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    METHODS.register(cls.name)(cls)
    return cls


def copy_model(model: TrainedModel, *, device=None) -> TrainedModel:
    """A deep copy of ``model`` (weights, artifacts and meta), optionally moved."""
    new = copy.deepcopy(model)
    if device is not None:
        new.module.to(device)
    return new


#: Shared constraints of the gradient-based methods.
GRADIENT_CONSTRAINTS: dict[str, list] = {
    "epochs": [Interval(int, 0, None, closed="left")],
    "lr": [Interval(float, 0, None, closed="neither")],
    "batch_size": [Interval(int, 1, None, closed="left")],
}


def gradient_config(
    original: TrainConfig, *, epochs: int, lr: float, batch_size: int
) -> TrainConfig:
    """The original's optimiser settings with the method's own epochs, lr and batch size."""
    return original.model_copy(
        update={"epochs": epochs, "lr": lr, "batch_size": batch_size, "schedule": "constant"}
    )
