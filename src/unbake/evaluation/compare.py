"""Side-by-side comparison of unlearning methods against the retrain reference.

One forget request, every method, one table: FA, RA, TA, MIA, avg gap, seconds and
speedup. Each row is judged against retraining *the same model* (architecture and
training strategy) from scratch on the retain set, measured in the same run. The
reference's time is the median of ``reference_repeats`` retrains (with their spread),
so one retrain that a busy neighbour slowed cannot turn every speedup into nonsense.
A row that would rerun the reference's own procedure (its method and parameters) reuses
the reference's first run when two or more repeats were bitwise identical, reports 1×,
and says so in its ``reused`` field; otherwise it reruns and reports about 1×. The load
average over the run is kept beside the table. Two framing rows come with the main
model: ``original`` (doing nothing: the gap every method must beat) and ``retrain_seed``
(retraining with another seed: the noise floor).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from unbake import _json as strict_json
from unbake.data import Dataset
from unbake.evaluation.base import Evaluation, avg_gap, evaluate, result_specs
from unbake.exceptions import InvalidParameterError
from unbake.methods import METHODS, Unlearner, UnlearnResult, UnlearnTask
from unbake.models import ModelSpec
from unbake.training import TrainConfig, TrainedModel, fit

__all__ = [
    "Comparison",
    "ComparisonRow",
    "class_forget_ids",
    "compare_methods",
    "load_average",
    "random_forget_ids",
    "timed_reference",
]


#: What a row that reuses the reference says (formatted with the reference's timing).
REUSE_NOTE = (
    "the reference's first retrain, reused: its {repeats} timed repeats gave bitwise-identical "
    "models, so a further identical retrain would add nothing; seconds are their median"
)


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
            **({"reused": self.info["reused"]} if "reused" in self.info else {}),
        }


@dataclass
class Comparison:
    dataset: str
    n_train: int
    n_forget: int
    seed: int
    attack_strength: float
    rows: list[ComparisonRow]
    #: The main model's retrain reference: median, min, max seconds and the repeat count.
    reference_timing: dict[str, Any] = field(default_factory=dict)
    #: 1-minute load average when the comparison started and ended.
    load_average: dict[str, float] = field(default_factory=dict)
    #: ``"random"`` (a seeded fraction of the training set) or ``"class"`` (one class).
    scenario: str = "random"
    forget_class: int | None = None

    def verdicts(self) -> dict[str, str]:
        """Each method row against doing nothing: ``better`` (at most half of ``original``'s
        avg gap), ``slightly`` (below it) or ``no`` (not below it)."""
        base = next((r.avg_gap for r in self.rows if r.method == "original"), float("nan"))
        out = {}
        for r in self.rows:
            if r.method == "original":
                continue
            if r.avg_gap <= 0.5 * base:
                out[r.method] = "better"
            else:
                out[r.method] = "slightly" if r.avg_gap < base else "no"
        return out

    def describe_scenario(self) -> str:
        if self.scenario == "class":
            return f"class {self.forget_class} ({self.n_forget} of {self.n_train} samples)"
        return f"a random {self.n_forget} of {self.n_train} samples"

    def to_dict(self) -> dict[str, Any]:
        verdicts = self.verdicts()
        return {
            "scenario": self.scenario,
            "forget_class": self.forget_class,
            "dataset": self.dataset,
            "n_train": self.n_train,
            "n_forget": self.n_forget,
            "seed": self.seed,
            "attack_strength": round(self.attack_strength, 4),
            "reference_timing": self.reference_timing,
            "load_average": self.load_average,
            "rows": [{**r.public(), "vs_original": verdicts.get(r.method, "—")} for r in self.rows],
        }

    def timing_note(self) -> str:
        """One line on how the speedups were timed, for tables and reports."""
        t, load = self.reference_timing, self.load_average
        if not t:
            return ""
        return (
            f"Retrain reference: median {t['median_s']:.3f} s over {t['repeats']} runs "
            f"({t['min_s']:.3f}–{t['max_s']:.3f} s); 1-minute load average "
            f"{load.get('start', float('nan')):.2f} → {load.get('end', float('nan')):.2f} "
            f"on {load.get('cores', '?')} cores."
        )

    def to_json(self) -> str:
        return strict_json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        head = (
            f"# unbake comparison on {self.dataset}\n\n"
            f"Forgetting {self.describe_scenario()} (seed {self.seed}). "
            "Accuracies and MIA in percent; avg gap in points against retraining the same "
            "model from scratch; speedup against that retrain, measured in the same run.\n\n"
            f"Attack strength (loss-threshold MIA, balanced accuracy on retain vs test): "
            f"{self.attack_strength:.1f}%. {self.timing_note()}\n\n"
        )
        cols = result_specs(column_only=True)
        lines = [
            "| method | model | "
            + " | ".join(c.label for c in cols)
            + " | avg gap | vs original | seconds | speedup |",
            "|---|---|" + "---:|" * (len(cols) + 1) + "---|---:|---:|",
        ]
        verdicts = self.verdicts()
        for r in self.rows:
            seconds = f"{r.seconds:.3f}" if math.isfinite(r.seconds) else "—"
            speedup = f"{r.speedup:.1f}×" if math.isfinite(r.speedup) else "—"
            values = " | ".join(f"{r.metrics.get(c.key, float('nan')):.2f}" for c in cols)
            lines.append(
                f"| {r.method} | {r.model} | {values} | {r.avg_gap:.2f} "
                f"| {verdicts.get(r.method, '—')} | {seconds} | {speedup} |"
            )
        return head + "\n".join(lines) + "\n"


def random_forget_ids(dataset: Dataset, fraction: float, seed: int) -> np.ndarray:
    """A seeded random ``fraction`` of the training IDs."""
    rng = np.random.default_rng(seed)
    n = max(1, round(len(dataset.train) * fraction))
    return np.sort(rng.choice(dataset.train.ids.astype(str), size=n, replace=False))


def class_forget_ids(dataset: Dataset, label: int | str) -> np.ndarray:
    """The training IDs of every sample of class ``label`` (a name or an index)."""
    label = dataset.class_index(label)
    ids = dataset.train.ids[dataset.train.y == label].astype(str)
    if len(ids) == len(dataset.train):
        raise InvalidParameterError(
            f"Class {label} is the whole training set of {dataset.name}; nothing would be left "
            "to retain. Forget another class."
        )
    return np.sort(ids)


@dataclass
class _Family:
    original: TrainedModel
    task: UnlearnTask
    reference: Evaluation
    reference_seconds: float
    timing: dict[str, Any]
    #: The first of the timed reference retrains (a rerun of it may reuse it).
    reference_run: UnlearnResult


def load_average() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def timed_reference(task: UnlearnTask, repeats: int) -> tuple[UnlearnResult, dict[str, Any]]:
    """Retrain ``repeats`` times; the first run, and the times' median and spread.

    Every repeat must give the same bits on the CPU (the retrain is seeded); that it did
    is recorded, so a nondeterministic reference cannot pass unnoticed.
    """
    retrain = METHODS.create("retrain")
    runs = [retrain.unlearn(task) for _ in range(repeats)]
    seconds = [r.seconds for r in runs]
    first = runs[0].model.module.state_dict()
    same = all(
        all(torch.equal(first[k], v) for k, v in r.model.module.state_dict().items())
        for r in runs[1:]
    )
    timing = {
        "repeats": repeats,
        "median_s": round(float(np.median(seconds)), 4),
        "min_s": round(min(seconds), 4),
        "max_s": round(max(seconds), 4),
        "runs_s": [round(x, 4) for x in seconds],
        "bitwise_repeatable": same,
    }
    return runs[0], timing


def _reuses_reference(unlearner: Unlearner, fam: _Family) -> bool:
    """Would ``unlearner`` rerun the reference's own procedure, already shown repeatable?

    Only when it is the reference's method with the same parameters (and so the same
    seed), and at least two repeats gave bitwise-identical models: one run alone proves
    nothing about determinism.
    """
    ref = fam.reference_run
    return (
        unlearner.name == ref.method
        and unlearner.get_params() == ref.params
        and fam.timing["repeats"] >= 2
        and fam.timing["bitwise_repeatable"]
    )


def _row(
    name: str,
    fam: _Family,
    model: TrainedModel,
    seconds: float,
    test,
    exact=False,
    info=None,
    ev: Evaluation | None = None,
):
    """A table row for ``model``; ``ev`` is its evaluation when already known."""
    ev = evaluate(model, fam.task.forget, fam.task.retain, test) if ev is None else ev
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
    forget_class: int | str | None = None,
    seed: int = 0,
    device=None,
    on_row=None,
    reference_repeats: int = 3,
) -> Comparison:
    """Run every method (default: all registered) on one forget request and compare.

    The request is ``forget_ids`` if given; else every sample of class ``forget_class``
    (the class-wise scenario, where retraining gives FA ≈ 0); else a seeded random
    ``forget_fraction`` of the training set (the random scenario, where FA ≈ TA).
    Speedups are against the median of ``reference_repeats`` timed retrains.
    """
    if reference_repeats < 1:
        raise InvalidParameterError(
            f"reference_repeats must be at least 1. Got {reference_repeats} instead."
        )
    load_start = load_average()
    config = config or TrainConfig()
    params = params or {}
    scenario = "class" if forget_class is not None and forget_ids is None else "random"
    class_index: int | None = None  # the forgotten class, in the class scenario
    if forget_ids is None and forget_class is not None:
        class_index = dataset.class_index(forget_class)
        forget_ids = class_forget_ids(dataset, class_index)
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
            ref_run, timing = timed_reference(task, reference_repeats)
            ev = evaluate(ref_run.model, forget, retain, dataset.test)
            families[key] = _Family(original, task, ev, timing["median_s"], timing, ref_run)
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
    for name in methods or [
        n for n in METHODS.available() if "arrays" in METHODS.get(n).tags.inputs
    ]:
        unlearner = METHODS.create(name, **params.get(name, {}))
        fam = family(unlearner if unlearner.requires_strategy else None)
        known = None
        if _reuses_reference(unlearner, fam):  # the same model: its evaluation is known too
            result = dataclasses.replace(
                fam.reference_run,
                seconds=fam.reference_seconds,
                info={**fam.reference_run.info, "reused": REUSE_NOTE.format(**fam.timing)},
            )
            known = fam.reference
        else:
            result = unlearner.unlearn(fam.task)
        row, _ = _row(
            name, fam, result.model, result.seconds, dataset.test, unlearner.exact, result.info,
            known,
        )  # fmt: skip
        emit(row)
    return Comparison(
        dataset.name,
        len(dataset.train),
        len(forget),
        seed,
        original_ev.attack_strength,
        rows,
        reference_timing=main.timing,
        load_average={"start": load_start, "end": load_average(), "cores": os.cpu_count() or 1},
        scenario=scenario,
        forget_class=class_index,
    )
