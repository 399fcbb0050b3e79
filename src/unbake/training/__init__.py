"""Seeded training: the shared optimisation loop, strategies, and the ``train`` entry point."""

from __future__ import annotations

import torch

from unbake.data import Samples
from unbake.data.text import TextSamples
from unbake.models import ModelSpec
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
    "TrainConfig",
    "TrainedModel",
    "TrainingStrategy",
    "batches",
    "differing_tensors",
    "fit",
    "get_params",
    "make_optimizer",
    "model_tensors",
    "optimize",
    "resolve_device",
    "set_params",
    "to_log_proba",
]


def fit(
    samples: Samples | TextSamples,
    *,
    n_classes: int,
    model: ModelSpec | str | torch.nn.Module = "mlp",
    config: TrainConfig | None = None,
    seed: int = 0,
    strategy: str = "monolithic",
    strategy_params: dict | None = None,
    device: str | torch.device | None = None,
) -> TrainedModel:
    """Train a model on ``samples`` with a registered strategy.

    >>> from unbake.data import load_dataset
    >>> ds = load_dataset("digits")
    >>> tm = fit(ds.train, n_classes=10, model="logreg", config=TrainConfig.parse(epochs=1))
    >>> tm.describe()
    'logreg'
    """
    if isinstance(model, torch.nn.Module):
        spec = ModelSpec.from_module(model)
    else:
        spec = ModelSpec(model) if isinstance(model, str) else model
    config = config or TrainConfig()
    strat = STRATEGIES.create_checked(strategy, strategy_params)
    strat.validate(samples=samples)
    return strat.fit(
        samples, spec=spec, config=config, seed=seed, n_classes=n_classes, device=device
    )
