"""Built-in datasets: scikit-learn's digits, Fashion-MNIST (IDX), and the user's CSV/Parquet."""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from unbake.data.samples import Dataset, Samples
from unbake.exceptions import DatasetError
from unbake.registry import Registry

__all__ = ["DATASETS", "load_dataset", "read_idx"]

DATASETS: Registry[Dataset] = Registry("dataset")


def load_dataset(name: str, **options: object) -> Dataset:
    """Load a registered dataset; ``options`` are the loader's keyword arguments.

    >>> ds = load_dataset("digits")
    >>> ds.n_classes, ds.input_shape, len(ds.train) + len(ds.test)
    (10, (1, 8, 8), 1797)
    """
    options = {k: v for k, v in options.items() if v is not None}
    try:
        dataset = DATASETS.create(name, **options)
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"The {name} source is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); save it as UTF-8 (e.g. CSV UTF-8 in a spreadsheet)."
        ) from None
    spec = {"name": name, **{k: str(v) for k, v in options.items()}}
    return Dataset(dataset.name, dataset.train, dataset.test, dataset.n_classes, spec)


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """A seeded, stratified boolean test mask (the dataset's definition, not a training seed)."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        rng.shuffle(rows)
        test[rows[: round(len(rows) * test_fraction)]] = True
    return test


@DATASETS.register("digits")
def digits(test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled 8×8 digits (1,797 images), scaled to [0, 1], split 80/20."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    test = _stratified_split(y, float(test_fraction), seed=0)
    ids = np.array([f"digits-{i:04d}" for i in range(len(y))], dtype=object)
    train = Samples.build(X[~test], y[~test], ids[~test])
    test_s = Samples.build(X[test], y[test], ids[test])
    return Dataset("digits", train, test_s, 10)


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

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


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


@DATASETS.register("fashion-mnist")
def fashion_mnist(
    data_dir: str | None = None, download: bool | str = False, limit: int | str | None = None
) -> Dataset:
    """The full Fashion-MNIST (60,000 train + 10,000 test 28×28 images), scaled to [0, 1].

    ``limit`` keeps the first N training and N//6 test images, for quick runs.
    """
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
    return Dataset("fashion-mnist", train, test, 10)


# --- the user's own tables ----------------------------------------------------------


def _table_to_dataset(
    name: str,
    columns: dict[str, list],
    label: str,
    id_column: str | None,
    subject_column: str | None,
    test_fraction: float,
    source: str,
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
        raise DatasetError(f"{source} has a header but no rows; add the data rows.")
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
    classes, y = np.unique(np.asarray([str(v) for v in raw_labels]), return_inverse=True)
    ids = columns[id_column] if id_column else [f"{name}-{i}" for i in range(n)]
    subjects = columns[subject_column] if subject_column else None
    full = Samples.build(feats, y, ids, subjects)
    test = _stratified_split(y, float(test_fraction), seed=0)
    return Dataset(name, full.subset(~test), full.subset(test), len(classes))


@DATASETS.register("csv")
def csv_table(
    path: str,
    label: str = "label",
    id_column: str | None = None,
    subject_column: str | None = None,
    test_fraction: float | str = 0.2,
) -> Dataset:
    """A CSV file with a header row: one label column, optional ID and subject columns."""
    file = Path(path)
    if not file.exists():
        raise DatasetError(f"CSV file {file} does not exist; check the --path option.")
    with file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise DatasetError(f"{file} is empty; give a CSV with a header row.")
        columns: dict[str, list] = {c: [] for c in reader.fieldnames}
        for row in reader:
            for c in columns:
                columns[c].append(row.get(c))
    return _table_to_dataset(
        file.stem, columns, label, id_column, subject_column, float(test_fraction), str(file)
    )


@DATASETS.register("parquet")
def parquet_table(
    path: str,
    label: str = "label",
    id_column: str | None = None,
    subject_column: str | None = None,
    test_fraction: float | str = 0.2,
) -> Dataset:
    """A Parquet file (needs ``pyarrow``), with the same columns as :func:`csv_table`."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(
            "Reading Parquet needs pyarrow; install it with `pip install pyarrow`."
        ) from None
    file = Path(path)
    if not file.exists():
        raise DatasetError(f"Parquet file {file} does not exist; check the --path option.")
    table = pq.read_table(file).to_pydict()
    return _table_to_dataset(
        file.stem, table, label, id_column, subject_column, float(test_fraction), str(file)
    )
