"""The policy's executor: try a model section's steps in order, accept the first whose
audit passes every threshold, else run the exact fallback (:mod:`unbake.service.policy`
holds the file's schema and its checks).

:func:`run_policy` is that decision, and nothing else: the caller supplies how to try a
step and how to audit its outcome, so the worker can stage models as it needs and the
logic is tested with plain functions.

>>> policy = parse_policy('''
... [batch]
... max_requests = 4
... max_seconds = 30
... [models.default]
... fallback = "retrain"
... [[models.default.steps]]
... method = "finetune"
... thresholds = { ra = { min = 90 } }
... ''')
>>> result = run_policy(
...     policy, ModelInfo("mlp"),
...     try_method=lambda step: Outcome(step.method),
...     audit=lambda step, outcome: {"ra": 85.0},
... )
>>> [(a.method, a.status) for a in result.attempts], result.attempts[0].reasons
([('finetune', 'rejected'), ('retrain', 'accepted')], ['ra = 85 < min 90'])
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from unbake.exceptions import UnbakeError
from unbake.service.policy import ModelInfo, Policy, Step, parse_policy  # noqa: F401 (the doctest)

__all__ = ["Attempt", "Outcome", "PolicyFailedError", "PolicyResult", "run_policy"]


@dataclass
class Outcome:
    """What trying a step produced: ``value`` (a result, a staged model) is the caller's."""

    value: Any = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Attempt:
    """One step tried: ``accepted``, ``rejected`` (a threshold missed), ``failed`` (the
    method or its audit raised) or ``skipped`` (the method does not apply to the model)."""

    step: Step
    status: Literal["accepted", "rejected", "failed", "skipped"]
    figures: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0
    audit_seconds: float = 0.0
    #: What the method raised (``failed``); not recorded, but chained to a failed fallback.
    error: Exception | None = field(default=None, repr=False, compare=False)

    @property
    def method(self) -> str:
        return self.step.method

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.step.method,
            "params": dict(self.step.params),
            "fallback": self.step.fallback,
            "status": self.status,
            "figures": dict(self.figures),
            "reasons": list(self.reasons),
            "seconds": self.seconds,
            "audit_seconds": self.audit_seconds,
        }


@dataclass
class PolicyResult:
    """What :func:`run_policy` did: every attempt in order, and the accepted outcome."""

    section: str
    attempts: list[Attempt]
    outcome: Outcome | None

    @property
    def accepted(self) -> Attempt | None:
        last = self.attempts[-1] if self.attempts else None
        return last if last is not None and last.status == "accepted" else None

    @property
    def fell_back(self) -> bool:
        return self.accepted is not None and self.accepted.step.fallback

    def to_dict(self) -> dict[str, Any]:
        chosen = self.accepted
        return {
            "section": self.section,
            "method": chosen.method if chosen else None,
            "params": dict(chosen.step.params) if chosen else None,
            "fell_back": self.fell_back,
            "attempts": [a.to_dict() for a in self.attempts],
        }


class PolicyFailedError(UnbakeError):
    """Even the exact fallback raised; ``result`` holds every attempt and its reason."""

    def __init__(self, message: str, result: PolicyResult) -> None:
        super().__init__(message)
        self.result = result


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _figures(raw: Mapping[str, Any]) -> dict[str, float]:
    return {
        str(k): float(v)
        for k, v in raw.items()
        if isinstance(v, numbers.Real) and not isinstance(v, bool)
    }


def _attempt(step: Step, try_method, audit) -> tuple[Attempt, Outcome | None]:
    """Run and audit one step. A step is accepted when its thresholds hold; the exact
    fallback is accepted once it ran (a failed audit is kept as its reason)."""
    start = time.perf_counter()
    try:
        outcome = try_method(step)
    except Exception as exc:
        seconds = time.perf_counter() - start
        attempt = Attempt(step, "failed", reasons=[_reason(exc)], seconds=seconds, error=exc)
        return attempt, None
    if not isinstance(outcome, Outcome):
        outcome = Outcome(outcome)
    attempt = Attempt(step, "accepted", seconds=time.perf_counter() - start)
    start = time.perf_counter()
    try:
        attempt.figures = _figures(audit(step, outcome))
    except Exception as exc:
        attempt.status, attempt.reasons = "failed", [f"the audit raised {_reason(exc)}"]
    else:
        attempt.reasons = [
            r for k, t in step.thresholds.items() if (r := t.violation(k, attempt.figures.get(k)))
        ]
        if attempt.reasons:
            attempt.status = "rejected"
    attempt.audit_seconds = time.perf_counter() - start
    if step.fallback:
        attempt.status = "accepted"
    return attempt, outcome


def run_policy(
    policy: Policy,
    model_info: ModelInfo,
    try_method: Callable[[Step], Outcome],
    audit: Callable[..., Mapping[str, Any]],
) -> PolicyResult:
    """Try the steps governing ``model_info`` in order; fall back to the exact method.

    ``try_method(step)`` runs ``step`` (``step.create()`` is the configured method) and
    returns an :class:`Outcome`; ``audit(step, outcome)`` returns the figures the step's
    thresholds name. A step is accepted when every threshold holds. One that raises, whose
    audit raises or lacks a figure, or that misses a threshold is rejected with the reason,
    and the next is tried; a step whose method does not apply to the model is skipped.
    The fallback is exact, so it is accepted whatever its audit says (its figures are
    still recorded); if it raises, :class:`PolicyFailedError` carries every attempt.
    """
    name, section = policy.section_for(model_info)
    plan = section.plan()
    attempts: list[Attempt] = []
    for step in plan[:-1]:
        reason = step.create().supports(model_info)  # type: ignore[arg-type]  # reads .strategy
        if reason:
            attempts.append(Attempt(step, "skipped", reasons=[reason]))
            continue
        attempt, outcome = _attempt(step, try_method, audit)
        attempts.append(attempt)
        if attempt.status == "accepted":
            return PolicyResult(name, attempts, outcome)
    fallback = plan[-1]
    attempt, outcome = _attempt(fallback, try_method, audit)
    attempts.append(attempt)
    result = PolicyResult(name, attempts, outcome)
    if outcome is None:
        tried = ", ".join(f"{a.method} {a.status}" for a in attempts[:-1]) or "no steps"
        raise PolicyFailedError(
            f"The policy's exact fallback {fallback.method!r} failed ({attempt.reasons[0]}) "
            f"after {tried}; fix that cause and retry the request.",
            result,
        ) from attempt.error
    return result
