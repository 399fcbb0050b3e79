"""``unbake bench threads``: training time on an idle CPU and beside busy processes.

The failure it guards against: torch's OpenMP threads busy-wait, so beside one other
busy process a 2-thread training run on a 2-core machine slowed from under a second to
over a minute. Each cell trains the MLP in a fresh process (OpenMP reads its wait
policy when torch loads) under one thread policy, with 0, 1 or 2 sibling processes
spinning a Python loop, and reports the median of ``repeats`` runs. Policies:

- ``default``: unbake's policy (passive OpenMP waits, threads sized to the work);
- ``threads=1`` and ``threads=2``: the same with the count fixed (``--threads``);
- ``torch-default``: unbake's policy switched off (``UNBAKE_THREAD_POLICY=off``):
  torch's own defaults, the state before the policy existed. Runs that exceed the
  time-out are stopped and reported as at least that long.

``summary.slowdown_under_load`` is the worst busy-over-idle ratio of the ``default``
policy over both datasets and both loads (target: at most 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from unbake.bench import BENCHMARKS

POLICIES: dict[str, dict[str, str]] = {
    "default": {},
    "threads=1": {"UNBAKE_THREADS": "1"},
    "threads=2": {"UNBAKE_THREADS": "2"},
    "torch-default": {"UNBAKE_THREAD_POLICY": "off"},
}
_POLICY_VARS = ("OMP_WAIT_POLICY", "UNBAKE_THREADS", "UNBAKE_THREAD_POLICY", "GOMP_SPINCOUNT")
TARGET_SLOWDOWN = 2.0


@contextlib.contextmanager
def busy_siblings(n: int) -> Iterator[None]:
    """``n`` processes spinning a Python loop for the ``with`` block (killed after)."""
    procs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(n)
    ]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def train_once(
    dataset: str,
    epochs: int,
    *,
    env: dict[str, str] | None = None,
    limit: int | None = None,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Time one training run in a fresh process with ``env`` as its thread policy."""
    child_env = {k: v for k, v in os.environ.items() if k not in _POLICY_VARS}
    child_env.update(env or {})
    args = [sys.executable, "-m", "unbake.bench._train_once", dataset, str(epochs)]
    if limit is not None:
        args.append(str(limit))
    try:
        proc = subprocess.run(
            args, env=child_env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"seconds": timeout, "timed_out": True}
    if proc.returncode != 0:
        raise RuntimeError(f"training run failed: {proc.stderr.strip().splitlines()[-1:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "timed_out": False}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def measure(
    dataset: str,
    epochs: int,
    *,
    policy: str,
    siblings: int,
    repeats: int,
    limit: int | None = None,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """The median of ``repeats`` runs beside ``siblings`` busy processes."""
    runs = []
    with busy_siblings(siblings):
        for _ in range(repeats):
            run = train_once(dataset, epochs, env=POLICIES[policy], limit=limit, timeout=timeout)
            runs.append(run)
            if run["timed_out"]:
                break  # a cell this slow tells its story once
        load = _load()
    seconds = [r["seconds"] for r in runs]
    return {
        "dataset": dataset,
        "policy": policy,
        "siblings": siblings,
        "median_s": round(float(np.median(seconds)), 4),
        "min_s": round(min(seconds), 4),
        "max_s": round(max(seconds), 4),
        "runs_s": [round(s, 4) for s in seconds],
        "timed_out": any(r["timed_out"] for r in runs),
        "training_threads": runs[0].get("last_training_threads"),
        "wait_policy": runs[0].get("wait_policy"),
        "load_average": load,
    }


@BENCHMARKS.register("threads")
def threads_benchmark(*, quick: bool, data_dir: str | None) -> dict[str, Any]:
    """Digits and Fashion-MNIST MLPs, idle and beside 1 and 2 busy processes."""
    settings = [("digits", 10, None)]
    if not quick:
        settings.append(("fashion-mnist", 1, None))
    repeats = 1 if quick else 3
    policies = ["default", "torch-default"] if quick else list(POLICIES)
    if data_dir:
        os.environ["UNBAKE_DATA"] = data_dir
    rows = []
    for dataset, epochs, limit in settings:
        for policy in policies:
            idle = measure(dataset, epochs, policy=policy, siblings=0, repeats=repeats, limit=limit)
            rows.append({**idle, "slowdown": 1.0})
            # A spinning cell is capped: 30× its idle time is enough to show the failure.
            timeout = max(60.0, 30 * idle["median_s"])
            for siblings in (1, 2):
                busy = measure(
                    dataset,
                    epochs,
                    policy=policy,
                    siblings=siblings,
                    repeats=repeats,
                    limit=limit,
                    timeout=timeout,
                )
                rows.append({**busy, "slowdown": round(busy["median_s"] / idle["median_s"], 2)})

    def worst(policy: str) -> float:
        return max(r["slowdown"] for r in rows if r["policy"] == policy and r["siblings"])

    slowdown = worst("default")
    return {
        "dataset": "+".join(s[0] for s in settings),
        "config": {
            "model": "mlp",
            "runs": [{"dataset": d, "epochs": e, "limit": lim} for d, e, lim in settings],
            "repeats": repeats,
            "policies": {p: POLICIES[p] for p in policies},
            "siblings": [0, 1, 2],
            "timing": "training wall seconds inside a fresh process (imports and data "
            "loading excluded); median of the repeats",
        },
        "rows": rows,
        "summary": {
            "slowdown_under_load": slowdown,
            "torch_default_slowdown_under_load": worst("torch-default"),
            "target_slowdown": TARGET_SLOWDOWN,
            "target_met": slowdown <= TARGET_SLOWDOWN,
        },
    }
