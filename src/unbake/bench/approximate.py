"""``unbake bench approximate``: the approximate methods against retraining, both scenarios.

Fashion-MNIST (full) with the ``cnn``: forget a random 10% and forget class 0, three
seeds each, mean ± std. ``--quick``: digits, one seed. Each (scenario, seed) is one
:func:`~unbake.evaluation.compare.compare_methods` run with ``retrain`` (the
reference as a row: the reference's own first run when its repeats were bitwise
identical, which the row's ``reused`` field says), ``original``, ``retrain_seed`` and
every method whose tags say it is approximate, each with its tuned defaults for the
scenario where they match its dataset and model (:mod:`unbake.methods.tuned`).

The full run takes hours on two cores, so it is resumable: with a ``cache_dir`` (by
default ``--out`` with its suffix replaced by ``.cells``) each finished (scenario, seed) cell is
written there atomically under a hash of its configuration (:mod:`unbake.bench.cache`),
and a rerun reads the cells it finds instead of recomputing them. ``seeds`` and
``scenarios`` run a subset, so the cells can be filled across sessions; the JSON lists
which cells were computed now and which were read back, with their dates. Timings stay
paired: every cell's speedups are against the reference timed in that cell's own run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from unbake.bench import BENCHMARKS, cache
from unbake.data import load_dataset
from unbake.evaluation.compare import compare_methods
from unbake.exceptions import InvalidParameterError
from unbake.methods import METHODS
from unbake.methods.tuned import SCENARIOS, RequestContext, resolve
from unbake.training import TrainConfig

#: Columns averaged over seeds (each also gets ``<name>_std``).
COLUMNS = ("fa", "ra", "ta", "mia", "mia_efficacy", "avg_gap", "seconds", "time_fraction")
#: The two forget requests, by scenario.
REQUESTS: dict[str, dict[str, Any]] = {
    "random": {"forget_fraction": 0.1},
    "class": {"forget_class": 0},
}
#: Rows that frame the methods rather than compete.
FRAMING = ("retrain", "original", "retrain_seed")
#: The issue's targets: (summary key, bound, "max" = at most the bound).
TARGETS = {
    "best_avg_gap": 1.0,
    "best_time_fraction": 0.05,
    "class_best_avg_gap": 0.5,
    "class_best_fa": 1.0,
    "max_time_fraction": 0.2,
    "max_ta_drop_points": 3.0,
}


def approximate_methods() -> list[str]:
    """Every registered method whose tags call it approximate (no guarantee: measured)."""
    return [
        n
        for n in METHODS.available()
        if METHODS.get(n).tags.kind == "approximate" and "arrays" in METHODS.get(n).tags.inputs
    ]


def _stat(values: list[float | None]) -> tuple[float | None, float | None]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    return round(float(np.mean(finite)), 4), round(float(np.std(finite)), 4)


def _aggregate(scenario: str, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method: the mean and std over seeds of every column."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for row in run["rows"]:
            speedup = row["speedup"]
            fraction = 1.0 / speedup if speedup and math.isfinite(speedup) else float("nan")
            by_method.setdefault(row["method"], []).append({**row, "time_fraction": fraction})
    out = []
    for method, rows in by_method.items():
        agg: dict[str, Any] = {"scenario": scenario, "method": method, "seeds": len(rows)}
        for col in COLUMNS:
            agg[col], agg[f"{col}_std"] = _stat([r.get(col) for r in rows])
        out.append(agg)
    return out


def _summary(rows: list[dict[str, Any]], strength: dict[str, Any]) -> dict[str, Any]:
    def pick(scenario: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
        table = {r["method"]: r for r in rows if r["scenario"] == scenario}
        methods = [r for m, r in table.items() if m not in FRAMING and r["avg_gap"] is not None]
        return table, min(methods, key=lambda r: r["avg_gap"]) if methods else None

    rand, best = pick("random")
    cls, class_best = pick("class")
    approx = [r for r in rows if r["method"] not in FRAMING]
    fractions = [r["time_fraction"] for r in approx if r["time_fraction"] is not None]
    drops = [
        table["retrain"]["ta"] - r["ta"]
        for table in (rand, cls)
        for r in table.values()
        if r["method"] not in FRAMING and r["ta"] is not None and "retrain" in table
    ]
    summary: dict[str, Any] = {
        "best_method": best and best["method"],
        "best_avg_gap": best and best["avg_gap"],
        "best_time_fraction": best and best["time_fraction"],
        "max_time_fraction": max(fractions) if fractions else None,
        "original_avg_gap": rand.get("original", {}).get("avg_gap"),
        "noise_floor_avg_gap": rand.get("retrain_seed", {}).get("avg_gap"),
        "class_best_method": class_best and class_best["method"],
        "class_best_avg_gap": class_best and class_best["avg_gap"],
        "class_best_fa": class_best and class_best["fa"],
        "max_ta_drop_points": round(max(drops), 4) if drops else None,
        "attack_strength": strength,
    }
    met = {
        key: summary[key] is not None and summary[key] <= bound for key, bound in TARGETS.items()
    }
    original = summary["original_avg_gap"]
    met["best_at_most_half_of_original"] = (
        summary["best_avg_gap"] is not None
        and original is not None
        and summary["best_avg_gap"] <= 0.5 * original
    )
    summary["targets"] = {**TARGETS, "best_at_most_half_of_original": 0.5}
    summary["targets_met"] = met
    return summary


def _cell(
    ds, scenario: str, seed: int, run_config: dict[str, Any], params, cache_dir
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One (scenario, seed) comparison, read from ``cache_dir`` when it holds it; and
    where it came from."""
    key = {
        "benchmark": "approximate",
        "dataset": ds.name,
        # Not "train": run_config's training configuration has that key.
        "data": cache.data_fingerprint(ds.train),
        "scenario": scenario,
        "request": REQUESTS[scenario],
        "seed": seed,
        **run_config,
        "params": params,
    }
    path = cache.cell_path(cache_dir, f"{scenario}-seed{seed}", key) if cache_dir else None
    entry = cache.read_cell(path, key) if path is not None else None
    if entry is not None:
        return entry["comparison"], {"cached": True, "written": entry["written"]}
    comparison = compare_methods(
        ds,
        methods=["retrain", *run_config["methods"]],
        params=params,
        model=run_config["model"],
        config=TrainConfig.model_validate(run_config["train"]),
        seed=seed,
        reference_repeats=run_config["reference_repeats"],
        **REQUESTS[scenario],
    ).to_dict()
    if path is not None:
        cache.write_cell(path, key, {"comparison": comparison})
    return comparison, {"cached": False}


def _subset(given: list | None, default: list, what: str, ok, allowed: str) -> list:
    """``given`` without repeats (``default`` when ``None``), each checked by ``ok``."""
    if given is None:
        return list(default)
    if not given or not all(ok(g) for g in given):
        raise InvalidParameterError(f"--{what} must list {allowed}. Got {given!r} instead.")
    return list(dict.fromkeys(given))


@BENCHMARKS.register("approximate")
def approximate_benchmark(
    *,
    quick: bool,
    data_dir: str | None,
    seeds: list[int] | None = None,
    scenarios: list[str] | None = None,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Fashion-MNIST (full) with the cnn, 3 seeds; digits and one seed under ``--quick``.

    ``seeds`` and ``scenarios`` pick a subset of the cells; ``cache_dir`` makes the run
    resumable (see the module's docstring).
    """
    if quick:
        ds = load_dataset("digits")
        config, model, all_seeds, repeats = TrainConfig.parse(epochs=15), "mlp", [0], 1
    else:
        ds = load_dataset("fashion-mnist", data_dir=data_dir)
        config, model, all_seeds, repeats = (
            TrainConfig.parse(epochs=10, batch_size=128),
            "cnn",
            [0, 1, 2],
            3,
        )
    seeds = _subset(
        seeds, all_seeds, "seeds", lambda s: isinstance(s, int) and s >= 0, "seeds >= 0"
    )
    scenarios = _subset(
        scenarios, list(SCENARIOS), "scenarios", SCENARIOS.__contains__, f"some of {SCENARIOS}"
    )
    methods = approximate_methods()
    run_config = {
        "model": model,
        "train": config.model_dump(),
        "reference_repeats": repeats,
        "methods": methods,
    }
    rows: list[dict[str, Any]] = []
    strength: dict[str, Any] = {}
    tuned: dict[str, dict[str, dict[str, Any]]] = {}
    cells: list[dict[str, Any]] = []
    for scenario in scenarios:
        ctx = RequestContext(dataset=ds.name, model=model, scenario=scenario)
        resolved = {m: resolve(m, ctx) for m in methods}
        params = {m: p for m, (p, _) in resolved.items() if p}
        tuned[scenario] = {
            m: {k: origin["tuned_defaults"][k] for k in ("applied", "study", "study_sha256")}
            for m, (_, origin) in resolved.items()
            if "tuned_defaults" in origin
        }
        runs = []
        for seed in seeds:
            comparison, source = _cell(ds, scenario, seed, run_config, params, cache_dir)
            runs.append(comparison)
            cells.append({"scenario": scenario, "seed": seed, **source})
        rows += _aggregate(scenario, runs)
        # The attack's balanced accuracy on retain against test: can it see anything at all?
        strength[scenario] = dict(
            zip(("mean", "std"), _stat([r["attack_strength"] for r in runs]), strict=True)
        )
    return {
        "dataset": ds.name,
        "config": {
            "model": model,
            "train": config.model_dump(),
            "scenarios": {s: REQUESTS[s] for s in scenarios},
            "seeds": seeds,
            "reference_repeats": repeats,
            "methods": methods,
            "tuned_params": tuned,
            "cache_dir": str(cache_dir) if cache_dir else None,
        },
        "cells": cells,
        "rows": rows,
        "summary": _summary(rows, strength),
    }
