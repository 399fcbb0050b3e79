"""``unbake tune``: seeded, scored on validation, the best within budget, atomic JSON;
and the bad inputs of issue 7, each one line and exit 2 with the workspace unchanged."""

import dataclasses
import hashlib
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from unbake.bench import tune as tune_module
from unbake.bench.tune import tune, write_defaults
from unbake.cli import app
from unbake.data import load_dataset
from unbake.exceptions import InvalidParameterError
from unbake.methods import METHODS, Knob, Unlearner, UnlearnTask
from unbake.methods.tuned import tuned_defaults
from unbake.testing import tiny_dataset
from unbake.testing.snapshot import workspace_snapshot
from unbake.training import TrainConfig

runner = CliRunner()
CONFIG = TrainConfig.parse(epochs=3)
FIXED = {"epochs": 1}  # one pass a trial keeps the test fast; lr and beta are searched


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def study(digits):
    return tune(digits, "neggrad_plus", trials=3, config=CONFIG, time_fraction=1e6, fixed=FIXED)


def test_same_seed_same_study(digits, study):
    again = tune(digits, "neggrad_plus", trials=3, config=CONFIG, time_fraction=1e6, fixed=FIXED)
    strip = [{k: t[k] for k in ("number", "params", "score", "state")} for t in study.trials]
    assert strip == [
        {k: t[k] for k in ("number", "params", "score", "state")} for t in again.trials
    ]
    assert len({json.dumps(t["params"]) for t in study.trials}) == 3  # the sampler explores
    assert set(study.trials[0]["params"]) == {"lr", "beta", "retain_samples"}  # not epochs


def test_best_is_min_within_time_budget(study):
    scores = [t["score"] for t in study.trials if t["state"] == "complete"]
    assert study.best["score"] == min(scores)
    # Tighten the budget after the fact: the same rule now leaves out the slow trials.
    fastest = min(study.trials, key=lambda t: t["seconds"])
    for t in study.trials:
        t["state"] = "complete" if t is fastest else "pruned"
    assert study.best["number"] == fastest["number"]


def test_scored_on_validation_never_test(digits, monkeypatch):
    seen = []
    real = tune_module.evaluate

    def spy(model, forget, retain, held_out, **kw):
        seen.append(held_out)
        return real(model, forget, retain, held_out, **kw)

    monkeypatch.setattr(tune_module, "evaluate", spy)
    tune(digits, "fisher", trials=1, config=CONFIG, time_fraction=1e6)
    assert seen and all(s is digits.val for s in seen)


def test_over_budget_trials_are_pruned_and_never_best(digits):
    s = tune(digits, "neggrad_plus", trials=2, config=CONFIG, time_fraction=1e-9, fixed=FIXED)
    assert [t["state"] for t in s.trials] == ["pruned", "pruned"]
    assert s.best is None and json.loads(s.to_json())["best"] is None
    # stopped at the budget (after its first step), not run to the end and then scored
    assert all(t["reason"].startswith("stopped at") and t["score"] is None for t in s.trials)


def test_a_time_budget_stops_every_long_loop_and_nothing_outside_it():
    from unbake._budget import TimeBudgetExceeded, check_time_budget, time_budget
    from unbake.methods._blocks import diag_fisher
    from unbake.training import fit

    ds = tiny_dataset()
    trained = fit(ds.train, n_classes=10, model="mlp", config=CONFIG, seed=0)
    X, y = ds.train.tensors()
    check_time_budget()  # no budget set: a no-op
    with time_budget(0.0):
        with pytest.raises(TimeBudgetExceeded, match="over the time budget"):
            fit(ds.train, n_classes=10, model="mlp", config=CONFIG, seed=0)
        with pytest.raises(TimeBudgetExceeded):
            diag_fisher(trained.module, X, y)
        with pytest.raises(TimeBudgetExceeded):
            METHODS.create("influence").unlearn(
                UnlearnTask(trained, *ds.train.split(ds.train.ids[:5])), seed=0
            )
    check_time_budget()  # the block's budget is gone with the block
    with time_budget(3600.0):  # a generous budget changes nothing
        again = fit(ds.train, n_classes=10, model="mlp", config=CONFIG, seed=0)
    before, after = trained.module.state_dict(), again.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_json_atomic_and_without_nan(study, tmp_path, monkeypatch):
    path = tmp_path / "study.json"
    study.save(path)
    data = json.loads(path.read_text())
    assert data["best"]["score"] == study.best["score"]
    assert data["reference"]["method"] == "retrain" and data["trials"]
    assert {"dataset", "scenario", "seed", "load_average", "search_space"} <= set(data)
    # A failed write leaves the previous file whole and no stray temporary file.
    before = path.read_bytes()
    monkeypatch.setattr("os.replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        study.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["study.json"]
    monkeypatch.undo()
    # A non-finite score is written as null, never NaN.
    study.trials.append({**study.trials[0], "number": 99, "score": None, "state": "pruned"})
    text = study.to_json()
    assert "NaN" not in text and "Infinity" not in text
    assert not any(isinstance(v, float) and math.isnan(v) for v in study.trials[0].values())


def test_write_defaults_records_the_best_trial_and_cites_the_study(study, tmp_path):
    # The rule on the original's score has its own test below; here the best beats it.
    study = dataclasses.replace(study, original_score=study.best["score"] + 0.5)
    table = tmp_path / "tuned.json"
    assert tuned_defaults("neggrad_plus", "random", path=table) is None  # no table yet
    study.save(tmp_path / "neggrad_plus-random.json")
    entry = write_defaults(study, tmp_path / "neggrad_plus-random.json", path=table)
    assert entry.params == {**FIXED, **study.best["params"]}  # pinned knobs included
    assert (
        entry.study_sha256
        == hashlib.sha256((tmp_path / "neggrad_plus-random.json").read_bytes()).hexdigest()
    )
    assert tuned_defaults("neggrad_plus", "random", path=table) == entry
    assert tuned_defaults("neggrad_plus", "class", path=table) is None  # per scenario
    # A study that is not the one saved there is refused; the table is unchanged.
    before = table.read_bytes()
    (tmp_path / "other.json").write_text(json.dumps({"best": None}))
    with pytest.raises(InvalidParameterError, match="does not hold this study"):
        write_defaults(study, tmp_path / "other.json", path=table)
    assert table.read_bytes() == before


@pytest.mark.parametrize("margin", [0.0, 0.25, None])
def test_a_best_that_does_not_beat_doing_nothing_writes_no_defaults(study, tmp_path, margin):
    # margin: how much worse than the original the best trial is (None: original unknown)
    worse = study.best["score"] - margin if margin is not None else None
    s = dataclasses.replace(study, original_score=worse)
    s.save(tmp_path / "s.json")
    with pytest.raises(InvalidParameterError, match="does not beat doing nothing"):
        write_defaults(s, tmp_path / "s.json", path=tmp_path / "tuned.json")
    assert not (tmp_path / "tuned.json").exists()


def test_a_study_without_a_best_writes_no_defaults(digits, tmp_path):
    s = tune(digits, "neggrad_plus", trials=1, config=CONFIG, time_fraction=1e-9, fixed=FIXED)
    s.save(tmp_path / "s.json")
    with pytest.raises(InvalidParameterError, match="no best setting"):
        write_defaults(s, tmp_path / "s.json", path=tmp_path / "tuned.json")
    assert not (tmp_path / "tuned.json").exists()


def test_the_reference_is_cached_once_and_reused_across_methods(tmp_path, monkeypatch):
    digits = tiny_dataset()
    fits = []
    real_fit = tune_module.fit
    monkeypatch.setattr(tune_module, "fit", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    kw = {"trials": 1, "config": CONFIG, "time_fraction": 1e6, "cache_dir": tmp_path}
    first = tune(digits, "neggrad_plus", fixed=FIXED, **kw)
    other = tune(digits, "finetune", fixed=FIXED, **kw)
    assert len(fits) == 1  # one original (and one reference) for both studies
    assert first.reference["cache"]["reused"] is False and other.reference["cache"]["reused"]
    for key in ("timing", "evaluation_on_validation", "seconds"):
        assert other.reference[key] == first.reference[key]  # read back, timing included
    assert other.original_score == first.original_score
    # A damaged checkpoint is never read: the pair is retrained (to the same bits).
    for f in tmp_path.glob("reference-random-seed0-*-ref.safetensors"):
        f.write_bytes(b"damaged")
    redone = tune(digits, "neggrad_plus", fixed=FIXED, **kw)
    assert len(fits) == 2 and redone.reference["cache"]["reused"] is False
    assert (
        redone.reference["evaluation_on_validation"] == first.reference["evaluation_on_validation"]
    )
    assert [t["score"] for t in redone.trials] == [t["score"] for t in first.trials]


def test_search_space_edges_checked_against_constraints():
    for name in METHODS.available():
        cls = METHODS.get(name)
        assert set(cls.search_space) <= set(cls._parameter_constraints), name
    with pytest.raises(InvalidParameterError, match="'lr' parameter"):

        class Bad(Unlearner):
            name = "bad"
            _parameter_constraints = METHODS.get("finetune")._parameter_constraints
            search_space = {"lr": Knob(-1.0, 1.0)}


# --- bad input at the CLI ------------------------------------------------------------


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    for f in fragments:
        assert f in err, err


def snapshot(root):
    return workspace_snapshot(root)


TUNE = ["tune", "--method", "neggrad_plus", "--epochs", "1"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--scenario", "class", "--forget-class", "Sandal"], "Class 'Sandal' does not exist"),
        (["--param", "beta=2"], "The 'beta' parameter of neggrad_plus must be a float in [0, 1]"),
        (["--trials", "0"], "at least 1 trial"),
        (["--scenario", "sideways"], "scenario must be one of"),
    ],
)
def test_tune_bad_input_writes_nothing(tmp_path, args, fragment):
    out = tmp_path / "study.json"
    one_line_error(run(*TUNE, *args, "--out", out), fragment)
    assert not out.exists()


@pytest.fixture
def csv_workspace(tmp_path):
    lines = ["uid,f1,f2,target"]
    lines += [f"u{i},{(i % 7) / 7},{(i % 3) + 0.1 * (i % 5)},{'ABC'[i % 3]}" for i in range(90)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    ws = tmp_path / "ws"
    train = ["train", "--dataset", "csv", "--path", tmp_path / "d.csv", "--label", "target"]
    result = run(*train, "--id-column", "uid", "--model", "logreg", "--epochs", "1", "-w", ws)
    assert result.exit_code == 0, result.output
    listed = json.loads(run("samples", "-w", ws, "--json").stdout)["samples"]
    ids = tmp_path / "all.txt"
    ids.write_text("\n".join(s["sample_id"] for s in listed if s["split"] == "train"))
    return ws, ids


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--class", "Sandal"], "Class 'Sandal' does not exist"),
        (["--class", "A", "--method", "finetune", "--param", "lr=-1"], "'lr' parameter"),
        (["--method", "finetune"], "(and it reads the retain set)"),
        (["--method", "neggrad"], "removes every remaining training sample"),
    ],
)
def test_forget_bad_input_leaves_workspace(csv_workspace, args, fragment):
    ws, ids = csv_workspace
    if "--class" not in args:
        args = ["--ids-file", ids, *args]
    before = snapshot(ws)
    one_line_error(run("forget", *args, "-w", ws), fragment)
    assert snapshot(ws) == before
