"""``unbake bench tradeoff``: the JSON's shape and meaning on a tiny configuration.

300 digits, a 3-epoch MLP, K = 8 references, three methods (one exact, one certified,
one approximate), everything in this process (a pool start costs seconds); the
``--quick`` run itself, with the bank built on the local pool and on Ray, is the slow
test.
"""

import json

import pytest

from unbake import _json as strict_json
from unbake.bench import run_benchmark
from unbake.bench.tradeoff import TARGETS, TradeoffSetup, array_methods, run_tradeoff
from unbake.data import Dataset
from unbake.exceptions import InvalidParameterError
from unbake.report import render_html, render_markdown

#: The summary keys the issue names.
ISSUE_KEYS = {
    "original_class_auc",
    "original_random_tpr_at_1pct_fpr",
    "retrain_auc",
    "audit_seconds_32_refs",
    "ray_parallel_efficiency",
}
TINY = TradeoffSetup(
    train={"epochs": 3},
    references=8,
    family_references=8,
    timing_references=8,
    fit_workers=1,
    backends=(),
    reference_repeats=1,
    methods=("retrain", "finetune", "certified"),
)


@pytest.fixture(scope="module")
def tiny_result(request):
    ds = request.getfixturevalue("digits_small")
    small = Dataset(ds.name, ds.train.subset(slice(0, 300)), ds.test, ds.n_classes, ds.spec)
    return run_tradeoff(small, TINY)


def test_every_array_method_is_in_the_default_list():
    methods = array_methods()
    assert methods[0] == "retrain"
    assert {"sisa", "certified", "scrub", "finetune"} <= set(methods)
    assert "llm_ga" not in methods  # text-only methods have no row on arrays


def test_setup_is_checked():
    with pytest.raises(InvalidParameterError, match="timing_references"):
        TradeoffSetup(references=16, timing_references=8).check()
    with pytest.raises(InvalidParameterError, match="workers"):
        TradeoffSetup(workers=1).check()


def test_tradeoff_json_shape(tiny_result):
    result = tiny_result
    assert set(result) == {"dataset", "config", "rows", "summary"}
    parsed = json.loads(strict_json.dumps(result))  # strict JSON: no NaN anywhere
    assert parsed["config"]["references"] == 8
    table = {r["method"]: r for r in result["rows"] if r["part"] == "tradeoff"}
    assert set(table) == {"original", "retrain_seed", "retrain", "finetune", "certified"}
    assert [table[m]["guarantee"] for m in ("retrain", "certified", "finetune")] == [
        "exact",
        "certified",
        "none",
    ]
    for name, row in table.items():
        if name == "retrain_seed":  # the utility noise floor; retrain's audit is privacy's
            assert row["ulira_auc"] is None and row["audit"] is None
            continue
        assert 0.0 <= row["ulira_auc"] <= 1.0 and row["verdict"] in (
            "distinguishable",
            "indistinguishable",
        )
        assert row["references"] == 8 and row["audit_s"] > 0
        assert row["klom_forget"] >= 0 and 0 <= row["challenge_score"] <= 1.5
        assert {"mia", "mia_efficacy", "fa", "ra", "ta"} <= set(row)
        assert row["audit"]["ulira_auc"] == row["ulira_auc"]
    assert table["original"]["ta_retained"] == 100.0
    # the certified row is judged against its own logistic regression's retrain
    assert table["certified"]["model"] != table["finetune"]["model"]
    assert table["retrain"]["avg_gap"] == 0.0  # the reference rerun is bitwise itself


def test_bank_row_times_the_sequential_baseline(tiny_result):
    (bank,) = [r for r in tiny_result["rows"] if r["part"] == "bank"]
    assert bank["backend"] == "sequential" and bank["speedup"] == 1.0
    assert bank["references"] == 8 and bank["seconds"] > 0
    # the jobs' own seconds fit inside the build's wall time (one thread, in this process)
    assert 0 < bank["job_seconds"] <= bank["seconds"]


def test_tradeoff_summary(tiny_result):
    summary = tiny_result["summary"]
    assert set(summary) >= ISSUE_KEYS and set(TARGETS) == set(summary["targets_met"])
    # 8 references only: the 32-reference keys stay empty rather than mislabelled
    assert summary["audit_seconds_32_refs"] is None and summary["audit_seconds_k_refs"] > 0
    assert summary["targets_met"]["audit_seconds_32_refs"] is None  # not measured, not missed
    assert summary["ray_parallel_efficiency"] is None  # Ray was not asked for
    # a whole class never unlearned stands out even from a 3-epoch model
    assert summary["original_class_auc"] > 0.9
    assert summary["targets_met"]["original_class_auc"] == (summary["original_class_auc"] >= 0.95)
    assert summary["retrain_auc"] == next(
        r["ulira_auc"] for r in tiny_result["rows"] if r["method"] == "retrain"
    )


def test_tiny_result_renders(tiny_result):
    result = {"benchmark": "tradeoff", **tiny_result}
    page = render_html(result)
    md = render_markdown(result)
    for name in ("original", "retrain_seed", "retrain", "finetune", "certified"):
        assert f'<td class="text">{name}</td>' in page and f"| {name} |" in md


@pytest.mark.slow  # the --quick run: under 2 minutes alone on 2 cores
def test_quick_tradeoff_benchmark(tmp_path):
    out = tmp_path / "tradeoff.json"
    result = run_benchmark("tradeoff", quick=True, out=out)
    assert json.loads(out.read_text())["summary"] == result["summary"]
    summary = result["summary"]
    assert summary["audit_seconds_32_refs"] > 0 and summary["bank_seconds_32_refs"] > 0
    bank = {r["backend"]: r for r in result["rows"] if r["part"] == "bank"}
    assert set(bank) == {"sequential", "local", "ray"}
    for backend in ("local", "ray"):  # the same jobs give the same bits on every backend
        assert bank[backend]["bitwise_equal"] is True and bank[backend]["references"] == 32
        assert bank[backend]["efficiency"] == pytest.approx(bank[backend]["speedup"] / 2, 1e-3)
        assert 0 < bank[backend]["busy_fraction"] <= 1.0 and bank[backend]["job_slowdown"] > 0
    assert summary["ray_parallel_efficiency"] == bank["ray"]["efficiency"]
    assert summary["backends_bitwise_equal"] is True
    assert summary["original_class_auc"] >= 0.95
    methods = {r["method"] for r in result["rows"] if r["part"] == "tradeoff"}
    assert methods == {"original", "retrain_seed", *array_methods()}


def test_the_timing_note_counts_only_load_beyond_the_builds_own_workers():
    from unbake.bench.tradeoff import _timing_note

    alone = [
        {"backend": "sequential", "workers": 1, "load_after": 1.02},
        {"backend": "local", "workers": 2, "load_after": 1.78},
        {"backend": "ray", "workers": 2, "load_after": 2.02},
    ]
    assert _timing_note(alone).startswith("1-minute load at most 0.0 beyond")
    neighbour = [*alone[:2], {**alone[2], "load_after": 3.4}]
    assert "busy" in _timing_note(neighbour) and "1.4 beyond" in _timing_note(neighbour)
