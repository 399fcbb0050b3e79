"""``unbake bench scale``: training and forgetting on data larger than the memory allowed.

Fashion-MNIST's training images (scikit-learn's digits under ``--quick``), tiled and
perturbed (seeded Gaussian noise, a new draw for every tile), are written as on-disk
stores (:mod:`unbake.data.store`) of 1×, 4× and 8× a base size; the full run's 8× store
is over 4 GB. For each size a child process, under a hard address-space limit
(``RLIMIT_AS``, as ``prlimit --as`` sets; 1.5 GiB), trains an MLP for one epoch over
every row, then forgets one subject with ``retrain`` (on a seeded subsample of the
retain set: the budget), ``neggrad_plus`` and ``random_label`` (each reading the same
budget of retain rows), and trains and unlearns a ``sisa`` ensemble over the whole
store. Each child reports its peak resident memory (``VmHWM``) over that work; the
parent also reads the child's ``ru_maxrss``. Under the limit the rows are read with
``pread`` (a mapping of the whole file would not fit in the address space).

Then one more child, without the limit (the in-memory copy of the base store does not
fit beside torch under it), times epochs of the in-memory path against the streamed
path on the base size, alternating, three each, reading the streamed rows with
``pread`` as the capped children do: the throughput ratio is measured in one process
on one machine state.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from unbake.bench import BENCHMARKS
from unbake.bench._scale_worker import BATCH, SEED, SUBJECT_ROWS

__all__ = ["scale"]

#: Base rows: 8× this many Fashion-MNIST-sized rows (3,136 bytes each) is over 4 GiB.
BASE_ROWS = 172_000
QUICK_BASE_ROWS = 300
FACTORS = (1, 4, 8)
CAP_MIB = 1536
#: Rows of the retain set that retrain and the approximate methods read (the budget).
BUDGET, QUICK_BUDGET = 50_000, 200
NOISE = 0.05
_TILE_CHUNK = 10_000


def _images(data_dir: str | None, quick: bool, root: Path):
    """The training images to tile (float32 in [0, 1]) and labels, and the folder of the
    held-out images as a store (what the children score on): Fashion-MNIST, or
    scikit-learn's bundled digits under ``--quick``."""
    from unbake.data.loaders import fashion_mnist, load_dataset
    from unbake.data.store import write_store

    ds = load_dataset("digits") if quick else fashion_mnist(data_dir=data_dir)
    X = np.concatenate([np.asarray(p.X) for p in (ds.train, ds.val)])
    y = np.concatenate([p.y for p in (ds.train, ds.val)])
    test = root / f"{ds.name}-test-{len(ds.test)}"
    if not (test / "store.json").exists():
        t = ds.test
        chunk = (np.asarray(t.X), t.y, list(t.ids), list(t.subjects))
        write_store(test, [chunk], rows=len(t), row_shape=t.input_shape)
    return ds.name, X, y, test


def _store(root: Path, name: str, X: np.ndarray, y: np.ndarray, rows: int) -> Path:
    """The store of ``rows`` tiled rows under ``root`` (written once, then reused)."""
    from unbake.data.store import write_store

    folder = root / f"{name}-tiled-{rows}-seed{SEED}"
    if not (folder / "store.json").exists():
        if folder.exists():  # a half-written store from an interrupted run
            for f in folder.iterdir():
                f.unlink()
        write_store(folder, _chunks(X, y, rows, SEED), rows=rows, row_shape=X.shape[1:])
    return folder


def _chunks(X: np.ndarray, y: np.ndarray, rows: int, seed: int):
    """The tiled rows in order, at most one tile's remainder or ``_TILE_CHUNK`` at a time."""
    n = len(y)
    start = 0
    while start < rows:
        tile, offset = divmod(start, n)
        stop = min(start + _TILE_CHUNK, rows, (tile + 1) * n)
        rng = np.random.default_rng([seed, tile, offset])
        block = X[offset : offset + stop - start]
        noisy = np.clip(block + rng.normal(0, NOISE, block.shape).astype(np.float32), 0, 1)
        yield (
            noisy,
            y[offset : offset + stop - start],
            [f"fm-{r}" for r in range(start, stop)],
            [f"person-{r // SUBJECT_ROWS}" for r in range(start, stop)],
        )
        start = stop


def _capped(cap_mib: int | None):
    def limit() -> None:
        if cap_mib is not None:
            cap = cap_mib << 20
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return limit


def _child(job: dict[str, Any], cap_mib: int | None) -> dict[str, Any]:
    """Run one job in a child process (under the cap, if any); its JSON and ``ru_maxrss``."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "out.json", Path(tmp) / "stderr.txt"
        with open(err, "w") as stderr:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "unbake.bench._scale_worker",
                    json.dumps({**job, "out": str(out)}),
                ],
                preexec_fn=_capped(cap_mib),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4
        if proc.returncode != 0:
            tail = err.read_text()[-1500:].strip().splitlines()
            raise RuntimeError(f"scale worker failed ({proc.returncode}): {' | '.join(tail[-4:])}")
        result = json.loads(out.read_text())
    return {**result, "child_max_rss_mib": round(usage.ru_maxrss / 1024, 1)}


@BENCHMARKS.register("scale")
def scale(*, quick: bool, data_dir: str | None) -> dict[str, Any]:
    """Peak memory by data size, and streamed against in-memory epoch throughput.

    ``data_dir`` is where the tiled stores are written (default: the system's temporary
    folder); Fashion-MNIST itself is looked up as ``unbake train`` does.
    """
    base = QUICK_BASE_ROWS if quick else BASE_ROWS
    budget = QUICK_BUDGET if quick else BUDGET
    root = Path(data_dir or tempfile.gettempdir()) / "unbake-scale"
    root.mkdir(parents=True, exist_ok=True)
    name, X, y, test = _images(data_dir, quick, root)
    stores = {f: _store(root, name, X, y, f * base) for f in FACTORS}
    del X, y
    rows, peaks = [], {}
    for factor, folder in stores.items():
        job = {"store": str(folder), "test": str(test), "budget": budget}
        result = _child(job, CAP_MIB)
        data_bytes = (folder / "features.npy").stat().st_size
        peaks[f"{factor}x"] = result["peak_rss_mib"]
        for row in result["rows"]:
            rows.append({"factor": factor, "data_bytes": data_bytes, **row})
        rows.append({
            "factor": factor, "phase": "process", "data_bytes": data_bytes,
            "rows": result["rows"][0]["rows"], "peak_rss_mib": result["peak_rss_mib"],
            "child_max_rss_mib": result["child_max_rss_mib"], "io": result["io"],
        })  # fmt: skip
    # The in-memory path needs the base store in memory, more than the cap leaves beside
    # torch: this child runs uncapped, and reads its streamed epochs as the capped ones do.
    compare = _child({"store": str(stores[1]), "compare": True}, None)["rows"][0]
    rows.append({"factor": 1, "data_bytes": (stores[1] / "features.npy").stat().st_size,
                 "io": "pread", **compare})  # fmt: skip
    ratio = compare["ratio"]
    max_bytes = max(r["data_bytes"] for r in rows)
    return {
        "dataset": f"{name} (tiled, perturbed)",
        "config": {
            "base_rows": base,
            "factors": list(FACTORS),
            "cap_mib": CAP_MIB,
            "cap": "RLIMIT_AS (prlimit --as); the in-memory comparison child runs uncapped",
            "retain_budget": budget,
            "noise_std": NOISE,
            "seed": SEED,
            "model": "mlp",
            "epochs": 1,
            "batch_size": BATCH,
            "methods": ["retrain", "neggrad_plus", "random_label", "sisa"],
            "stores": str(root),
        },
        "rows": rows,
        "summary": {
            "peak_rss_mib_by_size": peaks,
            "throughput_ratio_vs_in_memory": ratio,
            "max_data_bytes": max_bytes,
            "cap_mib": CAP_MIB,
            "data_over_cap": round(max_bytes / (CAP_MIB << 20), 2),
            # What does grow: one label, ID and subject per row are held in memory.
            "rss_growth_mib_1x_to_8x": round(peaks["8x"] - peaks["1x"], 1),
            "rss_within_cap": all(v <= CAP_MIB for v in peaks.values()),
            "throughput_within_1_3x": ratio is not None and ratio <= 1.3,
        },
    }
