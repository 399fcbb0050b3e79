"""Tabular data: CSV/Parquet features standardised on the training split and recorded,
applied on every reload and prediction; a one-class retain set refused."""

import csv
import hashlib
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from unbake.cli import app
from unbake.data import load_dataset
from unbake.data.standardize import Standardizer
from unbake.exceptions import InvalidParameterError
from unbake.service import DeletionService
from unbake.service.apply import forget
from unbake.service.serving import ServedModel
from unbake.workspace import Workspace

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_csv(path, n=200, classes=("a", "b")):
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "size", "weight", "label"])
        for i in range(n):
            label = classes[i % len(classes)]
            w.writerow([f"r{i}", 1000 + 50 * rng.normal() + 80 * (label == "b"),
                        0.01 * rng.normal(), label])  # fmt: skip
    return path


def snapshot(root):
    return {p: hashlib.sha256(p.read_bytes()).digest() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def table(tmp_path):
    return write_csv(tmp_path / "t.csv")


def test_csv_is_standardised_on_the_training_split_and_recorded(table):
    ds = load_dataset("csv", path=str(table), id_column="id")
    raw = load_dataset("csv", path=str(table), id_column="id", standardize=False)
    assert ds.spec["standardize"] == "True" and raw.spec["standardize"] == "False"
    assert "scaler" not in raw.spec
    st = Standardizer.from_json(ds.spec["scaler"])
    train_raw = raw.train.X.astype(np.float64)
    assert np.allclose(st.mean, train_raw.mean(0)) and np.allclose(st.scale, train_raw.std(0))
    full = np.concatenate([raw.train.X, raw.val.X, raw.test.X]).astype(np.float64)
    assert not np.allclose(st.mean, full.mean(0), rtol=0, atol=1e-9)  # train rows only
    assert np.allclose(ds.train.X.mean(0), 0, atol=1e-5)
    assert np.allclose(ds.train.X.std(0), 1, atol=1e-4)
    for split in ("val", "test"):  # the training split's values, not their own
        assert np.array_equal(getattr(ds, split).X, st.apply(getattr(raw, split).X))
    # A reload from the spec applies the recorded values: the same bits.
    spec = {k: v for k, v in ds.spec.items() if k != "name"}
    again = load_dataset("csv", **spec)
    assert np.array_equal(again.train.X, ds.train.X) and again.spec == ds.spec


def test_parquet_is_standardised_too(table, tmp_path):
    pa = pytest.importorskip("pyarrow")  # not in every install: skipped, visibly
    pq = pytest.importorskip("pyarrow.parquet")

    with table.open() as f:
        rows = list(csv.DictReader(f))
    columns = {k: [r[k] if k in ("id", "label") else float(r[k]) for r in rows] for k in rows[0]}
    pq.write_table(pa.table(columns), tmp_path / "t.parquet")
    ds = load_dataset("parquet", path=str(tmp_path / "t.parquet"), id_column="id")
    assert ds.spec["standardize"] == "True"
    assert np.allclose(ds.train.X.mean(0), 0, atol=1e-5)


def test_the_workspace_keeps_its_standardisation_after_deletions_and_at_prediction(table):
    ws_dir = table.parent / "ws"
    res = run("train", "--dataset", "csv", "--path", table, "--id-column", "id",
              "--model", "mlp", "--epochs", "5", "-w", ws_dir)  # fmt: skip
    assert res.exit_code == 0, res.output
    res = run("forget", "--ids", "r1,r2", "-w", ws_dir)
    assert res.exit_code == 0, res.output
    lines = table.read_text().splitlines()
    table.write_text("\n".join(ln for ln in lines if not ln.startswith(("r1,", "r2,"))) + "\n")
    res = run("evaluate", "--json", "-w", ws_dir)  # the recorded scaler: hashes still match
    assert res.exit_code == 0, res.output
    assert (
        "Features: standardised, fitted on the training split" in run("status", "-w", ws_dir).stdout
    )
    with Workspace.open(ws_dir) as ws:
        spec = ws.dataset_spec
        assert spec["standardize"] == "True"
        test = ws.dataset().test
    raw = load_dataset("csv", path=str(table), id_column="id", standardize=False).test
    assert np.array_equal(raw.ids, test.ids)
    with DeletionService(ws_dir) as svc:
        served = ServedModel(svc)
        out = served.predict(raw.X.tolist())  # raw rows, as a client sends them
        model = svc.load_model(out.model_id)
    expected = model.log_proba(torch.from_numpy(test.X))
    assert torch.allclose(torch.as_tensor(out.log_proba), expected, atol=1e-5)


def test_no_standardize_keeps_the_raw_values_and_cannot_change_later(table):
    ws_dir = table.parent / "ws"
    res = run("train", "--dataset", "csv", "--path", table, "--id-column", "id",
              "--no-standardize", "--model", "logreg", "--epochs", "1", "-w", ws_dir)  # fmt: skip
    assert res.exit_code == 0, res.output
    with Workspace.open(ws_dir) as ws:
        assert ws.dataset_spec["standardize"] == "False"
        assert ws.dataset().train.X.max() > 500  # raw units
    res = run("train", "--standardize", "--epochs", "1", "-w", ws_dir)
    assert res.exit_code == 2 and "standardize=False" in res.stderr


def test_a_workspace_recorded_before_standardisation_reloads_raw(table):
    ws_dir = table.parent / "ws"
    ds = load_dataset("csv", path=str(table), id_column="id", standardize=False)
    spec = {k: v for k, v in ds.spec.items() if k != "name"}  # raw, as before
    Workspace.create(ws_dir, dataset="csv", dataset_options=spec).close()
    with Workspace.open(ws_dir) as ws, ws.catalog.transaction() as cur:
        # As an older unbake recorded it: no standardize key.
        old = {k: v for k, v in ws.dataset_spec.items() if k != "standardize"}
        cur.execute("UPDATE meta SET value = ? WHERE key = 'dataset'", (json.dumps(old),))
    with Workspace.open(ws_dir) as ws:
        active, _ = ws.active_and_forgotten()  # the content hashes of the raw rows match
        assert active.X.max() > 500


@pytest.fixture
def binary_ws(tmp_path):
    table = write_csv(tmp_path / "b.csv")
    ws_dir = tmp_path / "ws"
    res = run("train", "--dataset", "csv", "--path", table, "--id-column", "id",
              "--model", "logreg", "--epochs", "1", "-w", ws_dir)  # fmt: skip
    assert res.exit_code == 0, res.output
    return ws_dir


def test_forgetting_a_whole_class_of_a_binary_csv_is_refused_unless_allowed(binary_ws):
    before = snapshot(binary_ws)
    res = run("forget", "--class", "a", "-w", binary_ws)
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: The request leaves the retain set with only class 'b'")
    assert "--allow-one-class" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert snapshot(binary_ws) == before
    with Workspace.open(binary_ws) as ws:
        with pytest.raises(InvalidParameterError, match="allow_one_class=True"):
            forget(ws, label="a")
        assert ws.catalog.requests() == []
    res = run("forget", "--class", "a", "--allow-one-class", "--json", "-w", binary_ws)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_samples"] > 0


def test_the_python_api_takes_allow_one_class(binary_ws):
    with Workspace.open(binary_ws) as ws:
        rec = forget(ws, label="b", allow_one_class=True)
        assert rec.n_samples > 0 and rec.model_after != rec.model_before


def test_a_two_class_retain_set_is_not_refused(binary_ws):
    with Workspace.open(binary_ws) as ws:
        rec = forget(ws, ids=["r0", "r1"], method="finetune", params={"epochs": 1})
        assert rec.n_samples >= 1


def test_the_worker_refuses_a_queued_one_class_request_without_retrying(binary_ws):
    with DeletionService(binary_ws) as svc:
        sub = svc.submit(class_label="a", method="retrain")
        svc.apply_pending()
        summary = svc.request(sub.request_id)
        models = svc.current_model()["model_id"]
    assert summary["state"] == "failed", summary
    assert "only class 'b'" in json.dumps(summary)
    with Workspace.open(binary_ws) as ws:
        assert [r["model_id"] for r in ws.catalog.query("SELECT model_id FROM models")] == [models]
