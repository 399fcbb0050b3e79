"""Influence-function unlearning (Koh & Liang 2017): one damped Newton step."""

import functools

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from unbake.data import load_dataset
from unbake.exceptions import InvalidParameterError
from unbake.methods import METHODS, UnlearnTask
from unbake.training import TrainConfig, fit

WD = 1e-2


@functools.lru_cache(maxsize=1)
def _digits():
    ds = load_dataset("digits")
    return ds.train.subset(np.arange(300))


def _minimise(model, X, y, steps=200):
    """Full-batch L-BFGS to the optimum of mean cross-entropy + WD/2 ‖θ‖² (in place)."""
    params = list(model.parameters())
    opt = torch.optim.LBFGS(
        params,
        max_iter=steps,
        tolerance_grad=1e-9,
        tolerance_change=0,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(X), y) + WD / 2 * sum((p * p).sum() for p in params)
        loss.backward()
        return loss

    opt.step(closure)
    return model


def _vector(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def _convex_original():
    train = _digits()
    config = TrainConfig(epochs=0, weight_decay=WD)
    original = fit(train, n_classes=10, model="logreg", config=config)
    X, y = train.tensors()
    _minimise(original.module, X, y)
    return train, original


def test_one_newton_step_lands_near_the_retrained_optimum_of_a_convex_model():
    train, original = _convex_original()
    forget, retain = train.split(train.ids[:15])
    result = METHODS.create("influence", params="all", damping=0.0, hessian_samples=None).unlearn(
        UnlearnTask(original, forget, retain)
    )
    assert result.info["converged"]
    exact = fit(retain, n_classes=10, model="logreg", config=original.config)
    exact.module.load_state_dict(original.module.state_dict())
    Xr, yr = retain.tensors()
    _minimise(exact.module, Xr, yr)
    target = _vector(exact.module)
    before = float((_vector(original.module) - target).norm() / target.norm())
    after = float((_vector(result.model.module) - target).norm() / target.norm())
    assert before > 1e-3
    assert after < 0.05 * before  # measured: ~1% of the original distance


@pytest.mark.slow
def test_cg_and_lissa_agree_on_a_convex_model():
    train, original = _convex_original()
    forget, retain = train.split(train.ids[:15])
    task = UnlearnTask(original, forget, retain)
    start = _vector(original.module)
    common = {"params": "all", "damping": 0.3, "hessian_samples": None}
    cg = METHODS.create("influence", solver="cg", **common).unlearn(task, seed=0)
    li = METHODS.create(
        "influence", solver="lissa", iterations=150, batch_size=len(retain), **common
    ).unlearn(task, seed=0)
    a, b = _vector(cg.model.module) - start, _vector(li.model.module) - start
    assert float(torch.dot(a, b) / (a.norm() * b.norm())) > 0.99
    assert float((a - b).norm() / a.norm()) < 0.05


def test_head_only_leaves_the_features_untouched():
    train = _digits()
    original = fit(train, n_classes=10, model="mlp", config=TrainConfig(epochs=3, lr=3e-3))
    forget, retain = train.split(train.ids[:10])
    result = METHODS.create("influence").unlearn(UnlearnTask(original, forget, retain))
    before, after = original.module.state_dict(), result.model.module.state_dict()
    for key in before:
        changed = not torch.equal(before[key], after[key])
        assert changed == key.startswith("head."), key
    assert result.info["n_params"] == sum(p.numel() for p in original.module.head.parameters())


def test_indefinite_hessian_asks_for_more_damping():
    train = _digits()
    original = fit(train, n_classes=10, model="mlp", config=TrainConfig(epochs=3, lr=3e-3))
    forget, retain = train.split(train.ids[:10])
    method = METHODS.create("influence", params="all", damping=0.0)
    with pytest.raises(InvalidParameterError, match="raise damping") as info:
        method.unlearn(UnlearnTask(original, forget, retain))
    assert "\n" not in str(info.value)


def test_lissa_with_too_small_a_scale_is_refused():
    train, original = _convex_original()
    forget, retain = train.split(train.ids[:5])
    method = METHODS.create("influence", solver="lissa", scale=1e-4, iterations=50)
    with pytest.raises(InvalidParameterError, match="scale"):
        method.unlearn(UnlearnTask(original, forget, retain))


def test_forgetting_every_sample_is_refused():
    train, original = _convex_original()
    forget, retain = train.split(train.ids)
    with pytest.raises(InvalidParameterError, match="removes every training sample"):
        METHODS.create("influence").unlearn(UnlearnTask(original, forget, retain))


@pytest.mark.parametrize(
    "params",
    [{"solver": "newton"}, {"params": "body"}, {"damping": -1.0}, {"hessian_samples": 0}],
)
def test_bad_parameters_are_rejected(params):
    train, original = _convex_original()
    forget, retain = train.split(train.ids[:5])
    with pytest.raises(InvalidParameterError, match=f"'{next(iter(params))}' parameter"):
        METHODS.create("influence", **params).unlearn(UnlearnTask(original, forget, retain))
