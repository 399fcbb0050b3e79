"""Your own model: a factory, a training recipe (your loop or unbake's), a trained module.

The first test is the user's door: a model trained by a plain hand-written PyTorch loop
outside unbake is adopted, a deletion is applied with ``retrain``, and the result is
compared bit for bit with the same hand-written loop run from scratch on the retain data.
"""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from unbake import ModelSpec, TrainConfig, UnlearnTask, adopt, create, fit
from unbake.exceptions import InvalidParameterError, UnsupportedModelError, UserCodeError
from unbake.testing import tiny_dataset
from unbake.training import differing_tensors

CONFIG = {"epochs": 2, "batch_size": 32, "lr": 0.1}


def make_net(*, input_shape, n_classes, hidden=16):
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(int(torch.tensor(input_shape).prod()), hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_classes),
    )


def my_train(module, data, *, seed, config):
    """A plain PyTorch loop, as a user writes it: nothing of unbake in it."""
    loader = DataLoader(
        data,
        batch_size=config["batch_size"],
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    opt = torch.optim.SGD(module.parameters(), lr=config["lr"])
    for _ in range(config["epochs"]):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(module(x), y).backward()
            opt.step()
    return module


def by_hand(samples, seed=0):
    """The user's own script, from scratch: seed, build, train."""
    X, y = torch.as_tensor(samples.X, dtype=torch.float32), torch.as_tensor(samples.y)
    torch.manual_seed(seed)
    net = make_net(input_shape=samples.input_shape, n_classes=10)
    return my_train(net, TensorDataset(X, y), seed=seed, config=CONFIG)


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def ds():
    return tiny_dataset()


@pytest.fixture(scope="module")
def trained(ds):
    return by_hand(ds.train)


def test_retrain_of_a_hand_trained_model_is_bitwise_the_hand_written_loop_from_scratch(ds, trained):
    model = adopt(
        ds.train, n_classes=10, factory=make_net, train=my_train, config=CONFIG, module=trained
    )
    assert _same(model.module, trained) and model.module is not trained
    forget, retain = ds.train.split(ds.train.ids[:15])
    result = create("retrain").unlearn(UnlearnTask(model, forget, retain))
    expected = by_hand(retain)
    assert _same(result.model.module, expected)
    assert not _same(result.model.module, trained)  # it did retrain, on less data
    # unbake trains from scratch exactly as the hand-written script does
    fresh = adopt(ds.train, n_classes=10, factory=make_net, train=my_train, config=CONFIG)
    assert _same(fresh.module, trained)


def test_a_trained_module_is_never_an_initialisation(ds, trained):
    with pytest.raises(InvalidParameterError, match=r"not a factory.*adopt"):
        fit(ds.train, n_classes=10, model=trained)
    # the old wrapper names the trained model only: nothing is built from its weights
    with pytest.raises(InvalidParameterError, match="without a factory"):
        fit(ds.train, n_classes=10, model=ModelSpec.from_module(trained))
    # adopted without a factory: the trained model only; exact methods name what is missing
    alone = adopt(ds.train, n_classes=10, module=trained)
    forget, retain = ds.train.split(ds.train.ids[:15])
    task = UnlearnTask(alone, forget, retain)
    with pytest.raises(UnsupportedModelError, match=r"without a factory.*factory=") as err:
        create("retrain").unlearn(task)
    assert "\n" not in str(err.value)
    finetuned = create("finetune", epochs=1).unlearn(task, seed=0).model  # approximate: runs
    assert differing_tensors(finetuned, alone)
    assert _same(alone.module, trained)  # the original is untouched


def test_unbakes_own_loop_as_the_recipe_retrains_from_the_factory(ds, trained):
    cfg = TrainConfig.parse(epochs=1, batch_size=32)
    model = adopt(ds.train, n_classes=10, factory=make_net, config=cfg, module=trained)
    forget, retain = ds.train.split(ds.train.ids[:15])
    out = create("retrain").unlearn(UnlearnTask(model, forget, retain)).model
    ref = fit(retain, n_classes=10, model=make_net, config=cfg, seed=0)
    assert not differing_tensors(out, ref)


def test_without_a_recipe_exact_methods_refuse_and_approximate_ones_run(ds, trained):
    model = adopt(ds.train, n_classes=10, factory=make_net, module=trained)
    forget, retain = ds.train.split(ds.train.ids[:15])
    task = UnlearnTask(model, forget, retain)
    with pytest.raises(UnsupportedModelError, match=r"without a training recipe.*train="):
        create("retrain").unlearn(task)
    assert differing_tensors(create("neggrad", epochs=1).unlearn(task, seed=0).model, model)
    with pytest.raises(InvalidParameterError, match="adopt needs module="):
        adopt(ds.train, n_classes=10, factory=make_net)


def test_a_factory_that_ignores_its_seed_is_refused(ds, trained):
    state = {"calls": 0}

    def drifting(*, input_shape, n_classes):
        state["calls"] += 1
        net = make_net(input_shape=input_shape, n_classes=n_classes)
        with torch.no_grad():
            net[1].bias.fill_(state["calls"])  # not from torch's seeded RNG
        return net

    with pytest.raises(InvalidParameterError, match="two different modules from seed 0"):
        adopt(ds.train, n_classes=10, factory=drifting, train=my_train, config=CONFIG)
    with pytest.raises(InvalidParameterError, match="two different modules"):
        fit(ds.train, n_classes=10, model=drifting, config=TrainConfig.parse(epochs=1))
    with pytest.raises(InvalidParameterError, match="returned the same module object twice"):
        adopt(ds.train, n_classes=10, factory=lambda **kw: trained, module=trained)
    # a model whose factory stopped honouring its seed after training is refused too
    model = adopt(ds.train, n_classes=10, factory=make_net, train=my_train, config=CONFIG,
                  module=trained)  # fmt: skip
    object.__setattr__(model.spec, "factory", drifting)
    forget, retain = ds.train.split(ds.train.ids[:15])
    with pytest.raises(UnsupportedModelError, match="two different modules"):
        create("retrain").unlearn(UnlearnTask(model, forget, retain))


def _not_a_module(*, input_shape, n_classes):
    return "a net"


def _positional(input_shape, n_classes, /):
    return make_net(input_shape=input_shape, n_classes=n_classes)


@pytest.mark.parametrize(
    "factory,match",
    [
        (_not_a_module, "returned str, not a torch.nn.Module; a factory is factory\\(\\*"),
        (_positional, "does not take 'input_shape' by keyword; a factory is factory\\(\\*"),
    ],
)
def test_a_factory_off_the_protocol_gets_one_line_quoting_it(ds, factory, match):
    with pytest.raises(InvalidParameterError, match=match) as err:
        fit(ds.train, n_classes=10, model=factory, config=TrainConfig.parse(epochs=1))
    assert "\n" not in str(err.value)


def _raises(module, data, *, seed, config):
    raise ValueError("bad shape\nsecond line")


def _returns_none(module, data, *, seed, config):
    return None


@pytest.mark.parametrize(
    "train,match",
    [
        (_raises, "raised ValueError: bad shape; fix it"),
        (_returns_none, "returned NoneType, not the trained torch.nn.Module"),
    ],
)
def test_a_training_function_that_fails_gets_one_line(ds, train, match):
    with pytest.raises(UserCodeError, match=match) as err:
        adopt(ds.train, n_classes=10, factory=make_net, train=train, config=CONFIG)
    assert "\n" not in str(err.value)


def test_a_checkpoint_file_is_adopted_into_the_factorys_module(ds, trained, tmp_path):
    path = tmp_path / "net.safetensors"
    save_file(trained.state_dict(), str(path))
    model = adopt(
        ds.train, n_classes=10, factory=make_net, train=my_train, config=CONFIG, module=path
    )
    assert _same(model.module, trained)
    with pytest.raises(InvalidParameterError, match="do not fit what the factory builds"):
        adopt(ds.train, n_classes=10, factory=lambda **kw: make_net(**kw, hidden=8), module=path)
    with pytest.raises(InvalidParameterError, match="holds weights only; give factory="):
        adopt(ds.train, n_classes=10, module=path)


def test_retrain_epochs_belongs_to_unbakes_loop(ds, trained):
    model = adopt(
        ds.train, n_classes=10, factory=make_net, train=my_train, config=CONFIG, module=trained
    )
    forget, retain = ds.train.split(ds.train.ids[:15])
    with pytest.raises(InvalidParameterError, match="drop --param epochs"):
        create("retrain", epochs=1).unlearn(UnlearnTask(model, forget, retain))


def test_a_registered_hand_trained_model_is_forgotten_in_a_workspace(ds, trained, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    from unbake import Workspace
    from unbake.service import apply
    from unbake.service.adopt import register

    with Workspace.create(tmp_path / "ws", dataset=ds) as ws:
        mine = {"module": trained, "factory": make_net, "train": my_train, "config": CONFIG}
        with pytest.raises(InvalidParameterError, match="make_net' is not trusted"):
            register(ws, **mine)
        assert ws.status()["models"] == []  # refused before anything was written
        paths = "tests.test_own_model:make_net,tests.test_own_model:my_train"
        monkeypatch.setenv("UNBAKE_ALLOWED_FACTORIES", paths)
        model_id = register(ws, **mine)
        assert _same(ws.load_model(model_id).module, trained)
        apply.forget(ws, ids=list(ds.train.ids[:15]), method="retrain")
        _, retain = ds.train.split(ds.train.ids[:15])
        assert _same(ws.load_model().module, by_hand(retain))
