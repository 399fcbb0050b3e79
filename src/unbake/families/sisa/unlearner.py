"""SISA deletion: retrain only the affected shards, from the checkpoint before the data."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np

from unbake.backends import BACKEND, RAY_ADDRESS, WORKERS
from unbake.exceptions import IntegrityError, UnsupportedModelError
from unbake.families.sisa.layout import ShardLayout
from unbake.families.sisa.strategy import (
    META_KEY,
    install_states,
    layout_meta,
    restore_state,
    single_thread,
)
from unbake.methods.base import MethodTags, Unlearner, UnlearnTask, register_method
from unbake.training import STRATEGIES, resolve_device


@register_method
class SISAUnlearner(Unlearner):
    """Exact deletion from a SISA ensemble (Bourtoule et al., "Machine Unlearning", S&P 2021).

    For each shard that holds a forgotten sample, find the earliest slice holding one,
    restore the checkpoint taken before that slice, and retrain the remaining slice steps
    on the shard's remaining data. Every other shard, and every checkpoint taken before
    the data was seen, is kept as it is. A batch of requests retrains each affected shard
    once, and all affected shards train in parallel on the chosen backend.

    Since a shard's weights depend only on its own data, its seeds and the schedule, the
    result is bitwise the ensemble :class:`~unbake.families.sisa.strategy.SISA` trains from
    scratch on the retain set, checkpoints included. The model's own seed is always
    replayed (any other seed would not be exact), so the ``seed`` argument is not used.
    ``backend``, ``workers`` and ``ray_address`` change the wall time, never the result.
    """

    name = "sisa"
    tags = MethodTags(
        exact=True,
        reads=("retain",),
        requires_strategy="sisa",
        cost="retrains each affected shard from the slice checkpoint before its earliest "
        "forgotten sample",
    )
    suggested_original = {"strategy": "sisa", "strategy_params": {"shards": 5, "slices": 4}}

    backend: str = BACKEND("local")
    workers: int = WORKERS(1)
    ray_address: str | None = RAY_ADDRESS(None)

    def _unlearn(self, task: UnlearnTask, seed: int):
        original = task.original
        strategy = STRATEGIES.get(self.tags.requires_strategy)(
            **original.strategy_params,
            backend=self.backend,
            workers=self.workers,
            ray_address=self.ray_address,
        )
        retain = strategy.layout(task.retain, original.seed)
        forget = strategy.layout(task.forget, original.seed)
        _check_same_data(original, retain, forget)

        # The earliest slice holding a forgotten sample, per affected shard.
        earliest = {
            int(s): int(forget.slice[forget.shard == s].min()) for s in np.unique(forget.shard)
        }
        left = retain.sizes().sum(axis=1)
        for s in earliest:
            if left[s] == 0:
                raise UnsupportedModelError(
                    f"Cannot unlearn with {self.name}: this request empties shard {s} of "
                    f"{strategy.shards}, which would then have no model; retrain with fewer "
                    f"shards (unbake train --strategy {strategy.name} --shards N) or forget "
                    "fewer samples."
                )
        device = resolve_device(task.device)
        jobs = [
            strategy.job(
                task.retain,
                retain,
                s,
                spec=original.spec,
                config=original.config,
                seed=original.seed,
                n_classes=original.n_classes,
                device=device,
                start=k,
                state=restore_state(original, s, k - 1) if k > 0 else None,
            )
            for s, k in sorted(earliest.items())
        ]
        results = strategy.run(jobs)

        # Checkpoints are replaced, never written into, so the kept ones can be shared.
        with single_thread():
            module = copy.deepcopy(original.module).cpu()
            model = replace(original, module=module, artifacts=dict(original.artifacts))
            for job, states in zip(jobs, results, strict=True):
                install_states(model, job.shard, job.start, states)
        model.meta = layout_meta(retain, original.config, strategy.slices)
        model.module.to(device).eval()
        # Training cost in sample-epochs of one slice step, against training from scratch.
        cost = sum(sum(job.ends[job.start :]) for job in jobs)
        full = int(np.cumsum(retain.sizes(), axis=1).sum())
        return model, {
            "shards": strategy.shards,
            "slices": strategy.slices,
            "shards_retrained": sorted(earliest),
            "earliest_slice": {str(s): k + 1 for s, k in sorted(earliest.items())},
            "slices_retrained": sum(strategy.slices - k for k in earliest.values()),
            "slice_steps_total": strategy.shards * strategy.slices,
            "cost_fraction": round(cost / full, 6) if full else 0.0,
            "backend": self.backend,
            "seed": original.seed,
        }


def _check_same_data(original, retain: ShardLayout, forget: ShardLayout) -> None:
    """Retain ∪ forget must be exactly what each (shard, slice) was trained on."""
    recorded = original.meta.get(META_KEY, {}).get("fingerprints")
    if recorded is None:
        raise IntegrityError(
            "The SISA model has no record of its shards' data (meta['sisa'] is missing); "
            "retrain it with this version of unbake."
        )
    both = ShardLayout(
        np.concatenate([retain.ids, forget.ids]),
        np.concatenate([retain.shard, forget.shard]),
        np.concatenate([retain.slice, forget.slice]),
        retain.shards,
        retain.slices,
    )
    given = both.fingerprints()
    for s, (rec_row, given_row) in enumerate(zip(recorded, given, strict=True)):
        for r, (a, b) in enumerate(zip(rec_row, given_row, strict=True)):
            if a != b:
                raise IntegrityError(
                    f"The forget and retain sets together differ from the data shard {s}, "
                    f"slice {r + 1} of this SISA model was trained on; pass the model's own "
                    "training data (its active samples), split into forget and retain."
                )


@register_method
class SISALoRAUnlearner(SISAUnlearner):
    """Exact deletion from a ``sisa_lora`` model: SISA's deletion over LoRA adapters.

    Bourtoule et al., "Machine Unlearning" (IEEE S&P 2021), on the adapters of
    :class:`~unbake.families.sisa.lora.SISALoRA`. Forgetting a person (all of whose rows
    share a shard and a slice) restores that shard's adapter from the slice checkpoint
    before the person's slice and retrains it on the shard's remaining rows; the frozen
    base and every other adapter are kept. The result is bitwise the ``sisa_lora`` model
    trained from scratch on the retain set with the same seed.
    """

    name = "sisa_lora"
    tags = MethodTags(
        exact=True,
        reads=("retain",),
        requires_strategy="sisa_lora",
        inputs=("text",),
        cost="retrains each affected shard's LoRA adapter from the slice checkpoint before "
        "its earliest forgotten row",
    )
    suggested_original = {
        "strategy": "sisa_lora",
        "strategy_params": {"shards": 2, "slices": 2},
        "model_params": {"lora_rank": 16},
    }
