"""The model adapter: a user's factory, training recipe and (optionally) trained module.

A user hands unbake three things, each named in :func:`adopt`:

* a **factory** that builds a freshly initialised module from a seed (the protocol of
  :mod:`unbake.models.factory`);
* a **training recipe**: unbake's own loop with a :class:`~unbake.training.TrainConfig`,
  or the user's own function ``train(module, data, *, seed, config) -> module``
  (the ``own`` strategy, :class:`OwnLoop`);
* optionally the **trained module** (or a safetensors checkpoint of its weights), when
  it was trained outside unbake.

Retraining runs factory + recipe on the retain data, so it is exact by construction; a
trained module is only ever *the trained model*, never an initialisation. Where the
factory or the recipe is missing, exact methods refuse the model with one line naming
what is missing (:func:`retrain_blocker`), and approximate methods still run.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from unbake._validation import IsCallable, JSONValue, hyperparameter
from unbake.data import Samples, TextSamples
from unbake.exceptions import InvalidParameterError, UnbakeError, UserCodeError
from unbake.models import (
    PROTOCOL,
    ModelSpec,
    build_checked,
    check_factory,
    check_model_params,
    factory_of,
)
from unbake.models import _import_factory as import_path
from unbake.models.factory import construct
from unbake.training.base import STRATEGIES, TrainedModel, TrainingStrategy
from unbake.training.config import TrainConfig

__all__ = [
    "TRAIN_PROTOCOL",
    "OwnLoop",
    "adopt",
    "as_torch_dataset",
    "persistable",
    "retrain_blocker",
]

#: The user training function's protocol in one line, quoted by every error about one.
TRAIN_PROTOCOL = (
    "train(module, data, *, seed, config) -> module, called with torch's CPU RNG seeded "
    "right after the factory built module"
)

TrainFn = Callable[..., nn.Module]


def as_torch_dataset(samples: Samples | TextSamples) -> TensorDataset:
    """The ``data`` a user's training function receives: a ``TensorDataset`` of
    ``(x, y)`` rows (float features, int64 labels) in ``samples``' order."""
    if isinstance(samples, TextSamples):
        raise InvalidParameterError(
            "A training function of your own trains classifiers on arrays, not language "
            "models; train a language model with unbake's loop (drop train=)."
        )
    return TensorDataset(*samples.tensors())


def _name_of(fn: TrainFn | str) -> str:
    if isinstance(fn, str):
        return fn
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', '?')}"


def call_train(fn: TrainFn, name: str, module: nn.Module, data, *, seed: int, config: Any):
    """Call the user's training function; what it raises or returns wrongly is one line."""
    try:
        out = fn(module, data, seed=seed, config=copy.deepcopy(config))
    except UnbakeError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UserCodeError(
            f"Your training function {name!r} raised {type(exc).__name__}: {first:.200}; "
            f"fix it (unbake calls {TRAIN_PROTOCOL})."
        ) from exc
    if not isinstance(out, nn.Module):
        raise UserCodeError(
            f"Your training function {name!r} returned {type(out).__name__}, not the "
            f"trained torch.nn.Module; end it with `return module` ({TRAIN_PROTOCOL})."
        )
    return out


@STRATEGIES.register("own")
class OwnLoop(TrainingStrategy):
    """Train with the user's own function ``train(module, data, *, seed, config)``.

    unbake builds the module with the factory and calls ``train`` on it, under one
    forked torch RNG seeded with ``seed``, exactly as the script
    ``torch.manual_seed(seed); module = factory(...); module = train(module, data,
    seed=seed, config=config)`` would; ``data`` is :func:`as_torch_dataset` of the
    training samples and ``config`` any JSON value, handed over as given. ``train`` is a
    Python callable (in memory) or a trusted ``"package.module:function"``, trusted as a
    model factory is. ``train=None`` marks a model adopted without a recipe: it trains
    nothing, and exact methods refuse it. The module is handed over on the CPU; where it
    trains is the function's choice.
    """

    name = "own"

    train: TrainFn | str | None = hyperparameter(
        None,
        help="Your training function, train(module, data, *, seed, config) -> module, or "
        "its trusted 'package.module:function' (None: adopted without a recipe, which exact "
        "methods refuse).",
        constraints=[IsCallable(), str, None],
    )
    config: Any = hyperparameter(
        None, help="Any JSON value, handed to train as given.", constraints=[JSONValue()]
    )

    def validate(self, samples: Samples | TextSamples | None = None) -> None:
        super().validate(samples)  # the declared constraints: a function, a str or None; JSON
        if isinstance(self.train, str):
            if ":" not in self.train:
                raise InvalidParameterError(
                    f"The training function {self.train!r} is not a path; give it as "
                    "'package.module:function'."
                )
            check_factory(self.train, kind="training function")
        if isinstance(samples, TextSamples):
            as_torch_dataset(samples)  # refuses text, in one line

    def function(self) -> TrainFn:
        if self.train is None:
            raise InvalidParameterError(
                "This model was adopted without a training recipe, so it cannot be "
                "trained again; adopt it with train=<your function> or config=TrainConfig()."
            )
        if isinstance(self.train, str):
            return import_path(self.train, kind="training function")
        return self.train

    def fit(self, samples, *, spec, config, seed, n_classes, device=None) -> TrainedModel:
        self.validate()
        fn, data = self.function(), as_torch_dataset(samples)
        if self.train is None:  # function() has refused a model adopted without one
            raise RuntimeError("OwnLoop.fit ran without a training function")
        shape = samples.input_shape
        build_checked(spec, input_shape=shape, n_classes=n_classes, seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = construct(
                spec.name, factory_of(spec), spec.params, input_shape=shape, n_classes=n_classes
            )
            module = call_train(
                fn, _name_of(self.train), module, data, seed=seed, config=self.config
            )
        module.eval()
        return TrainedModel(
            module, spec, config, seed, shape, n_classes, self.name, self.get_params()
        )


def retrain_blocker(model: TrainedModel) -> str | None:
    """Why ``model`` cannot be retrained exactly (a missing factory or recipe, a factory
    that ignores its seed), or ``None`` when it can."""
    if not model.spec.has_factory:
        return (
            f"this model was adopted as a trained {model.spec.label} without a factory, so "
            f"nothing can build it afresh; adopt it with factory=... ({PROTOCOL})"
        )
    if model.strategy == OwnLoop.name and model.strategy_params.get("train") is None:
        return (
            "this model was adopted without a training recipe; adopt it with train=<your "
            "function> (train(module, data, *, seed, config)) or config=TrainConfig() for "
            "unbake's loop"
        )
    if model.spec.name.startswith("hf:"):
        return None
    try:
        build_checked(
            model.spec, input_shape=model.input_shape, n_classes=model.n_classes, seed=model.seed
        )
    except InvalidParameterError as exc:
        return str(exc).rstrip(".")
    return None


def persistable(model: TrainedModel) -> TrainedModel:
    """``model`` as a workspace can store it: its training function named by a trusted
    path (a callable must be importable there); an in-memory-only one is refused."""
    model.spec.to_dict()  # the factory: trusted and importable, or one line
    fn = model.strategy_params.get("train") if model.strategy == OwnLoop.name else None
    if fn is None or isinstance(fn, str):
        return model
    path = _name_of(fn)
    if import_path(path, kind="training function") is not fn:
        raise InvalidParameterError(
            f"The training function {path!r} cannot be saved: that path does not import the "
            "function given; define it at a module's top level."
        )
    return dataclasses.replace(model, strategy_params={**model.strategy_params, "train": path})


def _recipe(train: TrainFn | str | None, config: Any) -> tuple[TrainingStrategy, TrainConfig]:
    """The strategy that runs the recipe, and the config approximate methods start from."""
    if train is not None:
        strategy = OwnLoop(train=train, config=config)
        strategy.validate()
        return strategy, TrainConfig()
    if config is None:
        return OwnLoop(train=None, config=None), TrainConfig()

    if isinstance(config, dict):
        config = TrainConfig.parse(**config)
    if not isinstance(config, TrainConfig):
        raise InvalidParameterError(
            f"config= is a TrainConfig (or its fields as a dict) for unbake's loop, or any "
            f"JSON value for your own train= function; got a {type(config).__name__}."
        )
    return STRATEGIES.create("monolithic"), config


def _load_module(
    module: nn.Module | str | os.PathLike, spec: ModelSpec | None, shape, n_classes: int
) -> nn.Module:
    """A copy of the trained ``module``, or the factory's skeleton with a checkpoint's
    weights; checked against the factory's structure."""
    if isinstance(module, (str, os.PathLike)):
        if spec is None:
            raise InvalidParameterError(
                f"A checkpoint ({module}) holds weights only; give factory= to build the "
                "module they load into."
            )
        from safetensors.torch import load_file

        path = Path(module)
        if not path.is_file():
            raise InvalidParameterError(f"Checkpoint {path} does not exist; give its path.")
        try:
            state = load_file(str(path))
        except Exception as exc:  # a file that is not safetensors
            raise InvalidParameterError(
                f"Checkpoint {path} is not a safetensors file ({exc}); save the weights "
                "with safetensors.torch.save_file(module.state_dict(), path)."
            ) from None
        trained = _skeleton(spec, shape, n_classes)
        _load_into(trained, state, str(path))
        return trained
    if not isinstance(module, nn.Module):
        raise InvalidParameterError(
            f"module= is the trained torch.nn.Module or a safetensors checkpoint path; got "
            f"a {type(module).__name__}."
        )
    trained = copy.deepcopy(module)
    if spec is not None:  # the factory must build what the module is
        _load_into(_skeleton(spec, shape, n_classes), trained.state_dict(), "module=")
    return trained


def _skeleton(spec: ModelSpec, shape, n_classes: int) -> nn.Module:
    return build_checked(spec, input_shape=shape, n_classes=n_classes, seed=0)


def _load_into(skeleton: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = skeleton.state_dict()
    odd = sorted(set(own) ^ set(state)) or [
        k for k in own if tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if odd:
        raise InvalidParameterError(
            f"The weights of {source} do not fit what the factory builds (tensor {odd[0]!r} "
            "differs in name or shape); give the factory that built the trained module."
        )
    skeleton.load_state_dict(state)


def adopt(
    samples: Samples,
    *,
    n_classes: int,
    factory: ModelSpec | str | Callable[..., nn.Module] | None = None,
    train: TrainFn | str | None = None,
    config: Any = None,
    module: nn.Module | str | os.PathLike | None = None,
    seed: int = 0,
) -> TrainedModel:
    """A :class:`TrainedModel` from your own factory, recipe and (optionally) trained module.

    ``factory`` builds a fresh module (:data:`unbake.models.PROTOCOL`); ``train`` is your
    training function (``train(module, data, *, seed, config) -> module``, ``config``
    any JSON value handed to it), or leave it out and give ``config`` as a
    :class:`TrainConfig` to use unbake's loop. ``module`` is the module you already
    trained on ``samples`` with that factory, recipe and ``seed`` (or a safetensors file
    of its weights); without it, unbake trains one now. Without a factory or a recipe,
    approximate methods still run and exact ones refuse the model, naming what is missing.

    >>> from unbake.data import load_dataset
    >>> from unbake.models import MLP
    >>> ds = load_dataset("digits")
    >>> tm = adopt(ds.train, n_classes=10, factory=MLP, config=TrainConfig.parse(epochs=1))
    >>> tm.describe()
    'unbake.models:MLP'
    """
    spec = None if factory is None else ModelSpec.of(factory)
    if spec is not None:
        check_model_params(spec)
    strategy, unbake_config = _recipe(train, config)
    if module is None:
        if spec is None or (isinstance(strategy, OwnLoop) and strategy.train is None):
            raise InvalidParameterError(
                "adopt needs module= (the model you trained) or, to train one now, a "
                "factory= and a recipe (train= your function, or config=TrainConfig())."
            )
        strategy.validate(samples=samples)
        return strategy.fit(
            samples, spec=spec, config=unbake_config, seed=seed, n_classes=n_classes
        )
    trained = _load_module(module, spec, samples.input_shape, n_classes)
    trained.eval()
    params = strategy.get_params() if isinstance(strategy, OwnLoop) else {}
    return TrainedModel(
        trained,
        spec or ModelSpec.from_module(trained),
        unbake_config,
        int(seed),
        samples.input_shape,
        n_classes,
        strategy.name,
        params,
    )
