import os

import pytest

import unbake  # noqa: F401  (first: its thread policy must precede torch)
from unbake.service import apply

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

#: Statements that take a current catalog back to version 8 (before sealed personal data:
#: its keys go, so what they sealed reads as erased).
UNDO_V9 = [
    "DROP TABLE request_secrets",
    "UPDATE meta SET value = '8' WHERE key = 'schema_version'",
]
#: ... and back to version 7 (before keyed checkpoint digests).
UNDO_V8 = [
    *UNDO_V9,
    "ALTER TABLE models DROP COLUMN mac",
    "ALTER TABLE reference_models DROP COLUMN mac",
    "UPDATE meta SET value = '7' WHERE key = 'schema_version'",
]
#: ... and back to version 6 (before token revocation).
UNDO_V7 = [
    *UNDO_V8,
    "ALTER TABLE tokens DROP COLUMN revoked_at",
    "DELETE FROM meta WHERE key = 'token_generation'",
    "UPDATE meta SET value = '6' WHERE key = 'schema_version'",
]
#: ... and back to version 5 (before API tokens).
UNDO_V6 = [
    *UNDO_V7,
    "DROP TABLE tokens",
    "UPDATE meta SET value = '5' WHERE key = 'schema_version'",
]
#: ... and back to version 4 (before the queue and request provenance).
UNDO_V5 = [
    *UNDO_V6,
    "DROP TABLE queue",
    *(
        f"ALTER TABLE requests DROP COLUMN {c}"
        for c in ("seed", "device", "unbake_version", "reason", "submitted_by")
    ),
    "UPDATE meta SET value = '4' WHERE key = 'schema_version'",
]


@pytest.fixture
def workspace_dir(tmp_path):
    return tmp_path / "ws"


@pytest.fixture(scope="session")
def digits_small():
    """Digits with 600 training rows: enough for tiny models, fast to train."""
    from unbake.data import Dataset, load_dataset

    ds = load_dataset("digits")
    return Dataset(ds.name, ds.train.subset(slice(0, 600)), ds.test, ds.n_classes, ds.spec)


@pytest.fixture(scope="session")
def service_template(tmp_path_factory):
    """A digits workspace (5% test, 5% validation) with a logistic regression (one epoch,
    seed 0), and its training IDs: the deletion service's and the worker's tests copy it."""
    from unbake import TrainConfig, Workspace

    root = tmp_path_factory.mktemp("service") / "ws"
    small_test = {"test_fraction": 0.05, "val_fraction": 0.05}  # a faster evaluation per batch
    with Workspace.create(root, dataset="digits", dataset_options=small_test) as ws:
        apply.train(ws, model="logreg", config=TrainConfig.parse(epochs=1, batch_size=64), seed=0)
        train = [r["sample_id"] for r in ws.samples() if r["split"] == "train"]
    return root, train


@pytest.fixture
def root(service_template, tmp_path):
    """A fresh copy of :func:`service_template`'s workspace (a test's own ``root`` wins)."""
    import shutil

    root = tmp_path / "ws"
    shutil.copytree(service_template[0], root)
    return root


@pytest.fixture
def train_ids(service_template):
    """The training IDs of :func:`service_template`."""
    return service_template[1]
