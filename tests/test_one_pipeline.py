"""One request pipeline: the CLI, the Python API and REST (then the worker) make the same
decisions for the same request, write the same ledger entries, and produce the same model."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from unbake import TrainConfig, Workspace
from unbake.cli import app
from unbake.exceptions import InvalidParameterError
from unbake.service import DeletionService, apply
from unbake.service.deletion import drain
from unbake.service.planner import DeletionRequest, default_method, plan
from unbake.testing.snapshot import workspace_snapshot
from unbake.workspace.tokens import create_token

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from unbake.service.api import create_app

runner = CliRunner()
SISA = {"shards": 2, "slices": 1}


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """Two trained digits workspaces, a monolithic and a SISA logistic regression."""
    out = {}
    for strategy, params in (("monolithic", None), ("sisa", SISA)):
        root = tmp_path_factory.mktemp(strategy) / "ws"
        with Workspace.create(
            root, dataset="digits", dataset_options={"test_fraction": 0.05}
        ) as ws:
            apply.train(
                ws,
                model="logreg",
                config=TrainConfig.parse(epochs=1, batch_size=64),
                seed=0,
                strategy=strategy,
                strategy_params=params,
            )
            train = [r["sample_id"] for r in ws.samples() if r["split"] == "train"]
        out[strategy] = (root, train)
    return out


def _copy(template, tmp_path, name):
    root = tmp_path / name
    shutil.copytree(template, root)
    return root


def _weights_digest(root, model_id) -> str:
    """A digest of the model's weights alone (its checkpoint also names its own ID)."""
    with Workspace.open(root) as ws:
        state = ws.load_model(model_id).module.state_dict()
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().to(torch.float64).numpy().tobytes())
    return digest.hexdigest()


def _outcome(root):
    """What a path left: the ledger's states and what each entry decided, the request's
    method and parameters, and the resulting model's weights."""
    with Workspace.open(root) as ws:
        (request,) = ws.log()
        entries = ws.ledger(request_id=request["request_id"])
    states = [e["state"] for e in entries]
    decided = {
        "selector": entries[0]["payload"]["selector"],
        "applying": entries[states.index("applying")]["payload"]["method"],
        "n_samples": entries[states.index("applied")]["payload"]["n_samples"],
    }
    return {
        "states": states[: states.index("applied") + 1],
        "decided": decided,
        "method": request["method"],
        "params": request["params"],
        "tuned": request["info"].get("tuned_defaults"),
        "weights": _weights_digest(root, request["model_after"]),
    }


def _through_cli(root, ids, *extra):
    res = runner.invoke(app, ["forget", "--ids", ",".join(ids), "-w", str(root), *extra, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _through_python(root, ids, **extra):
    with DeletionService(root) as svc:
        return svc.forget(ids=ids, **extra)


def _through_rest(root, ids, **extra):
    with Workspace.open(root) as ws:
        token, _ = create_token(ws, "submitter")
    with DeletionService(root) as svc, TestClient(create_app(svc)) as client:
        body = {"sample_ids": list(ids), **extra}
        res = client.post("/v1/requests", json=body, headers={"Authorization": f"Bearer {token}"})
        assert res.status_code == 202, res.text
        assert drain(svc, once=True) == 1
        return res.json()["request_id"]


@pytest.mark.parametrize("strategy", ["monolithic", "sisa"])
def test_every_path_makes_the_same_decisions_and_the_same_model(templates, tmp_path, strategy):
    template, train = templates[strategy]
    ids = train[3:8]
    roots = {p: _copy(template, tmp_path, p) for p in ("cli", "python", "rest")}
    _through_cli(roots["cli"], ids)
    _through_python(roots["python"], ids)
    _through_rest(roots["rest"], ids)
    outcomes = {p: _outcome(r) for p, r in roots.items()}
    assert outcomes["cli"] == outcomes["python"] == outcomes["rest"], outcomes
    # The default method is the model's own exact family, on every path.
    assert outcomes["cli"]["method"] == {"monolithic": "retrain", "sisa": "sisa"}[strategy]
    assert outcomes["cli"]["states"] == ["received", "queued", "applying", "applied"]


def _through_the_queue(root, ids, **extra):
    with DeletionService(root) as svc:
        svc.submit(sample_ids=ids, **extra)
        assert drain(svc, once=True) == 1


def test_a_named_method_and_its_parameters_are_planned_alike(templates, tmp_path):
    # A submitter over REST cannot name a method (the policy decides); an operator filing
    # into the queue from Python can, and the worker then plans it as the CLI does.
    template, train = templates["monolithic"]
    ids = train[10:14]
    roots = {p: _copy(template, tmp_path, p) for p in ("cli", "python", "queue")}
    _through_cli(roots["cli"], ids, "--method", "finetune", "--param", "epochs=1")
    _through_python(roots["python"], ids, method="finetune", params={"epochs": 1})
    _through_the_queue(roots["queue"], ids, method="finetune", params={"epochs": 1})
    outcomes = {p: _outcome(r) for p, r in roots.items()}
    assert outcomes["cli"] == outcomes["python"] == outcomes["queue"], outcomes
    assert outcomes["cli"]["method"] == "finetune" and outcomes["cli"]["params"]["epochs"] == 1


def test_the_planner_decides_once():
    assert default_method("sisa") == "sisa"
    assert default_method("certified") == "certified"
    assert default_method("monolithic") == "retrain"
    request = DeletionRequest.of(sample_ids=["a"])
    assert plan(request, strategy="sisa").method == "sisa"
    assert plan(request, strategy="sisa", policy=object()).method is None  # the policy decides
    named = DeletionRequest.of(sample_ids=["a"], method="retrain")
    assert plan(named, strategy="sisa").method == "retrain"


def test_every_path_refuses_two_selectors(templates, tmp_path):
    template, train = templates["monolithic"]
    root = _copy(template, tmp_path, "ws")
    before = workspace_snapshot(root)
    res = runner.invoke(app, ["forget", "--ids", train[0], "--class", "3", "-w", str(root)])
    assert res.exit_code == 2 and "exactly one of" in res.stderr
    with pytest.raises(InvalidParameterError, match="exactly one of"):
        _through_python(root, [train[0]], subject="alice")
    with DeletionService(root) as svc, pytest.raises(InvalidParameterError, match="exactly one"):
        svc.submit(sample_ids=[train[0]], class_label=3)
    assert workspace_snapshot(root) == before
