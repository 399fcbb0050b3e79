"""The data source seen through the catalog: load it, check it, and select from it.

A workspace's samples live in their source (a built-in dataset, a CSV or Parquet file,
in-memory data); the catalog records each one's ID, split and content hash. Every read
checks the source against the catalog first (:meth:`SourceView.active_and_forgotten`):
rows it does not know, rows never forgotten that went missing, rows that changed split or
content are refused; forgotten rows may be gone. :class:`SourceView` is the part of the
:class:`~unbake.workspace.Workspace` that does this.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unbake.data import Dataset, Samples, content_hashes, load_dataset
from unbake.exceptions import (
    DatasetError,
    EmptyRequestError,
    IntegrityError,
    InvalidParameterError,
    UnknownNameError,
    UnknownSampleError,
    WorkspaceError,
)
from unbake.workspace.catalog import Catalog
from unbake.workspace.request_store import RequestStore
from unbake.workspace.sample_store import TOMBSTONE_PREFIX, SampleStore

__all__ = ["ForgetSelector", "SourceView"]


@dataclass(frozen=True)
class ForgetSelector:
    """What a deletion request names: sample IDs, a subject, or a class label."""

    ids: tuple[str, ...] = ()
    subject: str | None = None
    label: str | int | None = None

    def to_dict(self, subject_hash: Callable[[str], str]) -> dict[str, Any]:
        """What is recorded: the number of IDs, the subject's keyed hash, the class."""
        out: dict[str, Any] = {}
        if self.ids:
            out["ids"] = len(self.ids)
        if self.subject is not None:
            out["subject_hmac"] = subject_hash(self.subject)
        if self.label is not None:
            out["class"] = self.label
        return out


class SourceView:
    """Loading, checking and selecting samples of a workspace's data source (a part of
    :class:`~unbake.workspace.Workspace`, which provides the attributes below)."""

    root: Path
    catalog: Catalog
    sample_store: SampleStore
    request_store: RequestStore
    _dataset: Dataset | None
    subject_hmac: Callable[[str], str]

    @property
    def dataset_spec(self) -> dict[str, Any]:
        spec = self.catalog.parse_json(self.catalog.meta("dataset") or "{}", "the dataset spec")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise self.catalog.damaged(
                f"the dataset spec {spec!r:.60} is not an object with a dataset name"
            )
        return spec

    def dataset(self) -> Dataset:
        """The workspace's dataset, reloaded from its source and checked against the catalog."""
        if self._dataset is None:
            spec = dict(self.dataset_spec)
            name = spec.pop("name", None)
            if name == "__memory__" or name is None:
                raise WorkspaceError(
                    "This workspace was created from in-memory data that is no longer loaded; "
                    "reopen it with Workspace.create(..., dataset=<Dataset>) in the same process."
                )
            try:
                self._dataset = load_dataset(name, **spec)
            except (InvalidParameterError, UnknownNameError) as exc:  # what it names is wrong
                raise self.catalog.damaged(f"the dataset spec does not load ({exc})") from None
        return self._dataset

    def active_and_forgotten(self) -> tuple[Samples, Samples]:
        """(active training samples, forgotten samples still present in the source).

        The source is checked against the catalog first: rows the catalog does not know,
        rows never forgotten that are missing, rows that changed split or content are
        errors. Rows that were forgotten may be missing (deleted from the source): that
        is normal and silent.
        """
        ds = self.dataset()
        known = self.sample_store.known()
        source = {str(sid): split for split, samples in ds.splits().items() for sid in samples.ids}
        unknown = [i for i in source if i not in known]
        if unknown:  # forgotten rows still in the source whose tombstone is a keyed hash
            known.update(self.sample_store.tombstoned(unknown))
            unknown = [i for i in unknown if i not in known]
        if unknown:
            raise DatasetError(
                f"The dataset source has {len(unknown)} samples the catalog does not know "
                f"(e.g. {unknown[:3]}); the source gained rows since the workspace was created: "
                "remove them, or start a new workspace for the new data."
            )
        missing = sorted(i for i, r in known.items() if r["status"] == "active" and i not in source)
        if missing:
            raise DatasetError(
                f"{len(missing)} samples that were never forgotten are missing from the dataset "
                f"source (e.g. {missing[:3]}); restore them, or forget them first (only "
                "forgotten rows may be deleted from the source)."
            )
        moved = [i for i, split in source.items() if known[i]["split"] != split]
        if moved:
            raise IntegrityError(
                f"{len(moved)} samples moved to another split since the workspace was created "
                f"(e.g. {moved[:3]}); the split options or subjects changed: restore them or "
                "start a new workspace."
            )
        changed = [
            sid
            for samples in ds.splits().values()
            for sid, h in zip(samples.ids, content_hashes(samples), strict=True)
            if known[sid]["status"] == "active" and known[sid]["content_hash"] != h
        ]
        if changed:
            raise IntegrityError(
                f"{len(changed)} samples changed in the dataset source since they were recorded "
                f"(e.g. {changed[:3]}); restore the original data or start a new workspace "
                "(without an ID column, IDs are row numbers: deleting a row renumbers the rest)."
            )
        active_mask = np.array([known[i]["status"] == "active" for i in ds.train.ids], dtype=bool)
        return ds.train.subset(active_mask), ds.train.subset(~active_mask)

    def held_out(self, *, without: Sequence[str] = ()) -> tuple[Samples, Samples]:
        """(validation, test) rows not forgotten, nor in ``without``.

        A deletion request also forgets the held-out rows it selects, and no metric
        reads them afterwards: the validation and test sets shrink, and the source may
        then lose those rows. Call :meth:`active_and_forgotten` first to check the source.
        """
        ds = self.dataset()
        gone = self.sample_store.forgotten_held_out()
        if any(g.startswith(TOMBSTONE_PREFIX) for g in gone):
            gone += self.sample_store.tombstoned([*map(str, ds.val.ids), *map(str, ds.test.ids)])
        gone += list(without)
        return ds.val.subset(~ds.val.mask_of(gone)), ds.test.subset(~ds.test.mask_of(gone))

    def select(self, selector: ForgetSelector, *, active: Samples | None = None) -> list[str]:
        """Resolve a selector to sample IDs, rejecting empty, unknown and forgotten ones.

        The IDs may lie in any split: training rows are unlearned, while validation and
        test rows (never trained on) are only marked forgotten, so that no metric reads
        them again. A class selects its rows in every split.
        """
        known = {i: (r["split"], r["status"]) for i, r in self.sample_store.known().items()}
        chosen: list[str] = []
        if selector.ids:
            shredded = self.sample_store.tombstoned([i for i in selector.ids if i not in known])
            known.update({i: (r["split"], r["status"]) for i, r in shredded.items()})
            unknown = [i for i in selector.ids if i not in known]
            if unknown:
                raise UnknownSampleError(
                    f"Unknown sample IDs {unknown[:5]}{' …' if len(unknown) > 5 else ''} "
                    f"({len(unknown)} in all); list valid IDs with `unbake samples`."
                )
            gone = [i for i in selector.ids if known[i][1] == "forgotten"]
            if gone:
                raise UnknownSampleError(
                    f"Sample IDs {gone[:5]} were already forgotten; drop them from the request "
                    "(see `unbake log`)."
                )
            chosen += list(dict.fromkeys(selector.ids))
        if selector.subject is not None:
            chosen += self.subject_ids(selector.subject)
        if selector.label is not None:
            if active is None:
                active, _ = self.active_and_forgotten()
            index = self.dataset().class_index(selector.label)
            for samples in (active, *self.held_out()):
                chosen += [str(i) for i in samples.ids[samples.y == index]]
        chosen = list(dict.fromkeys(chosen))
        if not chosen:
            raise EmptyRequestError(
                "The deletion request selects no samples; pass --ids, --ids-file, --subject "
                "or --class."
            )
        return chosen

    def subject_ids(self, subject: str) -> list[str]:
        """The subject's active IDs, refusing a subject with none (for the operator's
        synchronous ``unbake forget``, which says which of the two it is)."""
        ids = self.sample_store.of_subject(subject)
        if not ids:
            done = self._requests_naming(subject)
            if done:
                raise UnknownSampleError(
                    f"Every sample of subject {subject!r} was already forgotten "
                    f"(request {done[-1]['request_id']}); see `unbake log`."
                )
            raise UnknownSampleError(
                f"No samples belong to subject {subject!r}; check the subject ID "
                "(`unbake samples` lists them)."
            )
        return ids

    def _requests_naming(self, subject: str) -> list[dict[str, Any]]:
        digest = self.subject_hmac(subject)
        return [
            r for r in self.request_store.applied() if r["selector"].get("subject_hmac") == digest
        ]

    def class_name(self, label: str | int) -> str:
        """The name of class ``label`` (a name or an index); an unknown one is refused."""
        ds = self.dataset()
        return ds.classes[ds.class_index(label)]

    def samples(self, *, subject: str | None = None, forgotten: bool = False) -> list[dict]:
        """The samples the catalog knows: ID, subject, split, label name, status.

        By default the samples not forgotten (every split); ``forgotten=True`` lists the
        forgotten ones instead, with their request (their subject is cleared when they
        are forgotten, so ``subject`` then finds them through the requests that named it;
        once a request's IDs are shredded, its samples are listed by their tombstone,
        ``hmac:`` + keyed hash).
        Label names are read from the source; a forgotten row deleted from it has none.
        """
        self.active_and_forgotten()  # checks the source against the catalog first
        ds = self.dataset()
        label_of = {
            str(sid): name
            for samples in ds.splits().values()
            for sid, name in zip(
                samples.ids,
                ds.label_names(samples.y) if ds.n_classes else [""] * len(samples),  # text: none
                strict=True,
            )
        }
        status = "forgotten" if forgotten else "active"
        if subject is not None and forgotten:
            wanted = {r["request_id"] for r in self._requests_naming(subject)}
            rows = [r for r in self.sample_store.rows(status) if r["request_id"] in wanted]
        else:
            rows = self.sample_store.rows(status, subject)
        return [
            {
                "sample_id": r["sample_id"],
                "subject": r["subject"],
                "split": r["split"],
                "label": label_of.get(r["sample_id"]),
                "status": r["status"],
                "request_id": r["request_id"],
            }
            for r in rows
        ]
