"""Built-in datasets: scikit-learn's digits, Fashion-MNIST (IDX), and the user's CSV/Parquet."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np
from numpy.typing import DTypeLike

from unbake.data.poison import poison_dataset
from unbake.data.samples import Dataset, Samples
from unbake.data.splits import SPLITS, SplitSpec, assign_splits
from unbake.data.standardize import standardize_dataset
from unbake.data.text import TextSamples, read_jsonl, text_dataset
from unbake.exceptions import DatasetError
from unbake.registry import Registry

__all__ = ["DATASETS", "load_dataset", "read_idx"]

DATASETS: Registry[Dataset] = Registry("dataset")

#: What :func:`_split` splits: rows with IDs, subjects and ``subset``.
S = TypeVar("S", Samples, TextSamples)


def load_dataset(name: str, **options: object) -> Dataset:
    """Load a registered dataset; ``options`` are the loader's keyword arguments.

    The returned spec records the name, the options and the split actually used
    (fractions and seed), so that reloading it from a workspace gives the same split.

    >>> ds = load_dataset("digits")
    >>> ds.n_classes, ds.input_shape, len(ds.train) + len(ds.val) + len(ds.test)
    (10, (1, 8, 8), 1797)
    >>> ds.spec["test_fraction"], ds.spec["val_fraction"], ds.spec["split_seed"]
    ('0.2', '0.1', '0')

    ``poison`` (an attack option such as ``"backdoor:fraction=0.05,target=0"``, see
    :mod:`unbake.data.poison`) plants an attack in the training split and records it,
    with the planted IDs, in the spec.
    """
    options = {k: v for k, v in options.items() if v is not None}
    poison, recorded = options.pop("poison", None), options.pop("poison_ids", None)
    dataset = DATASETS.create(name, **options)
    spec = {"name": name, **{k: str(v) for k, v in options.items()}, **dataset.spec}
    dataset = replace(dataset, spec=spec)
    if poison is not None:
        dataset = poison_dataset(dataset, str(poison), None if recorded is None else str(recorded))
    return dataset


def _split(full: S, split: SplitSpec) -> tuple[S, S, S]:
    """(train, val, test) of ``full`` by the keyed hash of each row's subject or ID."""
    where = assign_splits(
        full.ids,
        full.subjects,
        test_fraction=split.test_fraction,
        val_fraction=split.val_fraction,
        seed=split.seed,
    )
    train, val, test = (full.subset(where == name) for name in SPLITS)
    return train, val, test


def _dataset(
    name: str,
    full: Samples,
    classes: tuple[str, ...],
    split: SplitSpec,
    official_test: Samples | None = None,
) -> Dataset:
    """Split ``full`` (or carve only validation from it, given an official test set), check it."""
    train, val, test = _split(full, split)
    if official_test is not None:
        test = official_test
    ds = Dataset(name, train, test, len(classes), split.to_options(), val, classes)
    ds.check(need_val=split.val_fraction > 0)
    return ds


@DATASETS.register("digits")
def digits(
    test_fraction: float | str = 0.2, val_fraction: float | str = 0.1, split_seed: int | str = 0
) -> Dataset:
    """scikit-learn's bundled 8×8 digits (1,797 images), scaled to [0, 1].

    About 70% train, 10% validation, 20% test, by a keyed hash of each image's ID.
    """
    from sklearn.datasets import load_digits

    split = SplitSpec.parse(test_fraction, val_fraction, split_seed)
    bunch = load_digits()
    X = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    full = Samples.build(X, y, [f"digits-{i:04d}" for i in range(len(y))])
    return _dataset("digits", full, tuple(str(c) for c in range(10)), split)


# --- Fashion-MNIST -------------------------------------------------------------------

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
#: sha256 of each file's *decompressed* bytes, so the check holds whichever gzip made it.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FETCH_HINT = (
    "install them with `apt-get install -y dataset-fashion-mnist`, point --data-dir or "
    "$UNBAKE_DATA at a folder holding the four IDX .gz files, or pass download=True "
    "(--download) on an online machine"
)

_IDX_DTYPES: dict[int, DTypeLike] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(raw: bytes) -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file into an array."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError("Not an IDX file (bad magic number); re-fetch the dataset files.")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetError(
            f"IDX file is truncated ({len(raw)} bytes, expected {expected}); re-fetch it."
        )
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(dims).copy()


def _candidate_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir))
    if os.environ.get("UNBAKE_DATA"):
        env = Path(os.environ["UNBAKE_DATA"])
        dirs += [env / "fashion-mnist", env]
    dirs.append(SYSTEM_FASHION_MNIST)
    return dirs


def _download(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        if (target / name).exists():
            continue
        with (
            tempfile.NamedTemporaryFile(dir=target, delete=False) as tmp,
            urllib.request.urlopen(FASHION_MNIST_URL + name, timeout=60) as response,
        ):
            shutil.copyfileobj(response, tmp)
        os.replace(tmp.name, target / name)


def _read_checked(path: Path) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise DatasetError(
            f"Cannot decompress {path} ({exc}); re-fetch it: {FETCH_HINT}."
        ) from None
    if hashlib.sha256(raw).hexdigest() != FASHION_MNIST_FILES[path.name]:
        raise DatasetError(f"Checksum mismatch for {path}; the file is corrupt, re-fetch it.")
    return read_idx(raw)


#: Fashion-MNIST's label names, by index (from the dataset's documentation).
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@DATASETS.register("fashion-mnist")
def fashion_mnist(
    data_dir: str | None = None,
    download: bool | str = False,
    limit: int | str | None = None,
    val_fraction: float | str = 0.1,
    split_seed: int | str = 0,
) -> Dataset:
    """The full Fashion-MNIST (60,000 train + 10,000 test 28×28 images), scaled to [0, 1].

    The official test set is kept; the validation split (``val_fraction`` of the training
    images) is carved from the training set by a keyed hash of each image's ID.
    ``limit`` keeps the first N training and N//6 test images, for quick runs.
    """
    split = SplitSpec.parse(None, val_fraction, split_seed)
    download = str(download).lower() in ("1", "true", "yes")
    found = next(
        (
            d
            for d in _candidate_dirs(data_dir)
            if all((d / f).exists() for f in FASHION_MNIST_FILES)
        ),
        None,
    )
    if found is None and download:
        found = Path(data_dir or os.environ.get("UNBAKE_DATA") or "~/.cache/unbake").expanduser()
        found = found / "fashion-mnist" if not data_dir else found
        _download(found)
    if found is None:
        searched = ", ".join(str(d) for d in _candidate_dirs(data_dir))
        raise DatasetError(f"Fashion-MNIST files not found in {searched}; {FETCH_HINT}.")
    arrays = {name: _read_checked(found / name) for name in FASHION_MNIST_FILES}
    x_tr = arrays["train-images-idx3-ubyte.gz"].astype(np.float32)[:, None] / 255.0
    y_tr = arrays["train-labels-idx1-ubyte.gz"].astype(np.int64)
    x_te = arrays["t10k-images-idx3-ubyte.gz"].astype(np.float32)[:, None] / 255.0
    y_te = arrays["t10k-labels-idx1-ubyte.gz"].astype(np.int64)
    if limit is not None:
        n = int(limit)
        x_tr, y_tr, x_te, y_te = x_tr[:n], y_tr[:n], x_te[: max(n // 6, 1)], y_te[: max(n // 6, 1)]
    train = Samples.build(x_tr, y_tr, id_prefix="fmnist-train-")
    test = Samples.build(x_te, y_te, id_prefix="fmnist-test-")
    return _dataset("fashion-mnist", train, FASHION_MNIST_CLASSES, split, official_test=test)


# --- the user's own tables ----------------------------------------------------------


def _table_to_dataset(
    name: str,
    columns: dict[str, list],
    label: str,
    id_column: str | None,
    subject_column: str | None,
    split: SplitSpec,
    source: str,
    classes: str | None = None,
    standardize: bool | str = True,
    scaler: str | None = None,
) -> Dataset:
    for col in (label, id_column, subject_column):
        if col is not None and col not in columns:
            raise DatasetError(
                f"Column {col!r} not found in {source}; available columns: {', '.join(columns)}."
            )
    special = {label, id_column, subject_column}
    feature_cols = [c for c in columns if c not in special]
    if not feature_cols:
        raise DatasetError(f"{source} has no feature columns besides the label; add features.")
    n = len(columns[label])
    if n == 0:
        raise DatasetError(f"{source} has a header but no data rows; add rows below the header.")
    feats = np.empty((n, len(feature_cols)), dtype=np.float32)
    for j, col in enumerate(feature_cols):
        for i, value in enumerate(columns[col]):
            try:
                feats[i, j] = float(value) if value not in ("", None) else np.nan
            except (TypeError, ValueError):
                raise DatasetError(
                    f"Feature column {col!r} is not numeric (row {i}: {value!r}); "
                    "encode it as numbers or drop it."
                ) from None
    raw_labels = columns[label]
    missing = [i for i, v in enumerate(raw_labels) if v in ("", None) or v != v]
    if missing:
        raise DatasetError(
            f"Missing labels in rows {', '.join(map(str, missing[:8]))}; fill or drop those rows."
        )
    names, y = _encode_labels([str(v) for v in raw_labels], classes, source)
    ids = columns[id_column] if id_column else [f"{name}-{i}" for i in range(n)]
    subjects = columns[subject_column] if subject_column else None
    full = Samples.build(feats, y, ids, subjects)
    ds, scaling = standardize_dataset(_dataset(name, full, names, split), standardize, scaler)
    return replace(ds, spec={**ds.spec, "classes": json.dumps(list(names)), **scaling})


def _encode_labels(
    labels: list[str], classes: str | None, source: str
) -> tuple[tuple[str, ...], np.ndarray]:
    """(class names, label indices): the sorted label strings, or the recorded ``classes``.

    A workspace records its classes (a JSON list), so that deleting every row of a class
    from the source never renumbers the others.
    """
    if classes is None:
        unique, y = np.unique(np.asarray(labels), return_inverse=True)
        return tuple(str(c) for c in unique), y
    try:
        names = tuple(str(c) for c in json.loads(classes))
    except (TypeError, ValueError):
        raise DatasetError(
            f"The 'classes' option {classes!r} is not a JSON list of names; "
            'write it like \'["A", "B"]\'.'
        ) from None
    index = {c: i for i, c in enumerate(names)}
    unknown = [i for i, label in enumerate(labels) if label not in index]
    if unknown:
        raise DatasetError(
            f"Labels in rows {', '.join(map(str, unknown[:8]))} of {source} "
            f"({labels[unknown[0]]!r}) are not among the recorded classes {list(names)}; "
            "fix those rows or start a new workspace."
        )
    return names, np.array([index[label] for label in labels], dtype=np.int64)


def _read_csv(file: Path) -> dict[str, list]:
    """The columns of a UTF-8 CSV with a header row; binary or malformed files raise."""
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                raise DatasetError(f"{file} is empty; give a CSV with a header row.")
            names = [c.strip() for c in reader.fieldnames]
            if "" in names or len(set(names)) != len(names):
                raise DatasetError(
                    f"{file} has an empty or repeated column name in its header "
                    f"({', '.join(map(repr, names))}); give every column its own name."
                )
            columns: dict[str, list] = {c: [] for c in reader.fieldnames}
            for row in reader:
                for c in columns:
                    columns[c].append(row.get(c))
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{file} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}); export it as a UTF-8 CSV."
        ) from None
    except csv.Error as exc:
        raise DatasetError(
            f"{file} is not a readable CSV ({exc}); export it as a plain UTF-8 CSV."
        ) from None
    except OSError as exc:
        raise DatasetError(
            f"Cannot read {file} ({exc.strerror}); check the --path option."
        ) from None
    return columns


@DATASETS.register("csv")
def csv_table(
    path: str,
    label: str = "label",
    id_column: str | None = None,
    subject_column: str | None = None,
    test_fraction: float | str = 0.2,
    val_fraction: float | str = 0.1,
    split_seed: int | str = 0,
    classes: str | None = None,
    standardize: bool | str = True,
    scaler: str | None = None,
) -> Dataset:
    """A UTF-8 CSV file with a header row: one label column, optional ID and subject columns.

    Rows are split into train / validation / test by a keyed hash of the subject (or of
    the ID where a row has no subject). Without an ID column the IDs are row numbers,
    so deleting a row from the file renumbers the rows after it: give an ID column to
    delete rows from the source. ``classes`` (a JSON list) fixes the label names and
    their order; by default they are the sorted label strings (recorded in the spec).

    Features are standardised (``standardize``, the default; see
    :mod:`unbake.data.standardize`): fitted on the training split only and recorded in
    the spec as ``scaler``, which a reload applies instead of fitting again.
    """
    split = SplitSpec.parse(test_fraction, val_fraction, split_seed)
    file = Path(path)
    if not file.exists():
        raise DatasetError(f"CSV file {file} does not exist; check the --path option.")
    return _table_to_dataset(
        file.stem, _read_csv(file), label, id_column, subject_column, split, str(file), classes,
        standardize, scaler,
    )  # fmt: skip


@DATASETS.register("parquet")
def parquet_table(
    path: str,
    label: str = "label",
    id_column: str | None = None,
    subject_column: str | None = None,
    test_fraction: float | str = 0.2,
    val_fraction: float | str = 0.1,
    split_seed: int | str = 0,
    classes: str | None = None,
    standardize: bool | str = True,
    scaler: str | None = None,
) -> Dataset:
    """A Parquet file (needs ``pyarrow``), with the same columns, split and
    standardisation as :func:`csv_table`."""
    split = SplitSpec.parse(test_fraction, val_fraction, split_seed)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(
            "Reading Parquet needs pyarrow; install it with `pip install pyarrow`."
        ) from None
    file = Path(path)
    if not file.exists():
        raise DatasetError(f"Parquet file {file} does not exist; check the --path option.")
    try:
        table = pq.read_table(file).to_pydict()
    except Exception as exc:  # pyarrow raises its own error types for damaged files
        raise DatasetError(
            f"{file} is not a readable Parquet file ({type(exc).__name__}); re-export it."
        ) from None
    return _table_to_dataset(
        file.stem, table, label, id_column, subject_column, split, str(file), classes,
        standardize, scaler,
    )  # fmt: skip


@DATASETS.register("jsonl")
def jsonl_text(
    path: str,
    test_fraction: float | str = 0.2,
    val_fraction: float | str = 0.1,
    split_seed: int | str = 0,
) -> Dataset:
    """Prompt–answer text, one JSON object per line: ``id``, ``subject``, ``prompt``, ``answer``.

    Split by the keyed hash of each row's subject, so a person's rows stay together.
    """
    split = SplitSpec.parse(test_fraction, val_fraction, split_seed)
    file = Path(path)
    if not file.exists():
        raise DatasetError(f"JSONL file {file} does not exist; check the --path option.")
    train, val, test = _split(read_jsonl(file), split)
    return text_dataset(file.stem, train, val, test, {**split.to_options(), "path": str(file)})


# --- a store on disk, larger than memory ---------------------------------------------

from unbake.data.store import store_dataset  # noqa: E402

DATASETS.register("store")(store_dataset)
