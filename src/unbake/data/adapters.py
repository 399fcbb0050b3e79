"""The user's own data as :class:`~unbake.data.Samples`: arrays, a torch ``Dataset`` or
``DataLoader``, or a Hugging Face ``datasets.Dataset``.

:func:`as_samples` is the one door: ``fit``, ``UnlearnTask`` and ``Workspace.create``
all pass what the user gave through it. Features stay where they are (a
:class:`~unbake.data.sources.RowSource`) and are read a batch at a time; only the
labels, sample IDs and subjects (one small value per row) are held in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from unbake.data.samples import Dataset, Samples, checked_ids
from unbake.data.sources import HFSource, RowView, TorchSource, item_part
from unbake.data.text import TextSamples
from unbake.exceptions import DatasetError

__all__ = ["as_dataset", "as_samples", "loader_batch_size"]

#: Per row: a sequence (one value a row), a function of the row index, or the key (a
#: tuple position or dict key) of the value in each item.
PerRow = Sequence[Any] | np.ndarray | Callable[[int], Any] | str | int | None


def as_samples(
    data: Any,
    *,
    ids: PerRow = None,
    subjects: PerRow = None,
    labels: PerRow = None,
    features: Any = None,
    id_prefix: str = "",
) -> Samples | TextSamples:
    """Wrap ``data`` as samples, without reading its features into memory.

    ``data`` may be :class:`Samples` or :class:`TextSamples` (returned as they are), a
    pair ``(X, y)`` of arrays or tensors, a map-style ``torch.utils.data.Dataset``, a
    ``torch.utils.data.DataLoader`` (its dataset, ``collate_fn``, ``num_workers`` and
    ``pin_memory``; its batch size is :func:`loader_batch_size`), or a Hugging Face
    ``datasets.Dataset``.

    ``ids``, ``subjects`` and ``labels`` each give one value per row: a sequence, a
    function of the row index, or (for a torch dataset) the position or key of the
    value in each item, or (for a ``datasets.Dataset``) a column name. IDs default to
    ``f"{id_prefix}{row}"``; labels to the item's position 1 (``"label"`` for a
    ``datasets.Dataset``). ``features`` picks the features: an item's position or key
    (default 0), or the column(s) of a ``datasets.Dataset`` (default ``"features"``).

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> ds = TensorDataset(torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 0, 1, 0, 1]))
    >>> s = as_samples(ds, ids=lambda i: f"img-{i}")
    >>> len(s), s.input_shape, s.ids[2], s.streamed
    (6, (1, 4, 4), 'img-2', True)
    """
    if isinstance(data, (Samples, TextSamples)):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        X, y = (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for v in data)
        return Samples.build(X, y, _values(ids, len(y)), _values(subjects, len(y)),
                             id_prefix=id_prefix)  # fmt: skip
    if isinstance(data, torch.utils.data.DataLoader):
        return _from_loader(data, ids, subjects, labels, features, id_prefix)
    if hasattr(data, "with_format") and hasattr(data, "column_names"):
        return _from_hf(data, ids, subjects, labels, features, id_prefix)
    if (
        hasattr(data, "__getitem__")
        and hasattr(data, "__len__")
        and not isinstance(data, (np.ndarray, str, bytes))
    ):
        return _from_torch(TorchSource(data, features=0 if features is None else features),
                           ids, subjects, labels, id_prefix)  # fmt: skip
    raise DatasetError(
        f"Cannot read training data from a {type(data).__name__}; pass Samples, an (X, y) "
        "pair of arrays, a torch Dataset or DataLoader, or a datasets.Dataset."
    )


def loader_batch_size(data: Any) -> int | None:
    """The batch size of a ``DataLoader`` (``None`` for anything else)."""
    if isinstance(data, torch.utils.data.DataLoader):
        return data.batch_size
    return None


def _values(spec: PerRow, n: int) -> list[Any] | None:
    """Per-row values given as a sequence or a function of the row index (else None)."""
    if spec is None:
        return None
    if callable(spec):
        return [spec(i) for i in range(n)]
    values = list(spec)  # type: ignore[arg-type]
    if len(values) != n:
        raise DatasetError(
            f"Got {len(values)} per-row values for {n} rows; give exactly one value per row."
        )
    return values


def _is_key(spec: PerRow) -> bool:
    return isinstance(spec, (str, int)) and not isinstance(spec, bool)


def _from_torch(
    source: TorchSource, ids: PerRow, subjects: PerRow, labels: PerRow, id_prefix: str
) -> Samples:
    """Samples over a torch dataset; one pass over its items reads what is keyed."""
    n = len(source)
    if labels is None:
        tensors = getattr(source.dataset, "tensors", None)
        labels = tensors[1].tolist() if tensors is not None and len(tensors) > 1 else 1
    keyed = {name: spec for name, spec in (("ids", ids), ("subjects", subjects),
                                           ("labels", labels)) if _is_key(spec)}  # fmt: skip
    found: dict[str, list[Any]] = {name: [] for name in keyed}
    for i in range(n if keyed else 0):
        item = source.item(i)
        for name, key in keyed.items():
            found[name].append(_part(item, key, name, i))
    per_row = {
        name: found[name] if name in keyed else _values(spec, n)
        for name, spec in (("ids", ids), ("subjects", subjects), ("labels", labels))
    }
    y = _labels(per_row["labels"], n)
    return _samples(RowView(source), y, per_row["ids"], per_row["subjects"], id_prefix)


def _part(item: Any, key: Any, what: str, index: int) -> Any:
    value = item_part(item, key, what, index)
    return value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value


def _labels(values: list[Any] | None, n: int) -> np.ndarray:
    if values is None:
        raise DatasetError("The dataset has no labels; pass labels= (one per row).")
    try:
        y = np.asarray(values)
    except (TypeError, ValueError):
        y = np.zeros(0, dtype=object)
    whole = y.dtype.kind in "iu" or (
        y.dtype.kind == "f" and bool(np.isfinite(y).all()) and bool((y == np.round(y)).all())
    )
    if y.shape != (n,) or not whole:
        raise DatasetError(
            "Labels must be one whole-number class index per row; encode class names as "
            "indices 0..K-1 (or pass labels=)."
        )
    return y.astype(np.int64)


def _samples(
    X: RowView, y: np.ndarray, ids: list | None, subjects: list | None, id_prefix: str
) -> Samples:
    ids_arr = checked_ids(ids, len(y), id_prefix)
    subj = np.array(["" if s is None else str(s) for s in (subjects or [""] * len(y))], object)
    return Samples(X, y, ids_arr, subj)


def _from_loader(
    loader: torch.utils.data.DataLoader,
    ids: PerRow,
    subjects: PerRow,
    labels: PerRow,
    features: Any,
    id_prefix: str,
) -> Samples:
    sampler = loader.sampler
    if isinstance(sampler, torch.utils.data.RandomSampler) and (
        sampler.generator is None and loader.generator is None
    ):
        raise DatasetError(
            "The DataLoader shuffles without a seed (shuffle=True and no generator), so its "
            "order cannot be reproduced; pass shuffle=False (unbake shuffles with its own "
            "seed) or generator=torch.Generator().manual_seed(N)."
        )
    default = loader.collate_fn is torch.utils.data.default_collate
    source = TorchSource(
        loader.dataset,
        features=0 if features is None else features,
        collate_fn=None if default else loader.collate_fn,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
    )
    return _from_torch(source, ids, subjects, labels, id_prefix)


def _column(data: Any, spec: PerRow, what: str) -> list[Any] | None:
    """A column of a ``datasets.Dataset`` named by ``spec`` (or per-row values)."""
    n = len(data)
    if isinstance(spec, str):
        if spec not in data.column_names:
            raise DatasetError(
                f"Column {spec!r} ({what}) not found in the dataset; its columns are "
                f"{', '.join(data.column_names)}."
            )
        return list(data[spec])
    return _values(spec, n)


def _from_hf(
    data: Any, ids: PerRow, subjects: PerRow, labels: PerRow, features: Any, id_prefix: str
) -> Samples | TextSamples:
    """Samples over a Hugging Face ``datasets.Dataset``; text has ``prompt`` and ``answer``."""
    if features is None and {"prompt", "answer"} <= set(data.column_names):
        return TextSamples.build(
            [str(p) for p in data["prompt"]],
            [str(a) for a in data["answer"]],
            _column(data, ids, "sample IDs") if ids is not None else None,
            _column(data, subjects, "subjects"),
        )
    source = HFSource(data, "features" if features is None else features)
    y = _labels(_column(data, "label" if labels is None else labels, "labels"), len(data))
    return _samples(
        RowView(source), y, _column(data, ids, "sample IDs"),
        _column(data, subjects, "subjects"), id_prefix,
    )  # fmt: skip


def as_dataset(
    data: Any,
    *,
    name: str = "user",
    classes: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    **options: Any,
) -> Dataset:
    """A :class:`Dataset` over ``data`` (anything :func:`as_samples` takes; ``options``
    go to it), split into train / validation / test index views by the keyed hash of
    each row's subject or ID, as the built-in loaders split."""
    from unbake.data.loaders import _dataset
    from unbake.data.splits import SplitSpec

    if isinstance(data, Dataset):
        return data
    full = as_samples(data, **options)
    if isinstance(full, TextSamples):
        raise DatasetError(
            "Text data goes into a workspace through a JSONL file; save it with one object "
            "per line (id, subject, prompt, answer) and use dataset='jsonl'."
        )
    n_classes = int(full.y.max()) + 1 if len(full) else 0
    names = tuple(classes) if classes is not None else tuple(str(i) for i in range(n_classes))
    split = SplitSpec.parse(test_fraction, val_fraction, split_seed)
    return _dataset(name, full, names, split)
