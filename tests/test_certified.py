"""Certified removal (Guo et al. 2020): exactness of the Newton step, the certificate, the
budget, the strategy and workspace round trip, and bad input."""

import copy
import functools

import numpy as np
import pytest
import torch
from torch import nn

from unbake.data import Dataset, Samples, load_dataset
from unbake.exceptions import (
    EmptyRequestError,
    InvalidParameterError,
    NotFittedError,
    UnknownSampleError,
    UnsupportedModelError,
)
from unbake.families.certified import (
    CertifiedLinear,
    CertifiedLogisticRegression,
    gaussian_constant,
    residual_budget,
)
from unbake.methods import METHODS, UnlearnTask
from unbake.service import apply
from unbake.training import fit
from unbake.workspace import Workspace


@functools.lru_cache(maxsize=1)
def _digits():
    ds = load_dataset("digits")
    return ds.train.X[:400], ds.train.y[:400], ds.train.ids[:400].astype(str), ds


def _fit(X, y, ids, **params):
    params = {"lam": 1e-3, "sigma": 5.0, **params}
    return CertifiedLogisticRegression(**params).fit(X, y, ids=ids)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("classes", [None, (3, 8)], ids=["ovr-10", "binary-3v8"])
def test_newton_removal_of_one_sample_lands_on_the_retrained_optimum(classes):
    X, y, ids, _ = _digits()
    if classes is not None:
        keep = np.isin(y, classes)
        X, y, ids = X[keep], y[keep], ids[keep]
    clf = _fit(X, y, ids)
    before = clf.W_.clone()
    event = clf.remove([ids[0]])
    assert not event["retrained"]
    # Same seed and no retrain: the reference draws the same noise vector b.
    retrained = _fit(X[1:], y[1:], ids[1:])
    assert torch.equal(clf.noise_, retrained.noise_)
    moved = _relative(before, retrained.W_)
    distance = _relative(clf.W_, retrained.W_)
    assert moved > 1e-4  # the sample mattered ...
    assert distance < 1e-4  # ... and one Newton step removes it (measured: ~1e-5)
    assert distance < 0.01 * moved


def test_the_bound_holds_against_the_measured_gradient_residual():
    X, y, ids, _ = _digits()
    clf = _fit(X, y, ids, lam=1e-2, sigma=2.0)
    for step in range(8):
        event = clf.remove(ids[3 * step : 3 * step + (1 if step % 2 else 3)])
        assert not event["retrained"]
        residual = clf.gradient_residual()
        measured = residual.norm(dim=1)
        per_output = clf.known_residual_.norm(dim=1) + clf.accountant_.bound
        assert bool((measured <= per_output * (1 + 1e-9)).all())
        assert float(residual.norm()) <= clf.certificate()["budget_spent"] * (1 + 1e-9)
    cert = clf.certificate()
    assert 0 < cert["budget_fraction"] < 1
    assert cert["epsilon_spent"] == pytest.approx(cert["epsilon"] * cert["budget_fraction"])
    assert cert["removals_since_retrain"] == cert["removed_total"] == 16


def test_budget_triggers_a_retrain_exactly_when_the_next_removal_would_exceed_it():
    X, y, ids, _ = _digits()
    X, y, ids = X[:200], y[:200], ids[:200]
    clf = _fit(X, y, ids, lam=1e-2, sigma=0.3)  # a small budget: a few removals per retrain
    order = np.random.default_rng(0).permutation(ids)
    retrains = 0
    for i, sid in enumerate(order[:20]):
        # Oracle: the same step on a copy whose budget can never run out.
        unlimited = copy.deepcopy(clf)
        unlimited.accountant_.fits = lambda spent: True
        would_spend = unlimited.remove([sid])["budget_spent"]
        before = clf.certificate()
        event = clf.remove([sid])
        assert event["retrained"] == (would_spend > clf.budget), i
        cert = clf.certificate()
        if event["retrained"]:
            retrains += 1
            assert cert["retrains"] == before["retrains"] + 1
            assert cert["removals_since_retrain"] == 0
            assert cert["budget_spent"] < 1e-3 * clf.budget  # a fresh optimum
            assert (
                clf.accountant_.retrain_log[-1]["after_removals"]
                == before["removals_since_retrain"] + 1
            )
        else:
            assert cert["budget_spent"] == pytest.approx(would_spend, rel=1e-12)
            assert cert["budget_spent"] <= clf.budget
        assert cert["removed_total"] == i + 1
    assert retrains >= 2


def test_a_forced_retrain_draws_fresh_noise_and_fits_the_remaining_data():
    X, y, ids, _ = _digits()
    clf = _fit(X, y, ids, sigma=1.0)
    first_noise = clf.noise_.clone()
    removed = []
    while clf.certificate()["retrains"] == 0:
        removed.append(ids[len(removed)])
        clf.remove([removed[-1]])
    assert not torch.equal(clf.noise_, first_noise)
    assert float(clf.gradient_residual().norm()) < 1e-3 * clf.budget
    assert set(clf.ids_) == set(ids) - set(removed)


def test_downdated_preconditioner_is_the_inverse_hessian_without_the_removed_rows():
    X, y, ids, _ = _digits()
    clf = _fit(X, y, ids)
    n = len(y)
    clf._precond = clf._build_preconditioner(n)
    S = clf._precond_curvature.clone()
    rows = np.array([4, 9, 17])
    clf._downdate_preconditioner(rows, clf.X_[torch.as_tensor(rows)].clone())
    keep = torch.ones(n, dtype=torch.bool)
    keep[torch.as_tensor(rows)] = False
    Phi = clf.X_[keep]
    eye = torch.eye(Phi.shape[1], dtype=torch.float64)
    for k in range(S.shape[1]):
        H = Phi.T @ (Phi * S[keep, k : k + 1]) + clf.lam * n * eye
        assert torch.allclose(clf._precond[k] @ H, eye, atol=1e-5)


def test_certificate_constants_follow_theorem_3():
    assert gaussian_constant(1e-5) == pytest.approx(np.sqrt(2 * np.log(1.5e5)))
    assert residual_budget(sigma=2.0, epsilon=0.5, delta=1e-5) == pytest.approx(
        2.0 * 0.5 / gaussian_constant(1e-5)
    )


def test_scikit_learn_surface():
    X, y, ids, ds = _digits()
    clf = _fit(X, y, ids, sigma=0.5)
    params = clf.get_params()
    assert params["lam"] == 1e-3 and params["sigma"] == 0.5 and params["epsilon"] == 1.0
    proba = clf.predict_proba(ds.test.X)
    assert proba.shape == (len(ds.test), 10)
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert clf.score(ds.test.X, ds.test.y) > 0.8
    assert clf.coef_.shape == (10, 64) and clf.intercept_.shape == (10,)
    assert set(clf.predict(ds.test.X)) <= set(range(10))
    # the served module gives the same probabilities
    module = clf.to_module()
    with torch.no_grad():
        served = torch.softmax(module(torch.from_numpy(ds.test.X)), dim=1).numpy()
    assert np.allclose(served, proba, atol=1e-5)


def test_binary_problem_has_one_output_and_two_probabilities():
    X, y, ids, _ = _digits()
    keep = np.isin(y, (0, 1))
    clf = _fit(X[keep], y[keep], ids[keep], sigma=0.5)
    assert clf.W_.shape[0] == 1
    assert clf.predict_proba(X[keep]).shape == (int(keep.sum()), 2)
    assert clf.score(X[keep], y[keep]) > 0.95
    assert clf.to_module()(torch.from_numpy(X[keep][:3])).shape == (3, 2)


def test_fit_is_bitwise_deterministic_given_the_seed():
    X, y, ids, _ = _digits()
    a, b = _fit(X, y, ids, random_state=3), _fit(X, y, ids, random_state=3)
    assert torch.equal(a.W_, b.W_)
    assert not torch.equal(a.noise_, _fit(X, y, ids, random_state=4).noise_)


# --- last layer of a frozen network --------------------------------------------------


def public_extractor(*, input_shape):
    """A fixed 'public' feature network (seeded, independent of the private data)."""
    g = torch.Generator().manual_seed(11)
    net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 32), nn.ReLU())
    with torch.no_grad():
        net[1].weight.copy_(torch.randn(32, int(np.prod(input_shape)), generator=g) / 4)
        net[1].bias.zero_()
    return net.eval()


def test_certified_removal_for_the_last_layer_of_a_frozen_network():
    X, y, ids, _ = _digits()
    extractor = public_extractor(input_shape=X.shape[1:])
    clf = _fit(X, y, ids, feature_extractor=extractor)
    assert clf.n_features_ == 32
    clf.remove([ids[0]])
    retrained = _fit(X[1:], y[1:], ids[1:], feature_extractor=extractor)
    assert _relative(clf.W_, retrained.W_) < 1e-4
    assert float(clf.gradient_residual().norm()) <= clf.certificate()["budget_spent"]
    module = clf.to_module()
    assert torch.equal(module.extractor[1].weight, extractor[1].weight)
    assert not any(p.requires_grad for p in module.extractor.parameters())


def test_strategy_with_a_frozen_extractor_through_the_method(monkeypatch):
    _, _, _, ds = _digits()
    train = ds.train.subset(np.arange(300))
    extractor = {"sigma": 5.0, "extractor": "tests.test_certified:public_extractor"}
    with pytest.raises(InvalidParameterError, match=r"feature extractor .* is not trusted"):
        fit(train, n_classes=10, model="logreg", strategy="certified", strategy_params=extractor)
    monkeypatch.setenv("UNBAKE_ALLOWED_FACTORIES", extractor["extractor"])
    model = fit(
        train, n_classes=10, model="logreg", strategy="certified", strategy_params=extractor
    )
    assert isinstance(model.module, CertifiedLinear)
    forget, retain = train.split(train.ids[:2])
    result = METHODS.create("certified").unlearn(UnlearnTask(model, forget, retain))
    assert result.info["certificate"]["removed_total"] == 2
    assert result.model.module.linear.in_features == 32


# --- through the strategy and the workspace ---------------------------------------------


def _tiny_dataset() -> Dataset:
    _, _, _, ds = _digits()
    train = ds.train.subset(np.arange(200))
    return Dataset("digits-200", train, ds.test.subset(np.arange(100)), 10, {"name": "x"})


def test_budget_state_persists_across_workspace_requests(tmp_path):
    ds = _tiny_dataset()
    with Workspace.create(tmp_path / "ws", dataset=ds) as ws:
        apply.train(
            ws, model="logreg", strategy="certified", strategy_params={"lam": 1e-2, "sigma": 2.0}
        )
        ids = [str(i) for i in ds.train.ids[:5]]
        first = apply.forget(ws, ids=ids[:2], method="certified")
        second = apply.forget(ws, ids=ids[2:], method="certified")
        cert = second.result.info["certificate"]
        assert first.result.info["certificate"]["removed_total"] == 2
        assert cert["removed_total"] == 5
        assert cert["removals_since_retrain"] == 5
        stored = ws.load_model()
        assert stored.meta["certified"]["accountant"]["removed_total"] == 5
        assert stored.meta["certified"]["n_train"] == 195
        assert stored.artifacts["noise"].dtype == torch.float64
        probs = stored.predict_proba(torch.from_numpy(ds.test.X))
        assert probs.shape == (100, 10)


def test_method_flags():
    method = METHODS.create("certified")
    assert method.certified and not method.exact
    assert method.requires_strategy == "certified"
    assert method.suggested_original["model"] == "logreg"


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [{"epsilon": 0.0}, {"epsilon": 1.5}, {"delta": 0.0}, {"delta": 1.0}, {"lam": 0.0}],
)
def test_out_of_range_privacy_parameters_are_rejected(params):
    X, y, ids, _ = _digits()
    name = next(iter(params))
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter"):
        _fit(X, y, ids, **params)


def test_removal_errors():
    X, y, ids, _ = _digits()
    clf = _fit(X[:20], y[:20], ids[:20])
    with pytest.raises(UnknownSampleError, match="Unknown sample"):
        clf.remove(["no-such-id"])
    with pytest.raises(EmptyRequestError):
        clf.remove([])
    clf.remove([ids[0]])
    with pytest.raises(UnknownSampleError, match="already removed"):
        clf.remove([ids[0]])
    with pytest.raises(InvalidParameterError, match="at least one must stay"):
        clf.remove(ids[1:20])


def test_a_singular_hessian_asks_for_a_larger_lam():
    X, y, ids, _ = _digits()
    with pytest.raises(InvalidParameterError, match="use a larger lam") as info:
        _fit(X, y, ids, lam=1e-14)
    assert "\n" not in str(info.value)


def test_non_convex_models_are_refused():
    _, _, _, ds = _digits()
    with pytest.raises(UnsupportedModelError, match="convex") as info:
        fit(ds.train.subset(np.arange(50)), n_classes=10, model="mlp", strategy="certified")
    assert "extractor" in str(info.value) and "\n" not in str(info.value)


def test_the_method_refuses_models_of_another_strategy():
    _, _, _, ds = _digits()
    train = ds.train.subset(np.arange(60))
    model = fit(train, n_classes=10, model="logreg")
    forget, retain = train.split(train.ids[:1])
    with pytest.raises(UnsupportedModelError, match="--strategy certified"):
        METHODS.create("certified").unlearn(UnlearnTask(model, forget, retain))


def test_unfitted_and_mismatched_state():
    with pytest.raises(NotFittedError):
        CertifiedLogisticRegression().predict(np.zeros((1, 4)))
    X, y, ids, _ = _digits()
    clf = _fit(X[:50], y[:50], ids[:50])
    artifacts, meta = clf.state()
    with pytest.raises(InvalidParameterError, match="holds 50 samples"):
        CertifiedLogisticRegression(sigma=5.0).restore(
            X[:40], y[:40], ids=ids[:40], artifacts=artifacts, meta=meta
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_fit_and_removal_match_the_cpu():
    X, y, ids, _ = _digits()
    cpu = _fit(X, y, ids)
    gpu = _fit(X, y, ids, device="cuda")
    assert _relative(gpu.W_.cpu(), cpu.W_) < 1e-6
    cpu.remove([ids[0]])
    gpu.remove([ids[0]])
    assert _relative(gpu.W_.cpu(), cpu.W_) < 1e-6


def test_samples_shape_is_unchanged():
    # Removal never touches the caller's arrays.
    X, y, ids, _ = _digits()
    X0 = X.copy()
    clf = _fit(X, y, ids)
    clf.remove([ids[5]])
    assert np.array_equal(X, X0)
    assert isinstance(Samples, type)
