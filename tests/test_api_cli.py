"""`unbake token create` and `unbake serve` from the command line, as the README uses them."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("uvicorn")

import httpx
from typer.testing import CliRunner

from unbake import TrainConfig, Workspace
from unbake.cli import app
from unbake.service.api import openapi_text
from unbake.workspace.tokens import authenticate

runner = CliRunner()


@pytest.fixture
def ws_root(tmp_path):
    root = tmp_path / "ws"
    with Workspace.create(root, dataset="digits") as ws:
        ws.train(model="logreg", config=TrainConfig.parse(epochs=1, batch_size=64), seed=0)
    return root


def test_token_create_prints_the_token_once(ws_root):
    out = runner.invoke(app, ["token", "create", "--role", "auditor", "-w", str(ws_root)])
    assert out.exit_code == 0, out.output
    token = out.stdout.strip()
    with Workspace.open(ws_root, read_only=True) as ws:
        assert authenticate(ws, token).role == "auditor"
    assert token.encode() not in (ws_root / "catalog.sqlite").read_bytes()
    bad = runner.invoke(app, ["token", "create", "--role", "admin", "-w", str(ws_root)])
    assert bad.exit_code == 2 and "Unknown role 'admin'" in bad.stderr
    js = runner.invoke(app, ["token", "create", "--role", "operator", "--json", "-w", str(ws_root)])
    assert json.loads(js.stdout)["role"] == "operator"


def test_token_revoke_and_list(ws_root):
    made = runner.invoke(
        app, ["token", "create", "--role", "auditor", "--json", "-w", str(ws_root)]
    )
    token_id = json.loads(made.stdout)["token_id"]
    before = (ws_root / "catalog.sqlite").read_bytes()
    bad = runner.invoke(app, ["token", "revoke", "nosuchid", "-w", str(ws_root)])
    assert bad.exit_code == 2 and "No token 'nosuchid'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert (ws_root / "catalog.sqlite").read_bytes() == before
    listed = runner.invoke(app, ["token", "list", "--json", "-w", str(ws_root)])
    assert [t["revoked_at"] for t in json.loads(listed.stdout)] == [None]
    out = runner.invoke(app, ["token", "revoke", token_id, "-w", str(ws_root)])
    assert out.exit_code == 0 and f"Revoked token {token_id}" in out.stdout
    again = runner.invoke(app, ["token", "revoke", token_id, "-w", str(ws_root)])
    assert again.exit_code == 0 and "already revoked" in again.stdout
    (row,) = json.loads(runner.invoke(app, ["token", "list", "--json", "-w", str(ws_root)]).stdout)
    assert row["token_id"] == token_id and row["revoked_at"] is not None
    table = runner.invoke(app, ["token", "list", "-w", str(ws_root)])
    assert table.exit_code == 0 and token_id in table.stdout and "revoked_at" in table.stdout


def test_serve_openapi_writes_the_schema(tmp_path):
    out = runner.invoke(app, ["serve", "--openapi", str(tmp_path / "api.json")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "api.json").read_text() == openapi_text()


def test_serve_answers_over_http_and_stops_on_sigterm(ws_root):
    token = runner.invoke(app, ["token", "create", "--role", "submitter", "-w", str(ws_root)])
    headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "unbake.cli", "serve", "--no-worker", "-w", str(ws_root)]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "unbake serve did not start"
                time.sleep(0.1)
        r = httpx.post(url + "/v1/requests", json={"class": 0}, headers=headers)
        assert r.status_code == 202, r.text
        rid = r.json()["request_id"]
        got = httpx.get(f"{url}/v1/requests/{rid}", headers=headers).json()
        assert got["state"] == "queued"
        # Revoked by another process: the running server refuses it from the next request.
        (row,) = json.loads(
            runner.invoke(app, ["token", "list", "--json", "-w", str(ws_root)]).stdout
        )
        assert (
            runner.invoke(app, ["token", "revoke", row["token_id"], "-w", str(ws_root)]).exit_code
            == 0
        )
        assert httpx.get(f"{url}/v1/requests/{rid}", headers=headers).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)  # as `kill`: a clean stop, the worker stopped too
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert f"http://127.0.0.1:{port}" in out.decode() and "Stopped." in out.decode()


def test_serve_runs_the_worker_with_its_policy_and_refuses_a_bad_one(ws_root, tmp_path):
    from unbake import cli

    assert cli._worker_command(ws_root, tmp_path / "p.toml") == [
        sys.executable, "-m", "unbake.cli", "worker", "--workspace", str(ws_root),
        "--policy", str(tmp_path / "p.toml"),
    ]  # fmt: skip
    bad = tmp_path / "bad.toml"
    bad.write_text("[batch]\nmax_requests = 0\n")
    before = sorted(p.name for p in ws_root.iterdir())
    out = runner.invoke(app, ["serve", "--policy", str(bad), "-w", str(ws_root)])
    assert out.exit_code == 2 and "batch.max_requests" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in ws_root.iterdir()) == before
