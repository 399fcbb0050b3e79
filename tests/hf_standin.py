"""A stand-in for the part of Hugging Face ``datasets`` that unbake reads, for machines
without the package: ``Dataset.from_dict``, ``column_names``, ``len``,
``with_format("numpy", columns=…)``, ``ds[column]`` and ``ds[list_of_rows]``, with the
same return types as the real ``datasets.Dataset`` (a list for a column, a dict of numpy
arrays for rows in numpy format). Tests use the real package where it is installed."""

from __future__ import annotations

import types

import numpy as np


class Dataset:
    def __init__(self, columns: dict, fmt: list | None = None) -> None:
        self._columns, self._fmt = columns, fmt

    @classmethod
    def from_dict(cls, mapping: dict) -> Dataset:
        return cls({k: list(v) for k, v in mapping.items()})

    @property
    def column_names(self) -> list[str]:
        return list(self._columns)

    def __len__(self) -> int:
        return len(next(iter(self._columns.values())))

    def with_format(self, kind: str, columns: list[str] | None = None) -> Dataset:
        assert kind == "numpy"
        return Dataset(self._columns, columns or self.column_names)

    def __getitem__(self, key):
        if isinstance(key, str):
            return list(self._columns[key])
        return {c: np.asarray(self._columns[c])[key] for c in self._fmt}


def module() -> types.ModuleType:
    """The real ``datasets`` where it imports, else a module holding the stand-in."""
    try:
        import datasets

        return datasets
    except ImportError:
        standin = types.ModuleType("datasets")
        standin.Dataset = Dataset
        return standin
