"""``unbake train --model-param``: arguments for the model factory, apart from ``--param``."""

import json

import pytest

from tests.integration.test_cli import assert_one_line_error, run
from unbake import Workspace

FACTORY = "tests.test_own_model:make_net"
TRAIN = ["train", "--dataset", "digits", "--epochs", "1", "--json"]
OWN = ["--model", FACTORY, "--strategy", "own", "--param", "config={}"]


def _widths(ws) -> list[int]:
    with Workspace.open(ws) as opened:
        model = opened.load_model()
        return [m.out_features for m in model.module.modules() if hasattr(m, "out_features")]


def test_model_param_reaches_a_trusted_factory_and_every_retrain(tmp_path, monkeypatch):
    monkeypatch.setenv("UNBAKE_ALLOWED_FACTORIES", FACTORY)
    ws = tmp_path / "ws"
    res = run(*TRAIN, "--model", FACTORY, "--model-param", "hidden=8", "--workspace", ws)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["description"] == FACTORY
    assert _widths(ws) == [8, 10]
    res = run("forget", "--ids", "digits-0001", "--method", "retrain", "--workspace", ws)
    assert res.exit_code == 0, res.output
    assert _widths(ws) == [8, 10]  # the retrain built the factory with the same argument


def test_model_param_of_a_built_in_model(tmp_path):
    ws = tmp_path / "ws"
    res = run(*TRAIN, "--model", "mlp", "--model-param", "hidden=[12]", "--workspace", ws)
    assert res.exit_code == 0, res.output
    assert _widths(ws) == [12, 10]


@pytest.mark.parametrize(
    "args,fragments",
    [
        (
            ["--model", "mlp", "--model-param", "colour=red"],
            ["Model 'mlp' has no parameter 'colour'; its parameters are: hidden"],
        ),
        (["--model", "logreg", "--model-param", "hidden"], ["--model-param 'hidden' is not"]),
        (["--model", "logreg", "--param", "hidden=8"], ["has no parameter 'hidden'"]),
        (["--model", "mlp", "--param", "hidden=[8]"], ["give it as --model-param hidden=VALUE"]),
        (
            ["--model", "tests.test_own_model:_positional"],
            ["does not take 'input_shape' by keyword; a factory is factory(*, input_shape"],
        ),
        (
            ["--model", "tests.test_own_model:_not_a_module"],
            ["returned str, not a torch.nn.Module; a factory is factory(*, input_shape"],
        ),
        (["--model", FACTORY, "--model-param", "hidden=8"], ["is not trusted"]),
        (
            [*OWN, "--param", "train=tests.test_own_model:_raises"],
            ["Your training function 'tests.test_own_model:_raises' raised ValueError"],
        ),
        ([*OWN, "--param", "train=tests.test_own_model:my_train"], ["is not trusted"]),
    ],
)
def test_bad_model_params_are_one_line_and_leave_no_workspace(
    tmp_path, monkeypatch, args, fragments
):
    if "_positional" in args[1] or "_not_a_module" in args[1]:
        monkeypatch.setenv("UNBAKE_ALLOWED_FACTORIES", args[1])
    if "own" in args:
        monkeypatch.setenv("UNBAKE_ALLOWED_FACTORIES", f"{FACTORY},tests.test_own_model:_raises")
    ws = tmp_path / "ws"
    assert_one_line_error(run(*TRAIN, *args, "--workspace", ws), *fragments)
    assert not ws.exists()
