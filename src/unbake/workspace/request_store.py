"""The request store: the ledger, idempotency keys, the queue, applied requests, deadlines
and the retention of personal data.

It owns the ``ledger``, ``request_keys``, ``queue``, ``requests`` and
``request_secrets`` tables (the hash chain itself is :mod:`~unbake.workspace.ledger`'s,
the sealing :mod:`~unbake.workspace.personal`'s). Every state transition of a request
is written here, by one method each; writes take the caller's cursor, so that they
commit in the caller's transaction.

The types a request travels as are here too: a :class:`Ticket` (a request in flight:
its ID, when it arrived, what it selects, and which ledger entries it has),
:class:`RequestPart` (its share of one unlearning run) and :class:`RequestRecord`
(what an applied request did).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from unbake.evaluation import Evaluation
from unbake.exceptions import InvalidParameterError, UnknownNameError, without_paths
from unbake.methods import UnlearnResult
from unbake.workspace import ledger, personal
from unbake.workspace.catalog import Catalog, utcnow
from unbake.workspace.ledger import canonical_json

__all__ = [
    "RETENTION",
    "SHRED_AFTER",
    "STUCK_AFTER",
    "KnownKey",
    "RequestPart",
    "RequestRecord",
    "RequestStore",
    "Ticket",
    "failure_reason",
]

#: Each personal field's workspace-meta retention key and its default (days after the
#: request is done): the reason goes at once, the IDs after the deletion's proof window,
#: in which an audit of the request (which needs its IDs) can still be run.
RETENTION = {"reason": ("reason_retention_days", 0), "sample_ids": ("id_retention_days", 30)}
#: The ledger states that end a request, and start its retention clock.
SHRED_AFTER = ("certified", "rejected", "failed")
#: Seconds after which a request still ``applying`` counts as stuck (``unbake status``,
#: ``/healthz``): no deletion run of unbake's own takes that long on the data it serves.
STUCK_AFTER = 900.0
#: The latest ledger state of each request, as a subquery over ``ledger r``.
_LATEST = "(SELECT state FROM ledger l WHERE l.request_id = r.request_id ORDER BY seq DESC LIMIT 1)"


def failure_reason(exc: BaseException, root: str | os.PathLike | None = None) -> str:
    """``exc`` as one line of at most 500 characters, for a ``failed`` ledger entry. Its
    submitter reads it (``GET /v1/requests/{id}``), so it holds no filesystem path: the
    workspace folder ``root`` reads ``<workspace>``, any other absolute path ``<path>``."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return without_paths(text, () if root is None else (root,))[:500]


@dataclass
class Ticket:
    """A request in flight: its ID, when it arrived, what it selects (as recorded), and
    ``state``, the latest ledger entry already written for it (``None``: none yet, for a
    request filed and applied at once; ``"applying"`` for one the worker took from the
    queue; ``"failed"`` for a retry). :meth:`RequestStore.start` writes what it lacks,
    so no path has to guess what another one wrote."""

    request_id: str
    received_at: str
    selector: dict[str, Any]
    key_hash: str | None = None
    fingerprint: str = ""
    started_at: str = field(default_factory=utcnow)
    #: Keyed hashes of the personal data (``reason_hmac``, ``ids_hmac``) for ``received``.
    personal: dict[str, str] = field(default_factory=dict)
    state: str | None = None
    #: When it must be done (``received``'s ``deadline``; ``None``: the workspace's).
    deadline: str | None = None
    #: The ``queued`` entry's payload (the method the request names, if any).
    queued: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestPart:
    """One request's share of an unlearning run: its training and held-out sample IDs."""

    ticket: Ticket
    sample_ids: list[str]
    held_ids: list[str]
    submitted_by: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class RequestRecord:
    """What a deletion request did.

    ``n_samples`` training samples were unlearned and ``n_held_out`` validation or test
    rows were marked forgotten. A request that selects no training sample changes no
    model: then ``model_after == model_before`` and ``evaluation`` and ``result`` are
    ``None``.
    """

    request_id: str
    model_before: str
    model_after: str
    method: str
    n_samples: int
    seconds: float
    evaluation: Evaluation | None
    result: UnlearnResult | None
    n_held_out: int = 0

    @property
    def changed_model(self) -> bool:
        return self.model_after != self.model_before


@dataclass(frozen=True)
class KnownKey:
    """A request filed before under an idempotency key: its ID and latest state."""

    request_id: str
    state: str


@dataclass(frozen=True)
class QueuedRequest:
    """What the worker needs of a queued request (its personal data opened)."""

    request_id: str
    received_at: str
    selector: dict[str, Any]
    sample_ids: list[str]
    class_label: str | None
    method: str | None
    params: dict[str, Any]
    seed: int | None
    device: str | None
    model_id: str | None
    reason: str | None
    submitted_by: str | None


class RequestStore:
    """The requests of one catalog; ``keyed_hash(kind, value)`` is the workspace's."""

    def __init__(self, catalog: Catalog, keyed_hash: Callable[[str, str], str]) -> None:
        self.catalog = catalog
        self._keyed_hash = keyed_hash

    # --- identity of a request -----------------------------------------------------

    def personal_hashes(self, reason: str | None, ids: Sequence[str]) -> dict[str, str]:
        """What the ledger's ``received`` entry says of a request's personal data: the
        keyed hashes of its reason and of its (sorted) sample IDs, never the values."""
        out = {}
        if reason is not None:
            out["reason_hmac"] = self._keyed_hash("reason", reason)
        if ids:
            out["ids_hmac"] = self._keyed_hash("ids", canonical_json(sorted(map(str, ids))))
        return out

    def fingerprint(
        self,
        key: str,
        ids: list[str],
        selector: dict[str, Any],
        method: str | None,
        params: dict[str, Any] | None,
        model_id: str | None,
    ) -> tuple[str, str]:
        """(keyed hash of an idempotency key, keyed hash of what the request asks)."""
        canonical = canonical_json([ids, selector, method, params or {}, model_id])
        return self._keyed_hash("idempotency", key), self._keyed_hash("request", canonical)

    def known_key(
        self, key_hash: str, fingerprint: str, cur: sqlite3.Cursor | None = None
    ) -> KnownKey | None:
        """The request filed before under this key (``None``: a new key); a key reused
        for another request is refused. Reads in ``cur``'s transaction if given."""
        conn: Any = cur if cur is not None else self.catalog.reader()
        row = conn.execute(
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
        state = ledger.last_state(conn, row["request_id"]) or "received"
        return KnownKey(row["request_id"], state)

    @staticmethod
    def insert_key(cur: sqlite3.Cursor, key_hash: str, request_id: str, fingerprint: str) -> None:
        cur.execute(
            "INSERT INTO request_keys(idempotency_key, request_id, fingerprint) VALUES (?, ?, ?)",
            (key_hash, request_id, fingerprint),
        )

    # --- deadlines -----------------------------------------------------------------

    def deadline_for(self, received_at: str, days: int | None = None) -> str:
        """When a request received at ``received_at`` must be done (GDPR art. 12(3)).

        ``days`` if given (a policy's ``deadline_days``); else the workspace meta
        ``deadline_days``; else one calendar month.
        """
        chosen: int | str | None = days if days is not None else self.catalog.meta("deadline_days")
        return ledger.deadline(datetime.fromisoformat(received_at), chosen)

    @staticmethod
    def set_meta(cur: sqlite3.Cursor, key: str, value: str | None) -> None:
        """Set (``None``: remove) a workspace meta value, in ``cur``'s transaction."""
        cur.execute("DELETE FROM meta WHERE key = ?", (key,))
        if value is not None:
            cur.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (key, value))

    # --- ledger transitions --------------------------------------------------------

    @staticmethod
    def append(
        cur: sqlite3.Cursor, request_id: str, state: str, payload: dict[str, Any], at: str
    ) -> None:
        """Append one ledger entry (the chain checks the transition)."""
        ledger.append_entry(cur, request_id, state, payload, at)

    def start(self, cur: sqlite3.Cursor, ticket: Ticket, method: str, model_before: str) -> None:
        """Append the entries ``ticket`` lacks up to ``applying``, by ``ticket.state``:
        ``received`` (and its idempotency key) and ``queued`` for a new request,
        ``queued`` for a retry of a failed one, then ``applying`` unless written."""
        if ticket.state is None:
            payload = {
                "selector": ticket.selector,
                "deadline": ticket.deadline or self.deadline_for(ticket.received_at),
                **ticket.personal,
            }
            self.append(cur, ticket.request_id, "received", payload, ticket.received_at)
            if ticket.key_hash is not None:
                self.insert_key(cur, ticket.key_hash, ticket.request_id, ticket.fingerprint)
        if ticket.state in (None, "failed"):
            at = ticket.received_at if ticket.state is None else utcnow()
            self.append(cur, ticket.request_id, "queued", ticket.queued, at)
        if ticket.state != "applying":
            payload = {"method": method, "model_before": model_before}
            self.append(cur, ticket.request_id, "applying", payload, ticket.started_at)

    def enqueue(
        self,
        cur: sqlite3.Cursor,
        request: QueuedRequest,
        received: dict[str, Any],
        key: tuple[str, str] | None,
    ) -> None:
        """File a new request: ``received`` (with ``received``'s payload) and ``queued``
        in the ledger, its queue row (personal data sealed) and its idempotency key."""
        rid, now = request.request_id, request.received_at
        self.append(cur, rid, "received", received, now)
        queued = {"method": request.method} if request.method is not None else {}
        self.append(cur, rid, "queued", queued, now)
        cur.execute(
            "INSERT INTO queue(request_id, received_at, selector, sample_ids, class_label, "
            "method, params, seed, device, model_id, reason, submitted_by) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rid,
                now,
                json.dumps(request.selector),
                personal.seal(cur, rid, "sample_ids", request.sample_ids),
                request.class_label,
                request.method,
                json.dumps(request.params, sort_keys=True),
                request.seed,
                request.device,
                request.model_id,
                None
                if request.reason is None
                else personal.seal(cur, rid, "reason", request.reason),
                request.submitted_by,
            ),
        )
        if key is not None:
            self.insert_key(cur, key[0], rid, key[1])

    def record_applied(
        self,
        cur: sqlite3.Cursor,
        forgotten: Sequence[str],
        ticket: Ticket,
        values: dict[str, Any],
        applied_extra: dict[str, Any] | None = None,
    ) -> None:
        """Insert one applied request (its ``requests`` row from ``values``), append its
        ledger entries up to ``applied`` (its payload plus ``applied_extra``) and mark
        ``forgotten`` (train and held-out IDs) forgotten by it. The reason and the sample
        IDs are stored sealed (:mod:`~unbake.workspace.personal`)."""
        from unbake.workspace.sample_store import SampleStore

        now = utcnow()
        rid = values["request_id"]
        values = dict(values)
        values["sample_ids"] = personal.seal(cur, rid, "sample_ids", values["sample_ids"])
        if values.get("reason") is not None:
            values["reason"] = personal.seal(cur, rid, "reason", values["reason"])
        self.start(cur, ticket, values["method"], values["model_before"])
        applied = {
            "model_after": values["model_after"],
            "hash_after": values["hash_after"],
            "n_samples": values["n_samples"],
            "n_held_out": len(forgotten) - values["n_samples"],
            **(applied_extra or {}),
        }
        self.append(cur, ticket.request_id, "applied", applied, now)
        columns = ", ".join(values)  # column names from the store's callers, never user input
        marks = ", ".join("?" for _ in values)
        cur.execute(
            f"INSERT INTO requests(created_at, {columns}, status) VALUES (?, {marks}, 'applied')",
            (now, *values.values()),
        )
        SampleStore.mark_forgotten(cur, forgotten, rid, now)

    def record_audit(self, cur: sqlite3.Cursor, request_id: str, record: dict[str, Any]) -> None:
        """Store an audit's record on its applied request."""
        cur.execute(
            "UPDATE requests SET audit = ? WHERE request_id = ?",
            (json.dumps(record, sort_keys=True, default=str), request_id),
        )

    # --- the queue -----------------------------------------------------------------

    def queue_rows(self) -> list[sqlite3.Row]:
        """Every queue row with its request's latest ledger state and that entry's payload,
        in order of arrival."""
        return self.catalog.query(
            "SELECT q.*, l.state AS state, l.payload AS last_payload FROM queue q "
            "JOIN ledger l ON l.seq = (SELECT MAX(seq) FROM ledger WHERE request_id = q.request_id) "
            "ORDER BY q.received_at, q.rowid"
        )

    @staticmethod
    def dequeue(cur: sqlite3.Cursor, request_ids: Sequence[str]) -> None:
        cur.executemany("DELETE FROM queue WHERE request_id = ?", [(i,) for i in request_ids])

    @staticmethod
    def drop_finished(cur: sqlite3.Cursor) -> None:
        """Remove the queue rows of requests that are done (a worker died after its commit)."""
        cur.execute(
            "DELETE FROM queue WHERE request_id IN (SELECT request_id FROM requests) OR "
            "(SELECT state FROM ledger l WHERE l.request_id = queue.request_id "
            " ORDER BY seq DESC LIMIT 1) IN ('rejected', 'failed', 'applied', 'verified', "
            "'certified')"
        )

    def queue_size(self) -> int:
        return int(self.catalog.query("SELECT COUNT(*) AS n FROM queue")[0]["n"])

    # --- reading -------------------------------------------------------------------

    def entries(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """Ledger entries (of one request, or all), oldest first, with payloads parsed."""
        return self.catalog.request_entries(request_id)

    def entries_after(self, after: int, limit: int) -> list[dict[str, Any]]:
        """At most ``limit`` ledger entries after seq ``after``, payloads parsed."""
        rows = self.catalog.query(
            "SELECT * FROM ledger WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        )
        return [
            {
                **dict(r),
                "payload": self.catalog.parse_json(r["payload"], f"ledger entry {r['seq']}"),
            }
            for r in rows
        ]

    def state(self, request_id: str) -> str | None:
        return self.catalog.request_state(request_id)

    def ids_in_state(self, state: str) -> list[str]:
        """The request ID of every ledger entry in ``state`` (with repeats), oldest first."""
        rows = self.catalog.query(
            "SELECT request_id FROM ledger WHERE state = ? ORDER BY seq", (state,)
        )
        return [r["request_id"] for r in rows]

    def applied_ids(self) -> list[str]:
        """The request ID of every ``requests`` row (with repeats)."""
        return [r["request_id"] for r in self.catalog.query("SELECT request_id FROM requests")]

    def received(self, *, newest_first: bool = False) -> list[sqlite3.Row]:
        """Each request's ``received`` entry (request_id, timestamp, payload) with its
        latest ``state``."""
        order = "DESC" if newest_first else ""
        return self.catalog.query(
            f"SELECT r.request_id, r.timestamp, r.payload, {_LATEST} AS state "
            f"FROM ledger r WHERE r.state = 'received' ORDER BY r.seq {order}"
        )

    def latest(self, states: Sequence[str]) -> list[sqlite3.Row]:
        """The latest entry of each request whose latest state is one of ``states``."""
        marks = ",".join("?" for _ in states)
        return self.catalog.query(
            "SELECT request_id, state, timestamp, payload FROM ledger WHERE seq IN "
            f"(SELECT MAX(seq) FROM ledger GROUP BY request_id) AND state IN ({marks}) "
            "ORDER BY seq",
            tuple(states),
        )

    def state_counts(self) -> dict[str, int]:
        """How many requests are in each state now (states with none are left out)."""
        rows = self.catalog.query(
            "SELECT state, COUNT(*) AS n FROM "
            "(SELECT request_id, state, MAX(seq) FROM ledger GROUP BY request_id) GROUP BY state"
        )
        return {r["state"]: r["n"] for r in rows}

    def timestamps(self, states: Sequence[str], last_applied: int) -> list[sqlite3.Row]:
        """(request_id, state, timestamp) of the ``states`` entries of the ``last_applied``
        most recently applied requests, oldest first."""
        marks = ",".join("?" for _ in states)
        return self.catalog.query(
            "SELECT l.request_id, l.state, l.timestamp FROM ledger l WHERE l.request_id IN "
            "(SELECT request_id FROM ledger WHERE state = 'applied' ORDER BY seq DESC LIMIT ?) "
            f"AND l.state IN ({marks}) ORDER BY l.seq",
            (last_applied, *states),
        )

    def personal_row(self, request_id: str) -> dict[str, Any] | None:
        """The request's row (applied, else queued) with its personal data opened."""
        for table in ("requests", "queue"):
            rows = self.catalog.query(
                f"SELECT request_id, reason, sample_ids, submitted_by FROM {table} "
                "WHERE request_id = ?",
                (request_id,),
            )
            if rows:
                return self.catalog.open_personal(dict(rows[0]))
        return None

    def applied(self) -> list[dict[str, Any]]:
        """Every applied request, oldest first (:meth:`Catalog.requests`)."""
        return self.catalog.requests()

    def record(self, request_id: str) -> RequestRecord:
        """The :class:`RequestRecord` of an applied request, from the catalog."""
        rows = [r for r in self.applied() if r["request_id"] == request_id]
        if not rows:
            raise UnknownNameError(
                f"No applied deletion request {request_id!r} in this workspace; list them with "
                "`unbake log`."
            )
        r = rows[0]
        return RequestRecord(
            request_id,
            r["model_before"],
            r["model_after"],
            r["method"],
            r["n_samples"],
            r["seconds"] or 0.0,
            Evaluation(r["metrics"]) if r["metrics"] else None,
            None,
            int((r["info"] or {}).get("held_out", 0)),
        )

    def overdue(self, now: str | None = None) -> list[dict[str, Any]]:
        """Requests not yet applied (nor rejected) whose deadline has passed, oldest first.

        A failed request stays open: it still has to be done.
        """
        now = now or utcnow()
        out = []
        for r in self.received():
            payload = self.catalog.parse_json(r["payload"], f"ledger entry of {r['request_id']}")
            if r["state"] not in (*ledger.DONE, "rejected") and payload["deadline"] < now:
                out.append(
                    {
                        "request_id": r["request_id"],
                        "state": r["state"],
                        "received_at": r["timestamp"],
                        "deadline": payload["deadline"],
                    }
                )
        return out

    def attention(
        self, *, stuck_after: float = STUCK_AFTER, now: datetime | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """The requests an operator must look at, oldest first: ``stuck`` (applying for
        more than ``stuck_after`` seconds: its worker hangs or is gone), ``failed`` (its
        retries spent, with the reason) and ``overdue`` (:meth:`overdue`)."""
        now = now or datetime.now(timezone.utc)
        stuck, failed = [], []
        for r in self.latest(("applying", "failed")):
            if r["state"] == "failed":
                payload = self.catalog.parse_json(
                    r["payload"], f"ledger entry of {r['request_id']}"
                )
                failed.append(
                    {
                        "request_id": r["request_id"],
                        "at": r["timestamp"],
                        "reason": payload.get("reason"),
                    }
                )
                continue
            seconds = (now - datetime.fromisoformat(r["timestamp"])).total_seconds()
            if seconds > stuck_after:
                stuck.append(
                    {
                        "request_id": r["request_id"],
                        "since": r["timestamp"],
                        "seconds": round(seconds, 3),
                    }
                )
        overdue = self.overdue(now.isoformat(timespec="microseconds"))
        return {"stuck": stuck, "failed": failed, "overdue": overdue}

    # --- retention of personal data ------------------------------------------------

    def retention(self) -> dict[str, int]:
        """Days a done request keeps its reason and its sample IDs (the workspace meta
        ``reason_retention_days`` and ``id_retention_days``; defaults 0 and 30)."""
        out = {}
        for f, (key, default) in RETENTION.items():
            value = self.catalog.meta(key)
            out[f] = int(value) if value is not None and value.isdigit() else default
        return out

    def due_for_shredding(self, now: str | None = None) -> list[tuple[str, str]]:
        """(request ID, field) of each key whose retention has ended: its request is done
        (``certified``, ``rejected``, or ``failed`` for good) since longer than the field's
        retention. The clock starts at the first such entry after the request was last in
        flight (a request queued again restarts it; ``verified`` leaves it alone)."""
        now_at = datetime.fromisoformat(now or utcnow())
        days = self.retention()
        done_at: dict[tuple[str, str], str] = {}
        for r in self.catalog.query(
            "SELECT s.request_id, s.field, l.state, l.timestamp FROM request_secrets s "
            "JOIN ledger l ON l.request_id = s.request_id ORDER BY l.seq"
        ):
            key = (r["request_id"], r["field"])
            if r["state"] in SHRED_AFTER:
                done_at.setdefault(key, r["timestamp"])
            elif r["state"] != "verified":
                done_at.pop(key, None)
        return [
            key
            for key, at in sorted(done_at.items(), key=lambda kv: (kv[1], kv[0]))
            if datetime.fromisoformat(at) + timedelta(days=days.get(key[1], 0)) <= now_at
        ]

    @staticmethod
    def destroy_key(cur: sqlite3.Cursor, request_id: str, field_name: str) -> None:
        """Delete the key that seals ``request_id``'s ``field_name`` (crypto-shredding)."""
        cur.execute(
            "DELETE FROM request_secrets WHERE request_id = ? AND field = ?",
            (request_id, field_name),
        )

    # --- upgrading a workspace from before the ledger and v9 -----------------------

    def seal_clear_records(self) -> None:
        """Seal each reason and sample-ID list of ``requests`` and ``queue`` stored in the
        clear by an unbake before v9 (idempotent; ``secure_delete`` overwrites the old bytes)."""
        clear = [
            (table, r["request_id"], f, r[f])
            for table in ("requests", "queue")
            for r in self.catalog.query(f"SELECT request_id, reason, sample_ids FROM {table}")
            for f in personal.FIELDS
            if r[f] is not None and not personal.is_sealed(r[f])
        ]
        if not clear:
            return
        with self.catalog.transaction() as cur:
            for table, rid, f, value in clear:
                if f == "sample_ids":
                    value = self.catalog.parse_json(value, f"request {rid}'s sample_ids")
                cur.execute(
                    f"UPDATE {table} SET {f} = ? WHERE request_id = ?",  # names from this module
                    (personal.seal(cur, rid, f, value), rid),
                )
        self.catalog.checkpoint()

    def backfill(self, subject_hmac: Callable[[str], str]) -> None:
        """Bring the requests of a workspace from before the ledger up to date (idempotent):
        a subject recorded in the clear becomes its keyed hash, and each request the
        ledger lacks is entered as received, applying and applied at its recorded time,
        marked ``backfilled``."""
        entered = {r["request_id"] for r in self.catalog.query("SELECT request_id FROM ledger")}
        stale = [
            r
            for r in self.applied()
            if "subject" in r["selector"] or r["request_id"] not in entered
        ]
        if not stale:
            return
        with self.catalog.transaction() as cur:
            for r in stale:
                selector = dict(r["selector"])
                if "subject" in selector:
                    selector["subject_hmac"] = subject_hmac(str(selector.pop("subject")))
                    cur.execute(
                        "UPDATE requests SET selector = ? WHERE request_id = ?",
                        (json.dumps(selector), r["request_id"]),
                    )
                if r["request_id"] not in entered:
                    at, rid = r["created_at"], r["request_id"]
                    received = {"selector": selector, "deadline": self.deadline_for(at)}
                    self.append(cur, rid, "received", {**received, "backfilled": True}, at)
                    applying = {"method": r["method"], "model_before": r["model_before"]}
                    self.append(cur, rid, "applying", {**applying, "backfilled": True}, at)
                    applied = {"model_after": r["model_after"], "backfilled": True}
                    self.append(cur, rid, "applied", applied, at)
