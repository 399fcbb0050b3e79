"""The audit of a recorded deletion request: is its unlearning distinguishable from retraining?

It trains the reference models the workspace's bank lacks, runs U-LiRA against them
(:func:`unbake.evaluation.audit.audit`), and records the verdict on the request, with a
``verified`` ledger entry. The bank's storage is the workspace's
(:mod:`unbake.workspace.references`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unbake.data import Samples
from unbake.evaluation.audit import AuditReport, audit, check_references
from unbake.evaluation.bank import Recipe, ReferenceBank, train_bank
from unbake.exceptions import DatasetError, WorkspaceError
from unbake.methods import METHODS
from unbake.workspace.catalog import utcnow
from unbake.workspace.references import (
    applied_request,
    load_references,
    record_audit,
    store_references,
)
from unbake.workspace.workspace import Workspace

__all__ = ["audit_request", "load_or_train_bank"]


def load_or_train_bank(
    ws: Workspace,
    pool: Samples,
    recipe: Recipe,
    references: int,
    *,
    backend: str = "local",
    workers: int = 1,
) -> ReferenceBank:
    """``references`` active reference models of ``recipe`` over ``pool``; trains the missing.

    Call with the workspace lock held.
    """
    key = recipe.key()
    bank, next_seed = load_references(ws, pool, key, references)
    missing = references - len(bank)
    if missing > 0:
        new_seeds = list(range(next_seed, next_seed + missing))
        fresh = train_bank(pool, recipe, seeds=new_seeds, backend=backend, workers=workers)
        store_references(ws, fresh, key)
        bank.membership = np.concatenate([bank.membership, fresh.membership])
        bank.models += fresh.models
        bank.seeds += new_seeds
        bank.names += fresh.names
    return bank


def audit_request(
    ws: Workspace,
    *,
    request_id: str | None = None,
    references: int = 8,
    model_id: str | None = None,
    seed: int = 0,
    permutations: int = 256,
    backend: str = "local",
    workers: int = 1,
) -> AuditReport:
    """Audit a recorded request's method against retraining, and record the result on it
    (default: the latest request; ``model_id``: the deployed model to score, by default
    the request's result)."""
    check_references(references)
    with ws.lock():
        req = applied_request(ws, request_id)
        if req["erased"]["sample_ids"]:
            raise WorkspaceError(
                f"The sample IDs of request {req['request_id']} were erased when their "
                "retention ended, and an audit needs them; audit a request before then "
                "(`unbake ledger retention --id-days N` keeps them longer)."
            )
        target = ws.load_model(model_id or req["model_after"])
        ds = ws.dataset()
        if tuple(target.input_shape) != tuple(ds.input_shape) or target.n_classes != ds.n_classes:
            raise DatasetError(
                f"The model takes inputs of shape {target.input_shape} with {target.n_classes} "
                f"classes, but dataset {ds.name!r} has {ds.input_shape} and {ds.n_classes}; "
                "audit a model trained on this workspace's dataset."
            )
        active, forgotten = ws.active_and_forgotten()
        forget = forgotten.subset(forgotten.mask_of(req["sample_ids"]))
        if len(forget) != len(req["sample_ids"]):
            raise DatasetError(
                f"Only {len(forget)} of the request's {len(req['sample_ids'])} samples are still "
                "in the dataset source; restore the source to audit this request."
            )
        recipe = Recipe.of(target)
        bank = load_or_train_bank(ws, active, recipe, references, backend=backend, workers=workers)
        report = audit(
            recipe=recipe,
            forget=forget,
            pool=active,
            bank=bank,
            unlearner=_unlearner(req),
            target=target,
            test=ds.test,
            seed=seed,
            permutations=permutations,
            backend=backend,
            workers=workers,
        )
        record = {**report.to_dict(), "model": model_id or req["model_after"], "at": utcnow()}
        record_audit(ws, req["request_id"], record, report.verdict)
    report.stats["request_id"] = req["request_id"]
    return report


def _unlearner(req: dict[str, Any]):
    """The request's method with its recorded parameters.

    Parameters were recorded as JSON (objects such as a feature extractor as their
    text), so a recorded string replaces a default only where the default is a string.
    """
    unlearner = METHODS.create(req["method"])
    defaults = unlearner.get_params()
    params = {
        k: v
        for k, v in (req.get("params") or {}).items()
        if k in defaults and (not isinstance(v, str) or isinstance(defaults[k], str))
    }
    unlearner.set_params(**params).validate()  # the catalog's record, checked as user input
    return unlearner
