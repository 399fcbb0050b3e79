"""Tuned defaults: a method's best parameters per forgetting scenario, from a tuning study.

``unbake tune --method M --scenario S --out STUDY.json --write-defaults`` runs a study
(:mod:`unbake.bench.tune`) and records its best trial here, in the package data file
``tuned_defaults.json``, which ships in the wheel. ``unbake forget`` and the benchmarks
read it through :func:`resolve_params`: the tuned parameters of the request's scenario
(``"class"`` when a whole class is forgotten, ``"random"`` otherwise) replace the code's
defaults, the user's own parameters override both, and the result says which defaults
were used and which study they came from. A method without an entry keeps the defaults
in its code. ``UNBAKE_TUNED_DEFAULTS=FILE`` reads another table (for example one tuned on
your own data).

>>> resolve_params("retrain", {"epochs": 2}, "random")
({'epochs': 2}, None)
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
    "TunedDefaults",
    "defaults_path",
    "read_table",
    "resolve_params",
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
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InvalidParameterError(
            f"Tuned defaults {path} are not a format-{FORMAT} table; {fix}."
        )
    methods = data.get("methods")
    if not isinstance(methods, dict) or not all(isinstance(v, dict) for v in methods.values()):
        raise InvalidParameterError(f"Tuned defaults {path} have no 'methods' table; {fix}.")
    return methods


def tuned_defaults(
    method: str, scenario: str, *, path: str | os.PathLike | None = None
) -> TunedDefaults | None:
    """``method``'s tuned defaults for ``scenario``, checked against its constraints;
    ``None`` when the table has none."""
    if scenario not in SCENARIOS:
        raise InvalidParameterError(
            f"The scenario must be one of {list(SCENARIOS)}. Got {scenario!r} instead."
        )
    entry = read_table(path).get(method, {}).get(scenario)
    if entry is None:
        return None
    where = path or defaults_path()
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


def resolve_params(
    method: str,
    params: dict[str, Any] | None,
    scenario: str,
    *,
    use_tuned: bool = True,
    path: str | os.PathLike | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The parameters to run ``method`` with on a ``scenario`` request, and their origin.

    The tuned defaults for ``scenario`` (when ``use_tuned`` and the table has them), with
    the user's ``params`` on top. The second value is ``None`` when no tuned default was
    used (none exists, ``use_tuned`` is off, or the user set every tuned parameter);
    otherwise the entry, with ``applied`` (the tuned values used) and ``overridden``
    (the tuned keys the user set).
    """
    if params is not None and not isinstance(params, dict):
        raise InvalidParameterError(f"Method parameters must be a mapping; got {params!r:.80}.")
    params = dict(params or {})
    tuned = tuned_defaults(method, scenario, path=path) if use_tuned else None
    if tuned is None:
        return params, None
    applied = {k: v for k, v in tuned.params.items() if k not in params}
    if not applied:
        return params, None
    origin = {
        **tuned.to_dict(),
        "applied": applied,
        "overridden": sorted(set(tuned.params) & set(params)),
        "summary": tuned.describe(),
    }
    return {**applied, **params}, origin
