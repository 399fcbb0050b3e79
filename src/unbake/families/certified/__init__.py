"""Certified removal (Guo et al., ICML 2020): training and unlearning in one place.

* :mod:`~unbake.families.certified.accountant`: the (ε, δ) budget as an accountant
  object, its registry and the pure maths of Theorem 3;
* :mod:`~unbake.families.certified.estimator`: the removal-enabled logistic regression
  and the module it serves as;
* :mod:`~unbake.families.certified.strategy`: the ``certified`` training strategy;
* :mod:`~unbake.families.certified.unlearner`: the ``certified`` method.
"""

from unbake.families.certified.accountant import (
    ACCOUNTANTS,
    Accountant,
    GradientResidualAccountant,
    create_accountant,
    epsilon_of_residual,
    gaussian_constant,
    residual_budget,
)
from unbake.families.certified.estimator import (
    CertifiedLinear,
    CertifiedLogisticRegression,
    CertifiedParams,
)
from unbake.families.certified.strategy import CertifiedStrategy
from unbake.families.certified.unlearner import CertifiedRemoval

__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "CertifiedLinear",
    "CertifiedLogisticRegression",
    "CertifiedParams",
    "CertifiedRemoval",
    "CertifiedStrategy",
    "GradientResidualAccountant",
    "create_accountant",
    "epsilon_of_residual",
    "gaussian_constant",
    "residual_budget",
]
