"""Every registered method runs every conformance check."""

import pytest

from unbake.methods import METHODS
from unbake.testing import CHECKS, check_unlearner


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("method", METHODS.available())
def test_conformance(method, check):
    check(METHODS.create(method))


def test_check_unlearner_runs_every_check():
    assert check_unlearner("retrain") == [c.__name__.removeprefix("check_") for c in CHECKS]
