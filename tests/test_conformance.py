"""Every registered method runs every conformance check that applies to its tags; the rest
are skipped visibly, with the reason."""

import pytest

from unbake.methods import METHODS, MethodTags, Unlearner, copy_model
from unbake.testing import CHECKS, applicable_checks, check_unlearner, parametrize_with_checks
from unbake.testing.conformance import check_exact_matches_retrain, check_forgets


@parametrize_with_checks()
def test_conformance(method, check):
    check(METHODS.create(method))


class DoNothing(Unlearner):
    """Returns a copy of the original: the method every conformance suite must catch."""

    name = "do_nothing"
    tags = MethodTags(reads=("forget",))

    def __init__(self) -> None:
        pass

    def _unlearn(self, task, seed):
        return copy_model(task.original), {}


def test_do_nothing_fails_the_forgetting_check():
    with pytest.raises(AssertionError, match="does not forget"):
        check_forgets(DoNothing())


def test_check_unlearner_runs_the_checks_that_apply():
    names = [c.__name__.removeprefix("check_") for c in CHECKS]
    assert check_unlearner("retrain") == [n for n in names if n != "runs_without_retain"]
    skipped = {c.__name__ for c, reason in applicable_checks(DoNothing()) if reason}
    assert skipped == {"check_exact_matches_retrain", "check_rejects_missing_retain"}


def test_skipped_checks_say_why():
    marks = parametrize_with_checks(["neggrad"]).args[1]
    skipped = {p.values[1].__name__: p.marks[0].kwargs["reason"] for p in marks if p.marks}
    assert check_exact_matches_retrain.__name__ in skipped
    assert "not exact" in skipped[check_exact_matches_retrain.__name__]
    assert "check_rejects_missing_retain" in skipped
