"""The deletion service: file requests durably, read their state, and apply them in batches.

One :class:`DeletionService` is shared by every thread of a process (the CLI, the
REST server, the worker). ``submit`` checks a request's form (whether its samples exist
is the worker's to find: it rejects a request whose samples are unknown or already
forgotten), then hands it to a writer thread that commits every request waiting at that
moment in one transaction (group commit) and wakes each caller once its request is
durable: the ledger holds ``received`` and ``queued`` for it and the ``queue`` table what
the worker needs. :meth:`DeletionService.apply_pending` is the worker's step: under the workspace's
lock it first recovers (a request left ``applying`` by a worker that died goes back to
``queued``; stray checkpoint files are swept), then takes one batch of queued requests,
and unlearns the union of the IDs of the requests that share a plan in one run, so a
SISA model retrains each affected shard once per batch. Each request's ``applied`` entry,
its request row, the new model and the purge of every model that saw its data commit in
one transaction, so a crash at any point applies each request exactly once.

>>> import tempfile
>>> from unbake import TrainConfig, Workspace
>>> root = tempfile.mkdtemp() + "/ws"
>>> Workspace.create(root, dataset="digits").close()
>>> svc = DeletionService(root)
>>> _ = svc.train(model="logreg", config=TrainConfig.parse(epochs=1))
>>> sub = svc.submit(sample_ids=["digits-0000"])
>>> sub.state, svc.queue_depth()
('queued', 1)
>>> svc.apply_pending() == [sub.request_id], svc.request(sub.request_id)["state"]
(True, 'applied')
>>> again = svc.submit(sample_ids=["digits-0000"])  # forgotten now: accepted all the same
>>> svc.apply_pending() == [again.request_id], svc.request(again.request_id)["state"]
(True, 'rejected')
>>> svc.close()
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from unbake.exceptions import (
    InvalidParameterError,
    NotFoundError,
    UnbakeError,
)
from unbake.service.apply import forget, train
from unbake.service.planner import (
    DeletionRequest,
    deadline_days,
)
from unbake.service.policy import Policy, Retry
from unbake.service.worker import DEFAULT_BATCH, DEFAULT_WINDOW, Worker, as_policy, drain
from unbake.training import TrainedModel
from unbake.workspace import ledger
from unbake.workspace.catalog import Catalog, utcnow
from unbake.workspace.request_store import QueuedRequest, RequestStore
from unbake.workspace.workspace import (
    STUCK_AFTER,
    RequestRecord,
    Workspace,
    new_id,
)

__all__ = ["DEFAULT_BATCH", "DEFAULT_WINDOW", "DeletionService", "Submitted", "as_policy", "drain"]


#: The most requests one group commit writes in one transaction.
GROUP_LIMIT = 1024


@dataclass(frozen=True)
class Submitted:
    """What :meth:`DeletionService.submit` answers."""

    request_id: str
    state: str  # "queued" normally; the existing request's state when duplicate
    duplicate: bool  # True when the idempotency key was seen before (same request returned)


@dataclass
class _Job:
    """A validated request waiting for the writer thread: the request, what the ledger
    records of its selector, the IDs it names (a subject's: those it has now) and its
    class by name."""

    request: DeletionRequest
    selector: dict[str, Any]
    sample_ids: list[str]
    class_label: str | None
    key: tuple[str, str] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: Submitted | None = None
    error: BaseException | None = None


class _GroupCommit:
    """A writer thread that commits every job waiting at once in one transaction."""

    def __init__(self, write) -> None:
        self._write = write
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def submit(self, job: _Job) -> Submitted:
        with self._start:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="unbake-group-commit", daemon=True
                )
                self._thread.start()
        self._jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        if job.result is None:  # the writer sets one or the other before waking us
            raise RuntimeError("the group-commit writer woke a request with no outcome")
        return job.result

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch = [job]
            with contextlib.suppress(queue.Empty):
                while len(batch) < GROUP_LIMIT:
                    more = self._jobs.get_nowait()
                    if more is None:
                        self._jobs.put(None)  # finish this batch, then stop
                        break
                    batch.append(more)
            try:
                self._write(batch)
            except BaseException as exc:  # the transaction failed: every caller hears of it
                for j in batch:
                    if j.error is None:
                        j.error = exc
                        j.result = None
            for j in batch:
                j.done.set()

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None


class DeletionService:
    """Deletion requests of one workspace: submit, read, and apply (thread-safe).

    ``root`` is the workspace folder, or a :class:`Workspace` the caller has open (one
    created from in-memory data, say): that one stays the caller's to close, and keeps
    its own read-only mode.
    """

    def __init__(
        self,
        root: str | os.PathLike | Workspace,
        *,
        read_only: bool = False,
        policy: Policy | str | os.PathLike | None = None,
    ) -> None:
        #: The deletion policy (:mod:`unbake.service.policy`): the worker's method order,
        #: batch window, and the deadline of requests filed here; ``None``: the defaults.
        self.policy = as_policy(policy)
        self._owns_workspace = not isinstance(root, Workspace)
        self.workspace = (
            root if isinstance(root, Workspace) else Workspace.open(root, read_only=read_only)
        )
        self.root = self.workspace.root
        self._writer = _GroupCommit(self._write_jobs)
        #: The worker's half: it applies the queued requests (:mod:`unbake.service.worker`).
        self.worker = Worker(self)

    def close(self) -> None:
        self._writer.close()
        if self._owns_workspace:
            self.workspace.close()

    def __enter__(self) -> DeletionService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _catalog(self) -> Catalog:
        return self.workspace.catalog

    @property
    def _requests(self) -> RequestStore:
        return self.workspace.request_store

    # --- submitting ----------------------------------------------------------------

    def submit(
        self,
        *,
        sample_ids: Sequence[str] | None = None,
        subject: str | None = None,
        class_label: str | int | None = None,
        reason: str = "erasure",
        idempotency_key: str | None = None,
        submitted_by: str | None = None,
        method: str | None = None,
        params: dict[str, Any] | None = None,
        seed: int | None = None,
        device: str | None = None,
        model_id: str | None = None,
    ) -> Submitted:
        """File a request; returns once it is durable (``received`` and ``queued``).

        Exactly one of ``sample_ids``, ``subject`` and ``class_label``. Input that is
        wrong whatever the data holds (no selector or two, an empty ID list, bad types,
        an unknown class or method, bad method parameters, a reused idempotency key) is
        refused with a typed :class:`UnbakeError` and writes nothing. Whether the IDs or
        the subject are in the data is not checked here: a request naming IDs that are
        unknown or already forgotten, or a subject with no active sample, is accepted
        the same way as any other and rejected by the worker, with its reason on that
        request only (so a submitter cannot learn who is, or was, in the data).
        ``method``/``params``/``seed``/``device``/``model_id`` are optional (by
        default the worker picks the method: the policy's, else ``sisa`` for a SISA
        model and ``retrain`` otherwise). With an ``idempotency_key`` seen before for
        the same request, that request is returned (``duplicate=True``).
        """
        request = DeletionRequest.of(
            check=False,
            sample_ids=sample_ids,
            subject=subject,
            class_label=class_label,
            reason=reason,
            idempotency_key=idempotency_key,
            submitted_by=submitted_by,
            method=method,
            params=params,
            seed=seed,
            device=device,
            model_id=model_id,
        )
        key = request.key(self.workspace)
        if key is not None:
            known = self._requests.known_key(*key)  # a retry: no need to validate again
            if known is not None:
                return Submitted(known.request_id, known.state, True)
        job = self._validate(request)
        job.key = key
        return self._writer.submit(job)

    def _validate(self, request: DeletionRequest) -> _Job:
        """``request`` checked (:meth:`DeletionRequest.check`), as the writer's job; a
        refused one raises a typed :class:`UnbakeError`. Whether its IDs exist is the
        worker's to find (:func:`~unbake.service.planner.select`): a refusal here would
        tell any submitter who is, or was, in the data."""
        ws = self.workspace
        ws.check_writable()
        request.check()
        if request.model_id is not None:
            ws.model_row(request.model_id)
        if request.sample_ids is not None:
            ids = list(request.sample_ids)
        elif request.subject is not None:
            # None for a stranger and for a subject already forgotten alike; the worker
            # rejects the request then.
            ids = ws.sample_store.of_subject(request.subject)
        else:
            ids = []
        selector = request.selector(ws)
        label = None if selector.label is None else str(selector.label)  # the class's name
        return _Job(request, selector.to_dict(ws.subject_hmac), ids, label)

    def _write_jobs(self, jobs: list[_Job]) -> None:
        """The writer thread's transaction: each job in a savepoint of its own, so one
        refused job (an idempotency key reused for another request) spares the rest."""
        with self._catalog.transaction() as cur:
            for job in jobs:
                try:
                    with self._catalog.savepoint(cur):
                        job.result = self._write_job(cur, job)
                except UnbakeError as exc:
                    job.error = exc

    def _write_job(self, cur, job: _Job) -> Submitted:
        if job.key is not None:
            known = self._requests.known_key(*job.key, cur)
            if known is not None:
                return Submitted(known.request_id, known.state, True)
        r = job.request
        request = QueuedRequest(
            new_id("req"),
            utcnow(),
            job.selector,
            job.sample_ids,
            job.class_label,
            r.method,
            dict(r.params),
            r.seed,
            r.device,
            r.model_id,
            r.reason,
            r.submitted_by,
        )
        received = {
            "selector": job.selector,
            "deadline": self._requests.deadline_for(
                request.received_at, deadline_days(self.policy)
            ),
            **self._requests.personal_hashes(r.reason, job.sample_ids),
        }
        if r.submitted_by is not None:
            received["submitted_by"] = r.submitted_by
        self._requests.enqueue(cur, request, received, job.key)
        return Submitted(request.request_id, "queued", False)

    # --- reading -------------------------------------------------------------------

    def request(self, request_id: str) -> dict[str, Any]:
        """A request's state, its received details, models and ledger entries (oldest first)."""
        entries = self._catalog.request_entries(request_id)
        if not entries:
            raise NotFoundError(
                f"No request {request_id!r} in this workspace; list them with `unbake ledger show`."
            )
        return self._summary(request_id, entries)

    def _summary(self, request_id: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
        first = entries[0]["payload"]
        out: dict[str, Any] = {
            "request_id": request_id,
            "state": entries[-1]["state"],
            "received_at": entries[0]["timestamp"],
            "deadline": first.get("deadline"),
            "reason": first.get("reason"),  # only a request filed before v9 has it here
            "erased": {"reason": False, "sample_ids": False},
            "submitted_by": first.get("submitted_by"),
            "selector": first.get("selector"),
            "model_before": None,
            "model_after": None,
            "method": None,
        }
        for e in entries:
            payload = e["payload"]
            if e["state"] == "applying":
                out["method"] = payload.get("method")
                out["model_before"] = payload.get("model_before")
            elif e["state"] == "applied":
                out["model_after"] = payload.get("model_after")
                out["method"] = payload.get("method", out["method"])  # the policy's choice
                if payload.get("policy"):
                    out["policy"] = payload["policy"]
            elif e["state"] == "queued" and payload.get("method"):
                out["method"] = payload["method"]
        row = self._requests.personal_row(request_id)
        if row is not None:  # the request row once applied, the queue row before
            out["reason"] = row["reason"] if out["reason"] is None else out["reason"]
            out["erased"] = row["erased"]
            out["submitted_by"] = out["submitted_by"] or row["submitted_by"]
        out["entries"] = entries
        return out

    def requests(
        self, *, state: str | None = None, submitted_by: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Requests, newest first, optionally only those in ``state`` or filed by
        ``submitted_by``; at most ``limit``."""
        if state is not None and state not in ledger.STATES:
            raise InvalidParameterError(
                f"Unknown request state {state!r}; use one of {', '.join(ledger.STATES)}."
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidParameterError(f"limit must be a whole number >= 1; got {limit!r}.")
        out = []
        for r in self._requests.received(newest_first=True):
            if state is not None and r["state"] != state:
                continue
            if submitted_by is not None:
                payload = self._catalog.parse_json(
                    r["payload"], f"ledger entry of {r['request_id']}"
                )
                if payload.get("submitted_by") != submitted_by:
                    continue
            out.append(self.request(r["request_id"]))
            if len(out) >= limit:
                break
        return out

    def certificate(self, request_id: str) -> dict[str, Any] | None:
        """The signed certificate (the file's JSON) once the request is certified, else None."""
        from unbake.workspace.certificates import stored_certificate

        state = self.request(request_id)["state"]
        if state != "certified":
            return None
        data = stored_certificate(self.root, request_id)
        return None if data is None else json.loads(data)

    def certify_pending(self) -> list[str]:
        """Sign a certificate for every request that is applied (or verified) but not yet
        certified, oldest first; returns their IDs. The worker's last step: a worker killed
        between ``applied`` and ``certified`` leaves the request to the next run, and one
        killed after writing the file but before its ledger entry signs it again."""
        from unbake.workspace.certificates import issue_certificate

        rows = [r for r in self._requests.received() if r["state"] in ("applied", "verified")]
        done = []
        for r in rows:
            issue_certificate(self.workspace, r["request_id"])
            done.append(r["request_id"])
        self.shred_due()
        return done

    def shred_due(self, now: str | None = None) -> dict[str, Any]:
        """Erase the reasons and sample IDs of done requests whose retention has ended
        (:meth:`Workspace.shred_due <unbake.workspace.Workspace.shred_due>`); the worker
        runs it after certifying."""
        return self.workspace.shred_due(now)

    def current_model(self) -> dict[str, Any]:
        """The newest active model: ID, sha256, architecture, strategy, size, creation time."""
        row = self._catalog.latest_active_model()
        if row is None:
            raise NotFoundError("No model in this workspace yet; train one with `unbake train`.")
        spec = self._catalog.parse_json(row["spec"], f"model {row['model_id']}'s spec")
        return {
            "model_id": row["model_id"],
            "sha256": row["sha256"],
            "architecture": spec.get("name", row["description"])
            if isinstance(spec, dict)
            else row["description"],
            "strategy": row["strategy"],
            "n_train": row["n_train"],
            "created_at": row["created_at"],
        }

    def load_model(self, model_id: str) -> TrainedModel:
        """Load a model, checked against its recorded sha256."""
        if self._catalog.model(model_id) is None:
            raise NotFoundError(f"No model {model_id!r} in this workspace; see `unbake status`.")
        return self.workspace.load_model(model_id)

    def state_counts(self) -> dict[str, int]:
        """How many requests are in each state now (states with none are left out)."""
        return self._requests.state_counts()

    def queue_depth(self) -> int:
        """Requests waiting for the worker (also those waiting out a retry's backoff)."""
        return self.state_counts().get("queued", 0)

    def worker_backlog(self) -> tuple[int, bool]:
        """What the worker has to do now (:meth:`Worker.backlog`)."""
        return self.worker.backlog()

    def health(self, *, stuck_after: float = STUCK_AFTER) -> dict[str, Any]:
        """What an operator must see, as counts and the age of the worst (seconds):
        requests ``applying`` for more than ``stuck_after`` seconds (a worker that hangs
        or no longer runs), requests past their deadline, and ``failed`` ones."""
        now = datetime.now(timezone.utc)
        attention = self._requests.attention(stuck_after=stuck_after, now=now)
        stuck = [r["seconds"] for r in attention["stuck"]]
        overdue = [
            (now - datetime.fromisoformat(r["deadline"])).total_seconds()
            for r in attention["overdue"]
        ]
        return {
            "stuck_applying": len(stuck),
            "oldest_applying_seconds": round(max(stuck, default=0.0), 3),
            "stuck_after_seconds": stuck_after,
            "overdue": len(overdue),
            "most_overdue_seconds": round(max(overdue, default=0.0), 3),
            "failed": len(attention["failed"]),
        }

    # --- applying (the worker's: :mod:`unbake.service.worker`) ----------------------

    def apply_pending(
        self, *, max_batch: int | None = None, policy: Policy | str | os.PathLike | None = None
    ) -> list[str]:
        """The worker's step (:meth:`Worker.apply_pending`): recover, take one batch of
        queued requests, apply it; returns the IDs of the requests it finished."""
        return self.worker.apply_pending(max_batch=max_batch, policy=policy)

    def recover(self, retry: Retry | None = None) -> list[str]:
        """Put back in the queue what a dead worker left ``applying`` (:meth:`Worker.recover`)."""
        return self.worker.recover(retry)

    # --- the CLI's synchronous path -------------------------------------------------

    def train(self, **options: Any) -> str:
        """Train a model on the active samples and record it as the current model; returns
        its model ID. Takes the keyword arguments of :func:`unbake.service.apply.train`."""
        return train(self.workspace, **options)

    def forget(self, **request: Any) -> RequestRecord:
        """File a request and apply it at once, all or nothing (what ``unbake forget``
        does): the ledger records ``received → queued → applying → applied``, as for a
        queued request, and the same planner decides; a request that
        turns out to be invalid at any point leaves no trace. Takes the keyword arguments
        of :func:`unbake.service.apply.forget`; it waits for a running worker's batch.
        """
        return forget(self.workspace, **request)
