"""The worker: `unbake worker`, and kill -9 at seeded random points (exactly once)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.integration.test_cli import assert_one_line_error, run
from tests.waiting import HUNG_AFTER
from unbake import TrainConfig, Workspace, fit
from unbake.service import DeletionService
from unbake.testing.crash import check_exactly_once, kill9_trial

CFG = TrainConfig.parse(epochs=1, batch_size=64)
EXAMPLE_POLICY = Path(__file__).resolve().parents[2] / "examples" / "policy.toml"
#: A finetune step that no model passes (FA is never negative), then the exact retrain.
STRICT_POLICY = """
[batch]
max_requests = 2
max_seconds = 1
[models.default]
fallback = "retrain"
[[models.default.steps]]
method = "finetune"
params = { epochs = 1 }
thresholds = { fa = { max = -1 } }
"""


@pytest.fixture
def template(service_template):
    return service_template


def _filed(template, root, n=6, size=3):
    """A copy of the template with ``n`` queued requests of ``size`` IDs each."""
    shutil.copytree(template[0], root)
    ids = template[1]
    with DeletionService(root) as svc:
        return {
            svc.submit(sample_ids=ids[k * size : (k + 1) * size]).request_id: ids[
                k * size : (k + 1) * size
            ]
            for k in range(n)
        }


def _final_model_is_the_retrain(root):
    """Forgotten samples were never trained on: the final model is the retrain from
    scratch on the active samples, bit for bit."""
    with Workspace.open(root) as ws:
        active, _ = ws.active_and_forgotten()
        final = ws.load_model()
    scratch = fit(active, n_classes=10, model="logreg", config=CFG, seed=0)
    return all(
        torch.equal(v, final.module.state_dict()[k]) for k, v in scratch.module.state_dict().items()
    )


def test_worker_cli_drains_the_queue_in_batches(template, tmp_path):
    root = tmp_path / "ws"
    filed = _filed(template, root, n=5)
    res = run("worker", "--once", "--batch", "2", "--workspace", root, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out == {"finished": 5, "states": {"certified": 5}}  # applied, then signed
    assert check_exactly_once(root, filed) == []
    with Workspace.open(root) as ws:
        batches = {json.dumps(r["info"].get("batch")) for r in ws.log()}
    assert len(batches) == 3  # 2 + 2 + 1
    assert _final_model_is_the_retrain(root)
    with DeletionService(root) as svc:
        for rid in filed:
            cert = svc.certificate(rid)
            assert cert is not None and cert["certificate"]["request_id"] == rid


def test_a_request_applied_but_not_certified_is_certified_by_the_next_worker(template, tmp_path):
    root = tmp_path / "ws"
    filed = _filed(template, root, n=2)
    with DeletionService(root) as svc:  # a worker that died between applied and certified
        assert sorted(svc.apply_pending()) == sorted(filed)
        assert svc.state_counts() == {"applied": 2}
    res = run("worker", "--once", "--workspace", root, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"finished": 0, "states": {"certified": 2}}
    res = run("ledger", "verify", "--workspace", root)
    assert res.exit_code == 0, res.output
    res = run("worker", "--once", "--no-certify", "--workspace", root, "--json")
    assert json.loads(res.stdout)["states"] == {"certified": 2}  # nothing signed twice


def test_worker_cli_applies_the_queue_under_a_policy(template, tmp_path):
    root = tmp_path / "ws"
    filed = _filed(template, root, n=3)
    res = run("worker", "--once", "--policy", EXAMPLE_POLICY, "--workspace", root, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"finished": 3, "states": {"certified": 3}}
    assert check_exactly_once(root, filed) == []
    with DeletionService(root) as svc:
        for rid in filed:
            policy = svc.request(rid)["policy"]
            assert policy["section"] == "default" and policy["attempts"][0]["method"] == "finetune"
            assert policy["method"] in ("finetune", "scrub", "retrain")
            assert all("ra" in a["figures"] for a in policy["attempts"])
    with Workspace.open(root) as ws:  # the policy's window (16 requests): one batch
        assert {len(r["info"]["batch"]) for r in ws.log()} == {3}


def test_worker_cli_refuses_a_bad_policy_in_one_line(template, tmp_path):
    root = tmp_path / "ws"
    _filed(template, root, n=1)
    bad = tmp_path / "bad.toml"
    bad.write_text("[batch]\nmax_requests = 0\nmax_seconds = 1\n")
    res = run("worker", "--once", "--policy", bad, "--workspace", root)
    assert_one_line_error(res, "batch.max_requests")
    res = run("worker", "--once", "--policy", tmp_path / "none.toml", "--workspace", root)
    assert_one_line_error(res, "Cannot read the policy")
    with DeletionService(root) as svc:
        assert svc.state_counts() == {"queued": 1}


def test_kill9_during_policy_attempts_applies_each_request_exactly_once(template, tmp_path):
    """Workers under a policy whose first step is always rejected, killed at random:
    nothing half-written, each request applied once, by the retrain fallback."""
    policy = tmp_path / "strict.toml"
    policy.write_text(STRICT_POLICY)
    killed = recovered = 0
    for seed in range(2):
        root = tmp_path / f"ws-{seed}"
        filed = _filed(template, root, n=4)
        killed += kill9_trial(root, seed=seed, batch=2, max_delay=1.5, kills=2, policy=policy)
        assert check_exactly_once(root, filed) == [], f"seed {seed}"
        assert _final_model_is_the_retrain(root), f"seed {seed}"
        with DeletionService(root) as svc:
            for rid in filed:
                req = svc.request(rid)
                recovered += sum(e["payload"].get("recovered", False) for e in req["entries"])
                assert [a["status"] for a in req["policy"]["attempts"]] == ["rejected", "accepted"]
        shutil.rmtree(root)
    assert killed > 0 and recovered > 0, (killed, recovered)


def _trials(template, tmp_path, seeds):
    """Four requests in two batches; each worker is killed after a seeded delay within
    about the time a batch takes (evaluation included), twice, then one finishes."""
    killed = recovered = 0
    for seed in seeds:
        root = tmp_path / f"ws-{seed}"
        filed = _filed(template, root, n=4)
        killed += kill9_trial(root, seed=seed, batch=2, max_delay=1.2, kills=2)
        assert check_exactly_once(root, filed) == [], f"seed {seed}"
        assert _final_model_is_the_retrain(root), f"seed {seed}"
        with DeletionService(root) as svc:
            recovered += sum(
                e["payload"].get("recovered", False)
                for rid in filed
                for e in svc.request(rid)["entries"]
            )
        shutil.rmtree(root)
    # The kills really landed mid-apply: requests were found applying and put back.
    assert killed > 0 and recovered > 0, (killed, recovered)


def test_kill9_at_random_points_applies_each_request_exactly_once(template, tmp_path):
    _trials(template, tmp_path, range(5))  # 10 kills; the full count is the slow test's


@pytest.mark.slow
def test_kill9_at_random_points_100_runs(template, tmp_path):
    _trials(template, tmp_path, range(100, 200))


_WRITER = """
import fcntl, sqlite3, sys
lock = open(sys.argv[1] + "/.lock", "a+")
fcntl.flock(lock, fcntl.LOCK_EX)
c = sqlite3.connect(sys.argv[1] + "/catalog.sqlite", isolation_level=None)
c.execute("BEGIN IMMEDIATE")
c.execute("UPDATE models SET description = 'half-written'")
print("holding", flush=True)
sys.stdin.read()
"""


def test_readers_never_wait_for_a_writer(template, tmp_path):
    """While another process holds the workspace lock and an open write transaction (a
    forget committing), every read command answers at once from the committed state."""
    import subprocess
    import sys
    import time

    from unbake.workspace.catalog import BUSY_TIMEOUT_MS

    root = tmp_path / "ws"
    _filed(template, root, n=1)
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "holding"
        for cmd in (
            ["status", "--json"],
            ["log"],
            ["evaluate", "--json"],
            ["ledger", "show"],
            ["ledger", "verify"],
            ["samples", "--json"],
        ):
            start = time.monotonic()
            res = run(*cmd, "--workspace", root)
            waited = time.monotonic() - start
            assert res.exit_code == 0, (cmd, res.output)
            assert "half-written" not in res.stdout
            # Not a speed claim: a command that waited for the writer's lock would have
            # waited out SQLite's whole busy_timeout, however idle the machine.
            assert waited < BUSY_TIMEOUT_MS / 1000, f"{cmd} waited {waited:.0f} s for the writer"
        assert writer.poll() is None  # the writer held its transaction throughout
    finally:
        writer.stdin.close()
        writer.wait(timeout=HUNG_AFTER)
