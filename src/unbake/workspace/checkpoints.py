"""Safetensors checkpoints of :class:`~unbake.training.TrainedModel`, with provenance metadata.

Layout of one file: the module's state under ``module.``, the strategy's artifacts
under ``artifact.``; metadata (all strings) holds the format version, the model and
parent IDs, the architecture, training config, seed, strategy and ``meta``. The
file's sha256 is recorded in the catalog and checked before any load. Nothing is
ever unpickled.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from unbake.exceptions import IntegrityError
from unbake.models import ModelSpec
from unbake.training import STRATEGIES, TrainConfig, TrainedModel
from unbake.workspace.atomic import sha256_bytes

__all__ = ["FORMAT", "decode_checkpoint", "encode_checkpoint"]

FORMAT = "unbake-checkpoint/1"


def encode_checkpoint(model: TrainedModel, *, model_id: str, parent_id: str | None) -> bytes:
    """Serialise ``model`` to safetensors bytes (tensors, then provenance metadata)."""
    tensors: dict[str, torch.Tensor] = {}
    state, extra = _stored_state(model)
    for key, value in state.items():
        tensors[f"module.{key}"] = value.detach().cpu().contiguous().clone()
    for key, value in model.artifacts.items():
        tensors[f"artifact.{key}"] = value.detach().cpu().contiguous().clone()
    metadata = {
        "format": FORMAT,
        "model_id": model_id,
        "parent_id": parent_id or "",
        "spec": json.dumps(model.spec.to_dict(), sort_keys=True),
        "config": model.config.model_dump_json(),
        "seed": str(model.seed),
        "input_shape": json.dumps(list(model.input_shape)),
        "n_classes": str(model.n_classes),
        "strategy": model.strategy,
        "strategy_params": json.dumps(model.strategy_params, sort_keys=True),
        "meta": json.dumps(model.meta, sort_keys=True),
        **extra,
    }
    return st_save(tensors, metadata=metadata)


def _stored_state(model: TrainedModel) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The module's whole state, or for a LoRA model only its adapters plus the base's hash."""
    from unbake.models.hf import adapter_tensors, base_hash, is_hf, is_lora

    if not (is_hf(model.spec.name) and is_lora(model.spec)):
        return model.module.state_dict(), {}
    return adapter_tensors(model.module), {"base_sha256": base_hash(model.spec.name)}


def _load_state(module: torch.nn.Module, state, meta: dict[str, str], spec, source: str) -> None:
    """Load ``state`` strictly; adapters only onto the very base model they were trained on."""
    if "base_sha256" not in meta:
        module.load_state_dict(state, strict=True)
        return
    from unbake.models.hf import adapter_tensors, base_hash

    if base_hash(spec.name) != meta["base_sha256"]:
        raise IntegrityError(
            f"{source} holds LoRA adapters of another base model than the current "
            f"{spec.name!r} (its weights changed); restore that base model or retrain."
        )
    expected = set(adapter_tensors(module))
    if set(state) != expected:
        raise RuntimeError(f"adapter tensors {sorted(set(state) ^ expected)[:3]} do not match")
    module.load_state_dict(state, strict=False)


def _metadata(data: bytes) -> dict[str, str]:
    # safetensors header: 8-byte little-endian length, then a JSON header.
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return header.get("__metadata__", {})


def decode_checkpoint(
    data: bytes, *, expected_sha256: str | None, source: str = "checkpoint"
) -> tuple[TrainedModel, dict[str, Any]]:
    """Verify and load checkpoint bytes; returns the model and the raw metadata."""
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        raise IntegrityError(
            f"{source} does not match the sha256 recorded in the catalog (corrupt or tampered); "
            "restore it from a backup or retrain the model."
        )
    try:
        meta = _metadata(data)
        tensors = st_load(data)
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(
            f"{source} is not a readable safetensors file ({exc}); restore it or retrain."
        ) from None
    if meta.get("format") != FORMAT:
        raise IntegrityError(
            f"{source} has format {meta.get('format')!r}, expected {FORMAT!r}; "
            "it was not written by this version of unbake."
        )
    try:
        raw_spec, strategy_params = json.loads(meta["spec"]), json.loads(meta["strategy_params"])
        input_shape = tuple(int(d) for d in json.loads(meta["input_shape"]))
        n_classes, strategy_name = int(meta["n_classes"]), str(meta["strategy"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(
            f"{source} has damaged metadata ({type(exc).__name__}: {exc}); restore it or retrain."
        ) from None
    # What the catalog or a checkpoint names passes the same doors as the user's own input.
    spec = ModelSpec.from_dict(raw_spec)
    strategy = STRATEGIES.create_checked(strategy_name, strategy_params)
    unstored = sorted(set(strategy_params) - set(strategy.model_params()))
    if unstored:
        raise IntegrityError(
            f"{source} names the {strategy_name} parameter {unstored[0]!r}, which is never "
            "stored with a model (tampered); restore it from a backup or retrain."
        )
    module = strategy.skeleton(spec, input_shape, n_classes)
    state = {k[len("module.") :]: v for k, v in tensors.items() if k.startswith("module.")}
    try:
        _load_state(module, state, meta, spec, source)
    except RuntimeError as exc:
        raise IntegrityError(
            f"{source} does not fit its declared architecture ({str(exc).splitlines()[0]}); "
            "restore it or retrain."
        ) from None
    module.eval()
    artifacts = {k[len("artifact.") :]: v for k, v in tensors.items() if k.startswith("artifact.")}
    model = TrainedModel(
        module=module,
        spec=spec,
        config=TrainConfig.model_validate_json(meta["config"]),
        seed=int(meta["seed"]),
        input_shape=input_shape,
        n_classes=n_classes,
        strategy=strategy_name,
        strategy_params=strategy_params,
        artifacts=artifacts,
        meta=json.loads(meta["meta"]),
    )
    return model, meta
