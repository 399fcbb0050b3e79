"""TracIn's checkpoints (kept in training, summed by the ``tracin`` detector, dropped by
approximate unlearning) and a label flip's harm (source accuracy, flip rate)."""

import copy
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from unbake.cli import app
from unbake.data import load_dataset
from unbake.data.poison import flip_rates, planted
from unbake.evaluation.detectors import DETECTORS, attack_harm, squared_grad_norms
from unbake.exceptions import InvalidParameterError
from unbake.training import TrainConfig, fit
from unbake.training.trajectory import checkpoint_steps, trajectory
from unbake.workspace import Workspace

FLIP = "flip:fraction=0.3,source=3,target=8"
BACKDOOR = "backdoor:fraction=0.05,target=0,size=3"


@pytest.fixture(scope="module")
def clean_digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def flip_digits():
    return load_dataset("digits", poison=FLIP)


def _fit(ds, checkpoints=0, epochs=4, model="mlp"):
    params = {"checkpoints": checkpoints} if checkpoints else None
    config = TrainConfig.parse(epochs=epochs)
    return fit(ds.train, n_classes=10, model=model, config=config, strategy_params=params)


def _with_weights(model, params):
    """A copy of ``model`` whose trainable parameters are ``params``."""
    new = copy.deepcopy(model)
    new.module.load_state_dict(params, strict=False)
    return new


def test_kept_checkpoints_leave_the_weights_bitwise_and_sit_evenly(flip_digits):
    kept = _fit(flip_digits, checkpoints=4)
    plain = _fit(flip_digits)
    for a, b in zip(
        kept.module.state_dict().values(), plain.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    steps_per_epoch = -(-len(flip_digits.train) // 64)
    info = kept.meta["trajectory"]
    assert info["steps"] == [steps_per_epoch * e for e in (1, 2, 3, 4)]  # each epoch's end
    assert info["lrs"] == [1e-3] * 4
    n_params = len(list(kept.module.parameters()))
    assert len(kept.artifacts) == 3 * n_params  # the 4th checkpoint is the final weights
    points = list(trajectory(kept))
    assert len(points) == 4 and points[-1][1].keys() == points[0][1].keys()
    assert not torch.equal(points[0][1]["head.weight"], points[-1][1]["head.weight"])
    assert not plain.meta and plain.strategy_params == {}
    assert checkpoint_steps(10, 3) == [3, 7, 10]


def test_tracin_sums_learning_rate_times_self_influence_over_checkpoints(flip_digits):
    model = _fit(flip_digits, checkpoints=3)
    some = flip_digits.train.subset(np.arange(200))
    tracin = DETECTORS.create("tracin").score(model, some)
    expected = sum(
        lr * DETECTORS.create("self-influence").score(_with_weights(model, params), some)
        for lr, params in trajectory(model)
    )
    np.testing.assert_allclose(tracin, expected, rtol=1e-6)
    final = DETECTORS.create("self-influence").score(model, some)
    assert not np.allclose(tracin, 1e-3 * final)  # earlier checkpoints count


@pytest.mark.parametrize("model", ["cnn", "mlp", "logreg"])
def test_per_sample_gradients_by_layers_vmap_and_loop_agree(flip_digits, model):
    model = _fit(flip_digits, epochs=1, model=model)
    some = flip_digits.train.subset(np.arange(40))
    by_vmap = squared_grad_norms(model, some, batch_size=16, per_sample="vmap")
    by_loop = squared_grad_norms(model, some, batch_size=16, per_sample="loop")
    by_layers = squared_grad_norms(model, some, batch_size=16, per_sample="layers")
    assert (by_vmap > 0).all()
    np.testing.assert_allclose(by_vmap, by_loop, rtol=1e-4)
    np.testing.assert_allclose(by_layers, by_vmap, rtol=1e-4)
    # "auto" takes the layer-wise path for these models; on a checkpoint's weights too.
    np.testing.assert_array_equal(squared_grad_norms(model, some, batch_size=16), by_layers)
    shifted = {k: v + 0.01 for k, v in model.module.named_parameters()}
    np.testing.assert_allclose(
        squared_grad_norms(model, some, shifted, per_sample="layers"),
        squared_grad_norms(model, some, shifted, per_sample="vmap"),
        rtol=1e-4,
    )


class _Shared(torch.nn.Module):
    """A layer called twice and a LayerNorm: what the layer-wise path cannot take."""

    def __init__(self, norm: bool):
        super().__init__()
        self.inner = torch.nn.Linear(64, 64)
        self.norm = torch.nn.LayerNorm(64) if norm else torch.nn.Identity()
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.norm(self.inner(torch.relu(self.inner(x.flatten(1))))))


@pytest.mark.parametrize("norm", [False, True], ids=["shared-layer", "layernorm"])
def test_auto_falls_back_to_vmap_where_the_layer_wise_path_cannot_go(flip_digits, norm):
    import dataclasses

    torch.manual_seed(0)
    model = dataclasses.replace(_fit(flip_digits, epochs=1), module=_Shared(norm))
    some = flip_digits.train.subset(np.arange(24))
    by_vmap = squared_grad_norms(model, some, batch_size=8, per_sample="vmap")
    np.testing.assert_array_equal(squared_grad_norms(model, some, batch_size=8), by_vmap)
    with pytest.raises(InvalidParameterError, match=r"per_sample='(auto|vmap)'"):
        squared_grad_norms(model, some, batch_size=8, per_sample="layers")


def test_tracin_without_checkpoints_names_the_fix(flip_digits):
    with pytest.raises(InvalidParameterError, match="checkpoints=3") as info:
        DETECTORS.create("tracin").score(_fit(flip_digits, epochs=1), flip_digits.train)
    assert "\n" not in str(info.value)


def test_approximate_unlearning_drops_the_checkpoints_retraining_keeps_its_own(flip_digits):
    from unbake.methods import METHODS, UnlearnTask

    model = _fit(flip_digits, checkpoints=2, epochs=2)
    task = UnlearnTask(model, *flip_digits.train.split(list(flip_digits.train.ids[:20])))
    edited = METHODS.create("finetune", epochs=1).unlearn(task, seed=0).model
    assert "trajectory" not in edited.meta
    assert not any(k.startswith("trajectory.") for k in edited.artifacts)
    assert "trajectory" in model.meta  # the original is untouched
    retrained = METHODS.create("retrain").unlearn(task, seed=0).model
    assert len(retrained.meta["trajectory"]["steps"]) == 2
    assert retrained.meta["trajectory"]["steps"] != model.meta["trajectory"]["steps"]


def test_flip_rates_and_attack_harm(clean_digits):
    flip = planted(load_dataset("digits", poison=FLIP))
    n3 = int((clean_digits.test.y == 3).sum())

    def always(label):
        return lambda X: np.eye(10)[np.full(len(X), label)]

    assert flip_rates(always(3), clean_digits.test, flip) == (1.0, 0.0)
    assert flip_rates(always(8), clean_digits.test, flip) == (0.0, 1.0)
    with pytest.raises(InvalidParameterError, match="label flip"):
        flip_rates(always(0), clean_digits.test, planted(load_dataset("digits", poison=BACKDOOR)))
    model = _fit(clean_digits, epochs=2)
    harm = attack_harm(model, clean_digits.test, flip)
    pred = model.log_proba(clean_digits.test.X).numpy().argmax(1)[clean_digits.test.y == 3]
    assert harm["source_acc"] == pytest.approx(100 * (pred == 3).sum() / n3)
    assert harm["flip_rate"] == pytest.approx(100 * (pred == 8).sum() / n3)
    assert set(attack_harm(model, clean_digits.test, None)) == {"ta"}


def test_clean_with_tracin_from_the_cli_keeps_no_checkpoint_of_the_forgotten(tmp_path):
    root = tmp_path / "ws"
    runner = CliRunner()
    train = ["train", "--workspace", str(root), "--poison", FLIP, "--epochs", "12"]
    res = runner.invoke(app, [*train, "--param", "checkpoints=3"])
    assert res.exit_code == 0, res.output
    with Workspace.open(root) as ws:
        before = ws.load_model()
        n = len(planted(ws.dataset()).ids)
    assert len(before.meta["trajectory"]["lrs"]) == 3  # kept in the saved safetensors
    args = ["--detect", "tracin", "--budget", str(2 * n), "--method", "finetune", "--json"]
    res = runner.invoke(app, ["clean", "--workspace", str(root), *args])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["detection"][f"recall@{2 * n}"] >= 0.65, report  # measured 0.84
    assert report["asr_before"] is None and {"source_acc", "flip_rate"} <= set(report["harm_after"])
    with Workspace.open(root) as ws:
        after = ws.load_model(report["model_after"])
        assert [r["info"]["reason"] for r in ws.log()] == ["cleaning"]
    assert "trajectory" not in after.meta
    assert not any(k.startswith("trajectory.") for k in after.artifacts)
