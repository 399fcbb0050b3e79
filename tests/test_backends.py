"""Shard backends: identical bits from every backend, clear errors for bad options."""

import importlib.util
import sys

import pytest
import torch

from unbake import TrainConfig, fit
from unbake.backends import BACKENDS, create_backend
from unbake.exceptions import InvalidParameterError, UnbakeError
from unbake.methods import METHODS, UnlearnTask
from unbake.testing import tiny_dataset

CFG = TrainConfig.parse(epochs=2, batch_size=32, lr=3e-3)
PARAMS = {"shards": 3, "slices": 2, "assignment": "hash"}
HAS_RAY = importlib.util.find_spec("ray") is not None


def train(**execution):
    return fit(
        tiny_dataset().train,
        n_classes=10,
        model="mlp",
        config=CFG,
        seed=0,
        strategy="sisa",
        strategy_params={**PARAMS, **execution},
    )


def tensors(model):
    out = {f"module.{k}": v for k, v in model.module.state_dict().items()}
    out.update({f"artifact.{k}": v for k, v in model.artifacts.items()})
    return out


def assert_bitwise(a, b):
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    diff = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not diff, f"backends disagree on {diff[:5]}"


@pytest.fixture(scope="module")
def sequential():
    return train()


def test_registered_backends():
    assert BACKENDS.available() == ["local", "ray"]


def test_process_pool_gives_the_same_bits_as_sequential(sequential):
    pooled = train(backend="local", workers=2)
    assert_bitwise(pooled, sequential)
    assert pooled.strategy_params == sequential.strategy_params  # execution is not stored


def test_thread_count_of_the_caller_does_not_change_the_bits(sequential):
    before = torch.get_num_threads()
    torch.set_num_threads(2 if before == 1 else 1)
    try:
        again = train()
    finally:
        torch.set_num_threads(before)
    assert_bitwise(again, sequential)


needs_ray = pytest.mark.skipif(
    not HAS_RAY, reason="ray is not installed: pip install 'unbake[ray]'"
)


@pytest.mark.ray
@needs_ray
def test_ray_gives_the_same_bits_as_sequential(sequential, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    import ray

    assert not ray.is_initialized()
    on_ray = train(backend="ray", workers=2)  # starts a local Ray, then shuts it down
    assert not ray.is_initialized(), "the backend did not shut down the Ray it started"
    assert_bitwise(on_ray, sequential)


@pytest.mark.ray
@pytest.mark.slow
@needs_ray
def test_deletion_on_ray_equals_deletion_here(sequential, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    from unbake.backends.ray import ray_session

    train_set = tiny_dataset().train
    forget, retain = train_set.split([str(i) for i in train_set.ids[:4]])
    task = UnlearnTask(sequential, forget, retain)
    here = METHODS.create("sisa").unlearn(task).model
    with ray_session(workers=2) as ray:  # the backend joins a session that is already up
        remote = METHODS.create("sisa", backend="ray", workers=2).unlearn(task).model
        assert ray.is_initialized()
    assert not ray.is_initialized()
    assert_bitwise(remote, here)


def test_missing_ray_is_a_one_line_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(UnbakeError, match=r"pip install 'unbake\[ray\]'") as info:
        train(backend="ray")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "dask"}, "'backend' parameter of the shard backend must be one of"),
        ({"workers": 0}, "'workers' parameter of the shard backend"),
        ({"ray_address": "auto"}, "only applies to the ray backend"),
    ],
)
def test_bad_backend_options(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        create_backend(**kwargs)


def test_local_backend_keeps_job_order():
    assert create_backend("local", workers=2).map(abs, [-3, 1, -2]) == [3, 1, 2]


def test_a_bank_keeps_each_models_own_training_seconds():
    from unbake.evaluation.bank import Recipe, train_bank
    from unbake.models import ModelSpec
    from unbake.testing import tiny_dataset
    from unbake.training import TrainConfig

    ds = tiny_dataset()
    recipe = Recipe(ModelSpec("logreg"), TrainConfig.parse(epochs=1), ds.n_classes)
    bank = train_bank(ds.train, recipe, seeds=[0, 1, 2])
    assert len(bank.fit_seconds) == 3 and all(s > 0 for s in bank.fit_seconds)
    assert bank.first(2).fit_seconds == bank.fit_seconds[:2]
