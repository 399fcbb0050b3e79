"""Samples with identity: every row has a stable sample ID and an optional subject ID."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from unbake.data.sources import RowView, positions_of
from unbake.exceptions import DatasetError, InvalidParameterError

__all__ = ["Dataset", "Samples", "checked_ids", "content_hashes", "retain_classes_check"]


@dataclass(frozen=True)
class Samples:
    """An ordered set of labelled samples.

    ``X`` is float32 of shape ``(n, *input_shape)``, ``y`` int64 of shape ``(n,)``,
    ``ids`` the stable sample IDs (strings), ``subjects`` the owner of each sample
    (a string, or ``""`` where none is known).

    ``X`` is an array in memory, or a :class:`~unbake.data.sources.RowView`: rows of a
    source too large for memory (a memory-mapped store, a torch ``Dataset``, a Hugging
    Face ``datasets.Dataset``), read a batch at a time. Then :meth:`subset` and
    :meth:`split` are index views over that source, never copies
    (:func:`unbake.data.as_samples` builds such samples).
    """

    X: np.ndarray | RowView
    y: np.ndarray
    ids: np.ndarray
    subjects: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.y)
        if not (len(self.X) == len(self.ids) == len(self.subjects) == n):
            raise DatasetError(
                f"Samples arrays disagree in length (X={len(self.X)}, y={n}, ids={len(self.ids)}, "
                f"subjects={len(self.subjects)}); pass arrays with one row per sample."
            )

    @classmethod
    def build(
        cls,
        X: np.ndarray,
        y: np.ndarray,
        ids: Sequence[str] | np.ndarray | None = None,
        subjects: Sequence[str] | np.ndarray | None = None,
        *,
        id_prefix: str = "",
    ) -> Samples:
        """Validate raw arrays and wrap them; IDs default to ``f"{id_prefix}{row}"``."""
        X = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
        y_arr = np.asarray(y)
        n = len(y_arr)
        if X.ndim < 2 or len(X) != n:
            raise DatasetError(
                f"Features must have shape (n_samples, ...) matching {n} labels, got {X.shape}; "
                "reshape the features to one row per sample."
            )
        if y_arr.dtype.kind == "f":
            bad = np.flatnonzero(~np.isfinite(y_arr))
            if len(bad):
                raise DatasetError(f"Missing labels in rows {_rows(bad)}; fill or drop those rows.")
        y_arr = y_arr.astype(np.int64)
        flat = X.reshape(n, -1)
        bad_rows = np.flatnonzero(~np.isfinite(flat).all(axis=1))
        if len(bad_rows):
            raise DatasetError(
                f"NaN or infinite features in rows {_rows(bad_rows)}; impute or drop those rows."
            )
        ids_arr = checked_ids(ids, n, id_prefix)
        if subjects is None:
            subj_arr = np.array([""] * n, dtype=object)
        else:
            subj_arr = np.array(["" if s is None else str(s) for s in subjects], dtype=object)
        return cls(X, y_arr, ids_arr, subj_arr)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.X.shape[1:])

    @property
    def streamed(self) -> bool:
        """Whether the features are read from a source a batch at a time (not in memory)."""
        return isinstance(self.X, RowView)

    def subset(self, mask_or_index: np.ndarray) -> Samples:
        """The rows at ``mask_or_index``: row positions (``0..n-1``) or a boolean mask of
        length ``n``. Sample IDs go through :meth:`mask_of` or :meth:`split`.

        Streamed samples give an index view over the same source.
        """
        rows = positions_of(mask_or_index, len(self))
        X = self.X.view(rows) if isinstance(self.X, RowView) else self.X[rows]
        return Samples(X, self.y[rows], self.ids[rows], self.subjects[rows])

    def mask_of(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Boolean mask of the rows whose ID is in ``ids``."""
        wanted = {str(i) for i in ids}  # a set: no sorted copies of every ID (large data)
        return np.fromiter((str(i) in wanted for i in self.ids), dtype=bool, count=len(self))

    def split(self, forget_ids: Sequence[str] | np.ndarray) -> tuple[Samples, Samples]:
        """Return ``(forget, retain)``, each in this set's order."""
        mask = self.mask_of(forget_ids)
        return self.subset(mask), self.subset(~mask)

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``(X, y)`` as tensors; streamed features stay a view whose reads are tensors."""
        if isinstance(self.X, RowView):
            return self.X.torch_rows(), torch.from_numpy(self.y).to(device)  # type: ignore[return-value]
        return (
            torch.from_numpy(self.X).to(device),
            torch.from_numpy(self.y).to(device),
        )


#: The least a dataset must hold to train and evaluate anything meaningful.
MIN_TRAIN_ROWS = 10
MIN_TEST_ROWS = 2


@dataclass(frozen=True)
class Dataset:
    """A named dataset: ``train`` (trained on; the only rows a request unlearns),
    ``val`` (carved from training data, never trained on: for tuning and early stopping)
    and ``test`` (read only for final tables). ``classes`` names each label index.
    """

    name: str
    train: Samples
    test: Samples
    n_classes: int
    spec: dict = field(default_factory=dict)
    # None (the default) means no validation split: __post_init__ sets an empty one, so
    # the attribute is a Samples on every built Dataset.
    val: Samples = None  # type: ignore[assignment]
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.val is None:
            object.__setattr__(self, "val", self.train.subset(np.zeros(len(self.train), bool)))
        if not self.classes:
            object.__setattr__(self, "classes", tuple(str(i) for i in range(self.n_classes)))
        if len(self.classes) != self.n_classes:
            raise DatasetError(
                f"Dataset {self.name!r} names {len(self.classes)} classes but has "
                f"{self.n_classes}; pass one name per class."
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.train.input_shape

    def splits(self) -> dict[str, Samples]:
        """``{"train": …, "val": …, "test": …}``."""
        return {"train": self.train, "val": self.val, "test": self.test}

    def label_names(self, y: np.ndarray | Sequence[int]) -> list[str]:
        """The class name of each label index (for example a model's predictions).

        >>> Dataset("d", _EMPTY, _EMPTY, 2, classes=("cat", "dog")).label_names([1, 0])
        ['dog', 'cat']
        """
        return [self.classes[int(i)] for i in y]

    def class_index(self, label: str | int) -> int:
        """Resolve a class to its label index.

        An ``int`` is an index; a string is a class name, or else an index written out
        (``"3"``), so ``--class Sandal`` and ``--class 5`` both work on Fashion-MNIST.
        """
        text = str(label).strip()
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            if 0 <= int(label) < self.n_classes:
                return int(label)
        elif text in self.classes:
            return self.classes.index(text)
        elif text.isdigit() and 0 <= int(text) < self.n_classes:
            return int(text)
        shown = ", ".join(repr(c) for c in self.classes[:20])
        more = f" (and {self.n_classes - 20} more)" if self.n_classes > 20 else ""
        raise InvalidParameterError(
            f"Class {text!r} does not exist in {self.name}; name one of {shown}{more}, "
            f"or give an index 0..{self.n_classes - 1}."
        )

    def check(self, *, need_val: bool = False) -> None:
        """Refuse data too degenerate to train and evaluate on (one line: cause and fix)."""
        short = [
            (split, len(samples), least)
            for split, samples, least in (
                ("training", self.train, MIN_TRAIN_ROWS),
                ("validation", self.val, 1 if need_val else 0),
                ("test", self.test, MIN_TEST_ROWS),
            )
            if len(samples) < least
        ]
        if short:
            split, n, least = short[0]
            raise DatasetError(
                f"The {split} split of {self.name} has {n} rows, fewer than the {least} "
                f"needed (at least {MIN_TRAIN_ROWS} training, {MIN_TEST_ROWS} test and 1 "
                "validation row); add rows or change --test-fraction / --val-fraction."
            )
        if self.n_classes == 0:  # text: prompt–answer pairs have no classes
            return
        present = np.unique(self.train.y)
        if len(present) < 2:
            only = self.classes[int(present[0])] if len(present) else "none"
            raise DatasetError(
                f"The training split of {self.name} holds {len(present)} class ({only!r}); "
                "unbake needs at least two classes: add rows of another class."
            )


_EMPTY = Samples(np.zeros((0, 1), np.float32), np.zeros(0, np.int64), np.array([]), np.array([]))


def content_hashes(samples: Samples) -> list[str]:
    """sha256 of each sample's features and label, to detect changed source data.

    Text samples hash their own prompt and answer (:meth:`TextSamples.content_hashes`).
    """
    if hasattr(samples, "content_hashes"):
        return samples.content_hashes()
    width = int(np.prod(samples.input_shape))
    out: list[str] = []
    for start in range(0, len(samples), _HASH_CHUNK):  # a chunk at a time: X may be streamed
        flat = np.asarray(samples.X[start : start + _HASH_CHUNK]).reshape(-1, width)
        labels = samples.y[start : start + _HASH_CHUNK]
        out += [
            hashlib.sha256(row.tobytes() + int(label).to_bytes(8, "little")).hexdigest()
            for row, label in zip(flat, labels, strict=True)
        ]
    return out


_HASH_CHUNK = 4096


def checked_ids(ids: Sequence[str] | np.ndarray | None, n: int, id_prefix: str = "") -> np.ndarray:
    """The sample IDs as an object array; blank or duplicate IDs are refused naming the rows.

    ``None`` numbers the rows ``f"{id_prefix}{row}"``.
    """
    if ids is None:
        ids_arr = np.array([f"{id_prefix}{i}" for i in range(n)], dtype=object)
    else:
        ids_arr = np.array(["" if i is None else str(i) for i in ids], dtype=object)
        empty = np.flatnonzero([not i.strip() for i in ids_arr])
        if len(empty):
            raise DatasetError(
                f"Empty sample IDs in rows {_rows(empty)}; give every row an ID "
                "(fill the ID column, or drop the ID option to number the rows)."
            )
    if len(set(ids_arr.tolist())) == len(ids_arr):  # the common case, without sorted copies
        return ids_arr
    uniq, counts = np.unique(ids_arr.astype(str), return_counts=True)
    dup = uniq[counts > 1]
    if len(dup):
        rows = np.flatnonzero(np.isin(ids_arr.astype(str), dup))
        raise DatasetError(
            f"Duplicate sample IDs {[str(i) for i in dup[:5]]} in rows {_rows(rows)}; "
            "make the ID column unique."
        )
    return ids_arr


def _rows(rows: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f" (and {len(rows) - limit} more)" if len(rows) > limit else "")


def retain_classes_check(
    retain: Samples, classes: Sequence[str] = (), *, allow_one_class: bool = False
) -> None:
    """Refuse a deletion that would leave ``retain`` with fewer than two classes (a model
    that can only ever answer one class), unless ``allow_one_class``.

    Text samples (no labels) are never refused. ``classes`` names the label indices.

    >>> retain_classes_check(Samples.build(np.zeros((2, 1), np.float32), [0, 0]), ("a", "b"))
    Traceback (most recent call last):
    ...
    unbake.exceptions.InvalidParameterError: The request leaves the retain set with only class 'a', so the model left could answer nothing else; forget fewer samples, or pass --allow-one-class (allow_one_class=True) to accept a one-class model.
    """
    y = getattr(retain, "y", None)
    if allow_one_class or y is None or len(np.unique(y)) >= 2 or len(y) == 0:
        return
    label = int(y[0])
    name = classes[label] if label < len(classes) else str(label)
    raise InvalidParameterError(
        f"The request leaves the retain set with only class {name!r}, so the model left "
        "could answer nothing else; forget fewer samples, or pass --allow-one-class "
        "(allow_one_class=True) to accept a one-class model."
    )
