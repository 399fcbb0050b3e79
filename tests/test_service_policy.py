"""The worker applies queued requests under the deletion policy (issue 9 items 3 and 6)."""

from datetime import datetime, timedelta
from unittest import mock

import pytest
import torch

from unbake import TrainConfig, Workspace, fit
from unbake.exceptions import InvalidParameterError
from unbake.methods import METHODS
from unbake.service import DeletionService
from unbake.service.deletion import drain
from unbake.service.policy import parse_policy
from unbake.workspace.model_store import ModelStore

CFG = TrainConfig.parse(epochs=1, batch_size=64)


def _policy(*steps: str, fallback: str = "retrain", batch: int = 4, deadline: str = "") -> str:
    text = f"{deadline}\n[batch]\nmax_requests = {batch}\nmax_seconds = 1\n"
    text += f'[models.default]\nfallback = "{fallback}"\n'
    for step in steps:
        text += f"[[models.default.steps]]\n{step}\n"
    return text


FINETUNE = 'method = "finetune"\nparams = { epochs = 1 }\n'
LOOSE = FINETUNE + "thresholds = { ra = { min = 0 } }"
STRICT = FINETUNE + "thresholds = { ra = { min = 0 }, fa = { max = -1 } }"  # fa >= 0 always


def _apply(root, policy_text, ids, **submit):
    with DeletionService(root, policy=parse_policy(policy_text)) as svc:
        rid = svc.submit(sample_ids=ids, **submit).request_id
        assert svc.apply_pending() == [rid]
        return svc.request(rid)


def _record(root, request_id):
    with Workspace.open(root) as ws:
        return next(r for r in ws.log() if r["request_id"] == request_id)


def _checkpoint_files(root):
    return sorted(p.name for p in (root / "checkpoints").iterdir())


def test_loose_thresholds_accept_the_first_step(root, train_ids):
    req = _apply(root, _policy(LOOSE), train_ids[:3])
    assert req["state"] == "applied" and req["method"] == "finetune"
    attempts = req["policy"]["attempts"]
    assert [(a["method"], a["status"]) for a in attempts] == [("finetune", "accepted")]
    assert attempts[0]["figures"]["ra"] > 0 and not req["policy"]["fell_back"]
    record = _record(root, req["request_id"])
    assert record["method"] == "finetune" and record["info"]["policy"] == req["policy"]
    applied = next(e for e in req["entries"] if e["state"] == "applied")
    assert applied["payload"]["policy"] == req["policy"]
    assert _checkpoint_files(root) == [f"{req['model_after']}.safetensors"]


def test_strict_thresholds_fall_back_to_retrain_bitwise_and_write_once(root, train_ids):
    write = ModelStore.write
    with mock.patch.object(ModelStore, "write", autospec=True, side_effect=write) as spy:
        req = _apply(root, _policy(STRICT, STRICT.replace("finetune", "neggrad")), train_ids[:3])
    attempts = req["policy"]["attempts"]
    assert [(a["method"], a["status"]) for a in attempts] == [
        ("finetune", "rejected"),
        ("neggrad", "rejected"),
        ("retrain", "accepted"),
    ]
    assert attempts[0]["reasons"][0].startswith("fa = ") and "> max -1" in attempts[0]["reasons"][0]
    assert req["method"] == "retrain" and req["policy"]["fell_back"]
    assert spy.call_count == 1  # rejected attempts write no checkpoint
    assert _checkpoint_files(root) == [f"{req['model_after']}.safetensors"]
    with Workspace.open(root) as ws:
        active, _ = ws.active_and_forgotten()
        final = ws.load_model()
    scratch = fit(active, n_classes=10, model="logreg", config=CFG, seed=0)
    for key, value in scratch.module.state_dict().items():
        assert torch.equal(value, final.module.state_dict()[key]), key


def test_a_raising_step_is_recorded_failed_and_the_next_is_tried(root, train_ids, monkeypatch):
    def boom(self, task, *, seed=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(METHODS.get("finetune"), "unlearn", boom)
    req = _apply(root, _policy(LOOSE, LOOSE.replace("finetune", "neggrad")), train_ids[:3])
    attempts = req["policy"]["attempts"]
    assert [(a["method"], a["status"]) for a in attempts] == [
        ("finetune", "failed"),
        ("neggrad", "accepted"),
    ]
    assert attempts[0]["reasons"] == ["RuntimeError: boom"]
    assert req["state"] == "applied" and req["method"] == "neggrad"


def test_a_failing_fallback_fails_the_requests_with_every_attempt(root, train_ids, monkeypatch):
    def boom(self, task, *, seed=None):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(METHODS.get("retrain"), "unlearn", boom)
    before = _checkpoint_files(root)
    once = "[retry]\nmax_attempts = 1\n"  # no retry (test_worker_recovery.py tests those)
    req = _apply(root, once + _policy(STRICT), train_ids[:3])
    assert req["state"] == "failed"
    failed = req["entries"][-1]["payload"]
    assert "PolicyFailedError" in failed["reason"] and "disk on fire" in failed["reason"]
    assert [a["status"] for a in failed["policy"]["attempts"]] == ["rejected", "failed"]
    assert _checkpoint_files(root) == before


def test_a_request_naming_its_method_bypasses_the_policy(root, train_ids):
    req = _apply(root, _policy(LOOSE), train_ids[:3], method="retrain")
    assert req["state"] == "applied" and req["method"] == "retrain" and "policy" not in req
    info = _record(root, req["request_id"])["info"]
    assert info["policy"] == {"bypassed": "the request names its own method"}


def test_the_policy_sets_the_deadline_and_the_batch_window(root, train_ids, tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(_policy(LOOSE, batch=2, deadline="deadline_days = 3"))
    with DeletionService(root, policy=path) as svc:  # a path is read and validated
        rids = [svc.submit(sample_ids=train_ids[k : k + 2]).request_id for k in (0, 2, 4)]
        req = svc.request(rids[0])
        received = datetime.fromisoformat(req["received_at"])
        assert datetime.fromisoformat(req["deadline"]) - received == timedelta(days=3)
        assert drain(svc, once=True) == 3  # batches of max_requests = 2
    with Workspace.open(root) as ws:
        batches = {len(r["info"].get("batch", [r["request_id"]])) for r in ws.log()}
    assert batches == {2, 1}


def test_a_bad_policy_path_is_refused_at_once(root, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[batch]\nmax_requests = 0\n")
    with pytest.raises(InvalidParameterError, match="max_requests"):
        DeletionService(root, policy=bad)


def test_held_out_rows_only_change_no_model_under_a_policy(root):
    with Workspace.open(root) as ws:
        test_ids = [r["sample_id"] for r in ws.samples() if r["split"] == "test"][:2]
    before = _checkpoint_files(root)
    req = _apply(root, _policy(STRICT), test_ids)
    assert req["state"] == "applied" and req["method"] == "none"
    assert req["model_after"] == req["model_before"] and _checkpoint_files(root) == before
