"""Record a model you trained yourself as a workspace's model: :func:`register`.

The workspace then forgets with it as with a model unbake trained: ``retrain`` runs the
model's factory and recipe on the retain set (:mod:`unbake.training.adapter`), and the
approximate methods edit the registered weights.

>>> import tempfile
>>> from unbake import TrainConfig, Workspace, fit
>>> ws = Workspace.create(tempfile.mkdtemp() + "/ws", dataset="digits")
>>> active, _ = ws.active_and_forgotten()
>>> mine = fit(active, n_classes=10, model="logreg", config=TrainConfig.parse(epochs=1))
>>> model_id = register(ws, module=mine.module, factory="logreg", config=mine.config)
>>> ws.load_model(model_id).describe()
'logreg'
>>> ws.close()
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch import nn

from unbake.models import ModelSpec
from unbake.training.adapter import TrainFn, adopt, persistable
from unbake.workspace.workspace import Workspace

__all__ = ["register"]


def register(
    ws: Workspace,
    *,
    module: nn.Module | str | os.PathLike,
    factory: ModelSpec | str | Callable[..., nn.Module],
    train: TrainFn | str | None = None,
    config: Any = None,
    seed: int = 0,
) -> str:
    """Record ``module``, trained on ``ws``'s active training samples, as its current
    model; returns the model ID.

    The arguments are :func:`unbake.training.adopt`'s. A workspace keeps what it can
    rebuild: the factory (and a training function, when given) must be trusted
    ``"package.module:function"`` paths, or top-level Python functions at such a path,
    checked before anything is written.
    """
    with ws.lock():
        active, _ = ws.active_and_forgotten()
        trained = adopt(
            active,
            n_classes=ws.dataset().n_classes,
            factory=factory,
            train=train,
            config=config,
            module=module,
            seed=seed,
        )
        return ws.record_trained(persistable(trained), active)
