"""The deletion policy: which methods to try on a model, what each must pass, the exact fallback.

A policy is a TOML file, validated on load (unknown keys, unknown methods or metrics,
parameters out of their declared range and impossible fallbacks are refused, each in
one line naming the key and the fix)::

    version = 1
    deadline_days = 30               # GDPR art. 12(3); leave out for one calendar month

    [batch]                          # a batch starts at N queued requests or after T seconds
    max_requests = 16
    max_seconds = 60

    [retry]                          # optional: a failing run is retried with backoff
    max_attempts = 3                 # then the request is failed, with its reason

    [limits]                         # what the REST service accepts (all optional)
    max_ids_per_request = 10000      # more IDs in one request need an operator token
    submitter_may_erase_class = false
    rate_per_minute = 600            # per token (leave out: no limit); 429 + Retry-After
    max_header_bytes = 16384         # larger headers: 431

    [models.sisa]                    # section names are yours; `match` picks the models
    match = { strategy = "sisa" }
    fallback = "sisa"                # exact: retrains only the shards that saw the data

    [models.default]                 # no `match`: every model no other section matches
    fallback = "retrain"
    [[models.default.steps]]         # tried in order (cheapest first)
    method = "finetune"
    params = { epochs = 2, lr = 0.001 }
    thresholds = { ra = { min = 90 }, mia = { max = 60 } }

A model is governed by the most specific section whose ``match`` it meets (architecture
and strategy over one of them, over none). Each step's method runs, the audit measures
it, and the step is accepted when every threshold holds (a threshold names a result of
the metric registry, :data:`unbake.evaluation.METRICS`). A step that raises, or whose
audit fails or misses a threshold, is rejected with the reason, and the next is tried;
when none is accepted, the section's exact ``fallback`` runs.

Running a policy is :mod:`unbake.service.policy_executor`'s (:func:`run_policy`).
"""

from __future__ import annotations

import math
import numbers
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from unbake._validation import validate_params
from unbake.evaluation import METRICS
from unbake.exceptions import InvalidParameterError, UnbakeError
from unbake.methods import METHODS, Unlearner
from unbake.models import MODELS, ModelSpec
from unbake.training import STRATEGIES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "BatchWindow",
    "Limits",
    "ModelInfo",
    "ModelPolicy",
    "Policy",
    "Retry",
    "Step",
    "Threshold",
    "check_policy",
    "load_policy",
    "parse_policy",
]


# --- what the policy reads about a model -----------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """A model as the policy sees it: its architecture (spec name) and training strategy."""

    architecture: str
    strategy: str = "monolithic"

    @classmethod
    def of(cls, model: Any) -> ModelInfo:
        """The info of a :class:`~unbake.training.TrainedModel`."""
        return cls(model.spec.name, model.strategy)

    @property
    def spec(self) -> ModelSpec:
        """The architecture as a spec: :meth:`Unlearner.supports` reads this like a model."""
        return ModelSpec(self.architecture)

    def describe(self) -> str:
        return f"{self.architecture} (strategy {self.strategy})"


# --- lookups that turn registry errors into validation messages ------------------------


def _method(name: str) -> type[Unlearner]:
    try:
        return METHODS.get(name)  # type: ignore[return-value]
    except UnbakeError as exc:
        raise ValueError(str(exc)) from None


def _exact_methods() -> list[str]:
    return [n for n in METHODS.available() if METHODS.get(n).tags.exact]  # type: ignore[attr-defined]


def _metric_of_result() -> dict[str, Any]:
    """Each declared result key and the metric class that computes it."""
    out = {}
    for name in METRICS.available():
        cls = METRICS.get(name)
        for result in cls.results:  # type: ignore[attr-defined]
            out[result.key] = cls
    return out


def _search_range_notes(method: str, params: Mapping[str, Any]) -> list[str]:
    """Values inside the declared constraints but outside the range `unbake tune` searches."""
    notes = []
    for key, value in params.items():
        knob = _method(method).search_space.get(key)
        if knob is None:
            continue
        if knob.choices:
            outside = value not in knob.choices
        else:
            outside = isinstance(value, numbers.Real) and not knob.low <= value <= knob.high
        if outside:
            edges = knob.choices or (knob.low, knob.high)
            notes.append(
                f"{method} {key}={value!r} lies outside the range `unbake tune` searches "
                f"({', '.join(map(str, edges))})"
            )
    return notes


# --- the file's schema -------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Threshold(_Strict):
    """Bounds one audit figure must lie within (inclusive)."""

    min: float | None = Field(None, description="a number, the least the figure may be")
    max: float | None = Field(None, description="a number, the most the figure may be")

    @model_validator(mode="after")
    def _bounds(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError("a threshold needs min, max or both, like { min = 90 }")
        for bound in (self.min, self.max):
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"a bound must be a finite number, not {bound}; give a number")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} exceeds max {self.max:g}; swap them")
        return self

    def violation(self, key: str, value: Any) -> str | None:
        """Why ``value`` of figure ``key`` fails this threshold, or ``None`` if it passes."""
        if value is None:
            return f"the audit gave no {key!r} figure"
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            return f"{key} is {value!r}, not a finite number"
        if self.min is not None and value < self.min:
            return f"{key} = {value:g} < min {self.min:g}"
        if self.max is not None and value > self.max:
            return f"{key} = {value:g} > max {self.max:g}"
        return None

    def describe(self, key: str) -> str:
        """``"ra >= 90"``, ``"mia <= 60"`` or ``"10 <= fa <= 20"``."""
        if self.min is not None and self.max is not None:
            return f"{self.min:g} <= {key} <= {self.max:g}"
        return f"{key} >= {self.min:g}" if self.min is not None else f"{key} <= {self.max:g}"


class StepConfig(_Strict):
    """One method to try, its parameters and the thresholds its audit must pass."""

    method: str = Field(description='a registered method, like method = "finetune"')
    params: dict[str, Any] = Field(
        default_factory=dict, description="the method's parameters, like { epochs = 2 }"
    )
    thresholds: dict[str, Threshold] = Field(
        default_factory=dict,
        description="audit figure -> bounds, like { ra = { min = 90 } }",
    )

    @field_validator("method")
    @classmethod
    def _known(cls, name: str) -> str:
        _method(name)
        return name

    @field_validator("params")
    @classmethod
    def _in_range(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("method")
        if name is None:
            return params
        try:
            METHODS.create(name, **params)  # unknown names: the method's parameters listed
            validate_params(params, _method(name)._parameter_constraints, name)
        except UnbakeError as exc:
            raise ValueError(str(exc)) from None
        return params

    @field_validator("thresholds")
    @classmethod
    def _known_metrics(cls, thresholds: dict[str, Threshold]) -> dict[str, Threshold]:
        known = _metric_of_result()
        for key in thresholds:
            if key not in known:
                raise ValueError(
                    f"no metric gives a figure {key!r}; threshold one of: "
                    f"{', '.join(sorted(known))} (unbake.evaluation.METRICS)"
                )
        return thresholds


class Match(_Strict):
    """Which models a section governs; an empty match governs every model."""

    architecture: str | None = Field(None, description='a model name, like "mlp"')
    strategy: str | None = Field(None, description='a training strategy, like "sisa"')

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, name: str | None) -> str | None:
        if name is not None and ":" not in name and name not in MODELS:
            raise ValueError(
                f"unknown architecture {name!r}; choose one of: {', '.join(MODELS.available())}, "
                "a 'module:function' factory or an hf: model"
            )
        return name

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, name: str | None) -> str | None:
        if name is not None and name not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES.available())}"
            )
        return name

    def matches(self, info: ModelInfo) -> bool:
        return self.architecture in (None, info.architecture) and self.strategy in (
            None,
            info.strategy,
        )

    @property
    def specificity(self) -> int:
        return (self.architecture is not None) + (self.strategy is not None)


class ModelPolicy(_Strict):
    """The steps to try on the models a section matches, and its exact fallback."""

    match: Match = Field(default_factory=Match, description="which models this section governs")
    steps: list[StepConfig] = Field(
        default_factory=list, description="methods to try in order of cost"
    )
    fallback: str = Field(
        description='the exact method used when every step fails, like fallback = "retrain"'
    )

    @field_validator("fallback")
    @classmethod
    def _exact(cls, name: str) -> str:
        tags = _method(name).tags
        if not tags.exact:
            raise ValueError(
                f"{name!r} is {tags.kind}, and the fallback must be exact; use one of: "
                f"{', '.join(_exact_methods())}"
            )
        return name

    @model_validator(mode="after")
    def _strategies_possible(self) -> ModelPolicy:
        general = [n for n in _exact_methods() if _method(n).tags.requires_strategy is None]
        named = [("fallback", self.fallback)]
        named += [(f"steps[{i}]", s.method) for i, s in enumerate(self.steps)]
        for where, name in named:
            need = _method(name).tags.requires_strategy
            if need is not None and self.match.strategy != need:
                alternative = (
                    f"use {' or '.join(map(repr, general))}"
                    if where == "fallback"
                    else ("drop the step")
                )
                raise ValueError(
                    f"{where} {name!r} works only on models trained with --strategy {need}, and "
                    f'this section also governs others; add match = {{ strategy = "{need}" }} '
                    f"or {alternative}"
                )
        return self

    def plan(self) -> list[Step]:
        """The steps in order, the fallback last."""
        steps = [
            Step(s.method, dict(s.params), dict(s.thresholds), position=i)
            for i, s in enumerate(self.steps)
        ]
        return [*steps, Step(self.fallback, {}, {}, fallback=True, position=len(steps))]


class BatchWindow(_Strict):
    """Requests are applied in batches: a batch starts at N queued or after T seconds."""

    max_requests: int = Field(ge=1, le=100_000, description="requests per batch, like 16")
    max_seconds: float = Field(
        gt=0, le=86_400, description="longest wait of a queued request, in seconds, like 60"
    )

    def due(self, queued: int, oldest_wait_seconds: float) -> bool:
        """Whether to start a batch now (``queued`` requests, the oldest queued that long).

        >>> BatchWindow(max_requests=3, max_seconds=10).due(1, 12.0)
        True
        """
        if queued <= 0:
            return False
        return queued >= self.max_requests or oldest_wait_seconds >= self.max_seconds


class Retry(_Strict):
    """How the worker retries a request whose run failed, or whose worker died under it.

    A run that raised an unexpected error (a full disk, memory, a bug: anything but an
    :class:`UnbakeError`, which a rerun would only repeat) goes back to the queue, to be
    tried again after ``backoff_seconds``, twice that, ... at most ``max_backoff_seconds``,
    until it has run ``max_attempts`` times; then it is ``failed`` with its reason. A
    request left ``applying`` by a worker that died (kill -9, out of memory) is resumed at
    once, up to ``max_recoveries`` times, so a request that kills every worker that takes
    it cannot hold the queue forever.

    >>> r = Retry()
    >>> r.max_attempts, [r.delay(n) for n in (1, 2, 3)]
    (3, [2.0, 4.0, 8.0])
    """

    max_attempts: int = Field(3, ge=1, le=100, description="runs of a failing request, like 3")
    backoff_seconds: float = Field(
        2.0, ge=0, le=86_400, description="wait before the first retry, in seconds, like 2"
    )
    max_backoff_seconds: float = Field(
        300.0, ge=0, le=86_400, description="the longest wait between retries, like 300"
    )
    max_recoveries: int = Field(
        10, ge=1, le=1000, description="times a request may outlive its worker, like 10"
    )

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed run."""
        return min(self.max_backoff_seconds, self.backoff_seconds * 2.0 ** (attempts - 1))


class Limits(_Strict):
    """What the REST service accepts (``[limits]``; every key optional, defaults below)."""

    max_ids_per_request: int = Field(
        10_000,
        ge=1,
        le=100_000,
        description="sample IDs a submitter's request may name; more need an operator token",
    )
    submitter_may_erase_class: bool = Field(
        False,
        description="whether a submitter token may erase a whole class (else only an operator)",
    )
    rate_per_minute: float | None = Field(
        None,
        gt=0,
        le=1_000_000,
        description="requests per minute one token may make (leave out: no limit)",
    )
    burst: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="requests one token may make at once before the rate applies "
        "(default: one minute's worth)",
    )
    max_header_bytes: int = Field(
        16_384,
        ge=1024,
        le=1 << 20,
        description="the largest total size of a request's headers, in bytes",
    )


class Policy(_Strict):
    """A deletion policy: its sections per model, the batch window and the deadline,
    and the REST service's limits."""

    version: Literal[1] = Field(1, description="the policy format, version = 1")
    deadline_days: int | None = Field(
        None,
        ge=1,
        le=92,
        description="days a request may take, at most 92 (GDPR art. 12(3): a month, "
        "extendable by two)",
    )
    batch: BatchWindow = Field(description="a [batch] table with max_requests and max_seconds")
    retry: Retry = Field(
        default_factory=Retry,
        description="a [retry] table with max_attempts, backoff_seconds, max_backoff_seconds "
        "and max_recoveries",
    )
    models: dict[str, ModelPolicy] = Field(
        min_length=1, description="one section per kind of model, like [models.default]"
    )
    limits: Limits = Field(
        default_factory=Limits, description="a [limits] table: what the REST service accepts"
    )

    @field_validator("models")
    @classmethod
    def _distinct_sections(cls, models: dict[str, ModelPolicy]) -> dict[str, ModelPolicy]:
        seen: dict[Match, str] = {}
        for name, section in models.items():
            if section.match in seen:
                raise ValueError(
                    f"sections {seen[section.match]!r} and {name!r} match the same models; "
                    "merge them or make one match narrower"
                )
            seen[section.match] = name
        return models

    def section_for(self, info: ModelInfo) -> tuple[str, ModelPolicy]:
        """The name and section governing ``info``: the most specific match."""
        matching = [(n, s) for n, s in self.models.items() if s.match.matches(info)]
        if not matching:
            raise InvalidParameterError(
                f"No section of the policy governs model {info.describe()}; add a "
                "[models.default] section without match, or one that matches it."
            )
        best = max(s.match.specificity for _, s in matching)
        top = [(n, s) for n, s in matching if s.match.specificity == best]
        if len(top) > 1:
            raise InvalidParameterError(
                f"Sections {top[0][0]!r} and {top[1][0]!r} govern model {info.describe()} "
                "equally; add a section matching both its architecture and strategy."
            )
        return top[0]


# --- loading -----------------------------------------------------------------------------


def _unwrap(tp: Any) -> Any:
    """``X`` for ``X | None``; anything else unchanged."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp


def _type_at(loc: tuple[Any, ...]) -> Any:
    """The schema type found at ``loc`` (keys and list indices) below :class:`Policy`."""
    tp: Any = Policy
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            found = tp.model_fields.get(part) if isinstance(part, str) else None
            if found is None:
                return None
            tp = found.annotation
        elif typing.get_origin(tp) in (list, dict):
            tp = typing.get_args(tp)[-1]
        else:
            return None
    return _unwrap(tp)


def _dotted(loc: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _first_error(exc: ValidationError, source: str) -> str:
    """The first validation error as one line naming the key and the fix."""
    # A misspelt key also makes its key missing: naming the misspelling is the better fix.
    err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    loc = tuple(err["loc"])
    where = _dotted(loc) or "(top level)"
    parent = _type_at(loc[:-1]) if loc else None
    fields = (
        parent.model_fields if isinstance(parent, type) and issubclass(parent, BaseModel) else {}
    )
    help_text = fields[loc[-1]].description if loc and loc[-1] in fields else None
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = ", ".join(fields) or "(none)"
        return f"{source}: unknown key {where}; remove it or fix its spelling (allowed: {allowed})."
    if kind == "missing":
        return f"{source}: {where} is missing; add it ({help_text or 'required'})."
    message = err["msg"].removeprefix("Value error, ").rstrip(".")
    if kind == "value_error":
        return f"{source}: {where}: {message}."
    expected = f" (expected: {help_text})" if help_text else ""
    return f"{source}: {where}: {message}, got {err.get('input')!r:.60}{expected}; fix the value."


def parse_policy(text: str, *, source: str = "policy") -> Policy:
    """Validate the TOML ``text`` of a policy; ``source`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidParameterError(f"{source} is not valid TOML ({exc}); fix it there.") from None
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise InvalidParameterError(_first_error(exc, source)) from None


def load_policy(path: str | Path) -> Policy:
    """Read and validate the policy file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidParameterError(
            f"Cannot read the policy {path} ({exc.strerror}); check the path."
        ) from None
    except UnicodeDecodeError:
        raise InvalidParameterError(
            f"The policy {path} is not UTF-8 text; save it as UTF-8."
        ) from None
    return parse_policy(text, source=str(path))


def check_policy(policy: Policy, info: ModelInfo) -> dict[str, Any]:
    """Check ``policy`` against a model; returns what would govern it (raises on a problem).

    Every method of the governing section must apply to the model (its strategy and its
    kind of inputs), and every threshold must name a figure the audit computes for it.
    """
    name, section = policy.section_for(info)
    metric_of = _metric_of_result()
    kind = "text" if info.architecture.startswith("hf:") else "arrays"
    notes: list[str] = []
    plan = section.plan()
    for step in plan:
        where = "fallback" if step.fallback else f"steps[{step.position}]"
        reason = step.create().supports(info)
        if reason:
            raise InvalidParameterError(f"models.{name}.{where}: {reason}.")
        for key in step.thresholds:
            if kind == "text" and "class_probs" in metric_of[key].needs:
                raise InvalidParameterError(
                    f"models.{name}.{where}.thresholds.{key}: the metric {metric_of[key].name!r} "
                    "needs class probabilities, which a language model does not give; "
                    "threshold fa, ra, ta or mia instead."
                )
        notes += _search_range_notes(step.method, step.params)
    return {
        "model": {"architecture": info.architecture, "strategy": info.strategy},
        "section": name,
        "version": policy.version,
        "deadline_days": policy.deadline_days,
        "batch": policy.batch.model_dump(),
        "retry": policy.retry.model_dump(),
        "limits": policy.limits.model_dump(),
        "steps": [s.to_dict() for s in plan],
        "sections": list(policy.models),
        "notes": notes,
    }


# --- the executor ------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One step of a plan: a method with its parameters and thresholds (none: fallback)."""

    method: str
    params: dict[str, Any]
    thresholds: dict[str, Threshold]
    fallback: bool = False
    position: int = 0

    def create(self) -> Unlearner:
        """The configured method (constructors do no work)."""
        return METHODS.create(self.method, **self.params)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "params": dict(self.params),
            "thresholds": {k: t.model_dump(exclude_none=True) for k, t in self.thresholds.items()},
            "checks": [t.describe(k) for k, t in self.thresholds.items()],
            "fallback": self.fallback,
            "guarantee": METHODS.get(self.method).tags.kind,  # type: ignore[attr-defined]
        }
