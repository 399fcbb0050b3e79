"""``unbake tune --workspace``: tune a method on a workspace's own data and model.

The study (:func:`unbake.bench.tune.tune`) runs on the workspace's active training
samples (never a forgotten one) and its validation rows, with the current model's
architecture and training configuration, and its best trial becomes the workspace's own
tuned defaults for the scenario (:mod:`unbake.workspace.tuned_table`), which
``unbake forget`` then prefers over the packaged table. Nothing is cached: the original
and retrain reference a study trains saw the data, so they are not kept. The study runs
without the workspace's lock (deletions go on meanwhile); only the write takes it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from unbake.bench.tune import Study, best_entry, tune
from unbake.exceptions import InvalidParameterError
from unbake.methods.tuned import TunedDefaults
from unbake.workspace import tuned_table
from unbake.workspace.workspace import Workspace

__all__ = ["tune_workspace"]


def tune_workspace(
    ws: Workspace,
    method: str,
    *,
    trials: int = 20,
    scenario: str = "random",
    forget_class: Any = None,
    time_fraction: float = 0.2,
    seed: int = 0,
    fixed: dict[str, Any] | None = None,
    device=None,
) -> tuple[Study, TunedDefaults]:
    """Tune ``method`` on ``ws``'s data and current model, and record the best trial as
    ``ws``'s own tuned defaults for ``scenario``; returns the study and the entry.

    A study whose best trial does not beat doing nothing is refused and records nothing
    (:func:`unbake.bench.tune.best_entry`).
    """
    ws.check_writable()
    model = ws.load_model()
    if model.strategy != "monolithic":
        raise InvalidParameterError(
            f"unbake tune --workspace tunes on a monolithic model, and {ws.root}'s current "
            f"model is {model.describe()}; train a monolithic one (`unbake train`) to tune on."
        )
    tuned_table.read_table(ws)  # a table that fails its hash: refused before the study
    active, _ = ws.active_and_forgotten()
    val, test = ws.held_out()
    data = replace(ws.dataset(), train=active, val=val, test=test)
    study = tune(
        data,
        method,
        trials=trials,
        scenario=scenario,
        forget_class=forget_class,
        model=model.spec,
        config=model.config,
        time_fraction=time_fraction,
        seed=seed,
        fixed=fixed,
        device=device,
    )
    entry = best_entry(study)
    with ws.lock():  # only to write: a study takes minutes, and deletions go on meanwhile
        entry = tuned_table.write_entry(ws, entry, study.to_json())
    return study, entry
