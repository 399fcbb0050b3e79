"""`unbake ledger verify` and `unbake certificate …` end to end: the bad-input contract holds."""

import json
import sqlite3

from tests.integration.test_cli import TRAIN, assert_one_line_error, run, snapshot

FINETUNE = ("--method", "finetune", "--param", "epochs=1")


def test_ledger_certificates_and_idempotency_from_the_cli(tmp_path):
    ws = tmp_path / "ws"
    assert run(*TRAIN, "--workspace", ws).exit_code == 0
    forget = ("forget", "--ids", "digits-0001,digits-0002", *FINETUNE, "-w", ws, "--json")
    first = run(*forget, "--idempotency-key", "abc")
    assert first.exit_code == 0, first.output
    request = json.loads(first.stdout)["request_id"]
    again = run(*forget, "--idempotency-key", "abc")
    assert json.loads(again.stdout)["request_id"] == request
    assert len(json.loads(run("log", "-w", ws, "--json").stdout)["requests"]) == 1

    res = run("ledger", "verify", "-w", ws, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["entries"] == 4

    cert, key = tmp_path / "cert.json", tmp_path / "key.pem"
    before = snapshot(ws)
    assert_one_line_error(
        run("certificate", "issue", "--request", "req-nope", "-w", ws), "req-nope"
    )
    assert snapshot(ws) == before
    res = run("certificate", "issue", "--request", request, "--out", cert, "-w", ws)
    assert res.exit_code == 0, res.output
    assert run("certificate", "public-key", "--out", key, "-w", ws).exit_code == 0
    res = run("certificate", "verify", cert, "--public-key", key, "--json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)["certificate"]
    assert body["request_id"] == request and body["guarantee"] == "none"
    assert len(body["sample_hmacs"]) + len(body["held_out_hmacs"]) == 2
    assert "digits-0001" not in cert.read_text()

    for target in (cert, key):
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        bad = tmp_path / f"bad-{target.name}"
        bad.write_bytes(bytes(data))
        args = (bad, "--public-key", key) if target is cert else (cert, "--public-key", bad)
        assert_one_line_error(run("certificate", "verify", *args))
    assert_one_line_error(run("certificate", "verify", tmp_path / "nope.json", "--public-key", key))

    db = sqlite3.connect(ws / "catalog.sqlite")
    db.execute("UPDATE ledger SET payload = '{}' WHERE seq = 2")
    db.commit()
    db.close()
    assert_one_line_error(run("ledger", "verify", "-w", ws), "entry 2", "was edited")


def test_check_subject_against_a_certificate(tmp_path):
    ws = tmp_path / "ws"
    data = tmp_path / "d.csv"
    data.write_text("uid,who,f0,y\n" + "".join(f"r{i},p{i % 20},{i},{i % 2}\n" for i in range(200)))
    train = ("train", "--dataset", "csv", "--path", data, "--label", "y")
    res = run(
        *train,
        "--id-column",
        "uid",
        "--subject-column",
        "who",
        "--model",
        "logreg",
        "--epochs",
        "1",
        "-w",
        ws,
    )
    assert res.exit_code == 0, res.output
    res = run("forget", "--subject", "p1", *FINETUNE, "-w", ws, "--json")
    assert res.exit_code == 0, res.output
    request = json.loads(res.stdout)["request_id"]
    cert = tmp_path / "c.json"
    assert run("certificate", "issue", "--request", request, "--out", cert, "-w", ws).exit_code == 0
    assert "p1" not in json.loads(cert.read_text())["certificate"].values()
    assert run("certificate", "check-subject", cert, "--subject", "p1", "-w", ws).exit_code == 0
    res = run("certificate", "check-subject", cert, "--subject", "p2", "-w", ws)
    assert res.exit_code == 1 and "does not name" in res.stdout


def test_status_shows_overdue_requests(tmp_path, monkeypatch):
    from unbake.methods.gradient import Finetune
    from unbake.workspace.request_store import RequestStore

    ws = tmp_path / "ws"
    assert run(*TRAIN, "--workspace", ws).exit_code == 0
    assert "OVERDUE" not in run("status", "-w", ws).stdout
    monkeypatch.setattr(
        RequestStore, "deadline_for", lambda self, at, days=None: "2000-01-01T00:00:00+00:00"
    )
    monkeypatch.setattr(Finetune, "unlearn", lambda *a, **k: 1 / 0)
    res = run("forget", "--ids", "digits-0001", *FINETUNE, "-w", ws)
    assert res.exit_code == 1 and "ZeroDivisionError" in res.stderr
    shown = run("status", "-w", ws)
    assert shown.exit_code == 0 and "OVERDUE: request req-" in shown.stdout
    assert "(failed)" in shown.stdout


def test_ledger_show_lists_transitions(tmp_path):
    ws = tmp_path / "ws"
    assert run(*TRAIN, "--workspace", ws).exit_code == 0
    res = run("forget", "--ids", "digits-0001", *FINETUNE, "-w", ws, "--json")
    request = json.loads(res.stdout)["request_id"]
    shown = json.loads(run("ledger", "show", "--request", request, "-w", ws, "--json").stdout)
    assert [e["state"] for e in shown["entries"]] == ["received", "queued", "applying", "applied"]
    assert "deadline" in shown["entries"][0]["payload"]
    assert "applied" in run("ledger", "show", "-w", ws).stdout
    before = snapshot(ws)
    assert_one_line_error(run("ledger", "show", "--request", "req-x", "-w", ws), "req-x")
    assert snapshot(ws) == before
