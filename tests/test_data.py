import gzip
import struct

import numpy as np
import pytest

from unbake.data import Samples, load_dataset, read_idx
from unbake.data.loaders import FASHION_MNIST_FILES
from unbake.exceptions import DatasetError


def test_digits_has_stable_unique_ids_and_fixed_split():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert len(a.train) == 1438 and len(a.test) == 359
    assert np.array_equal(a.train.ids, b.train.ids)
    assert len(set(a.train.ids) | set(a.test.ids)) == 1797
    assert a.train.X.dtype == np.float32 and a.train.X.max() <= 1.0
    assert a.input_shape == (1, 8, 8)


def test_duplicate_ids_rejected_with_rows():
    with pytest.raises(DatasetError, match=r"Duplicate sample IDs.*rows 0, 2"):
        Samples.build(np.zeros((3, 2)), [0, 1, 0], ids=["a", "b", "a"])


def test_nan_features_rejected_with_rows():
    X = np.zeros((4, 2))
    X[3, 1] = np.nan
    with pytest.raises(DatasetError, match=r"rows 3"):
        Samples.build(X, [0, 1, 0, 1])


def test_missing_labels_rejected():
    with pytest.raises(DatasetError, match=r"Missing labels in rows 1"):
        Samples.build(np.zeros((2, 2)), np.array([0.0, np.nan]))


def test_wrong_shape_rejected():
    with pytest.raises(DatasetError, match="one row per sample"):
        Samples.build(np.zeros((3, 2)), [0, 1])


def _write_csv(path, rows):
    path.write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")


def test_csv_with_ids_and_subjects(tmp_path):
    rows = [["uid", "person", "f1", "f2", "target"]]
    for i in range(40):
        rows.append([f"u{i}", f"p{i % 4}", i * 0.1, (i % 3), "yes" if i % 2 else "no"])
    f = tmp_path / "t.csv"
    _write_csv(f, rows)
    ds = load_dataset("csv", path=str(f), label="target", id_column="uid", subject_column="person")
    assert ds.n_classes == 2
    assert ds.input_shape == (2,)
    assert set(ds.train.subjects) <= {"p0", "p1", "p2", "p3"}
    assert len(ds.train) + len(ds.test) == 40


def test_csv_non_numeric_feature_is_named(tmp_path):
    f = tmp_path / "t.csv"
    _write_csv(f, [["a", "label"], ["x", 0], ["1", 1]])
    with pytest.raises(DatasetError, match=r"Feature column 'a' is not numeric \(row 0"):
        load_dataset("csv", path=str(f))


def test_csv_missing_label_column(tmp_path):
    f = tmp_path / "t.csv"
    _write_csv(f, [["a", "b"], [1, 0]])
    with pytest.raises(DatasetError, match="Column 'label' not found"):
        load_dataset("csv", path=str(f))


def test_csv_missing_file():
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("csv", path="/nonexistent/file.csv")


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_roundtrip_and_truncation():
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(_idx(arr)), arr)
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(_idx(arr)[:-1])
    with pytest.raises(DatasetError, match="magic"):
        read_idx(b"\x01\x02\x03\x04")


def test_fashion_mnist_missing_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr("unbake.data.loaders.SYSTEM_FASHION_MNIST", tmp_path / "none")
    monkeypatch.delenv("UNBAKE_DATA", raising=False)
    with pytest.raises(DatasetError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path))


def test_fashion_mnist_checksum_mismatch(tmp_path, monkeypatch):
    monkeypatch.setattr("unbake.data.loaders.SYSTEM_FASHION_MNIST", tmp_path / "none")
    for name in FASHION_MNIST_FILES:
        (tmp_path / name).write_bytes(gzip.compress(_idx(np.zeros((2, 2, 2)))))
    with pytest.raises(DatasetError, match="Checksum mismatch"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path))


@pytest.mark.skipif(
    not all(
        (__import__("pathlib").Path("/usr/share/datasets/fashion-mnist") / f).exists()
        for f in FASHION_MNIST_FILES
    ),
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)",
)
def test_fashion_mnist_full_from_system_dir():
    ds = load_dataset("fashion-mnist")
    assert (len(ds.train), len(ds.test), ds.n_classes) == (60000, 10000, 10)
    assert ds.input_shape == (1, 28, 28)
    assert np.bincount(ds.train.y).tolist() == [6000] * 10
