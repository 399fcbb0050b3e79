import json
import sqlite3
import threading

import numpy as np
import pytest
import torch

from unbake import TrainConfig, Workspace, fit
from unbake.evaluation import accuracy
from unbake.exceptions import (
    DatasetError,
    EmptyRequestError,
    IntegrityError,
    InvalidParameterError,
    UnknownSampleError,
    WorkspaceError,
)
from unbake.service import apply
from unbake.service.apply import evaluate_model
from unbake.testing import tiny_dataset
from unbake.testing.snapshot import workspace_snapshot
from unbake.workspace import decode_checkpoint, encode_checkpoint
from unbake.workspace.catalog import SCHEMA_VERSION
from unbake.workspace.request_store import RequestStore

CFG = TrainConfig.parse(epochs=2, batch_size=32)


def snapshot(root):
    return workspace_snapshot(root)


@pytest.fixture
def ws(workspace_dir):
    w = Workspace.create(workspace_dir, dataset=tiny_dataset())
    apply.train(w, model="mlp", config=CFG, seed=0)
    yield w
    w.close()


def test_catalog_records_samples_and_schema(ws):
    assert ws.catalog.meta("schema_version") == str(SCHEMA_VERSION)
    st = ws.status()
    assert st["samples"] == {"active": 240, "forgotten": 0}
    assert st["subjects"] == 12
    assert len(st["models"]) == 1 and st["models"][0]["status"] == "active"


def test_forget_by_subject_records_everything_and_purges(ws, workspace_dir):
    old = ws.status()["models"][0]
    rec = apply.forget(ws, subject="subject-03", method="retrain")
    assert rec.n_samples == 20
    st = ws.status()
    assert st["samples"] == {"active": 220, "forgotten": 20}
    models = {m["model_id"]: m for m in st["models"]}
    assert models[old["model_id"]]["status"] == "purged"
    assert not (workspace_dir / old["checkpoint"]).exists()
    assert models[rec.model_after]["parent_id"] == old["model_id"]
    (req,) = ws.log()
    assert req["status"] == "applied" and req["method"] == "retrain" and req["exact"] == 1
    assert req["hash_before"] == old["sha256"]
    assert req["hash_after"] == models[rec.model_after]["sha256"]
    assert req["selector"] == {"subject_hmac": ws.subject_hmac("subject-03")}
    assert len(req["sample_ids"]) == 20
    assert set(req["metrics"]) >= {"fa", "ra", "ta", "mia"}
    rows = ws.catalog.query(
        "SELECT subject, content_hash, request_id FROM samples WHERE status='forgotten'"
    )
    assert all(r["subject"] is None and r["content_hash"] is None for r in rows)
    assert {r["request_id"] for r in rows} == {rec.request_id}
    # The subject is named only by its keyed hash: its ID is nowhere in the catalog's bytes.
    assert b"subject-03" not in (workspace_dir / "catalog.sqlite").read_bytes()
    assert b"subject-04" in (workspace_dir / "catalog.sqlite").read_bytes()  # active: kept


def test_exact_forget_equals_training_from_scratch(ws):
    ids = [str(i) for i in tiny_dataset().train.ids[5:25]]
    rec = apply.forget(ws, ids=ids, method="retrain")
    _, retain = tiny_dataset().train.split(ids)
    scratch = fit(retain, n_classes=10, model="mlp", config=CFG, seed=0)
    loaded = ws.load_model(rec.model_after)
    for k, v in scratch.module.state_dict().items():
        assert torch.equal(v, loaded.module.state_dict()[k]), k


def test_forget_by_class(ws):
    rec = apply.forget(ws, label=3, method="finetune", params={"epochs": 1})
    assert rec.n_samples == int((tiny_dataset().train.y == 3).sum())
    with pytest.raises(UnknownSampleError):
        apply.forget(ws, subject="nobody")


@pytest.mark.parametrize(
    "request_kwargs,error",
    [
        ({}, EmptyRequestError),
        ({"ids": ["missing"]}, UnknownSampleError),
        ({"subject": "nobody"}, UnknownSampleError),
    ],
)
def test_bad_requests_leave_workspace_unchanged(ws, workspace_dir, request_kwargs, error):
    before = snapshot(workspace_dir)
    with pytest.raises(error):
        apply.forget(ws, method="retrain", **request_kwargs)
    assert snapshot(workspace_dir) == before


def test_tampered_checkpoint_is_refused(ws, workspace_dir):
    (row,) = ws.status()["models"]
    path = workspace_dir / row["checkpoint"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    before = snapshot(workspace_dir)
    with pytest.raises(IntegrityError, match="does not match the sha256"):
        apply.forget(ws, ids=[str(tiny_dataset().train.ids[0])], method="retrain")
    assert snapshot(workspace_dir) == before


def test_missing_checkpoint_is_refused(ws, workspace_dir):
    (row,) = ws.status()["models"]
    (workspace_dir / row["checkpoint"]).unlink()
    with pytest.raises(IntegrityError, match="missing"):
        ws.load_model()


def test_concurrent_writer_waits_its_turn(ws):
    """A second writer queues behind the lock instead of failing, from another thread."""
    done = []
    writer = threading.Thread(
        target=lambda: done.append(apply.forget(ws, ids=[str(tiny_dataset().train.ids[0])]))
    )
    with ws.lock():
        writer.start()
        writer.join(timeout=1.0)
        assert writer.is_alive() and not done  # waiting for the lock
        assert ws.status()["samples"]["forgotten"] == 0  # a reader does not wait
    writer.join(timeout=60)
    assert len(done) == 1 and ws.status()["samples"]["forgotten"] == 1


def test_failed_commit_leaves_no_file(ws, workspace_dir, monkeypatch):
    before = snapshot(workspace_dir)

    def boom(*a, **k):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(ws, "_commit_forget", boom)
    with pytest.raises(sqlite3.OperationalError):
        apply.forget(ws, ids=[str(tiny_dataset().train.ids[0])], method="retrain")
    assert snapshot(workspace_dir) == before


def test_reopen_sweeps_stray_files(ws, workspace_dir):
    ws.close()
    stray = workspace_dir / "checkpoints" / ".x.safetensors.unbake-tmp"
    stray.write_bytes(b"partial")
    orphan = workspace_dir / "checkpoints" / "model-orphan.safetensors"
    orphan.write_bytes(b"orphan")
    reopened = Workspace.open(workspace_dir)
    try:
        assert not stray.exists() and not orphan.exists()
        assert reopened.load_model() is not None
    finally:
        reopened.close()


def test_create_twice_and_open_missing(workspace_dir, ws):
    with pytest.raises(WorkspaceError, match="already holds a workspace"):
        Workspace.create(workspace_dir, dataset="digits")
    with pytest.raises(WorkspaceError, match="No workspace at"):
        Workspace.open(workspace_dir / "nope")


def test_checkpoint_roundtrip_and_metadata(ws):
    model = ws.load_model()
    data = encode_checkpoint(model, model_id="m1", parent_id=None)
    again, meta = decode_checkpoint(data, expected_sha256=None)
    assert meta["format"] == "unbake-checkpoint/1" and meta["model_id"] == "m1"
    assert json.loads(meta["spec"])["name"] == "mlp"
    for k, v in model.module.state_dict().items():
        assert torch.equal(v, again.module.state_dict()[k])


def test_golden_checkpoint_header():
    """Pin the on-disk format: safetensors header with our metadata keys."""
    ds = tiny_dataset()
    tm = fit(ds.train, n_classes=10, model="logreg", config=TrainConfig.parse(epochs=0), seed=0)
    data = encode_checkpoint(tm, model_id="golden", parent_id="p")
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    assert sorted(header["__metadata__"]) == sorted(
        [
            "format",
            "model_id",
            "parent_id",
            "spec",
            "config",
            "seed",
            "input_shape",
            "n_classes",
            "strategy",
            "strategy_params",
            "meta",
        ]
    )
    assert header["module.linear.weight"] == {
        "dtype": "F32",
        "shape": [10, 64],
        "data_offsets": header["module.linear.weight"]["data_offsets"],
    }
    assert header["module.linear.bias"]["shape"] == [10]
    assert np.frombuffer(data[8 + size :], dtype=np.float32).size == 10 * 64 + 10


def test_not_a_checkpoint_is_refused():
    with pytest.raises(IntegrityError, match="not a readable safetensors"):
        decode_checkpoint(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx", expected_sha256=None)


def test_atomic_write_replaces_whole_file_with_default_mode(tmp_path):
    import os

    from unbake.workspace.atomic import atomic_write_bytes

    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


# --- data identity: splits, the source losing forgotten rows, labels by name -----------


def _people_csv(path, drop_subjects=(), extra_rows=0):
    """120 rows, 30 subjects with 4 rows each, string labels A/B/C; ID column uid."""
    lines = ["uid,person,f1,f2,target"]
    for i in range(120 + extra_rows):
        person = f"p{i % 30}"
        if person not in drop_subjects:
            label = "ABC"[i % 3]
            lines.append(f"u{i},{person},{(i % 7) / 7},{(i % 3) + 0.1 * (i % 5)},{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


CSV_OPTIONS = {"label": "target", "id_column": "uid", "subject_column": "person"}


@pytest.fixture
def csv_ws(tmp_path, workspace_dir):
    source = _people_csv(tmp_path / "people.csv")
    w = Workspace.create(
        workspace_dir, dataset="csv", dataset_options={"path": str(source), **CSV_OPTIONS}
    )
    apply.train(w, model="logreg", config=CFG, seed=0)
    yield w, source
    w.close()


def _train_subject(ws):
    return next(r["subject"] for r in ws.samples() if r["split"] == "train")


def test_catalog_records_every_split_and_the_split_options(csv_ws):
    ws, _ = csv_ws
    rows = ws.catalog.query("SELECT split, COUNT(*) AS n FROM samples GROUP BY split")
    counts = {r["split"]: r["n"] for r in rows}
    assert sum(counts.values()) == 120 and set(counts) == {"train", "val", "test"}
    st = ws.status()
    assert st["splits"] == counts and st["samples"]["active"] == counts["train"]
    assert {k: st["dataset"][k] for k in ("test_fraction", "val_fraction", "split_seed")} == {
        "test_fraction": "0.2",
        "val_fraction": "0.1",
        "split_seed": "0",
    }
    listed = ws.samples()
    assert len(listed) == 120 and {r["label"] for r in listed} == {"A", "B", "C"}
    by_subject = {}
    for r in listed:
        by_subject.setdefault(r["subject"], set()).add(r["split"])
    assert all(len(v) == 1 for v in by_subject.values())


def test_forgotten_subject_may_be_deleted_from_the_source(csv_ws, tmp_path):
    """GDPR: after forgetting S, deleting S's raw rows leaves the workspace working."""
    ws, source = csv_ws
    person = _train_subject(ws)
    rec = apply.forget(ws, subject=person, method="retrain")
    assert rec.n_samples == 4
    splits_before = {r["sample_id"]: r["split"] for r in ws.samples()}
    _people_csv(source, drop_subjects={person})
    ws.close()
    again = Workspace.open(ws.root)  # a fresh process would reload the source like this
    try:
        assert {r["sample_id"]: r["split"] for r in again.samples()} == splits_before
        ev = evaluate_model(again)
        assert 0 <= ev.ta <= 100 and 0 <= ev.ra <= 100
        forgotten = again.samples(forgotten=True, subject=person)
        assert len(forgotten) == 4 and all(r["label"] is None for r in forgotten)
        other = next(r["subject"] for r in again.samples() if r["split"] == "train")
        assert apply.forget(again, subject=other, method="retrain").n_samples == 4
        apply.train(again, model="logreg", config=CFG, seed=1)
        assert again.status()["samples"]["forgotten"] == 8
    finally:
        again.close()


def test_source_losing_active_rows_or_gaining_rows_is_an_error(csv_ws, workspace_dir):
    ws, source = csv_ws
    person = _train_subject(ws)
    _people_csv(source, drop_subjects={person})
    ws.close()
    before = snapshot(workspace_dir)
    with Workspace.open(workspace_dir) as again:
        with pytest.raises(DatasetError, match=r"4 samples that were never forgotten are missing"):
            evaluate_model(again)
        _people_csv(source, extra_rows=3)
        again._dataset = None
        with pytest.raises(DatasetError, match=r"3 samples the catalog does not know.*u120"):
            apply.forget(again, subject=person, method="retrain")
    assert snapshot(workspace_dir) == before


def test_forget_a_class_by_name_or_index(csv_ws):
    ws, _ = csv_ws
    n_b = sum(1 for r in ws.samples() if r["split"] == "train" and r["label"] == "B")
    held_b = sum(1 for r in ws.samples() if r["split"] != "train" and r["label"] == "B")
    rec = apply.forget(ws, label="B", method="retrain")
    assert (rec.n_samples, rec.n_held_out) == (n_b, held_b)  # held-out B rows leave the metrics
    assert all(ws.dataset().label_names(s.y).count("B") == 0 for s in ws.held_out())
    (req,) = ws.log()
    assert req["selector"] == {"class": "B"}
    with pytest.raises(InvalidParameterError, match=r"Class 'Z' does not exist.*'A', 'B', 'C'"):
        apply.forget(ws, label="Z", method="retrain")
    n_c = sum(1 for r in ws.samples() if r["split"] == "train" and r["label"] == "C")
    assert apply.forget(ws, label=2, method="retrain").n_samples == n_c  # an int is an index


def _subject_in(ws, split):
    """A subject whose rows all lie in ``split`` (the split as the API reports it)."""
    sides = {}
    for r in ws.samples():
        sides.setdefault(r["subject"], set()).add(r["split"])
    return next(s for s, v in sorted(sides.items()) if v == {split})


def _expected_ta(ws, without):
    """Test accuracy of the newest model on the source's test rows minus ``without``."""
    test = ws.dataset().test
    return accuracy(ws.load_model(), test.subset(~test.mask_of(without)))


def test_held_out_subject_is_erased_without_touching_a_model(csv_ws):
    """A subject whose rows are all in test: recorded, no new model, nothing purged."""
    ws, source = csv_ws
    person = _subject_in(ws, "test")
    ids = [r["sample_id"] for r in ws.samples(subject=person)]
    models = ws.status()["models"]
    rec = apply.forget(ws, subject=person, method="retrain")
    assert (rec.n_samples, rec.n_held_out, rec.method) == (0, 4, "none")
    assert not rec.changed_model and rec.evaluation is None
    assert ws.status()["models"] == models  # still active, nothing new
    (req,) = ws.log()
    assert req["selector"] == {"subject_hmac": ws.subject_hmac(person)}
    assert req["method"] == "none"
    assert req["exact"] == 1 and req["hash_before"] == req["hash_after"] == models[0]["sha256"]
    assert req["info"] == {"held_out": 4, "held_out_splits": {"val": 0, "test": 4}}
    gone = ws.samples(forgotten=True, subject=person)
    assert sorted(r["sample_id"] for r in gone) == sorted(ids)
    assert {(r["split"], r["subject"], r["request_id"]) for r in gone} == {
        ("test", None, rec.request_id)
    }
    hashes = ws.catalog.query(
        "SELECT content_hash FROM samples WHERE request_id = ?", (rec.request_id,)
    )
    assert [r["content_hash"] for r in hashes] == [None] * 4
    assert ws.status()["splits"]["test"] == len(ws.dataset().test) - 4
    assert evaluate_model(ws).ta == pytest.approx(_expected_ta(ws, ids))
    with pytest.raises(UnknownSampleError, match="already forgotten"):
        apply.forget(ws, subject=person, method="retrain")
    _people_csv(source, drop_subjects={person})  # the source loses the rows, silently
    ws.close()
    with Workspace.open(ws.root) as again:
        assert len(again.dataset().test) == len(again.held_out()[1])
        assert evaluate_model(again).ta == pytest.approx(_expected_ta(again, ids))
        other = _subject_in(again, "train")
        assert apply.forget(again, subject=other, method="retrain").n_samples == 4
        apply.train(again, model="logreg", config=CFG, seed=1)
        assert again.status()["samples"]["forgotten"] == 8


def test_train_and_test_ids_in_one_request_and_one_transaction(csv_ws, monkeypatch):
    ws, _ = csv_ws
    rows = ws.samples()
    train_ids = [r["sample_id"] for r in rows if r["split"] == "train"][:2]
    test_ids = [r["sample_id"] for r in rows if r["split"] == "test"][:2]
    before = snapshot(ws.root)
    with pytest.raises(InvalidParameterError):
        apply.forget(ws, ids=train_ids + test_ids, method="finetune", params={"epochs": -1})
    assert snapshot(ws.root) == before
    record = RequestStore.record_applied

    def fail_after_marking(self, cur, *args, **kwargs):
        record(self, cur, *args, **kwargs)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(RequestStore, "record_applied", fail_after_marking)
    with pytest.raises(WorkspaceError, match="disk I/O error"):  # the catalog's typed error
        apply.forget(ws, ids=train_ids + test_ids, method="retrain")
    assert snapshot(ws.root) == before
    monkeypatch.undo()
    (old,) = ws.status()["models"]
    rec = apply.forget(ws, ids=train_ids + test_ids, method="retrain")
    assert (rec.n_samples, rec.n_held_out, rec.changed_model) == (2, 2, True)
    assert [m["status"] for m in ws.status()["models"]] == ["purged", "active"]
    (req,) = ws.log()
    assert req["sample_ids"] == train_ids and req["model_before"] == old["model_id"]
    assert req["info"]["held_out_splits"] == {"val": 0, "test": 2}
    gone = {r["sample_id"]: r["request_id"] for r in ws.samples(forgotten=True)}
    assert gone == dict.fromkeys(train_ids + test_ids, rec.request_id)
    assert rec.evaluation.ta == pytest.approx(_expected_ta(ws, test_ids))
    active, _ = ws.active_and_forgotten()
    assert not active.mask_of(train_ids).any()


@pytest.mark.slow
@pytest.mark.skipif(
    not __import__("pathlib").Path("/usr/share/datasets/fashion-mnist").exists(),
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)",
)
def test_fashion_mnist_class_by_name(workspace_dir):
    with Workspace.create(
        workspace_dir, dataset="fashion-mnist", dataset_options={"limit": 600}
    ) as ws:
        assert ws.status()["splits"]["test"] == 100  # the official test set (limited)
        apply.train(ws, model="logreg", config=TrainConfig.parse(epochs=1), seed=0)
        active, _ = ws.active_and_forgotten()
        rec = apply.forget(ws, label="Sandal", method="finetune", params={"epochs": 1})
        assert rec.n_samples == int((active.y == 5).sum()) > 0
        assert ws.log()[0]["selector"] == {"class": "Sandal"}


def test_deleting_a_whole_class_from_the_source_renumbers_nothing(tmp_path, workspace_dir):
    """The workspace records its class names, so a class may vanish from the source."""
    from unbake.data import assign_splits

    people = [f"p{i}" for i in range(30)]
    sides = assign_splits(people, people, test_fraction=0.2, val_fraction=0.1, seed=0)
    owner = next(p for p, side in zip(people, sides, strict=True) if side == "train")
    source = tmp_path / "people.csv"

    def write(keep_owner: bool) -> None:
        lines = ["uid,person,f1,f2,target"]
        for i in range(120):
            person = f"p{i % 30}"
            label = "Z" if person == owner else "ABC"[i % 3]
            if keep_owner or person != owner:
                lines.append(f"u{i},{person},{(i % 7) / 7},{i % 3},{label}")
        source.write_text("\n".join(lines) + "\n")

    write(keep_owner=True)
    options = {"path": str(source), **CSV_OPTIONS}
    with Workspace.create(workspace_dir, dataset="csv", dataset_options=options) as ws:
        assert ws.dataset().classes == ("A", "B", "C", "Z")
        assert json.loads(ws.dataset_spec["classes"]) == ["A", "B", "C", "Z"]
        apply.train(ws, model="logreg", config=CFG, seed=0)
        assert apply.forget(ws, subject=owner, method="retrain").n_samples == 4
    write(keep_owner=False)  # class Z is gone from the source entirely
    with Workspace.open(workspace_dir) as ws:
        assert ws.dataset().classes == ("A", "B", "C", "Z")
        assert 0 <= evaluate_model(ws).ta <= 100
        apply.train(ws, model="logreg", config=CFG, seed=1)
        with pytest.raises(EmptyRequestError):
            apply.forget(ws, label="Z", method="retrain")  # nothing of class Z is left to forget
