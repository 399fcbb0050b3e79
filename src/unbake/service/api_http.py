"""The REST API's HTTP plumbing: typed errors and their JSON bodies, the header and body
limits (ASGI middlewares), duplicate JSON keys, and each token's rate limit."""

# No ``from __future__ import annotations``: pydantic and FastAPI read the annotations.
import json
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from unbake.exceptions import IntegrityError, NotFoundError, UnbakeError, WorkspaceError
from unbake.service.api_schemas import DeletionRequestBody, ErrorBody
from unbake.service.policy import Limits


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
