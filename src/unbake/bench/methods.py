"""``unbake bench methods``: every method on one forget request, against retrain."""

from __future__ import annotations

from typing import Any

from unbake.bench import BENCHMARKS
from unbake.data import load_dataset
from unbake.evaluation.compare import compare_methods
from unbake.training import TrainConfig


@BENCHMARKS.register("methods")
def methods_benchmark(*, quick: bool, data_dir: str | None) -> dict[str, Any]:
    """Fashion-MNIST (full) with the MLP; digits under ``--quick``. Forget a random 10%."""
    if quick:
        ds = load_dataset("digits")
        config = TrainConfig.parse(epochs=20)
    else:
        ds = load_dataset("fashion-mnist", data_dir=data_dir)
        config = TrainConfig.parse(epochs=10, batch_size=128)
    report = compare_methods(ds, model="mlp", config=config, forget_fraction=0.1, seed=0)
    data = report.to_dict()
    rows = data["rows"]
    approx = [r for r in rows if r["method"] not in ("original", "retrain_seed", "retrain")]
    return {
        "dataset": ds.name,
        "config": {"model": "mlp", "train": config.model_dump(), "forget_fraction": 0.1, "seed": 0},
        "rows": rows,
        "summary": {
            "attack_strength": data["attack_strength"],
            "original_gap": rows[0]["avg_gap"],
            "noise_floor_gap": rows[1]["avg_gap"],
            "best_approximate": min(approx, key=lambda r: r["avg_gap"])["method"]
            if approx
            else None,
        },
    }
