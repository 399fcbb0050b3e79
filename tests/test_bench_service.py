"""`unbake bench service` parts: an acknowledged request survives kill -9 of the server."""

import pytest

pytest.importorskip("uvicorn")

from unbake.bench.service import _kill9_run, _workspace


@pytest.mark.slow
def test_acknowledged_requests_survive_kill9_of_the_server(tmp_path):
    root = tmp_path / "ws"
    train, tokens = _workspace(root)
    for run in (1, 4, 8):  # killed after 20 %, 50 % and 90 % of the answers
        out = _kill9_run(root, train, tokens["submitter"], run, 300, 16)
        assert out["acknowledged_before_kill"] > 0, out
        assert out["lost"] == 0 and out["duplicated"] == 0, out
        assert out["requests_after_retry"] == 300


@pytest.mark.slow
def test_the_accept_sweep_reports_every_level_and_the_summary_picks_one(tmp_path):
    from unbake.bench.service import _accept_sweep, best_level

    root = tmp_path / "ws"
    train, tokens = _workspace(root)
    rows = _accept_sweep(root, train, tokens["submitter"], 60, (2, 8), "raw")
    assert [r["concurrency"] for r in rows] == [2, 8]
    assert all(r["accepted"] == 60 and r["p50_accept_ms"] <= r["p99_accept_ms"] for r in rows)
    pick, met = best_level(rows)
    assert pick in rows and met == (
        pick["p99_accept_ms"] <= 50 and pick["accepted_per_second"] >= 1000
    )


def test_enumeration_band_sees_one_answer_for_every_kind(tmp_path):
    from unbake.bench.service import enumeration_band

    band = enumeration_band(tmp_path / "ws", rounds=2)
    assert band["same_answers"] is True
    kinds = {r["kind"] for r in band["rows"]}
    assert kinds == {
        f"{state} {what}"
        for state in ("present", "absent", "forgotten")
        for what in ("subject", "IDs")
    }
    assert all(
        r["submissions"] == 4 and r["answers"] == [[202, ["duplicate", "request_id", "state"]]]
        for r in band["rows"]
    )
