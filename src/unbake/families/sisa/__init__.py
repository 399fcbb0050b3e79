"""SISA (Bourtoule et al., IEEE S&P 2021): the ``sisa`` strategy and its exact unlearner."""

from unbake.families.sisa import strategy, unlearner  # noqa: F401  (registers both)
