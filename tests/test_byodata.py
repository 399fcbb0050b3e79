"""The user's own data: torch Datasets and DataLoaders, datasets.Dataset, stores on disk.

Each test is written as a user would write their code, and compares the result with the
same data given as arrays: with the same seed and batch order, the weights are bitwise
equal. The streaming tests check that no read ever covers more than one batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from tests import hf_standin
from unbake import (
    DatasetError,
    InvalidParameterError,
    Samples,
    TrainConfig,
    UnlearnTask,
    Workspace,
    create,
    fit,
)
from unbake.data import as_samples, load_dataset, open_store, write_store
from unbake.data.sources import MemmapSource, RowView
from unbake.data.store import import_csv, import_parquet
from unbake.training import differing_tensors

N, SHAPE, K = 240, (1, 6, 6), 3
CONFIG = TrainConfig.parse(epochs=2, batch_size=32)


def _arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.random((N, *SHAPE), dtype=np.float32)
    y = (X.reshape(N, -1)[:, :3].argmax(1) + rng.integers(0, 2, N)) % K
    return X, y.astype(np.int64)


class Photos(torch.utils.data.Dataset):
    """A user's own map-style dataset: dict items, counting every load."""

    def __init__(self, X: np.ndarray, y: np.ndarray) -> None:
        self.X, self.y, self.loads = X, y, 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        self.loads += 1
        return {
            "image": torch.from_numpy(self.X[i]),
            "label": int(self.y[i]),
            "owner": f"u{i % 40}",
        }


def _array_samples(X, y) -> Samples:
    return Samples.build(X, y, [f"photo-{i}" for i in range(len(y))],
                         [f"u{i % 40}" for i in range(len(y))])  # fmt: skip


def _photos_samples(X, y) -> Samples:
    return as_samples(Photos(X, y), features="image", labels="label", subjects="owner",
                      ids=lambda i: f"photo-{i}")  # fmt: skip


def test_torch_dataset_tensor_dataset_and_pair_train_bitwise_as_arrays():
    X, y = _arrays()
    reference = fit(_array_samples(X, y), n_classes=K, config=CONFIG, seed=3)
    photos = _photos_samples(X, y)
    assert photos.streamed and list(photos.subjects[:2]) == ["u0", "u1"]
    tensors = TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    for data in (photos, tensors, (X, y), (torch.from_numpy(X), torch.from_numpy(y))):
        model = fit(data, n_classes=K, config=CONFIG, seed=3)
        assert differing_tensors(model, reference) == []


def test_dataloader_settings_are_used_and_its_batch_size_is_the_default():
    X, y = _arrays()
    seen = []

    def collate(items):  # the user's own collate function
        seen.append(len(items))
        return torch.stack([x for x, _ in items]), torch.tensor([t for _, t in items])

    loader = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(y)),
                        batch_size=16, collate_fn=collate)  # fmt: skip
    model = fit(loader, n_classes=K, config=None, seed=1)
    reference = fit((X, y), n_classes=K, config=TrainConfig(batch_size=16), seed=1)
    assert differing_tensors(model, reference) == []
    assert max(seen) == 16 and len(seen) >= N // 16
    workers = DataLoader(loader.dataset, batch_size=16, num_workers=1)
    assert differing_tensors(fit(workers, n_classes=K, seed=1), reference) == []


def test_unlearn_reads_torch_datasets_and_matches_arrays():
    X, y = _arrays()
    samples = _array_samples(X, y)
    original = fit(samples, n_classes=K, config=CONFIG, seed=0)
    forget_ids = [f"photo-{i}" for i in range(0, N, 9)]
    forget_a, retain_a = samples.split(forget_ids)
    forget_t, retain_t = _photos_samples(X, y).split(forget_ids)
    assert isinstance(forget_t.X, RowView) and isinstance(retain_t.X, RowView)
    rows = np.flatnonzero(np.isin(samples.ids, forget_ids))
    others = np.setdiff1d(np.arange(N), rows)
    user_forget = Subset(TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), rows)
    for method in ("neggrad_plus", "ssd", "retrain"):
        want = create(method).unlearn(UnlearnTask(original, forget_a, retain_a), seed=2)
        got = create(method).unlearn(UnlearnTask(original, forget_t, retain_t), seed=2)
        assert differing_tensors(got.model, want.model) == [], method
    user = UnlearnTask(original, user_forget, (X[others], y[others]))
    got = create("neggrad_plus").unlearn(user, seed=2)
    want = create("neggrad_plus").unlearn(UnlearnTask(original, forget_a, retain_a), seed=2)
    assert differing_tensors(got.model, want.model) == []


def test_sisa_over_streamed_rows_matches_arrays():
    X, y = _arrays()
    params = {"shards": 3, "slices": 2}
    want = fit(_array_samples(X, y), n_classes=K, config=CONFIG, seed=0, strategy="sisa",
               strategy_params=params)  # fmt: skip
    got = fit(_photos_samples(X, y), n_classes=K, config=CONFIG, seed=0, strategy="sisa",
              strategy_params=params)  # fmt: skip
    assert differing_tensors(got, want) == []


def test_workspace_create_takes_a_torch_dataset(tmp_path):
    X, y = _arrays()
    ws = Workspace.create(tmp_path / "ws", dataset=_photos_samples(X, y))
    ds = ws.dataset()
    assert ds.train.streamed and ds.test.streamed
    assert len(ds.train) + len(ds.val) + len(ds.test) == N
    assert ws.status()["samples"]["active"] == len(ds.train)
    ws2 = Workspace.create(tmp_path / "ws2", dataset=TensorDataset(torch.from_numpy(X),
                                                                   torch.from_numpy(y)))  # fmt: skip
    assert ws2.status()["samples"]["active"] == len(ws2.dataset().train)


def _hf_table(X, y, module):
    columns = {"image": X.tolist(), "label": y.tolist(), "uid": [f"photo-{i}" for i in range(len(y))],
               "owner": [f"u{i % 40}" for i in range(len(y))]}  # fmt: skip
    return module.Dataset.from_dict(columns)


@pytest.mark.parametrize("real", [False, True])
def test_hf_dataset_trains_bitwise_as_arrays(real):
    X, y = _arrays()
    module = pytest.importorskip("datasets") if real else hf_standin
    table = _hf_table(X, y, module)
    samples = as_samples(table, features="image", ids="uid", subjects="owner")
    assert samples.streamed and samples.ids[5] == "photo-5" and samples.subjects[41] == "u1"
    want = fit(_array_samples(X, y), n_classes=K, config=CONFIG, seed=4)
    assert differing_tensors(fit(samples, n_classes=K, config=CONFIG, seed=4), want) == []
    columns = {"a": X[:, 0, 0, 0].tolist(), "b": X[:, 0, 0, 1].tolist(), "label": y.tolist()}
    tabular = as_samples(hf_standin.Dataset.from_dict(columns), features=["a", "b"])
    assert tabular.input_shape == (2,) and np.allclose(tabular.X[[3]], X[3, 0, 0, :2])


def test_hf_text_columns_become_text_samples():
    columns = {"prompt": ["Who?", "Where?"], "answer": ["Ann", "Oslo"], "id": ["a", "b"]}
    table = hf_standin.Dataset.from_dict(columns)
    text = as_samples(table, ids="id")
    assert list(text.answers) == ["Ann", "Oslo"] and list(text.ids) == ["a", "b"]


def test_streaming_reads_one_batch_at_a_time_never_the_whole_set():
    X, y = _arrays()
    photos = Photos(X, y)
    samples = as_samples(photos, features="image", labels="label")
    after_scan = photos.loads  # one pass for the labels, and one probe of the shape
    assert after_scan == N + 1
    reads: list[int] = []
    source = samples.X.source
    original_read = source.read
    source.read = lambda positions: reads.append(len(positions)) or original_read(positions)
    model = fit(samples, n_classes=K, config=CONFIG, seed=0)
    assert max(reads) <= CONFIG.batch_size
    assert photos.loads - after_scan == CONFIG.epochs * N + CONFIG.batch_size  # + threads probe
    reads.clear()
    model.log_proba(samples.X, batch_size=50)
    assert max(reads) <= 50


def test_memmap_store_streams_and_matches_arrays(tmp_path, monkeypatch):
    X, y = _arrays()
    ids = [f"photo-{i}" for i in range(N)]
    subjects = [f"u{i % 40}" for i in range(N)]
    chunks = ((X[i : i + 50], y[i : i + 50], ids[i : i + 50], subjects[i : i + 50])
              for i in range(0, N, 50))  # fmt: skip
    write_store(tmp_path / "store", chunks, rows=N, row_shape=SHAPE)
    stored = open_store(tmp_path / "store")
    largest = []
    original = MemmapSource.read
    monkeypatch.setattr(MemmapSource, "read",
                        lambda self, p: largest.append(len(p)) or original(self, p))  # fmt: skip
    want = fit(_array_samples(X, y), n_classes=K, config=CONFIG, seed=5)
    assert differing_tensors(fit(stored, n_classes=K, config=CONFIG, seed=5), want) == []
    assert max(largest) <= CONFIG.batch_size
    pread = Samples(RowView(MemmapSource(str(tmp_path / "store/features.npy"), io="pread")),
                    stored.y, stored.ids, stored.subjects)  # fmt: skip
    assert differing_tensors(fit(pread, n_classes=K, config=CONFIG, seed=5), want) == []
    ds = load_dataset("store", path=str(tmp_path / "store"))
    assert ds.train.streamed and len(ds.train) + len(ds.val) + len(ds.test) == N


def test_csv_imported_in_chunks_equals_the_csv_loader(tmp_path):
    rows = ["id,owner,f1,f2,label"] + [
        f"r{i},o{i},{i * 0.5},{(i * 7) % 5},{'ab'[i % 2]}" for i in range(60)
    ]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    stored = import_csv(tmp_path / "t.csv", tmp_path / "store", id_column="id",
                        subject_column="owner", classes=["a", "b"], chunk_rows=7)  # fmt: skip
    assert stored.streamed and list(stored.ids) == [f"r{i}" for i in range(60)]
    expected = np.array([[i * 0.5, (i * 7) % 5] for i in range(60)], dtype=np.float32)
    assert np.array_equal(np.asarray(stored.X), expected)
    assert list(stored.y) == [i % 2 for i in range(60)] and stored.subjects[4] == "o4"
    table = load_dataset(  # raw, as the store holds it (the csv loader standardises)
        "csv",
        path=str(tmp_path / "t.csv"),
        id_column="id",
        subject_column="owner",
        standardize=False,
    )
    where = {sid: k for k, sid in enumerate(stored.ids)}
    rows = [where[sid] for sid in table.train.ids]
    assert np.array_equal(stored.X[rows], table.train.X)


# --- bad input: one line, a typed error ---------------------------------------------


def test_repeated_ids_are_refused():
    X, y = _arrays()
    with pytest.raises(DatasetError, match="Duplicate sample IDs"):
        as_samples(Photos(X, y), features="image", labels="label", ids=lambda i: f"p{i // 2}")


def test_a_getitem_that_raises_is_refused_naming_the_row():
    class Broken(Photos):
        def __getitem__(self, i):
            if i == 17:
                raise OSError("disk read failed")
            return super().__getitem__(i)

    X, y = _arrays()
    with pytest.raises(DatasetError, match=r"__getitem__\(17\) raised OSError") as err:
        as_samples(Broken(X, y), features="image", labels="label")
    assert "\n" not in str(err.value)


def test_a_dataloader_that_shuffles_without_a_seed_is_refused():
    X, y = _arrays()
    data = TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    with pytest.raises(DatasetError, match="shuffles without a seed"):
        fit(DataLoader(data, batch_size=8, shuffle=True), n_classes=K)
    seeded = DataLoader(data, batch_size=8, shuffle=True,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert len(as_samples(seeded)) == N


@pytest.mark.parametrize(
    ("index", "match"),
    [
        (np.array(["photo-1"]), "samples.mask_of"),
        (np.array([0, N]), "out of range"),
        (np.ones(3, dtype=bool), "boolean mask"),
        (np.array([0.5]), "row positions"),
    ],
)
def test_subset_with_bad_input_raises_a_typed_error(index, match):
    X, y = _arrays()
    for samples in (_array_samples(X, y), _photos_samples(X, y)):
        with pytest.raises(InvalidParameterError, match=match):
            samples.subset(index)


def test_unusable_data_is_refused():
    with pytest.raises(DatasetError, match="Cannot read training data"):
        fit(42, n_classes=2)
    with pytest.raises(DatasetError, match="Cannot take the features"):
        as_samples(Photos(*_arrays()), features="pixels", labels="label")


def test_mapped_reads_hand_pages_back_and_give_the_same_rows(tmp_path, monkeypatch):
    from unbake.data import sources

    X, y = _arrays()
    ids = [f"r{i}" for i in range(N)]
    write_store(tmp_path / "s", [(X, y, ids, ids)], rows=N, row_shape=SHAPE)
    monkeypatch.setattr(sources, "RESIDENT_BUDGET", 1024)  # hand back after every read
    mapped = MemmapSource(str(tmp_path / "s" / "features.npy"), io="mmap")
    order = np.random.default_rng(0).permutation(N)
    for chunk in np.array_split(order, 12):
        assert np.array_equal(mapped.read(chunk), X[chunk])
    assert mapped._read_since < 1024


def test_a_workspace_over_a_store_trains_and_forgets_through_the_cli(tmp_path):
    from typer.testing import CliRunner

    from unbake.cli import app

    X, y = _arrays()
    ids = [f"r{i}" for i in range(N)]
    owners = [f"u{i % 40}" for i in range(N)]
    write_store(tmp_path / "store", [(X, y, ids, owners)], rows=N, row_shape=SHAPE)
    runner = CliRunner()
    ws = ["--workspace", str(tmp_path / "ws")]
    train = ["train", "--dataset", "store", "--path", str(tmp_path / "store"), "--epochs", "1"]
    assert runner.invoke(app, [*train, *ws]).exit_code == 0
    forgot = runner.invoke(app, ["forget", "--subject", "u3", "--method", "retrain", *ws])
    assert forgot.exit_code == 0, forgot.output
    with Workspace.open(tmp_path / "ws") as opened:
        active, gone = opened.active_and_forgotten()
        assert active.streamed and set(gone.subjects) == {"u3"}
    missing = runner.invoke(app, ["train", "--dataset", "store", "--path", str(tmp_path / "no"),
                                  "--workspace", str(tmp_path / "ws2")])  # fmt: skip
    assert missing.exit_code == 2 and "no complete data store" in missing.output
    assert not (tmp_path / "ws2" / "catalog.sqlite").exists()


def test_metrics_read_streamed_samples_as_arrays_would():
    from unbake.evaluation import evaluate
    from unbake.evaluation.ghost import penultimate

    X, y = _arrays()
    arrays, streamed = _array_samples(X, y), _photos_samples(X, y)
    model = fit(arrays, n_classes=K, config=CONFIG, seed=0)
    assert np.array_equal(penultimate(model, streamed.X), penultimate(model, arrays.X))
    fa, ra = arrays.split(arrays.ids[:30])
    fs, rs = streamed.split(streamed.ids[:30])
    want = evaluate(model, forget=fa, retain=ra, test=ra.subset(np.arange(40)))
    got = evaluate(model, forget=fs, retain=rs, test=rs.subset(np.arange(40)))
    assert got.to_dict() == want.to_dict()


def test_parquet_imported_in_batches_equals_the_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n = 50
    table = pa.table({"id": [f"r{i}" for i in range(n)], "f1": [i * 0.5 for i in range(n)],
                      "f2": [float(i % 7) for i in range(n)], "label": ["ab"[i % 2] for i in range(n)]})  # fmt: skip
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=16)
    stored = import_parquet(tmp_path / "t.parquet", tmp_path / "store", id_column="id",
                            classes=["a", "b"], chunk_rows=16)  # fmt: skip
    expected = np.array([[i * 0.5, i % 7] for i in range(n)], dtype=np.float32)
    assert stored.streamed and np.array_equal(np.asarray(stored.X), expected)
    assert list(stored.ids) == [f"r{i}" for i in range(n)] and list(stored.y) == [
        i % 2 for i in range(n)
    ]


def test_a_csv_with_a_missing_feature_is_refused_and_leaves_no_store(tmp_path):
    (tmp_path / "t.csv").write_text("f1,f2,label\n1,2,a\n3,,b\n")
    with pytest.raises(DatasetError, match="missing or not a finite number"):
        import_csv(tmp_path / "t.csv", tmp_path / "store", classes=["a", "b"])
    with pytest.raises(DatasetError, match="no complete data store"):
        open_store(tmp_path / "store")
