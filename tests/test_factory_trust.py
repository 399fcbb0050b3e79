"""Only trusted model factories are ever called: from the command line or from a catalog."""

import hashlib
import json
import os

import pytest
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from tests.integration.test_cli import TRAIN, assert_one_line_error, run, snapshot
from unbake.exceptions import InvalidParameterError
from unbake.service import apply
from unbake.training import TrainConfig
from unbake.workspace import Workspace
from unbake.workspace.checkpoints import _metadata

TINY = "tests.test_training:make_tiny_net"


@pytest.fixture
def no_system_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", lambda *a, **k: calls.append(a) or 0)
    return calls


def test_cli_refuses_os_system_and_leaves_the_workspace_unchanged(tmp_path, no_system_calls):
    ws = tmp_path / "ws"
    assert run(*TRAIN, "--workspace", ws).exit_code == 0
    before = snapshot(ws)
    result = run("train", "--model", "os:system", "--epochs", "1", "--workspace", ws)
    assert_one_line_error(result, "'os:system' is not trusted", "UNBAKE_ALLOWED_FACTORIES=")
    assert snapshot(ws) == before and no_system_calls == []
    fresh = tmp_path / "fresh"  # creating a workspace with it leaves nothing behind either
    assert_one_line_error(run(*TRAIN[:3], "--model", "os:system", "--workspace", fresh))
    assert not fresh.exists() and no_system_calls == []


def _rewrite_spec(root, name: str) -> None:
    """What an attacker with write access and the workspace secret does: a checkpoint
    naming ``name``, its sha256 and keyed digest put in the catalog so that the hash
    checks pass (the factory check still stands)."""
    with Workspace.open(root) as ws:
        row = ws.catalog.latest_active_model()
        path = root / row["checkpoint"]
        data = path.read_bytes()
        meta = _metadata(data)
        meta["spec"] = json.dumps({"name": name, "params": {}})
        forged = st_save(st_load(data), metadata=meta)
        path.write_bytes(forged)
        digest = hashlib.sha256(forged).hexdigest()
        with ws.catalog.transaction() as cur:
            cur.execute(
                "UPDATE models SET sha256 = ?, mac = ? WHERE model_id = ?",
                (digest, ws.model_store.checkpoint_mac(row["model_id"], digest), row["model_id"]),
            )


def test_a_catalog_spec_naming_an_untrusted_factory_is_refused_on_load(
    tmp_path, monkeypatch, no_system_calls
):
    root = tmp_path / "ws"
    monkeypatch.setenv("UNBAKE_ALLOWED_FACTORIES", TINY)
    with Workspace.create(root, dataset="digits") as ws:
        apply.train(ws, model=TINY, config=TrainConfig.parse(epochs=1))
        assert ws.load_model().spec.name == TINY
    monkeypatch.delenv("UNBAKE_ALLOWED_FACTORIES")
    with Workspace.open(root) as ws, pytest.raises(InvalidParameterError, match="not trusted"):
        ws.load_model()  # trusted when trained, not in this process
    _rewrite_spec(root, "os:system")
    with Workspace.open(root) as ws:
        with pytest.raises(InvalidParameterError, match="'os:system' is not trusted"):
            ws.load_model()
        ids = list(ws.active_and_forgotten()[0].ids[:2])
        with pytest.raises(InvalidParameterError, match="not trusted"):
            apply.forget(ws, ids=ids, method="retrain")
        assert ws.log() == []
    assert no_system_calls == []


def test_a_hub_model_is_refused_from_the_command_line_and_from_a_catalog(tmp_path, monkeypatch):
    import unbake.models.hf as hf

    loads = []

    class Loading(Exception):
        pass

    def load(*args, **kwargs):
        loads.append(args)
        raise Loading

    monkeypatch.setattr(hf, "load_causal_lm", load)
    fresh = tmp_path / "fresh"
    result = run(*TRAIN[:3], "--model", "hf:someone/remote-code", "--workspace", fresh)
    assert_one_line_error(result, "'hf:someone/remote-code' is not a local folder")
    assert not fresh.exists()
    root = tmp_path / "ws"
    with Workspace.create(root, dataset="digits") as ws:
        apply.train(ws, model="logreg", config=TrainConfig.parse(epochs=1))
    _rewrite_spec(root, "hf:someone/remote-code")
    with Workspace.open(root) as ws:
        with pytest.raises(InvalidParameterError, match="not a local folder") as info:
            ws.load_model()
        assert "\n" not in str(info.value)
    assert loads == []
    # A folder on disk, or a name the operator allow-listed, is what unbake loads.
    monkeypatch.setenv("UNBAKE_ALLOWED_FACTORIES", "hf:someone/remote-code")
    with Workspace.open(root) as ws, pytest.raises(Loading):
        ws.load_model()
    assert loads == [("hf:someone/remote-code",)]
