"""``unbake bench approximate``: the approximate methods against retraining, both scenarios.

Fashion-MNIST (full) with the ``cnn``: forget a random 10% and forget class 0, three
seeds each, mean ± std. ``--quick``: digits, one seed. Each (scenario, seed) is one
:func:`~unbake.evaluation.compare.compare_methods` run with ``retrain`` (the
reference, rerun as a row), ``original``, ``retrain_seed`` and every method whose tags
say it is approximate, each with its tuned defaults from ``benchmarks/tuning/`` where a
study is committed (:func:`~unbake.bench.tune.tuned_params`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from unbake.bench import BENCHMARKS
from unbake.bench.tune import tuned_params
from unbake.data import load_dataset
from unbake.evaluation.compare import compare_methods
from unbake.methods import METHODS
from unbake.training import TrainConfig

#: Columns averaged over seeds (each also gets ``<name>_std``).
COLUMNS = ("fa", "ra", "ta", "mia", "mia_efficacy", "avg_gap", "seconds", "time_fraction")
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


def _stat(values: list[float]) -> tuple[float | None, float | None]:
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
    summary = {
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


@BENCHMARKS.register("approximate")
def approximate_benchmark(*, quick: bool, data_dir: str | None) -> dict[str, Any]:
    """Fashion-MNIST (full) with the cnn, 3 seeds; digits and one seed under ``--quick``."""
    if quick:
        ds = load_dataset("digits")
        config, model, seeds, repeats = TrainConfig.parse(epochs=15), "mlp", [0], 1
    else:
        ds = load_dataset("fashion-mnist", data_dir=data_dir)
        config, model, seeds, repeats = (
            TrainConfig.parse(epochs=10, batch_size=128),
            "cnn",
            [0, 1, 2],
            3,
        )
    methods = approximate_methods()
    scenarios = {"random": {"forget_fraction": 0.1}, "class": {"forget_class": 0}}
    rows: list[dict[str, Any]] = []
    strength: dict[str, Any] = {}
    tuned: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario, request in scenarios.items():
        params = {m: tuned_params(m, scenario) for m in methods}
        tuned[scenario] = {m: p for m, p in params.items() if p}
        runs = [
            compare_methods(
                ds,
                methods=["retrain", *methods],
                params=params,
                model=model,
                config=config,
                seed=seed,
                reference_repeats=repeats,
                **request,
            ).to_dict()
            for seed in seeds
        ]
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
            "scenarios": scenarios,
            "seeds": seeds,
            "reference_repeats": repeats,
            "methods": methods,
            "tuned_params": tuned,
        },
        "rows": rows,
        "summary": _summary(rows, strength),
    }
