"""The certified model's (ε, δ) accountant against closed-form answers, its state round
trip and checks, the registry, and the one declaration of the certified hyperparameters."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from unbake.exceptions import IntegrityError, InvalidParameterError, UnknownNameError
from unbake.families.certified import (
    ACCOUNTANTS,
    CertifiedLogisticRegression,
    CertifiedParams,
    CertifiedStrategy,
    GradientResidualAccountant,
    create_accountant,
    gaussian_constant,
)

SIGMA, EPSILON, DELTA = 2.0, 0.5, 1e-5


def _vec(*values):
    return torch.tensor(values, dtype=torch.float64)


def _accountant(**params):
    return create_accountant(
        "gradient_residual", **{"sigma": SIGMA, "epsilon": EPSILON, "delta": DELTA, **params}
    )


def test_budget_spent_and_epsilon_follow_theorem_3_in_closed_form():
    acc = _accountant()
    c = math.sqrt(2 * math.log(1.5 / DELTA))
    assert acc.budget == pytest.approx(SIGMA * EPSILON / c, rel=1e-15)
    acc.start(_vec(0.0, 0.0))
    assert acc.spent == 0.0 and acc.get_epsilon(DELTA) == 0.0
    # Known residual on output 0, bound on output 1: the outputs combine as 3-4-5.
    acc.step(residual=_vec(0.03, 0.0), added=_vec(0.0, 0.04), removed=2)
    assert acc.spent == pytest.approx(0.05, rel=1e-15)
    # A second step adds to the bound and replaces the known part.
    acc.step(residual=_vec(0.0, 0.0), added=_vec(0.06, 0.04), removed=1)
    assert acc.spent == pytest.approx(0.1, rel=1e-15)  # ‖(0.06, 0.08)‖
    assert acc.remaining == pytest.approx(SIGMA * EPSILON / c - 0.1, rel=1e-12)
    for delta in (1e-3, 1e-5, 1e-9):
        expected = math.sqrt(2 * math.log(1.5 / delta)) * 0.1 / SIGMA
        assert acc.get_epsilon(delta) == pytest.approx(expected, rel=1e-12)
    # At the target δ, spending the whole budget is spending the target ε.
    assert acc.get_epsilon(DELTA) / EPSILON == pytest.approx(acc.spent / acc.budget, rel=1e-12)
    assert (acc.removals_since_retrain, acc.removed_total, acc.retrains) == (3, 3, 0)


def test_a_step_over_the_budget_is_refused_and_changes_nothing():
    acc = _accountant()
    acc.start(_vec(0.01))
    acc.step(residual=_vec(0.01), added=_vec(0.02), removed=1)
    before = acc.state_dict()
    too_much = acc.remaining + 1e-9
    assert acc.spent_after(residual=_vec(0.01), added=_vec(too_much)) > acc.budget
    with pytest.raises(InvalidParameterError, match="retrain") as info:
        acc.step(residual=_vec(0.01), added=_vec(too_much), removed=1)
    assert "\n" not in str(info.value)
    assert acc.state_dict() == before
    # Exactly on the budget still fits (the theorem's inequality is not strict).
    assert acc.fits(acc.budget) and not acc.fits(math.nextafter(acc.budget, 1.0))


def test_a_retrain_is_logged_and_starts_the_account_afresh():
    acc = _accountant()
    acc.start(_vec(0.001))
    acc.step(residual=_vec(0.002), added=_vec(0.05), removed=4)
    spent = acc.spent
    acc.record_retrain(removed=2, would_spend=0.3)
    assert acc.retrain_log == [
        {"after_removals": 6, "removed_total": 6, "spent_before": spent, "would_spend": 0.3}
    ]
    acc.start(_vec(0.0005))
    assert acc.spent == pytest.approx(0.0005)
    assert acc.training_residual == pytest.approx(0.0005)
    assert (acc.removals_since_retrain, acc.removed_total, acc.retrains) == (0, 6, 1)


def test_state_round_trips_through_json():
    acc = _accountant()
    acc.start(_vec(1e-4, 2e-4, 3e-4))
    acc.step(residual=_vec(1e-5, 0.0, 2e-5), added=_vec(0.01, 0.02, 0.003), removed=3)
    acc.record_retrain(removed=1, would_spend=1.0)
    acc.start(_vec(7e-5, 0.0, 1e-6))
    acc.step(residual=_vec(0.0, 1e-7, 0.0), added=_vec(0.001, 0.0, 0.002), removed=2)
    state = json.loads(json.dumps(acc.state_dict()))
    assert state["mechanism"] == "gradient_residual" and state["version"] == 1
    assert state["params"] == {"sigma": SIGMA, "epsilon": EPSILON, "delta": DELTA}
    again = _accountant()
    again.load_state_dict(state)
    assert again.state_dict() == acc.state_dict()
    assert again.spent == acc.spent  # bitwise: JSON keeps every float64 digit
    assert again.get_epsilon(1e-6) == acc.get_epsilon(1e-6)
    assert torch.equal(again.bound, acc.bound)


class _OtherAccountant(GradientResidualAccountant):
    mechanism = "other"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"mechanism": "rdp"}, "mechanism 'rdp'"),
        ({"version": 99}, "version 99"),
        ({"params": {"sigma": 3.0, "epsilon": EPSILON, "delta": DELTA}}, "made with"),
        ({"bound": [0.1, 0.2, 0.3]}, "malformed"),
        ({"removed_total": None}, "malformed"),
    ],
)
def test_load_state_dict_checks_mechanism_version_parameters_and_shape(change, match):
    acc = _accountant()
    acc.start(_vec(0.0, 0.0))
    state = {**acc.state_dict(), **change}
    fresh = _accountant()
    with pytest.raises(IntegrityError, match=match) as info:
        fresh.load_state_dict(state)
    assert "\n" not in str(info.value)
    with pytest.raises(IntegrityError, match="not 'other'"):
        _OtherAccountant(sigma=SIGMA, epsilon=EPSILON, delta=DELTA).load_state_dict(
            acc.state_dict()
        )


def test_accountants_are_registered_and_created_by_name():
    assert "gradient_residual" in ACCOUNTANTS.available()
    assert type(_accountant()) is GradientResidualAccountant
    with pytest.raises(UnknownNameError, match="gradient_residual"):
        create_accountant("rdp", sigma=1.0)
    with pytest.raises(InvalidParameterError, match="'epsilon' parameter of gradient_residual"):
        _accountant(epsilon=1.5)
    with pytest.raises(InvalidParameterError, match="'delta' parameter of get_epsilon"):
        _accountant().get_epsilon(0.0)
    with pytest.raises(InvalidParameterError, match="already registered"):
        ACCOUNTANTS.register("gradient_residual")(GradientResidualAccountant)


def test_the_estimator_keeps_its_budget_in_the_accountant_and_saves_it():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = X[:120], y[:120]
    ids = np.array([str(i) for i in range(120)])
    clf = CertifiedLogisticRegression(lam=1e-2, sigma=5.0).fit(X, y, ids=ids)
    clf.remove(ids[:3])
    acc = clf.accountant_
    cert = clf.certificate()
    assert cert["mechanism"] == "gradient_residual"
    assert cert["budget_spent"] == acc.spent and cert["removed_total"] == acc.removed_total == 3
    assert cert["epsilon_spent"] == acc.get_epsilon(clf.delta) <= clf.epsilon
    assert cert["epsilon_spent"] == pytest.approx(
        gaussian_constant(clf.delta) * acc.spent / clf.sigma, rel=1e-12
    )
    artifacts, meta = clf.state()
    assert meta["certified"]["accountant"] == acc.state_dict()
    restored = CertifiedLogisticRegression(lam=1e-2, sigma=5.0).restore(
        X[3:], y[3:], ids=ids[3:], artifacts=artifacts, meta=meta
    )
    assert restored.accountant_.state_dict() == acc.state_dict()
    # Metadata without an accountant (an older format) is refused, naming the fix.
    legacy = {"certified": {k: v for k, v in meta["certified"].items() if k != "accountant"}}
    with pytest.raises(IntegrityError, match=r"no accountant state.*retrain"):
        CertifiedLogisticRegression(lam=1e-2, sigma=5.0).restore(
            X[3:], y[3:], ids=ids[3:], artifacts=artifacts, meta=legacy
        )
    # An accountant tracking another number of outputs than the weights is refused.
    short = {**meta["certified"]["accountant"], "residual": [0.0], "bound": [0.0]}
    with pytest.raises(IntegrityError, match="tracks 1 outputs but its weights have 10"):
        CertifiedLogisticRegression(lam=1e-2, sigma=5.0).restore(
            X[3:],
            y[3:],
            ids=ids[3:],
            artifacts=artifacts,
            meta={"certified": {**meta["certified"], "accountant": short}},
        )
    # A checkpoint whose accountant was made for another sigma is refused.
    with pytest.raises(IntegrityError, match="made with"):
        CertifiedLogisticRegression(lam=1e-2, sigma=4.0).restore(
            X[3:], y[3:], ids=ids[3:], artifacts=artifacts, meta=meta
        )


def test_one_declaration_serves_the_strategy_and_the_estimator():
    shared = {f.name: f for f in dataclasses.fields(CertifiedParams)}
    assert list(shared) == ["lam", "sigma", "epsilon", "delta", "normalize", "max_iter"]
    strategy, estimator = CertifiedStrategy(), CertifiedLogisticRegression()
    assert list(strategy.get_params()) == [*shared, "extractor"]
    assert set(shared) < set(estimator.get_params())
    for name, f in shared.items():
        assert f.metadata["help"]
        assert getattr(strategy, name) == getattr(estimator, name) == f.default
        assert (
            CertifiedStrategy._parameter_constraints[name]
            == CertifiedLogisticRegression._parameter_constraints[name]
        )
    # The strategy hands every shared value to its estimator.
    tuned = CertifiedStrategy(lam=0.5, sigma=3.0, epsilon=0.25, delta=1e-7, max_iter=7)
    est = tuned.estimator(random_state=3)
    assert {k: getattr(est, k) for k in shared} == {k: getattr(tuned, k) for k in shared}
    # Keyword-only constructors, and one message template for bad values.
    with pytest.raises(TypeError):
        CertifiedStrategy(1e-3)
    with pytest.raises(InvalidParameterError, match=r"'epsilon' parameter of certified .*\(0, 1\]"):
        CertifiedStrategy(epsilon=2.0).validate()
