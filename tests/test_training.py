import numpy as np
import pytest
import torch

from unbake import ModelSpec, TrainConfig, build_model, fit
from unbake.exceptions import InvalidParameterError, UnknownNameError
from unbake.service import apply
from unbake.testing import tiny_dataset


def _equal(a, b):
    sa, sb = a.module.state_dict(), b.module.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "optimizer,schedule", [("adam", "constant"), ("sgd", "cosine"), ("sgd", "step")]
)
def test_same_seed_bitwise_identical(optimizer, schedule):
    ds = tiny_dataset()
    cfg = TrainConfig.parse(epochs=2, optimizer=optimizer, schedule=schedule, lr=0.01)
    a = fit(ds.train, n_classes=10, model="mlp", config=cfg, seed=3)
    b = fit(ds.train, n_classes=10, model="mlp", config=cfg, seed=3)
    c = fit(ds.train, n_classes=10, model="mlp", config=cfg, seed=4)
    assert _equal(a, b)
    assert not _equal(a, c)


def test_training_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ds = tiny_dataset()
    fit(ds.train, n_classes=10, model="mlp", config=TrainConfig.parse(epochs=1), seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_training_learns_digits():
    ds = tiny_dataset()
    tm = fit(ds.train, n_classes=10, model="mlp", config=TrainConfig.parse(epochs=15), seed=0)
    acc = (tm.predict_proba(torch.from_numpy(ds.test.X)).argmax(1).numpy() == ds.test.y).mean()
    assert acc > 0.8


@pytest.mark.parametrize(
    "name,shape", [("logreg", (1, 8, 8)), ("mlp", (5,)), ("cnn", (1, 8, 8)), ("cnn", (1, 28, 28))]
)
def test_model_zoo_shapes(name, shape):
    net = build_model(name, input_shape=shape, n_classes=7, seed=0)
    assert net(torch.zeros(2, *shape)).shape == (2, 7)


def test_resnet18_is_cifar_style():
    net = build_model(
        ModelSpec("resnet18", {"width": 8}), input_shape=(3, 32, 32), n_classes=10, seed=0
    )
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 20


def test_user_factory_and_bad_names(monkeypatch):
    with pytest.raises(InvalidParameterError, match=r"'nowhere\.module:fn' is not trusted"):
        build_model("nowhere.module:fn", input_shape=(3,), n_classes=2, seed=0)
    monkeypatch.setenv("UNBAKE_ALLOWED_FACTORIES", "nowhere.module:fn")
    with pytest.raises(InvalidParameterError, match="Cannot import the model factory"):
        build_model("nowhere.module:fn", input_shape=(3,), n_classes=2, seed=0)
    with pytest.raises(UnknownNameError, match="Unknown model 'vit'"):
        build_model("vit", input_shape=(3,), n_classes=2, seed=0)
    with pytest.raises(InvalidParameterError, match="cnn needs image input"):
        build_model("cnn", input_shape=(5,), n_classes=2, seed=0)


def make_tiny_net(*, input_shape, n_classes):
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(int(np.prod(input_shape)), n_classes)
    )


TINY = "tests.test_training:make_tiny_net"


def test_module_function_factory_only_when_allowed(monkeypatch):
    import sys

    sys.modules.pop("os_probe_never_imported", None)
    for untrusted in (TINY, "os:system", "subprocess:getoutput", "os_probe_never_imported:f"):
        with pytest.raises(InvalidParameterError, match="UNBAKE_ALLOWED_FACTORIES="):
            build_model(untrusted, input_shape=(1, 8, 8), n_classes=10, seed=0)
    assert "os_probe_never_imported" not in sys.modules  # refused before any import
    monkeypatch.setenv("UNBAKE_ALLOWED_FACTORIES", f" other.mod:f , {TINY}")
    net = build_model(TINY, input_shape=(1, 8, 8), n_classes=10, seed=0)
    assert net(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    with pytest.raises(InvalidParameterError, match="'os:system' is not trusted"):
        build_model("os:system", input_shape=(1, 8, 8), n_classes=10, seed=0)


def test_factory_registered_as_an_entry_point_is_trusted(monkeypatch):
    import importlib.metadata

    ep = importlib.metadata.EntryPoint("tiny", TINY, "unbake.models")
    real = importlib.metadata.entry_points

    def fake(**kw):
        return [ep] if kw.get("group") == "unbake.models" else real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    net = build_model(TINY, input_shape=(1, 8, 8), n_classes=10, seed=0)
    assert net(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    # the registry adds an entry point that names a factory under the entry point's name
    from unbake.registry import Registry

    nets = Registry("model", entry_points="unbake.models")
    assert nets.available() == ["tiny"] and nets.get("tiny") is make_tiny_net


def test_allow_factory_and_catalog_specs(monkeypatch):
    from unbake import models

    monkeypatch.setattr(models, "_ALLOWED", set())
    with pytest.raises(InvalidParameterError, match="not trusted"):
        ModelSpec.from_dict({"name": TINY, "params": {}})
    with pytest.raises(InvalidParameterError, match=r"package\.module:function"):
        models.allow_factory("no_colon")
    models.allow_factory(TINY)
    assert ModelSpec.from_dict({"name": TINY}).to_dict() == {"name": TINY, "params": {}}
    with pytest.raises(UnknownNameError, match="Unknown model 'vit'"):
        ModelSpec.from_dict({"name": "vit"})


def test_train_config_errors_are_one_line():
    with pytest.raises(InvalidParameterError, match=r"'lr' training parameter .* Got -1"):
        TrainConfig.parse(lr=-1)
    with pytest.raises(InvalidParameterError, match="'optimizer'"):
        TrainConfig.parse(optimizer="rmsprop")


def test_a_factory_callable_trains_and_retrains_exactly():
    from unbake import UnlearnTask, create

    ds = tiny_dataset()
    cfg = TrainConfig.parse(epochs=2)
    a = fit(ds.train, n_classes=10, model=make_tiny_net, config=cfg, seed=1)
    b = fit(ds.train, n_classes=10, model=make_tiny_net, config=cfg, seed=1)
    assert _equal(a, b) and a.describe() == TINY
    forget, retain = ds.train.split(ds.train.ids[:10])
    out = create("retrain").unlearn(UnlearnTask(a, forget, retain)).model
    assert _equal(out, fit(retain, n_classes=10, model=make_tiny_net, config=cfg, seed=1))


def test_nn_module_instance_or_untrusted_callable_cannot_be_saved(tmp_path, monkeypatch):
    from unbake import Workspace
    from unbake.exceptions import UnbakeError

    with Workspace.create(tmp_path / "ws", dataset=tiny_dataset()) as ws:
        net = make_tiny_net(input_shape=(1, 8, 8), n_classes=10)
        with pytest.raises(UnbakeError, match="not a factory"):
            apply.train(ws, model=net)
        with pytest.raises(UnbakeError, match=f"{TINY}' is not trusted"):
            apply.train(ws, model=make_tiny_net)
        assert ws.status()["models"] == []
        monkeypatch.setenv("UNBAKE_ALLOWED_FACTORIES", TINY)  # trusted: saved by its path
        model_id = apply.train(ws, model=make_tiny_net, config=TrainConfig.parse(epochs=1))
        assert ws.catalog.model(model_id)["description"] == TINY
