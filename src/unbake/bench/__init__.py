"""Benchmarks behind ``unbake bench NAME``: each writes one JSON object.

Conventions (see DESIGN.md): ``{"benchmark", "dataset", "machine", "code", "config",
"rows", "summary", "date", "load_average", "memory"}``, where ``code`` names the unbake
that ran (version, source fingerprint, git commit) and ``memory`` its peak resident
memory (:mod:`unbake.bench.memory`); ``--quick`` finishes in under 2 minutes on
2 cores; timings are paired with a baseline measured in the same run and quoted as
ratios.
"""

from __future__ import annotations

import inspect
import os
import platform
import subprocess
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from unbake import _json as strict_json
from unbake._threads import thread_policy
from unbake.bench.memory import peak_rss
from unbake.exceptions import InvalidParameterError
from unbake.registry import Registry
from unbake.workspace.atomic import atomic_write_text

__all__ = ["BENCHMARKS", "code_info", "machine_info", "run_benchmark"]

#: name → ``fn(*, quick: bool, data_dir: str | None) -> dict`` returning dataset, config,
#: rows and summary.
BENCHMARKS: Registry[dict[str, Any]] = Registry("benchmark")


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
    }


def _git(directory: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(directory), *args],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout.strip()  # fmt: skip


def code_info() -> dict[str, Any]:
    """Which unbake produced a result: its version, the hash of the source that computes
    numbers (:func:`unbake.bench.cache.code_fingerprint`, the same from a wheel or a
    checkout) and, in a git checkout, the commit and whether the package's files differ
    from it (``dirty``)."""
    from unbake import __version__
    from unbake.bench.cache import code_fingerprint

    info: dict[str, Any] = {"version": __version__, "fingerprint": code_fingerprint()}
    package = Path(__file__).resolve().parents[1]
    try:
        # Only where git tracks this very file: a wheel installed into a virtual
        # environment that lies inside some repository must not claim its commit.
        if _git(package, "ls-files", "--", __file__):
            commit = _git(package, "rev-parse", "HEAD")
            dirty = bool(_git(package, "status", "--porcelain", "--", str(package)))
            return {**info, "commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        pass  # no git: the fingerprint alone says which code ran
    return {**info, "commit": None, "dirty": None}


def run_benchmark(
    name: str,
    *,
    quick: bool = False,
    out: str | os.PathLike | None = None,
    data_dir: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run the benchmark ``name`` and write its JSON to ``out`` (atomically).

    ``options`` (``seeds``, ``scenarios``, ``cache_dir``) go to the benchmarks that take
    them; one given to a benchmark that does not is refused. A benchmark that takes a
    ``cache_dir`` caches its cells beside ``out`` (its suffix replaced by ``.cells``)
    unless told otherwise.
    """
    fn: Callable[..., dict[str, Any]] = BENCHMARKS.get(name)
    accepted = set(inspect.signature(fn).parameters)
    options = {k: v for k, v in options.items() if v is not None}
    refused = sorted(set(options) - accepted)
    if refused:
        raise InvalidParameterError(
            f"Benchmark {name!r} takes no --{refused[0].replace('_', '-')}; drop it "
            f"(see `unbake bench --help`)."
        )
    if "cache_dir" in accepted and "cache_dir" not in options and out is not None:
        options["cache_dir"] = str(Path(out).with_suffix(".cells"))
    load_start = os.getloadavg()
    with peak_rss() as peak:
        body = fn(quick=quick, data_dir=data_dir, **options)
    result = {
        "benchmark": name,
        "quick": quick,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "code": code_info(),
        # 1-, 5- and 15-minute load averages: a busy neighbour shows here.
        "load_average": {
            "start": [round(x, 2) for x in load_start],
            "end": [round(x, 2) for x in os.getloadavg()],
        },
        "thread_policy": thread_policy(),
        # This process's peak resident memory over the run (worker processes excluded).
        "memory": peak.to_dict(),
        **body,
    }
    if out is not None:
        atomic_write_text(Path(out), strict_json.dumps(result, indent=2) + "\n")
    return result


from unbake.bench import approximate as _approximate  # noqa: E402,F401
from unbake.bench import certified as _certified  # noqa: E402,F401
from unbake.bench import cleaning as _cleaning  # noqa: E402,F401
from unbake.bench import llm as _llm  # noqa: E402,F401
from unbake.bench import methods as _methods  # noqa: E402,F401  (registers benchmarks)
from unbake.bench import scale as _scale  # noqa: E402,F401
from unbake.bench import service as _service  # noqa: E402,F401
from unbake.bench import sisa as _sisa  # noqa: E402,F401
from unbake.bench import threads as _threads  # noqa: E402,F401
from unbake.bench import tradeoff as _tradeoff  # noqa: E402,F401
