"""``unbake bench scale --quick``: every size is trained and forgotten in a child process
under the memory cap, and the summary holds the figures the issue asks for. No timing is
asserted: the figures are facts of the run (shapes, sizes, the cap held)."""

import json
import sys

import pytest

from unbake.bench import run_benchmark
from unbake.bench.scale import CAP_MIB, FACTORS, QUICK_BASE_ROWS

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs RLIMIT_AS")


def test_quick_scale_benchmark(tmp_path):
    out = tmp_path / "scale.json"
    result = run_benchmark("scale", quick=True, out=out, data_dir=str(tmp_path / "data"))
    assert json.loads(out.read_text())["summary"] == result["summary"]
    summary = result["summary"]
    assert set(summary["peak_rss_mib_by_size"]) == {f"{f}x" for f in FACTORS}
    # The cap is an address-space limit, so no child's resident memory can pass it.
    assert all(0 < mib <= CAP_MIB for mib in summary["peak_rss_mib_by_size"].values())
    assert summary["throughput_ratio_vs_in_memory"] > 0
    row_bytes = 8 * 8 * 4  # digits: 1x8x8 float32
    assert summary["max_data_bytes"] >= max(FACTORS) * QUICK_BASE_ROWS * row_bytes
    phases = {(r["factor"], r["phase"]) for r in result["rows"]}
    for factor in FACTORS:
        for phase in ("train", "retrain", "neggrad_plus", "random_label", "sisa_train", "sisa"):
            assert (factor, phase) in phases
    process = [r for r in result["rows"] if r["phase"] == "process"]
    assert [r["rows"] for r in process] == [f * QUICK_BASE_ROWS for f in FACTORS]
    assert {r["io"] for r in process} == {"pread"}  # under the cap the rows are pread
    retrain = [r for r in result["rows"] if r["phase"] == "retrain"]
    assert all(r["rows"] == result["config"]["retain_budget"] for r in retrain)
