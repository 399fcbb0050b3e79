"""Importing the CLI, ``unbake --help`` and ``unbake --version`` load neither torch, nor
scipy, nor scikit-learn: commands import what they need when they run. A correctness
check (which modules load), not a timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.waiting import HUNG_AFTER

HEAVY = ("torch", "scipy", "sklearn")


def _modules_after(code: str, *args: str) -> dict[str, bool]:
    probe = (
        "import atexit, json, sys\n"
        f"atexit.register(lambda: print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}})))\n"
        f"{code}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True, text=True, timeout=HUNG_AFTER, env=env,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_cli_loads_no_heavy_library():
    assert _modules_after("import unbake.cli") == dict.fromkeys(HEAVY, False)


def test_help_and_version_load_no_heavy_library():
    for option in ("--help", "--version"):
        loaded = _modules_after("from unbake.cli import main; main()", option)
        assert loaded == dict.fromkeys(HEAVY, False), option


def test_the_api_still_loads_on_first_use_after_the_thread_policy():
    code = (
        "import os, sys, unbake\n"
        "assert 'torch' not in sys.modules and os.environ['OMP_WAIT_POLICY'] == 'PASSIVE'\n"
        "from unbake import DeletionService, Workspace, fit\n"
        "from unbake._threads import _state\n"
        "assert _state.wait_policy_at_load == 'PASSIVE', _state.wait_policy_at_load\n"
        "assert {'sisa', 'certified'} <= set(unbake.STRATEGIES.available())\n"
        "assert set(unbake.__all__) <= set(dir(unbake))\n"
    )
    loaded = _modules_after(code)
    assert loaded["torch"] is True
