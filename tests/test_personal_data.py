"""Personal data of a request (its reason, its sample IDs) can be erased: crypto-shredding.

The flagship test drives the service the way an operator does (a digits workspace, a
logistic regression, a request through ``submit`` and one through the synchronous
``forget``, the worker applies and certifies), then greps every byte of every file of
the workspace for the reason and the forgotten IDs.
"""

import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
from typer.testing import CliRunner

from unbake import TrainConfig, Workspace
from unbake.cli import app
from unbake.exceptions import InvalidParameterError, UnknownSampleError, WorkspaceError
from unbake.service import DeletionService, apply
from unbake.service.deletion import drain
from unbake.testing.snapshot import workspace_snapshot
from unbake.workspace import ledger
from unbake.workspace.certificates import (
    issue_certificate,
    read_certificate,
    stored_certificate,
    verify_certificate,
    workspace_public_key,
)
from unbake.workspace.sample_store import SampleStore

REASON = "GDPR art. 17 request from someone@example.org"
SYNC_REASON = "Erase me too, jane.doe@example.com"


@pytest.fixture
def flow(tmp_path):
    """A fresh digits workspace with a logreg (one epoch), one request filed through
    ``submit`` (training and held-out IDs) and one through ``forget``, both certified by
    the worker; yields (service, the forgotten IDs, the two request IDs)."""
    root = tmp_path / "ws"
    Workspace.create(root, dataset="digits", dataset_options={"test_fraction": 0.05}).close()
    svc = DeletionService(root)
    svc.train(model="logreg", config=TrainConfig.parse(epochs=1, batch_size=64), seed=0)
    rows = svc.workspace.samples()
    train = [r["sample_id"] for r in rows if r["split"] == "train"]
    held = [r["sample_id"] for r in rows if r["split"] != "train"]
    queued = svc.submit(sample_ids=[*train[:3], held[0]], reason=REASON, submitted_by="alice")
    assert drain(svc, once=True, certify=True) == 1
    record = svc.forget(ids=train[10:12], reason=SYNC_REASON)
    svc.certify_pending()
    ids = [*train[:3], held[0], *train[10:12]]
    yield svc, ids, (queued.request_id, record.request_id)
    svc.close()


def _workspace_bytes(root) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _found(root, needles: list[bytes]) -> list[str]:
    return [
        f"{needle!r} in {path}"
        for path, data in _workspace_bytes(root).items()
        for needle in needles
        if needle in data
    ]


def test_no_reason_nor_forgotten_id_is_left_in_any_byte_after_shredding(flow):
    svc, ids, request_ids = flow
    ws, root = svc.workspace, svc.workspace.root
    reasons = [REASON.encode(), b"someone@example.org", SYNC_REASON.encode(), b"jane.doe"]
    # The reason never reaches a file in the clear (sealed from the start, hashed in the
    # ledger); with the default retention (0 days) its key went at certification.
    assert _found(root, reasons) == []
    assert [svc.request(r)["erased"]["reason"] for r in request_ids] == [True, True]
    # The IDs are kept (sealed) for the proof window: the request still lists them.
    logged = {r["request_id"]: r for r in ws.log()}
    assert logged[request_ids[1]]["sample_ids"] == ids[4:]
    keys = [row["key"] for row in ws.catalog.query("SELECT key FROM request_secrets")]
    assert len(keys) == 2  # the two requests' sample-ID keys

    ws.set_retention(id_days=0)
    done = svc.shred_due()
    assert sorted(d["request_id"] for d in done["shredded"]) == sorted(request_ids)
    assert done["wal_truncated"]

    files = _workspace_bytes(root)
    assert any(p.endswith("catalog.sqlite-wal") for p in files)  # the server still has it open
    assert any("/certificates/" in p for p in files) and any("/checkpoints/" in p for p in files)
    assert _found(root, [*reasons, *(i.encode() for i in ids), *map(bytes, keys)]) == []
    # ... while the chain verifies, each request reads as erased, never an error ...
    assert ws.catalog.verify_ledger()[0] == len(ws.ledger())
    for rid in request_ids:
        req = svc.request(rid)
        assert req["state"] == "certified" and req["reason"] is None
        assert req["erased"] == {"reason": True, "sample_ids": True}
    for r in ws.log():
        assert r["sample_ids"] is None and r["reason"] is None and r["erased"]["sample_ids"]
    assert [r["request_id"] for r in svc.requests(submitted_by="alice")] == [request_ids[0]]
    # ... and the certificates, which name the samples by keyed hash, still verify.
    for rid in request_ids:
        body = verify_certificate(stored_certificate(root, rid), workspace_public_key(ws))
        assert set(body["sample_hmacs"] + body["held_out_hmacs"]) <= {
            ws.keyed_hash("sample", i) for i in ids
        }
    # A certificate issued again names the same samples, from the hashed tombstones.
    again = read_certificate(issue_certificate(ws, request_ids[0])[0])
    first = json.loads(files[next(p for p in files if p.endswith(f"{request_ids[0]}.json"))])
    assert again["sample_hmacs"] == first["certificate"]["sample_hmacs"] != []
    assert again["held_out_hmacs"] == first["certificate"]["held_out_hmacs"] != []
    # The ledger can still confirm a claimed reason (by its keyed hash), not reveal it.
    received = ws.ledger(request_id=request_ids[0])[0]["payload"]
    assert received["reason_hmac"] == ws.keyed_hash("reason", REASON)
    assert REASON not in json.dumps(ws.ledger())


def test_a_forgotten_id_stays_refused_after_shredding(flow):
    svc, ids, _ = flow
    ws = svc.workspace
    ws.set_retention(id_days=0)
    svc.shred_due()
    assert not {r["sample_id"] for r in ws.samples()} & set(ids)
    tombstones = {r["sample_id"] for r in ws.samples(forgotten=True)}
    assert tombstones == {ws.sample_store.tombstone(i) for i in ids}
    assert _refused(svc, [ids[0]]) and _refused(svc, [ids[3]])
    with pytest.raises(UnknownSampleError, match="already forgotten"):
        svc.forget(ids=[ids[4]])
    # The source still holds the forgotten rows: they are matched to their hashed
    # tombstones, so they are neither "unknown" nor trained on, nor scored as held out.
    active, forgotten = ws.active_and_forgotten()
    assert set(map(str, forgotten.ids)) == {ids[0], ids[1], ids[2], ids[4], ids[5]}
    val, test = ws.held_out()
    assert ids[3] not in {*map(str, val.ids), *map(str, test.ids)}
    model = svc.train(model="logreg", config=TrainConfig.parse(epochs=1), seed=1)
    assert ws.catalog.model(model)["n_train"] == len(active)


def _refused(svc, ids) -> bool:
    """Whether a request for ``ids`` is refused: at the door, or (where the door answers
    every request alike) by the worker, which rejects it."""
    try:
        sub = svc.submit(sample_ids=ids, reason="again")
    except UnknownSampleError as exc:
        return "already forgotten" in str(exc)
    drain(svc, once=True, certify=True)
    return svc.request(sub.request_id)["state"] == "rejected"


def test_a_request_queued_before_its_ids_were_forgotten_and_shredded_is_rejected(flow):
    svc, _, _ = flow
    ws = svc.workspace
    target = next(r["sample_id"] for r in ws.samples() if r["split"] == "train")
    late = svc.submit(sample_ids=[target], reason=REASON)
    svc.forget(ids=[target])  # forgotten meanwhile, then certified and shredded
    ws.set_retention(id_days=0)
    svc.certify_pending()
    assert ws.sample_store.tombstone(target) in {r["sample_id"] for r in ws.samples(forgotten=True)}
    drain(svc, once=True, certify=True)
    entries = svc.request(late.request_id)["entries"]
    assert entries[-1]["state"] == "rejected"  # as forgotten after it arrived, not unknown
    assert "forgotten since it was received" in entries[-1]["payload"]["reason"]
    assert target not in entries[-1]["payload"]["reason"]


def test_ids_are_kept_for_the_proof_window_then_shredded(flow):
    svc, ids, (queued, _) = flow
    ws = svc.workspace
    assert ws.retention() == {"reason": 0, "sample_ids": 30}
    certified = min(e["timestamp"] for e in ws.ledger() if e["state"] == "certified")
    at = datetime.fromisoformat(certified)
    assert svc.shred_due((at + timedelta(days=29)).isoformat())["shredded"] == []
    assert {r["request_id"]: r for r in ws.log()}[queued]["sample_ids"] == ids[:3]
    done = svc.shred_due((at + timedelta(days=31)).isoformat())
    assert {d["field"] for d in done["shredded"]} == {"sample_ids"}
    assert svc.request(queued)["erased"]["sample_ids"]


def test_retention_is_validated_and_shown_by_the_cli(flow):
    svc, _, _ = flow
    root = svc.workspace.root
    before = workspace_snapshot(root)
    with pytest.raises(InvalidParameterError, match="whole number of days"):
        svc.workspace.set_retention(id_days=-1)
    assert workspace_snapshot(root) == before
    runner = CliRunner()
    out = runner.invoke(app, ["ledger", "retention", "--id-days", "0", "-w", str(root), "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)["retention_days"]["sample_ids"] == 0
    out = runner.invoke(app, ["ledger", "shred", "-w", str(root), "--json"])
    assert out.exit_code == 0 and len(json.loads(out.stdout)["shredded"]) == 2
    bad = runner.invoke(app, ["ledger", "retention", "--reason-days", "-3", "-w", str(root)])
    assert bad.exit_code == 2 and "whole number of days" in bad.output


def test_an_audit_after_the_ids_are_erased_says_why(flow):
    from unbake.service.audit import audit_request

    svc, _, (queued, _) = flow
    svc.workspace.set_retention(id_days=0)
    svc.shred_due()
    with pytest.raises(WorkspaceError, match="were erased"):
        audit_request(svc.workspace, request_id=queued)


_KILLED_SHRED = """
import os, sys
from unbake.workspace import Workspace
from unbake.workspace.catalog import Catalog
Catalog.checkpoint = lambda self: os._exit(9)  # killed after the commit, before the WAL fold
with Workspace.open(sys.argv[1]) as ws:
    ws.shred_due()
"""


def test_a_shred_killed_at_any_step_leaves_a_consistent_workspace(flow, monkeypatch):
    svc, ids, request_ids = flow
    ws, root = svc.workspace, svc.workspace.root
    ws.set_retention(id_days=0)
    keys = [bytes(r["key"]) for r in ws.catalog.query("SELECT key FROM request_secrets")]
    # A failure inside the transaction (a crash before its commit) changes nothing.
    before = workspace_snapshot(root)
    monkeypatch.setattr(SampleStore, "tombstone", lambda self, sid: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        ws.shred_due()
    monkeypatch.undo()
    assert workspace_snapshot(root) == before
    assert {r["request_id"]: r for r in ws.log()}[request_ids[1]]["sample_ids"] == ids[4:]
    # Killed after the commit: the shred is done; its WAL is folded in by the next call.
    svc.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run([sys.executable, "-c", _KILLED_SHRED, str(root)], env=env)
    assert killed.returncode == 9
    assert _found(root, keys)  # the catalog file still holds the keys' old pages
    with Workspace.open(root) as again:
        assert again.catalog.verify_ledger()
        assert all(r["erased"]["sample_ids"] for r in again.log())
        assert again.shred_due()["shredded"] == [] and again.catalog.checkpoint()
        assert _found(root, [*(i.encode() for i in ids), *keys]) == []
        with pytest.raises(UnknownSampleError, match="already forgotten"):
            apply.forget(again, ids=[ids[0]])


def test_an_old_catalog_is_sealed_on_open_and_its_chain_kept(tmp_path, service_template):
    """A v8 catalog stored reasons and IDs in the clear: on open its request and queue
    rows are sealed; its ledger entries keep theirs (rewriting them would break the chain)."""
    import shutil

    from tests.conftest import UNDO_V9

    root = tmp_path / "ws"
    shutil.copytree(service_template[0], root)
    sid = service_template[1][0]
    db = sqlite3.connect(root / "catalog.sqlite", isolation_level=None)
    db.executescript(";".join(UNDO_V9))
    now = datetime.now().astimezone().isoformat()
    db.execute("BEGIN")
    received = {"selector": {"ids": 1}, "deadline": now, "reason": REASON}
    ledger.append_entry(db.cursor(), "req-old", "received", received, now)
    ledger.append_entry(db.cursor(), "req-old", "queued", {}, now)
    db.execute(
        "INSERT INTO queue(request_id, received_at, selector, sample_ids, params, reason) "
        "VALUES ('req-old', ?, '{\"ids\": 1}', ?, '{}', ?)",
        (now, json.dumps([sid]), REASON),
    )
    db.execute("COMMIT")
    db.close()
    with DeletionService(root) as svc:
        ws = svc.workspace
        (row,) = ws.catalog.query("SELECT reason, sample_ids FROM queue")
        assert REASON not in row["reason"] and sid not in row["sample_ids"]
        assert svc.request("req-old")["reason"] == REASON  # read from its old ledger entry
        assert drain(svc, once=True, certify=True) == 1
        assert ws.catalog.verify_ledger()
        ws.set_retention(id_days=0)
        svc.shred_due()
        assert [r["sample_ids"] for r in ws.log()] == [None]
        # The honest limit: the old received entry still holds the reason in the chain.
        assert [p.rsplit("/", 1)[-1] for p in _found(root, [REASON.encode()])] == ["catalog.sqlite"]
        assert _found(root, [sid.encode()]) == []


def test_the_rest_api_shows_an_erased_request_and_its_ledger_without_the_reason(flow):
    from fastapi.testclient import TestClient

    from unbake.service.api import create_app
    from unbake.workspace.tokens import create_token

    svc, _, (queued, _) = flow
    svc.workspace.set_retention(id_days=0)
    svc.shred_due()
    token, _ = create_token(svc.workspace, "operator")
    with TestClient(create_app(svc)) as client:
        headers = {"Authorization": f"Bearer {token}"}
        req = client.get(f"/v1/requests/{queued}", headers=headers)
        assert req.status_code == 200
        assert req.json()["reason"] is None
        assert req.json()["erased"] == {"reason": True, "sample_ids": True}
        page = client.get("/v1/ledger", headers=headers)
        assert page.status_code == 200 and "example.org" not in page.text


def test_a_subject_request_leaves_neither_the_subject_nor_its_ids(tmp_path):
    from unbake.testing import tiny_dataset

    root = tmp_path / "ws"
    with Workspace.create(root, dataset=tiny_dataset()) as ws:
        apply.train(ws, model="logreg", config=TrainConfig.parse(epochs=1), seed=0)
        ids = [r["sample_id"] for r in ws.samples(subject="subject-03")]
        record = apply.forget(ws, subject="subject-03", reason=REASON)
        issue_certificate(ws, record.request_id)
        ws.set_retention(id_days=0)
        assert len(ws.shred_due()["shredded"]) == 2  # the reason's key and the IDs' key
        needles = [b"subject-03", REASON.encode(), *(i.encode() for i in ids)]
        assert len(ids) == 20 and _found(root, needles) == []
        assert ws.catalog.verify_ledger()
        with pytest.raises(UnknownSampleError):
            apply.forget(ws, subject="subject-03")
        with pytest.raises(UnknownSampleError, match="already forgotten"):
            apply.forget(ws, ids=ids[:1])


def test_an_idle_worker_shreds_what_falls_due(flow, monkeypatch):
    import threading
    import time

    import unbake.service.worker as worker

    svc, _, (queued, _) = flow
    assert not svc.request(queued)["erased"]["sample_ids"]
    svc.workspace.set_retention(id_days=0)  # due now, with no request left to apply
    monkeypatch.setattr(worker, "SHRED_EVERY", 0.0)
    stop = threading.Event()
    worker = threading.Thread(
        target=drain,
        args=(svc,),
        kwargs={"once": False, "certify": True, "stop": stop, "poll": 0.01},
    )
    worker.start()
    try:
        deadline = time.monotonic() + 120  # a bound on waiting, not a speed claim
        while not svc.request(queued)["erased"]["sample_ids"] and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join()
    assert svc.request(queued)["erased"]["sample_ids"]


def test_a_request_that_failed_for_good_is_shredded_too(flow, monkeypatch):
    from unbake.methods.retrain import Retrain

    svc, _, _ = flow
    ws = svc.workspace
    target = next(r["sample_id"] for r in ws.samples() if r["split"] == "train")

    def boom(self, task, **kw):
        raise RuntimeError("disk on fire")

    import unbake.service.worker as worker
    from unbake.service.policy import Retry

    monkeypatch.setattr(Retrain, "unlearn", boom)
    monkeypatch.setattr(worker, "_retry_of", lambda policy: Retry(max_attempts=1))
    sub = svc.submit(sample_ids=[target], reason=REASON, method="retrain")
    drain(svc, once=True, certify=True)
    assert svc.request(sub.request_id)["state"] == "failed"
    assert ws.catalog.secrets(sub.request_id)  # the reason's key went, the IDs' is kept
    ws.set_retention(id_days=0)
    done = svc.shred_due()
    assert {(d["request_id"], d["field"]) for d in done["shredded"]} >= {
        (sub.request_id, "sample_ids")
    }
    assert not ws.catalog.secrets(sub.request_id)
