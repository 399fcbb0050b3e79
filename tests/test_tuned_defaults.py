"""Tuned defaults below bench/: the packaged table, the lookup `unbake forget` uses, what
the request records, `unbake methods`, and bad tables refused in one line."""

import hashlib
import json
from pathlib import Path
from unittest.mock import ANY

import pytest
from typer.testing import CliRunner

from unbake.cli import app
from unbake.exceptions import InvalidParameterError
from unbake.methods.tuned import (
    ENV_VAR,
    SCENARIOS,
    RequestContext,
    defaults_path,
    read_table,
    resolve,
    tuned_defaults,
)
from unbake.workspace import Workspace

runner = CliRunner()


def entry(params, study="benchmarks/tuning/finetune-random.json", where=("digits", "logreg")):
    return {
        "params": params,
        "study": study,
        "study_sha256": "0" * 64,
        "dataset": where[0],
        "model": where[1],
        "score": 0.8,
        "original_score": 2.5,
        "best_trial": 7,
        "trials": 20,
        "seed": 0,
    }


TABLE = {
    "format": 1,
    "methods": {
        "finetune": {
            "random": entry({"lr": 0.002, "epochs": 1}),
            "class": entry({"lr": 0.0005, "epochs": 2}, "benchmarks/tuning/finetune-class.json"),
        }
    },
}


@pytest.fixture
def table(tmp_path, monkeypatch):
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps(TABLE))
    monkeypatch.setenv(ENV_VAR, str(path))
    return path


def resolve_params(method, params, scenario, **kw):
    return resolve(method, RequestContext("digits", "logreg", scenario), params, **kw)


def test_user_params_override_the_tuned_defaults_of_the_requests_scenario(table):
    params, origin = resolve_params("finetune", {"lr": 0.01}, "random")
    assert params == {"epochs": 1, "lr": 0.01}
    tuned = origin["tuned_defaults"]
    assert tuned["applied"] == {"epochs": 1} and tuned["overridden"] == ["lr"]
    assert tuned["study"] == "benchmarks/tuning/finetune-random.json"
    assert "digits" in tuned["summary"] and "trial 7 of 20" in tuned["summary"]
    assert origin["defaults"]["source"] == "packaged"
    assert resolve_params("finetune", {}, "class")[0] == {"lr": 0.0005, "epochs": 2}
    params, origin = resolve_params("finetune", {"lr": 1e-3, "epochs": 3}, "class")
    assert params == {"lr": 1e-3, "epochs": 3}  # the user set every tuned knob
    assert origin == {"defaults": {"source": "given", "why": ANY, "skipped": 0}}
    params, origin = resolve_params("finetune", {}, "random", use_tuned=False)
    assert params == {} and origin["defaults"]["source"] == "code"
    params, origin = resolve_params("neggrad", {}, "random")  # no entry: code defaults
    assert params == {} and "neggrad has no tuned defaults" in origin["defaults"]["why"]


@pytest.mark.parametrize(
    ("dataset", "model"), [("fashion-mnist", "logreg"), ("digits", "cnn"), ("digits", None)]
)
def test_tuned_defaults_apply_only_where_dataset_and_architecture_match(table, dataset, model):
    params, origin = resolve("finetune", RequestContext(dataset, model, "class"), {"lr": 0.1})
    assert params == {"lr": 0.1}  # the code's defaults under the user's own
    assert "tuned_defaults" not in origin
    why = origin["defaults"]["why"]
    assert origin["defaults"] == {"source": "code", "why": why, "skipped": 1}
    assert "were tuned on digits with logreg, not on" in why
    assert "unbake tune --workspace DIR --method finetune --scenario class" in why


def test_the_workspace_table_is_preferred_over_the_packaged_one(table):
    own = {"finetune": {"class": entry({"lr": 0.003}, "tuning/x.json")}}
    ctx = RequestContext("digits", "logreg", "class", table=own, table_source="ws/tuning")
    params, origin = resolve("finetune", ctx)
    assert params == {"lr": 0.003} and origin["defaults"]["source"] == "workspace"
    assert origin["tuned_defaults"]["source"] == "workspace"
    # Its entry for another architecture does not apply; the packaged one still can.
    own = {"finetune": {"class": entry({"lr": 0.003}, "tuning/x.json", ("digits", "mlp"))}}
    ctx = RequestContext("digits", "logreg", "class", table=own)
    params, origin = resolve("finetune", ctx)
    assert params == {"lr": 0.0005, "epochs": 2} and origin["defaults"]["source"] == "packaged"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "Cannot read tuned defaults"),
        (json.dumps({"format": 9, "methods": {}}), "not a format-1 table"),
        (
            json.dumps({"format": 1, "methods": {"finetune": {"random": entry({"lrr": 1.0})}}}),
            "name 'lrr', which finetune no longer has",
        ),
        (
            json.dumps({"format": 1, "methods": {"finetune": {"random": entry({"lr": -1.0})}}}),
            "The 'lr' parameter of finetune must be",
        ),
        (
            json.dumps({"format": 1, "methods": {"finetune": {"random": {"params": {}}}}}),
            "are malformed",
        ),
    ],
)
def test_a_bad_table_is_refused_with_its_cause_and_fix(tmp_path, text, fragment):
    path = tmp_path / "tuned.json"
    path.write_text(text)
    with pytest.raises(InvalidParameterError, match=fragment):
        tuned_defaults("finetune", "random", path=path)


def test_the_packaged_table_ships_in_the_wheel_and_every_entry_is_valid(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    path = defaults_path()
    assert path.is_file() and path.parent.name == "methods" and path.parent.parent.name == "unbake"
    for method, scenarios in read_table(path).items():
        for scenario in scenarios:
            assert scenario in SCENARIOS
            assert tuned_defaults(method, scenario) is not None  # parses and validates
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    package_data = pyproject.split("[tool.setuptools.package-data]")[1].split("\n[")[0]
    assert '"methods/tuned_defaults.json"' in package_data


# --- through the CLI ------------------------------------------------------------------


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "ws"
    train = ["train", "--dataset", "digits", "--model", "logreg", "--epochs", "2", "-w", ws]
    assert run(*train).exit_code == 0
    return ws


def recorded(ws):
    with Workspace.open(ws) as w:
        return w.catalog.requests()[-1]


def test_forget_uses_the_tuned_defaults_says_so_and_records_them(table, workspace):
    res = run("forget", "--ids", "digits-0001", "--method", "finetune", "-w", workspace)
    assert res.exit_code == 0, res.output
    assert "tuned defaults {'lr': 0.002, 'epochs': 1}" in res.stdout
    assert "benchmarks/tuning/finetune-random.json" in res.stdout
    rec = recorded(workspace)
    assert rec["params"]["lr"] == 0.002 and rec["params"]["epochs"] == 1  # what ran
    info = rec["info"]
    assert info["tuned_defaults"]["scenario"] == "random"
    assert info["tuned_defaults"]["applied"] == {"lr": 0.002, "epochs": 1}
    # A class request takes the class-wise defaults; --param overrides them, and says so.
    res = run(
        "forget", "--class", "3", "--method", "finetune", "--param", "epochs=1", "-w", workspace
    )
    assert res.exit_code == 0, res.output
    assert "finetune-class.json" in res.stdout and "--param set epochs" in res.stdout
    info = recorded(workspace)["info"]
    assert info["tuned_defaults"]["applied"] == {"lr": 0.0005}
    assert info["tuned_defaults"]["overridden"] == ["epochs"]


def test_no_tuned_keeps_the_code_defaults(table, workspace):
    res = run("forget", "--ids", "digits-0001", "--method", "finetune", "--no-tuned", "--json",
              "-w", workspace)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "tuned_defaults" not in json.loads(res.stdout)["info"]


def test_a_bad_table_stops_forget_in_one_line_with_the_workspace_unchanged(table, workspace):
    table.write_text("{not json")
    before = {
        p: hashlib.sha256(p.read_bytes()).digest() for p in workspace.rglob("*") if p.is_file()
    }
    res = run("forget", "--ids", "digits-0001", "--method", "finetune", "-w", workspace)
    assert res.exit_code == 2 and res.stderr.startswith("error: Cannot read tuned defaults")
    assert len(res.stderr.strip().splitlines()) == 1
    after = {
        p: hashlib.sha256(p.read_bytes()).digest() for p in workspace.rglob("*") if p.is_file()
    }
    assert after == before


def test_methods_lists_the_scenarios_a_method_is_tuned_for(table):
    rows = {r["method"]: r for r in json.loads(run("methods", "--json").stdout)["methods"]}
    assert set(rows["finetune"]["tuned_defaults"]) == {"random", "class"}
    assert rows["finetune"]["tuned_defaults"]["class"]["params"] == {"lr": 0.0005, "epochs": 2}
    assert rows["neggrad"]["tuned_defaults"] == {}
    table_text = run("methods").stdout
    assert "tuned for" in table_text and "random, class on" in table_text
    assert "digits/logreg" in table_text  # where they apply


def test_write_defaults_needs_the_study_it_cites(table):
    before = table.read_bytes()
    res = run("tune", "--method", "finetune", "--write-defaults")
    assert res.exit_code == 2 and "--write-defaults needs --out" in res.stderr
    assert table.read_bytes() == before


def test_the_worker_starts_from_the_tuned_defaults_as_forget_does(table, workspace):
    from unbake.service import DeletionService

    svc = DeletionService(workspace)
    try:
        sub = svc.submit(sample_ids=["digits-0001"], method="finetune")
        assert svc.apply_pending() == [sub.request_id]
    finally:
        svc.close()
    rec = recorded(workspace)
    assert rec["request_id"] == sub.request_id
    assert rec["params"]["lr"] == 0.002 and rec["params"]["epochs"] == 1
    assert rec["info"]["tuned_defaults"]["applied"] == {"lr": 0.002, "epochs": 1}
