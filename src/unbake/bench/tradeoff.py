"""``unbake bench tradeoff``: the mission's trade-off table, measured.

Every registered method for arrays (exact, certified and approximate) on one forget
request (a seeded random fraction of the training set), beside the ``original``
(doing nothing) and ``retrain_seed`` (the noise floor), with three kinds of column:

- **efficiency**: the unlearning step's wall time and its speedup against retraining
  the same model (the median of ``reference_repeats`` timed retrains, measured in the
  same run by :func:`~unbake.evaluation.compare.compare_methods`);
- **utility**: TA retained (the row's test accuracy as a percentage of the main
  original's, so a strategy's own accuracy cost counts) and the avg gap to retraining;
- **privacy**: the population attacks of the metric registry (loss, confidence,
  entropy, modified entropy, SVC MIA-efficacy, logistic regression), and the audit of
  :func:`~unbake.evaluation.audit.audit` against a reference bank: U-LiRA (AUC, TPR at
  1% FPR, its permutation p-value and verdict), KLoM on the forget set, the NeurIPS
  2023 challenge score from K models per side (the challenge used 512) and the ghost gap;
- the **guarantee** the method's tags declare: exact, certified or none.

The main model's audits reuse one bank of ``timing_references`` (32) models, which is
also what the bank timing measures: the bank is built sequentially (one thread), on a
local pool of ``workers`` processes and on Ray with ``workers`` CPUs, the same jobs and
the same bits each time; parallel efficiency is speedup ÷ workers. Each row also sums the
seconds the jobs themselves took where they ran (``job_seconds``), which splits a lost
efficiency into the workers' idle share (``busy_fraction``) and jobs that ran slower
than alone (``job_slowdown``: contention for the cores or memory). Ray is timed with
its session started and one job per worker run first (start-up and warm-up reported
apart, and an efficiency that includes them); the local pool starts its processes
inside the timed build, so on a dataset as small as digits its efficiency measures
process start-up, not parallelism. The IN shadows of an audit depend on the forget set and the bank, not on the
method, so every audit of the main model shares one set of them. Methods that need
their own model (SISA, certified removal) are audited against a bank of
``family_references`` models of that recipe. ``retrain_seed`` carries no audit: the
``retrain`` row's audit (retraining with other seeds, against the references) is the
privacy noise floor.

The summary's ``audit_seconds_32_refs`` is one complete audit that reuses the 32-model
bank: the IN shadows, the method's runs and every statistic, for the ``original`` (the
audit's own cost; each method adds its K runs, listed per row as ``audit_s``, measured
where the table's K is 32). ``original_class_auc`` audits doing nothing on a whole
class forgotten (its own bank of ``family_references`` models).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from unbake import _json as strict_json
from unbake._threads import pin_threads
from unbake.backends.ray import ray_session
from unbake.bench import BENCHMARKS
from unbake.bench.sisa import _same_bits, _timed
from unbake.data import Dataset, Samples, load_dataset
from unbake.evaluation.audit import AuditReport, audit, train_in_shadows
from unbake.evaluation.bank import Recipe, ReferenceBank, train_bank
from unbake.evaluation.compare import class_forget_ids, compare_methods, random_forget_ids
from unbake.exceptions import InvalidParameterError, UnbakeError
from unbake.methods import METHODS
from unbake.methods.tuned import RequestContext, resolve
from unbake.models import ModelSpec
from unbake.training import TrainConfig

__all__ = ["TARGETS", "TradeoffSetup", "array_methods", "run_tradeoff", "tradeoff_benchmark"]

#: The issue's targets: summary key → (bound, "min" = at least / "max" = at most / "near½").
TARGETS = {
    "original_class_auc": (0.95, "min"),
    "retrain_auc": (0.05, "near_half"),
    "audit_seconds_32_refs": (600.0, "max"),
    "ray_parallel_efficiency": (0.8, "min"),
}
#: The audit statistics each row carries at its top level (every one is under "audit").
AUDIT_COLUMNS = {
    "ulira_auc": "ulira_auc",
    "ulira_tpr_at_1pct_fpr": "ulira_tpr_at_1pct_fpr",
    "p_value": "p_value",
    "detectable_auc_gap": "detectable_auc_gap",
    "klom_forget": "klom_forget_median",
    "klom_forget_p95": "klom_forget_p95",
    "challenge_score": "challenge_score",
    "ghost_gap": "ghost_gap_mean",
}
#: Load beyond a bank build's own workers above which its timings are called untrustworthy.
BUSY_LOAD = 0.5
GUARANTEE = {"exact": "exact", "certified": "certified", "approximate": "none"}
FRAMING = ("original", "retrain_seed")


@dataclass(frozen=True)
class TradeoffSetup:
    """What one run measures; the defaults are the full Fashion-MNIST run."""

    model: str = "mlp"
    train: dict[str, Any] = field(default_factory=lambda: {"epochs": 10, "batch_size": 128})
    forget_fraction: float = 0.1
    #: K of the main model's audits (a prefix of the timed bank).
    references: int = 32
    #: K of the banks of other recipes (SISA, certified) and of the class-wise audit.
    family_references: int = 8
    #: Models in the bank whose building is timed on every backend.
    timing_references: int = 32
    workers: int = 2
    #: Processes for the untimed training (other banks, IN shadows); 1: in this process.
    fit_workers: int = 2
    #: Backends the bank is built on beside the sequential baseline.
    backends: tuple[str, ...] = ("local", "ray")
    forget_class: int | None = 0
    seed: int = 0
    reference_repeats: int = 3
    #: ``None``: every registered method for arrays.
    methods: tuple[str, ...] | None = None

    def check(self) -> None:
        if not self.references <= self.timing_references:
            raise InvalidParameterError(
                f"references ({self.references}) must not exceed timing_references "
                f"({self.timing_references}): the audits reuse the timed bank."
            )
        if self.workers < 2:
            raise InvalidParameterError(
                f"workers must be at least 2 to measure parallel efficiency. Got {self.workers}."
            )


def array_methods() -> list[str]:
    """Every registered method that unlearns arrays, ``retrain`` first."""
    names = [n for n in METHODS.available() if "arrays" in METHODS.get(n).tags.inputs]
    return ["retrain", *sorted(n for n in names if n != "retrain")]


def _recipe_of(name: str | None, main: Recipe) -> Recipe:
    """The recipe of the model ``name`` unlearns from (its suggested original, else ``main``)."""
    suggested = (METHODS.get(name).suggested_original or {}) if name else {}
    if not suggested:
        return main
    spec = suggested.get("model", main.spec)
    return Recipe(
        spec if isinstance(spec, ModelSpec) else ModelSpec(spec),
        main.config,
        main.n_classes,
        suggested.get("strategy", "monolithic"),
        dict(suggested.get("strategy_params", {})),
    )


def _bank_rows(
    pool: Samples, recipe: Recipe, setup: TradeoffSetup
) -> tuple[list[dict[str, Any]], ReferenceBank, dict[str, Any]]:
    """Build the timed bank sequentially and on each backend; rows, the bank, its row."""
    seeds = list(range(setup.timing_references))
    with pin_threads(1):  # the baseline uses one core, as each parallel job does
        sequential, seq_s = _timed(train_bank, pool, recipe, seeds=seeds)
    base = {"part": "bank", "references": len(seeds), "n_pool": len(pool)}
    # the 1-minute load average after each build: a busy neighbour shows here
    seq_jobs_s = sum(sequential.fit_seconds)
    rows = [
        {**base, "backend": "sequential", "workers": 1, "seconds": seq_s, "speedup": 1.0}
        | {"efficiency": 1.0, "load_after": os.getloadavg()[0], "job_seconds": seq_jobs_s}
    ]
    bank, used = sequential, rows[0]
    for backend in setup.backends:
        row: dict[str, Any] = {**base, "backend": backend, "workers": setup.workers}
        build = {"seeds": seeds, "backend": backend, "workers": setup.workers}
        try:
            with contextlib.ExitStack() as stack:
                if backend == "ray":
                    session = ray_session(workers=setup.workers)
                    row["startup_s"] = _timed(stack.enter_context, session)[1]
                    # one job per worker first, so the timed build finds warm workers that
                    # have imported torch (a local pool starts fresh processes: cold)
                    warm = {**build, "seeds": seeds[: setup.workers]}
                    row["warmup_s"] = _timed(train_bank, pool, recipe, **warm)[1]
                built, seconds = _timed(train_bank, pool, recipe, **build)
        except UnbakeError as exc:  # Ray missing or unable to start: say so, keep going
            rows.append({**row, "error": str(exc)})
            continue
        speedup = seq_s / seconds
        cold = seconds + row.get("startup_s", 0.0) + row.get("warmup_s", 0.0)
        jobs_s = sum(built.fit_seconds)
        row.update(
            seconds=seconds,
            speedup=speedup,
            efficiency=speedup / setup.workers,
            efficiency_with_startup=seq_s / cold / setup.workers,
            # efficiency ≈ busy ÷ slowdown: the share of the workers' time spent in the
            # jobs, and how much slower each job ran than in the sequential baseline
            job_seconds=jobs_s,
            busy_fraction=jobs_s / (seconds * setup.workers),
            job_slowdown=jobs_s / seq_jobs_s,
            load_after=os.getloadavg()[0],
            bitwise_equal=all(
                _same_bits(a, b) for a, b in zip(built.models, sequential.models, strict=True)
            ),
        )
        rows.append(row)
        bank, used = built, row
    return rows, bank, used


def _audit_row(report: AuditReport, seconds: float) -> dict[str, Any]:
    stats = report.to_dict()["stats"]
    return {
        **{col: stats.get(key) for col, key in AUDIT_COLUMNS.items()},
        "verdict": report.verdict,
        "references": stats["references"],
        "audit_s": seconds,
        "audit": stats,
    }


@contextlib.contextmanager
def _phase(phases: dict[str, float], name: str) -> Iterator[None]:
    """Time the ``with`` block into ``phases[name]``: where a run's time went."""
    start = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = time.perf_counter() - start


def _audit_rows(
    ds: Dataset,
    forget: Samples,
    pool: Samples,
    main: Recipe,
    main_bank: ReferenceBank,
    methods: list[str],
    params: dict[str, dict[str, Any]],
    setup: TradeoffSetup,
) -> dict[str, dict[str, Any]]:
    """One audit per method and for the original; IN shadows shared per recipe."""
    banks: dict[str, ReferenceBank] = {main.key(): main_bank}
    shadows: dict[str, tuple[list, float]] = {}
    fits: dict[str, Any] = {"backend": "local", "workers": setup.fit_workers}
    audits: dict[str, dict[str, Any]] = {}
    for name in ("original", *methods):
        method = None if name == "original" else name
        recipe = _recipe_of(method, main)
        key = recipe.key()
        if key not in banks:
            seeds = list(range(setup.family_references))
            banks[key] = train_bank(pool, recipe, seeds=seeds, **fits)
        if key not in shadows:
            shadows[key] = _timed(
                train_in_shadows, recipe=recipe, forget=forget, pool=pool, bank=banks[key], **fits
            )
        in_models, shadow_s = shadows[key]
        unlearner = None if method is None else METHODS.create(method, **params.get(method, {}))
        report, seconds = _timed(
            audit,
            recipe=recipe,
            forget=forget,
            pool=pool,
            bank=banks[key],
            unlearner=unlearner,
            test=ds.test,
            seed=setup.seed,
            in_models=in_models,
            **fits,
        )
        audits[name] = _audit_row(report, shadow_s + seconds)
    return audits


def _class_auc(ds: Dataset, main: Recipe, setup: TradeoffSetup) -> float | None:
    """U-LiRA AUC of doing nothing when a whole class is forgotten (its own bank)."""
    if setup.forget_class is None:
        return None
    forget, pool = ds.train.split(class_forget_ids(ds, setup.forget_class))
    fits: dict[str, Any] = {"backend": "local", "workers": setup.fit_workers}
    bank = train_bank(pool, main, seeds=list(range(setup.family_references)), **fits)
    report = audit(recipe=main, forget=forget, pool=pool, bank=bank, seed=setup.seed, **fits)
    return report.stats["ulira_auc"]


def run_tradeoff(ds: Dataset, setup: TradeoffSetup | None = None) -> dict[str, Any]:
    """Measure the trade-off table on ``ds``; the benchmark's body (config, rows, summary)."""
    setup = setup or TradeoffSetup()
    setup.check()
    config = TrainConfig.parse(**setup.train)
    methods = list(setup.methods) if setup.methods is not None else array_methods()
    ctx = RequestContext(dataset=ds.name, model=setup.model, scenario="random")
    params = {m: resolve(m, ctx)[0] for m in methods}
    forget_ids = random_forget_ids(ds, setup.forget_fraction, setup.seed)
    forget, pool = ds.train.split(forget_ids)
    main = Recipe(ModelSpec(setup.model), config, ds.n_classes)
    phases: dict[str, float] = {}

    with _phase(phases, "compare"):  # efficiency and utility, against the timed retrain
        comparison = compare_methods(
            ds,
            methods=methods,
            params=params,
            model=setup.model,
            config=config,
            forget_ids=forget_ids,
            seed=setup.seed,
            reference_repeats=setup.reference_repeats,
        ).to_dict()
    with _phase(phases, "bank"):  # the main model's bank, timed on every backend
        bank_rows, timing_bank, bank_used = _bank_rows(pool, main, setup)
    with _phase(phases, "audits"):  # privacy: one audit per row
        main_bank = timing_bank.first(setup.references)
        audits = _audit_rows(ds, forget, pool, main, main_bank, methods, params, setup)
    with _phase(phases, "audit_timing"):  # a complete audit reusing the timed bank
        if setup.references == setup.timing_references:
            audit_k_s = audits["original"]["audit_s"]
        else:
            fits = {"backend": "local", "workers": setup.fit_workers}
            audit_k_s = _timed(
                audit,
                recipe=main,
                forget=forget,
                pool=pool,
                bank=timing_bank,
                test=ds.test,
                seed=setup.seed,
                **fits,
            )[1]
    with _phase(phases, "class_audit"):  # power: a class never unlearned must be flagged
        class_auc = _class_auc(ds, main, setup)

    rows = _rows(comparison, audits)
    summary = _summary(rows, bank_rows, bank_used, audit_k_s, class_auc, setup)
    summary["phase_seconds"] = phases
    return {
        "dataset": ds.name,
        "config": {
            **asdict(setup),
            "train": config.model_dump(),
            "methods": methods,
            "tuned_params": {m: p for m, p in params.items() if p},
            "n_train": comparison["n_train"],
            "n_forget": comparison["n_forget"],
            "scenario": "random",
            "reference_timing": comparison["reference_timing"],
            "attack_strength": comparison["attack_strength"],
            "challenge_note": "The challenge score here comes from K models per side; the "
            "NeurIPS 2023 challenge used 512, so this ε is coarse.",
        },
        "rows": rows + bank_rows,
        "summary": summary,
    }


def _rows(comparison: dict[str, Any], audits: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``part: tradeoff`` row per comparison row, with its guarantee and audit."""
    table = comparison["rows"]
    original_ta = next(r["ta"] for r in table if r["method"] == "original")
    out = []
    for r in table:
        name = r["method"]
        kind = METHODS.get(name).tags.kind if name not in FRAMING else None
        guarantee = GUARANTEE[kind] if kind else ("exact" if name == "retrain_seed" else "—")
        ta_retained = 100.0 * r["ta"] / original_ta if original_ta else None
        empty = dict.fromkeys([*AUDIT_COLUMNS, "verdict", "references", "audit_s", "audit"])
        out.append(
            {
                "part": "tradeoff",
                **r,
                "guarantee": guarantee,
                "ta_retained": None if ta_retained is None else round(ta_retained, 2),
                **audits.get(name, empty),
            }
        )
    return out


def _met(value: float | None, bound: float, how: str) -> bool | None:
    """Whether ``value`` meets its target; None when this run did not measure it."""
    if value is None or not math.isfinite(value):
        return None
    if how == "min":
        return value >= bound
    if how == "max":
        return value <= bound
    return abs(value - 0.5) <= bound


def _summary(rows, bank_rows, bank_used, audit_32_s, class_auc, setup) -> dict[str, Any]:
    table = {r["method"]: r for r in rows}
    by_backend = {r["backend"]: r for r in bank_rows}
    audited = [r for r in rows if r["audit_s"] is not None and r["method"] != "original"]
    slowest = max(audited, key=lambda r: r["audit_s"]) if audited else None
    summary: dict[str, Any] = {
        "original_class_auc": class_auc,
        "original_random_auc": table["original"]["ulira_auc"],
        "original_random_tpr_at_1pct_fpr": table["original"]["ulira_tpr_at_1pct_fpr"],
        "retrain_auc": table["retrain"]["ulira_auc"] if "retrain" in table else None,
        "audit_seconds_32_refs": audit_32_s if setup.timing_references == 32 else None,
        "audit_seconds_k_refs": audit_32_s,
        "bank_seconds_32_refs": bank_used["seconds"] if setup.timing_references == 32 else None,
        "bank_seconds_k_refs": bank_used["seconds"],
        "bank_backend": bank_used["backend"],
        "timing_references": setup.timing_references,
        "slowest_audit": slowest
        and {
            "method": slowest["method"],
            "seconds": slowest["audit_s"],
            "references": slowest["references"],
        },
        "ray_parallel_efficiency": by_backend.get("ray", {}).get("efficiency"),
        "ray_parallel_efficiency_with_startup": by_backend.get("ray", {}).get(
            "efficiency_with_startup"
        ),
        "pool_parallel_efficiency": by_backend.get("local", {}).get("efficiency"),
        "backends_bitwise_equal": all(r.get("bitwise_equal", True) for r in bank_rows),
        "indistinguishable": sorted(
            r["method"] for r in rows if r["verdict"] == "indistinguishable"
        ),
    }
    summary["timing_note"] = _timing_note(bank_rows)
    summary["targets"] = {k: {"bound": b, "kind": how} for k, (b, how) in TARGETS.items()}
    summary["targets_met"] = {k: _met(summary[k], b, how) for k, (b, how) in TARGETS.items()}
    return summary


def _timing_note(bank_rows: list[dict[str, Any]]) -> str:
    """Whether the bank's timings can be trusted: each build loads the machine with its own
    workers (1 for the sequential baseline), so only the load beyond them is another's."""
    extra = max(r.get("load_after", 0.0) - r["workers"] for r in bank_rows)
    cores = os.cpu_count() or 1
    if extra > BUSY_LOAD:
        return (
            f"The machine was busy (1-minute load up to {extra:.1f} beyond the build's own "
            f"workers, on {cores} cores): the timings, speedups and efficiencies are not "
            "trustworthy; rerun alone."
        )
    return (
        f"1-minute load at most {max(extra, 0.0):.1f} beyond the build's own workers "
        f"(on {cores} cores) while the bank was built."
    )


def _round(value: Any) -> Any:
    """``value`` (finite: see :func:`unbake._json.finite`) with floats to 4 decimals."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


@BENCHMARKS.register("tradeoff")
def tradeoff_benchmark(*, quick: bool, data_dir: str | None) -> dict[str, Any]:
    """Fashion-MNIST (full) with the MLP, K = 32; digits, K = 8 for the table under ``--quick``."""
    if quick:
        ds = load_dataset("digits")
        # digits models train in a fraction of a second: starting worker processes for
        # the untimed training would cost more than it saves
        setup = TradeoffSetup(train={"epochs": 15}, references=8, fit_workers=1)
    else:
        ds = load_dataset("fashion-mnist", data_dir=data_dir)
        setup = TradeoffSetup()
    return _round(strict_json.finite(run_tradeoff(ds, setup)))
