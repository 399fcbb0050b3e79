"""Running methods against a workspace: train a model, stage and apply an unlearning, evaluate.

The workspace (:mod:`unbake.workspace`) stores and reconciles: the catalog, the
checkpoints, the ledger, and the primitives that record a trained model, an applied
request or a failure in one transaction. This module decides and runs: it trains, it
unlearns a request's samples and evaluates the result in memory
(:func:`stage_parts`), and hands the outcome to
:meth:`~unbake.workspace.Workspace.commit_staged`, which writes it. ``unbake train``,
``unbake forget``, ``unbake evaluate``, the worker
(:class:`~unbake.service.deletion.DeletionService`) and ``unbake clean`` all come here.

Every function takes an open :class:`~unbake.workspace.Workspace` and keeps its
guarantees: a change holds the workspace's exclusive lock, validates everything before
writing anything, and a request refused as invalid leaves no trace.

>>> import tempfile
>>> from unbake import TrainConfig, Workspace
>>> ws = Workspace.create(tempfile.mkdtemp() + "/ws", dataset="digits")
>>> _ = train(ws, model="logreg", config=TrainConfig.parse(epochs=1))
>>> forget(ws, ids=["digits-0000"], method="finetune", params={"epochs": 1}).n_samples
1
>>> [e["state"] for e in ws.ledger()]  # submitted, then applied at once
['received', 'queued', 'applying', 'applied']
>>> ws.close()
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from unbake.data import Samples
from unbake.data.samples import retain_classes_check
from unbake.evaluation import Evaluation, evaluate
from unbake.evaluation.forgetting_check import check_forgetting
from unbake.methods import UnlearnTask
from unbake.models import ModelSpec
from unbake.service.planner import DeletionRequest, check_retain, part_of, plan, select
from unbake.training import TrainConfig, fit, resolve_device
from unbake.training.adapter import persistable
from unbake.workspace.catalog import utcnow
from unbake.workspace.tuned_table import request_context
from unbake.workspace.workspace import (
    ApplyOutcome,
    RequestPart,
    RequestRecord,
    StagedApply,
    Ticket,
    Workspace,
    new_id,
    unbake_version,
)

__all__ = ["apply_now", "apply_parts", "evaluate_model", "forget", "stage_parts", "train"]


def train(
    ws: Workspace,
    *,
    model: str | ModelSpec | Callable[..., nn.Module] = "mlp",
    config: TrainConfig | None = None,
    seed: int = 0,
    strategy: str = "monolithic",
    strategy_params: dict[str, Any] | None = None,
    device=None,
) -> str:
    """Train a model on ``ws``'s active samples and record it; returns its model ID."""
    spec = ModelSpec.of(model)  # a module instance is not a factory: refused
    spec.to_dict()  # an in-memory factory that is not trusted cannot be saved: fail first
    if device is not None:
        resolve_device(device)  # an unknown or absent device: fail before the lock
    with ws.lock():
        active, _ = ws.active_and_forgotten()
        trained = fit(  # builds and validates the strategy against `active` first
            active,
            n_classes=ws.dataset().n_classes,
            model=spec,
            config=config or TrainConfig(),
            seed=seed,
            strategy=strategy,
            strategy_params=strategy_params,
            device=device,
        )
        return ws.record_trained(persistable(trained), active)


def forget(
    ws: Workspace,
    *,
    ids: Sequence[str] | None = None,
    subject: str | None = None,
    label: str | int | None = None,
    method: str | None = None,
    params: dict[str, Any] | None = None,
    model_id: str | None = None,
    seed: int | None = None,
    device=None,
    idempotency_key: str | None = None,
    reason: str | None = None,
    purpose: str | None = None,
    tuned: bool = True,
    allow_one_class: bool = False,
) -> RequestRecord:
    """File and apply a deletion request; every model that saw the data is purged.

    Exactly one of ``ids``, ``subject`` and ``label`` (a class name or index; an ``int``
    is always an index; the request records the class by name). ``method`` defaults to
    the model's own exact family (:func:`~unbake.service.planner.default_method`:
    ``sisa`` for a SISA model, ``certified`` for a certified one, else ``retrain``),
    as for a request the worker applies; the same planner
    (:mod:`unbake.service.planner`) makes every decision on both paths.

    It is *submit, then apply now*, under the workspace's lock: the ledger records
    ``received → queued → applying → applied`` (as for a queued request), all in the
    transaction that commits the result, so a request refused as invalid at any point
    (unknown or already forgotten IDs are named) leaves no trace. An unexpected failure
    while unlearning records ``failed`` with the reason (in a transaction of its own) and
    changes nothing else. With an ``idempotency_key`` already used for the same request,
    the first request's record is returned and nothing is unlearned again (a failed one
    is retried under its request ID). ``reason`` (free text, personal data) is stored
    sealed and shredded after its retention (:mod:`unbake.workspace.personal`); the
    ledger holds its keyed hash. ``purpose`` (a word such as ``"cleaning"``, never
    personal) is recorded in the clear in the request's info, as ``reason``.

    Selected validation and test rows are marked forgotten in the same transaction; a
    request that selects only such rows is recorded with method ``"none"`` and changes
    and purges no model (none was trained on them). With ``tuned`` (the default) the
    method starts from its tuned defaults for the request's scenario
    (:mod:`unbake.methods.tuned`) where their study's dataset and architecture match
    this workspace's (its own table from ``unbake tune --workspace`` first), under the
    given ``params``; the record's info says which defaults were used and why
    (``defaults``) and, for tuned ones, the study they came from (``tuned_defaults``).

    A request that would leave the retain set with fewer than two classes is refused
    (nothing is written) unless ``allow_one_class``.
    """
    request = DeletionRequest.of(
        sample_ids=list(ids) if ids else None,
        subject=subject,
        class_label=label,
        method=method,
        params=params,
        model_id=model_id,
        seed=seed,
        device=None if device is None else str(device),
        idempotency_key=idempotency_key,
        reason=reason,
        purpose=purpose,
        tuned=tuned,
        allow_one_class=allow_one_class,
    )
    return apply_now(ws, request)


def apply_now(ws: Workspace, request: DeletionRequest) -> RequestRecord:
    """File ``request`` and apply it at once under the workspace's lock (:func:`forget`)."""
    selector = request.selector(ws)
    ticket = Ticket(new_id("req"), utcnow(), selector.to_dict(ws.subject_hmac))
    key = request.key(ws)
    with ws.lock():
        if key is not None:
            ticket.key_hash, ticket.fingerprint = key
            done = ws.idempotent(ticket)
            if done is not None:
                return done
        model = (
            ws.model_store.get(request.model_id) if request.model_id else ws.model_store.current()
        )
        context = request_context(
            ws, label=request.class_label, model_id=request.model_id, tuned=request.tuned
        )
        the_plan = plan(
            request, strategy=model["strategy"] if model is not None else "", context=context
        )
        unlearner = the_plan.unlearner()
        ticket.deadline = ws.request_store.deadline_for(ticket.received_at)
        active, _ = ws.active_and_forgotten()
        chosen = select(ws, selector, active, reveal=True)
        if isinstance(chosen, str):  # select() raises for an operator's request instead
            raise RuntimeError(f"an operator's request was rejected: {chosen}")
        # As the queue does: the IDs named, or the subject's at receipt (not a class's).
        ids = chosen if selector.label is None else ()
        ticket.personal = ws.request_store.personal_hashes(request.reason, ids)
        if request.method is not None:
            ticket.queued = {"method": request.method}
        part = part_of(ticket, chosen, ws.sample_store.split_of(), reason=request.reason)
        outcome = apply_parts(
            ws,
            [part],
            unlearner,
            active,
            model_id=request.model_id,
            seed=request.seed,
            device=request.device,
            reason=request.purpose,
            info=the_plan.info() or None,
            allow_one_class=request.allow_one_class,
        )
    return outcome.record(part)


def apply_parts(
    ws: Workspace,
    parts: Sequence[RequestPart],
    unlearner,
    active: Samples,
    *,
    on_commit: Callable[[Any], None] | None = None,
    **stage: Any,
) -> ApplyOutcome:
    """Unlearn the union of ``parts``' training samples from one model in one run, and
    record each part as its own applied request (under the caller's lock).

    ``active`` is the current active training set. Each part's training IDs must be
    active and no ID may be in two parts. A new model is written, and one transaction
    inserts it, purges every model and reference that saw the samples, records every
    part and calls ``on_commit(cur)``; then the stale files go. Parts with no training
    sample at all (only held-out rows) change no model. An unexpected failure records
    ``failed`` for every part; an :class:`UnbakeError` (a request refused as invalid)
    propagates without a trace. It is :func:`stage_parts` (which takes the keyword
    arguments ``stage``: ``model_id``, ``seed``, ``device``, ``reason``, ``info``,
    ``allow_one_class``) then
    :meth:`Workspace.commit_staged <unbake.workspace.Workspace.commit_staged>`.
    """
    staged = stage_parts(ws, parts, unlearner, active, **stage)
    return ws.commit_staged(staged, on_commit=on_commit)


def stage_parts(
    ws: Workspace,
    parts: Sequence[RequestPart],
    unlearner,
    active: Samples,
    *,
    model_id: str | None = None,
    seed: int | None = None,
    device=None,
    reason: str | None = None,
    info: dict[str, Any] | None = None,
    record_failure: bool = True,
    allow_one_class: bool = False,
) -> StagedApply:
    """The first half of :func:`apply_parts`: load the model, unlearn the union of
    ``parts``' training samples and evaluate the result, in memory; nothing is written
    (but ``failed`` for every part on an unexpected failure, unless not
    ``record_failure``: the policy tries the next method instead). A retain set of fewer
    than two classes is refused unless ``allow_one_class``."""
    sample_ids = [i for p in parts for i in p.sample_ids]
    held_ids = [i for p in parts for i in p.held_ids]
    tickets = [p.ticket for p in parts]
    for part in parts:
        part.reason = part.reason or reason
    if not sample_ids:
        return StagedApply(
            list(parts), unlearner.name, unlearner.exact, model_id, None, None, None, 0, {}
        )
    row = ws.model_row(model_id)
    original = ws.load_model(row["model_id"], device=device)
    forget, retain = active.split(sample_ids)
    method = unlearner.name
    check_retain(len(forget), len(retain), unlearner)
    retain_classes_check(retain, ws.dataset().classes, allow_one_class=allow_one_class)
    _, test = ws.held_out(without=held_ids)
    started = utcnow()
    for ticket in tickets:
        ticket.started_at = started
    recorded = (
        ws.failure_recorded(tickets, row, method) if record_failure else contextlib.nullcontext()
    )
    with recorded:
        result = unlearner.unlearn(UnlearnTask(original, forget, retain, device=device), seed=seed)
        evaluation = evaluate(result.model, forget, retain, test)
        scenario = "class" if any(t.selector.get("class") is not None for t in tickets) else ""
        check = check_forgetting(
            unlearner,
            original,
            result.model,
            forget,
            test,
            scenario=scenario,
            workspace=str(ws.root),
        )
    if reason:
        result.info["reason"] = reason
    result.info.update(info or {})
    if check is not None:
        result.info["forgetting_check"] = check
    if len(parts) > 1:
        result.info["batch"] = [t.request_id for t in tickets]
    provenance = {
        "seed": original.seed if seed is None else int(seed),
        "device": str(resolve_device(device)),
        "unbake_version": unbake_version(),
    }
    return StagedApply(
        list(parts),
        method,
        unlearner.exact,
        model_id,
        row,
        result,
        evaluation,
        len(retain),
        provenance,
    )


def evaluate_model(ws: Workspace, model_id: str | None = None) -> Evaluation:
    """FA (on every forgotten training sample still in the source), RA, TA (on the test
    rows not forgotten) and MIA of a model of ``ws`` (default: the newest)."""
    model = ws.load_model(model_id)
    active, forgotten = ws.active_and_forgotten()
    _, test = ws.held_out()  # forgotten test rows are never read
    return evaluate(model, forgotten, active, test)
