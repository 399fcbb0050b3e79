"""Reopening a workspace over data defined in Python, checked to be the same data."""

import hashlib

import numpy as np
import pytest
from typer.testing import CliRunner

from unbake import TrainConfig
from unbake.cli import app
from unbake.data import Dataset, Samples
from unbake.exceptions import DatasetError, WorkspaceError
from unbake.service.apply import evaluate_model, forget, train
from unbake.workspace import Workspace

runner = CliRunner()


def make_dataset(shift_row: int | None = None, drop: str | None = None) -> Dataset:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    if shift_row is not None:
        X[shift_row, 1] += 1.0
    ids = [f"row-{i}" for i in range(120)]
    keep = np.array([i != drop for i in ids])
    full = Samples.build(X[keep], y[keep], [i for i in ids if i != drop])
    train_mask = np.array([int(i.split("-")[1]) < 90 for i in full.ids])
    return Dataset(
        "mine", full.subset(train_mask), full.subset(~train_mask), 2, classes=("no", "yes")
    )


def snapshot(root):
    return {p: hashlib.sha256(p.read_bytes()).digest() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path / "ws"
    with Workspace.create(root, dataset=make_dataset()) as ws:
        train(ws, model="mlp", config=TrainConfig.parse(epochs=20))
    return root


def test_reopen_with_the_same_data_works_and_without_it_says_how(workspace):
    with Workspace.open(workspace) as ws, pytest.raises(WorkspaceError) as err:
        ws.dataset()
    assert "Workspace.open(" in str(err.value) and "dataset=<the same Dataset>" in str(err.value)
    assert "content hashes" in str(err.value)
    res = runner.invoke(app, ["evaluate", "-w", str(workspace)])
    assert res.exit_code == 2 and "Workspace.open(" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    with Workspace.open(workspace, dataset=make_dataset()) as ws:
        rec = forget(ws, ids=["row-3"], method="finetune", params={"epochs": 1})
        assert rec.n_samples == 1
        assert evaluate_model(ws)["ra"] > 50.0
    # A forgotten row may be gone from the source; the rest must stay as recorded.
    with Workspace.open(workspace, dataset=make_dataset(drop="row-3")) as ws:
        assert len(ws.active_and_forgotten()[0]) == 89


@pytest.mark.parametrize(
    ("changed", "named"),
    [
        (make_dataset(shift_row=7), "sample 'row-7' (train) changed"),
        (make_dataset(drop="row-5"), "sample 'row-5', never forgotten, is missing"),
    ],
)
def test_a_changed_dataset_is_refused_in_one_line_naming_the_first_changed_sample(
    workspace, changed, named
):
    before = snapshot(workspace)
    with pytest.raises(DatasetError) as err:
        Workspace.open(workspace, dataset=changed)
    message = str(err.value)
    assert named in message and "\n" not in message
    assert "pass the same dataset, or create a new workspace" in message
    assert snapshot(workspace) == before


def test_other_classes_or_an_unknown_sample_are_refused(workspace):
    ds = make_dataset()
    other = Dataset("mine", ds.train, ds.test, 2, classes=("a", "b"))
    with pytest.raises(DatasetError, match="its classes"):
        Workspace.open(workspace, dataset=other)
    test = Samples.build(
        np.concatenate([ds.test.X, np.zeros((1, 4), np.float32)]),
        np.concatenate([ds.test.y, np.zeros(1, np.int64)]),
        [*map(str, ds.test.ids), "row-new"],
    )
    bigger = Dataset("mine", ds.train, test, 2, classes=ds.classes)
    with pytest.raises(DatasetError, match="sample 'row-new' \\(test\\) was never recorded"):
        Workspace.open(workspace, dataset=bigger)
