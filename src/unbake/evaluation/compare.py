"""Side-by-side comparison of unlearning methods against the retrain reference.

One forget request, every method, one table: FA, RA, TA, MIA, avg gap, seconds and
speedup. Each row is judged against retraining *the same model* (architecture and
training strategy) from scratch on the retain set, measured in the same run. Two
framing rows come with the main model: ``original`` (doing nothing: the gap every
method must beat) and ``retrain_seed`` (retraining with another seed: the noise floor).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unbake.data import Dataset
from unbake.evaluation.base import Evaluation, avg_gap, evaluate, result_specs
from unbake.methods import METHODS, Unlearner, UnlearnTask
from unbake.models import ModelSpec
from unbake.training import TrainConfig, TrainedModel, fit

__all__ = ["Comparison", "ComparisonRow", "compare_methods", "random_forget_ids"]


@dataclass
class ComparisonRow:
    """One method's row: its named metrics (``row.fa``, ``row["mia"]``) and its cost."""

    method: str
    model: str
    metrics: Evaluation
    avg_gap: float
    seconds: float
    speedup: float
    exact: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> float:
        metrics = self.__dict__.get("metrics")
        if metrics is not None and name in metrics:
            return metrics[name]
        raise AttributeError(f"ComparisonRow has no field or metric {name!r}.")

    def public(self) -> dict[str, Any]:
        def r(v):
            return round(v, 4) if isinstance(v, float) else v

        return {
            "method": self.method,
            "model": self.model,
            **{k: r(v) for k, v in self.metrics.items()},
            "avg_gap": r(self.avg_gap),
            "seconds": r(self.seconds),
            "speedup": r(self.speedup),
            "exact": self.exact,
        }


@dataclass
class Comparison:
    dataset: str
    n_train: int
    n_forget: int
    seed: int
    attack_strength: float
    rows: list[ComparisonRow]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "n_train": self.n_train,
            "n_forget": self.n_forget,
            "seed": self.seed,
            "attack_strength": round(self.attack_strength, 4),
            "rows": [r.public() for r in self.rows],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        head = (
            f"# unbake comparison on {self.dataset}\n\n"
            f"Forgetting {self.n_forget} of {self.n_train} training samples (seed {self.seed}). "
            "Accuracies and MIA in percent; avg gap in points against retraining the same "
            "model from scratch; speedup against that retrain, measured in the same run.\n\n"
            f"Attack strength (loss-threshold MIA, balanced accuracy on retain vs test): "
            f"{self.attack_strength:.1f}%.\n\n"
        )
        cols = result_specs(column_only=True)
        lines = [
            "| method | model | "
            + " | ".join(c.label for c in cols)
            + " | avg gap | seconds | speedup |",
            "|---|---|" + "---:|" * (len(cols) + 3),
        ]
        for r in self.rows:
            seconds = f"{r.seconds:.3f}" if math.isfinite(r.seconds) else "—"
            speedup = f"{r.speedup:.1f}×" if math.isfinite(r.speedup) else "—"
            values = " | ".join(f"{r.metrics.get(c.key, float('nan')):.2f}" for c in cols)
            lines.append(
                f"| {r.method} | {r.model} | {values} | {r.avg_gap:.2f} | {seconds} | {speedup} |"
            )
        return head + "\n".join(lines) + "\n"


def random_forget_ids(dataset: Dataset, fraction: float, seed: int) -> np.ndarray:
    """A seeded random ``fraction`` of the training IDs."""
    rng = np.random.default_rng(seed)
    n = max(1, round(len(dataset.train) * fraction))
    return np.sort(rng.choice(dataset.train.ids.astype(str), size=n, replace=False))


@dataclass
class _Family:
    original: TrainedModel
    task: UnlearnTask
    reference: Evaluation
    reference_seconds: float


def _row(
    name: str, fam: _Family, model: TrainedModel, seconds: float, test, exact=False, info=None
):
    ev = evaluate(model, fam.task.forget, fam.task.retain, test)
    speedup = fam.reference_seconds / seconds if seconds > 0 else float("inf")
    return ComparisonRow(
        name,
        fam.original.describe(),
        ev,
        avg_gap(ev, fam.reference),
        seconds,
        speedup,
        exact,
        info or {},
    ), ev


def compare_methods(
    dataset: Dataset,
    *,
    methods: list[str] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    model: ModelSpec | str = "mlp",
    config: TrainConfig | None = None,
    forget_ids: np.ndarray | None = None,
    forget_fraction: float = 0.1,
    seed: int = 0,
    device=None,
    on_row=None,
) -> Comparison:
    """Run every method (default: all registered) on one forget request and compare."""
    config = config or TrainConfig()
    params = params or {}
    if forget_ids is None:
        forget_ids = random_forget_ids(dataset, forget_fraction, seed)
    forget, retain = dataset.train.split(forget_ids)
    families: dict[str, _Family] = {}

    def family(unlearner: Unlearner | None) -> _Family:
        suggested = (unlearner.suggested_original or {}) if unlearner else {}
        key = json.dumps(suggested, sort_keys=True)
        if key not in families:
            kwargs = {"model": model, "config": config, **suggested}
            original = fit(
                dataset.train, n_classes=dataset.n_classes, seed=seed, device=device, **kwargs
            )
            task = UnlearnTask(original, forget, retain, device=device)
            ref = METHODS.create("retrain").unlearn(task)
            ev = evaluate(ref.model, forget, retain, dataset.test)
            families[key] = _Family(original, task, ev, ref.seconds)
        return families[key]

    rows: list[ComparisonRow] = []

    def emit(row: ComparisonRow) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    main = family(None)
    row, original_ev = _row("original", main, main.original, float("nan"), dataset.test)
    row.speedup = float("nan")
    emit(row)
    again = METHODS.create("retrain").unlearn(main.task, seed=seed + 1)
    emit(_row("retrain_seed", main, again.model, again.seconds, dataset.test, exact=True)[0])
    for name in methods or METHODS.available():
        unlearner = METHODS.create(name, **params.get(name, {}))
        fam = family(unlearner if unlearner.requires_strategy else None)
        result = unlearner.unlearn(fam.task)
        emit(
            _row(
                name, fam, result.model, result.seconds, dataset.test, unlearner.exact, result.info
            )[0]
        )
    return Comparison(
        dataset.name, len(dataset.train), len(forget), seed, original_ev.attack_strength, rows
    )
