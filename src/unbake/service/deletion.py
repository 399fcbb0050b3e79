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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from unbake.exceptions import (
    EmptyRequestError,
    InvalidParameterError,
    NotFoundError,
    UnbakeError,
    without_paths,
)
from unbake.methods import METHODS
from unbake.methods.tuned import resolve
from unbake.service.apply import apply_parts, forget, stage_parts, train
from unbake.service.policy import (
    ModelInfo,
    Outcome,
    Policy,
    PolicyFailedError,
    Retry,
    load_policy,
    run_policy,
)
from unbake.training import TrainedModel, resolve_device
from unbake.workspace import ledger, personal
from unbake.workspace.catalog import utcnow
from unbake.workspace.tuned_table import request_context
from unbake.workspace.workspace import (
    STUCK_AFTER,
    ForgetSelector,
    RequestPart,
    RequestRecord,
    Ticket,
    Workspace,
    failure_reason,
    new_id,
)

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
    return load_policy(policy)


__all__ = ["DeletionService", "Submitted", "as_policy", "drain"]


def _retry_of(policy: Policy | None) -> Retry:
    """The retry rules of ``policy`` (its ``[retry]`` table), else the defaults."""
    return policy.retry if policy is not None else Retry()


def _not_before(row: Any) -> str:
    """When a queued request may run: after its retry's backoff ('' : now)."""
    payload = json.loads(row["last_payload"]) if row["last_payload"] else {}
    return str(payload.get("not_before", "")) if isinstance(payload, dict) else ""


#: The most requests one group commit writes in one transaction.
GROUP_LIMIT = 1024
#: How many IDs one ``IN (...)`` query checks.
_CHUNK = 500


@dataclass(frozen=True)
class Submitted:
    """What :meth:`DeletionService.submit` answers."""

    request_id: str
    state: str  # "queued" normally; the existing request's state when duplicate
    duplicate: bool  # True when the idempotency key was seen before (same request returned)


@dataclass
class _Job:
    """A validated request waiting for the writer thread."""

    selector: dict[str, Any]
    sample_ids: list[str]
    class_label: str | None
    method: str | None
    params: dict[str, Any]
    seed: int | None
    device: str | None
    model_id: str | None
    reason: str
    submitted_by: str | None
    key_hash: str | None = None
    fingerprint: str = ""
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
        self.workspace = Workspace.open(root, read_only=read_only) if self._owns_workspace else root
        self.root = self.workspace.root
        self._writer = _GroupCommit(self._write_jobs)

    def close(self) -> None:
        self._writer.close()
        if self._owns_workspace:
            self.workspace.close()

    def __enter__(self) -> DeletionService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _catalog(self):
        return self.workspace.catalog

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
        request = {
            "sample_ids": sample_ids,
            "subject": subject,
            "class_label": class_label,
            "reason": reason,
            "submitted_by": submitted_by,
            "method": method,
            "params": params,
            "seed": seed,
            "device": device,
            "model_id": model_id,
        }
        key = None
        if idempotency_key is not None:
            if not isinstance(idempotency_key, str) or not idempotency_key:
                raise InvalidParameterError(
                    f"The idempotency key must be a non-empty string; got {idempotency_key!r}."
                )
            ids = [str(i) for i in sample_ids] if sample_ids is not None else []
            label = None if class_label is None else self.workspace.class_name(class_label)
            selector = ForgetSelector(tuple(ids), subject, label).to_dict(
                self.workspace.subject_hmac
            )
            key = self.workspace.request_fingerprint(
                idempotency_key, ids, selector, method, params, model_id
            )
            known = self._known_key(
                self._catalog.reader(), *key
            )  # a retry: no need to validate again
            if known is not None:
                return known
        job = self._validate(request)
        if key is not None:
            job.key_hash, job.fingerprint = key
        return self._writer.submit(job)

    def _validate(self, request: dict[str, Any]) -> _Job:
        """``request`` (:meth:`submit`'s keywords but the idempotency key) checked against
        the catalog, as the writer's job; a refused one raises a typed :class:`UnbakeError`."""
        self.workspace.check_writable()
        sample_ids, subject, class_label = (
            request["sample_ids"],
            request["subject"],
            request["class_label"],
        )
        method, params, seed = request["method"], request["params"], request["seed"]
        named = [x is not None for x in (sample_ids, subject, class_label)]
        if not any(named):
            raise EmptyRequestError(
                "The deletion request selects no samples; name sample IDs, a subject or a "
                "class (--ids, --ids-file, --subject or --class)."
            )
        if sum(named) > 1:
            raise InvalidParameterError(
                "A deletion request names exactly one of sample IDs, a subject or a class; "
                "file one request for each."
            )
        for name in ("reason", "submitted_by"):
            value = request[name]
            if value is not None and not isinstance(value, str):
                raise InvalidParameterError(
                    f"The request's {name} must be a string; got {value!r}."
                )
        if params is not None and not isinstance(params, dict):
            raise InvalidParameterError(f"Method parameters must be a mapping; got {params!r}.")
        if method is not None:  # an unknown method or bad parameters: refused now
            METHODS.create_checked(method, params)
        elif params:
            raise InvalidParameterError("Method parameters need a method; name the method too.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InvalidParameterError(f"The seed must be a whole number; got {seed!r}.")
        if request["device"] is not None:
            resolve_device(request["device"])
        if request["model_id"] is not None:
            self.workspace.model_row(request["model_id"])
        ids: list[str] = []
        label = None
        if sample_ids is not None:
            if isinstance(sample_ids, str):
                raise InvalidParameterError(
                    f"sample_ids must be a list of IDs, not the string {sample_ids!r}."
                )
            ids = list(dict.fromkeys(str(i) for i in sample_ids))
            if not ids:
                raise EmptyRequestError(
                    "The deletion request selects no samples; name at least one sample ID."
                )
            # Whether they exist is the worker's to find (see _unavailable): a refusal
            # here would tell any submitter who is, or was, in the data.
        elif subject is not None:
            if not isinstance(subject, str) or not subject:
                raise InvalidParameterError(
                    f"The subject must be a non-empty string; got {subject!r}."
                )
            # None for a stranger and for a subject already forgotten alike; the worker
            # rejects the request then.
            ids = self.workspace.subject_sample_ids(subject)
        else:
            label = self.workspace.class_name(class_label)
        selector = ForgetSelector(
            tuple(ids) if sample_ids is not None else (), subject, label
        ).to_dict(self.workspace.subject_hmac)
        return _Job(
            selector,
            ids,
            label,
            method,
            dict(params or {}),
            seed,
            request["device"],
            request["model_id"],
            request["reason"],
            request["submitted_by"],
        )

    def _forgotten_since(self, ids: list[str], received_at: str) -> set[str]:
        """Those of ``ids`` forgotten at or after ``received_at`` (by another request,
        or by ``unbake forget``): active when the request arrived, so not its error."""
        since: set[str] = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" for _ in chunk)
            since.update(
                r["sample_id"]
                for r in self._catalog.query(
                    "SELECT sample_id FROM samples WHERE status = 'forgotten' AND "
                    f"forgotten_at >= ? AND sample_id IN ({marks})",
                    (received_at, *chunk),
                )
            )
        shredded = self.workspace.tombstoned([i for i in ids if i not in since])
        since.update(i for i, r in shredded.items() if (r["forgotten_at"] or "") >= received_at)
        return since

    def _unavailable(self, row: dict[str, Any], status: dict[str, str]) -> str | None:
        """Why the worker rejects the queued request ``row`` before any unlearning
        (``None``: it goes ahead). The reason is recorded on that request only, and says
        the same for samples never in the workspace and samples forgotten before the
        request arrived, naming neither them nor any other request nor its submitter."""
        if row["class_label"] is not None:
            return None
        names = row["sample_ids"]
        if not names:  # a subject with no active sample when the request arrived
            return (
                "No active sample belongs to the subject it names (it has none in this "
                "workspace, or they were forgotten before the request was received); "
                "there is nothing to forget."
            )
        inactive = [i for i in names if status.get(i) != "active"]
        missing = len(inactive) - len(self._forgotten_since(inactive, row["received_at"]))
        if missing:
            return (
                f"{missing} of the {len(names)} sample IDs it names are not active samples "
                "(unknown to this workspace, or forgotten before the request was received); "
                "file a new request without them."
            )
        return None

    def _write_jobs(self, jobs: list[_Job]) -> None:
        """The writer thread's transaction: each job in a savepoint of its own, so one
        refused job (an idempotency key reused for another request) spares the rest."""
        with self._catalog.transaction() as cur:
            for job in jobs:
                cur.execute("SAVEPOINT job")
                try:
                    job.result = self._write_job(cur, job)
                except UnbakeError as exc:
                    cur.execute("ROLLBACK TO job")
                    job.error = exc
                cur.execute("RELEASE job")

    @staticmethod
    def _known_key(cur, key_hash: str, fingerprint: str) -> Submitted | None:
        """The request filed before under this key (``None``: a new key); a key reused
        for another request is refused."""
        row = cur.execute(
            "SELECT request_id, fingerprint FROM request_keys WHERE idempotency_key = ?",
            (key_hash,),
        ).fetchone()
        if row is None:
            return None
        if row["fingerprint"] != fingerprint:
            raise InvalidParameterError(
                "This idempotency key was already used for another request "
                f"({row['request_id']}); use a new key for a new request."
            )
        state = ledger.last_state(cur, row["request_id"]) or "received"
        return Submitted(row["request_id"], state, True)

    def _write_job(self, cur, job: _Job) -> Submitted:
        if job.key_hash is not None:
            known = self._known_key(cur, job.key_hash, job.fingerprint)
            if known is not None:
                return known
        request_id = new_id("req")
        now = utcnow()
        days = self.policy.deadline_days if self.policy is not None else None
        received = {"selector": job.selector, "deadline": self.workspace.deadline_for(now, days)}
        received.update(self.workspace.personal_hashes(job.reason, job.sample_ids))
        if job.submitted_by is not None:
            received["submitted_by"] = job.submitted_by
        ledger.append_entry(cur, request_id, "received", received, now)
        queued = {"method": job.method} if job.method is not None else {}
        ledger.append_entry(cur, request_id, "queued", queued, now)
        cur.execute(
            "INSERT INTO queue(request_id, received_at, selector, sample_ids, class_label, "
            "method, params, seed, device, model_id, reason, submitted_by) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                request_id,
                now,
                json.dumps(job.selector),
                personal.seal(cur, request_id, "sample_ids", job.sample_ids),
                job.class_label,
                job.method,
                json.dumps(job.params, sort_keys=True),
                job.seed,
                job.device,
                job.model_id,
                None
                if job.reason is None
                else personal.seal(cur, request_id, "reason", job.reason),
                job.submitted_by,
            ),
        )
        if job.key_hash is not None:
            cur.execute(
                "INSERT INTO request_keys(idempotency_key, request_id, fingerprint) "
                "VALUES (?, ?, ?)",
                (job.key_hash, request_id, job.fingerprint),
            )
        return Submitted(request_id, "queued", False)

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
        rows = [
            *self._catalog.query(
                "SELECT request_id, reason, sample_ids, submitted_by FROM requests "
                "WHERE request_id = ?",
                (request_id,),
            ),
            *self._catalog.query(
                "SELECT request_id, reason, sample_ids, submitted_by FROM queue "
                "WHERE request_id = ?",
                (request_id,),
            ),
        ]
        if rows:  # the request row once applied, the queue row before
            row = self._catalog.open_personal(dict(rows[0]))
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
        rows = self._catalog.query(
            "SELECT r.request_id, r.payload, "
            "(SELECT state FROM ledger l WHERE l.request_id = r.request_id "
            " ORDER BY seq DESC LIMIT 1) AS state "
            "FROM ledger r WHERE r.state = 'received' ORDER BY r.seq DESC"
        )
        out = []
        for r in rows:
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

        rows = self._catalog.query(
            "SELECT r.request_id FROM ledger r WHERE r.state = 'received' AND "
            "(SELECT state FROM ledger l WHERE l.request_id = r.request_id "
            " ORDER BY seq DESC LIMIT 1) IN ('applied', 'verified') ORDER BY r.seq"
        )
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
        rows = self._catalog.query(
            "SELECT state, COUNT(*) AS n FROM "
            "(SELECT request_id, state, MAX(seq) FROM ledger GROUP BY request_id) GROUP BY state"
        )
        return {r["state"]: r["n"] for r in rows}

    def queue_depth(self) -> int:
        """Requests waiting for the worker (also those waiting out a retry's backoff)."""
        return self.state_counts().get("queued", 0)

    def worker_backlog(self) -> tuple[int, bool]:
        """What the worker has to do now: the queued requests that are due (not waiting
        out a retry's backoff), and whether any request is left ``applying`` in the queue
        (by a worker that died; the live worker never sees its own, being single-threaded)."""
        rows = self._queue_rows()
        now = utcnow()
        due = sum(1 for r in rows if r["state"] == "queued" and _not_before(r) <= now)
        return due, any(r["state"] == "applying" for r in rows)

    def health(self, *, stuck_after: float = STUCK_AFTER) -> dict[str, Any]:
        """What an operator must see, as counts and the age of the worst (seconds):
        requests ``applying`` for more than ``stuck_after`` seconds (a worker that hangs
        or no longer runs), requests past their deadline, and ``failed`` ones."""
        now = datetime.now(timezone.utc)
        attention = self.workspace.attention(stuck_after=stuck_after, now=now)
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

    # --- applying ------------------------------------------------------------------

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
                    ledger.append_entry(cur, rid, "failed", {"reason": reason}, utcnow())
                    continue
                payload = {
                    "recovered": True,
                    "recoveries": recoveries,
                    "reason": "the worker stopped while applying it",
                }
                ledger.append_entry(cur, rid, "queued", payload, utcnow())
            cur.execute(
                "DELETE FROM queue WHERE request_id IN (SELECT request_id FROM requests) OR "
                "(SELECT state FROM ledger l WHERE l.request_id = queue.request_id "
                " ORDER BY seq DESC LIMIT 1) IN ('rejected', 'failed', 'applied', 'verified', "
                "'certified')"
            )
        ws.sweep()
        return stuck

    def _queue_rows(self) -> list[Any]:
        """Every queue row with its request's latest ledger state and that entry's payload,
        in order of arrival."""
        return self._catalog.query(
            "SELECT q.*, l.state AS state, l.payload AS last_payload FROM queue q "
            "JOIN ledger l ON l.seq = (SELECT MAX(seq) FROM ledger WHERE request_id = q.request_id) "
            "ORDER BY q.received_at, q.rowid"
        )

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

    def _plan(self, row: dict[str, Any], model_strategy: str, policy: Any) -> tuple:
        """(method, params, seed, device, model_id, defaults record) for a queued request.

        The request's own method wins; else the ``policy`` decides when there is one
        (method ``None``: :meth:`_apply_policy`); else the workspace default (``sisa`` for
        a SISA model, ``retrain`` otherwise). The method starts from its tuned defaults
        for the request's scenario (:mod:`unbake.methods.tuned`), under the request's own
        parameters, as ``unbake forget`` does.
        """
        if row["method"] is None and policy is not None:
            return (None, "{}", row["seed"], row["device"], row["model_id"], None)
        method = row["method"] or ("sisa" if model_strategy == "sisa" else "retrain")
        ctx = request_context(self.workspace, label=row["class_label"], model_id=row["model_id"])
        params, defaults = resolve(method, ctx, row["params"] if row["method"] else {})
        return (
            method,
            json.dumps(params, sort_keys=True),
            row["seed"],
            row["device"],
            row["model_id"],
            json.dumps(defaults, sort_keys=True),
        )

    def _groups(self, rows: list[dict[str, Any]], policy: Any) -> list[list[dict[str, Any]]]:
        """The batch split into runs that share a plan, in order of first arrival."""
        latest = self._catalog.latest_active_model()
        strategy = latest["strategy"] if latest is not None else ""
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for r in rows:
            try:
                r["plan"] = self._plan(r, strategy, policy)
            except UnbakeError as exc:  # a queued row no submitter could have filed
                self._finish([(r["request_id"], str(exc))], "rejected")
                continue
            groups.setdefault(r["plan"], []).append(r)
        return list(groups.values())

    def _apply_group(
        self, rows: list[dict[str, Any]], policy: Policy | None, retry: Retry
    ) -> list[str]:
        """Apply requests that share a plan in one unlearning run (under the lock);
        returns the IDs of those it finished (rejected, applied or failed): not those put
        back in the queue to be retried (``retry``)."""
        ws = self.workspace
        method, params_json, seed, device, model_id, tuned_json = rows[0]["plan"]
        active, _ = ws.active_and_forgotten()
        status = ws.catalog.sample_status()
        split_of = {
            r["sample_id"]: r["split"]
            for r in ws.catalog.query("SELECT sample_id, split FROM samples")
        }
        parts: list[RequestPart] = []
        claimed: set[str] = set()
        rejected: list[tuple[str, str]] = []
        for r in rows:
            why = self._unavailable(r, status)
            if why is not None:
                rejected.append((r["request_id"], why))
                continue
            if r["class_label"] is not None:
                try:
                    ids = ws.select(ForgetSelector(label=r["class_label"]), active=active)
                except EmptyRequestError:
                    why = f"No active sample of class {r['class_label']!r} is left to forget."
                    rejected.append((r["request_id"], why))
                    continue
                except UnbakeError as exc:
                    rejected.append((r["request_id"], without_paths(str(exc), (ws.root,))))
                    continue
            else:
                ids = [i for i in r["sample_ids"] if status.get(i) == "active"]
            ids = [i for i in ids if i not in claimed]
            if not ids and not any(i in claimed for i in r["sample_ids"]):
                why = "Every sample it names was forgotten since it was received (nothing left)."
                rejected.append((r["request_id"], why))
                continue
            claimed.update(ids)
            ticket = Ticket(r["request_id"], r["received_at"], r["selector"])
            train = [i for i in ids if split_of[i] == "train"]
            held = [i for i in ids if split_of[i] != "train"]
            parts.append(RequestPart(ticket, train, held, r["submitted_by"], r["reason"]))
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
                ledger.append_entry(cur, part.ticket.request_id, "applying", payload, utcnow())

        def dequeue(cur) -> None:
            cur.executemany("DELETE FROM queue WHERE request_id = ?", [(i,) for i in request_ids])

        try:
            if method is None:
                self._apply_policy(parts, active, policy, row, seed, device, dequeue)
            else:
                info = json.loads(tuned_json)
                if policy is not None:
                    info["policy"] = {"bypassed": "the request names its own method"}
                apply_parts(
                    ws,
                    parts,
                    METHODS.create_checked(method, json.loads(params_json)),
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
            p.ticket for p in parts if ws.catalog.request_state(p.ticket.request_id) == "applying"
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
                ledger.append_entry(cur, rid, "queued", payload, utcnow())
            cur.executemany(
                "DELETE FROM queue WHERE request_id = ?",
                [(p.ticket.request_id,) for p in parts if p.ticket.request_id not in again],
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
        record = {"policy": result.to_dict()}
        applied = {"method": result.accepted.method, **record}
        ws.commit_staged(result.outcome.value, info=record, applied=applied, on_commit=on_commit)

    def _finish(self, outcomes: list[tuple[str, str]], state: str) -> None:
        """Record ``state`` (rejected) with each request's reason and dequeue them."""
        with self._catalog.transaction() as cur:
            for rid, reason in outcomes:
                ledger.append_entry(cur, rid, state, {"reason": reason}, utcnow())
                cur.execute("DELETE FROM queue WHERE request_id = ?", (rid,))

    # --- the CLI's synchronous path -------------------------------------------------

    def train(self, **options: Any) -> str:
        """Train a model on the active samples and record it as the current model; returns
        its model ID. Takes the keyword arguments of :func:`unbake.service.apply.train`."""
        return train(self.workspace, **options)

    def forget(self, **request: Any) -> RequestRecord:
        """File a request and apply it at once, all or nothing (what ``unbake forget``
        does): the ledger records ``received → applying → applied``, and a request that
        turns out to be invalid at any point leaves no trace. Takes the keyword arguments
        of :func:`unbake.service.apply.forget`; it waits for a running worker's batch.
        """
        return forget(self.workspace, **request)


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
