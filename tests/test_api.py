"""The REST API (`unbake serve`): requests, auth and roles, bad input, metrics, the spec."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from unbake import TrainConfig, Workspace
from unbake.service import DeletionService, apply
from unbake.service.api import MAX_BODY_BYTES, create_app, openapi_text
from unbake.testing.snapshot import workspace_snapshot
from unbake.workspace.certificates import issue_certificate
from unbake.workspace.tokens import (
    ROLES,
    authenticate,
    create_token,
    list_tokens,
    revoke_token,
)

SPEC = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A trained digits workspace and a token of each role (two submitters)."""
    root = tmp_path_factory.mktemp("api") / "ws"
    with Workspace.create(root, dataset="digits") as ws:
        apply.train(ws, model="logreg", config=TrainConfig.parse(epochs=1, batch_size=64), seed=0)
        train = [r["sample_id"] for r in ws.samples() if r["split"] == "train"]
        tokens = {role: create_token(ws, role)[0] for role in ROLES}
        tokens["other"] = create_token(ws, "submitter", name="another client")[0]
    return root, train, tokens


@pytest.fixture
def env(template, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(template[0], root)
    svc = DeletionService(root)
    with TestClient(create_app(svc)) as client:
        yield client, svc, template[1], template[2]
    svc.close()


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def test_tokens_are_stored_only_as_keyed_hashes(template):
    root, _, tokens = template
    catalog = (root / "catalog.sqlite").read_bytes()
    for token in tokens.values():
        assert token.encode() not in catalog
        assert token.split("_", 2)[2].encode() not in catalog
    with Workspace.open(root, read_only=True) as ws:
        assert authenticate(ws, tokens["auditor"]).role == "auditor"
        assert authenticate(ws, tokens["auditor"][:-1] + "x") is None
        assert {t["role"] for t in list_tokens(ws)} == set(ROLES)
        assert all("token" not in t and "token_hash" not in t for t in list_tokens(ws))


def test_submit_is_durable_and_readable(env):
    client, svc, train, tokens = env
    r = client.post(
        "/v1/requests", json={"sample_ids": train[:3]}, headers=auth(tokens["submitter"])
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["state"] == "queued" and body["duplicate"] is False
    with DeletionService(svc.root, read_only=True) as other:  # durable: another reader sees it
        assert other.request(body["request_id"])["state"] == "queued"
    got = client.get(f"/v1/requests/{body['request_id']}", headers=auth(tokens["submitter"]))
    assert got.status_code == 200
    assert [e["state"] for e in got.json()["entries"]] == ["received", "queued"]
    assert got.json()["submitted_by"].startswith("token:")
    for role in ("auditor", "operator"):  # they read every request
        assert client.get(
            f"/v1/requests/{body['request_id']}", headers=auth(tokens[role])
        ).is_success
    # Another submitter's request answers as a missing one does (see test_api_enumeration).
    other = client.get(f"/v1/requests/{body['request_id']}", headers=auth(tokens["other"]))
    assert other.status_code == 404 and other.json()["error"]["type"] == "NotFoundError"
    mine = client.get("/v1/requests", headers=auth(tokens["other"])).json()
    assert mine == []  # a submitter lists only its own
    listed = client.get("/v1/requests", headers=auth(tokens["auditor"])).json()
    assert [x["request_id"] for x in listed] == [body["request_id"]]


def test_idempotency_key_gives_one_request(env):
    client, svc, train, tokens = env
    req = {"sample_ids": train[:2], "idempotency_key": "k-1"}
    first = client.post("/v1/requests", json=req, headers=auth(tokens["submitter"])).json()
    again = client.post("/v1/requests", json=req, headers=auth(tokens["submitter"])).json()
    assert again == {**first, "duplicate": True}
    assert svc.state_counts() == {"queued": 1}
    # The key is scoped to the token: another client's same key is its own request.
    theirs = client.post("/v1/requests", json=req, headers=auth(tokens["other"])).json()
    assert theirs["request_id"] != first["request_id"]


def test_subject_and_class_requests(env):
    client, svc, _, tokens = env
    r = client.post("/v1/requests", json={"class": 3}, headers=auth(tokens["operator"]))
    assert r.status_code == 202
    assert svc.request(r.json()["request_id"])["selector"] == {"class": "3"}


# --- auth -----------------------------------------------------------------------------

#: (method, path, body, the roles allowed); "{id}" is a request filed by "submitter".
ENDPOINTS = [
    ("post", "/v1/requests", "IDS", {"submitter", "operator"}),  # a training ID per role
    ("get", "/v1/requests", None, {"submitter", "operator", "auditor"}),
    ("get", "/v1/requests/{id}", None, {"submitter", "operator", "auditor"}),
    ("get", "/v1/requests/{id}/certificate", None, {"submitter", "operator", "auditor"}),
    ("get", "/v1/ledger", None, {"operator", "auditor"}),
    ("get", "/v1/ledger/verify", None, {"operator", "auditor"}),
    ("get", "/v1/public-key", None, {"submitter", "operator", "auditor"}),
    ("post", "/v1/predict", {"inputs": [[0.0] * 64]}, {"operator", "auditor"}),
    ("get", "/v1/models/current", None, {"submitter", "operator", "auditor"}),
    ("get", "/metrics", None, {"operator", "auditor"}),
]


@pytest.mark.parametrize(("method", "path", "body", "allowed"), ENDPOINTS)
def test_auth_and_roles(env, method, path, body, allowed):
    client, svc, train, tokens = env
    rid = svc.submit(sample_ids=train[:1], submitted_by=_name(svc, tokens["submitter"]))
    path = path.replace("{id}", rid.request_id)

    def call(headers, i=0):
        payload = {"sample_ids": [train[1 + i]]} if body == "IDS" else body
        return client.request(method.upper(), path, json=payload, headers=headers)

    for headers in ({}, auth("ubk_nope_nope"), {"Authorization": "Basic dXNlcjpwYXNz"}):
        r = call(headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer" and "token" in r.json()["error"]["message"]
    for i, role in enumerate(ROLES):
        r = call(auth(tokens[role]), i)
        if role in allowed:
            # The certificate of a queued request: 404 (not certified yet), not an auth error.
            assert r.status_code in (200, 202, 404), (role, r.text)
        else:
            assert r.status_code == 403, (role, r.text)
            assert role in r.json()["error"]["message"]
    assert client.get("/healthz").json()["status"] == "ok"  # the one open endpoint


def _name(svc, token):
    return authenticate(svc.workspace, token).name


# --- bad input writes nothing ---------------------------------------------------------

BAD = [
    ("malformed JSON", b'{"sample_ids": [', 400, "not valid JSON"),
    ("an empty request", {}, 422, "selects no samples"),
    ("an empty ID list", {"sample_ids": []}, 422, "sample_ids"),
    ("two selectors", {"sample_ids": ["x"], "class": 1}, 422, "exactly one"),
    ("an unknown field", {"samples": ["x"]}, 422, "samples"),
    ("an unknown class", {"class": "giraffe"}, 422, "giraffe"),
    ("a JSON array", [1, 2], 422, "body"),
    ("an oversized body", {"subject": "x" * (MAX_BODY_BYTES + 1)}, 413, "bytes"),
]


@pytest.mark.parametrize(("what", "body", "status", "names"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_4xx_and_writes_nothing(env, what, body, status, names):
    client, svc, _, tokens = env
    before = workspace_snapshot(svc.root)
    ledger = svc.workspace.catalog.ledger_rows()
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    headers = {**auth(tokens["operator"]), "Content-Type": "application/json"}
    r = client.post("/v1/requests", headers=headers, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert names in error["message"], error
    assert set(error) == {"type", "message"}
    assert workspace_snapshot(svc.root) == before
    assert svc.workspace.catalog.ledger_rows() == ledger


def test_unknown_request_and_route_are_404_json(env):
    client, _, _, tokens = env
    r = client.get("/v1/requests/req-nope", headers=auth(tokens["auditor"]))
    assert r.status_code == 404 and "req-nope" in r.json()["error"]["message"]
    assert client.get("/v2/nothing").json()["error"]["type"] == "HTTPError"


def test_predict_refuses_wrong_width(env):
    client, _, _, tokens = env
    r = client.post("/v1/predict", json={"inputs": [[0.0] * 3]}, headers=auth(tokens["operator"]))
    assert r.status_code == 422 and "64 numbers" in r.json()["error"]["message"]


# --- the life of a request, certificate, metrics --------------------------------------


def test_applied_request_changes_the_served_model_and_certificate_verifies(env):
    from unbake.workspace.certificates import verify_certificate

    client, svc, train, tokens = env
    op = auth(tokens["operator"])
    before = client.post("/v1/predict", json={"inputs": [[0.0] * 64]}, headers=op).json()
    assert before["model_id"] == client.get("/v1/models/current", headers=op).json()["model_id"]
    rid = client.post("/v1/requests", json={"sample_ids": train[:2]}, headers=op).json()[
        "request_id"
    ]
    assert client.get(f"/v1/requests/{rid}/certificate", headers=op).status_code == 404
    with DeletionService(svc.root) as worker:  # the worker: another instance, as in its process
        assert worker.apply_pending() == [rid]
        issue_certificate(worker.workspace, rid)
    after = client.post(
        "/v1/predict", json={"inputs": [[0.0] * 64], "probabilities": True}, headers=op
    ).json()
    assert after["model_id"] != before["model_id"]
    assert after["model_id"] == client.get("/v1/models/current", headers=op).json()["model_id"]
    assert abs(sum(after["probabilities"][0]) - 1) < 1e-5
    cert = client.get(f"/v1/requests/{rid}/certificate", headers=auth(tokens["auditor"]))
    assert cert.status_code == 200
    public = client.get("/v1/public-key", headers=auth(tokens["auditor"]))
    key = public.text.encode()
    assert public.headers["unbake-key-fingerprint"] == hashlib.sha256(key).hexdigest()
    body = verify_certificate(cert.content, key)  # the exact file: verifies offline
    # Strict JSON (2 samples: no MIA-LR score, which is null, never a bare NaN).
    strict = json.loads(cert.content, parse_constant=lambda name: pytest.fail(name))
    assert strict["certificate"]["verification"]["metrics"]["mia_lr"] is None
    assert body["request_id"] == rid
    state = client.get(f"/v1/requests/{rid}", headers=op).json()
    assert state["state"] == "certified" and state["model_after"] == after["model_id"]
    text = client.get("/metrics", headers=op).text
    assert "unbake_queue_depth 0" in text
    assert 'unbake_requests{state="certified"} 1' in text
    assert "unbake_apply_latency_seconds_count 1" in text
    assert "unbake_model_swaps_total 2" in text


# --- the committed OpenAPI schema -----------------------------------------------------


def test_committed_openapi_spec_is_current():
    assert SPEC.read_text() == openapi_text(), (
        "docs/openapi.json is stale; regenerate it with `unbake serve --openapi docs/openapi.json`."
    )


def test_spec_names_every_error_body():
    spec = json.loads(openapi_text())
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if path != "/healthz":
                assert {"401", "403"} <= set(op["responses"]), (method, path)
                assert op["security"] == [{"HTTPBearer": []}]


def _downgrade(template, tmp_path, undo):
    import sqlite3

    root = tmp_path / "old"
    shutil.copytree(template[0], root)
    conn = sqlite3.connect(root / "catalog.sqlite")
    conn.executescript(";".join(undo))
    conn.close()
    return root


def test_a_v5_catalog_gains_the_tokens_table(template, tmp_path):
    from tests.conftest import UNDO_V6
    from unbake.workspace.catalog import SCHEMA_VERSION

    with Workspace.open(_downgrade(template, tmp_path, UNDO_V6)) as ws:
        assert ws.catalog.meta("schema_version") == str(SCHEMA_VERSION) == "9"
        token, _ = create_token(ws, "operator")
        assert authenticate(ws, token).role == "operator"


def test_a_v6_catalog_keeps_its_tokens_and_can_revoke_them(template, tmp_path):
    from tests.conftest import UNDO_V7

    root = _downgrade(template, tmp_path, UNDO_V7)
    with Workspace.open(root) as ws:
        assert ws.catalog.meta("schema_version") == "9"
        listed = list_tokens(ws)
        assert len(listed) == 4 and all(t["revoked_at"] is None for t in listed)
        assert authenticate(ws, template[2]["auditor"]).role == "auditor"
        auditor = next(t["token_id"] for t in listed if t["role"] == "auditor")
        assert revoke_token(ws, auditor)["revoked"] is True
        assert authenticate(ws, template[2]["auditor"]) is None


def test_a_revoked_token_is_refused_at_once_and_the_cache_still_saves_reads(env, monkeypatch):
    import unbake.workspace.tokens as tokens_module

    client, svc, _, tokens = env
    calls = []
    real = tokens_module.authenticate
    monkeypatch.setattr(
        tokens_module, "authenticate", lambda ws, token: calls.append(token) or real(ws, token)
    )
    for _ in range(3):
        assert client.get("/v1/models/current", headers=auth(tokens["auditor"])).status_code == 200
    svc.submit(sample_ids=["digits-0000"])  # a commit, but no revocation: the cache holds
    assert client.get("/v1/models/current", headers=auth(tokens["auditor"])).status_code == 200
    assert calls == [tokens["auditor"]]
    # Revoked through another connection (as `unbake token revoke` in another process).
    with Workspace.open(svc.root) as other:
        (row,) = [t for t in list_tokens(other) if t["role"] == "auditor"]
        revoke_token(other, row["token_id"])
    r = client.get("/v1/models/current", headers=auth(tokens["auditor"]))
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    assert client.get("/v1/models/current", headers=auth(tokens["operator"])).status_code == 200


def test_ledger_pages_and_verify_for_auditors(env):
    import sqlite3

    client, svc, train, tokens = env
    for i in range(3):
        svc.submit(sample_ids=train[i : i + 1])
    aud = auth(tokens["auditor"])
    page = client.get("/v1/ledger", params={"after": 2, "limit": 3}, headers=aud).json()
    assert [e["seq"] for e in page["entries"]] == [3, 4, 5] and page["head"]["seq"] == 6
    assert client.get("/v1/ledger", headers=auth(tokens["submitter"])).status_code == 403
    good = client.get("/v1/ledger/verify", headers=aud).json()
    assert good == {"valid": True, "head": page["head"], "error": None}
    conn = sqlite3.connect(svc.root / "catalog.sqlite")
    conn.execute("UPDATE ledger SET timestamp = '2000-01-01' WHERE seq = 4")
    conn.commit()
    conn.close()
    bad = client.get("/v1/ledger/verify", headers=aud).json()
    assert bad["valid"] is False and "entry 4" in bad["error"]
