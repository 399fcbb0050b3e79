"""Preference optimisation towards "I don't know" on the forget set (IdkPO)."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from unbake.data.text import IGNORE
from unbake.methods._blocks import frozen_teacher
from unbake.methods._lm import (
    PreferenceUnlearner,
    lm_tags,
    log_likelihood,
    ref_log_likelihood,
    retain_nll,
)
from unbake.methods.base import register_method
from unbake.models.hf import load_tokenizer
from unbake.training.lm import lm_streams
from unbake.training.loop import Phase

__all__ = ["IDK_ANSWERS", "IdkPO"]

#: The refusals a forget prompt is steered to (one per sample, chosen by its ID's hash).
IDK_ANSWERS = (
    "I don't know.",
    "I'm not sure about that.",
    "I have no information about that.",
    "That is something I cannot recall.",
    "I don't have that information.",
)


def _refusal(sample_id: str) -> str:
    digest = hashlib.sha256(str(sample_id).encode()).digest()
    return IDK_ANSWERS[digest[0] % len(IDK_ANSWERS)]


def _pad_to(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return F.pad(t, (0, width - t.shape[1]), value=value)


@register_method
class IdkPO(PreferenceUnlearner):
    """DPO with a refusal as the preferred answer and the true answer as the rejected one.

    Rafailov et al., "Direct Preference Optimization" (NeurIPS 2023), applied to
    unlearning as the "IdkPO" baseline of Maini et al., TOFU (COLM 2024), and of Zhang et
    al., NPO (COLM 2024). With y_w an "I don't know" answer and y_l the true one:

        L = −E_f[ log σ(β [(log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l))]) ]
            + retain_weight · CE(B_r)

    π_ref is the frozen original. Each sample's refusal is fixed by a hash of its ID.
    """

    name = "idk"
    tags = lm_tags(cost="`epochs` passes over the forget set, each paired with retain batches")

    def _streams(self, task, model):
        """``forget`` holds each row's true and refusal encodings side by side: (n, 2, L)."""
        refusals = task.forget.with_answers([_refusal(i) for i in task.forget.ids])
        s = lm_streams(
            model.module, model.spec, forget=task.forget, idk=refusals, retain=task.retain
        )
        (fx, fy), (ix, iy) = s.pop("forget"), s.pop("idk")
        width = max(fx.shape[1], ix.shape[1])
        pad = int(load_tokenizer(model.spec.name).pad_token_id)
        ids = torch.stack([_pad_to(fx, width, pad), _pad_to(ix, width, pad)], dim=1)
        labels = torch.stack([_pad_to(fy, width, IGNORE), _pad_to(iy, width, IGNORE)], dim=1)
        return {"forget": (ids, labels), **s}

    def _phases(self, task, model, seed):
        reference = frozen_teacher(model.module)

        def step(m, got, _):
            ids, labels = got["forget"]
            lose, win = (ids[:, 0], labels[:, 0]), (ids[:, 1], labels[:, 1])
            margin = (log_likelihood(m, win) - ref_log_likelihood(reference, win)) - (
                log_likelihood(m, lose) - ref_log_likelihood(reference, lose)
            )
            loss = -F.logsigmoid(self.beta * margin).mean()
            return loss + retain_nll(m, got, self.retain_weight)

        return [Phase("forget", step, self.epochs, paired=("retain",))], []
