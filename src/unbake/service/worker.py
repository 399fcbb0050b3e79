"""The worker: recover what a dead worker left, take a batch of queued requests, apply it.

:meth:`Worker.apply_pending` is one step, under the workspace's lock: it first recovers
(a request left ``applying`` by a worker that died goes back to ``queued``, or ``failed``
once it has outlived ``[retry] max_recoveries`` workers; stray checkpoint files are
swept), then takes one batch of queued requests that are due, groups them by their
:class:`~unbake.service.planner.Plan`, and unlearns the union of each group's IDs in one
run, so a SISA model retrains each affected shard once per batch. A run that raises an
unexpected error goes back to the queue with a backoff (``[retry]``), then ``failed``.
:func:`drain` is the loop ``unbake worker`` runs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from unbake.data import Samples
from unbake.exceptions import InvalidParameterError, UnbakeError
from unbake.methods import METHODS
from unbake.service.apply import apply_parts, stage_parts
from unbake.service.planner import GONE_SINCE, DeletionRequest, Plan, part_of, plan, select
from unbake.service.policy import ModelInfo, Policy, Retry, load_policy
from unbake.service.policy_executor import Outcome, PolicyFailedError, run_policy
from unbake.workspace.catalog import Catalog, utcnow
from unbake.workspace.request_store import RequestStore
from unbake.workspace.tuned_table import request_context
from unbake.workspace.workspace import (
    ForgetSelector,
    RequestPart,
    Ticket,
    Workspace,
    failure_reason,
)

if TYPE_CHECKING:
    from unbake.service.deletion import DeletionService

__all__ = ["DEFAULT_BATCH", "DEFAULT_WINDOW", "SHRED_EVERY", "Worker", "as_policy", "drain"]

#: The worker's batch window when neither the caller nor a policy gives one.
DEFAULT_BATCH = 32
DEFAULT_WINDOW = 5.0
#: How often an idle worker (``drain`` with ``certify``) erases personal data whose
#: retention has ended (seconds); a busy one does it after each batch.
SHRED_EVERY = 60.0


def as_policy(policy: Policy | str | os.PathLike | None) -> Policy | None:
    """A :class:`Policy`, read and validated from a path if given one."""
    if policy is None or isinstance(policy, Policy):
        return policy
    return load_policy(os.fspath(policy))


def _retry_of(policy: Policy | None) -> Retry:
    """The retry rules of ``policy`` (its ``[retry]`` table), else the defaults."""
    return policy.retry if policy is not None else Retry()


def _not_before(row: Any) -> str:
    """When a queued request may run: after its retry's backoff ('' : now)."""
    payload = json.loads(row["last_payload"]) if row["last_payload"] else {}
    return str(payload.get("not_before", "")) if isinstance(payload, dict) else ""


class Worker:
    """The worker's half of a :class:`~unbake.service.deletion.DeletionService`: it applies
    the queued requests of the service's workspace under the service's policy."""

    def __init__(self, service: DeletionService) -> None:
        self.service = service

    @property
    def workspace(self) -> Workspace:
        return self.service.workspace

    @property
    def policy(self) -> Policy | None:
        return self.service.policy

    @property
    def _catalog(self) -> Catalog:
        return self.workspace.catalog

    @property
    def _requests(self) -> RequestStore:
        return self.workspace.request_store

    def backlog(self) -> tuple[int, bool]:
        """What the worker has to do now: the queued requests that are due (not waiting
        out a retry's backoff), and whether any request is left ``applying`` in the queue
        (by a worker that died; the live worker never sees its own, being single-threaded)."""
        rows = self._queue_rows()
        now = utcnow()
        due = sum(1 for r in rows if r["state"] == "queued" and _not_before(r) <= now)
        return due, any(r["state"] == "applying" for r in rows)

    def apply_pending(
        self, *, max_batch: int | None = None, policy: Policy | str | os.PathLike | None = None
    ) -> list[str]:
        """The worker's step: recover, take one batch of queued requests, apply it.

        Returns the IDs of the requests it finished (applied, rejected or failed).
        A request that names its own method is applied with it. The others go under
        ``policy`` (default: the service's): its steps are tried in order, each staged
        in memory and accepted by its thresholds, and only the accepted one (or the exact
        fallback) is written; without a policy, ``sisa`` for a SISA model, else ``retrain``.
        """
        policy = as_policy(policy) if policy is not None else self.policy
        if max_batch is not None and (
            isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1
        ):
            raise InvalidParameterError(
                f"max_batch must be a whole number >= 1; got {max_batch!r}."
            )
        ws = self.workspace
        retry = _retry_of(policy)
        with ws.lock():
            self.recover(retry)
            rows = self._queued(max_batch)
            if not rows:
                return []
            done: list[str] = []
            for group in self._groups(rows, policy):
                done += self._apply_group(group, policy, retry)
            return done

    def recover(self, retry: Retry | None = None) -> list[str]:
        """Put every request a dead worker left ``applying`` back in the queue (in one
        transaction), drop queue rows of finished requests, and sweep stray checkpoint
        files. Call under the workspace lock; returns the requests put back.

        A request that has outlived ``retry.max_recoveries`` workers (default: the
        policy's, else :class:`Retry`'s) is ``failed`` instead, with that reason: whatever
        it does kills the worker, and it must not hold the queue forever."""
        ws = self.workspace
        retry = retry or _retry_of(self.policy)
        stuck = [r["request_id"] for r in self._queue_rows() if r["state"] == "applying"]
        with self._catalog.transaction() as cur:
            for rid in stuck:
                recoveries = 1 + self._count_entries(rid, "queued", "recovered")
                if recoveries > retry.max_recoveries:
                    reason = (
                        f"the worker stopped while applying it {recoveries} times (at most "
                        f"{retry.max_recoveries}: [retry] max_recoveries); see the worker's log "
                        "for what killed it, then file the request again"
                    )
                    self._requests.append(cur, rid, "failed", {"reason": reason}, utcnow())
                    continue
                payload = {
                    "recovered": True,
                    "recoveries": recoveries,
                    "reason": "the worker stopped while applying it",
                }
                self._requests.append(cur, rid, "queued", payload, utcnow())
            self._requests.drop_finished(cur)
        ws.sweep()
        return stuck

    def _queue_rows(self) -> list[Any]:
        """Every queue row with its request's latest ledger state and that entry's payload,
        in order of arrival."""
        return self._requests.queue_rows()

    def _count_entries(self, request_id: str, state: str, flag: str) -> int:
        """How many of ``request_id``'s ``state`` entries carry ``flag`` in their payload."""
        return sum(
            1
            for e in self._catalog.request_entries(request_id)
            if e["state"] == state and e["payload"].get(flag)
        )

    def _queued(self, limit: int | None, now: str | None = None) -> list[dict[str, Any]]:
        """Queued requests that are due (not waiting out a retry's backoff), oldest first."""
        now = now or utcnow()
        out = []
        for r in self._queue_rows():
            if r["state"] != "queued" or _not_before(r) > now:
                continue
            row = self._catalog.open_personal(dict(r))
            del row["last_payload"]
            for key in ("selector", "params"):
                row[key] = self._catalog.parse_json(row[key], f"queued request's {key}")
            out.append(row)
            if limit is not None and len(out) >= limit:
                break
        return out

    @staticmethod
    def _request_of(row: dict[str, Any]) -> DeletionRequest:
        """A queued row as the request it was filed as (what the planner reads of it)."""
        return DeletionRequest(
            sample_ids=tuple(row["sample_ids"] or ()) if row["class_label"] is None else None,
            class_label=row["class_label"],
            method=row["method"],
            params=row["params"] if row["method"] else {},
            seed=row["seed"],
            device=row["device"],
            model_id=row["model_id"],
        )

    def _groups(
        self, rows: list[dict[str, Any]], policy: Policy | None
    ) -> list[list[dict[str, Any]]]:
        """The batch split into runs that share a plan (:func:`~unbake.service.planner.plan`),
        in order of first arrival."""
        latest = self.workspace.model_store.current()
        strategy = latest["strategy"] if latest is not None else ""
        groups: dict[Plan, list[dict[str, Any]]] = {}
        for r in rows:
            try:
                context = request_context(
                    self.workspace, label=r["class_label"], model_id=r["model_id"]
                )
                r["plan"] = plan(
                    self._request_of(r), strategy=strategy, policy=policy, context=context
                )
            except UnbakeError as exc:  # a queued row no submitter could have filed
                self._finish([(r["request_id"], str(exc))], "rejected")
                continue
            groups.setdefault(r["plan"], []).append(r)
        return list(groups.values())

    def _parts(
        self, rows: list[dict[str, Any]], active: Samples
    ) -> tuple[list[RequestPart], list[tuple[str, str]]]:
        """The queued ``rows``' shares of one run (:func:`~unbake.service.planner.select`),
        and (request ID, reason) of those that select nothing. An ID two requests name
        goes to the first; the second is not rejected for it."""
        ws = self.workspace
        status = ws.sample_store.status()
        split_of = ws.sample_store.split_of()
        parts: list[RequestPart] = []
        claimed: set[str] = set()
        rejected: list[tuple[str, str]] = []
        for r in rows:
            chosen = select(
                ws,
                ForgetSelector(label=r["class_label"]),
                active,
                reveal=False,
                named=r["sample_ids"],
                received_at=r["received_at"],
                status=status,
            )
            if isinstance(chosen, str):
                rejected.append((r["request_id"], chosen))
                continue
            ids = [i for i in chosen if i not in claimed]
            if not ids and not any(i in claimed for i in r["sample_ids"]):
                rejected.append((r["request_id"], GONE_SINCE))
                continue
            claimed.update(ids)
            ticket = Ticket(r["request_id"], r["received_at"], r["selector"], state="applying")
            parts.append(
                part_of(ticket, ids, split_of, reason=r["reason"], submitted_by=r["submitted_by"])
            )
        return parts, rejected

    def _apply_group(
        self, rows: list[dict[str, Any]], policy: Policy | None, retry: Retry
    ) -> list[str]:
        """Apply requests that share a plan in one unlearning run (under the lock);
        returns the IDs of those it finished (rejected, applied or failed): not those put
        back in the queue to be retried (``retry``)."""
        ws = self.workspace
        the_plan: Plan = rows[0]["plan"]
        method, seed, device, model_id = (
            the_plan.method,
            the_plan.seed,
            the_plan.device,
            the_plan.model_id,
        )
        active, _ = ws.active_and_forgotten()
        parts, rejected = self._parts(rows, active)
        if rejected:
            self._finish(rejected, "rejected")
        if not parts:
            return [rid for rid, _ in rejected]
        request_ids = [p.ticket.request_id for p in parts]
        row = ws.catalog.latest_active_model() if model_id is None else ws.catalog.model(model_id)
        model_before = row["model_id"] if row is not None else ""
        with self._catalog.transaction() as cur:
            for part in parts:
                payload = {
                    "method": method or "policy",
                    "model_before": model_before,
                    "batch": len(parts),
                }
                self._requests.append(cur, part.ticket.request_id, "applying", payload, utcnow())

        def dequeue(cur) -> None:
            self._requests.dequeue(cur, request_ids)

        try:
            if method is None:
                if policy is None:  # plan() leaves the method open only under a policy
                    raise RuntimeError("a plan without a method, and no policy to decide it")
                self._apply_policy(parts, active, policy, row, seed, device, dequeue)
            else:
                info = the_plan.info()
                if policy is not None:
                    info["policy"] = {"bypassed": "the request names its own method"}
                apply_parts(
                    ws,
                    parts,
                    the_plan.unlearner(),
                    active,
                    model_id=model_id,
                    seed=seed,
                    device=device,
                    info=info or None,
                    on_commit=dequeue,
                )
        except Exception as exc:
            retried = self._failed_run(parts, exc, model_before, method or "policy", retry)
            request_ids = [i for i in request_ids if i not in retried]
        return [rid for rid, _ in rejected] + request_ids

    def _failed_run(
        self,
        parts: list[RequestPart],
        exc: Exception,
        model_before: str,
        method: str,
        retry: Retry,
    ) -> set[str]:
        """A run of ``parts`` raised ``exc``: each request still ``applying`` goes back to
        the queue to be retried after a backoff, if the error was unexpected (a rerun may
        succeed) and it has runs left under ``retry``; the others are ``failed`` with the
        reason and leave the queue. Returns the IDs put back."""
        ws = self.workspace
        applying = [
            p.ticket for p in parts if self._requests.state(p.ticket.request_id) == "applying"
        ]
        again: dict[str, int] = {}
        cause = exc.__cause__ if isinstance(exc, PolicyFailedError) else exc  # the fallback's
        if not isinstance(cause, UnbakeError):  # a refusal would only be refused again
            for ticket in applying:
                runs = 1 + self._count_entries(ticket.request_id, "queued", "retry")
                if runs < retry.max_attempts:
                    again[ticket.request_id] = runs
        give_up = [t for t in applying if t.request_id not in again]
        details = {"policy": exc.result.to_dict()} if isinstance(exc, PolicyFailedError) else {}
        if give_up:
            ws.record_failure(give_up, model_before, method, exc, details or None)
        now = datetime.now(timezone.utc)
        with self._catalog.transaction() as cur:
            for rid, runs in again.items():
                wait = retry.delay(runs)
                payload = {
                    "retry": runs,
                    "error": failure_reason(exc),
                    "not_before": (now + timedelta(seconds=wait)).isoformat(
                        timespec="microseconds"
                    ),
                }
                self._requests.append(cur, rid, "queued", payload, utcnow())
            self._requests.dequeue(
                cur, [p.ticket.request_id for p in parts if p.ticket.request_id not in again]
            )
        return set(again)

    def _apply_policy(
        self, parts: list[RequestPart], active, policy: Policy, row, seed, device, on_commit
    ) -> None:
        """Apply ``parts`` under ``policy``: each step is staged in memory (nothing is
        written) and audited by its staged evaluation; only the accepted step, or the
        exact fallback, is committed. The policy's result (every attempt, its figures and
        reasons) goes into each request's info and its ``applied`` ledger entry."""
        ws = self.workspace
        if row is None:  # no model: the workspace's own error, as without a policy
            ws.model_row(None)
        spec = self._catalog.parse_json(row["spec"], f"model {row['model_id']}'s spec")
        model = ModelInfo(spec.get("name", row["description"]), row["strategy"])

        def stage(unlearner, *, record_failure: bool):
            return stage_parts(
                ws,
                parts,
                unlearner,
                active,
                model_id=row["model_id"],
                seed=seed,
                device=device,
                record_failure=record_failure,
            )

        if not any(p.sample_ids for p in parts):  # held-out rows only: no model changes
            fallback = policy.section_for(model)[1].fallback
            staged = stage(METHODS.create(fallback), record_failure=True)
            ws.commit_staged(staged, applied={"method": "none"}, on_commit=on_commit)
            return
        result = run_policy(
            policy,
            model,
            try_method=lambda step: Outcome(stage(step.create(), record_failure=False)),
            audit=lambda step, outcome: outcome.value.evaluation.to_dict(),
        )
        if result.accepted is None or result.outcome is None:  # run_policy raises instead
            raise RuntimeError("the policy accepted no step and raised nothing")
        record = {"policy": result.to_dict()}
        applied = {"method": result.accepted.method, **record}
        ws.commit_staged(result.outcome.value, info=record, applied=applied, on_commit=on_commit)

    def _finish(self, outcomes: list[tuple[str, str]], state: str) -> None:
        """Record ``state`` (rejected) with each request's reason and dequeue them."""
        with self._catalog.transaction() as cur:
            for rid, reason in outcomes:
                self._requests.append(cur, rid, state, {"reason": reason}, utcnow())
                self._requests.dequeue(cur, [rid])


def drain(
    service: DeletionService,
    *,
    batch: int | None = None,
    window: float | None = None,
    once: bool,
    policy: Policy | str | os.PathLike | None = None,
    certify: bool = False,
    poll: float = 0.2,
    stop: threading.Event | None = None,
) -> int:
    """Run the worker loop: apply a batch when ``batch`` requests wait or the oldest has
    waited ``window`` seconds, and at once whenever a request is left ``applying`` by a
    worker that died (also at start: nothing a killed worker left waits for a new request).
    A failed run is retried under the policy's ``[retry]`` rules (:class:`Retry`).
    ``once``: apply everything queued now (waiting out retries' backoff), then return.
    ``policy`` (default: the service's) decides the methods, and its ``[batch]`` window
    stands in for a ``batch`` or ``window`` not given (else 32 requests, 5 seconds).
    ``certify``: sign a certificate for every applied request after each batch (and, first,
    for any a killed worker applied but did not certify), then erase the personal data
    whose retention has ended (also every ``SHRED_EVERY`` seconds while idle).
    Returns the number of requests finished."""
    policy = as_policy(policy) if policy is not None else service.policy
    if batch is None:
        batch = policy.batch.max_requests if policy is not None else DEFAULT_BATCH
    if window is None:
        window = policy.batch.max_seconds if policy is not None else DEFAULT_WINDOW

    def step() -> int:
        done = len(service.apply_pending(max_batch=batch, policy=policy))
        if certify:
            service.certify_pending()
        return done

    if certify:
        service.certify_pending()
    finished = 0
    first_seen: float | None = None
    shredded = time.monotonic()
    while stop is None or not stop.is_set():
        depth, orphaned = service.worker_backlog()
        if orphaned:  # a worker died applying these: resume them now, whatever else waits
            finished += step()
            first_seen = None
            continue
        if once:
            if depth == 0:
                if not service.queue_depth():
                    return finished
                time.sleep(poll)  # only retries waiting out their backoff
                continue
            finished += step()
            continue
        if depth == 0:
            first_seen = None
            if certify and time.monotonic() - shredded >= SHRED_EVERY:
                service.shred_due()  # a retention that ends while the queue is empty
                shredded = time.monotonic()
            time.sleep(poll)
            continue
        first_seen = first_seen or time.monotonic()
        if depth >= batch or time.monotonic() - first_seen >= window:
            finished += step()
            first_seen = None
        else:
            time.sleep(poll)
    return finished
