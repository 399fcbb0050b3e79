"""The planner: the one place where each decision about a deletion request is made.

A request arrives as a :class:`DeletionRequest`, whoever files it (``unbake forget``,
:func:`unbake.service.apply.forget`, ``POST /v1/requests`` or
:meth:`DeletionService.submit <unbake.service.deletion.DeletionService.submit>`), and
every path asks the functions below, so the CLI and the worker cannot decide apart:

========================================  ===========================================
decision                                  where
========================================  ===========================================
its form (exactly one selector, types,    :meth:`DeletionRequest.check`
method and parameters, seed, device)
the method when none is named             :func:`default_method` (the model's exact or
                                          certified family, else ``retrain``); with a
                                          policy, the policy (:func:`plan`)
the parameters (tuned defaults under      :func:`plan`
the request's own)
which samples it selects, and why it      :func:`select` (an operator's request names
selects none                              the cause; a submitter's does not)
training vs held-out rows                 :func:`part_of`
an empty retain set                       :func:`check_retain`
its deadline                              :func:`deadline_days`, then
                                          :meth:`RequestStore.deadline_for
                                          <unbake.workspace.request_store.RequestStore.deadline_for>`
its idempotency key                       :meth:`RequestStore.fingerprint` and
                                          :meth:`RequestStore.known_key`
========================================  ===========================================

The ledger transitions are the request store's (:mod:`unbake.workspace.request_store`),
written once each.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from unbake.data import Samples
from unbake.exceptions import (
    EmptyRequestError,
    InvalidParameterError,
    UnbakeError,
    without_paths,
)
from unbake.methods import METHODS, Unlearner
from unbake.methods.tuned import RequestContext, resolve, scenario_of
from unbake.training import resolve_device
from unbake.workspace.request_store import RequestPart, Ticket
from unbake.workspace.workspace import ForgetSelector, Workspace

if TYPE_CHECKING:
    from unbake.service.policy import Policy

__all__ = [
    "DeletionRequest",
    "Plan",
    "check_retain",
    "deadline_days",
    "default_method",
    "part_of",
    "plan",
    "select",
]


@dataclass(frozen=True)
class DeletionRequest:
    """A deletion request, as every path files it.

    Exactly one selector: ``sample_ids``, ``subject`` or ``class_label`` (a class name
    or index). ``method`` (with ``params``) overrides the policy and the default;
    ``tuned`` starts the method from its tuned defaults (where they match the data and
    the model); ``allow_one_class`` lets it leave a one-class retain set. ``reason`` is
    personal data
    (stored sealed, shredded after its retention); ``purpose`` a word such as
    ``"cleaning"``, recorded in the clear.
    """

    sample_ids: tuple[str, ...] | None = None
    subject: str | None = None
    class_label: str | int | None = None
    method: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: int | None = None
    device: str | None = None
    model_id: str | None = None
    idempotency_key: str | None = None
    reason: str | None = None
    submitted_by: str | None = None
    purpose: str | None = None
    tuned: bool = True
    allow_one_class: bool = False

    @classmethod
    def of(
        cls,
        *,
        sample_ids: Sequence[str] | None = None,
        params: Mapping[str, Any] | None = None,
        check: bool = True,
        **fields: Any,
    ) -> DeletionRequest:
        """A request from loosely typed input (a list of IDs, ``params=None``), checked
        (:meth:`check`) unless not ``check``."""
        if isinstance(sample_ids, str):
            raise InvalidParameterError(
                f"sample_ids must be a list of IDs, not the string {sample_ids!r}."
            )
        if params is not None and not isinstance(params, Mapping):
            raise InvalidParameterError(f"Method parameters must be a mapping; got {params!r}.")
        ids = None if sample_ids is None else tuple(dict.fromkeys(str(i) for i in sample_ids))
        request = cls(sample_ids=ids, params=dict(params or {}), **fields)
        if check:
            request.check()
        return request

    def check(self) -> None:
        """Refuse what is wrong whatever the data holds, with a typed :class:`UnbakeError`."""
        named = [x is not None for x in (self.sample_ids, self.subject, self.class_label)]
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
        if self.sample_ids is not None and not self.sample_ids:
            raise EmptyRequestError(
                "The deletion request selects no samples; name at least one sample ID."
            )
        if self.subject is not None and (not isinstance(self.subject, str) or not self.subject):
            raise InvalidParameterError(
                f"The subject must be a non-empty string; got {self.subject!r}."
            )
        for name in ("reason", "submitted_by", "purpose"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidParameterError(
                    f"The request's {name} must be a string; got {value!r}."
                )
        if self.method is not None:  # an unknown method or bad parameters: refused now
            METHODS.create_checked(self.method, self.params)
        elif self.params:
            raise InvalidParameterError("Method parameters need a method; name the method too.")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise InvalidParameterError(f"The seed must be a whole number; got {self.seed!r}.")
        if self.device is not None:
            resolve_device(self.device)

    def selector(self, ws: Workspace) -> ForgetSelector:
        """What it names, with the class by its name (an unknown class is refused)."""
        label = None if self.class_label is None else ws.class_name(self.class_label)
        return ForgetSelector(self.sample_ids or (), self.subject, label)

    def key(self, ws: Workspace) -> tuple[str, str] | None:
        """(keyed hash of its idempotency key, of what it asks), or ``None`` without a key."""
        if self.idempotency_key is None:
            return None
        if not isinstance(self.idempotency_key, str) or not self.idempotency_key:
            raise InvalidParameterError(
                f"The idempotency key must be a non-empty string; got {self.idempotency_key!r}."
            )
        recorded = self.selector(ws).to_dict(ws.subject_hmac)
        return ws.request_store.fingerprint(
            self.idempotency_key,
            list(self.sample_ids or ()),
            recorded,
            self.method,
            dict(self.params) or None,
            self.model_id,
        )


@dataclass(frozen=True)
class Plan:
    """How a request is applied: what the worker batches by, and the CLI runs at once.

    ``method`` is ``None`` when a policy decides (it tries its steps in order).
    ``params`` and ``defaults`` (which defaults were used and why, with the tuned ones'
    study: :func:`unbake.methods.tuned.resolve`) are canonical JSON, so that plans compare
    and hash.
    """

    method: str | None
    params: str = "{}"
    seed: int | None = None
    device: str | None = None
    model_id: str | None = None
    defaults: str | None = None

    def unlearner(self) -> Unlearner:
        """The method, built and checked with the plan's parameters."""
        if self.method is None:
            raise InvalidParameterError("A plan under a policy has no single method to build.")
        return METHODS.create_checked(self.method, json.loads(self.params))

    def info(self) -> dict[str, Any]:
        """What the request's record says of the plan: which defaults were used, and why
        (``defaults``; ``tuned_defaults`` for tuned ones)."""
        return json.loads(self.defaults) if self.defaults else {}


def default_method(strategy: str) -> str:
    """The method for a request that names none, without a policy: the exact or certified
    method of the model's own family (the one whose tags require its training strategy:
    ``sisa`` for a SISA model, ``certified`` for a certified one), else ``retrain``."""
    for name in METHODS:
        tags = METHODS.get(name).tags
        if tags.requires_strategy == strategy and (tags.exact or tags.certified):
            return name
    return "retrain"


def plan(
    request: DeletionRequest,
    *,
    strategy: str,
    policy: Policy | None = None,
    context: RequestContext | None = None,
) -> Plan:
    """The plan of ``request`` for a model trained with ``strategy``.

    The request's own method wins; else ``policy`` decides (method ``None``); else
    :func:`default_method`. The method starts from the tuned defaults that match
    ``context`` (the workspace's data, the model and the scenario:
    :func:`unbake.workspace.tuned_table.request_context`; none given: nothing tuned
    matches) unless ``request.tuned`` is off, under the request's own parameters
    (:func:`unbake.methods.tuned.resolve`).
    """
    if request.method is None and policy is not None:
        return Plan(None, seed=request.seed, device=request.device, model_id=request.model_id)
    if not isinstance(request.params, Mapping):  # a queued row no submitter could have filed
        raise InvalidParameterError(
            f"Method parameters must be a mapping; got {request.params!r:.80}."
        )
    method = request.method or default_method(strategy)
    if context is None:
        context = RequestContext(None, None, scenario_of(forget_class=request.class_label))
    params, defaults = resolve(
        method,
        context,
        dict(request.params) if request.method else {},
        use_tuned=request.tuned,
    )
    return Plan(
        method,
        json.dumps(params, sort_keys=True, default=str),
        request.seed,
        request.device,
        request.model_id,
        json.dumps(defaults, default=str),  # in resolve's order, which the output shows
    )


def deadline_days(policy: Policy | None) -> int | None:
    """The days a request has to be done: the policy's ``deadline_days`` (``None``: the
    workspace's, else one month; see :meth:`RequestStore.deadline_for`)."""
    return policy.deadline_days if policy is not None else None


#: Why the worker rejects a request that selects nothing: said of that request only,
#: naming no sample, request or submitter (a submitter must not learn who is in the data).
NO_SUBJECT = (
    "No active sample belongs to the subject it names (it has none in this workspace, or "
    "they were forgotten before the request was received); there is nothing to forget."
)
GONE_SINCE = "Every sample it names was forgotten since it was received (nothing left)."


def _inactive(ws: Workspace, names: Sequence[str], status: Mapping[str, str], since: str) -> str:
    inactive = [i for i in names if status.get(i) != "active"]
    missing = len(inactive) - len(ws.sample_store.forgotten_since(inactive, since))
    if not missing:
        return ""
    return (
        f"{missing} of the {len(names)} sample IDs it names are not active samples "
        "(unknown to this workspace, or forgotten before the request was received); "
        "file a new request without them."
    )


def select(
    ws: Workspace,
    selector: ForgetSelector,
    active: Samples,
    *,
    reveal: bool,
    named: Sequence[str] = (),
    received_at: str = "",
    status: Mapping[str, str] | None = None,
) -> list[str] | str:
    """The IDs a request selects, or why it selects none (a string).

    ``reveal``: an operator's synchronous request, which is refused at once with the
    cause (unknown or forgotten IDs, named; :meth:`Workspace.select`), raising a typed
    :class:`UnbakeError`. Otherwise a submitter's queued request: ``named`` are the IDs
    it named (a subject's: those it had when received at ``received_at``), and an ID
    forgotten since then by another request is skipped, not held against it; the reason
    returned names no sample and no other request.
    """
    if reveal:
        return ws.select(selector, active=active)
    status = ws.sample_store.status() if status is None else status
    if selector.label is not None:
        try:
            return ws.select(ForgetSelector(label=selector.label), active=active)
        except EmptyRequestError:
            return f"No active sample of class {selector.label!r} is left to forget."
        except UnbakeError as exc:
            return without_paths(str(exc), (ws.root,))
    if not named:  # a subject with no active sample when the request arrived
        return NO_SUBJECT
    why = _inactive(ws, named, status, received_at)
    if why:
        return why
    return [i for i in named if status.get(i) == "active"]


def part_of(
    ticket: Ticket,
    ids: Sequence[str],
    split_of: Mapping[str, str],
    *,
    reason: str | None = None,
    submitted_by: str | None = None,
) -> RequestPart:
    """``ticket``'s share of a run: its IDs split into training and held-out rows."""
    return RequestPart(
        ticket,
        [i for i in ids if split_of[i] == "train"],
        [i for i in ids if split_of[i] != "train"],
        submitted_by,
        reason,
    )


def check_retain(n_forget: int, n_retain: int, unlearner: Unlearner) -> None:
    """Refuse a run that would leave no training sample (nothing to keep or verify)."""
    if n_retain == 0:
        reads = " (and it reads the retain set)" if unlearner.tags.needs_retain_data else ""
        raise InvalidParameterError(
            f"The request removes every remaining training sample ({n_forget}), so "
            f"no model would be left to keep or verify with {unlearner.name!r}{reads}; forget "
            "fewer samples."
        )
