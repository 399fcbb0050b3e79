"""SISA for fine-tuning data of causal language models: one LoRA adapter per shard.

The ``sisa_lora`` strategy is SISA (Bourtoule et al., IEEE S&P 2021) with LoRA adapters
(Hu et al., ICLR 2022) as the shard models: every shard of subjects trains its own
adapter on the same frozen base model, in slices, with an adapter-only checkpoint after
every slice. Layout, seeds, schedule, backends and deletion are SISA's own
(:mod:`unbake.families.sisa.strategy`); only what a shard model is differs, in
:class:`LoRARecipe`:

* a shard model is the base with one seeded adapter (its seed derived from the shard's,
  as SISA derives every seed); only the adapter trains, on the answer tokens;
* a slice checkpoint holds the adapter alone (peft's key names, without the adapter's
  name); the model's checkpoint stores the adapters and the base model's sha256;
* slice step ``r`` sees the shard's rows of slices ``1..r``, padded only as wide as the
  longest of them, so rows of later slices (which a deletion may remove) never change
  the shapes, hence the bits, of an earlier step.

The trained model, :class:`LoRAEnsemble`, holds the base once and the S adapters, and
scores and generates with the mean of the adapters' next-token probabilities. Deleting
a subject retrains its shard's adapter from the last slice checkpoint before the
subject's slice (the ``sisa_lora`` method); the result is bitwise the model trained from
scratch on the remaining data with the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from unbake._validation import fixed
from unbake.data import Samples
from unbake.exceptions import InvalidParameterError, UnsupportedModelError
from unbake.families.sisa.strategy import SISA, ShardRecipe
from unbake.models import ModelSpec
from unbake.training.base import STRATEGIES
from unbake.training.lm import context_length, leading_rows, lm_loss, tokenise

__all__ = ["LoRAEnsemble", "LoRARecipe", "SISALoRA", "adapter_name"]


def adapter_name(shard: int) -> str:
    """The peft adapter name of shard ``shard`` in a :class:`LoRAEnsemble`."""
    return f"shard{shard}"


class LoRARecipe(ShardRecipe):
    """A shard model is a causal LM whose one LoRA adapter trains on the answer tokens."""

    def loss(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return lm_loss(module, x, y)

    def rows(self, X: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return leading_rows(X, y, n)

    def params(self, module: nn.Module) -> list[nn.Parameter]:
        return [p for p in module.parameters() if p.requires_grad]

    def state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        from unbake.models.hf import adapter_state

        return adapter_state(module)

    def load(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        from unbake.models.hf import load_adapter_state

        load_adapter_state(module, state)


class LoRAEnsemble(nn.Module):
    """S LoRA adapters on one frozen base; scores are the mean of their probabilities.

    ``forward(input_ids=...)`` returns an output whose ``logits`` are the log of the mean
    of the adapters' next-token probabilities: already log-probabilities, so everything
    that reads a causal LM's ``logits`` (losses, the text metrics, greedy decoding) reads
    the aggregate without knowing it is one. :meth:`generate` decodes greedily from it.
    Forward passes switch the active adapter, so one ensemble serves one caller at a time.
    """

    def __init__(self, lm: nn.Module, shards: int) -> None:
        super().__init__()
        self.lm = lm
        self.n_shards = shards

    @property
    def config(self):
        """The base model's ``transformers`` config (context length, special tokens)."""
        return self.lm.config

    def shard_keys(self, shard: int) -> list[str]:
        from unbake.models.hf import adapter_state

        return list(adapter_state(self.lm, adapter_name(shard)))

    def load_shard(self, shard: int, state: dict[str, torch.Tensor]) -> None:
        from unbake.models.hf import load_adapter_state

        load_adapter_state(self.lm, state, adapter_name(shard))

    def forward(self, input_ids: torch.Tensor, **kwargs: Any):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        return CausalLMOutputWithPast(logits=self._mean_log_probs(None, input_ids, **kwargs))

    def _mean_log_probs(self, caches: list | None, input_ids: torch.Tensor, **kwargs: Any):
        """The log of the mean of the adapters' next-token probabilities.

        With ``caches`` (one entry per adapter, ``None`` before the first step), each
        adapter runs on its own key-value cache, which this call extends: decoding then
        feeds only the new tokens.
        """
        total = None
        for shard in range(self.n_shards):
            self.lm.set_adapter(adapter_name(shard))
            if caches is None:
                out = self.lm(input_ids=input_ids, use_cache=False, **kwargs)
            else:
                out = self.lm(input_ids=input_ids, cache=caches[shard], use_cache=True, **kwargs)
                caches[shard] = out.cache
            log_probs = torch.log_softmax(out.logits.float(), dim=-1)
            total = log_probs if total is None else torch.logaddexp(total, log_probs)
        return total - math.log(self.n_shards)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        generation_config: Any = None,
        max_new_tokens: int = 32,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        do_sample: bool = False,
        **_: Any,
    ) -> torch.Tensor:
        """Greedy decoding from the aggregated distribution: prompt and new tokens.

        Prompts of different lengths are left-padded with an ``attention_mask``, as for
        ``transformers``' ``generate``. A finished row continues with ``pad_token_id``.
        Each adapter decodes on its own key-value cache, so a step costs one token per row.
        A ``transformers.GenerationConfig`` sets ``max_new_tokens``, ``eos_token_id`` (one
        or several), ``pad_token_id`` and ``do_sample``, as for a causal LM, so the text
        metrics decode the ensemble with the budget they give any model.
        """
        if generation_config is not None:
            gc = generation_config
            max_new_tokens = max_new_tokens if gc.max_new_tokens is None else gc.max_new_tokens
            eos_token_id = gc.eos_token_id if eos_token_id is None else eos_token_id
            pad_token_id = gc.pad_token_id if pad_token_id is None else pad_token_id
            do_sample = do_sample or bool(gc.do_sample)
        if do_sample:
            raise UnsupportedModelError(
                "A sisa_lora ensemble decodes greedily only; call generate with do_sample=False."
            )
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        eos = torch.tensor([eos] if isinstance(eos, int) else list(eos), device=input_ids.device)
        pad = int(eos[0]) if pad_token_id is None else pad_token_id
        ids = step = input_ids
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask
        done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
        caches: list = [None] * self.n_shards
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp_min(0)[:, -step.shape[1] :]
            logits = self._mean_log_probs(
                caches, step, attention_mask=mask, position_ids=positions, logits_to_keep=1
            )
            token = logits[:, -1].argmax(-1)
            token = torch.where(done, torch.full_like(token, pad), token)
            step = token[:, None]
            ids = torch.cat([ids, step], dim=1)
            mask = torch.cat([mask, torch.ones_like(token[:, None])], dim=1)
            done |= torch.isin(token, eos)
            if bool(done.all()):
                break
        return ids


@STRATEGIES.register("sisa_lora")
class SISALoRA(SISA):
    """SISA over LoRA adapters of a causal LM: one adapter per shard of subjects.

    Bourtoule et al., "Machine Unlearning" (IEEE S&P 2021), with the shard models of Hu et
    al., "LoRA: Low-Rank Adaptation of Large Language Models" (ICLR 2022) on one frozen
    base. Needs text data and an ``hf:`` model with ``lora_rank`` (``--param
    lora_rank=R``). Predictions are the mean of the adapters' next-token probabilities
    (:class:`LoRAEnsemble`).

    Its hyperparameters are :class:`~unbake.families.sisa.strategy.SISA`'s, less
    ``aggregation``. With ``assignment="subject"`` (the default) all of one person's rows
    share a shard and a slice, so forgetting a person retrains one adapter.
    """

    name = "sisa_lora"
    recipe = LoRARecipe
    #: SISA's hyperparameters, less ``aggregation``: always the mean of the probabilities.
    aggregation: str = fixed("mean")

    def _check_kind(self, samples: Samples) -> None:
        if hasattr(samples, "X"):
            raise InvalidParameterError(
                "The sisa_lora strategy fine-tunes a language model on text, and this dataset "
                "is arrays; use --strategy sisa for a classifier."
            )

    def _check_spec(self, spec: ModelSpec) -> None:
        from unbake.models.hf import is_hf, is_lora

        if not (is_hf(spec.name) and is_lora(spec)):
            raise InvalidParameterError(
                f"The sisa_lora strategy trains one LoRA adapter per shard of an hf: model; "
                f"got model {spec.name!r} with parameters {spec.params}. Give --model hf:PATH "
                "and --param lora_rank=R."
            )

    def shard_data(
        self, samples: Samples, rows: np.ndarray, spec: ModelSpec
    ) -> tuple[np.ndarray, np.ndarray]:
        """The shard's rows tokenised by the model's own tokenizer: ``(input_ids, labels)``."""
        from unbake.models.hf import causal_lm_config

        self._check_spec(spec)
        context = context_length(causal_lm_config(spec.name))
        ids, labels = tokenise(spec, samples.subset(rows), context=context)
        return ids.numpy(), labels.numpy()

    def fit(self, samples, *, spec, config, seed, n_classes, device=None):
        self._check_spec(spec)
        return super().fit(
            samples, spec=spec, config=config, seed=seed, n_classes=n_classes, device=device
        )

    def skeleton(self, spec: ModelSpec, input_shape: Sequence[int], n_classes: int) -> nn.Module:
        from unbake.models.hf import load_causal_lm

        self._check_spec(spec)
        names = [adapter_name(s) for s in range(self.shards)]
        lm = load_causal_lm(spec.name, seed=0, lora_rank=spec.params["lora_rank"], adapters=names)
        return LoRAEnsemble(lm, self.shards)
