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
from collections.abc import Callable
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from unbake.exceptions import (
    IntegrityError,
    NotFoundError,
    UnbakeError,
    without_paths,
)
from unbake.service.api_http import (
    ApiError,
    RateLimit,
    _BodyLimit,
    _error,
    _HeaderLimit,
    _needs_operator,
    _responses,
    _status_of,
    _validation_message,
)
from unbake.service.api_metrics import LATENCY_WINDOW, health_problems, render_metrics
from unbake.service.api_schemas import (
    MAX_PREDICT_ROWS,
    CertificateFile,
    DeletionRequestBody,
    Health,
    LedgerCheck,
    LedgerHead,
    LedgerPage,
    ModelInfo,
    PredictBody,
    PredictionOut,
    RequestHealth,
    RequestStatus,
    StateName,
    Submission,
    WorkerHealth,
)
from unbake.service.deletion import STUCK_AFTER, DeletionService
from unbake.service.policy import Limits
from unbake.service.serving import ServedModel
from unbake.service.supervisor import WorkerSupervisor
from unbake.workspace.certificates import fingerprint, stored_certificate, workspace_public_key
from unbake.workspace.tokens import Principal, TokenCache

__all__ = [
    "LATENCY_WINDOW",
    "MAX_BODY_BYTES",
    "MAX_PREDICT_ROWS",
    "RateLimit",
    "create_app",
    "health_problems",
    "openapi_spec",
    "render_metrics",
]

#: The largest request body accepted (bytes); a larger one is refused with 413.
MAX_BODY_BYTES = 1 << 20
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
    roots = (service.root,) if service is not None else ()
    _error_handlers(app, roots)
    tokens = (
        TokenCache(service.workspace, seconds=TOKEN_CACHE_SECONDS, size=TOKEN_CACHE)
        if service is not None
        else None
    )
    auth = _Auth(service, _principal(tokens, rate_limit))
    _request_routes(app, service, auth, limits)
    _ledger_routes(app, service, auth, roots)
    served = ServedModel(service) if service is not None else None
    _model_routes(app, service, auth, served, worker, stuck_after)
    app.add_middleware(_BodyLimit, limit=max_body_bytes)
    app.add_middleware(_HeaderLimit, limit=limits.max_header_bytes)  # outermost: first
    return app


#: The errors every authenticated route may answer: the token, its role, its rate limit
#: and the header cap.
AUTH_ERRORS = (401, 403, 429, 431)


def _principal(tokens: TokenCache | None, rate_limit: RateLimit | None) -> Callable[..., Any]:
    """The dependency that turns a bearer token into its :class:`Principal`."""
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

    return principal


class _Auth:
    """Who may call a route: ``Anyone`` (every role), ``Readers`` (operator, auditor) and
    ``Submitters`` (submitter, operator), as endpoint annotations; and :meth:`own`."""

    def __init__(self, service: DeletionService | None, principal: Callable[..., Any]) -> None:
        self.service = service
        self.principal = principal
        self.Anyone = Annotated[Principal, Depends(self.role("submitter", "operator", "auditor"))]
        self.Readers = Annotated[Principal, Depends(self.role("operator", "auditor"))]
        self.Submitters = Annotated[Principal, Depends(self.role("submitter", "operator"))]

    def role(self, *roles: str) -> Callable[..., Any]:
        principal = self.principal

        async def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
            if who.role not in roles:
                raise ApiError(
                    403,
                    "Forbidden",
                    f"A {who.role} token may not do this; it needs the role {' or '.join(roles)}.",
                )
            return who

        return check

    def own(self, who: Principal, request_id: str) -> dict[str, Any]:
        """``request_id``'s summary, if ``who`` may read it. A missing request and, for a
        submitter, another token's answer the same 404, byte for byte but the echoed ID,
        so that a request ID reveals nothing about whether it exists."""
        try:
            found = self.service.request(request_id)
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


def _error_handlers(app: FastAPI, roots: tuple) -> None:
    """Every error as ``{"error": {"type", "message"}}``, naming no filesystem path."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.kind, exc.message, exc.headers)

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


def _request_routes(app: FastAPI, service: Any, auth: _Auth, limits: Limits) -> None:
    """``/v1/requests``: file, list and read requests, and fetch their certificates."""
    Anyone, Submitters, own = auth.Anyone, auth.Submitters, auth.own
    auth_errors = AUTH_ERRORS

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


def _ledger_routes(app: FastAPI, service: Any, auth: _Auth, roots: tuple) -> None:
    """``/v1/ledger``: the hash-chained ledger and its check; ``/v1/public-key``."""
    Anyone, Readers = auth.Anyone, auth.Readers
    auth_errors = AUTH_ERRORS

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

    @_text_route(
        app,
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


def _text_route(app: FastAPI, path: str, summary: str, headers: dict[str, Any] | None = None):
    """A GET route answering text/plain (its errors are JSON, as everywhere)."""
    ok = {200: {"description": "Successful Response", "headers": headers}} if headers else {}
    return app.get(
        path,
        response_class=PlainTextResponse,
        responses={**ok, **_responses(*AUTH_ERRORS, text=True)},
        summary=summary,
    )


def _model_routes(
    app: FastAPI,
    service: Any,
    auth: _Auth,
    served: ServedModel | None,
    worker: WorkerSupervisor,
    stuck_after: float,
) -> None:
    """The served model (``/v1/predict``, ``/v1/models/current``), ``/metrics``, ``/healthz``."""
    Anyone, Readers = auth.Anyone, auth.Readers
    auth_errors = AUTH_ERRORS

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

    @_text_route(app, "/metrics", "Prometheus metrics: queue depth, requests per state, latencies")
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


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI schema of :func:`create_app` (no workspace needed)."""
    return create_app(None).openapi()


def openapi_text() -> str:
    """The schema as the committed file holds it (sorted keys, two-space indent)."""
    return json.dumps(openapi_spec(), indent=2, sort_keys=True) + "\n"
