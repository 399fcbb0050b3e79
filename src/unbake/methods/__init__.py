"""Unlearning methods, one file each, all registered in :data:`METHODS`.

>>> from unbake.methods import METHODS
>>> "retrain" in METHODS.available()
True
"""

from unbake.methods import (  # noqa: F401  (registers the methods)
    gradient,
    influence,
    retrain,
)
from unbake.methods.base import (
    METHODS,
    Unlearner,
    UnlearnResult,
    UnlearnTask,
    register_method,
)

__all__ = ["METHODS", "UnlearnResult", "UnlearnTask", "Unlearner", "create", "register_method"]


def create(name: str, /, **params) -> Unlearner:
    """Build the method registered as ``name`` with hyperparameters ``params``."""
    return METHODS.create(name, **params)
