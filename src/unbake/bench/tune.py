"""``unbake tune``: search a method's own knobs with Optuna, scored against retraining.

Each trial runs the method on one forget request and is scored by its avg gap against
the retrain reference on forget / retain / **validation** (FA, RA, the validation
accuracy and the forget-vs-validation MIA): the test set is never read. A trial slower
than ``time_fraction`` × the retrain's time is pruned (kept in the study, never best),
and is stopped when it crosses that budget (:func:`unbake._budget.time_budget`) rather
than run to its end, so a study costs at most about ``trials × time_fraction`` retrains
plus its evaluations. The sampler is Optuna's TPE with an explicit seed, guided after a
third of the trials (random before: Optuna's default of 10 random start-up trials would
leave a 10-trial study a random search); every run is seeded, so the same seed gives the
same study (unless a trial's time crosses the budget differently).

The original and its retrain reference dominate the cost of a study (on Fashion-MNIST
with the ``cnn``, two trainings of 2–3 minutes each; a trial stops at 0.2 × one), and they depend
only on the data, model, training, scenario and seed, never on the method tuned. With a
``cache_dir`` they are trained once, saved there as hash-checked checkpoints beside the
reference's timing (:mod:`unbake.bench.cache`), and every later study of the same
(scenario, seed) reuses them; the study records that it did, and when they were made.

:func:`write_defaults` turns a saved study into a method's tuned defaults for its
scenario (:mod:`unbake.methods.tuned`, the package data that ``unbake forget`` reads),
citing the study by path and sha256. Commit studies under
``benchmarks/tuning/<method>-<scenario>.json``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from unbake._budget import TimeBudgetExceeded, time_budget
from unbake._progress import progress
from unbake._validation import validate_params
from unbake.bench import cache, code_info
from unbake.data import Dataset, Samples
from unbake.evaluation import avg_gap, evaluate, gap_metrics
from unbake.evaluation.compare import (
    class_forget_ids,
    load_average,
    random_forget_ids,
    timed_reference,
)
from unbake.exceptions import InvalidParameterError
from unbake.methods import METHODS, Knob, UnlearnTask
from unbake.methods.tuned import FORMAT, SCENARIOS, TunedDefaults, defaults_path, read_table
from unbake.models import ModelSpec
from unbake.training import TrainConfig, TrainedModel, fit, resolve_device
from unbake.workspace.atomic import atomic_write_text, sha256_bytes

__all__ = ["SCENARIOS", "Study", "best_entry", "tune", "write_defaults"]


def _finite(value: float | None, digits: int = 4) -> float | None:
    """``value`` rounded, or ``None`` when it is missing or not finite (JSON has no NaN)."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


@dataclass
class Study:
    """Every trial of one tuning run, the best within the time budget, and its setting."""

    method: str
    dataset: str
    model: str
    scenario: str
    forget_class: int | None
    n_forget: int
    seed: int
    budget_trials: int
    time_fraction: float
    search_space: dict[str, Any]
    defaults: dict[str, Any]
    reference: dict[str, Any]
    #: The parameters pinned by the user (part of ``defaults``; not searched).
    fixed: dict[str, Any] = field(default_factory=dict)
    original_score: float | None = None
    #: Trials sampled at random before TPE's model guides the search.
    startup_trials: int | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    load_average: dict[str, Any] = field(default_factory=dict)
    #: Which unbake ran the study (:func:`unbake.bench.code_info`).
    code: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> dict[str, Any] | None:
        """The lowest-scoring trial that finished within the time budget (None: none did)."""
        within = [t for t in self.trials if t["state"] == "complete"]
        return min(within, key=lambda t: (t["score"], t["number"])) if within else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "best": self.best, "sampler": "optuna.TPESampler"}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        """Write the study as JSON, atomically."""
        atomic_write_text(Path(path), self.to_json())


def _suggest(trial, name: str, knob: Knob) -> Any:
    if knob.kind == "choice":
        return trial.suggest_categorical(name, list(knob.choices))
    low, high = knob.low, knob.high
    if low is None or high is None:  # Knob itself refuses this: a range has both bounds
        raise InvalidParameterError(f"The knob {name!r} has no range; give it low and high.")
    if knob.kind == "int":
        return trial.suggest_int(name, int(low), int(high), log=knob.log)
    return trial.suggest_float(name, float(low), float(high), log=knob.log)


def tune(
    dataset: Dataset,
    method: str,
    *,
    trials: int = 20,
    scenario: str = "random",
    forget_class: int | str | None = None,
    forget_fraction: float = 0.1,
    model: ModelSpec | str = "mlp",
    config: TrainConfig | None = None,
    time_fraction: float = 0.2,
    seed: int = 0,
    fixed: dict[str, Any] | None = None,
    reference_repeats: int = 1,
    device=None,
    cache_dir: str | os.PathLike | None = None,
) -> Study:
    """Tune ``method``'s ``search_space`` on one forget request of ``dataset``.

    ``scenario`` is ``"random"`` (a seeded ``forget_fraction`` of the training set) or
    ``"class"`` (every sample of ``forget_class``, a name or an index). ``fixed`` pins
    some hyperparameters (checked against the method's constraints before any work);
    the knobs it names are not searched. ``cache_dir`` keeps the original and its timed
    retrain reference between studies of the same request and seed.
    """
    import optuna

    unlearner_cls = METHODS.get(method)
    fixed = dict(fixed or {})
    unknown = sorted(set(fixed) - set(unlearner_cls._parameter_constraints))
    if unknown:
        raise InvalidParameterError(
            f"Method {method!r} has no parameter {unknown[0]!r}; its parameters are "
            f"{sorted(unlearner_cls._parameter_constraints)}."
        )
    validate_params(fixed, unlearner_cls._parameter_constraints, method)
    space = {k: v for k, v in unlearner_cls.search_space.items() if k not in fixed}
    if not space:
        raise InvalidParameterError(
            f"Method {method!r} has no knobs left to tune; pick a method with a search space "
            "(see `unbake methods`) or pin fewer parameters."
        )
    if isinstance(trials, bool) or int(trials) < 1:
        raise InvalidParameterError(
            f"The tuning budget must be at least 1 trial. Got {trials!r}; pass --trials 1 or more."
        )
    if not time_fraction > 0:
        raise InvalidParameterError(
            f"The time budget must be a positive fraction of retrain time. Got {time_fraction!r}; "
            "pass e.g. --time-fraction 0.2."
        )
    if scenario not in SCENARIOS:
        raise InvalidParameterError(
            f"The scenario must be one of {list(SCENARIOS)}. Got {scenario!r} instead."
        )
    dataset.check(need_val=True)
    if scenario == "class":
        if forget_class is None:
            raise InvalidParameterError(
                "The class scenario needs a class to forget; pass --forget-class NAME or INDEX."
            )
        forget_class = dataset.class_index(forget_class)
        forget_ids = class_forget_ids(dataset, forget_class)
    else:
        forget_class = None
        forget_ids = random_forget_ids(dataset, forget_fraction, seed)
    if len(forget_ids) >= len(dataset.train):
        raise InvalidParameterError(
            "The forget set is the whole training set; nothing would be left to retain. "
            "Forget fewer samples."
        )
    defaults = {**unlearner_cls().get_params(), **fixed}
    load_start = load_average()
    config = config or TrainConfig()
    forget, retain = dataset.train.split(forget_ids)
    original, ref_model, timing, cached = _original_and_reference(
        dataset, forget, retain, model=model, config=config, seed=seed, device=device,
        repeats=reference_repeats, cache_dir=cache_dir, name=f"reference-{scenario}-seed{seed}",
    )  # fmt: skip
    task = UnlearnTask(original, forget, retain, device=device)
    reference = evaluate(ref_model, forget, retain, dataset.val)
    budget_s = time_fraction * timing["median_s"]
    startup_trials = min(10, max(2, int(trials) // 3))
    study = Study(
        method=method,
        dataset=dataset.name,
        model=original.describe(),
        scenario=scenario,
        forget_class=forget_class,
        n_forget=len(forget),
        seed=seed,
        budget_trials=int(trials),
        time_fraction=float(time_fraction),
        search_space={k: v.to_dict() for k, v in space.items()},
        defaults=defaults,
        fixed=fixed,
        reference={
            "method": "retrain",
            "seconds": timing["median_s"],
            "timing": timing,
            "evaluation_on_validation": reference.to_dict(),
            "cache": cached,
        },
        original_score=_finite(avg_gap(evaluate(original, forget, retain, dataset.val), reference)),
        startup_trials=startup_trials,
    )

    def record(trial, params, seconds: float, score: float | None, reason: str) -> None:
        study.trials.append(
            {
                "number": trial.number,
                "params": {k: params[k] for k in space},
                "score": _finite(score) if score is not None else None,
                "seconds": round(seconds, 4),
                "time_fraction": _finite(seconds / timing["median_s"]),
                "state": "pruned" if reason else "complete",
                "reason": reason,
            }
        )
        if reason:
            raise optuna.TrialPruned(reason)

    def objective(trial) -> float:
        params = {**defaults, **{k: _suggest(trial, k, knob) for k, knob in space.items()}}
        try:
            with time_budget(budget_s):
                result = METHODS.create(method, **params).unlearn(task, seed=seed)
        except TimeBudgetExceeded as exc:  # it would be pruned anyway: stop paying for it
            record(  # raises TrialPruned
                trial, params, exc.elapsed_s, None, f"stopped at {time_fraction:g} × retrain time"
            )
        ev = evaluate(result.model, forget, retain, dataset.val, metrics=gap_metrics())
        score = avg_gap(ev, reference)
        reason = "" if math.isfinite(score) else "non-finite score"
        if result.seconds > budget_s:
            reason = f"over {time_fraction:g} × retrain time"
        record(trial, params, result.seconds, score, reason)
        return score

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    opt = optuna.create_study(direction="minimize", sampler=sampler)
    with progress(int(trials), f"tune {method}") as bar:
        for _ in range(int(trials)):
            opt.optimize(objective, n_trials=1)
            bar.advance()
    study.load_average = {
        "start": _finite(load_start),
        "end": _finite(load_average()),
        "cores": os.cpu_count() or 1,
    }
    study.code = code_info()
    return study


def _original_and_reference(
    dataset: Dataset,
    forget: Samples,
    retain: Samples,
    *,
    model: ModelSpec | str,
    config: TrainConfig,
    seed: int,
    repeats: int,
    device,
    cache_dir: str | os.PathLike | None,
    name: str,
) -> tuple[TrainedModel, TrainedModel, dict[str, Any], dict[str, Any] | None]:
    """The original, its retrain reference and the reference's timing: from ``cache_dir``
    when an earlier study of the same data, request, model, training, seed and device
    left them there, else trained (and left there). The last value says where they came
    from (``None``: no cache)."""
    path: Path | None = None
    key: dict[str, Any] = {}
    if cache_dir is not None:
        key = {
            "kind": "tune-reference",
            "dataset": dataset.name,
            "train": cache.data_fingerprint(dataset.train),
            "forget": cache.data_fingerprint(forget),
            "model": (ModelSpec(model) if isinstance(model, str) else model).to_dict(),
            "config": config.model_dump(),
            "seed": seed,
            "reference_repeats": repeats,
            "device": str(resolve_device(device)),
        }
        path = cache.cell_path(cache_dir, name, key)
        entry = cache.read_cell(path, key)
        files = {r: path.with_name(f"{path.stem}-{r}.safetensors") for r in ("original", "ref")}
        if entry is not None:
            kept, ref = (cache.load_model(files[r], entry["sha256"][r]) for r in files)
            if kept is not None and ref is not None:
                for m in (kept, ref):
                    m.module.to(resolve_device(device))
                note = {"path": str(path), "reused": True, "written": entry["written"]}
                return kept, ref, entry["timing"], note
    original = fit(
        dataset.train, n_classes=dataset.n_classes, model=model, config=config, seed=seed,
        device=device,
    )  # fmt: skip
    run, timing = timed_reference(UnlearnTask(original, forget, retain, device=device), repeats)
    if path is None:
        return original, run.model, timing, None
    made = {"original": original, "ref": run.model}
    digests = {r: cache.save_model(files[r], made[r]) for r in files}
    cache.write_cell(path, key, {"sha256": digests, "timing": timing})
    return original, run.model, timing, {"path": str(path), "reused": False}


def best_entry(study: Study) -> TunedDefaults:
    """The best trial of ``study`` as its method's tuned defaults for its scenario (citing
    no study file yet: ``study`` and ``study_sha256`` are empty).

    Only a best trial that beats doing nothing (a lower avg gap than the original's) is
    taken: a setting worse than skipping the method is refused, as is a study with no
    trial within its time budget. The defaults are the best trial's knobs plus the
    parameters the study pinned.
    """
    best = study.best
    if best is None:
        raise InvalidParameterError(
            f"No trial of the {study.method} study finished within its time budget, so it "
            "has no best setting; the tuned defaults are unchanged. Raise --time-fraction "
            "or --trials."
        )
    if study.original_score is None or not best["score"] < study.original_score:
        gap = "unknown" if study.original_score is None else f"{study.original_score:.4g}"
        raise InvalidParameterError(
            f"The best trial of the {study.method} study ({study.scenario}, avg gap "
            f"{best['score']:.4g}) does not beat doing nothing (the original's avg gap: "
            f"{gap}), so its setting would not improve on skipping the method; the tuned "
            "defaults are unchanged. Widen the search (--trials, --time-fraction) or keep "
            "the method's own defaults."
        )
    return TunedDefaults(
        method=study.method,
        scenario=study.scenario,
        params={**study.fixed, **best["params"]},
        study="",
        study_sha256="",
        dataset=study.dataset,
        model=study.model,
        score=best["score"],
        original_score=study.original_score,
        best_trial=best["number"],
        trials=len(study.trials),
        seed=study.seed,
    )


def write_defaults(
    study: Study, study_path: str | os.PathLike, *, path: str | os.PathLike | None = None
) -> TunedDefaults:
    """Record the best trial of ``study`` (saved at ``study_path``) as its method's tuned
    defaults for its scenario (:func:`best_entry`), in the table at ``path`` (default:
    the one :mod:`unbake.methods.tuned` reads), atomically; returns the entry.

    The study is cited by its path (relative to the working directory when inside it)
    and the sha256 of its bytes, so the entry can be checked against the committed study.
    """
    entry = best_entry(study)
    study_path = Path(study_path)
    data = study_path.read_bytes()
    if json.loads(data).get("best") != json.loads(study.to_json())["best"]:
        raise InvalidParameterError(
            f"{study_path} does not hold this study; save the study there first."
        )
    try:
        cited = str(study_path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        cited = str(study_path.resolve())
    entry = replace(entry, study=cited, study_sha256=sha256_bytes(data))
    target = Path(path) if path is not None else defaults_path()
    table = read_table(target)
    fields = {k: v for k, v in entry.to_dict().items() if k not in ("method", "scenario")}
    table.setdefault(study.method, {})[study.scenario] = fields
    text = json.dumps({"format": FORMAT, "methods": table}, indent=2, sort_keys=True)
    atomic_write_text(target, text + "\n")
    return entry
