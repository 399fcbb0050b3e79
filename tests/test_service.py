"""The DeletionService: durable submits (group commit), reads, and the worker's batches."""

import threading

import pytest
import torch

from unbake import TrainConfig, Workspace, fit
from unbake.exceptions import (
    EmptyRequestError,
    InvalidParameterError,
    NotFoundError,
    UnknownNameError,
    WorkspaceError,
)
from unbake.service import DeletionService, apply
from unbake.testing.snapshot import workspace_snapshot
from unbake.workspace.certificates import issue_certificate
from unbake.workspace.model_store import ModelStore

CFG = TrainConfig.parse(epochs=1, batch_size=64)


@pytest.fixture
def template(service_template):
    return service_template


@pytest.fixture
def svc(template, tmp_path):
    import shutil

    root = tmp_path / "ws"
    shutil.copytree(template[0], root)
    service = DeletionService(root)
    yield service
    service.close()


@pytest.fixture
def train_ids(template):
    return template[1]


def test_submit_is_durable_and_queued(svc, train_ids):
    sub = svc.submit(sample_ids=train_ids[:3], submitted_by="alice", reason="erasure")
    assert sub.state == "queued" and not sub.duplicate
    with DeletionService(svc.root, read_only=True) as other:  # another process's view
        req = other.request(sub.request_id)
    assert req["state"] == "queued"
    assert [e["state"] for e in req["entries"]] == ["received", "queued"]
    assert req["submitted_by"] == "alice" and req["reason"] == "erasure"
    assert req["selector"] == {"ids": 3} and req["deadline"] > req["received_at"]
    assert svc.queue_depth() == 1 and svc.state_counts() == {"queued": 1}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, EmptyRequestError),
        ({"sample_ids": []}, EmptyRequestError),
        ({"class_label": "eleven"}, InvalidParameterError),
        ({"sample_ids": ["digits-0000"], "subject": "x"}, InvalidParameterError),
        ({"sample_ids": ["digits-0000"], "method": "nope"}, UnknownNameError),
        (
            {"sample_ids": ["digits-0000"], "method": "finetune", "params": {"nope": 1}},
            InvalidParameterError,
        ),
    ],
)
def test_malformed_requests_write_nothing(svc, kwargs, error):
    before = workspace_snapshot(svc.root)
    with pytest.raises(error):
        svc.submit(**kwargs)
    assert workspace_snapshot(svc.root) == before
    assert svc.state_counts() == {}


def test_absent_and_forgotten_samples_are_accepted_then_rejected_by_the_worker(svc, train_ids):
    """Whether the samples exist is the worker's to find, so that submitting tells no one
    who is or was in the data; the reason, on that request only, names no other request
    and says the same for an unknown ID and a forgotten one."""
    first = svc.submit(sample_ids=train_ids[:2], submitted_by="alice")
    svc.apply_pending()
    subs = {
        "unknown": svc.submit(sample_ids=["nope"], submitted_by="mallory"),
        "forgotten": svc.submit(sample_ids=train_ids[:1], submitted_by="mallory"),
        "mixed": svc.submit(sample_ids=[train_ids[5], "nope"], submitted_by="mallory"),
        "nobody": svc.submit(subject="nobody", submitted_by="mallory"),
    }
    assert {s.state for s in subs.values()} == {"queued"}
    assert sorted(svc.apply_pending()) == sorted(s.request_id for s in subs.values())
    reasons = {}
    for what, sub in subs.items():
        req = svc.request(sub.request_id)
        assert req["state"] == "rejected", what
        reasons[what] = req["entries"][-1]["payload"]["reason"]
        assert "\n" not in reasons[what] and reasons[what].endswith(".")
        assert first.request_id not in reasons[what] and "req-" not in reasons[what]
        assert "alice" not in reasons[what] and "nope" not in reasons[what]
    assert reasons["unknown"] == reasons["forgotten"]  # the same words for both
    assert "1 of the 2 sample IDs" in reasons["mixed"]
    assert svc.workspace.catalog.sample_status()[train_ids[5]] == "active"  # all or nothing
    assert "subject" in reasons["nobody"]
    svc.workspace.catalog.verify_ledger()


def test_idempotency_key_dedupes(svc, train_ids):
    first = svc.submit(sample_ids=train_ids[:2], idempotency_key="k1")
    again = svc.submit(sample_ids=train_ids[:2], idempotency_key="k1")
    assert again == type(first)(first.request_id, "queued", True)
    with pytest.raises(InvalidParameterError, match="already used for another request"):
        svc.submit(sample_ids=train_ids[2:4], idempotency_key="k1")
    assert svc.queue_depth() == 1


def test_concurrent_submits_are_all_durable_and_the_ledger_verifies(svc, train_ids):
    results, errors = [], []

    def client(k):
        try:
            for j in range(25):
                sid = train_ids[(k * 25 + j) % len(train_ids)]
                results.append(svc.submit(sample_ids=[sid], idempotency_key=f"c{k}-{j}"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({r.request_id for r in results}) == 200
    assert svc.queue_depth() == 200
    entries, _ = svc.workspace.catalog.verify_ledger()
    assert entries == 400


def test_reads_and_not_found(svc):
    model = svc.current_model()
    assert set(model) == {"model_id", "sha256", "architecture", "strategy", "n_train", "created_at"}
    assert svc.load_model(model["model_id"]).n_classes == 10
    for call in (lambda: svc.request("req-nope"), lambda: svc.load_model("model-nope")):
        with pytest.raises(NotFoundError):
            call()
    with pytest.raises(KeyError):  # NotFoundError is a KeyError too
        svc.request("req-nope")
    assert svc.requests() == []


def test_worker_applies_a_batch_once_and_certifies(svc, train_ids):
    a = svc.submit(sample_ids=train_ids[:3], submitted_by="alice")
    b = svc.submit(sample_ids=train_ids[3:5], submitted_by="bob", reason="objection")
    before = svc.current_model()["model_id"]
    assert svc.apply_pending() == [a.request_id, b.request_id]
    assert svc.apply_pending() == []  # nothing twice
    ra, rb = svc.request(a.request_id), svc.request(b.request_id)
    assert ra["state"] == rb["state"] == "applied"
    assert ra["model_before"] == before and ra["model_after"] == rb["model_after"]  # one run
    assert [r["request_id"] for r in svc.requests(submitted_by="bob")] == [b.request_id]
    assert [r["request_id"] for r in svc.requests(state="applied")] == [b.request_id, a.request_id]
    log = {r["request_id"]: r for r in svc.workspace.log()}
    assert log[a.request_id]["n_samples"] == 3 and log[b.request_id]["n_samples"] == 2
    assert log[a.request_id]["seed"] == 0 and log[a.request_id]["device"] == "cpu"
    assert log[a.request_id]["unbake_version"] and log[b.request_id]["submitted_by"] == "bob"
    assert log[a.request_id]["reason"] == "erasure" and log[b.request_id]["reason"] == "objection"
    assert log[a.request_id]["info"]["batch"] == [a.request_id, b.request_id]
    assert svc.certificate(a.request_id) is None
    issue_certificate(svc.workspace, a.request_id)
    cert = svc.certificate(a.request_id)
    assert cert["certificate"]["request_id"] == a.request_id
    assert svc.workspace.catalog.verify_ledger()[0] == 2 + 2 + 2 + 2 + 1
    assert svc.queue_depth() == 0


def test_forgotten_samples_are_never_trained_on_by_the_worker(svc, train_ids):
    """Two batches of retrain requests: the final model is the retrain on what is left."""
    svc.submit(sample_ids=train_ids[:4], method="retrain")
    svc.apply_pending()
    svc.submit(sample_ids=train_ids[4:9], method="retrain")
    svc.submit(sample_ids=train_ids[9:10], method="retrain")
    svc.apply_pending(max_batch=1)
    svc.apply_pending(max_batch=1)
    active, forgotten = svc.workspace.active_and_forgotten()
    assert set(map(str, forgotten.ids)) == set(train_ids[:10])
    scratch = fit(active, n_classes=10, model="logreg", config=CFG, seed=0)
    final = svc.load_model(svc.current_model()["model_id"])
    for k, v in scratch.module.state_dict().items():
        assert torch.equal(v, final.module.state_dict()[k]), k


def test_stale_and_failing_requests_are_rejected_or_failed(svc, train_ids):
    first = svc.submit(sample_ids=train_ids[:2])
    stale = svc.submit(sample_ids=train_ids[:2])  # valid when filed; forgotten by `first`
    svc.apply_pending(max_batch=1)
    svc.apply_pending()
    rej = svc.request(stale.request_id)
    assert svc.request(first.request_id)["state"] == "applied"
    assert rej["state"] == "rejected" and "forgotten" in rej["entries"][-1]["payload"]["reason"]
    everything = svc.submit(sample_ids=train_ids[2:])
    assert svc.apply_pending() == [everything.request_id]
    failed = svc.request(everything.request_id)
    assert failed["state"] == "failed"
    assert "every remaining training sample" in failed["entries"][-1]["payload"]["reason"]
    svc.workspace.catalog.verify_ledger()


def test_forget_through_the_service_is_all_or_nothing(svc, train_ids):
    rec = svc.forget(ids=train_ids[:3], method="retrain", idempotency_key="x")
    assert rec.n_samples == 3 and rec.changed_model and rec.evaluation is not None
    again = svc.forget(ids=train_ids[:3], method="retrain", idempotency_key="x")
    assert again.request_id == rec.request_id and again.model_after == rec.model_after
    states = [e["state"] for e in svc.request(rec.request_id)["entries"]]
    assert states == ["received", "queued", "applying", "applied"]
    before = workspace_snapshot(svc.root)
    with pytest.raises(InvalidParameterError, match="every remaining training sample"):
        svc.forget(ids=train_ids[3:], method="retrain")
    assert workspace_snapshot(svc.root) == before


def test_read_only_service_reads_but_refuses_submits(svc, train_ids):
    svc.submit(sample_ids=train_ids[:1])
    with DeletionService(svc.root, read_only=True) as ro:
        assert ro.queue_depth() == 1
        with pytest.raises(WorkspaceError, match="read-only"):
            ro.submit(sample_ids=train_ids[1:2])


def test_a_batch_against_a_sisa_model_retrains_each_shard_once(tmp_path):
    root = tmp_path / "sisa"
    with Workspace.create(root, dataset="digits") as ws:
        apply.train(
            ws,
            model="logreg",
            config=CFG,
            strategy="sisa",
            strategy_params={"shards": 4, "slices": 2},
        )
        train = [r["sample_id"] for r in ws.samples() if r["split"] == "train"]
    with DeletionService(root) as svc:
        before = svc.current_model()["model_id"]
        subs = [svc.submit(sample_ids=train[k * 5 : k * 5 + 5]) for k in range(3)]
        assert svc.apply_pending() == [s.request_id for s in subs]
        log = svc.workspace.log()
        models = svc.workspace.catalog.models()
    assert {r["method"] for r in log} == {"sisa"}  # the default for a SISA model
    assert {r["model_after"] for r in log} == {models[-1]["model_id"]}
    assert [m["model_id"] for m in models] == [before, models[-1]["model_id"]]  # one run
    info = log[0]["info"]
    assert info["batch"] == [s.request_id for s in subs]
    shards = info["shards_retrained"]
    assert shards == sorted(set(shards)) and len(shards) <= 4


def test_recovery_requeues_a_request_left_applying_and_sweeps_its_checkpoint(
    svc, train_ids, monkeypatch
):
    sub = svc.submit(sample_ids=train_ids[:2])
    write = ModelStore.write

    def dies_after_writing(self, *args, **kwargs):
        write(self, *args, **kwargs)
        raise KeyboardInterrupt  # the worker dies between the checkpoint and the commit

    monkeypatch.setattr(ModelStore, "write", dies_after_writing)
    with pytest.raises(KeyboardInterrupt):
        svc.apply_pending()
    monkeypatch.undo()
    assert svc.request(sub.request_id)["state"] == "applying"
    assert len(list((svc.root / "checkpoints").iterdir())) == 2  # the orphan
    assert svc.apply_pending() == [sub.request_id]
    states = [e["state"] for e in svc.request(sub.request_id)["entries"]]
    assert states == ["received", "queued", "applying", "queued", "applying", "applied"]
    (model,) = [m for m in svc.workspace.catalog.models() if m["status"] == "active"]
    assert [p.name for p in (svc.root / "checkpoints").iterdir()] == [
        model["checkpoint"].split("/")[-1]
    ]
    assert svc.workspace.catalog.verify_ledger()[0] == 6


def test_the_worker_loop_applies_a_short_batch_once_its_window_passes(svc, train_ids):
    import time

    from unbake.service.deletion import drain

    stop = threading.Event()
    loop = threading.Thread(
        target=drain, args=(svc,), kwargs={"batch": 10, "window": 1.0, "once": False, "stop": stop}
    )
    loop.start()
    try:
        subs = [svc.submit(sample_ids=[i]) for i in train_ids[:2]]
        deadline = time.monotonic() + 60
        while svc.state_counts().get("applied", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        loop.join(timeout=60)
    assert svc.state_counts() == {"applied": 2}  # 2 < batch: the window let them go
    models = {svc.request(s.request_id)["model_after"] for s in subs}
    assert len(models) == 1


def test_a_version_4_catalog_is_migrated_forward_and_can_queue(svc, train_ids):
    import sqlite3

    from tests.conftest import UNDO_V5
    from unbake.workspace.catalog import SCHEMA_VERSION

    rec = svc.forget(ids=train_ids[:1], method="retrain")
    root = svc.root
    svc.close()
    db = sqlite3.connect(root / "catalog.sqlite")
    db.executescript(";".join(UNDO_V5))
    db.close()
    with DeletionService(root) as again:
        assert again.workspace.catalog.meta("schema_version") == str(SCHEMA_VERSION)
        (old,) = again.workspace.log()
        assert old["request_id"] == rec.request_id and old["seed"] is None  # not recorded then
        sub = again.submit(sample_ids=train_ids[1:2])
        assert again.apply_pending() == [sub.request_id]
        again.workspace.catalog.verify_ledger()


def test_the_workspace_never_imports_a_layer_above_it():
    # Storage below, orchestration above: training and deletion are the service's.
    from tests.test_families import SRC, _imports

    higher = ("unbake.service", "unbake.bench", "unbake.report", "unbake.testing", "unbake.cli")
    upward = {
        (str(path.relative_to(SRC)), name)
        for path in sorted((SRC / "workspace").rglob("*.py"))
        for name in _imports(path)
        if name.startswith(higher)
    }
    assert upward == set()


def test_a_service_over_an_open_workspace_leaves_it_open(template, tmp_path, train_ids):
    import shutil

    root = tmp_path / "ws"
    shutil.copytree(template[0], root)
    ws = Workspace.open(root)
    with DeletionService(ws) as svc:
        rec = svc.forget(ids=train_ids[:2], method="retrain")
    assert ws.catalog.sample_status()[train_ids[0]] == "forgotten"  # still open: it reads
    assert ws.log()[-1]["request_id"] == rec.request_id
    ws.close()
