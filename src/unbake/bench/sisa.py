"""``unbake bench sisa``: SISA's accuracy and deletion cost against one monolithic model.

Bourtoule et al., "Machine Unlearning" (IEEE S&P 2021). Three measurements, each paired
with its baseline in the same run:

1. test accuracy of the SISA ensemble for S ∈ {1, 5, 10, 20} and R ∈ {1, 4}, by majority
   vote and by mean probability, against the monolithic model with the same config;
2. for S = 10, R = 4: the wall time to serve 1, 10 and 100 random deletion requests
   (one batch each; the single deletion averaged over several independent draws)
   against one full retrain of the monolithic model, with the bound S·2R/(R+1) and
   the expectation S·3R/(2R+1) of this schedule (a later slice step costs more, as it
   trains on more slices);
3. the shard-training time on the ``ray`` backend with 2 workers (and on a local pool of
   2 processes) against sequential training, with a check that the bits agree.

Every model trains on one thread: SISA's shard models always do (see
:mod:`unbake.families.sisa.strategy`), and the monolithic baseline is given the same, so a
speedup compares like with like and is not at the mercy of how a busy machine treats a
2-thread pool. The baseline is the median of three full monolithic trainings (the
original's and two retrains), reported with their spread, and each backend's time the
best of ``repeats`` runs; the load average before and after is kept in the JSON.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import numpy as np
import torch

from unbake._threads import pin_threads
from unbake.backends.ray import ray_session
from unbake.bench import BENCHMARKS
from unbake.data import Dataset, load_dataset
from unbake.evaluation.utility import accuracy
from unbake.exceptions import UnbakeError
from unbake.families.sisa import SISAEnsemble
from unbake.methods import METHODS, UnlearnTask
from unbake.training import TrainConfig, TrainedModel, fit

__all__ = ["sisa_benchmark"]

SHARDS = (1, 5, 10, 20)
SLICES = (1, 4)
DELETION_SHARDS, DELETION_SLICES = 10, 4
REQUESTS = (1, 10, 100)


def _timed(fn, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _sisa(ds: Dataset, config: TrainConfig, shards: int, slices: int, **execution):
    return fit(
        ds.train,
        n_classes=ds.n_classes,
        model="mlp",
        config=config,
        seed=0,
        strategy="sisa",
        strategy_params={"shards": shards, "slices": slices, **execution},
    )


def _accuracy(model: TrainedModel, ds: Dataset, aggregation: str | None = None) -> float:
    if aggregation is not None:
        if not isinstance(model.module, SISAEnsemble):
            raise UnbakeError(f"{model.describe()} is not a SISA ensemble; it has no aggregation.")
        model.module.aggregation = aggregation
    return round(accuracy(model, ds.test), 3)


def _same_bits(a: TrainedModel, b: TrainedModel) -> bool:
    sa, sb = a.module.state_dict(), b.module.state_dict()
    same_module = sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    same_artifacts = a.artifacts.keys() == b.artifacts.keys() and all(
        torch.equal(a.artifacts[k], b.artifacts[k]) for k in a.artifacts
    )
    return same_module and same_artifacts


def run_sisa_benchmark(
    ds: Dataset,
    config: TrainConfig,
    *,
    shards: tuple[int, ...] = SHARDS,
    slices: tuple[int, ...] = SLICES,
    single_trials: int = 10,
    repeats: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(seed)

    # 1. accuracy: monolithic against every (S, R)
    with pin_threads(1):
        mono, mono_s = _timed(fit, ds.train, n_classes=ds.n_classes, model="mlp", config=config)
    mono_acc = _accuracy(mono, ds)
    rows.append(
        {"part": "accuracy", "model": "monolithic", "test_acc": mono_acc, "train_s": mono_s}
    )
    accuracy_of: dict[tuple[int, int], dict[str, float]] = {}
    deletion_model = None
    for S in shards:
        for R in slices:
            model, seconds = _timed(_sisa, ds, config, S, R)
            acc = {agg: _accuracy(model, ds, agg) for agg in ("vote", "mean")}
            model.module.aggregation = "vote"
            accuracy_of[S, R] = acc
            rows.append(
                {
                    "part": "accuracy",
                    "model": f"sisa S={S} R={R}",
                    "shards": S,
                    "slices": R,
                    "test_acc": acc["vote"],
                    "test_acc_mean": acc["mean"],
                    "drop_points": round(mono_acc - acc["vote"], 3),
                    "drop_points_mean": round(mono_acc - acc["mean"], 3),
                    "train_s": seconds,
                }
            )
            if (S, R) == (DELETION_SHARDS, DELETION_SLICES):
                deletion_model = (model, seconds)
    if deletion_model is None:
        deletion_model = _timed(_sisa, ds, config, DELETION_SHARDS, DELETION_SLICES)
    sisa_model, sisa_train_s = deletion_model

    # 2. deletion: 1, 10 and 100 random requests against a monolithic retrain
    ids = ds.train.ids.astype(str)
    retrain = METHODS.create("retrain")
    unlearner = METHODS.create("sisa")
    single_speedup = None
    # One full retrain of the monolithic model is the baseline for every request size:
    # dropping 1 or 100 of the training samples does not change what a retrain costs.
    forget, retain = ds.train.split(rng.choice(ids, size=1, replace=False))
    with pin_threads(1):
        refs = [retrain.unlearn(UnlearnTask(mono, forget, retain)) for _ in range(2)]
    # The median of three full trainings (the original's and two retrains), with spread.
    reference_runs = [mono_s] + [r.seconds for r in refs]
    full_retrain_s = float(np.median(reference_runs))
    for n in REQUESTS:
        draws = single_trials if n == 1 else 1
        chosen = [rng.choice(ids, size=n, replace=False) for _ in range(draws)]
        results = []
        for pick in chosen:
            forget, retain = ds.train.split(pick)
            results.append(unlearner.unlearn(UnlearnTask(sisa_model, forget, retain)))
        times = [r.seconds for r in results]
        mean_s = float(np.mean(times))
        speedup = full_retrain_s / mean_s
        if n == 1:
            single_speedup = speedup
        rows.append(
            {
                "part": "deletion",
                "requests": n,
                "draws": draws,
                "sisa_s": mean_s,
                "sisa_s_min": float(np.min(times)),
                "sisa_s_max": float(np.max(times)),
                "full_retrain_s": full_retrain_s,
                "speedup": speedup,
                "shards_retrained": float(
                    np.mean([len(r.info["shards_retrained"]) for r in results])
                ),
                "cost_fraction": float(np.mean([r.info["cost_fraction"] for r in results])),
                "sisa_test_acc_after": _accuracy(results[-1].model, ds),
            }
        )

    # 3. shard training: sequential against a 2-process pool and Ray with 2 workers
    S, R = DELETION_SHARDS, DELETION_SLICES
    # Best of `repeats`, interleaved; the 1-minute load average after each backend's
    # runs tells a busy machine from a slow backend.
    seq_times, pool_times, ray_times, startups = [], [], [], []
    ray_row: dict[str, Any] = {"part": "backends", "backend": "ray", "workers": 2}
    for _ in range(repeats):
        sequential, seconds = _timed(_sisa, ds, config, S, R)
        seq_times.append(seconds)
        seq_load = os.getloadavg()[0]
        pool, seconds = _timed(_sisa, ds, config, S, R, backend="local", workers=2)
        pool_times.append(seconds)
        pool_load = os.getloadavg()[0]
        try:
            with contextlib.ExitStack() as stack:
                _, startup_s = _timed(stack.enter_context, ray_session(workers=2))
                on_ray, seconds = _timed(_sisa, ds, config, S, R, backend="ray", workers=2)
            ray_times.append(seconds)
            startups.append(startup_s)
        except UnbakeError as exc:
            ray_row["error"] = str(exc)
            break
    seq_s, pool_s = min(seq_times), min(pool_times)
    if ray_times:
        ray_s, startup_s = min(ray_times), min(startups)
        ray_row.update(
            {
                "train_s": ray_s,
                "train_s_runs": ray_times,
                "startup_s": startup_s,
                "speedup": seq_s / ray_s,
                "speedup_with_startup": seq_s / (ray_s + startup_s),
                "bitwise_equal": _same_bits(on_ray, sequential),
                "load_after": os.getloadavg()[0],
            }
        )
    rows += [
        {
            "part": "backends",
            "backend": "local",
            "workers": 1,
            "train_s": seq_s,
            "train_s_runs": seq_times,
            "speedup": 1.0,
            "load_after": seq_load,
        },
        {
            "part": "backends",
            "backend": "local",
            "workers": 2,
            "train_s": pool_s,
            "train_s_runs": pool_times,
            "speedup": seq_s / pool_s,
            "bitwise_equal": _same_bits(pool, sequential),
            "load_after": pool_load,
        },
        ray_row,
    ]

    drop = mono_acc - accuracy_of[S, R]["vote"] if (S, R) in accuracy_of else None
    summary = {
        "single_deletion_speedup": None if single_speedup is None else round(single_speedup, 2),
        "theoretical_speedup": round(S * 2 * R / (R + 1), 2),
        "expected_speedup_for_schedule": round(S * 3 * R / (2 * R + 1), 2),
        "accuracy_drop_points": None if drop is None else round(drop, 2),
        "accuracy_drop_points_mean": None
        if (S, R) not in accuracy_of
        else round(mono_acc - accuracy_of[S, R]["mean"], 2),
        "accuracy_drop_points_r1": None
        if (S, 1) not in accuracy_of
        else round(mono_acc - accuracy_of[S, 1]["vote"], 2),
        "monolithic_test_acc": mono_acc,
        "ray_speedup": round(ray_row["speedup"], 2) if "speedup" in ray_row else None,
        "ray_speedup_with_startup": round(ray_row["speedup_with_startup"], 2)
        if "speedup_with_startup" in ray_row
        else None,
        "pool_speedup": round(seq_s / pool_s, 2),
        "backends_bitwise_equal": bool(
            _same_bits(pool, sequential) and ray_row.get("bitwise_equal", True)
        ),
        "targets": {"single_deletion_speedup": 12, "accuracy_drop_points": 2, "ray_speedup": 1.6},
        "paper_single_deletion_speedup": {"purchase": 4.63, "svhn": 2.45, "imagenet": 1.36},
    }
    config_out = {
        "model": "mlp",
        "train": config.model_dump(),
        "shards": list(shards),
        "slices": list(slices),
        "deletion": {"shards": S, "slices": R, "requests": list(REQUESTS)},
        "single_deletion_draws": single_trials,
        "seed": seed,
        "threads_per_model": 1,
        "backend_repeats": repeats,
        "full_retrain_s": full_retrain_s,
        "monolithic_retrain_s": [r.seconds for r in refs],
        "full_retrain_runs_s": reference_runs,
        "full_retrain_spread_s": [min(reference_runs), max(reference_runs)],
        "sisa_train_s": sisa_train_s,
        "monolithic_train_s": mono_s,
    }
    return {"dataset": ds.name, "config": config_out, "rows": rows, "summary": summary}


@BENCHMARKS.register("sisa")
def sisa_benchmark(*, quick: bool, data_dir: str | None) -> dict[str, Any]:
    """Full Fashion-MNIST (60k/10k) with the MLP; scikit-learn's digits under ``--quick``."""
    if quick:
        ds = load_dataset("digits")
        return run_sisa_benchmark(ds, TrainConfig.parse(epochs=20), single_trials=5)
    # the full 60k training images, as in the committed results: this benchmark
    # tunes nothing, so it carves no validation split
    ds = load_dataset("fashion-mnist", data_dir=data_dir, val_fraction=0)
    return run_sisa_benchmark(ds, TrainConfig.parse(epochs=30, batch_size=64), single_trials=16)
