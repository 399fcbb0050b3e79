"""A data set kept on disk beside a workspace, larger than memory: a folder of
memory-mapped features and one small column per row.

The folder holds ``features.npy`` (float32 rows, read a batch at a time through
:class:`~unbake.data.sources.MemmapSource`), ``labels.npy`` (int64), ``ids.txt`` and
``subjects.txt`` (one value a line) and ``store.json`` (the format version, the row
count and shape). It is written a chunk at a time (:func:`write_store`; :func:`import_csv`
and :func:`import_parquet` for a CSV or Parquet file too large for memory), so neither
writing nor reading it ever holds every feature row in memory.
``load_dataset("store", path=FOLDER)`` opens it as a :class:`~unbake.data.Dataset` whose
splits are index views.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from unbake.data.samples import Dataset, Samples, checked_ids
from unbake.data.sources import MemmapSource, RowView
from unbake.exceptions import DatasetError

__all__ = ["STORE_VERSION", "import_csv", "import_parquet", "open_store", "write_store"]

STORE_VERSION = 1
#: One chunk: features ``(k, *row_shape)``, labels ``(k,)``, IDs and subjects (k each).
Chunk = tuple[np.ndarray, np.ndarray, Sequence[str], Sequence[str]]


def write_store(
    folder: str | os.PathLike, chunks: Iterable[Chunk], *, rows: int, row_shape: Sequence[int]
) -> Path:
    """Write ``rows`` samples, given as ``chunks``, into a new store at ``folder``.

    The features go straight into the memory-mapped file, a chunk at a time; the store
    is complete only once ``store.json`` is written (last), so a crash leaves no store
    that opens half-written. IDs must be unique and may not contain line breaks.
    """
    folder = Path(folder)
    if (folder / "store.json").exists():
        raise DatasetError(f"{folder} already holds a data store; pick another folder.")
    folder.mkdir(parents=True, exist_ok=True)
    shape = (int(rows), *(int(s) for s in row_shape))
    features = np.lib.format.open_memmap(folder / "features.npy", "w+", np.float32, shape)
    labels = np.lib.format.open_memmap(folder / "labels.npy", "w+", np.int64, (shape[0],))
    done = 0
    with (
        open(folder / "ids.txt", "w", encoding="utf-8") as ids_out,
        open(folder / "subjects.txt", "w", encoding="utf-8") as subjects_out,
    ):
        for X, y, ids, subjects in chunks:
            k = len(y)
            if done + k > shape[0]:
                raise DatasetError(f"The chunks hold more than the {rows} rows announced.")
            features[done : done + k] = np.asarray(X, dtype=np.float32).reshape(k, *shape[1:])
            labels[done : done + k] = y
            for out, values in ((ids_out, ids), (subjects_out, subjects)):
                for v in values:
                    if "\n" in str(v) or "\r" in str(v):
                        raise DatasetError(
                            f"Value {str(v)!r} holds a line break; IDs and subjects must not."
                        )
                    out.write(f"{v}\n")
            done += k
            features.flush()
    if done != shape[0]:
        raise DatasetError(f"The chunks hold {done} rows, not the {rows} announced.")
    del features, labels
    checked_ids(_lines(folder / "ids.txt"), done)
    meta = {"version": STORE_VERSION, "rows": done, "row_shape": list(shape[1:])}
    (folder / "store.json").write_text(json.dumps(meta) + "\n")
    return folder


def _lines(path: Path, shared: dict[str, str] | None = None) -> list[str]:
    """The lines of ``path``; with ``shared``, one string object for each distinct line
    (made as the file is read, so the repeats never pile up in memory)."""
    with open(path, encoding="utf-8") as handle:
        if shared is None:
            return [line.rstrip("\n") for line in handle]
        return [shared.setdefault(line, line.rstrip("\n")) for line in handle]


def open_store(folder: str | os.PathLike, *, io: str | None = None) -> Samples:
    """The samples of the store at ``folder``: features streamed, the rest in memory.

    ``io`` (``"mmap"`` or ``"pread"``) picks how rows are read (default: by whether an
    address-space limit is set; see :class:`~unbake.data.sources.MemmapSource`).
    """
    folder = Path(folder)
    try:
        meta = json.loads((folder / "store.json").read_text())
    except (OSError, ValueError):
        raise DatasetError(
            f"{folder} holds no complete data store (no readable store.json); write it with "
            "unbake.data.store.write_store or import_csv."
        ) from None
    if meta.get("version") != STORE_VERSION:
        raise DatasetError(
            f"The data store {folder} has format version {meta.get('version')!r}; this "
            f"unbake reads version {STORE_VERSION}: rebuild it."
        )
    source = MemmapSource(str(folder / "features.npy"), io=io)
    labels = np.load(folder / "labels.npy")
    ids = _lines(folder / "ids.txt")
    subjects = _lines(folder / "subjects.txt", shared={})  # one string per subject
    if not (len(source) == len(labels) == len(ids) == len(subjects) == meta["rows"]):
        raise DatasetError(f"The files of the data store {folder} disagree in length; rebuild it.")
    return Samples(
        RowView(source), labels, checked_ids(ids, len(ids)), np.array(subjects, dtype=object)
    )


def _csv_blocks(file: Path, chunk_rows: int) -> Iterator[dict[str, list]]:
    """The columns of a CSV file with a header row, ``chunk_rows`` rows at a time."""
    with file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [c.strip() for c in next(reader, [])]
        block: list[list[str]] = []
        for row in reader:
            if row:
                block.append(row)
            if len(block) == chunk_rows:
                yield {c: [r[j] if j < len(r) else "" for r in block] for j, c in enumerate(header)}
                block = []
        if block or not header:
            yield {c: [r[j] if j < len(r) else "" for r in block] for j, c in enumerate(header)}


def _csv_rows(file: Path) -> int:
    with file.open(newline="", encoding="utf-8-sig") as handle:
        return max(sum(1 for row in csv.reader(handle) if row) - 1, 0)


def _to_store(
    folder: str | os.PathLike,
    blocks: Iterator[dict[str, list]],
    *,
    rows: int,
    source: str,
    label: str,
    id_column: str | None,
    subject_column: str | None,
    classes: Sequence[str],
) -> Samples:
    """Write column ``blocks`` of a table into a store: every column besides the label,
    ID and subject columns is a numeric feature."""
    index = {str(c): i for i, c in enumerate(classes)}
    first = next(blocks, {})
    for col in (label, id_column, subject_column):
        if col is not None and col not in first:
            raise DatasetError(
                f"Column {col!r} not found in {source}; available columns: {', '.join(first)}."
            )
    features = [c for c in first if c not in {label, id_column, subject_column}]
    seen = 0

    def chunks() -> Iterator[Chunk]:
        nonlocal seen
        for block in itertools.chain([first], blocks):
            k = len(block[label])
            try:
                X = np.array([block[c] for c in features], dtype=np.float32).T.reshape(k, -1)
            except (TypeError, ValueError):
                X = np.full((k, len(features)), np.nan, np.float32)
            if not np.isfinite(X).all():
                raise DatasetError(
                    f"A feature in rows {seen}..{seen + k - 1} of {source} is missing or not "
                    "a finite number; encode every feature as a number."
                )
            unknown = [v for v in block[label] if str(v) not in index]
            if unknown:
                raise DatasetError(
                    f"Label {unknown[0]!r} in {source} is not among classes {list(index)}; "
                    "name every label value in classes=."
                )
            y = np.array([index[str(v)] for v in block[label]], np.int64)
            ids = (
                block[id_column]
                if id_column
                else [f"{Path(source).stem}-{seen + i}" for i in range(k)]
            )
            subjects = block[subject_column] if subject_column else [""] * k
            seen += k
            yield X, y, [str(i) for i in ids], ["" if v is None else str(v) for v in subjects]

    write_store(folder, chunks(), rows=rows, row_shape=(len(features),))
    return open_store(folder)


def import_csv(
    path: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    label: str = "label",
    id_column: str | None = None,
    subject_column: str | None = None,
    classes: Sequence[str],
    chunk_rows: int = 65536,
) -> Samples:
    """Copy a numeric CSV file (too large for memory) into a store, ``chunk_rows`` rows at a
    time, and open it. ``classes`` names the label values, in index order (a chunked
    read cannot sort labels it has not seen yet)."""
    file = Path(path)
    try:
        rows = _csv_rows(file)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"Cannot read {file} as a UTF-8 CSV ({exc}); check the path.") from None
    return _to_store(folder, _csv_blocks(file, chunk_rows), rows=rows, source=str(file),
                     label=label, id_column=id_column, subject_column=subject_column,
                     classes=classes)  # fmt: skip


def import_parquet(
    path: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    label: str = "label",
    id_column: str | None = None,
    subject_column: str | None = None,
    classes: Sequence[str],
    chunk_rows: int = 65536,
) -> Samples:
    """Copy a Parquet file (too large for memory; needs ``pyarrow``) into a store, one
    batch of ``chunk_rows`` rows at a time (``ParquetFile.iter_batches``), and open it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(
            "Reading Parquet needs pyarrow; install it with `pip install pyarrow`."
        ) from None
    try:
        table = pq.ParquetFile(str(path))
    except Exception as exc:  # pyarrow raises its own error types for damaged files
        raise DatasetError(
            f"{path} is not a readable Parquet file ({type(exc).__name__}); re-export it."
        ) from None
    blocks = (batch.to_pydict() for batch in table.iter_batches(batch_size=chunk_rows))
    return _to_store(folder, blocks, rows=table.metadata.num_rows, source=str(path),
                     label=label, id_column=id_column, subject_column=subject_column,
                     classes=classes)  # fmt: skip


def store_dataset(
    path: str,
    test_fraction: float | str = 0.2,
    val_fraction: float | str = 0.1,
    split_seed: int | str = 0,
    classes: str | None = None,
) -> Dataset:
    """A data store folder (:mod:`unbake.data.store`), split like the other tables:
    train, validation and test are index views over its memory-mapped features."""
    from unbake.data.loaders import _dataset
    from unbake.data.splits import SplitSpec

    full = open_store(path)
    names = (
        tuple(json.loads(classes))
        if classes
        else tuple(str(i) for i in range(int(full.y.max()) + 1 if len(full) else 0))
    )
    split = SplitSpec.parse(test_fraction, val_fraction, split_seed)
    return _dataset(Path(path).name, full, names, split)
