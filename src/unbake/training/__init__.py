"""Seeded training: the shared optimisation loop, strategies, and the ``train`` entry point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from unbake.data import Samples, as_samples
from unbake.data.adapters import loader_batch_size
from unbake.data.text import TextSamples
from unbake.models import ModelSpec
from unbake.training.adapter import OwnLoop, adopt, retrain_blocker
from unbake.training.base import (
    OUTPUT_KINDS,
    STRATEGIES,
    TrainedModel,
    TrainingStrategy,
    differing_tensors,
    get_params,
    model_tensors,
    set_params,
    to_log_proba,
)
from unbake.training.config import TrainConfig
from unbake.training.loop import batches, make_optimizer, optimize, resolve_device
from unbake.training.strategy import Monolithic

__all__ = [
    "OUTPUT_KINDS",
    "STRATEGIES",
    "Monolithic",
    "OwnLoop",
    "TrainConfig",
    "TrainedModel",
    "TrainingStrategy",
    "adopt",
    "batches",
    "differing_tensors",
    "fit",
    "get_params",
    "make_optimizer",
    "model_tensors",
    "optimize",
    "resolve_device",
    "retrain_blocker",
    "set_params",
    "to_log_proba",
]


def fit(
    samples: Samples | TextSamples | Any,
    *,
    n_classes: int,
    model: ModelSpec | str | Callable[..., torch.nn.Module] = "mlp",
    config: TrainConfig | None = None,
    seed: int = 0,
    strategy: str = "monolithic",
    strategy_params: dict | None = None,
    device: str | torch.device | None = None,
) -> TrainedModel:
    """Train a model on ``samples`` with a registered strategy.

    ``model`` is a factory (:data:`unbake.models.PROTOCOL`): a registered name, a trusted
    ``"package.module:function"``, a :class:`ModelSpec` or a Python callable. A module
    instance is refused (its weights are not an initialisation that a retrain can
    reproduce): to bring a module you trained yourself, use :func:`adopt`.

    ``samples`` is anything :func:`unbake.data.as_samples` takes: :class:`Samples`, an
    ``(X, y)`` pair, a torch ``Dataset`` or ``DataLoader`` (whose batch size is the
    default config's), or a ``datasets.Dataset``; features are read a batch at a time.

    >>> from unbake.data import load_dataset
    >>> ds = load_dataset("digits")
    >>> tm = fit(ds.train, n_classes=10, model="logreg", config=TrainConfig.parse(epochs=1))
    >>> tm.describe()
    'logreg'
    """
    spec = ModelSpec.of(model)
    if config is None:
        size = loader_batch_size(samples)
        config = TrainConfig() if size is None else TrainConfig(batch_size=size)
    samples = as_samples(samples)
    strat = STRATEGIES.create_checked(strategy, strategy_params)
    strat.validate(samples=samples)
    return strat.fit(
        samples, spec=spec, config=config, seed=seed, n_classes=n_classes, device=device
    )
