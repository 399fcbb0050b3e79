"""The request ledger, keyed subject hashes and signed certificates (issue 9, items 1, 2, 4)."""

import json
import sqlite3
import stat
from datetime import datetime

import pytest

from tests.conftest import UNDO_V5
from unbake import TrainConfig, Workspace
from unbake.exceptions import CertificateError, IntegrityError, InvalidParameterError
from unbake.service import apply
from unbake.testing import tiny_dataset
from unbake.workspace import ledger
from unbake.workspace.catalog import SCHEMA_VERSION
from unbake.workspace.certificates import (
    issue_certificate,
    subject_matches,
    verify_certificate,
    workspace_public_key,
)
from unbake.workspace.model_store import ModelStore

CFG = TrainConfig.parse(epochs=1, batch_size=64)
FAST = {"method": "finetune", "params": {"epochs": 1}}


@pytest.fixture
def ws(workspace_dir):
    w = Workspace.create(workspace_dir, dataset=tiny_dataset())
    apply.train(w, model="logreg", config=CFG, seed=0)
    yield w
    w.close()


def _ids(n, start=0):
    return [str(i) for i in tiny_dataset().train.ids[start : start + n]]


def _states(ws, request_id):
    return [e["state"] for e in ws.catalog.request_entries(request_id)]


def test_forget_records_received_applying_applied_and_chains(ws):
    rec = apply.forget(ws, ids=_ids(3), **FAST)
    assert _states(ws, rec.request_id) == ["received", "queued", "applying", "applied"]
    entries, head = ws.catalog.verify_ledger()
    rows = ws.catalog.ledger_rows()
    assert entries == 4 and head == rows[-1]["hash"]
    assert rows[0]["prev_hash"] == ledger.GENESIS
    assert [r["prev_hash"] for r in rows[1:]] == [r["hash"] for r in rows[:-1]]
    applied = json.loads(rows[-1]["payload"])
    assert applied["model_after"] == rec.model_after and applied["n_samples"] == 3


def _status_and_failed(ws):
    """``unbake status`` but its failed requests, and those (a failure shows there)."""
    status = ws.status()
    return status, status.pop("failed_requests")


def test_a_failure_is_recorded_and_changes_nothing_else(ws, monkeypatch):
    from unbake.methods.gradient import Finetune

    def boom(self, task, **kw):
        raise RuntimeError("disk on fire")

    before = _status_and_failed(ws)
    monkeypatch.setattr(Finetune, "unlearn", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        apply.forget(ws, ids=_ids(2), **FAST, idempotency_key="k")
    after, failed = _status_and_failed(ws)
    assert after == before[0] and ws.log() == []
    (rid,) = {r["request_id"] for r in ws.catalog.ledger_rows()}
    assert _states(ws, rid) == ["received", "queued", "applying", "failed"]
    assert [f["request_id"] for f in failed] == [rid]  # `unbake status` shows it
    assert "disk on fire" in ws.catalog.request_entries(rid)[-1]["payload"]["reason"]
    monkeypatch.undo()
    # A retry with the same key continues the same request.
    rec = apply.forget(ws, ids=_ids(2), **FAST, idempotency_key="k")
    assert rec.request_id == rid
    assert _states(ws, rid) == [
        "received",
        "queued",
        "applying",
        "failed",
        "queued",
        "applying",
        "applied",
    ]
    ws.catalog.verify_ledger()


def test_a_bad_request_leaves_no_trace(ws, workspace_dir):
    before = (workspace_dir / "catalog.sqlite").read_bytes()
    with pytest.raises(InvalidParameterError):
        apply.forget(ws, ids=_ids(2), method="finetune", params={"epochs": -1})
    assert (workspace_dir / "catalog.sqlite").read_bytes() == before


def test_idempotency_key_yields_one_request(ws):
    first = apply.forget(ws, ids=_ids(2), **FAST, idempotency_key="client-42")
    models = ws.status()["models"]
    again = apply.forget(ws, ids=_ids(2), **FAST, idempotency_key="client-42")
    assert again.request_id == first.request_id and again.model_after == first.model_after
    assert repr(again.evaluation) == repr(first.evaluation)  # NaN-safe
    assert ws.status()["models"] == models and len(ws.log()) == 1
    assert len(ws.catalog.ledger_rows()) == 4
    with pytest.raises(InvalidParameterError, match="already used for another request"):
        apply.forget(ws, ids=_ids(2, 5), **FAST, idempotency_key="client-42")
    assert b"client-42" not in ws.catalog.path.read_bytes()  # kept as a keyed hash


def test_deadline_is_one_month_by_default_and_configurable(ws):
    assert ledger.deadline(datetime(2026, 1, 31, 9)) == "2026-02-28T09:00:00.000000"
    assert ledger.deadline(datetime(2026, 12, 5)) == "2027-01-05T00:00:00.000000"
    rec = apply.forget(ws, ids=_ids(1), **FAST)
    received = ws.catalog.request_entries(rec.request_id)[0]
    at = datetime.fromisoformat(received["timestamp"])
    assert received["payload"]["deadline"] == ledger.deadline(at)
    ws.set_deadline_days(3)
    rec = apply.forget(ws, ids=_ids(1, 1), **FAST)
    received = ws.catalog.request_entries(rec.request_id)[0]
    assert received["payload"]["deadline"] == ledger.deadline(
        datetime.fromisoformat(received["timestamp"]), 3
    )
    with pytest.raises(InvalidParameterError, match="whole number of days"):
        ws.set_deadline_days(0)


def test_status_lists_overdue_requests(ws, monkeypatch):
    from unbake.methods.gradient import Finetune

    monkeypatch.setattr(Finetune, "unlearn", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        apply.forget(ws, ids=_ids(2), **FAST)
    monkeypatch.undo()
    done = apply.forget(ws, ids=_ids(2, 3), **FAST)
    assert ws.status()["overdue_requests"] == []
    later = "2099-01-01T00:00:00+00:00"
    (late,) = ws.request_store.overdue(
        now=later
    )  # the failed one is still open; the applied one is done
    assert late["state"] == "failed" and late["request_id"] != done.request_id


def _tamper(path, *statements):
    db = sqlite3.connect(path)
    db.executescript(";".join(statements))
    db.close()


@pytest.mark.parametrize(
    ("statements", "message"),
    [
        (["UPDATE ledger SET payload = '{}' WHERE seq = 2"], r"entry 2 .*was edited"),
        (["UPDATE ledger SET timestamp = '2020' WHERE seq = 4"], r"entry 4 .*was edited"),
        (["DELETE FROM ledger WHERE seq = 3"], r"entry 3 was deleted"),
        (
            [
                "DELETE FROM ledger WHERE seq = 3",
                "UPDATE ledger SET seq = seq - 1 WHERE seq > 3",
            ],
            r"entry 3 is out of place \(it was entry 4\)",
        ),
        (
            [
                "UPDATE ledger SET seq = -2 WHERE seq = 2",
                "UPDATE ledger SET seq = 2 WHERE seq = 3",
                "UPDATE ledger SET seq = 3 WHERE seq = -2",
            ],
            r"entry 2 is out of place \(it was entry 3\)",
        ),
        (["DELETE FROM ledger WHERE seq = 8"], r"end \(after entry 7\).*deleted from the end"),
    ],
    ids=["edited-payload", "edited-time", "deleted", "deleted-renumbered", "swapped", "truncated"],
)
def test_ledger_verify_names_the_first_tampered_entry(ws, workspace_dir, statements, message):
    apply.forget(ws, ids=_ids(2), **FAST)
    apply.forget(ws, ids=_ids(2, 4), **FAST)
    assert ws.catalog.verify_ledger()[0] == 8
    ws.close()
    _tamper(workspace_dir / "catalog.sqlite", *statements)
    with Workspace.open(workspace_dir) as again, pytest.raises(IntegrityError, match=message):
        again.catalog.verify_ledger()


def test_catalog_holds_no_plain_subject_and_subject_lookups_use_the_hash(ws, workspace_dir):
    assert stat.S_IMODE((workspace_dir / "secret.key").stat().st_mode) == 0o600
    apply.forget(ws, subject="subject-05", **FAST)
    data = (workspace_dir / "catalog.sqlite").read_bytes()
    assert b"subject-05" not in data
    assert ws.subject_hmac("subject-05").encode() in data
    with pytest.raises(Exception, match="already forgotten"):
        apply.forget(ws, subject="subject-05", **FAST)
    assert {r["request_id"] for r in ws.samples(forgotten=True, subject="subject-05")} == {
        ws.log()[0]["request_id"]
    }


def test_a_version_3_catalog_is_migrated_and_its_subjects_hidden(ws, workspace_dir):
    rec = apply.forget(ws, subject="subject-02", **FAST)
    ws.close()
    _tamper(
        workspace_dir / "catalog.sqlite",
        *UNDO_V5,
        "DROP TABLE ledger",
        "DROP TABLE request_keys",
        "DELETE FROM meta WHERE key = 'ledger_head'",
        """UPDATE requests SET selector = '{"subject": "subject-02"}'""",
        "UPDATE meta SET value = '3' WHERE key = 'schema_version'",
    )
    (workspace_dir / "secret.key").unlink()
    with Workspace.open(workspace_dir) as again:
        assert again.catalog.meta("schema_version") == str(SCHEMA_VERSION)
        assert again.log()[0]["selector"] == {"subject_hmac": again.subject_hmac("subject-02")}
        # backfilled as it was filed then (before the queue)
        assert _states(again, rec.request_id) == ["received", "applying", "applied"]
        assert again.catalog.verify_ledger()[0] == 3
    assert b"subject-02" not in (workspace_dir / "catalog.sqlite").read_bytes()


def test_certificate_signs_verifies_and_refuses_any_flipped_byte(ws, workspace_dir):
    rec = apply.forget(ws, subject="subject-01", method="retrain")
    head = ws.catalog.verify_ledger()
    data, body = issue_certificate(ws, rec.request_id)
    key = workspace_public_key(ws)
    assert stat.S_IMODE((workspace_dir / "signing.key").stat().st_mode) == 0o600
    assert verify_certificate(data, key) == body
    assert body["guarantee"] == "exact" and body["method"] == "retrain"
    assert body["ledger_head"] == {"seq": head[0], "hash": head[1]}
    assert body["model_after"]["sha256"] == ws.log()[0]["hash_after"]
    assert body["sample_hmacs"] == sorted(
        ws.keyed_hash("sample", s) for s in ws.log()[0]["sample_ids"]
    )
    assert b"subject-01" not in data and not any(s.encode() in data for s in _ids(240))
    assert subject_matches(ws, body, "subject-01") and not subject_matches(ws, body, "subject-02")
    assert _states(ws, rec.request_id)[-1] == "certified"
    ws.catalog.verify_ledger()
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises(CertificateError):
            verify_certificate(bytes(bad), key)
    for i in range(len(key)):
        bad = bytearray(key)
        bad[i] ^= 0x01
        with pytest.raises(CertificateError):
            verify_certificate(data, bytes(bad))


def test_certificate_of_an_unknown_request_is_refused(ws):
    with pytest.raises(Exception, match="No applied deletion request 'req-nope'"):
        issue_certificate(ws, "req-nope")


def test_a_failed_checkpoint_write_is_recorded_too(ws, monkeypatch):
    def full(*a, **k):
        raise OSError(28, "No space left on device")

    before = _status_and_failed(ws)
    monkeypatch.setattr(ModelStore, "write", full)
    with pytest.raises(OSError, match="No space"):
        apply.forget(ws, ids=_ids(2), **FAST)
    after, failed = _status_and_failed(ws)
    assert after == before[0] and ws.log() == []
    (row,) = [r for r in ws.catalog.ledger_rows() if r["state"] == "failed"]
    assert [f["request_id"] for f in failed] == [row["request_id"]]
    assert "No space left" in json.loads(row["payload"])["reason"]
    ws.catalog.verify_ledger()


def test_ledger_and_keyed_hash_formats_are_pinned():
    """Golden values: changing the encoding would break every stored chain and certificate."""
    import hashlib
    import hmac

    from unbake.workspace.keys import keyed_hash

    payload = ledger.canonical_json({"b": 1, "a": "é"})
    assert payload == '{"a":"\\u00e9","b":1}'
    at = "2026-01-01T00:00:00.000000+00:00"
    encoded = f'[1,"req-1","received","{at}","{{\\"a\\":\\"\\\\u00e9\\",\\"b\\":1}}","{"0" * 64}"]'
    expected = "9b411b36fceb6e6dd02061e679f2b56284cf2541755bace285638541408fd7ca"
    assert hashlib.sha256(encoded.encode()).hexdigest() == expected
    assert ledger.entry_hash(1, "req-1", "received", at, payload, ledger.GENESIS) == expected
    secret = bytes(range(32))
    digest = hmac.new(secret, b"subject:alice", hashlib.sha256).hexdigest()
    assert (
        keyed_hash(secret, "subject", "alice")
        == digest
        == ("ac691129d2aa595d824fecce110918f03b42b2e6593003f3966a788980a8a3d9")
    )
