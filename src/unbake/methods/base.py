"""The unlearning-method API: :class:`Unlearner`, :class:`UnlearnTask`, :class:`UnlearnResult`.

A method is a small subclass. It declares each hyperparameter once, as a typed field with
its default, help and constraints (:func:`~unbake._validation.hyperparameter`), which
give it a keyword-only constructor that does no work and the constraints the validator
checks; ``_unlearn`` does the work. Capability flags tell the CLI, the demo and the conformance suite what the
method needs and promises, so nothing special-cases method names.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from unbake._validation import Declared, Hyperparameter, Interval, set_params, validate_params
from unbake.data import Samples, as_samples
from unbake.exceptions import EmptyRequestError, InvalidParameterError, UnsupportedModelError
from unbake.registry import ClassRegistry
from unbake.training import TrainConfig, TrainedModel, retrain_blocker
from unbake.training.trajectory import without_trajectory

__all__ = [
    "METHODS",
    "Knob",
    "MethodTags",
    "UnlearnResult",
    "UnlearnTask",
    "Unlearner",
    "register_method",
]

#: What a method may read besides the original model.
DATA = ("forget", "retain")
#: The kinds of samples a method may unlearn.
INPUTS = ("arrays", "text")


@dataclass(frozen=True)
class MethodTags:
    """What a method promises and needs, in one place (scikit-learn's estimator tags).

    The CLI, the policy, the comparison and the conformance suite read these; none of
    them special-cases a method's name.
    """

    #: The result is distributed exactly as retraining on the retain set.
    exact: bool = False
    #: The result comes with an (ε, δ) certificate of indistinguishability.
    certified: bool = False
    #: The data the method reads besides the original model: ``"forget"``, ``"retain"``.
    reads: tuple[str, ...] = DATA
    #: The training strategy the original must have been trained with (None: any).
    requires_strategy: str | None = None
    #: What one run costs, in words (e.g. "2 epochs over the retain set").
    cost: str = ""
    #: Where the method does not help, said plainly (empty: no known blind spot).
    limits: str = ""
    #: The kinds of samples it unlearns: ``"arrays"`` (classifiers on ``Samples``) and/or
    #: ``"text"`` (causal language models on ``TextSamples``).
    inputs: tuple[str, ...] = ("arrays",)

    def __post_init__(self) -> None:
        unknown = set(self.reads) - set(DATA)
        if unknown:
            raise InvalidParameterError(
                f"MethodTags.reads names unknown data {sorted(unknown)}; use {list(DATA)}."
            )
        odd = set(self.inputs) - set(INPUTS)
        if odd or not self.inputs:
            raise InvalidParameterError(
                f"MethodTags.inputs must name some of {list(INPUTS)}. Got {self.inputs!r} instead."
            )

    @property
    def kind(self) -> str:
        """``"exact"``, ``"certified"`` or ``"approximate"`` (no guarantee: measured)."""
        return "exact" if self.exact else "certified" if self.certified else "approximate"

    @property
    def needs_retain_data(self) -> bool:
        """Reads the retain set (a method without it can run after the data is gone)."""
        return "retain" in self.reads


@dataclass(frozen=True)
class Knob:
    """One tunable hyperparameter's search range, declared by the method beside its
    constraints (``search_space``) and read by ``unbake tune``.

    ``low``/``high`` bound a number (an int when both are ints; ``log`` samples on a log
    scale); ``choices`` instead lists the allowed values.

    >>> Knob(1e-4, 1e-2, log=True).kind, Knob(1, 5).kind, Knob(choices=("cg", "lissa")).kind
    ('float', 'int', 'choice')
    """

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.choices:
            return
        if self.low is None or self.high is None or not self.low < self.high:
            raise InvalidParameterError(
                f"A Knob needs low < high or choices. Got low={self.low!r}, high={self.high!r}."
            )
        if self.log and self.low <= 0:
            raise InvalidParameterError(f"A log-scale Knob needs low > 0. Got {self.low!r}.")

    @property
    def kind(self) -> str:
        if self.choices:
            return "choice"
        both_int = isinstance(self.low, int) and isinstance(self.high, int)
        return "int" if both_int else "float"

    def endpoints(self) -> tuple[Any, ...]:
        """The values the search can reach at its edges (for checking against constraints)."""
        return self.choices or (self.low, self.high)

    def to_dict(self) -> dict[str, Any]:
        if self.choices:
            return {"kind": "choice", "choices": list(self.choices)}
        return {"kind": self.kind, "low": self.low, "high": self.high, "log": self.log}


#: ``retain_samples``, the knob of every method that reads the retain set: how many
#: seeded retain rows it reads (``None``: all of them).
RETAIN_SAMPLES = Hyperparameter(
    "How many retain rows it reads, drawn with the seed (None: all of them).",
    [Interval(int, 1, None, closed="left"), None],
)
#: Its search range: from a few batches to more than a Fashion-MNIST retain set.
RETAIN_SAMPLES_KNOB = Knob(500, 50_000, log=True)


#: Old per-attribute flags, still accepted on subclasses and kept in step with ``tags``.
_LEGACY_FLAGS = ("exact", "certified", "needs_retain_data", "requires_strategy")


@dataclass
class UnlearnTask:
    """What a method is given: the trained model and the forget/retain split of its data."""

    original: TrainedModel
    forget: Samples
    retain: Samples
    device: str | torch.device | None = None

    def __post_init__(self) -> None:
        # The user's own data (a torch Dataset, a datasets.Dataset, (X, y)) as Samples.
        # (a language model's TextSamples travel here too: they read as Samples do)
        self.forget = as_samples(self.forget)  # type: ignore[assignment]
        self.retain = as_samples(self.retain)  # type: ignore[assignment]
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


class Unlearner(Declared):
    """Base class of every unlearning method.

    Subclasses set ``name`` and their :class:`MethodTags` (``tags``), declare their
    hyperparameters as fields (:func:`~unbake._validation.hyperparameter`, or a shared
    :class:`~unbake._validation.Hyperparameter` called with the method's default), and
    implement ``_unlearn``. The flags ``exact``, ``certified``,
    ``needs_retain_data`` and ``requires_strategy`` mirror ``tags``; a subclass that
    sets one of them as a class attribute updates its tags accordingly.

    A method whose tags do not read ``"retain"`` is handed an empty retain set, so its
    declaration is enforced rather than trusted.
    """

    name: ClassVar[str]
    tags: ClassVar[MethodTags] = MethodTags()
    exact: ClassVar[bool] = False
    certified: ClassVar[bool] = False
    needs_retain_data: ClassVar[bool] = True
    requires_strategy: ClassVar[str | None] = None
    #: How to train a suitable original when ``requires_strategy`` is set (demo, bench):
    #: keyword arguments of :func:`unbake.training.fit` such as model and strategy_params,
    #: and ``model_params``: parameters to add to the caller's model (e.g. ``lora_rank``).
    suggested_original: ClassVar[dict[str, Any] | None] = None
    #: The knobs ``unbake tune`` searches and their ranges; every edge of a range must
    #: satisfy the knob's declared constraints (checked when the class is defined). A
    #: class that does not set its own keeps the inherited ranges of the knobs it declares.
    search_space: ClassVar[dict[str, Knob]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        tags = cls.tags
        if "exact" in own or "certified" in own or "requires_strategy" in own:
            tags = dataclasses.replace(
                tags,
                exact=own.get("exact", tags.exact),
                certified=own.get("certified", tags.certified),
                requires_strategy=own.get("requires_strategy", tags.requires_strategy),
            )
        if "needs_retain_data" in own and own["needs_retain_data"] != tags.needs_retain_data:
            reads = tuple(d for d in tags.reads if d != "retain")
            tags = dataclasses.replace(
                tags, reads=(*reads, "retain") if own["needs_retain_data"] else reads
            )
        cls.tags = tags
        for flag in _LEGACY_FLAGS:
            setattr(cls, flag, getattr(tags, flag))
        if not hasattr(cls, "name"):
            return  # a shared base (LoopUnlearner): each method checks its own ranges
        if "search_space" not in cls.__dict__:  # inherited: the ranges of knobs it has
            inherited = cls.search_space
            cls.search_space = {
                k: v for k, v in inherited.items() if k in cls._parameter_constraints
            }
        owner = cls.name
        for knob_name, knob in cls.search_space.items():
            if knob_name not in cls._parameter_constraints:
                raise InvalidParameterError(
                    f"{owner} declares a search range for {knob_name!r}, which has no parameter "
                    "constraint; declare it as a hyperparameter field first."
                )
            for edge in knob.endpoints():
                validate_params(
                    {knob_name: edge}, cls._parameter_constraints, f"{owner} (search_space)"
                )

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
        if self.tags.exact and isinstance(model, TrainedModel):
            blocker = retrain_blocker(model)
            if blocker:
                return (
                    f"method {self.name!r} is exact: it trains afresh from the model's factory "
                    f"and training recipe, and {blocker}; or pick an approximate method"
                )
        kind = "text" if model.spec.name.startswith("hf:") else "arrays"
        if kind not in self.tags.inputs:
            what = {"text": "language models", "arrays": "classifiers"}
            return (
                f"method {self.name!r} unlearns {what[self.tags.inputs[0]]}, and this model is "
                f"one of the {what[kind]}; pick a method for {what[kind]} (see `unbake methods`)"
            )
        return None

    def validate(self) -> None:
        """Check the hyperparameters against their declared constraints."""
        validate_params(self.get_params(), self._parameter_constraints, self.name)

    def unlearn(self, task: UnlearnTask, *, seed: int | None = None) -> UnlearnResult:
        """Remove ``task.forget`` from ``task.original``; the original is not modified."""
        self.validate()
        reason = self.supports(task.original)
        if reason:
            raise UnsupportedModelError(f"Cannot unlearn: {reason}.")
        if not self.tags.needs_retain_data:
            task = dataclasses.replace(task, retain=task.retain.subset(np.zeros(0, dtype=int)))
        elif len(task.retain) == 0:
            raise InvalidParameterError(
                f"Method {self.name!r} reads the retain set, but the request removes every "
                "training sample; forget fewer samples or pick a method that reads no retain "
                "data (see `unbake methods`)."
            )
        seed = task.original.seed if seed is None else int(seed)
        task = self._read_retain(task, seed)
        start = time.perf_counter()
        model, info = self._unlearn(task, seed)
        if self.tags.needs_retain_data:
            info = {**info, "retain_rows_read": len(task.retain)}
        if task.device is not None and str(task.device).startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        model.module.eval()
        return UnlearnResult(model, self.name, self.get_params(), seconds, info)

    def _read_retain(self, task: UnlearnTask, seed: int) -> UnlearnTask:
        """The task with the retain rows this method reads: all of them, or the
        ``retain_samples`` rows a generator seeded with ``seed`` draws."""
        n = getattr(self, "retain_samples", None)
        if n is None or n >= len(task.retain):
            return task
        rows = torch.randperm(len(task.retain), generator=torch.Generator().manual_seed(seed))
        return dataclasses.replace(task, retain=task.retain.subset(rows[:n].numpy()))

    def _unlearn(self, task: UnlearnTask, seed: int) -> tuple[TrainedModel, dict[str, Any]]:
        raise NotImplementedError


#: Every unlearning method; packages add their own through the ``unbake.methods``
#: entry-point group (an entry point whose module applies :func:`register_method`).
METHODS: ClassRegistry[Unlearner] = ClassRegistry(
    "unlearning method", Unlearner, entry_points="unbake.methods", builtins="unbake.families"
)


def register_method(cls: type[Unlearner]) -> type[Unlearner]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    METHODS.register(cls.name)(cls)
    return cls


def copy_model(model: TrainedModel, *, device=None) -> TrainedModel:
    """A deep copy of ``model`` (weights, artifacts and meta), optionally moved.

    The training checkpoints kept for TracIn are left out: they saw the data about to be
    forgotten, and they are not how the edited copy came to be.
    """
    new = copy.deepcopy(without_trajectory(model))
    if device is not None:
        new.module.to(device)
    return new


#: The hyperparameters of the gradient-based methods, each method with its own default.
EPOCHS = Hyperparameter(
    "Passes over the data its steps walk (0: no step).", [Interval(int, 0, None, closed="left")]
)
LR = Hyperparameter(
    "Learning rate of its optimiser steps.", [Interval(float, 0, None, closed="neither")]
)
BATCH_SIZE = Hyperparameter("Rows per batch.", [Interval(int, 1, None, closed="left")])


def gradient_config(
    original: TrainConfig,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str | None = None,
) -> TrainConfig:
    """The original's optimiser settings with the method's own epochs, lr and batch size,
    and its own optimiser (``"sgd"`` or ``"adam"``) where it names one (``None``: the
    original's; momentum and weight decay stay the original's)."""
    update = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "schedule": "constant"}
    if optimizer is not None:
        update["optimizer"] = optimizer
    return original.model_copy(update=update)
