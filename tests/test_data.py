import gzip
import re
import struct

import numpy as np
import pytest

from unbake.data import Samples, load_dataset, read_idx
from unbake.data.loaders import FASHION_MNIST_FILES
from unbake.exceptions import DatasetError


def test_digits_has_stable_unique_ids_and_fixed_split():
    a, b = load_dataset("digits"), load_dataset("digits")
    # pinned: the keyed hash of each ID (seed 0) decides its split, about 70/10/20
    assert (len(a.train), len(a.val), len(a.test)) == (1229, 180, 388)
    assert np.array_equal(a.train.ids, b.train.ids)
    assert np.array_equal(a.val.ids, b.val.ids) and np.array_equal(a.test.ids, b.test.ids)
    assert len(set(a.train.ids) | set(a.val.ids) | set(a.test.ids)) == 1797
    assert a.classes == tuple("0123456789")
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
        rows.append([f"u{i}", f"p{i % 20}", i * 0.1, (i % 3), "yes" if i % 2 else "no"])
    f = tmp_path / "t.csv"
    _write_csv(f, rows)
    ds = load_dataset("csv", path=str(f), label="target", id_column="uid", subject_column="person")
    assert ds.n_classes == 2
    assert ds.input_shape == (2,)
    assert set(ds.train.subjects) <= {f"p{i}" for i in range(20)}
    assert len(ds.train) + len(ds.val) + len(ds.test) == 40
    assert ds.classes == ("no", "yes")


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
    assert (len(ds.train) + len(ds.val), len(ds.test), ds.n_classes) == (60000, 10000, 10)
    assert 5500 < len(ds.val) < 6500  # carved from the official training set
    assert all(i.startswith("fmnist-train-") for i in ds.val.ids[:50])
    assert ds.input_shape == (1, 28, 28)
    assert np.bincount(np.concatenate([ds.train.y, ds.val.y])).tolist() == [6000] * 10
    assert ds.classes[0] == "T-shirt/top" and ds.class_index("Sandal") == 5
    assert "test_fraction" not in ds.spec and ds.spec["val_fraction"] == "0.1"


# --- splits by identity ---------------------------------------------------------------


def _people_csv(path, n=200, drop=()):
    rows = [["uid", "person", "f1", "f2", "target"]]
    for i in range(n):
        if i not in drop:
            rows.append([f"u{i}", f"p{i % 40}", (i % 7) / 7, i % 3, "B" if i % 2 else "A"])
    _write_csv(path, rows)
    return path


def _split_of(ds):
    return {str(i): name for name, s in ds.splits().items() for i in s.ids}


def test_split_keeps_each_subject_on_one_side(tmp_path):
    f = _people_csv(tmp_path / "people.csv")
    ds = load_dataset("csv", path=str(f), label="target", id_column="uid", subject_column="person")
    sides = {}
    for name, samples in ds.splits().items():
        for subj in samples.subjects:
            sides.setdefault(subj, set()).add(name)
    assert len(sides) == 40 and all(len(v) == 1 for v in sides.values())
    assert {len(s) > 0 for s in ds.splits().values()} == {True}
    assert ds.classes == ("A", "B") and ds.n_classes == 2


def test_deleting_rows_moves_no_other_sample(tmp_path):
    """Position does not matter: the split of every remaining row is unchanged."""
    kwargs = {"label": "target", "id_column": "uid", "subject_column": "person"}
    before = _split_of(load_dataset("csv", path=str(_people_csv(tmp_path / "a.csv")), **kwargs))
    dropped = {3, 43, 83, 7, 150}
    after = _split_of(
        load_dataset("csv", path=str(_people_csv(tmp_path / "b.csv", drop=dropped)), **kwargs)
    )
    assert set(before) - set(after) == {f"u{i}" for i in dropped}
    assert all(before[i] == side for i, side in after.items())


def test_split_options_are_recorded_and_change_the_split(tmp_path):
    a = load_dataset("digits")
    b = load_dataset("digits", split_seed=1, test_fraction=0.3, val_fraction=0.2)
    assert b.spec == {
        "name": "digits",
        "split_seed": "1",
        "test_fraction": "0.3",
        "val_fraction": "0.2",
    }
    assert 0.25 < len(b.test) / 1797 < 0.35 and 0.15 < len(b.val) / 1797 < 0.25
    assert set(a.test.ids) != set(b.test.ids)
    again = load_dataset("digits", **{k: v for k, v in b.spec.items() if k != "name"})
    assert np.array_equal(again.test.ids, b.test.ids)  # reloading from the spec is exact
    none = load_dataset("digits", val_fraction=0)
    assert len(none.val) == 0 and len(none.train) == 1229 + 180


@pytest.mark.parametrize(
    "options,fragment",
    [
        ({"test_fraction": 0}, "'test_fraction' split option must be a float in (0, 1)"),
        ({"val_fraction": 1.5}, "'val_fraction' split option must be a float in [0, 1)"),
        ({"test_fraction": 0.6, "val_fraction": 0.5}, "test + validation below 1"),
        ({"split_seed": "x"}, "split seed must be an integer"),
    ],
)
def test_bad_split_options(options, fragment):
    from unbake.exceptions import InvalidParameterError

    with pytest.raises(InvalidParameterError, match=re.escape(fragment)):
        load_dataset("digits", **options)


def test_class_names_resolve_by_name_or_index(tmp_path):
    from unbake.exceptions import InvalidParameterError

    f = _people_csv(tmp_path / "p.csv")
    ds = load_dataset("csv", path=str(f), label="target", id_column="uid", subject_column="person")
    assert ds.class_index("B") == 1 and ds.class_index("1") == 1 and ds.class_index(0) == 0
    with pytest.raises(InvalidParameterError, match=r"Class 'C' does not exist.*'A', 'B'"):
        ds.class_index("C")
    with pytest.raises(InvalidParameterError, match=r"index 0\.\.1"):
        ds.class_index(2)


@pytest.mark.parametrize(
    "content,fragment",
    [
        (b"f1,label\n", "has a header but no data rows"),
        (b"f1,label\n" + b"".join(b"%d,A\n" % i for i in range(50)), "at least two classes"),
        (b"f1,label\n0,A\n1,B\n", "fewer than the"),
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary", "not UTF-8 text"),
        (b"", "is empty"),
        (b"f1,f1,label\n1,2,A\n", "empty or repeated column name"),
    ],
)
def test_degenerate_csv_refused_in_one_line(tmp_path, content, fragment):
    f = tmp_path / "bad.csv"
    f.write_bytes(content)
    with pytest.raises(DatasetError, match=re.escape(fragment)) as info:
        load_dataset("csv", path=str(f))
    assert len(str(info.value).splitlines()) == 1


def test_empty_sample_id_refused(tmp_path):
    blank = {4: "", 6: "  "}
    rows = [["uid", "f1", "label"]] + [[blank.get(i, f"u{i}"), i, i % 2] for i in range(40)]
    _write_csv(tmp_path / "t.csv", rows)
    with pytest.raises(DatasetError, match=r"Empty sample IDs in rows 4, 6;"):
        load_dataset("csv", path=str(tmp_path / "t.csv"), id_column="uid")


def test_too_few_rows_names_the_minimum():
    with pytest.raises(
        DatasetError, match=r"The training split of digits has \d rows.*at least 10"
    ):
        load_dataset("digits", test_fraction=0.998, val_fraction=0.0)


def test_recorded_classes_fix_the_label_encoding(tmp_path):
    f = tmp_path / "p.csv"
    _people_csv(f)
    kwargs = {"label": "target", "id_column": "uid", "subject_column": "person"}
    ds = load_dataset("csv", path=str(f), classes='["C", "B", "A", "Q"]', **kwargs)
    assert ds.classes == ("C", "B", "A", "Q") and ds.n_classes == 4
    expected = ["B" if int(i[1:]) % 2 else "A" for i in ds.train.ids]
    assert ds.label_names(ds.train.y) == expected
    with pytest.raises(DatasetError, match=r"not among the recorded classes \['A'\]"):
        load_dataset("csv", path=str(f), classes='["A"]', **kwargs)
    with pytest.raises(DatasetError, match="not a JSON list"):
        load_dataset("csv", path=str(f), classes="A,B", **kwargs)
