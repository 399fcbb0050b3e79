"""The REST API's edges (issue 22, items 6 and 7): non-finite inputs, header size, duplicate
JSON keys, what a submitter may erase, per-token rate limits, and /docs offline."""

import re
import shutil
import sys
import types

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from tests.test_api import auth, template  # noqa: F401  (a fixture)
from unbake.service import DeletionService
from unbake.service.api import DOCS_ASSETS, SWAGGER_UI_PACKAGE, RateLimit, create_app
from unbake.service.policy import Limits, parse_policy
from unbake.testing.snapshot import workspace_snapshot

POLICY = """
[batch]
max_requests = 4
max_seconds = 30
[limits]
rate_per_minute = 1
burst = 1
[models.default]
fallback = "retrain"
"""


@pytest.fixture
def make(template, tmp_path):  # noqa: F811
    """``make(**create_app kwargs)``: a client over a fresh copy of the API workspace."""
    root = tmp_path / "ws"
    shutil.copytree(template[0], root)
    services, clients = [], []

    def build(policy=None, **kwargs):
        svc = DeletionService(root, policy=policy)
        client = TestClient(create_app(svc, **kwargs))
        services.append(svc)
        clients.append(client.__enter__())
        return client, svc

    yield build, template[1], template[2]
    for client in clients:
        client.__exit__(None, None, None)
    for svc in services:
        svc.close()


def test_predict_refuses_inputs_not_finite_in_the_model_dtype(make):
    build, _, tokens = make
    client, _ = build()
    op = auth(tokens["operator"])
    r = client.post("/v1/predict", json={"inputs": [[0.0] * 63 + [1e39]]}, headers=op)
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert "row 0, value 63 is 1e+39" in message and "float32" in message
    assert "\n" not in message
    big = client.post(
        "/v1/predict", json={"inputs": [[3e38] * 64], "probabilities": True}, headers=op
    )
    # Finite as float32, but it may overflow the model: refused, never null probabilities.
    assert big.status_code == 422 or None not in big.json()["probabilities"][0], big.text


def test_headers_over_the_limit_get_431(make):
    build, _, tokens = make
    client, _ = build(limits=Limits(max_header_bytes=2048))
    headers = auth(tokens["auditor"])
    assert client.get("/v1/models/current", headers=headers).status_code == 200
    r = client.get("/v1/models/current", headers={**headers, "X-Pad": "a" * 3000})
    assert r.status_code == 431
    assert r.json()["error"]["type"] == "HeadersTooLarge"
    assert "2048" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "key"),
    [
        ("/v1/requests", b'{"sample_ids": ["a"], "sample_ids": ["b"]}', "sample_ids"),
        ("/v1/requests", b'{"class": 1, "reason": "x", "reason": "y"}', "reason"),
        (
            "/v1/predict",
            b'{"inputs": [[0, 1]], "probabilities": true, "probabilities": 0}',
            "probabilities",
        ),
    ],
)
def test_a_body_naming_a_key_twice_is_refused(make, path, body, key):
    build, _, tokens = make
    client, svc = build()
    before = workspace_snapshot(svc.root)
    headers = {**auth(tokens["operator"]), "Content-Type": "application/json"}
    r = client.post(path, content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert f"{key!r} twice" in r.json()["error"]["message"]
    assert workspace_snapshot(svc.root) == before


def test_whole_class_and_bulk_requests_need_an_operator(make):
    build, train, tokens = make
    client, svc = build(limits=Limits(max_ids_per_request=3))
    submitter, operator = auth(tokens["submitter"]), auth(tokens["operator"])
    before = workspace_snapshot(svc.root)
    r = client.post("/v1/requests", json={"class": 1}, headers=submitter)
    assert r.status_code == 403 and "operator" in r.json()["error"]["message"], r.text
    r = client.post("/v1/requests", json={"sample_ids": train[:4]}, headers=submitter)
    assert r.status_code == 403 and "at most 3 sample IDs" in r.json()["error"]["message"]
    assert workspace_snapshot(svc.root) == before  # refused before anything is written
    assert (
        client.post("/v1/requests", json={"sample_ids": train[:3]}, headers=submitter).status_code
        == 202
    )
    assert (
        client.post("/v1/requests", json={"sample_ids": train[3:8]}, headers=operator).status_code
        == 202
    )
    assert client.post("/v1/requests", json={"class": 1}, headers=operator).status_code == 202
    allowed, _ = build(limits=Limits(submitter_may_erase_class=True))
    assert allowed.post("/v1/requests", json={"class": 2}, headers=submitter).status_code == 202


def test_each_token_has_its_own_rate_limit(make):
    build, _, tokens = make
    now = [0.0]
    client, _ = build(rate_limit=RateLimit(per_minute=60, burst=2, clock=lambda: now[0]))
    mine, theirs = auth(tokens["submitter"]), auth(tokens["other"])
    assert [client.get("/v1/models/current", headers=mine).status_code for _ in range(2)] == [
        200,
        200,
    ]
    r = client.get("/v1/models/current", headers=mine)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert (
        r.json()["error"]["type"] == "TooManyRequests"
        and "retry in 1 s" in r.json()["error"]["message"]
    )
    assert client.get("/v1/models/current", headers=theirs).status_code == 200
    now[0] = 1.0
    assert client.get("/v1/models/current", headers=mine).status_code == 200


def test_the_policy_limits_configure_the_service(make):
    build, _, tokens = make
    client, _ = build(policy=parse_policy(POLICY))
    headers = auth(tokens["auditor"])
    assert client.get("/v1/models/current", headers=headers).status_code == 200
    r = client.get("/v1/models/current", headers=headers)
    assert r.status_code == 429 and r.headers["retry-after"] == "60"
    submitter = auth(tokens["submitter"])  # the default limits: a class needs an operator
    assert client.post("/v1/requests", json={"class": 1}, headers=submitter).status_code == 403


# --- /docs offline ----------------------------------------------------------------------

EXTERNAL = re.compile(r"(?:https?:)?//[\w.-]+\.\w+", re.I)


def test_docs_without_the_swagger_files_is_a_plain_page_with_no_external_url(make, monkeypatch):
    monkeypatch.setitem(sys.modules, "swagger_ui_bundle", None)  # not installed
    build, _, _ = make
    client, _ = build()
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not EXTERNAL.findall(page.text), EXTERNAL.findall(page.text)
    assert SWAGGER_UI_PACKAGE in page.text and "/v1/requests" in page.text
    assert client.get("/redoc").status_code == 404  # FastAPI's ReDoc page loads from a CDN


def test_docs_serves_swagger_ui_from_the_package_files(make, monkeypatch, tmp_path):
    folder = tmp_path / "swagger-ui"
    folder.mkdir()
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        (folder / name).write_text(f"/* {name} */")
    fake = types.ModuleType("swagger_ui_bundle")
    fake.swagger_ui_path = folder
    monkeypatch.setitem(sys.modules, "swagger_ui_bundle", fake)
    build, _, _ = make
    client, _ = build()
    page = client.get("/docs").text
    assert not EXTERNAL.findall(page), EXTERNAL.findall(page)
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert f"{DOCS_ASSETS}/swagger-ui-bundle.js" in assets
    for url in assets:
        got = client.get(url)
        assert got.status_code == 200 and got.text == f"/* {url.rsplit('/', 1)[1]} */"
    assert "'/openapi.json'" in page and client.get("/openapi.json").status_code == 200


def test_docs_with_the_real_swagger_ui_bundle_serves_every_asset(make):
    pytest.importorskip("swagger_ui_bundle")  # the [service] extra's swagger-ui-bundle
    build, _, _ = make
    client, _ = build()
    page = client.get("/docs").text
    assert not EXTERNAL.findall(page), EXTERNAL.findall(page)
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(assets) == 3
    for url in assets:
        got = client.get(url)
        assert got.status_code == 200 and len(got.content) > 100, url
