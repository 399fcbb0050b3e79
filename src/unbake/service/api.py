"""The REST API of the deletion service (FastAPI): ``create_app(service)``.

Endpoints (every one but ``/healthz`` needs ``Authorization: Bearer TOKEN``; make a token
with ``unbake token create --role R``):

- ``POST /v1/requests``: file a request (IDs, subject or class); submitter, operator.
- ``GET /v1/requests``, ``GET /v1/requests/{id}``: state and ledger entries; every role
  (a submitter: its own requests only).
- ``GET /v1/requests/{id}/certificate``: the signed certificate file; as above.
- ``GET /v1/ledger``, ``GET /v1/ledger/verify``: the ledger, its chain checked; operator,
  auditor.
- ``GET /v1/public-key``: the workspace's Ed25519 public key (PEM), its SHA-256
  fingerprint in the ``Unbake-Key-Fingerprint`` header; every role.
- ``POST /v1/predict``: predictions of the current model; operator, auditor.
- ``GET /v1/models/current``: the current model; every role.
- ``GET /metrics``: Prometheus text; operator, auditor.
- ``GET /healthz``: liveness, and the state of the worker that ``unbake serve`` runs
  (``degraded`` once it failed, see :mod:`unbake.service.supervisor`); no token.

- ``GET /docs``: Swagger UI, served from the ``swagger-ui-bundle`` package's files (no
  CDN; without the package, a plain list of the endpoints saying what to install).

The policy's ``[limits]`` (:class:`~unbake.service.policy.Limits`) caps the request
headers (431), what a submitter may erase (a whole class, or more than
``max_ids_per_request`` IDs, needs an operator: 403), and each token's request rate (429
with ``Retry-After``). A body that names a JSON key twice in one object is refused (400),
and so is a prediction input that is not finite in the model's dtype (422).

``POST /v1/requests`` answers ``202`` once the request is durable (committed with
``synchronous = FULL`` by the service's group commit), the same way whether the IDs or the
subject it names are in the data, were never there or were already forgotten: the worker
rejects the last two, and says so on that request only. Every error is a JSON body
``{"error": {"type", "message"}}`` whose message names the cause and the fix, and never a
filesystem path; malformed input (bad JSON, an empty request, two selectors, a body over
``max_body_bytes``) is refused before anything is written. A submitter sees only its own
requests: another token's request answers ``404`` exactly as a missing one does.
Predictions always come from the catalog's current model (see
:mod:`unbake.service.serving`).

:func:`openapi_spec` builds the schema without a workspace; ``unbake serve --openapi
FILE`` writes it (the committed copy is ``docs/openapi.json``).

>>> import tempfile
>>> from fastapi.testclient import TestClient
>>> from unbake import TrainConfig, Workspace
>>> from unbake.workspace.tokens import create_token
>>> root = tempfile.mkdtemp() + "/ws"
>>> with Workspace.create(root, dataset="digits") as ws:
...     token, _ = create_token(ws, "operator")
>>> svc = DeletionService(root)
>>> _ = svc.train(model="logreg", config=TrainConfig.parse(epochs=1))
>>> client = TestClient(create_app(svc), headers={"Authorization": f"Bearer {token}"})
>>> r = client.post("/v1/requests", json={"sample_ids": ["digits-0000"]})
>>> r.status_code, r.json()["state"]
(202, 'queued')
>>> client.post("/v1/requests", json={"sample_ids": ["nobody"]}).status_code  # rejected later
202
>>> client.post("/v1/requests", json={}).json()["error"]["type"]
'EmptyRequestError'
>>> svc.close()
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations,
# which name local aliases (``Submitters``).
import contextlib
import functools
import json
import math
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from unbake.exceptions import (
    IntegrityError,
    NotFoundError,
    UnbakeError,
    WorkspaceError,
    without_paths,
)
from unbake.service.deletion import STUCK_AFTER, DeletionService
from unbake.service.policy import Limits
from unbake.service.serving import ServedModel
from unbake.service.supervisor import WORKER_STATES, WorkerSupervisor
from unbake.workspace import ledger
from unbake.workspace.certificates import fingerprint, stored_certificate, workspace_public_key
from unbake.workspace.tokens import Principal, TokenCache

__all__ = ["MAX_BODY_BYTES", "create_app", "openapi_spec"]

#: The largest request body accepted (bytes); a larger one is refused with 413.
MAX_BODY_BYTES = 1 << 20
#: The most rows one prediction call takes.
MAX_PREDICT_ROWS = 1024
#: How many recent requests the latency summaries of ``/metrics`` read.
LATENCY_WINDOW = 1000
#: Valid tokens are remembered this long (seconds), at most ``TOKEN_CACHE`` of them, so
#: a busy client costs one HMAC and one catalog read a minute, not one a request; a
#: revocation empties the cache at once (see :class:`~unbake.workspace.tokens.TokenCache`).
TOKEN_CACHE_SECONDS = 60.0
TOKEN_CACHE = 10_000
#: Threads that run blocking endpoints (each accepted request waits for its group commit).
THREADS = 256
VERSION = "1"
#: The response header of ``/v1/public-key`` that holds the key's SHA-256 fingerprint.
FINGERPRINT_HEADER = "Unbake-Key-Fingerprint"


# --- request and response bodies ----------------------------------------------------


def _utf8(value: str) -> str:
    """Refuse strings that cannot be stored (lone surrogates from JSON escapes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the string is not valid Unicode (a lone surrogate)") from None
    return value


def _text(longest: int) -> Any:
    """A non-empty string of at most ``longest`` characters, storable as UTF-8."""
    return Annotated[StrictStr, Field(min_length=1, max_length=longest), AfterValidator(_utf8)]


SampleId = _text(256)
StateName = Literal[ledger.STATES]  # type: ignore[valid-type]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeletionRequestBody(_Body):
    """Exactly one of ``sample_ids``, ``subject`` and ``class``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    sample_ids: list[SampleId] | None = Field(
        None, min_length=1, max_length=100_000, description="Sample IDs to forget."
    )
    subject: _text(512) | None = Field(
        None, description="Forget every sample of this subject (stored only as a keyed hash)."
    )
    class_label: StrictStr | StrictInt | None = Field(
        None, alias="class", description="Forget a whole class (its name or index)."
    )
    reason: _text(200) = Field("erasure", description="Why (recorded in the ledger).")
    idempotency_key: _text(200) | None = Field(
        None, description="A retry with the same key and body returns the same request."
    )


class Submission(BaseModel):
    request_id: str
    state: str = Field(description="'queued', or the existing request's state on a retry.")
    duplicate: bool = Field(description="True when the idempotency key was seen before.")


class LedgerEntry(BaseModel):
    seq: int
    request_id: str
    state: str
    timestamp: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str


class RequestStatus(BaseModel):
    request_id: str
    state: str
    received_at: str
    deadline: str | None
    reason: str | None
    erased: dict[str, bool] = Field(
        default_factory=dict,
        description="Which personal fields (reason, sample_ids) were erased when their "
        "retention ended; an erased reason reads null.",
    )
    submitted_by: str | None
    selector: dict[str, Any] | None
    model_before: str | None
    model_after: str | None
    method: str | None
    entries: list[LedgerEntry]


class LedgerHead(BaseModel):
    seq: int
    hash: str


class LedgerPage(BaseModel):
    head: LedgerHead
    entries: list[LedgerEntry] = Field(description="Entries with seq > after, oldest first.")


class LedgerCheck(BaseModel):
    valid: bool
    head: LedgerHead | None = Field(description="The recomputed head when the chain holds.")
    error: str | None = Field(description="The first entry edited, deleted or reordered.")


class CertificateSignature(BaseModel):
    algorithm: Literal["Ed25519"]
    value: str


class CertificateFile(BaseModel):
    """The certificate file's exact bytes (verify with ``unbake certificate verify``)."""

    certificate: dict[str, Any]
    signature: CertificateSignature


class ModelInfo(BaseModel):
    model_id: str
    sha256: str
    architecture: str
    strategy: str
    n_train: int
    created_at: str


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class PredictBody(_Body):
    inputs: list[Annotated[list[FiniteFloat], Field(min_length=1, max_length=1 << 16)]] = Field(
        min_length=1,
        max_length=MAX_PREDICT_ROWS,
        description="Rows of features, each flattened to the model's input size.",
    )
    probabilities: bool = Field(False, description="Also return class probabilities.")


class PredictionOut(BaseModel):
    model_id: str = Field(description="The model that answered (the catalog's current one).")
    sha256: str
    predictions: list[int]
    probabilities: list[list[float]] | None = None


class WorkerHealth(BaseModel):
    state: Literal[WORKER_STATES] = Field(  # type: ignore[valid-type]
        description="running; restarting (it exited, and is started again after a backoff); "
        "failed (it exited too often in a short while and is left stopped); disabled (the "
        "server runs without one); stopped (the server is shutting down)."
    )
    restarts: int = Field(description="Times the server restarted it.")
    last_exit_code: int | None = Field(description="Its last exit code (-9: SIGKILL).")


class RequestHealth(BaseModel):
    stuck_applying: int = Field(
        description="Requests applying for longer than stuck_after_seconds (a worker that "
        "hangs, or none that runs)."
    )
    oldest_applying_seconds: float = Field(description="How long the oldest of those has been.")
    stuck_after_seconds: float = Field(description="The threshold (`unbake serve --stuck-after`).")
    overdue: int = Field(description="Requests not yet applied whose deadline has passed.")
    most_overdue_seconds: float = Field(description="How far past its deadline the worst is.")
    failed: int = Field(
        description="Requests that failed (retries spent); their reason is on the request."
    )


class Health(BaseModel):
    status: Literal["ok", "degraded"] = Field(
        description="'degraded' when the worker failed (requests are accepted and queued, "
        "but none is applied until the server is restarted), or a request is stuck applying "
        "or past its deadline; `problems` says which."
    )
    problems: list[str] = Field(description="One line per reason for 'degraded'.")
    schema_version: str | None
    worker: WorkerHealth
    requests: RequestHealth


class ErrorInfo(BaseModel):
    type: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorInfo


# --- errors ---------------------------------------------------------------------------


class ApiError(Exception):
    """An HTTP error with the one-line message of the error contract."""

    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


def _error(status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"type": kind, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _status_of(exc: UnbakeError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, IntegrityError):
        return 500
    if isinstance(exc, WorkspaceError):
        return 409
    return 422


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "The request body is not valid JSON; send a JSON object."
    parts = []
    for e in errors[:3]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return 422, f"Invalid request: {'; '.join(parts)}{more}; fix the field and resend."


_DESCRIPTIONS = {
    400: "Malformed JSON.",
    401: "Missing, malformed or unknown bearer token.",
    403: "The token's role may not do this.",
    404: "No such request (or another token's), certificate or model.",
    409: "The workspace is read-only or busy.",
    413: "The request body is too large.",
    422: "Malformed input (an empty request, two selectors, a bad field).",
    429: "This token made too many requests; retry after the Retry-After seconds.",
    431: "The request's headers are too large.",
}


def _responses(*codes: int, text: bool = False) -> dict[int | str, dict[str, Any]]:
    """The error responses of a route. A ``text`` route's own media type is text/plain,
    which FastAPI would give a ``model`` too; its (JSON) errors name the schema instead."""
    if text:
        error = {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
        return {
            c: {"description": _DESCRIPTIONS[c], "content": {"application/json": error}}
            for c in codes
        }
    return {c: {"model": ErrorBody, "description": _DESCRIPTIONS[c]} for c in codes}


class _HeaderLimit:
    """Refuse a request whose headers exceed ``limit`` bytes in all with 431."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            size = sum(len(k) + len(v) + 4 for k, v in scope.get("headers") or ())  # ": ", CRLF
            if size > self.limit:
                await _error(
                    431,
                    "HeadersTooLarge",
                    f"The request's headers are {size} bytes, over the limit of {self.limit}; "
                    "send fewer or shorter headers.",
                )(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _duplicate_key(body: bytes) -> str | None:
    """A key that one object of the JSON ``body`` names twice (``None``: none, or not JSON:
    FastAPI then answers as for any malformed body)."""
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        if not found and len(set(keys)) != len(keys):
            found.append(next(k for i, k in enumerate(keys) if k in keys[:i]))
        return dict(items)

    try:
        json.loads(body, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return None
    return found[0] if found else None


class _BodyLimit:
    """Refuse a body over ``limit`` bytes with 413, and one naming a JSON key twice in an
    object with 400 (which value counts would be the parser's choice), before the
    application reads it."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_large = _error(
            413,
            "PayloadTooLarge",
            f"The request body is over {self.limit} bytes; split the request into smaller ones.",
        )
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await too_large(scope, receive, send)
            return
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), False
        twice = _duplicate_key(body) if body else None
        if twice is not None:
            await _error(
                400,
                "MalformedJSON",
                f"The request body names the key {twice[:100]!r} twice in one object; send "
                "each key once.",
            )(scope, receive, send)
            return

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class RateLimit:
    """A token bucket per API token: ``burst`` requests at once, refilled at ``per_minute``.

    >>> now = [0.0]
    >>> limit = RateLimit(per_minute=60, burst=2, clock=lambda: now[0])
    >>> [limit.wait("t") for _ in range(3)], limit.wait("other")
    ([0.0, 0.0, 1.0], 0.0)
    >>> now[0] = 1.0
    >>> limit.wait("t")
    0.0
    """

    def __init__(
        self,
        *,
        per_minute: float,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute, self.rate = per_minute, per_minute / 60.0
        self.burst = float(burst if burst is not None else max(1, math.ceil(per_minute)))
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def wait(self, key: str) -> float:
        """0 when ``key`` may make a request now (which is counted), else the seconds until
        it may."""
        now = self._clock()
        with self._lock:
            tokens, then = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate


def _needs_operator(body: DeletionRequestBody, limits: Limits) -> str | None:
    """Why a submitter may not file ``body`` itself (``None``: it may)."""
    if body.class_label is not None and not limits.submitter_may_erase_class:
        return (
            "Erasing a whole class needs an operator token (or submitter_may_erase_class = "
            "true in the policy's [limits]); ask an operator to file this request."
        )
    n = len(body.sample_ids or ())
    if n > limits.max_ids_per_request:
        return (
            f"A submitter may name at most {limits.max_ids_per_request} sample IDs in one "
            f"request (max_ids_per_request in the policy's [limits]), not {n}; split the "
            "request, or ask an operator to file it."
        )
    return None


# --- metrics --------------------------------------------------------------------------


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _latencies(service: DeletionService) -> dict[str, list[float]]:
    """Seconds from ``applying`` (and from ``received``) to ``applied``, of the most
    recently applied requests."""
    rows = service.workspace.request_store.timestamps(
        ("received", "applying", "applied"), LATENCY_WINDOW
    )
    times: dict[str, dict[str, str]] = {}
    for r in rows:
        times.setdefault(r["request_id"], {})[r["state"]] = r["timestamp"]
    out: dict[str, list[float]] = {"apply": [], "request": []}
    for t in times.values():
        if "applied" in t and "applying" in t:
            out["apply"].append(_seconds(t["applying"], t["applied"]))
        if "applied" in t and "received" in t:
            out["request"].append(_seconds(t["received"], t["applied"]))
    return out


def _summary(name: str, help_text: str, values: list[float]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} summary"]
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.99):
        value = ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")
        lines.append(f'{name}{{quantile="{q}"}} {value:.6g}')
    lines += [f"{name}_sum {sum(values):.6g}", f"{name}_count {len(values)}"]
    return lines


def health_problems(worker: dict[str, Any], requests: dict[str, Any]) -> list[str]:
    """Why the service is degraded (none: it is not): the worker's state and
    :meth:`DeletionService.health`'s figures, as one line each."""
    problems = []
    if worker["state"] == "failed":
        problems.append(
            "the worker exited too often and is left stopped; see the server's log, fix the "
            "cause and restart `unbake serve`"
        )
    if requests["stuck_applying"]:
        problems.append(
            f"{requests['stuck_applying']} requests have been applying for more than "
            f"{requests['stuck_after_seconds']:g} s (the oldest {requests['oldest_applying_seconds']:.0f} s)"
        )
    if requests["overdue"]:
        problems.append(
            f"{requests['overdue']} requests are past their deadline (the worst by "
            f"{requests['most_overdue_seconds']:.0f} s); see `unbake status`"
        )
    return problems


def render_metrics(
    service: DeletionService, served: ServedModel, *, stuck_after: float = STUCK_AFTER
) -> str:
    """The Prometheus text exposition of queue depth, requests per state, latencies, and
    requests stuck applying or past their deadline."""
    counts = service.state_counts()
    lines = [
        "# HELP unbake_queue_depth Deletion requests waiting for the worker.",
        "# TYPE unbake_queue_depth gauge",
        f"unbake_queue_depth {counts.get('queued', 0)}",
        "# HELP unbake_requests Deletion requests by current state.",
        "# TYPE unbake_requests gauge",
    ]
    lines += [f'unbake_requests{{state="{s}"}} {counts.get(s, 0)}' for s in ledger.STATES]
    lat = _latencies(service)
    lines += _summary(
        "unbake_apply_latency_seconds",
        f"Seconds from applying to applied (last {LATENCY_WINDOW} applied requests).",
        lat["apply"],
    )
    lines += _summary(
        "unbake_request_latency_seconds",
        f"Seconds from received to applied (last {LATENCY_WINDOW} applied requests).",
        lat["request"],
    )
    health = service.health(stuck_after=stuck_after)
    gauges = (
        (
            "requests_stuck_applying",
            "stuck_applying",
            f"Requests applying for longer than {stuck_after:g} s.",
        ),
        (
            "requests_stuck_applying_oldest_seconds",
            "oldest_applying_seconds",
            "Seconds the oldest stuck request has been applying (0: none).",
        ),
        ("requests_overdue", "overdue", "Requests not yet applied whose deadline has passed."),
        (
            "requests_overdue_max_seconds",
            "most_overdue_seconds",
            "Seconds the most overdue request is past its deadline (0: none).",
        ),
    )
    for name, key, help_text in gauges:
        lines += [
            f"# HELP unbake_{name} {help_text}",
            f"# TYPE unbake_{name} gauge",
            f"unbake_{name} {health[key]:.6g}",
        ]
    lines += [
        "# HELP unbake_model_swaps_total Times this server swapped its served model.",
        "# TYPE unbake_model_swaps_total counter",
        f"unbake_model_swaps_total {served.swaps}",
    ]
    return "\n".join(lines) + "\n"


# --- /docs, served offline -------------------------------------------------------------

#: Where ``/docs`` serves the Swagger UI files of the ``swagger-ui-bundle`` package.
DOCS_ASSETS = "/docs/assets"
#: The package (and the pin) whose files ``/docs`` serves; without it, a plain page.
SWAGGER_UI_PACKAGE = "swagger-ui-bundle==1.1.0"


def _swagger_ui_path() -> Any:
    """The folder of Swagger UI's files from the ``swagger-ui-bundle`` package, or ``None``."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return swagger_ui_path


def _plain_docs(spec: dict[str, Any]) -> str:
    """An HTML list of the endpoints, for when Swagger UI's files are not installed."""
    from html import escape

    items = [
        f"<li><code>{escape(method.upper())} {escape(path)}</code>: "
        f"{escape(op.get('summary', ''))}</li>"
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    ]
    return (
        f"<!DOCTYPE html><html><head><title>{escape(spec['info']['title'])}</title></head>"
        f"<body><h1>{escape(spec['info']['title'])}</h1><p>The interactive page needs the "
        f"Swagger UI files of the <code>{SWAGGER_UI_PACKAGE}</code> package, which is not "
        f"installed: <code>pip install '{SWAGGER_UI_PACKAGE}'</code>. The schema is at "
        f'<a href="/openapi.json">/openapi.json</a> (and <code>docs/openapi.json</code>).</p>'
        f"<ul>{''.join(items)}</ul></body></html>"
    )


def _add_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from files the server holds (never a CDN), else a plain page."""
    from starlette.staticfiles import StaticFiles

    folder = _swagger_ui_path()
    if folder is not None:
        app.mount(DOCS_ASSETS, StaticFiles(directory=str(folder)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if folder is None:
            return HTMLResponse(_plain_docs(app.openapi()))
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} (API)",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )


# --- the application ------------------------------------------------------------------


def create_app(
    service: DeletionService | None,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    worker: WorkerSupervisor | None = None,
    stuck_after: float = STUCK_AFTER,
    limits: Limits | None = None,
    rate_limit: RateLimit | None = None,
) -> FastAPI:
    """The ASGI application over ``service`` (``None`` only to build the OpenAPI schema);
    ``/healthz`` reports ``worker``'s state (none: ``disabled``), and is ``degraded`` while
    a request has been applying for more than ``stuck_after`` seconds or is overdue.
    ``limits`` (default: the ``[limits]`` of the service's policy) caps headers, what a
    submitter may erase, and each token's request rate (``rate_limit``, if given, stands
    in for that rate)."""
    worker = worker if worker is not None else WorkerSupervisor(None)
    if limits is None:
        policy = service.policy if service is not None else None
        limits = policy.limits if policy is not None else Limits()
    if rate_limit is None and limits.rate_per_minute is not None:
        rate_limit = RateLimit(per_minute=limits.rate_per_minute, burst=limits.burst)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        yield

    app = FastAPI(
        title="unbake deletion service",
        version=VERSION,
        description="File deletion requests, follow them through the ledger, fetch their "
        "signed certificates, and query the current (unlearned) model.",
        lifespan=lifespan,
        docs_url=None,  # /docs: served from the package's files (see _add_docs), no CDN
        redoc_url=None,
    )
    _add_docs(app)
    served = ServedModel(service) if service is not None else None
    tokens = (
        TokenCache(service.workspace, seconds=TOKEN_CACHE_SECONDS, size=TOKEN_CACHE)
        if service is not None
        else None
    )
    bearer = HTTPBearer(
        auto_error=False, description="A token made by `unbake token create --role R`."
    )

    # The dependencies are ``async``: they are cheap (an HMAC and one indexed read), and a
    # synchronous one would cost each request a hop to the thread pool.
    async def principal(
        cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        challenge = {"WWW-Authenticate": "Bearer"}
        if cred is None:
            raise ApiError(
                401,
                "Unauthorized",
                "Missing bearer token; send 'Authorization: Bearer TOKEN' (make one with "
                "`unbake token create --role R`).",
                challenge,
            )
        who = tokens.principal(cred.credentials)
        if who is None:
            raise ApiError(
                401,
                "Unauthorized",
                "Unknown, malformed or revoked bearer token; use a token printed by "
                "`unbake token create` for this workspace.",
                challenge,
            )
        wait = rate_limit.wait(who.token_id) if rate_limit is not None else 0.0
        if wait > 0:
            raise ApiError(
                429,
                "TooManyRequests",
                f"This token made more than its {rate_limit.per_minute:g} requests a minute "
                f"(rate_per_minute in the policy's [limits]); retry in {math.ceil(wait)} s.",
                {"Retry-After": str(math.ceil(wait))},
            )
        return who

    def role(*roles: str) -> Callable[..., Principal]:
        async def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
            if who.role not in roles:
                raise ApiError(
                    403,
                    "Forbidden",
                    f"A {who.role} token may not do this; it needs the role {' or '.join(roles)}.",
                )
            return who

        return check

    Anyone = Annotated[Principal, Depends(role("submitter", "operator", "auditor"))]
    Readers = Annotated[Principal, Depends(role("operator", "auditor"))]
    Submitters = Annotated[Principal, Depends(role("submitter", "operator"))]

    def own(who: Principal, request_id: str) -> dict[str, Any]:
        """``request_id``'s summary, if ``who`` may read it. A missing request and, for a
        submitter, another token's answer the same 404, byte for byte but the echoed ID,
        so that a request ID reveals nothing about whether it exists."""
        try:
            found = service.request(request_id)
        except NotFoundError:
            found = None
        if found is None or (who.role == "submitter" and found["submitted_by"] != who.name):
            raise ApiError(
                404,
                "NotFoundError",
                f"No request {request_id!r} that this token may read; list those it may "
                "read with GET /v1/requests.",
            )
        return found

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.kind, exc.message, exc.headers)

    roots = (service.root,) if service is not None else ()

    @app.exception_handler(UnbakeError)
    async def _unbake_error(_request: Request, exc: UnbakeError) -> JSONResponse:
        return _error(_status_of(exc), type(exc).__name__, without_paths(str(exc), roots))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(exc)
        return _error(status, "InvalidRequest" if status == 422 else "MalformedJSON", message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: "No such endpoint; see /docs for the API.", 405: "Method not allowed."}
        text = message.get(exc.status_code, str(exc.detail))
        return _error(exc.status_code, "HTTPError", text, getattr(exc, "headers", None))

    auth_errors = (401, 403, 429, 431)  # and the token's rate limit, the header cap

    @app.post(
        "/v1/requests",
        status_code=202,
        response_model=Submission,
        responses=_responses(400, *auth_errors, 409, 413, 422),
        summary="File a deletion request (answered once it is durable)",
    )
    async def submit(body: DeletionRequestBody, who: Submitters) -> Submission:
        # ``async`` with one explicit hop to a thread, where the caller waits for its
        # group commit: a plain ``def`` endpoint costs several hops (FastAPI also
        # validates and encodes the response in the thread pool then).
        refused = _needs_operator(body, limits) if who.role != "operator" else None
        if refused is not None:
            raise ApiError(403, "Forbidden", refused)
        key = None if body.idempotency_key is None else f"{who.token_id}:{body.idempotency_key}"
        sub = await anyio.to_thread.run_sync(
            functools.partial(
                service.submit,
                sample_ids=body.sample_ids,
                subject=body.subject,
                class_label=body.class_label,
                reason=body.reason,
                idempotency_key=key,
                submitted_by=who.name,
            )
        )
        return Submission(request_id=sub.request_id, state=sub.state, duplicate=sub.duplicate)

    @app.get(
        "/v1/requests",
        response_model=list[RequestStatus],
        responses=_responses(*auth_errors, 422),
        summary="List requests, newest first (a submitter sees its own)",
    )
    def list_requests(
        who: Anyone,
        state: StateName | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        mine = who.name if who.role == "submitter" else None
        return service.requests(state=state, submitted_by=mine, limit=limit)

    @app.get(
        "/v1/requests/{request_id}",
        response_model=RequestStatus,
        responses=_responses(*auth_errors, 404, 422),
        summary="A request's state and ledger entries",
    )
    def get_request(request_id: str, who: Anyone) -> dict[str, Any]:
        return own(who, request_id)

    @app.get(
        "/v1/requests/{request_id}/certificate",
        response_model=None,
        responses={
            200: {"model": CertificateFile, "description": "The certificate file's bytes."},
            **_responses(*auth_errors, 404, 422),
        },
        summary="The signed certificate of a certified request",
    )
    def get_certificate(request_id: str, who: Anyone) -> Response:
        state = own(who, request_id)["state"]
        data = stored_certificate(service.root, request_id) if state == "certified" else None
        if data is None:
            raise NotFoundError(
                f"Request {request_id} is {state}; it has no certificate until it is "
                f"certified (an operator runs `unbake certificate issue --request {request_id}`)."
            )
        return Response(data, media_type="application/json")

    @app.get(
        "/v1/ledger",
        response_model=LedgerPage,
        responses=_responses(*auth_errors, 422),
        summary="The hash-chained ledger, a page at a time (after a seq)",
    )
    def get_ledger(
        who: Readers,
        after: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> dict[str, Any]:
        del who
        catalog = service.workspace.catalog
        seq, digest = catalog.ledger_head()
        entries = service.workspace.request_store.entries_after(after, limit)
        return {"head": {"seq": seq, "hash": digest}, "entries": entries}

    @app.get(
        "/v1/ledger/verify",
        response_model=LedgerCheck,
        responses=_responses(*auth_errors),
        summary="Recompute the ledger's hash chain (what `unbake ledger verify` does)",
    )
    def verify_ledger(who: Readers) -> LedgerCheck:
        del who
        try:
            seq, digest = service.workspace.catalog.verify_ledger()
        except IntegrityError as exc:
            return LedgerCheck(valid=False, head=None, error=without_paths(str(exc), roots))
        return LedgerCheck(valid=True, head=LedgerHead(seq=seq, hash=digest), error=None)

    def text_route(path: str, summary: str, headers: dict[str, Any] | None = None):
        """A GET route answering text/plain (its errors are JSON, as everywhere)."""
        ok = {200: {"description": "Successful Response", "headers": headers}} if headers else {}
        return app.get(
            path,
            response_class=PlainTextResponse,
            responses={**ok, **_responses(*auth_errors, text=True)},
            summary=summary,
        )

    @text_route(
        "/v1/public-key",
        "The workspace's Ed25519 public key (PEM), to verify certificates offline",
        {
            FINGERPRINT_HEADER: {
                "description": "The key's fingerprint: the SHA-256 (hex) of this PEM body, as "
                "`sha256sum` prints it and as certificates name it (public_key_sha256).",
                "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            }
        },
    )
    def public_key(who: Anyone) -> PlainTextResponse:
        del who
        pem = workspace_public_key(service.workspace)
        return PlainTextResponse(
            pem.decode("ascii"), headers={FINGERPRINT_HEADER: fingerprint(pem)}
        )

    @app.post(
        "/v1/predict",
        response_model=PredictionOut,
        responses=_responses(400, *auth_errors, 404, 413, 422),
        summary="Predict with the current model (never one that saw forgotten data)",
    )
    def predict(body: PredictBody, who: Readers) -> PredictionOut:
        del who
        out = served.predict(body.inputs)
        probs = out.log_proba.exp()
        return PredictionOut(
            model_id=out.model_id,
            sha256=out.sha256,
            predictions=out.log_proba.argmax(dim=1).tolist(),
            probabilities=probs.tolist() if body.probabilities else None,
        )

    @app.get(
        "/v1/models/current",
        response_model=ModelInfo,
        responses=_responses(*auth_errors, 404),
        summary="The model predictions come from",
    )
    def current_model(who: Anyone) -> dict[str, Any]:
        del who
        return service.current_model()

    @text_route("/metrics", "Prometheus metrics: queue depth, requests per state, latencies")
    def metrics(who: Readers) -> PlainTextResponse:
        del who
        return PlainTextResponse(
            render_metrics(service, served, stuck_after=stuck_after),
            media_type="text/plain; version=0.0.4",
        )

    @app.get(
        "/healthz", response_model=Health, summary="Liveness and the worker's state (no token)"
    )
    def healthz() -> Health:
        state = worker.health()
        requests = service.health(stuck_after=stuck_after)
        problems = health_problems(state, requests)
        return Health(
            status="degraded" if problems else "ok",
            problems=problems,
            schema_version=service.workspace.catalog.meta("schema_version"),
            worker=WorkerHealth(**state),
            requests=RequestHealth(**requests),
        )

    app.add_middleware(_BodyLimit, limit=max_body_bytes)
    app.add_middleware(_HeaderLimit, limit=limits.max_header_bytes)  # outermost: first
    return app


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI schema of :func:`create_app` (no workspace needed)."""
    return create_app(None).openapi()


def openapi_text() -> str:
    """The schema as the committed file holds it (sorted keys, two-space indent)."""
    return json.dumps(openapi_spec(), indent=2, sort_keys=True) + "\n"
