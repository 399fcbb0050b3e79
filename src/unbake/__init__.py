"""unbake: remove the influence of training data from a trained model, prove it, record it.

The public API in one place::

    from unbake import DeletionService, TrainConfig, Workspace
    ws = Workspace.create("ws", dataset="digits")       # storage: samples, models, ledger
    svc = DeletionService(ws)                            # the work: training and deletions
    svc.train(model="mlp", config=TrainConfig.parse(epochs=10))
    record = svc.forget(subject="alice", method="retrain")
"""

# First, before anything imports torch: OpenMP reads its wait policy once, when torch
# loads it, and importing unbake._threads puts the passive policy in the environment.
import unbake._threads as _threads  # noqa: F401
from unbake import families as _families  # noqa: F401  (registers sisa and certified)
from unbake import methods as _methods  # noqa: F401  (registers the built-in methods)
from unbake._threads import ThreadPolicyWarning, configure_threads
from unbake._version import __version__
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
from unbake.service import DeletionService
from unbake.training import STRATEGIES, TrainConfig, TrainedModel, fit
from unbake.workspace import Workspace

__all__ = [
    "DATASETS",
    "METHODS",
    "MODELS",
    "STRATEGIES",
    "Dataset",
    "DatasetError",
    "DeletionService",
    "EmptyRequestError",
    "Evaluation",
    "IntegrityError",
    "InvalidParameterError",
    "ModelSpec",
    "Samples",
    "ThreadPolicyWarning",
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
    "configure_threads",
    "create",
    "evaluate",
    "fit",
    "load_dataset",
]
