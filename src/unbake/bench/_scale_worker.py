"""The child process of ``unbake bench scale``: one size's work, under the memory cap.

Run as ``python -m unbake.bench._scale_worker JOB_JSON``; writes its rows as JSON to
the job's ``out`` path. Kept apart from :mod:`unbake.bench.scale`, which registers the
benchmark, so that running this module does not register it a second time.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Rows a subject owns, the seed of everything, the batch size, the subject forgotten.
SUBJECT_ROWS = 10
SEED = 0
BATCH = 256
FORGET_SUBJECT = "person-3"


def _timed(fn) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _accuracy(model, samples) -> float:
    return round(float((model.log_proba(samples.X).argmax(1).numpy() == samples.y).mean()), 4)


def _work(samples, test, budget: int) -> list[dict[str, Any]]:
    """Train, then forget one subject with each method; a row per step."""
    import torch

    from unbake import TrainConfig, UnlearnTask, create, fit

    config = TrainConfig(epochs=1, batch_size=BATCH)
    n = len(samples)
    original, seconds = _timed(lambda: fit(samples, n_classes=10, config=config, seed=SEED))
    rows = [{"phase": "train", "rows": n, "seconds": round(seconds, 3),
             "rows_per_s": round(n / seconds, 1), "test_accuracy": _accuracy(original, test)}]  # fmt: skip
    forget, retain = samples.split(samples.ids[samples.subjects == FORGET_SUBJECT])
    keep = torch.randperm(len(retain), generator=torch.Generator().manual_seed(SEED))[:budget]
    sub = retain.subset(np.sort(keep.numpy()))
    for name, task in (
        ("retrain", UnlearnTask(original, forget, sub)),
        ("neggrad_plus", UnlearnTask(original, forget, retain)),
        ("random_label", UnlearnTask(original, forget, retain)),
    ):
        params = {} if name == "retrain" else {"retain_samples": budget, "epochs": 1}
        result, seconds = _timed(lambda t=task, m=name, p=params: create(m, **p).unlearn(t))
        rows.append({"phase": name, "rows": len(task.retain), "seconds": round(seconds, 3),
                     "test_accuracy": _accuracy(result.model, test),
                     "forget_accuracy": _accuracy(result.model, forget)})  # fmt: skip
    sisa, seconds = _timed(lambda: fit(samples, n_classes=10, config=config, seed=SEED,
                                       strategy="sisa", strategy_params={"shards": 4}))  # fmt: skip
    rows.append({"phase": "sisa_train", "rows": n, "seconds": round(seconds, 3),
                 "test_accuracy": _accuracy(sisa, test)})  # fmt: skip
    result, seconds = _timed(lambda: create("sisa").unlearn(UnlearnTask(sisa, forget, retain)))
    rows.append({"phase": "sisa", "rows": len(retain), "seconds": round(seconds, 3),
                 "test_accuracy": _accuracy(result.model, test),
                 "forget_accuracy": _accuracy(result.model, forget)})  # fmt: skip
    return rows


def _epoch_seconds(samples) -> float:
    from unbake import TrainConfig, fit

    config = TrainConfig(epochs=1, batch_size=BATCH)
    return _timed(lambda: fit(samples, n_classes=10, config=config, seed=SEED))[1]


def _compare(samples) -> dict[str, Any]:
    """Epoch seconds of the in-memory and the streamed path, alternating, three each."""
    from unbake.data import Samples

    in_memory = Samples(np.asarray(samples.X), samples.y, samples.ids, samples.subjects)
    streamed, memory = [], []
    for _ in range(3):
        memory.append(_epoch_seconds(in_memory))
        streamed.append(_epoch_seconds(samples))
    fast, slow = statistics.median(memory), statistics.median(streamed)
    return {
        "phase": "epoch_in_memory_vs_streamed", "rows": len(samples),
        "in_memory_seconds": [round(s, 3) for s in memory],
        "streamed_seconds": [round(s, 3) for s in streamed],
        "ratio": round(slow / fast, 3),
    }  # fmt: skip


def _io(samples: Any) -> str:
    """How a store's rows are read (``"mmap"`` or ``"pread"``)."""
    return str(samples.X.source.io)


def _worker(job: dict[str, Any]) -> None:
    from unbake.bench.memory import peak_rss
    from unbake.data import Samples, open_store

    if job.get("compare"):  # uncapped: the in-memory copy would not fit under the cap
        samples = open_store(job["store"], io="pread")  # the reads the capped runs make
        out: dict[str, Any] = {"rows": [_compare(samples)], "io": _io(samples)}
        Path(job["out"]).write_text(json.dumps(out))
        return
    samples = open_store(job["store"])
    held_out = open_store(job["test"])
    test = Samples(np.asarray(held_out.X), held_out.y, held_out.ids, held_out.subjects)
    with peak_rss() as peak:
        rows = _work(samples, test, int(job["budget"]))
    out = {"rows": rows, "peak_rss_mib": peak.mib, "io": _io(samples)}
    Path(job["out"]).write_text(json.dumps(out))


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
