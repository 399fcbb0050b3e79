"""Datasets whose every training sample has a stable ID and an optional subject (owner)."""

from unbake.data.loaders import DATASETS, load_dataset, read_idx
from unbake.data.samples import Dataset, Samples, content_hashes
from unbake.data.splits import SPLITS, SplitSpec, assign_splits
from unbake.data.text import TextSamples

__all__ = [
    "DATASETS",
    "SPLITS",
    "Dataset",
    "Samples",
    "SplitSpec",
    "TextSamples",
    "assign_splits",
    "content_hashes",
    "load_dataset",
    "read_idx",
]
