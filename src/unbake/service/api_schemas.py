"""The REST API's request and response bodies (pydantic), as its OpenAPI schema shows them."""

# No ``from __future__ import annotations``: pydantic and FastAPI read the annotations.
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr

from unbake.service.supervisor import WORKER_STATES
from unbake.workspace import ledger

#: The most rows one prediction call takes.
MAX_PREDICT_ROWS = 1024


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
