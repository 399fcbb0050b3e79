"""``unbake bench llm``'s exact-deletion rows: the sisa_lora ensemble, its deletion of a
forget split, checked bitwise against the ensemble retrained from scratch; the summary's
``sisa_lora_speedup``. On the tiny random Llama built in code (no download).
"""

import dataclasses

import numpy as np
import pytest

from unbake.bench.llm import QUICK, delete_exactly, sisa_lora_original, summarise
from unbake.data.tofu import generate_tofu
from unbake.testing import assert_bitwise_equal
from unbake.training import TrainConfig, differing_tensors

pytest.importorskip("transformers")
pytest.importorskip("peft")


def test_the_benchs_sisa_lora_deletion_is_bitwise_its_ensemble_from_scratch():
    from unbake.testing.conformance import tiny_lm_path

    tofu = generate_tofu(12, seed=0, facts=1, holdout_fraction=0.2)
    config = dataclasses.replace(
        QUICK,
        train=TrainConfig(epochs=2, batch_size=4, lr=3e-3),
        sisa_shards=2,
        sisa_slices=2,
        sisa_lora_rank=2,
    )
    original = sisa_lora_original(tofu.train, f"hf:{tiny_lm_path()}", config)
    assert original.strategy == "sisa_lora" and original.spec.params["lora_rank"] == 2
    assert original.strategy_params["shards"] == 2 and original.strategy_params["slices"] == 2

    persons = tofu.forget["forget10"]
    forget, retain = tofu.train.split(tofu.train.ids[np.isin(tofu.train.subjects, persons)])
    exact = delete_exactly(original, forget, retain)
    assert exact.differing == []
    assert_bitwise_equal(exact.deletion.model, exact.scratch.model, "sisa_lora deletion")
    assert exact.deletion.method == "sisa_lora" and exact.scratch.method == "retrain"
    assert len(exact.deletion.info["shards_retrained"]) == len(persons) == 1
    assert exact.speedup > 0

    # The comparison sees a change: the original differs from both, in the forgotten
    # person's shard only (its adapter and its later slice checkpoints).
    changed = differing_tensors(original, exact.scratch.model)
    (shard,) = exact.deletion.info["shards_retrained"]
    assert changed and all(f"shard{shard}" in k for k in changed)


def _row(method, fq, mu, ur, exp, seconds, frac, **extra):
    return {
        "split": "forget10",
        "method": method,
        "forget_quality": fq,
        "model_utility": mu,
        "utility_retain": ur,
        "canary_exposure": exp,
        "seconds": seconds,
        "time_fraction": frac,
        **extra,
    }


def test_the_summary_holds_sisa_loras_speedup_and_keeps_it_out_of_the_approximate_rows():
    rows = [
        _row("original", 0.001, 0.5, 0.8, 6.0, float("nan"), float("nan")),
        _row("retrain", 1.0, 0.5, 0.8, 1.0, 10.0, 1.0),
        _row("retrain_seed", 0.9, 0.5, 0.8, 1.2, 9.0, 0.9),
        _row("gentle", 0.4, 0.49, 0.78, 1.5, 1.0, 0.1),
        # exact rows: perfect forget quality and slow; never the best or the slowest method
        _row("sisa_lora_original", 0.01, 0.3, 0.5, 5.0, 12.0, 1.2),
        _row("sisa_lora_retrain", None, None, None, None, 10.0, 1.0),
        _row("sisa_lora", 1.0, 0.5, 0.8, 1.0, 2.5, 0.25, bitwise_equal=True, cost_fraction=0.2),
    ]
    s = summarise(rows, "forget10")
    assert s["best_method"] == "gentle" and s["max_time_fraction"] == 0.1
    assert s["sisa_lora_speedup"] == 4.0 and s["sisa_lora_bitwise_equal"] is True
    assert s["sisa_lora_cost_fraction"] == 0.2
    assert s["targets_met"]["sisa_lora_speedup"] is False  # the issue asks for at least 5x
    assert s["targets_met"]["sisa_lora_bitwise_equal"] is True

    rows[-1] = {**rows[-1], "seconds": 1.25, "bitwise_equal": False}
    s = summarise(rows, "forget10")
    assert s["sisa_lora_speedup"] == 8.0 and s["targets_met"]["sisa_lora_speedup"] is True
    assert s["targets_met"]["sisa_lora_bitwise_equal"] is False

    s = summarise(rows[:4], "forget10")  # a run without the sisa_lora rows
    assert s["sisa_lora_speedup"] is None and s["sisa_lora_bitwise_equal"] is None
    assert not s["targets_met"]["sisa_lora_speedup"]
