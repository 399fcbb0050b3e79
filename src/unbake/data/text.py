"""Text samples with identity: prompt–answer pairs, each with a sample ID and a subject.

:class:`TextSamples` has the identity API of :class:`~unbake.data.Samples` (``ids``,
``subjects``, ``subset``, ``mask_of``, ``split``) and holds strings. They are tokenised
only at training time, by the model's own tokenizer and chat template
(:func:`encode`): the result is a pair of tensors ``(input_ids, labels)``, right-padded,
with ``labels`` equal to ``-100`` everywhere but on the answer tokens, so the loss reads
only the answers. Right padding needs no attention mask in a causal model: a real token
only ever attends to the real tokens before it.

>>> s = TextSamples.build(["What?"], ["This."], ids=["q1"], subjects=["ann"])
>>> s.split(["q1"])[0].answers.tolist()
['This.']
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unbake.data.samples import Dataset, Samples, _rows, checked_ids
from unbake.exceptions import DatasetError

__all__ = ["IGNORE", "TextSamples", "encode", "prompt_text", "read_jsonl", "text_dataset"]

#: The label of a token the loss ignores (prompt and padding).
IGNORE = -100
_FIELDS = ("id", "subject", "prompt", "answer")


@dataclass(frozen=True)
class TextSamples:
    """Ordered prompt–answer pairs with sample IDs and subjects (object arrays of str)."""

    prompts: np.ndarray
    answers: np.ndarray
    ids: np.ndarray
    subjects: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.prompts) == len(self.answers) == len(self.ids) == len(self.subjects)):
            raise DatasetError(
                "TextSamples arrays disagree in length; pass one prompt, answer, ID and "
                "subject per sample."
            )

    @classmethod
    def build(
        cls,
        prompts: Sequence[str],
        answers: Sequence[str],
        ids: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
    ) -> TextSamples:
        """Validate and wrap; empty answers and blank or duplicate IDs raise, naming rows."""
        n = len(prompts)
        answers_arr = np.array([str(a) for a in answers], dtype=object)
        empty = np.flatnonzero([not a.strip() for a in answers_arr])
        if len(empty):
            raise DatasetError(
                f"Empty answers in rows {_rows(empty)}; give every row a non-empty answer."
            )
        subj = [""] * n if subjects is None else ["" if s is None else str(s) for s in subjects]
        return cls(
            np.array([str(p) for p in prompts], dtype=object),
            answers_arr,
            checked_ids(ids, n),
            np.array(subj, dtype=object),
        )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return ()

    def subset(self, mask_or_index: np.ndarray) -> TextSamples:
        return TextSamples(
            self.prompts[mask_or_index],
            self.answers[mask_or_index],
            self.ids[mask_or_index],
            self.subjects[mask_or_index],
        )

    # The identity API reads only ``ids`` and ``subset``: one implementation serves both.
    mask_of = Samples.mask_of
    split = Samples.split

    def content_hashes(self) -> list[str]:
        """sha256 of each row's prompt and answer, to detect changed source data."""
        return [
            hashlib.sha256(json.dumps([str(p), str(a)]).encode()).hexdigest()
            for p, a in zip(self.prompts, self.answers, strict=True)
        ]

    def with_answers(self, answers: Sequence[str]) -> TextSamples:
        """The same prompts and identities with other answers (e.g. refusals)."""
        return TextSamples(
            self.prompts, np.array(list(answers), dtype=object), self.ids, self.subjects
        )


def prompt_text(tokenizer: Any, prompt: str) -> str:
    """``prompt`` as the model sees it: its chat template with the assistant turn opened."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt + "\n"


def encode(
    samples: TextSamples, tokenizer: Any, *, max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)``: chat-formatted prompt + answer + EOS, right-padded.

    ``labels`` is ``IGNORE`` on the prompt and the padding. A row longer than
    ``max_length`` tokens is refused, naming it (truncating would cut the answer).
    """
    rows, masks = [], []
    for prompt, answer in zip(samples.prompts, samples.answers, strict=True):
        p = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        a = tokenizer(str(answer), add_special_tokens=False)["input_ids"]
        a = [*a, tokenizer.eos_token_id]
        rows.append(p + a)
        masks.append([False] * len(p) + [True] * len(a))
    long = np.flatnonzero([len(r) > max_length for r in rows])
    if len(long):
        raise DatasetError(
            f"Rows {_rows(long)} (IDs {list(samples.ids[long][:3])}) are longer than the "
            f"model's context of {max_length} tokens; shorten their prompts or answers."
        )
    width = max((len(r) for r in rows), default=1)
    ids = torch.full((len(rows), width), int(tokenizer.pad_token_id), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        labels[i, : len(r)] = torch.where(torch.tensor(m), torch.tensor(r), IGNORE)
    return ids, labels


def read_jsonl(path: str | Path) -> TextSamples:
    """Rows ``{"id", "subject", "prompt", "answer"}`` of a JSONL file, validated.

    A row that is not a JSON object, or lacks a field, is refused naming its line.
    """
    file = Path(path)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(
            f"Cannot read {file} ({exc.strerror}); check the --path option."
        ) from None
    except UnicodeDecodeError:
        raise DatasetError(f"{file} is not UTF-8 text; write the JSONL as UTF-8.") from None
    records: list[dict] = []
    missing: dict[str, list[int]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{file} line {number} is not valid JSON ({exc.msg}); write one object per line."
            ) from None
        if not isinstance(row, dict):
            raise DatasetError(f"{file} line {number} is not a JSON object; write one per line.")
        for key in _FIELDS:
            if row.get(key) is None:
                missing.setdefault(key, []).append(number)
        records.append(row)
    if missing:
        key, where = next(iter(missing.items()))
        shown = ", ".join(map(str, where[:8])) + (" ..." if len(where) > 8 else "")
        raise DatasetError(
            f"{file} rows on lines {shown} have no {key!r}; every row needs "
            f"{', '.join(map(repr, _FIELDS))}."
        )
    if not records:
        raise DatasetError(f"{file} holds no rows; write one JSON object per line.")
    return TextSamples.build(
        [r["prompt"] for r in records],
        [r["answer"] for r in records],
        ids=[r["id"] for r in records],
        subjects=[r["subject"] for r in records],
    )


def text_dataset(name: str, train: TextSamples, val: TextSamples, test: TextSamples, spec: dict):
    """A :class:`Dataset` of text (no classes); refuses an empty training split."""
    if len(train) == 0:
        raise DatasetError(
            f"The training split of {name} is empty; add rows or lower --test-fraction."
        )
    return Dataset(name, train, test, 0, spec, val, ())  # type: ignore[arg-type]
