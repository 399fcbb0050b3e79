"""Tuned defaults apply only where they were tuned, and a forget that barely forgot says so.

The case of issue 24: on digits, `unbake forget --class 6 --method finetune` ran with the
defaults tuned on Fashion-MNIST with the cnn and left FA at 51.6% (4.1% with the code's
defaults). Now the packaged table does not apply there, and FA lands near retrain's.
"""

import json
import shutil

import pytest
from typer.testing import CliRunner

from unbake.cli import app
from unbake.evaluation.forgetting_check import FA_KEPT, verdict
from unbake.methods.tuned import ENV_VAR, read_table

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ws = tmp_path_factory.mktemp("digits") / "ws"
    res = run("train", "--dataset", "digits", "-w", ws)  # the mlp, the default training
    assert res.exit_code == 0, res.output
    return ws


@pytest.fixture
def workspace(trained, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)  # the packaged table
    copy = tmp_path / "ws"
    shutil.copytree(trained, copy)
    return copy


def forget_json(ws, *args):
    res = run("forget", *args, "--json", "-w", ws)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_digits_class_finetune_lands_near_retrain_not_on_fashion_mnist_defaults(
    workspace, tmp_path
):
    packaged = read_table()["finetune"]["class"]
    assert (packaged["dataset"], packaged["model"]) == ("fashion-mnist", "cnn")
    retrained = tmp_path / "retrain"
    shutil.copytree(workspace, retrained)
    out = forget_json(workspace, "--class", "6", "--method", "finetune")
    ref = forget_json(retrained, "--class", "6", "--method", "retrain")
    fa, fa_retrain = out["evaluation"]["fa"], ref["evaluation"]["fa"]
    assert fa < 20.0 and abs(fa - fa_retrain) < 15.0, (fa, fa_retrain)  # was 51.6%
    defaults = out["info"]["defaults"]
    assert defaults["source"] == "code" and "tuned_defaults" not in out["info"]
    assert "tuned on fashion-mnist with cnn, not on digits with mlp" in defaults["why"]
    assert out["info"]["forgetting_check"]["verdict"] == "forgot"
    assert "forgetting_check" not in ref["info"]  # an exact method needs no check
    # The table shows which defaults ran and why.
    res = run("forget", "--class", "5", "--method", "finetune", "-w", workspace)
    assert res.exit_code == 0, res.output
    assert "Parameters: the code's defaults" in res.stdout and "fashion-mnist" in res.stdout


def test_a_forget_that_barely_moved_says_so_and_names_the_next_step(workspace):
    args = ("--class", "6", "--method", "finetune", "--param", "lr=1e-6", "--param", "epochs=1")
    out = forget_json(workspace, *args)
    check = out["info"]["forgetting_check"]
    assert check["verdict"] == "barely forgot"
    assert check["after"]["fa"] >= FA_KEPT * check["before"]["fa"]
    assert "--method retrain" in check["message"] and "unbake tune" in check["message"]
    res = run("forget", "--class", "5", *args[2:], "-w", workspace)
    assert res.exit_code == 0, res.output
    assert "Warning: finetune barely forgot this class" in res.stdout


def test_the_verdict_rule():
    before = {"fa": 100.0, "forget_loss": 0.1, "test_loss": 0.6}
    moved = {**before, "forget_loss": 0.3}
    still = {**before, "forget_loss": 0.12}
    assert verdict(before, moved, scenario="random", method="m")["verdict"] == "forgot"
    barely = verdict(before, still, scenario="random", method="m", workspace="W")
    assert barely["verdict"] == "barely forgot" and barely["moved"] == pytest.approx(0.04)
    assert "unbake tune --workspace W --method m --scenario random" in barely["message"]
    flat = {"fa": 100.0, "forget_loss": 0.5, "test_loss": 0.505}  # nothing to close
    assert verdict(flat, flat, scenario="random", method="m")["verdict"] == "not measured"
    assert verdict(before, {"fa": 49.0}, scenario="class", method="m")["verdict"] == "forgot"
    assert verdict(before, {"fa": 50.0}, scenario="class", method="m")["verdict"] == (
        "barely forgot"
    )
