"""No orphans: killing a parent mid-way through a parallel SISA run leaves no process behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    try:
        deadline = time.monotonic() + 60
        workers: set[int] = set()
        while time.monotonic() < deadline and parent.poll() is None:
            kids = _descendants(parent.pid)
            workers = {
                p
                for p in kids
                if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()
                if _alive(p)
            }
            if len(workers) >= 2:
                break
            time.sleep(0.1)
        assert len(workers) >= 2, "the parallel run never started its two pool workers"
        time.sleep(1.0)  # let the workers get going
        everyone = _descendants(parent.pid)  # workers and the resource tracker
        assert parent.poll() is None, "the run finished before it could be killed"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in everyone):
            time.sleep(0.1)
        survivors = sorted(p for p in everyone if _alive(p))
        assert not survivors, f"processes outlived their killed parent: {survivors}"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in everyone:  # never leave this test's own strays behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
