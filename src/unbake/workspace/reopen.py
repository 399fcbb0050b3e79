"""Reopening a workspace over data defined in Python: is it the same data?

A workspace created from a :class:`~unbake.data.Dataset` built in Python (not a
registered name it can reload) records each sample's ID, split and content hash (sha256
of its features and label). :func:`check_same_data` compares a dataset passed to
``Workspace.open(path, dataset=ds)`` with those records, and refuses a different one in
one line naming the first sample that differs (:class:`~unbake.exceptions.DatasetError`):
one the workspace never recorded, one still active that is missing, one in another
split, or one whose content changed. Forgotten samples may be absent (deleted from the
source), and their content is no longer recorded.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from unbake.data import Dataset, content_hashes
from unbake.exceptions import DatasetError

if TYPE_CHECKING:
    from unbake.workspace.workspace import Workspace

__all__ = ["check_same_data", "memory_spec"]

#: The dataset spec's name for data defined in Python (it cannot be reloaded by name).
MEMORY = "__memory__"


def memory_spec(ds: Dataset) -> dict[str, str]:
    """What a workspace records of data defined in Python: no source, its classes."""
    return {"name": MEMORY, "classes": json.dumps(list(ds.classes))}


def _refuse(ws: Workspace, what: str) -> DatasetError:
    return DatasetError(
        f"The dataset passed to Workspace.open is not the data {ws.root} was created from: "
        f"{what}; pass the same dataset, or create a new workspace for the new data."
    )


def check_same_data(ws: Workspace, ds: Dataset) -> None:
    """Refuse ``ds`` unless its samples are the ones ``ws`` recorded (IDs, splits and the
    content hash of every sample not forgotten) and its classes are the recorded ones."""
    recorded = ws.dataset_spec.get("classes")
    if recorded is not None and json.loads(recorded) != list(ds.classes):
        raise _refuse(ws, f"its classes {list(ds.classes)} are not {json.loads(recorded)}")
    known = ws.sample_store.known()
    splits = ds.splits()
    ids = [str(i) for s in splits.values() for i in s.ids]
    unknown = [i for i in ids if i not in known]
    if unknown:
        known.update(ws.sample_store.tombstoned(unknown))  # forgotten rows whose IDs were shredded
    seen: set[str] = set()
    for split, samples in splits.items():
        for sid, digest in zip(samples.ids, content_hashes(samples), strict=True):
            sid = str(sid)
            seen.add(sid)
            row = known.get(sid)
            if row is None:
                raise _refuse(ws, f"sample {sid!r} ({split}) was never recorded")
            if row["split"] != split:
                raise _refuse(ws, f"sample {sid!r} is in {split}, recorded in {row['split']}")
            if row["status"] == "active" and row["content_hash"] != digest:
                raise _refuse(ws, f"sample {sid!r} ({split}) changed (its content hash differs)")
    missing = next((i for i, r in known.items() if r["status"] == "active" and i not in seen), None)
    if missing is not None:
        raise _refuse(ws, f"sample {missing!r}, never forgotten, is missing")
