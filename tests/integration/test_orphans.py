"""No orphans: killing a parent mid-way through a parallel SISA run leaves no process behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="reads the process table from /proc"
)


def _ppid_and_state(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "(comm) "
    return int(fields[1]), fields[0]


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _ppid_and_state(int(entry.name))):
            children.setdefault(info[0], []).append(int(entry.name))
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _alive(pid: int) -> bool:
    info = _ppid_and_state(pid)
    return info is not None and info[1] not in ("Z", "X")  # a zombie has already ended


def test_killed_parent_leaves_no_pool_worker_or_resource_tracker(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "unbake.cli",
        "train",
        "--dataset",
        "digits",
        "--model",
        "mlp",
        "--strategy",
        "sisa",
        "--shards",
        "2",
        "--slices",
        "1",
        "--workers",
        "2",
        "--epochs",
        "1000",
        "--workspace",
        str(tmp_path / "ws"),
    ]
    parent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    everyone: set[int] = set()

    def pool_workers() -> set[int]:
        return {
            p
            for p in _descendants(parent.pid)
            if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()
            if _alive(p)
        }

    def running():
        assert parent.poll() is None, "the run ended before it started its two pool workers"

    try:
        wait_until(
            lambda: len(pool_workers()) >= 2,
            "the start of two pool workers",
            poll=0.1,
            check=running,
        )
        time.sleep(1.0)  # let the workers get going
        everyone = _descendants(parent.pid)  # workers and the resource tracker
        assert parent.poll() is None, "the run finished before it could be killed"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        wait_until(
            lambda: not any(_alive(p) for p in everyone),
            lambda: f"the end of {sorted(p for p in everyone if _alive(p))} (its children)",
            poll=0.1,
        )
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in everyone:  # never leave this test's own strays behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
