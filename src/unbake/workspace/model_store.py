"""The model store: checkpoints, their hashes and keyed digests, and the current model.

It owns the ``models`` table and the checkpoint files. A checkpoint is a safetensors
file written atomically; its catalog row holds its sha256 and a keyed digest
(HMAC-SHA256 under the workspace secret of ``ID:sha256``), and a checkpoint is read only
once both match, so that whoever can rewrite the catalog cannot swap in another file.
The newest ``active`` model is the current one; a deletion purges every other.
"""

from __future__ import annotations

import hmac
import json
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unbake.exceptions import IntegrityError, WorkspaceError
from unbake.training import TrainedModel, resolve_device
from unbake.workspace.atomic import PRIVATE, atomic_write_bytes, sha256_bytes, sha256_file
from unbake.workspace.catalog import Catalog, utcnow
from unbake.workspace.checkpoints import decode_checkpoint, encode_checkpoint

__all__ = ["CHECKPOINTS", "ModelStore", "new_id"]

CHECKPOINTS = "checkpoints"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class ModelStore:
    """The models of one workspace folder ``root``; ``keyed_hash`` is the workspace's."""

    def __init__(self, root: Path, catalog: Catalog, keyed_hash: Callable[[str, str], str]) -> None:
        self.root = root
        self.catalog = catalog
        self._keyed_hash = keyed_hash

    # --- reading -------------------------------------------------------------------

    def row(self, model_id: str | None) -> sqlite3.Row:
        """The catalog row of ``model_id`` (``None``: the newest active model); a missing or
        purged model is refused with the fix."""
        row = self.catalog.model(model_id) if model_id else self.catalog.latest_active_model()
        if row is None:
            if model_id:
                raise WorkspaceError(
                    f"No model {model_id!r} in this workspace; list models with `unbake status`."
                )
            raise WorkspaceError("No model in this workspace yet; train one with `unbake train`.")
        if row["status"] != "active":
            raise WorkspaceError(
                f"Model {row['model_id']} was purged after a deletion request; use the newest "
                "model (`unbake status`)."
            )
        return row

    def current(self) -> sqlite3.Row | None:
        """The newest active model's row (``None``: no model yet)."""
        return self.catalog.latest_active_model()

    def get(self, model_id: str) -> sqlite3.Row | None:
        """``model_id``'s row, active or purged (``None``: unknown)."""
        return self.catalog.model(model_id)

    def load(self, model_id: str | None = None, *, device: Any = None) -> TrainedModel:
        """Load and hash-check a model (default: the newest active one)."""
        row = self.row(model_id)
        source = f"Checkpoint {self.root / row['checkpoint']} of model {row['model_id']}"
        data = self.read_checkpoint(row["model_id"], row, source)
        model, _ = decode_checkpoint(data, expected_sha256=None, source=source)
        if device is not None:
            model.module.to(resolve_device(device))
        return model

    def checkpoint_mac(self, ident: str, sha256: str) -> str:
        """The keyed digest of checkpoint ``ident`` (a model or reference ID) whose bytes
        have ``sha256``: HMAC-SHA256 under the workspace secret, so that whoever can
        rewrite the catalog cannot forge it for another file (or move it to another ID)."""
        return self._keyed_hash("checkpoint", f"{ident}:{sha256}")

    def read_checkpoint(self, ident: str, row: sqlite3.Row, source: str) -> bytes:
        """The bytes of ``row``'s checkpoint, once they match its sha256 and keyed digest."""
        try:
            data = (self.root / row["checkpoint"]).read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"{source} is missing; restore it or retrain.") from None
        digest = sha256_bytes(data)
        if row["mac"] is None:
            raise IntegrityError(
                f"{source} has no keyed digest (its file did not match its recorded sha256 "
                "when the workspace was upgraded); restore it from a backup or retrain."
            )
        if digest != row["sha256"] or not hmac.compare_digest(
            self.checkpoint_mac(ident, digest), row["mac"]
        ):
            raise IntegrityError(
                f"{source} does not match the sha256 and keyed digest recorded in the catalog "
                "(corrupt or tampered); restore it from a backup or retrain the model."
            )
        return data

    def live_checkpoints(self) -> set[str]:
        """The checkpoint files (relative paths) of every active model and reference."""
        return {
            r["checkpoint"]
            for table in ("models", "reference_models")
            for r in self.catalog.query(f"SELECT checkpoint FROM {table} WHERE status='active'")
        }

    def active_checkpoints(self) -> list[sqlite3.Row]:
        """(checkpoint, sha256) of every active model (the crash harness checks them)."""
        return self.catalog.query("SELECT checkpoint, sha256 FROM models WHERE status='active'")

    # --- writing -------------------------------------------------------------------

    def write(self, model: TrainedModel, model_id: str, parent: str | None) -> tuple[str, str]:
        """Write ``model``'s checkpoint atomically; returns (relative path, sha256)."""
        data = encode_checkpoint(model, model_id=model_id, parent_id=parent)
        rel = f"{CHECKPOINTS}/{model_id}.safetensors"
        atomic_write_bytes(self.root / rel, data, mode=PRIVATE)
        return rel, sha256_bytes(data)

    def insert(
        self,
        cur: sqlite3.Cursor,
        model: TrainedModel,
        model_id: str,
        *,
        parent: str | None,
        origin: str,
        checkpoint: tuple[str, str],
        n_train: int,
    ) -> None:
        """Record a written checkpoint (``(path, sha256)``) as an active model."""
        rel, digest = checkpoint
        cur.execute(
            "INSERT INTO models(model_id, parent_id, created_at, origin, description, strategy, "
            "spec, config, seed, n_train, checkpoint, sha256, status, mac) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?)",
            (
                model_id,
                parent,
                utcnow(),
                origin,
                model.describe(),
                model.strategy,
                json.dumps(model.spec.to_dict(), sort_keys=True),
                model.config.model_dump_json(),
                model.seed,
                n_train,
                rel,
                digest,
                self.checkpoint_mac(model_id, digest),
            ),
        )

    def record_trained(self, trained: TrainedModel, n_train: int) -> str:
        """Write ``trained`` (fitted on ``n_train`` samples) and record it in one
        transaction (under the caller's lock); returns its new model ID."""
        model_id = new_id("model")
        checkpoint = self.write(trained, model_id, None)
        try:
            with self.catalog.transaction() as cur:
                self.insert(
                    cur,
                    trained,
                    model_id,
                    parent=None,
                    origin="train",
                    checkpoint=checkpoint,
                    n_train=n_train,
                )
        except BaseException:
            (self.root / checkpoint[0]).unlink(missing_ok=True)
            raise
        return model_id

    @staticmethod
    def purge_all_but(cur: sqlite3.Cursor, keep: str) -> list[str]:
        """Mark every active model but ``keep`` purged; returns their checkpoint files
        (to delete after the commit)."""
        stale = [
            r["checkpoint"]
            for r in cur.execute(
                "SELECT checkpoint FROM models WHERE status='active' AND model_id != ?", (keep,)
            ).fetchall()
        ]
        cur.execute(
            "UPDATE models SET status='purged' WHERE status='active' AND model_id != ?", (keep,)
        )
        return stale

    def key_checkpoints(self) -> None:
        """Give each active checkpoint of a workspace from before keyed digests (v7) its
        keyed digest, once its file matches the sha256 recorded then (idempotent). One
        that does not match stays without, and is refused when loaded."""
        keyed = []
        for table, ident in (("models", "model_id"), ("reference_models", "ref_id")):
            for r in self.catalog.query(
                f"SELECT {ident} AS id, checkpoint, sha256 FROM {table} "
                "WHERE mac IS NULL AND status = 'active'"
            ):
                path = self.root / r["checkpoint"]
                if path.is_file() and sha256_file(path) == r["sha256"]:
                    mac = self.checkpoint_mac(r["id"], r["sha256"])
                    keyed.append((f"UPDATE {table} SET mac = ? WHERE {ident} = ?", (mac, r["id"])))
        if keyed:
            with self.catalog.transaction() as cur:
                for sql, args in keyed:
                    cur.execute(sql, args)
