"""``unbake bench llm``'s exact-deletion rows: the sisa_lora ensemble and its deletion of a
forget split, checked bitwise against the ensemble retrained from scratch, on the tiny
random Llama built in code (no download). The summary's ``sisa_lora_speedup`` is tested
in tests/test_tofu_metrics.py, beside the rest of the summary.
"""

import dataclasses

import numpy as np
import pytest

from unbake.bench.llm import QUICK, delete_exactly, sisa_lora_original
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
