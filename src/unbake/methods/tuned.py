"""Tuned defaults: a method's best parameters per forgetting scenario, from a tuning study.

``unbake tune --method M --scenario S --out STUDY.json --write-defaults`` runs a study
(:mod:`unbake.bench.tune`) and records its best trial here, in the package data file
``tuned_defaults.json``, which ships in the wheel; ``unbake tune --workspace W`` tunes on
a workspace's own data and model and writes that workspace's own table
(:mod:`unbake.workspace.tuned_table`). ``unbake forget`` and the worker pick the
parameters through :func:`resolve`: a tuned default applies only where its study's
dataset, architecture and scenario match the request (:class:`RequestContext`), the
workspace's own table first, then the packaged one; elsewhere the code's defaults apply.
The user's own parameters override both, and the provenance says which defaults were
used and why. ``UNBAKE_TUNED_DEFAULTS=FILE`` reads another table instead of the packaged
one (its entries must match the request too).

>>> ctx = RequestContext(dataset="digits", model="mlp", scenario="class")
>>> params, origin = resolve("retrain", ctx, {"epochs": 2})
>>> defaults = origin["defaults"]
>>> params, defaults["source"]
({'epochs': 2}, 'code')
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from unbake._validation import validate_params
from unbake.exceptions import InvalidParameterError
from unbake.methods.base import METHODS

__all__ = [
    "ENV_VAR",
    "SCENARIOS",
    "RequestContext",
    "TunedDefaults",
    "check_table",
    "defaults_path",
    "read_table",
    "resolve",
    "scenario_of",
    "tuned_defaults",
]

#: The forgetting scenarios a method is tuned for.
SCENARIOS = ("random", "class")
#: The table's format version.
FORMAT = 1
#: Names a table to read instead of the packaged one.
ENV_VAR = "UNBAKE_TUNED_DEFAULTS"


@dataclass(frozen=True)
class TunedDefaults:
    """One method's tuned parameters for one scenario, and the study they came from."""

    method: str
    scenario: str
    params: dict[str, Any]
    #: The study's path as recorded when it was written (repository-relative when it
    #: lies in the repository), and the sha256 of its bytes.
    study: str
    study_sha256: str
    dataset: str
    model: str
    #: The best trial's avg gap on validation, and the original's (doing nothing).
    score: float | None
    original_score: float | None
    best_trial: int
    trials: int
    seed: int

    def describe(self) -> str:
        """One line: what was tuned, where, and how well."""
        return (
            f"tuned for {self.scenario} forgetting on {self.dataset} with {self.model} "
            f"(study {self.study}, trial {self.best_trial} of {self.trials}: avg gap "
            f"{_fmt(self.score)} against doing nothing's {_fmt(self.original_score)})"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def defaults_path() -> Path:
    """The table read: ``$UNBAKE_TUNED_DEFAULTS`` if set, else the packaged file."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override)
    return Path(str(resources.files("unbake.methods") / "tuned_defaults.json"))


def scenario_of(*, forget_class: Any = None) -> str:
    """The scenario of a request: ``"class"`` when it forgets a class, else ``"random"``."""
    return "class" if forget_class is not None else "random"


def read_table(path: str | os.PathLike | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """The table ``{method: {scenario: entry}}`` (empty when the file does not exist)."""
    path = Path(path) if path is not None else defaults_path()
    if not path.is_file():
        return {}
    fix = "fix it, or rewrite it with `unbake tune ... --write-defaults`"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidParameterError(f"Cannot read tuned defaults {path} ({exc}); {fix}.") from None
    return check_table(data, str(path), fix)


def check_table(data: Any, where: str, fix: str) -> dict[str, dict[str, dict[str, Any]]]:
    """The ``methods`` table of a parsed format-1 document ``data``; else one line naming
    ``where`` it came from and the ``fix``."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InvalidParameterError(
            f"Tuned defaults {where} are not a format-{FORMAT} table; {fix}."
        )
    methods = data.get("methods")
    if not isinstance(methods, dict) or not all(isinstance(v, dict) for v in methods.values()):
        raise InvalidParameterError(f"Tuned defaults {where} have no 'methods' table; {fix}.")
    return methods


def tuned_defaults(
    method: str,
    scenario: str,
    *,
    path: str | os.PathLike | None = None,
    table: dict[str, dict[str, dict[str, Any]]] | None = None,
    where: str | None = None,
) -> TunedDefaults | None:
    """``method``'s tuned defaults for ``scenario``, checked against its constraints;
    ``None`` when the table has none. ``table`` (already read, from ``where``) instead of
    the file at ``path``."""
    if scenario not in SCENARIOS:
        raise InvalidParameterError(
            f"The scenario must be one of {list(SCENARIOS)}. Got {scenario!r} instead."
        )
    if table is None:
        table, where = read_table(path), str(path or defaults_path())
    entry = table.get(method, {}).get(scenario)
    if entry is None:
        return None
    try:
        tuned = TunedDefaults(method=method, scenario=scenario, **entry)
    except TypeError as exc:
        raise InvalidParameterError(
            f"The tuned defaults of {method!r} ({scenario}) in {where} are malformed ({exc}); "
            "rewrite them with `unbake tune ... --write-defaults`."
        ) from None
    constraints = METHODS.get(method)._parameter_constraints
    stale = sorted(set(tuned.params) - set(constraints))
    if stale:
        raise InvalidParameterError(
            f"The tuned defaults of {method!r} ({scenario}) in {where} name {stale[0]!r}, "
            f"which {method} no longer has; rerun `unbake tune --method {method} --scenario "
            f"{scenario} --write-defaults` or remove the entry."
        )
    validate_params(tuned.params, constraints, method)
    return tuned


@dataclass(frozen=True)
class RequestContext:
    """What a tuned default must match to apply: the data, the model and the scenario.

    ``dataset`` is the dataset's name and ``model`` the model's description (its
    architecture, with the strategy when not monolithic) as a study records them
    (``None``: unknown, so nothing tuned matches). ``table`` is the workspace's own table
    (``{method: {scenario: entry}}``, preferred over the packaged one), read from
    ``table_source``; ``workspace`` names the folder in the suggested ``unbake tune``.
    """

    dataset: str | None
    model: str | None
    scenario: str
    table: dict[str, dict[str, dict[str, Any]]] | None = None
    table_source: str = ""
    workspace: str = ""


def _mismatch(tuned: TunedDefaults, ctx: RequestContext) -> str | None:
    """Why ``tuned`` does not fit ``ctx`` (``None``: it fits)."""
    if (tuned.dataset, tuned.model) == (ctx.dataset, ctx.model):
        return None
    return (
        f"were tuned on {tuned.dataset} with {tuned.model}, not on "
        f"{ctx.dataset or 'this data'} with {ctx.model or 'this model'}"
    )


def _candidates(method: str, ctx: RequestContext, path) -> list[tuple[str, TunedDefaults | None]]:
    """(source, entry) of each table, the workspace's own first."""
    out = []
    if ctx.table is not None:
        out.append(
            (
                "workspace",
                tuned_defaults(method, ctx.scenario, table=ctx.table, where=ctx.table_source),
            )
        )
    out.append(("packaged", tuned_defaults(method, ctx.scenario, path=path)))
    return out


def resolve(
    method: str,
    context: RequestContext,
    params: dict[str, Any] | None = None,
    *,
    use_tuned: bool = True,
    path: str | os.PathLike | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parameters to run ``method`` with on a request in ``context``, and their origin.

    The first tuned defaults that match ``context`` (the workspace's own table, then the
    packaged one, or the table at ``path``), with the user's ``params`` on top; where
    none matches, the code's defaults under ``params``. The second value is the request
    record's info: ``defaults`` (``source``: ``"workspace"``, ``"packaged"``, ``"code"``
    or ``"given"`` when the user set every tuned parameter; ``why``: one sentence) and,
    where tuned values were used, ``tuned_defaults`` (the entry, with ``applied``, the
    tuned values used, ``overridden``, the tuned keys the user set, and ``summary``).
    """
    if params is not None and not isinstance(params, dict):
        raise InvalidParameterError(f"Method parameters must be a mapping; got {params!r:.80}.")
    params = dict(params or {})
    if not use_tuned:
        return params, _origin("code", "--no-tuned (tuned=False) keeps the code's defaults")
    misses = []
    for source, tuned in _candidates(method, context, path):
        if tuned is None:
            continue
        why = _mismatch(tuned, context)
        if why is not None:
            misses.append(
                f"the {source} tuned defaults of {method} for {context.scenario} forgetting {why}"
            )
            continue
        applied = {k: v for k, v in tuned.params.items() if k not in params}
        if not applied:
            return params, _origin("given", "the given parameters set every tuned one")
        record = {
            **tuned.to_dict(),
            "source": source,
            "applied": applied,
            "overridden": sorted(set(tuned.params) & set(params)),
            "summary": tuned.describe(),
        }
        return {**applied, **params}, {
            **_origin(source, f"the {source} tuned defaults match: {tuned.describe()}"),
            "tuned_defaults": record,
        }
    if not misses:
        return params, _origin(
            "code", f"{method} has no tuned defaults for {context.scenario} forgetting"
        )
    where = f" --workspace {context.workspace}" if context.workspace else " --workspace DIR"
    hint = f"`unbake tune{where} --method {method} --scenario {context.scenario}`"
    why = f"the code's defaults: {'; '.join(misses)} (tune them for this data with {hint})"
    return params, _origin("code", why, skipped=len(misses))


def _origin(source: str, why: str, *, skipped: int = 0) -> dict[str, Any]:
    """The ``defaults`` record; ``skipped`` counts the tuned entries that did not match."""
    return {"defaults": {"source": source, "why": why, "skipped": skipped}}
