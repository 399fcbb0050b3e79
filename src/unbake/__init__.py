"""unbake: remove the influence of training data from a trained model, prove it, record it.

The public API in one place::

    from unbake import Workspace, TrainConfig
    ws = Workspace.create("ws", dataset="digits")
    ws.train(model="mlp", config=TrainConfig.parse(epochs=10))
    record = ws.forget(subject="alice", method="retrain")
"""

import os as _os

# Keep MKL/OpenMP from resizing their thread pools under load, which can change the
# order of floating-point reductions between runs (bitwise determinism on CPU).
_os.environ.setdefault("MKL_DYNAMIC", "FALSE")
_os.environ.setdefault("OMP_DYNAMIC", "FALSE")

from unbake import families as _families  # noqa: F401  (registers sisa and certified)
from unbake import methods as _methods  # noqa: F401  (registers the built-in methods)
from unbake.data import DATASETS, Dataset, Samples, load_dataset
from unbake.evaluation import Evaluation, avg_gap, evaluate
from unbake.exceptions import (
    DatasetError,
    EmptyRequestError,
    IntegrityError,
    InvalidParameterError,
    UnbakeError,
    UnknownNameError,
    UnknownSampleError,
    UnsupportedModelError,
    WorkspaceError,
)
from unbake.methods import METHODS, Unlearner, UnlearnResult, UnlearnTask, create
from unbake.models import MODELS, ModelSpec, build_model
from unbake.training import STRATEGIES, TrainConfig, TrainedModel, fit
from unbake.workspace import Workspace

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "METHODS",
    "MODELS",
    "STRATEGIES",
    "Dataset",
    "DatasetError",
    "EmptyRequestError",
    "Evaluation",
    "IntegrityError",
    "InvalidParameterError",
    "ModelSpec",
    "Samples",
    "TrainConfig",
    "TrainedModel",
    "UnbakeError",
    "UnknownNameError",
    "UnknownSampleError",
    "UnlearnResult",
    "UnlearnTask",
    "Unlearner",
    "UnsupportedModelError",
    "Workspace",
    "WorkspaceError",
    "__version__",
    "avg_gap",
    "build_model",
    "create",
    "evaluate",
    "fit",
    "load_dataset",
]
