"""`unbake token create` and `unbake serve` from the command line, as the service guide's
quick start (docs/guides/service.md) uses them."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")

import httpx
from typer.testing import CliRunner

from tests.waiting import HUNG_AFTER, wait_until
from unbake import TrainConfig, Workspace
from unbake.cli import app
from unbake.service import apply
from unbake.service.api import openapi_text
from unbake.workspace.tokens import authenticate

runner = CliRunner()


@pytest.fixture
def ws_root(tmp_path):
    root = tmp_path / "ws"
    with Workspace.create(root, dataset="digits") as ws:
        apply.train(ws, model="logreg", config=TrainConfig.parse(epochs=1, batch_size=64), seed=0)
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


def test_a_token_file_is_private_whichever_way_it_is_written(ws_root, tmp_path):
    import stat

    out = tmp_path / "operator.token"
    made = runner.invoke(
        app, ["token", "create", "--role", "operator", "--out", str(out), "-w", str(ws_root)]
    )
    assert made.exit_code == 0 and made.stdout == "", made.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with Workspace.open(ws_root, read_only=True) as ws:
        assert authenticate(ws, out.read_text().strip()).role == "operator"
    # The service guide's quick start: the shell makes the file (0644 under umask 022) first.
    shell = tmp_path / "shell.token"
    cli = f"{sys.executable} -c 'from unbake.cli import main; main()'"
    done = subprocess.run(
        f"umask 022; {cli} token create --role operator -w {ws_root} > {shell}",
        shell=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=HUNG_AFTER,
    )
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(shell.stat().st_mode) == 0o600 and "now 0600" in done.stderr
    with Workspace.open(ws_root, read_only=True) as ws:
        assert authenticate(ws, shell.read_text().strip()).role == "operator"


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


def _serve(ws_root, *args):
    """`unbake serve` on a free port, once it answers /healthz; returns (process, URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "unbake.cli", "serve", *args, "-w", str(ws_root)]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ
    )
    url = f"http://127.0.0.1:{port}"
    _wait(lambda: httpx.get(url + "/healthz").status_code == 200, proc, "serve's start")
    return proc, url


def _wait(ready, proc, what):
    """Wait for ``ready()`` (an HTTP error counts as not yet), failing at once with the
    server's stderr if it exits meanwhile."""

    def answered():
        try:
            return ready()
        except httpx.HTTPError:
            return False

    def alive():
        assert proc.poll() is None, proc.stderr.read().decode()

    wait_until(answered, what, poll=0.1, check=alive)


def test_serve_answers_over_http_and_stops_on_sigterm(ws_root):
    # An operator: a whole class is more than a submitter may erase (the policy's [limits]).
    token = runner.invoke(app, ["token", "create", "--role", "operator", "-w", str(ws_root)])
    headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
    proc, url = _serve(ws_root, "--no-worker")
    port = url.rsplit(":", 1)[1]
    try:
        assert httpx.get(url + "/healthz").json()["worker"]["state"] == "disabled"
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
        out, err = proc.communicate(timeout=HUNG_AFTER)
    assert proc.returncode == 0, err.decode()
    assert f"http://127.0.0.1:{port}" in out.decode() and "Stopped." in out.decode()


def test_serve_runs_the_worker_with_its_policy_and_refuses_a_bad_one(ws_root, tmp_path):
    from unbake import cli

    assert cli._worker_command(ws_root, tmp_path / "p.toml") == [
        sys.executable, "-m", "unbake.cli", "worker", "--workspace", str(ws_root),
        "--stop-with", str(os.getpid()), "--policy", str(tmp_path / "p.toml"),
    ]  # fmt: skip
    bad = tmp_path / "bad.toml"
    bad.write_text("[batch]\nmax_requests = 0\n")
    before = sorted(p.name for p in ws_root.iterdir())
    out = runner.invoke(app, ["serve", "--policy", str(bad), "-w", str(ws_root)])
    assert out.exit_code == 2 and "batch.max_requests" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in ws_root.iterdir()) == before


def _children(pid):
    """The IDs of the processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


@pytest.mark.slow  # about 12 s: two worker start-ups, a retrain and a certificate
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_serve_restarts_a_killed_worker_which_then_drains_the_queue(ws_root, tmp_path):
    policy = tmp_path / "now.toml"  # a batch per request, applied by an exact retrain
    policy.write_text(
        '[batch]\nmax_requests = 1\nmax_seconds = 0.1\n[models.default]\nfallback = "retrain"\n'
    )
    made = runner.invoke(app, ["token", "create", "--role", "operator", "-w", str(ws_root)])
    headers = {"Authorization": f"Bearer {made.stdout.strip()}"}
    with Workspace.open(ws_root, read_only=True) as ws:
        sample = next(r["sample_id"] for r in ws.samples() if r["split"] == "train")
    proc, url = _serve(ws_root, "--policy", str(policy))

    def health():
        return httpx.get(url + "/healthz").json()

    try:
        assert health()["worker"]["state"] == "running"
        (first,) = _children(proc.pid)
        os.kill(first, signal.SIGKILL)
        _wait(lambda: health()["worker"]["restarts"] == 1, proc, "the worker's restart")
        assert health()["worker"] == {"state": "running", "restarts": 1, "last_exit_code": -9}
        assert health()["status"] == "ok"
        (second,) = _children(proc.pid)
        assert second != first
        r = httpx.post(url + "/v1/requests", json={"sample_ids": [sample]}, headers=headers)
        assert r.status_code == 202, r.text
        rid = r.json()["request_id"]

        def applied():
            got = httpx.get(f"{url}/v1/requests/{rid}", headers=headers).json()
            return got["state"] in ("applied", "certified")

        _wait(applied, proc, "the restarted worker's applying the request")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=HUNG_AFTER)
    assert proc.returncode == 0, err.decode()
    assert "killed by SIGKILL" in err.decode() and "restarting it in" in err.decode()
    assert "Worker stopped" in out.decode()  # SIGTERM let it finish cleanly
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)  # stopped with the server (and reaped)
