"""The conformance suite every unlearning method passes, and tiny fixtures.

>>> from unbake.testing import check_unlearner
>>> check_unlearner("finetune")  # doctest: +ELLIPSIS
['deterministic', ...]
"""

from unbake.testing.conformance import (
    CHECKS,
    applicable_checks,
    assert_bitwise_equal,
    check_unlearner,
    model_tensors,
    parametrize_with_checks,
    tiny_dataset,
    tiny_original,
)

__all__ = [
    "CHECKS",
    "applicable_checks",
    "assert_bitwise_equal",
    "check_unlearner",
    "model_tensors",
    "parametrize_with_checks",
    "tiny_dataset",
    "tiny_original",
]
