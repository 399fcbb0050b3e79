"""Datasets whose every training sample has a stable ID and an optional subject (owner)."""

from unbake.data.loaders import DATASETS, load_dataset, read_idx
from unbake.data.samples import Dataset, Samples, content_hashes

__all__ = ["DATASETS", "Dataset", "Samples", "content_hashes", "load_dataset", "read_idx"]
