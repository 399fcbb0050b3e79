"""`unbake serve` supervises its worker: restarts with backoff, gives up on a crash loop,
stops it on exit; /healthz reports its state."""

import os
import signal
import sys
import time

import pytest

from unbake.service.supervisor import (
    WorkerSupervisor,
    describe_exit,
    stop_when_orphaned,
    worker_stop,
)

EXIT_3 = [sys.executable, "-c", "raise SystemExit(3)"]
SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_crash_loop_is_restarted_with_backoff_then_left_failed():
    sup = WorkerSupervisor(EXIT_3, max_exits=3, window=60, backoff=0.2)
    start = time.monotonic()
    with sup:
        assert sup.wait_for("failed", timeout=60)
        elapsed = time.monotonic() - start
        assert sup.health() == {"state": "failed", "restarts": 2, "last_exit_code": 3}
        assert sup.pid is None
    assert elapsed >= 0.2 + 0.4  # two waits, the second doubled (a lower bound: load only adds)
    assert sup.state == "failed"


def test_exits_spread_wider_than_the_window_are_always_restarted():
    sup = WorkerSupervisor(EXIT_3, max_exits=2, window=0.05, backoff=0.1)
    with sup:
        assert sup.wait_for("running", timeout=60, restarts=3)
        assert sup.state in ("running", "restarting") and sup.health()["last_exit_code"] == 3


def test_stop_ends_a_running_worker_and_restarts_nothing():
    sup = WorkerSupervisor(SLEEP, stop_timeout=5)
    sup.start()
    assert sup.state == "running"
    pid = sup.pid
    proc = sup._proc
    sup.stop()
    assert proc.returncode == -signal.SIGTERM  # SIGTERM, not the SIGKILL fallback
    assert sup.health() == {"state": "stopped", "restarts": 0, "last_exit_code": None}
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_no_command_is_a_disabled_worker():
    with WorkerSupervisor(None) as sup:
        assert sup.health()["state"] == "disabled" and sup.pid is None
    assert sup.state == "disabled"


def test_describe_exit_names_signals():
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(2) == "exit code 2"


def test_stop_when_orphaned_fires_once_the_parent_changes():
    assert not stop_when_orphaned(os.getppid(), poll=0.01).wait(0.1)
    assert stop_when_orphaned(-1, poll=0.01).wait(5)  # not our parent: as if it died


def test_sigterm_stops_the_worker_loop_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with worker_stop() as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)
    assert signal.getsignal(signal.SIGTERM) == before


def test_healthz_reports_the_worker_state(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from unbake import Workspace
    from unbake.service import DeletionService
    from unbake.service.api import create_app

    Workspace.create(tmp_path / "ws", dataset="digits").close()
    failed = WorkerSupervisor(EXIT_3, max_exits=1, backoff=0.01)
    with DeletionService(tmp_path / "ws") as svc, failed:
        assert failed.wait_for("failed", timeout=60)
        plain = TestClient(create_app(svc)).get("/healthz").json()
        assert plain["status"] == "ok" and plain["worker"]["state"] == "disabled"
        got = TestClient(create_app(svc, worker=failed)).get("/healthz")
        assert got.status_code == 200
        assert got.json()["status"] == "degraded"
        assert got.json()["worker"] == {"state": "failed", "restarts": 0, "last_exit_code": 3}
