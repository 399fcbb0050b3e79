"""`unbake bench approximate` is resumable: finished (scenario, seed) cells are cached
under a hash of their configuration and read back; the `retrain` row reuses the
reference when its repeats were bitwise identical."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

import unbake
from unbake.bench import approximate, code_info, run_benchmark
from unbake.bench.cache import cell_path, code_fingerprint, read_cell, write_cell
from unbake.cli import app
from unbake.evaluation.compare import compare_methods
from unbake.exceptions import InvalidParameterError
from unbake.methods.retrain import Retrain
from unbake.methods.tuned import ENV_VAR
from unbake.testing import tiny_dataset
from unbake.training import TrainConfig

TINY = TrainConfig.parse(epochs=3)


@pytest.fixture
def retrains(monkeypatch):
    calls = []
    real = Retrain._unlearn
    monkeypatch.setattr(Retrain, "_unlearn", lambda self, t, s: calls.append(s) or real(self, t, s))
    return calls


def rows(report):
    return {r["method"]: r for r in report.to_dict()["rows"]}


def test_the_retrain_row_is_the_reference_when_its_repeats_agree(retrains):
    report = compare_methods(tiny_dataset(), methods=["retrain"], config=TINY, reference_repeats=2)
    assert len(retrains) == 3  # two timed repeats and retrain_seed: no fourth identical run
    row = rows(report)["retrain"]
    assert row["avg_gap"] == 0.0 and row["speedup"] == 1.0
    assert "bitwise-identical" in row["reused"] and report.reference_timing["bitwise_repeatable"]


@pytest.mark.slow  # two more comparisons: about 8 s on the shared machine
@pytest.mark.parametrize(
    ("repeats", "params"), [(1, {}), (2, {"retrain": {"epochs": 2}})], ids=["one", "other"]
)
def test_the_retrain_row_reruns_without_proof_or_with_other_params(retrains, repeats, params):
    # One repeat proves nothing about determinism; other parameters are another procedure.
    report = compare_methods(
        tiny_dataset(), methods=["retrain"], params=params, config=TINY, reference_repeats=repeats
    )
    assert len(retrains) == repeats + 2 and "reused" not in rows(report)["retrain"]


# --- resumable cells -----------------------------------------------------------------


@pytest.fixture
def fake_bench(monkeypatch):
    """The benchmark on a tiny dataset with a counted, instant stand-in for each cell."""
    calls = []

    def fake_compare(ds, *, methods, params, seed, forget_fraction=None, forget_class=None, **kw):
        calls.append((forget_class is not None, seed, json.dumps(params, sort_keys=True)))
        row = {"fa": 1.0 + seed, "ra": 2.0, "ta": 3.0, "mia": 50.0, "mia_efficacy": 9.0}
        made = [
            {"method": m, **row, "avg_gap": 0.0 if m == "retrain" else 1.0 + i, "seconds": 1.0,
             "speedup": 2.0}
            for i, m in enumerate(["retrain", "original", "retrain_seed", *methods[1:]])
        ]  # fmt: skip
        return type("C", (), {"to_dict": lambda self: {"rows": made, "attack_strength": 51.0}})()

    monkeypatch.setattr(approximate, "compare_methods", fake_compare)
    monkeypatch.setattr(approximate, "load_dataset", lambda *a, **k: tiny_dataset())
    monkeypatch.setattr(approximate, "approximate_methods", lambda: ["finetune"])
    return calls


def test_a_rerun_reads_finished_cells_instead_of_recomputing(fake_bench, tmp_path):
    out = tmp_path / "approximate.json"
    first = run_benchmark("approximate", quick=True, out=out, seeds=[0, 1])
    assert len(fake_bench) == 4 and len(list((tmp_path / "approximate.cells").glob("*.json"))) == 4
    assert [c["cached"] for c in first["cells"]] == [False] * 4
    # The result and each cell say which code computed them.
    assert first["code"]["fingerprint"] == code_fingerprint() and first["memory"]["peak_rss_mib"]
    cell = json.loads(next((tmp_path / "approximate.cells").glob("*.json")).read_text())
    assert cell["code"]["fingerprint"] == code_fingerprint()
    again = run_benchmark("approximate", quick=True, out=out, seeds=[0, 1])
    assert len(fake_bench) == 4  # nothing recomputed
    assert again["rows"] == first["rows"] and again["summary"] == first["summary"]
    assert all(c["cached"] and c["written"] for c in again["cells"])
    # A subset reads only its own cells; a new seed computes only its new cells.
    part = run_benchmark("approximate", quick=True, out=out, seeds=[1], scenarios=["class"])
    assert len(fake_bench) == 4 and {r["scenario"] for r in part["rows"]} == {"class"}
    run_benchmark("approximate", quick=True, out=out, seeds=[2])
    assert len(fake_bench) == 6 and {c[1] for c in fake_bench[4:]} == {2}


def test_another_configuration_is_another_cell(fake_bench, tmp_path, monkeypatch):
    cells = tmp_path / "cells"
    first = run_benchmark("approximate", quick=True, seeds=[0], cache_dir=cells)
    assert len(fake_bench) == 2
    # New tuned defaults for this data and model change a method's parameters: both
    # scenarios' cells rerun (defaults tuned elsewhere would not apply).
    here = {"dataset": tiny_dataset().name, "model": first["config"]["model"]}
    table = {"finetune": {s: {"params": {"lr": 0.002}, "study": "s.json", "study_sha256": "0",
             **here, "score": 1.0, "original_score": 2.0,
             "best_trial": 0, "trials": 1, "seed": 0} for s in ("random", "class")}}  # fmt: skip
    (tmp_path / "tuned.json").write_text(json.dumps({"format": 1, "methods": table}))
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "tuned.json"))
    tuned = run_benchmark("approximate", quick=True, seeds=[0], cache_dir=cells)
    assert len(fake_bench) == 4 and '"lr": 0.002' in fake_bench[-1][2]
    assert tuned["config"]["tuned_params"]["class"]["finetune"]["applied"] == {"lr": 0.002}
    # Other training data is another cell, even under the same name and configuration.
    other = tiny_dataset()
    other.train.X[0, 0] += 1.0
    monkeypatch.setattr(approximate, "load_dataset", lambda *a, **k: other)
    run_benchmark("approximate", quick=True, seeds=[0], cache_dir=cells, scenarios=["random"])
    assert len(fake_bench) == 5 and fake_bench[-1][0] is False
    monkeypatch.setattr(approximate, "load_dataset", lambda *a, **k: tiny_dataset())
    # A damaged cell is recomputed, never trusted.
    for f in cells.glob("class-seed0-*.json"):
        f.write_text("{")
    run_benchmark("approximate", quick=True, seeds=[0], cache_dir=cells)
    assert len(fake_bench) == 6 and fake_bench[-1][0] is True


def test_a_cell_is_read_only_for_its_own_key(tmp_path):
    key = {"seed": 0, "methods": ["finetune"]}
    path = cell_path(tmp_path, "random-seed0", key)
    write_cell(path, key, {"comparison": {"rows": []}})
    assert read_cell(path, key)["comparison"] == {"rows": []}
    assert read_cell(path, {**key, "seed": 1}) is None
    assert cell_path(tmp_path, "random-seed0", {**key, "seed": 1}) != path


def test_bad_subsets_and_options_are_refused_before_any_work(fake_bench):
    with pytest.raises(InvalidParameterError, match="--scenarios must list"):
        run_benchmark("approximate", quick=True, scenarios=["sideways"])
    with pytest.raises(InvalidParameterError, match="--seeds must list"):
        run_benchmark("approximate", quick=True, seeds=[-1])
    with pytest.raises(InvalidParameterError, match="takes no --seeds"):
        run_benchmark("sisa", quick=True, seeds=[0])
    result = CliRunner().invoke(app, ["bench", "approximate", "--quick", "--seeds", "zero"])
    assert result.exit_code == 2 and "--seeds must be comma-separated" in result.stderr
    assert fake_bench == []


def test_the_cells_hash_the_code_that_computes_them_and_nothing_else():
    from unbake.bench.cache import fingerprinted_files

    files = fingerprinted_files()
    for computing in (
        "methods/scrub.py",
        "training/loop.py",
        "data/splits.py",
        "evaluation/compare.py",
        "models/__init__.py",
        "bench/approximate.py",
    ):
        assert computing in files
    for elsewhere in (
        "cli/data.py",
        "service/api.py",
        "service/deletion.py",
        "workspace/workspace.py",
        "report/render.py",
        "bench/service.py",
    ):
        assert elsewhere not in files  # a change there leaves every cached cell valid


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_code_info_names_the_fingerprint_and_the_commit_it_ran_from(monkeypatch):
    info = code_info()
    head = subprocess.run(
        ["git", "-C", str(Path(unbake.__file__).parent), "rev-parse", "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert info["fingerprint"] == code_fingerprint() and info["version"] == unbake.__version__
    assert info["commit"] == head and isinstance(info["dirty"], bool)
    # Without git (an installed wheel, say), the fingerprint alone says which code ran.
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(OSError("no git")))
    assert code_info() == {**info, "commit": None, "dirty": None}
