"""The conformance suite every unlearning method passes, and tiny fixtures.

>>> from unbake.testing import check_unlearner
>>> check_unlearner("finetune")  # doctest: +ELLIPSIS
['deterministic', ...]
"""

from unbake.testing.conformance import CHECKS, check_unlearner, tiny_dataset, tiny_original

__all__ = ["CHECKS", "check_unlearner", "tiny_dataset", "tiny_original"]
