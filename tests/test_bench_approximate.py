"""``unbake bench approximate --quick``: both scenarios, every approximate method, the
issue's summary keys and targets, written as JSON without NaN."""

import json

import pytest

from unbake.bench import run_benchmark
from unbake.bench.approximate import TARGETS, approximate_methods

SUMMARY_KEYS = {
    "best_method",
    "best_avg_gap",
    "best_time_fraction",
    "max_time_fraction",
    "original_avg_gap",
    "noise_floor_avg_gap",
    "class_best_method",
    "class_best_avg_gap",
    "class_best_fa",
    "max_ta_drop_points",
}


@pytest.mark.slow  # about 10 s of CPU: 20 s on the shared machine
def test_quick_approximate_benchmark(tmp_path):
    out = tmp_path / "approximate.json"
    result = run_benchmark("approximate", quick=True, out=out)
    text = out.read_text()
    assert "NaN" not in text and json.loads(text)["summary"] == result["summary"]
    summary = result["summary"]
    assert set(summary) >= SUMMARY_KEYS
    assert set(TARGETS) <= set(summary["targets_met"])
    methods = approximate_methods()
    assert "retrain" not in methods and "sisa" not in methods and "neggrad_plus" in methods
    for scenario in ("random", "class"):
        table = {r["method"]: r for r in result["rows"] if r["scenario"] == scenario}
        assert set(table) == {"retrain", "original", "retrain_seed", *methods}
        assert table["retrain"]["avg_gap"] == 0.0  # the reference rerun is bitwise itself
        assert {"fa", "ra", "ta", "mia", "mia_efficacy", "time_fraction"} <= set(table["scrub"])
    cls = {r["method"]: r for r in result["rows"] if r["scenario"] == "class"}
    assert cls["original"]["fa"] > 90 and cls["retrain"]["fa"] < 5  # the class scenario's frame
    assert summary["best_method"] in methods and summary["class_best_method"] in methods
    assert summary["best_avg_gap"] <= summary["original_avg_gap"]
