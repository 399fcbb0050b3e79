"""unbake: remove the influence of training data from a trained model, prove it, record it.

The public API in one place::

    from unbake import DeletionService, TrainConfig, Workspace
    ws = Workspace.create("ws", dataset="digits")       # storage: samples, models, ledger
    svc = DeletionService(ws)                            # the work: training and deletions
    svc.train(model="mlp", config=TrainConfig.parse(epochs=10))
    record = svc.forget(subject="alice", method="retrain")
"""

import importlib
from typing import TYPE_CHECKING

# First, before anything imports torch: OpenMP reads its wait policy once, when torch
# loads it, and importing unbake._threads puts the passive policy in the environment.
import unbake._threads as _threads  # noqa: F401
from unbake._threads import ThreadPolicyWarning, configure_threads
from unbake._version import __version__
from unbake.exceptions import (
    DatasetError,
    EmptyRequestError,
    IntegrityError,
    InvalidParameterError,
    UnbakeError,
    UnknownNameError,
    UnknownSampleError,
    UnsupportedModelError,
    UserCodeError,
    WorkspaceError,
)

if TYPE_CHECKING:
    from unbake.data import DATASETS, Dataset, Samples, load_dataset
    from unbake.evaluation import Evaluation, avg_gap, evaluate
    from unbake.methods import METHODS, Unlearner, UnlearnResult, UnlearnTask, create
    from unbake.models import MODELS, ModelSpec, build_model
    from unbake.service import DeletionService
    from unbake.training import STRATEGIES, TrainConfig, TrainedModel, adopt, fit
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
    "UserCodeError",
    "Workspace",
    "WorkspaceError",
    "__version__",
    "adopt",
    "avg_gap",
    "build_model",
    "configure_threads",
    "create",
    "evaluate",
    "fit",
    "load_dataset",
]


#: What ``import unbake`` imported eagerly before, in the same order.
_SUBMODULES = (
    "families",
    "methods",
    "data",
    "evaluation",
    "models",
    "service",
    "training",
    "workspace",
)
_loaded = False


def _load() -> None:
    """Import the rest of the API (torch with it), as ``import unbake`` once did eagerly.

    The first attribute of the package that is not yet loaded triggers it, so importing
    :mod:`unbake` or one of its light modules (the CLI's ``--help``) does not load torch;
    the thread policy above is in the environment before it does.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True  # before the imports: a module they import may ask for a name again
    try:
        for name in _SUBMODULES:
            module = importlib.import_module(f"unbake.{name}")
            for attr in getattr(module, "__all__", ()):
                if attr in __all__:
                    globals()[attr] = getattr(module, attr)
    except BaseException:
        _loaded = False  # the next access raises the same error, not a missing name
        raise


def __getattr__(name: str) -> object:
    # Only the API and the modules `import unbake` used to load trigger it: any other name
    # (``from unbake import _json``) is left for the import system to find.
    if not _loaded and (name in __all__ or name in _SUBMODULES):
        _load()
    try:
        return globals()[name]
    except KeyError:
        raise AttributeError(f"module 'unbake' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
