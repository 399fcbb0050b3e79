"""Persistence: the SQLite catalog, safetensors checkpoints, atomic writes, and the Workspace."""

from unbake.workspace.catalog import SCHEMA_VERSION, Catalog
from unbake.workspace.checkpoints import FORMAT, decode_checkpoint, encode_checkpoint
from unbake.workspace.workspace import DEFAULT_WORKSPACE, ForgetSelector, RequestRecord, Workspace

__all__ = [
    "DEFAULT_WORKSPACE",
    "FORMAT",
    "SCHEMA_VERSION",
    "Catalog",
    "ForgetSelector",
    "RequestRecord",
    "Workspace",
    "decode_checkpoint",
    "encode_checkpoint",
]
