"""The workspace's reference bank: stored, loaded, and purged with the data it saw.

Reference models are stored like every model: safetensors checkpoints (written
atomically, hash-checked on load), with a catalog row each in ``reference_models`` and
one ``reference_members`` row per sample it trained on, so that a deletion purges every
reference that saw a forgotten sample (see :meth:`Workspace.commit_staged`). A bank is
reused by any later audit of a model with the same recipe (architecture, configuration,
strategy). Training the missing references and auditing a request is the service's
(:mod:`unbake.service.audit`); this module stores and reads what it needs.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from unbake.data import Samples
from unbake.evaluation.bank import ReferenceBank
from unbake.exceptions import UnknownNameError, WorkspaceError
from unbake.workspace.atomic import PRIVATE, atomic_write_bytes, sha256_bytes
from unbake.workspace.catalog import utcnow
from unbake.workspace.checkpoints import decode_checkpoint, encode_checkpoint

if TYPE_CHECKING:
    from unbake.workspace.workspace import Workspace

__all__ = [
    "applied_request",
    "load_references",
    "purge_references",
    "record_audit",
    "store_references",
]


def applied_request(ws: Workspace, request_id: str | None) -> dict[str, Any]:
    """The applied request ``request_id`` (default: the latest that changed a model), as
    the catalog lists it; one that touched only held-out rows changed no model to audit."""
    reqs = [r for r in ws.request_store.applied() if r["status"] == "applied"]
    changed = [r for r in reqs if r["model_after"] != r["model_before"]]
    if request_id is None:
        if not changed:
            held = f" ({len(reqs)} touched only held-out rows, which no model trained on)"
            raise WorkspaceError(
                f"No deletion request in {ws.root} changed a model{held if reqs else ''}, so "
                "there is nothing to audit; file one with `unbake forget`."
            )
        return changed[-1]
    for r in reqs:
        if r["request_id"] == request_id and r not in changed:
            raise WorkspaceError(
                f"Request {request_id} touched only held-out rows and changed no model, so "
                "there is nothing to audit; audit a request that forgot training samples."
            )
        if r["request_id"] == request_id:
            return r
    raise UnknownNameError(
        f"No deletion request {request_id!r} in {ws.root}; list them with `unbake log`."
    )


def load_references(
    ws: Workspace, pool: Samples, recipe_key: str, references: int
) -> tuple[ReferenceBank, int]:
    """(the first ``references`` active stored references of recipe ``recipe_key`` over
    ``pool``, hash-checked, the next unused seed of that recipe)."""
    rows = ws.catalog.query(
        "SELECT * FROM reference_models WHERE recipe = ? AND status = 'active' ORDER BY seed",
        (recipe_key,),
    )[:references]
    models, seeds, names = [], [], []
    pos = {sid: i for i, sid in enumerate(pool.ids.astype(str))}
    membership = np.zeros((len(rows), len(pool)), dtype=bool)
    for k, row in enumerate(rows):
        source = f"Reference {row['ref_id']}"
        data = ws.model_store.read_checkpoint(row["ref_id"], row, source)
        model, _ = decode_checkpoint(data, expected_sha256=None, source=source)
        members = ws.catalog.query(
            "SELECT sample_id FROM reference_members WHERE ref_id = ?", (row["ref_id"],)
        )
        idx = [pos[m["sample_id"]] for m in members if m["sample_id"] in pos]
        membership[k, idx] = True
        models.append(model)
        seeds.append(int(row["seed"]))
        names.append(row["ref_id"])
    used = ws.catalog.query(
        "SELECT COALESCE(MAX(seed), -1) AS s FROM reference_models WHERE recipe = ?",
        (recipe_key,),
    )[0]["s"]
    return ReferenceBank(pool.ids.astype(str), membership, models, seeds, names), used + 1


def store_references(ws: Workspace, bank: ReferenceBank, key: str) -> None:
    """Write the new references' checkpoints, then record them in one transaction; their
    IDs become ``bank.names``."""
    written = []
    try:
        for model in bank.models:
            ref_id = f"ref-{uuid.uuid4().hex[:12]}"
            data = encode_checkpoint(model, model_id=ref_id, parent_id=None)
            rel = f"checkpoints/{ref_id}.safetensors"
            atomic_write_bytes(ws.root / rel, data, mode=PRIVATE)
            written.append((ref_id, rel, sha256_bytes(data)))
        with ws.catalog.transaction() as cur:
            for (ref_id, rel, digest), seed, member in zip(
                written, bank.seeds, bank.membership, strict=True
            ):
                cur.execute(
                    "INSERT INTO reference_models(ref_id, recipe, seed, created_at, n_train, "
                    "checkpoint, sha256, status, mac) VALUES (?, ?, ?, ?, ?, ?, ?, 'active', ?)",
                    (
                        *(ref_id, key, seed, utcnow(), int(member.sum()), rel, digest),
                        ws.model_store.checkpoint_mac(ref_id, digest),
                    ),
                )
                cur.executemany(
                    "INSERT INTO reference_members(ref_id, sample_id) VALUES (?, ?)",
                    [(ref_id, str(s)) for s in bank.ids[member]],
                )
    except BaseException:
        for _, rel, _ in written:
            (ws.root / rel).unlink(missing_ok=True)
        raise
    bank.names = [w[0] for w in written]


def record_audit(ws: Workspace, request_id: str, record: dict[str, Any], verdict: str) -> None:
    """Record an audit on its request and append ``verified`` to the ledger, in one
    transaction (under the caller's lock)."""
    with ws.catalog.transaction() as cur:
        ws.request_store.record_audit(cur, request_id, record)
        verified = {"verdict": verdict, "model": record["model"]}
        ws.request_store.append(cur, request_id, "verified", verified, record["at"])


def purge_references(
    cur: sqlite3.Cursor, sample_ids: Sequence[str], request_id: str
) -> tuple[list[str], list[str]]:
    """Mark every reference model that trained on ``sample_ids`` purged (in ``cur``'s transaction).

    Returns their IDs and their checkpoint files (to delete after the commit); their
    membership rows go too, so no record of a forgotten sample's use survives.
    """
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS _forget_ids (sample_id TEXT PRIMARY KEY)")
    cur.execute("DELETE FROM _forget_ids")
    cur.executemany("INSERT OR IGNORE INTO _forget_ids VALUES (?)", [(s,) for s in sample_ids])
    rows = cur.execute(
        "SELECT ref_id, checkpoint FROM reference_models WHERE status='active' AND ref_id IN "
        "(SELECT ref_id FROM reference_members JOIN _forget_ids USING (sample_id)) ORDER BY ref_id"
    ).fetchall()
    refs = [r["ref_id"] for r in rows]
    cur.executemany(
        "UPDATE reference_models SET status='purged', purged_by=? WHERE ref_id=?",
        [(request_id, r) for r in refs],
    )
    cur.executemany("DELETE FROM reference_members WHERE ref_id=?", [(r,) for r in refs])
    cur.execute("DELETE FROM _forget_ids")
    return refs, [r["checkpoint"] for r in rows]
