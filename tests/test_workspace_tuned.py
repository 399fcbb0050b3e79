"""`unbake tune --workspace`: the workspace's own tuned defaults, stored with their study
and hashed, preferred by `unbake forget`; a table that fails its hash is refused."""

import hashlib
import json
import shutil

import pytest
from typer.testing import CliRunner

from unbake.cli import app
from unbake.methods.tuned import ENV_VAR
from unbake.workspace import Workspace

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(root):
    return {p: hashlib.sha256(p.read_bytes()).digest() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    ws = tmp_path_factory.mktemp("tuned") / "ws"
    res = run("train", "--dataset", "digits", "--model", "logreg", "--epochs", "3", "-w", ws)
    assert res.exit_code == 0, res.output
    res = run("tune", "--workspace", ws, "--method", "finetune", "--scenario", "class",
              "--forget-class", "3", "--trials", "2", "--param", "epochs=1",
              "--time-fraction", "5", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    return ws, json.loads(res.stdout)


@pytest.fixture
def workspace(tuned, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    copy = tmp_path / "ws"
    shutil.copytree(tuned[0], copy)
    return copy


def test_tune_writes_the_workspaces_own_table_with_its_study(tuned, workspace):
    study, entry = tuned[1], tuned[1]["tuned_defaults"]
    assert (entry["dataset"], entry["model"], entry["scenario"]) == ("digits", "logreg", "class")
    assert entry["params"]["epochs"] == 1 and entry["study"].startswith("tuning/finetune-class-")
    stored = (workspace / entry["study"]).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == entry["study_sha256"]
    assert json.loads(stored)["best"] == study["best"]
    with Workspace.open(workspace) as ws:
        n_train = len(ws.active_and_forgotten()[0])
    assert study["n_forget"] < n_train  # the workspace's own training samples


def test_forget_prefers_the_workspace_table_and_says_so(tuned, workspace):
    entry = tuned[1]["tuned_defaults"]
    res = run("forget", "--class", "3", "--method", "finetune", "--json", "-w", workspace)
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)["info"]
    assert info["defaults"]["source"] == "workspace"
    assert info["tuned_defaults"]["applied"] == entry["params"]
    res = run("forget", "--class", "4", "--method", "finetune", "-w", workspace)
    assert res.exit_code == 0, res.output
    assert "the workspace's own tuned defaults" in res.stdout
    # A random request has no workspace entry, and the packaged one is for Fashion-MNIST.
    res = run("forget", "--ids", "digits-0001", "--method", "finetune", "--json", "-w", workspace)
    assert json.loads(res.stdout)["info"]["defaults"]["source"] == "code"


def test_the_workspace_table_does_not_apply_to_another_architecture(workspace):
    res = run("train", "--model", "mlp", "--epochs", "2", "-w", workspace)
    assert res.exit_code == 0, res.output
    res = run("forget", "--class", "3", "--method", "finetune", "--json", "-w", workspace)
    assert res.exit_code == 0, res.output
    why = json.loads(res.stdout)["info"]["defaults"]["why"]
    assert "the workspace tuned defaults of finetune for class forgetting were tuned on " in why
    assert "digits with logreg, not on digits with mlp" in why


@pytest.mark.parametrize("target", ["table", "study", "record"])
def test_a_table_that_fails_its_hash_is_refused_with_the_workspace_unchanged(
    tuned, workspace, target
):
    entry = tuned[1]["tuned_defaults"]
    with Workspace.open(workspace) as ws:
        record = json.loads(ws.catalog.meta("tuned_defaults"))
        if target == "record":  # a catalog edited to point at a forged table
            forged = dict(record, sha256="0" * 64)
            with ws.catalog.transaction() as cur:
                cur.execute(
                    "UPDATE meta SET value = ? WHERE key = 'tuned_defaults'", (json.dumps(forged),)
                )
    path = workspace / (record["file"] if target != "study" else entry["study"])
    if target != "record":
        path.write_text(path.read_text().replace('"epochs": 1', '"epochs": 9'))
    before = snapshot(workspace)
    res = run("forget", "--class", "3", "--method", "finetune", "-w", workspace)
    assert res.exit_code == 2, res.output
    assert len(res.stderr.strip().splitlines()) == 1
    assert "unbake tune --workspace" in res.stderr
    assert "sha256" in res.stderr or "keyed digest" in res.stderr
    assert snapshot(workspace) == before
    res = run("forget", "--class", "3", "--method", "finetune", "--no-tuned", "-w", workspace)
    assert res.exit_code == 0, res.output  # the way out: the code's defaults, table unread


def test_workspace_mode_refuses_options_of_the_named_dataset_mode(workspace):
    res = run("tune", "--workspace", workspace, "--method", "finetune", "--dataset", "digits")
    assert res.exit_code == 2 and "--dataset does not go with --workspace" in res.stderr
