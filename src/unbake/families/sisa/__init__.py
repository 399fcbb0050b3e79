"""SISA (Bourtoule et al., IEEE S&P 2021): sharded training and exact deletion, in one place.

* :mod:`~unbake.families.sisa.layout`: which shard and slice each sample belongs to;
* :mod:`~unbake.families.sisa.strategy`: the ``sisa`` training strategy, its shard jobs
  and slice checkpoints, and the aggregated ensemble;
* :mod:`~unbake.families.sisa.lora`: the ``sisa_lora`` strategy, the same over LoRA
  adapters of a causal language model (one adapter per shard, on a shared frozen base);
* :mod:`~unbake.families.sisa.unlearner`: the ``sisa`` and ``sisa_lora`` methods, which
  retrain only the affected shards from the checkpoint before the forgotten data.
"""

from unbake.families.sisa.layout import ShardLayout, fnv1a
from unbake.families.sisa.lora import LoRAEnsemble, LoRARecipe, SISALoRA
from unbake.families.sisa.strategy import (
    SISA,
    ShardJob,
    ShardRecipe,
    SISAEnsemble,
    checkpoint_key,
    single_thread,
    slice_epochs,
    train_shard,
)
from unbake.families.sisa.unlearner import SISALoRAUnlearner, SISAUnlearner

__all__ = [
    "SISA",
    "LoRAEnsemble",
    "LoRARecipe",
    "SISAEnsemble",
    "SISALoRA",
    "SISALoRAUnlearner",
    "SISAUnlearner",
    "ShardJob",
    "ShardLayout",
    "ShardRecipe",
    "checkpoint_key",
    "fnv1a",
    "single_thread",
    "slice_epochs",
    "train_shard",
]
