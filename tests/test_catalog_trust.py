"""The catalog is not a way in: what it (or a checkpoint) names passes the user's doors.

Each test plays someone who can write the workspace's files: a queued row, a stored
model's metadata or its recorded hash is rewritten with sqlite3, and the workspace answers
with a one-line typed error, joining, loading and writing nothing.
"""

import hashlib
import json
import os
import sqlite3
import stat

import pytest
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from tests.conftest import UNDO_V8
from unbake import TrainConfig, Workspace
from unbake.backends import RAY_ENV
from unbake.backends import ray as ray_backend
from unbake.exceptions import IntegrityError, InvalidParameterError
from unbake.service import DeletionService, apply
from unbake.testing.snapshot import workspace_snapshot
from unbake.workspace.checkpoints import _metadata

CFG = TrainConfig.parse(epochs=1, batch_size=64)
EVIL = "evil.example:6379"


@pytest.fixture
def sisa_root(tmp_path):
    return _workspace(tmp_path / "ws", strategy="sisa", strategy_params={"shards": 2})


@pytest.fixture
def no_ray(monkeypatch):
    """Every attempt to start or join a Ray cluster, recorded instead of made."""
    joined = []
    monkeypatch.setattr(ray_backend, "ray_session", lambda **kw: joined.append(kw))
    monkeypatch.delenv(RAY_ENV, raising=False)
    return joined


def _one_line(exc_info, *fragments):
    text = str(exc_info.value)
    assert "\n" not in text, text
    for f in fragments:
        assert f in text, text


def _forge(root, *, keyed: bool, **meta_changes) -> None:
    """Rewrite the newest checkpoint's metadata and record its new sha256 (and, with
    ``keyed``, its keyed digest too, as only a holder of the workspace secret could)."""
    with Workspace.open(root) as ws:
        row = ws.catalog.latest_active_model()
        path = root / row["checkpoint"]
        data = path.read_bytes()
        meta = {**_metadata(data), **meta_changes}
        forged = st_save(st_load(data), metadata=meta)
        path.write_bytes(forged)
        digest = hashlib.sha256(forged).hexdigest()
        mac = ws.model_store.checkpoint_mac(row["model_id"], digest) if keyed else row["mac"]
        model_id = row["model_id"]
    db = sqlite3.connect(root / "catalog.sqlite")
    with db:
        db.execute(
            "UPDATE models SET sha256 = ?, mac = ? WHERE model_id = ?", (digest, mac, model_id)
        )
    db.close()


def test_a_queued_ray_address_is_refused_and_no_cluster_is_joined(sisa_root, no_ray):
    with DeletionService(sisa_root) as svc:
        ids = [r["sample_id"] for r in svc.workspace.samples() if r["split"] == "train"]
        # A submitter's own parameters go through the same door...
        with pytest.raises(InvalidParameterError, match=RAY_ENV) as info:
            svc.submit(sample_ids=ids[:1], method="sisa", params={"ray_address": EVIL})
        _one_line(info, "'ray_address'", EVIL)
        sub = svc.submit(sample_ids=ids[:1], method="sisa")
    # ...and so does a queued row rewritten after it was accepted.
    db = sqlite3.connect(sisa_root / "catalog.sqlite")
    with db:
        db.execute(
            "UPDATE queue SET params = ? WHERE request_id = ?",
            (json.dumps({"backend": "ray", "ray_address": EVIL}), sub.request_id),
        )
    db.close()
    with DeletionService(sisa_root) as svc:
        loads = []
        svc.workspace.load_model = lambda *a, **k: loads.append(a)  # nothing is loaded either
        svc.apply_pending()
        req = svc.request(sub.request_id)
        assert req["state"] == "failed"
        reason = req["entries"][-1]["payload"]["reason"]
        assert "InvalidParameterError" in reason and RAY_ENV in reason and EVIL in reason
        assert loads == [] and svc.workspace.log() == []
    assert no_ray == []


def test_an_allowed_ray_address_of_a_bad_form_is_refused(monkeypatch, no_ray):
    from unbake.backends import create_backend

    for address in ("evil.example", "host:99999", "ray://", "x:1/../../y"):
        monkeypatch.setenv(RAY_ENV, address)
        with pytest.raises(InvalidParameterError, match="'ray_address'"):
            create_backend("ray", ray_address=address)
    monkeypatch.setenv(RAY_ENV, EVIL)
    assert create_backend("ray", ray_address=EVIL).address == EVIL  # the operator's choice
    assert no_ray == []


UNBAKE_ERRORS = (IntegrityError, InvalidParameterError)
SISA_PARAMS = {"aggregation": "vote", "assignment": "subject", "shards": 2, "slices": 1}


def test_a_stored_backend_is_refused_on_load_not_a_type_error(sisa_root, no_ray):
    stored = {**SISA_PARAMS, "backend": "local"}
    _forge(sisa_root, keyed=True, strategy_params=json.dumps(stored))
    before = workspace_snapshot(sisa_root)
    with Workspace.open(sisa_root) as ws:
        ids = [str(i) for i in ws.active_and_forgotten()[0].ids[:1]]
        for method in ("sisa", "retrain"):
            with pytest.raises(IntegrityError) as info:
                apply.forget(ws, ids=ids, method=method)
            _one_line(info, "'backend'", "never stored with a model")
        assert ws.log() == []
    assert workspace_snapshot(sisa_root) == before and no_ray == []


@pytest.mark.parametrize(
    ("strategy_params", "message"),
    [
        ({**SISA_PARAMS, "backend": "ray", "ray_address": EVIL}, RAY_ENV),
        ({**SISA_PARAMS, "shards": "two"}, "'shards' parameter of sisa"),
        ({**SISA_PARAMS, "bogus": 1}, "has no parameter 'bogus'"),
        (["shards"], "must be a mapping"),
    ],
)
def test_tampered_strategy_parameters_get_one_line_errors(
    sisa_root, no_ray, strategy_params, message
):
    _forge(sisa_root, keyed=True, strategy_params=json.dumps(strategy_params))
    with Workspace.open(sisa_root) as ws, pytest.raises(UNBAKE_ERRORS) as info:
        ws.load_model()
    _one_line(info, message)
    assert no_ray == []


def test_a_recomputed_sha256_does_not_pass_without_the_secret(sisa_root):
    # The spec is one the workspace would trust: only the keyed digest gives it away.
    _forge(sisa_root, keyed=False, seed="7")
    with Workspace.open(sisa_root) as ws, pytest.raises(IntegrityError) as info:
        ws.load_model()
    _one_line(info, "keyed digest", "tampered")


def test_a_workspace_from_before_keyed_digests_is_upgraded_after_its_hashes_match(tmp_path):
    root = _workspace(tmp_path / "ws")
    with Workspace.open(root) as ws:
        good = ws.catalog.latest_active_model()["model_id"]
        bad = apply.train(ws, model="logreg", config=CFG, seed=1)
        bad_file = root / ws.catalog.model(bad)["checkpoint"]
    db = sqlite3.connect(root / "catalog.sqlite")
    db.executescript(";".join(UNDO_V8))
    db.close()
    bad_file.write_bytes(bad_file.read_bytes()[:-1] + b" ")  # damaged while on v7
    with Workspace.open(root) as ws:
        assert ws.catalog.meta("schema_version") == "9"
        assert ws.load_model(good).seed == 0  # keyed after its plain sha256 matched
        with pytest.raises(IntegrityError, match="no keyed digest") as info:
            ws.load_model(bad)
        _one_line(info)


def test_workspace_files_and_folders_are_private(tmp_path):
    from unbake.evaluation.bank import Recipe, train_bank
    from unbake.models import ModelSpec
    from unbake.workspace.certificates import issue_certificate
    from unbake.workspace.references import store_references

    old = os.umask(0o022)  # what a plain open() would make 0644 and mkdir 0755
    try:
        root = tmp_path / "ws"
        _workspace(root)
        with DeletionService(root) as svc:
            ids = [r["sample_id"] for r in svc.workspace.samples() if r["split"] == "train"]
            sub = svc.submit(sample_ids=ids[:1], method="finetune", params={"epochs": 1})
            assert svc.apply_pending() == [sub.request_id]
            issue_certificate(svc.workspace, sub.request_id)
            active, _ = svc.workspace.active_and_forgotten()
            recipe = Recipe(ModelSpec("logreg"), CFG, 10)
            store_references(svc.workspace, train_bank(active, recipe, seeds=[0]), "recipe")
        modes = {
            p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")
        }
        with Workspace.open(root):  # the catalog's WAL and shared memory, while open
            modes.update(
                {p.name: stat.S_IMODE(p.stat().st_mode) for p in root.glob("catalog.sqlite-*")}
            )
    finally:
        os.umask(old)
    names = {k.split("/")[0] for k in modes}
    assert names >= {"catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm", "secret.key"}
    assert names >= {"signing.key", "checkpoints", "certificates", ".lock"}
    assert sum(k.startswith("checkpoints/ref-") for k in modes) == 1
    expected = {k: 0o700 if (root / k).is_dir() else 0o600 for k in modes}
    assert {k: oct(v) for k, v in modes.items()} == {k: oct(v) for k, v in expected.items()}
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def _workspace(root, **train):
    """A small digits workspace (it reopens from its spec) with a logistic regression."""
    small = {"test_fraction": 0.05, "val_fraction": 0.05}
    with Workspace.create(root, dataset="digits", dataset_options=small) as ws:
        apply.train(ws, model="logreg", config=CFG, **train)
    return root


@pytest.mark.parametrize(
    ("spec", "cause"),
    [
        ({"name": "csv"}, "needs the parameter 'path'"),
        ({"name": "digits", "colour": "red"}, "has no parameter 'colour'"),
        ({"name": "nosuchdata"}, "Unknown dataset 'nosuchdata'"),
    ],
)
def test_a_hand_edited_dataset_spec_is_a_damaged_catalog(tmp_path, spec, cause):
    from tests.integration.test_cli import assert_one_line_error, run

    root = _workspace(tmp_path / "ws")
    db = sqlite3.connect(root / "catalog.sqlite")
    with db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'dataset'", (json.dumps(spec),))
    db.close()
    before = workspace_snapshot(root)
    for command in (("evaluate",), ("forget", "--ids", "digits-0001")):
        result = run(*command, "--workspace", root)
        assert_one_line_error(result, "is damaged: the dataset spec does not load", cause)
    assert workspace_snapshot(root) == before


def test_a_queued_row_with_junk_parameters_is_rejected_and_the_batch_goes_on(tmp_path):
    root = _workspace(tmp_path / "ws")
    with DeletionService(root) as svc:
        ids = [r["sample_id"] for r in svc.workspace.samples() if r["split"] == "train"]
        bad = svc.submit(sample_ids=ids[:1], method="finetune", params={"epochs": 1})
        good = svc.submit(sample_ids=ids[1:2], method="finetune", params={"epochs": 1})
    db = sqlite3.connect(root / "catalog.sqlite")
    with db:
        db.execute("UPDATE queue SET params = '[1]' WHERE request_id = ?", (bad.request_id,))
    db.close()
    with DeletionService(root) as svc:
        assert svc.apply_pending() == [good.request_id]
        refused = svc.request(bad.request_id)
        assert refused["state"] == "rejected" and svc.request(good.request_id)["state"] == "applied"
        reason = refused["entries"][-1]["payload"]["reason"]
        assert "must be a mapping" in reason and "\n" not in reason
        assert svc.queue_depth() == 0
