"""Where features live when they are not one array in memory: row sources and index views.

A :class:`RowSource` gives random access to the feature rows of a data set that need not
fit in memory: a memory-mapped store on disk (:class:`MemmapSource`), a map-style
``torch.utils.data.Dataset`` (:class:`TorchSource`), or a Hugging Face
``datasets.Dataset`` (:class:`HFSource`). A :class:`RowView` is some rows of a source,
by position: the lazy ``X`` of a :class:`~unbake.data.Samples`. Splitting, subsetting
and shard assignment compose positions and never copy features; only the rows of one
batch are read at a time.

A view follows numpy's rule: a slice (or :meth:`RowView.view`) is another view, while an
array of positions or a boolean mask reads those rows (a copy). ``np.asarray(view)``
reads every row, for the few code paths that need all of them in memory at once.
"""

from __future__ import annotations

import mmap
import os
import resource
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from unbake.exceptions import DatasetError, InvalidParameterError

__all__ = [
    "ArraySource",
    "HFSource",
    "MemmapSource",
    "RowSource",
    "RowView",
    "TorchSource",
    "concat_rows",
    "positions_of",
]

#: How many feature bytes a memory-mapped source reads before it hands the pages back
#: (``madvise(MADV_DONTNEED)``), so that its resident memory stays bounded.
RESIDENT_BUDGET = 64 << 20


class RowSource:
    """Random access to feature rows: ``read(positions)`` is a float32 array of shape
    ``(len(positions), *row_shape)``, in the order of ``positions``."""

    row_shape: tuple[int, ...] = ()

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, positions: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def read_batches(self, orders: Sequence[np.ndarray]) -> Iterator[np.ndarray | torch.Tensor]:
        """The rows of each position array in ``orders``, in turn (a source with loader
        workers overrides it to read ahead)."""
        for positions in orders:
            yield self.read(positions)


class ArraySource(RowSource):
    """An array already in memory (or a ``np.memmap``), behind the source interface."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.row_shape = tuple(array.shape[1:])

    def __len__(self) -> int:
        return len(self.array)

    def read(self, positions: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.array[positions], dtype=np.float32)


def _address_space_capped() -> bool:
    """Whether this process runs under an address-space limit (``prlimit --as``), where
    mapping a file larger than the limit would fail: then rows are read with ``pread``."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (OSError, ValueError):  # pragma: no cover - platforms without RLIMIT_AS
        return False
    return soft != resource.RLIM_INFINITY


class MemmapSource(RowSource):
    """Float32 rows in a ``.npy`` file, read a batch at a time.

    The file is memory-mapped, and the mapped pages are handed back to the kernel after
    every :data:`RESIDENT_BUDGET` bytes read, so the process's resident memory does not
    grow with the file. Under an address-space limit (``prlimit --as``) the rows are read
    with ``pread`` instead, since the mapping itself would not fit. Pickles as its path.
    """

    def __init__(self, path: str, *, io: str | None = None) -> None:
        self.path = str(path)
        try:
            with open(self.path, "rb") as handle:
                major, _ = np.lib.format.read_magic(handle)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if major == 1
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(handle)
                self._offset = handle.tell()
        except (OSError, ValueError) as exc:
            raise DatasetError(
                f"Cannot read the feature store {self.path} ({exc}); rebuild it."
            ) from None
        if dtype != np.float32 or fortran or len(shape) < 2:
            raise DatasetError(
                f"The feature store {self.path} holds {dtype} {shape}; it must be float32 "
                "rows in C order: rebuild it."
            )
        self.shape = tuple(int(s) for s in shape)
        self.row_shape = self.shape[1:]
        self._row_bytes = int(np.prod(self.row_shape)) * 4
        self.io = io or ("pread" if _address_space_capped() else "mmap")
        self._map: mmap.mmap | None = None
        self._array: np.ndarray | None = None
        self._fd: int | None = None
        self._read_since = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "io": self.io}

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, state["path"], io=state["io"])

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def read(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if self.io == "pread":
            return self._pread(positions)
        if self._array is None:
            self._map = mmap.mmap(self._descriptor(), 0, access=mmap.ACCESS_READ)
            count = int(np.prod(self.shape))
            flat = np.frombuffer(self._map, dtype=np.float32, count=count, offset=self._offset)
            self._array = flat.reshape(self.shape)
        out = np.ascontiguousarray(self._array[positions])
        self._read_since += out.nbytes
        if self._read_since >= RESIDENT_BUDGET and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)  # type: ignore[union-attr]
            self._read_since = 0
        return out

    def _pread(self, positions: np.ndarray) -> np.ndarray:
        fd, size = self._descriptor(), self._row_bytes
        buf = bytearray(size * len(positions))
        view = memoryview(buf)
        for k, p in enumerate(positions.tolist()):
            got = os.preadv(fd, [view[k * size : (k + 1) * size]], self._offset + p * size)
            if got != size:
                raise DatasetError(f"The feature store {self.path} is truncated; rebuild it.")
        return np.frombuffer(buf, dtype=np.float32).reshape(len(positions), *self.row_shape)


def item_part(item: Any, key: Any, what: str, index: int) -> Any:
    """``item[key]`` (a tuple position or a dict key), or ``key(item)`` for a function;
    a key the item lacks is refused naming the item's index."""
    if callable(key):
        return key(item)
    try:
        return item[key]
    except (KeyError, IndexError, TypeError):
        shown = f"keys {list(item)}" if isinstance(item, dict) else f"a {type(item).__name__}"
        raise DatasetError(
            f"Cannot take the {what} ({key!r}) from item {index} of the dataset, which is "
            f"{shown}; pass {what}= as a key or position of each item (or a sequence, or a "
            "function)."
        ) from None


def _as_float_rows(value: Any, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise DatasetError(
            f"The {what} are {type(value).__name__}, not numbers; return a tensor or an "
            "array of numbers, or pass features= to pick them."
        ) from None


class TorchSource(RowSource):
    """A map-style ``torch.utils.data.Dataset``: ``dataset[i]`` for each row read.

    ``features`` picks the features from an item (a tuple position, a dict key or a
    function; default ``0``). Given a ``DataLoader``'s settings, a batch is
    ``collate_fn([dataset[i] for i in batch])`` and training reads ahead with its
    ``num_workers`` worker processes and ``pin_memory``; the batch order is always
    unbake's own (seeded), never the loader's sampler.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        features: Any = 0,
        collate_fn: Callable[[list], Any] | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        row_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.dataset = dataset
        self.features = features
        self.collate_fn = collate_fn
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self._n = len(dataset)
        if row_shape is None:
            row_shape = tuple(self.read(np.array([0]))[0].shape) if self._n else (1,)
        self.row_shape = tuple(row_shape)

    def __len__(self) -> int:
        return self._n

    def item(self, index: int) -> Any:
        """``dataset[index]``; an error inside it is refused naming the row."""
        try:
            return self.dataset[index]
        except Exception as exc:  # the user's __getitem__ may raise anything
            raise DatasetError(
                f"The dataset's __getitem__({index}) raised {type(exc).__name__}: {exc}; fix "
                "the dataset so that every index from 0 to len(dataset) - 1 loads."
            ) from None

    def _collate(self, items: list) -> np.ndarray:
        if self.collate_fn is None:
            rows = [_as_float_rows(item_part(it, self.features, "features", 0), "features")
                    for it in items]  # fmt: skip
            return np.stack(rows) if rows else np.zeros((0, *self.row_shape), np.float32)
        batch = self.collate_fn(items)
        return _as_float_rows(item_part(batch, self.features, "features", 0), "features")

    def read(self, positions: np.ndarray) -> np.ndarray:
        return self._collate([self.item(int(p)) for p in np.asarray(positions).tolist()])

    def read_batches(self, orders: Sequence[np.ndarray]) -> Iterator[np.ndarray | torch.Tensor]:
        if self.num_workers == 0:
            yield from super().read_batches(orders)
            return
        loader = torch.utils.data.DataLoader(
            _Rows(self),
            batch_sampler=[np.asarray(o).tolist() for o in orders],
            num_workers=self.num_workers,
            collate_fn=self._collate_rows,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(0),  # never the global RNG
        )
        yield from loader

    def _collate_rows(self, items: list) -> torch.Tensor:
        return torch.from_numpy(self._collate(items))


class _Rows(torch.utils.data.Dataset):
    """The items of a :class:`TorchSource`, each load checked (for its loader workers)."""

    def __init__(self, source: TorchSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        return self.source.item(index)


class HFSource(RowSource):
    """A Hugging Face ``datasets.Dataset`` (Arrow, memory-mapped): the ``features``
    column(s) of the rows read, in numpy format. Several columns (a table) are stacked
    side by side into one row; an image or array column keeps its shape."""

    def __init__(self, dataset: Any, features: str | Sequence[str]) -> None:
        self.columns = [features] if isinstance(features, str) else list(features)
        missing = [c for c in self.columns if c not in dataset.column_names]
        if missing:
            raise DatasetError(
                f"Column {missing[0]!r} not found in the dataset; its columns are "
                f"{', '.join(dataset.column_names)}: pass features= naming one of them."
            )
        self.dataset = dataset.with_format("numpy", columns=self.columns)
        self._n = len(dataset)
        self.row_shape = tuple(self.read(np.array([0]))[0].shape) if self._n else (1,)

    def __len__(self) -> int:
        return self._n

    def read(self, positions: np.ndarray) -> np.ndarray:
        batch = self.dataset[np.asarray(positions).tolist()]
        parts = [_as_float_rows(batch[c], f"values of column {c!r}") for c in self.columns]
        if len(parts) == 1:
            return parts[0]
        return np.stack(parts, axis=1).reshape(len(parts[0]), -1)


def positions_of(index: Any, n: int) -> np.ndarray:
    """Row positions (int64) from a boolean mask of length ``n`` or integer positions.

    Anything else (sample IDs, floats, out-of-range positions) is refused with a message
    that says what ``Samples.subset`` takes.
    """
    if isinstance(index, slice):
        return np.arange(n, dtype=np.int64)[index]
    if isinstance(index, torch.Tensor):
        index = index.cpu().numpy()
    arr = np.asarray(index)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise InvalidParameterError(
                f"A boolean mask over {n} samples must have shape ({n},), got {arr.shape}; "
                "build it from these samples (for example samples.mask_of(ids))."
            )
        return np.flatnonzero(arr)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        hint = (
            "; to select by sample ID use samples.split(ids) or samples.subset(samples.mask_of(ids))"
            if arr.dtype.kind in "UO"
            else ""
        )
        raise InvalidParameterError(
            f"Samples.subset takes row positions (integers 0..{n - 1}) or a boolean mask "
            f"of length {n}, got {arr.dtype} {arr.shape}{hint}."
        )
    bad = arr[(arr < -n) | (arr >= n)]
    if len(bad):
        raise InvalidParameterError(
            f"Row position {int(bad[0])} is out of range for {n} samples; pass positions "
            f"0..{n - 1} (sample IDs go through samples.mask_of(ids))."
        )
    return np.where(arr < 0, arr + n, arr).astype(np.int64)


class RowView:
    """Some rows of a :class:`RowSource`, by position: an index view, never a copy.

    ``as_tensors`` makes row reads return torch tensors (``Samples.tensors()``) instead
    of numpy arrays. See the module docstring for which indexing reads and which views.
    """

    def __init__(
        self, source: RowSource, positions: np.ndarray | None = None, *, as_tensors: bool = False
    ) -> None:
        self.source = source
        self.positions = (
            np.arange(len(source), dtype=np.int64)
            if positions is None
            else np.asarray(positions, dtype=np.int64)
        )
        self.as_tensors = as_tensors

    # --- array-like facts -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.positions)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.positions), *self.source.row_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    dtype = np.dtype(np.float32)

    # --- views and reads --------------------------------------------------------------
    def view(self, index: Any) -> RowView:
        """The rows ``index`` (positions or a mask of this view) as another view."""
        return RowView(
            self.source, self.positions[positions_of(index, len(self))], as_tensors=self.as_tensors
        )

    def torch_rows(self) -> RowView:
        """The same rows, read as torch tensors."""
        return RowView(self.source, self.positions, as_tensors=True)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self.view(index)
        rows = self.source.read(self.positions[positions_of(index, len(self))])
        return self._out(rows)

    def _out(self, rows: np.ndarray | torch.Tensor) -> Any:
        if self.as_tensors:
            return rows if isinstance(rows, torch.Tensor) else torch.from_numpy(rows)
        return rows.numpy() if isinstance(rows, torch.Tensor) else rows

    def read_batches(self, orders: Sequence[Any]) -> Iterator[Any]:
        """The rows of each index batch in ``orders`` (positions in this view), in turn."""
        mapped = [self.positions[positions_of(o, len(self))] for o in orders]
        for rows in self.source.read_batches(mapped):
            yield self._out(rows)

    def to(self, device: Any = None) -> torch.Tensor:
        """Every row of the view as one tensor (as ``Tensor.to`` would give)."""
        return torch.from_numpy(self.source.read(self.positions)).to(device)

    def chunks(self, size: int = 4096) -> Iterator[np.ndarray]:
        """Every row, ``size`` at a time, in order."""
        for start in range(0, len(self), size):
            rows = self.source.read(self.positions[start : start + size])
            yield rows.numpy() if isinstance(rows, torch.Tensor) else rows

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.source.read(self.positions)
        out = out.numpy() if isinstance(out, torch.Tensor) else out
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"RowView({type(self.source).__name__}, rows={len(self)})"


def concat_rows(a: torch.Tensor | RowView, b: torch.Tensor | RowView) -> torch.Tensor | RowView:
    """The rows of ``a`` then ``b``: ``torch.cat`` for tensors, one view where both are
    views of the same source (nothing read), else both read and joined."""
    if isinstance(a, RowView) and isinstance(b, RowView) and a.source is b.source:
        return RowView(a.source, np.concatenate([a.positions, b.positions]), as_tensors=True)
    return torch.cat([x.to() if isinstance(x, RowView) else x for x in (a, b)])
