"""`unbake audit` end to end: verdict recorded on the request, bank reused and purged."""

import json

from tests.integration.test_cli import TRAIN, assert_one_line_error, run, snapshot
from unbake.data import load_dataset


def test_audit_records_reuses_and_is_purged_by_deletions(tmp_path):
    ws = tmp_path / "ws"
    assert run(*TRAIN, "--workspace", ws).exit_code == 0
    finetune = ("--method", "finetune", "--param", "epochs=1")
    res = run(
        "forget", "--ids", "digits-0001,digits-0002,digits-0003", *finetune, "-w", ws, "--json"
    )
    assert res.exit_code == 0, res.output
    request = json.loads(res.stdout)["request_id"]

    before = snapshot(ws)
    assert_one_line_error(run("audit", "--references", 2, "--workspace", ws), "at least 8")
    assert_one_line_error(run("audit", "--request", "req-nope", "--workspace", ws), "req-nope")
    assert snapshot(ws) == before

    res = run("audit", "--references", 8, "--workspace", ws, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["verdict"] in ("distinguishable", "indistinguishable")
    assert len(out["references"]) == 8 and 0 <= out["stats"]["ulira_auc"] <= 1
    logged = json.loads(run("log", "--workspace", ws, "--json").stdout)["requests"][0]
    assert logged["request_id"] == request and logged["audit"]["verdict"] == out["verdict"]
    shown = "flagged" if out["verdict"] == "distinguishable" else "pass"
    assert shown in run("log", "--workspace", ws).stdout
    # the ledger records the audit as a `verified` transition
    chain = json.loads(run("ledger", "verify", "--workspace", ws, "--json").stdout)
    assert chain["entries"] == 5  # received, queued, applying, applied, verified

    # a second audit reuses the stored bank
    again = json.loads(run("audit", "--references", 8, "--workspace", ws, "--json").stdout)
    assert again["references"] == out["references"]
    refs = {f"{r}.safetensors" for r in out["references"]}
    assert refs <= {p.name for p in (ws / "checkpoints").iterdir()}

    # deleting a sample purges every reference that trained on it, and the record names them
    res = run(
        "forget",
        "--ids",
        ",".join(load_dataset("digits").train.ids[10:14]),
        "--method",
        "retrain",
        "--workspace",
        ws,
        "--json",
    )
    assert res.exit_code == 0, res.output
    purged = json.loads(res.stdout)["info"]["purged_references"]
    assert purged and set(purged) <= set(out["references"])
    left = {p.name for p in (ws / "checkpoints").iterdir()}
    assert not {f"{r}.safetensors" for r in purged} & left


def test_audit_defaults_to_the_latest_deletion_that_changed_a_model(tmp_path):
    ws = tmp_path / "ws"
    assert run(*TRAIN, "--workspace", ws).exit_code == 0
    held_out = load_dataset("digits").test.ids[0]
    res = run("forget", "--ids", held_out, "-w", ws, "--json")  # only a test row: no model
    assert res.exit_code == 0 and json.loads(res.stdout)["method"] == "none", res.output
    before = snapshot(ws)
    assert_one_line_error(
        run("audit", "--references", 8, "-w", ws), "changed a model", "held-out rows"
    )
    held_request = json.loads(res.stdout)["request_id"]
    assert_one_line_error(
        run("audit", "--request", held_request, "--references", 8, "-w", ws),
        "changed no model",
    )
    assert snapshot(ws) == before
    finetune = ("--method", "finetune", "--param", "epochs=1")
    res = run("forget", "--ids", "digits-0001", *finetune, "-w", ws, "--json")
    request = json.loads(res.stdout)["request_id"]
    run("forget", "--ids", load_dataset("digits").test.ids[1], "-w", ws)  # the latest: held-out
    res = run("audit", "--references", 8, "-w", ws)
    assert res.exit_code == 0, res.output
    assert f"auditing {request}, the latest deletion that changed a model" in res.stdout
    logged = json.loads(run("log", "-w", ws, "--json").stdout)["requests"]
    assert [r["request_id"] for r in logged if r.get("audit")] == [request]
