"""Certified removal (Guo et al., ICML 2020): the ``certified`` strategy and unlearner."""

from unbake.families.certified import estimator, strategy  # noqa: F401  (registers both)
