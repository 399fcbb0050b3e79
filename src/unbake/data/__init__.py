"""Datasets whose every training sample has a stable ID and an optional subject (owner)."""

from unbake.data.adapters import as_dataset, as_samples
from unbake.data.loaders import DATASETS, load_dataset, read_idx
from unbake.data.samples import Dataset, Samples, content_hashes
from unbake.data.sources import RowSource, RowView
from unbake.data.splits import SPLITS, SplitSpec, assign_splits
from unbake.data.store import open_store, write_store
from unbake.data.text import TextSamples

__all__ = [
    "DATASETS",
    "SPLITS",
    "Dataset",
    "RowSource",
    "RowView",
    "Samples",
    "SplitSpec",
    "TextSamples",
    "as_dataset",
    "as_samples",
    "assign_splits",
    "content_hashes",
    "load_dataset",
    "open_store",
    "read_idx",
    "write_store",
]
