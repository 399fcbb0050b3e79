"""Unlearning methods, one file each, all registered in :data:`METHODS`.

>>> from unbake.methods import METHODS
>>> "retrain" in METHODS.available()
True
"""

from unbake.methods import (  # noqa: F401  (registers the methods)
    bad_teacher,
    fisher,
    gradient,
    idk,
    influence,
    l1_sparse,
    llm_ga,
    neggrad_plus,
    npo,
    random_label,
    reset_distill,
    retrain,
    rmu,
    salun,
    scrub,
    ssd,
)
from unbake.methods.base import (
    METHODS,
    Knob,
    MethodTags,
    Unlearner,
    UnlearnResult,
    UnlearnTask,
    copy_model,
    register_method,
)

__all__ = [
    "METHODS",
    "Knob",
    "MethodTags",
    "UnlearnResult",
    "UnlearnTask",
    "Unlearner",
    "copy_model",
    "create",
    "register_method",
]


def create(name: str, /, **params) -> Unlearner:
    """Build the method registered as ``name`` with hyperparameters ``params``."""
    return METHODS.create(name, **params)
