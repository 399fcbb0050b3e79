"""Fine-tuning causal language models on the shared loop.

A text stream is the pair ``(input_ids, labels)`` of :func:`unbake.data.text.encode`, so
:func:`~unbake.training.loop.run_phases` drives language models exactly as it drives
classifiers: same seeded batch order, same optimiser, same hooks. The losses here read
only the answer tokens (``labels != -100``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from unbake.data.text import IGNORE, TextSamples, encode, prompt_text
from unbake.models import ModelSpec, build_model
from unbake.training.config import TrainConfig
from unbake.training.loop import optimize, resolve_device

__all__ = [
    "answer_loss_and_match",
    "answer_nll",
    "answer_token_nll",
    "context_length",
    "fit_causal_lm",
    "greedy_answers",
    "leading_rows",
    "lm_loss",
    "lm_streams",
    "tokenise",
]


def answer_nll(
    model: nn.Module, ids: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample summed negative log-likelihood of the answer tokens, and their counts."""
    logits = model(input_ids=ids).logits[:, :-1].float()
    target = labels[:, 1:]
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        target.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).view(target.shape)
    counts = (target != IGNORE).sum(1)
    return nll.sum(1), counts


def lm_loss(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every answer token of the batch."""
    total, counts = answer_nll(model, ids, labels)
    return total.sum() / counts.sum().clamp_min(1)


def context_length(model) -> int:
    """The context window in tokens (``max_position_embeddings``) of a model or its config."""
    config = getattr(model, "config", model)
    return int(getattr(config, "max_position_embeddings", 2048) or 2048)


def tokenise(spec: ModelSpec, samples: TextSamples, *, context: int):
    """``samples`` tokenised by ``spec``'s own tokenizer, refusing rows over ``context``."""
    from unbake.models.hf import load_tokenizer

    return encode(samples, load_tokenizer(spec.name), max_length=context)


def lm_streams(
    model: nn.Module, spec: ModelSpec, **samples: TextSamples
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each named text set tokenised by the model's own tokenizer: the loop's streams."""
    limit = context_length(model)
    return {name: tokenise(spec, s, context=limit) for name, s in samples.items()}


def leading_rows(
    ids: torch.Tensor, labels: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` encoded rows, padded only as wide as their longest row.

    What :func:`~unbake.data.text.encode` returns for those rows alone: a row ends at its
    last answer token (the EOS), so the columns after every row's end are padding. Padding
    set by rows that are not trained on would change the shapes, hence possibly the bits.
    """
    ids, labels = ids[:n], labels[:n]
    answer = (labels != IGNORE).any(0).nonzero()
    width = int(answer[-1]) + 1 if len(answer) else 1
    return ids[:, :width], labels[:, :width]


def fit_causal_lm(
    samples: TextSamples,
    *,
    spec: ModelSpec,
    config: TrainConfig,
    seed: int,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Fine-tune ``spec`` (full, or its LoRA adapters) on the answers of ``samples``."""
    module = build_model(spec, input_shape=(), n_classes=0, seed=seed).to(resolve_device(device))
    X, y = lm_streams(module, spec, train=samples)["train"]
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimize(
        module,
        X,
        y,
        config,
        seed=seed,
        loss_fn=lm_loss,
        params=trainable,
        description=f"fine-tuning {spec.name}",
    )
    return module


@torch.no_grad()
def answer_token_nll(
    model, samples: TextSamples, batch_size: int = 16
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per sample: the negative log-likelihood of each answer token (float64, EOS
    included), and whether greedy decoding under teacher forcing reproduces every one."""
    module = model.module.eval()
    ids, labels = lm_streams(module, model.spec, eval=samples)["eval"]
    device = next(module.parameters()).device
    tokens: list[np.ndarray] = []
    matches = []
    for i in range(0, len(ids), batch_size):
        x, y = ids[i : i + batch_size].to(device), labels[i : i + batch_size].to(device)
        logits = module(input_ids=x).logits[:, :-1].float()
        target = y[:, 1:]
        keep = target != IGNORE
        nll = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE, reduction="none")
        tokens += [row[k].double().cpu().numpy() for row, k in zip(nll, keep, strict=True)]
        matches.append(((logits.argmax(-1) == target) | ~keep).all(1).cpu())
    return tokens, np.asarray(torch.cat(matches).numpy(), dtype=bool)


def answer_loss_and_match(model, samples: TextSamples, batch_size: int = 16):
    """Per sample: mean answer-token loss, and whether greedy decoding under teacher
    forcing reproduces every answer token (numpy arrays)."""
    tokens, matches = answer_token_nll(model, samples, batch_size)
    return np.array([t.mean() if len(t) else 0.0 for t in tokens]), matches


@torch.no_grad()
def greedy_answers(
    model, samples: TextSamples, *, batch_size: int = 16, extra_tokens: int = 8
) -> list[str]:
    """The model's greedy answer to each prompt (chat-formatted), decoded to text.

    Each batch decodes at most ``extra_tokens`` more tokens than its longest reference
    answer, and stops at EOS. Prompts are left-padded, with an attention mask.
    """
    from unbake.models.hf import load_tokenizer, require_llm

    transformers = require_llm()
    tok = load_tokenizer(model.spec.name)
    module = model.module.eval()
    device = next(module.parameters()).device
    prompts = [
        tok(prompt_text(tok, p), add_special_tokens=False)["input_ids"] for p in samples.prompts
    ]
    lengths = [len(tok(str(a), add_special_tokens=False)["input_ids"]) for a in samples.answers]
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), int(tok.pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, p in enumerate(batch):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        config = transformers.GenerationConfig(
            max_new_tokens=max(lengths[i : i + batch_size]) + extra_tokens,
            do_sample=False,
            pad_token_id=int(tok.pad_token_id),
            eos_token_id=int(tok.eos_token_id),
        )
        gen = module.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
        )
        out += tok.batch_decode(gen[:, width:], skip_special_tokens=True)
    return [text.strip() for text in out]
