"""``unbake demo``: the whole life cycle on scikit-learn's digits, in one command."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any

import typer

from unbake.cli._common import (
    DEFAULT_WS,
    JsonOpt,
    ThreadsOpt,
    WorkspaceOpt,
    _apply_threads,
    _emit_json,
    _handle_errors,
    _metric_columns,
    _table,
    console,
)
from unbake.exceptions import InvalidParameterError

if TYPE_CHECKING:  # the CLI imports torch (through unbake.models) only when it runs
    pass

# --- demo ----------------------------------------------------------------------------


@_handle_errors
def demo(
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "digits",
    model: Annotated[str, typer.Option(help="Architecture of the main model.")] = "mlp",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 20,
    forget_fraction: Annotated[
        float, typer.Option(help="Share of the training set to forget (random scenario).")
    ] = 0.1,
    forget_class: Annotated[
        str,
        typer.Option("--class", help="Class to forget, by name or index (class-wise scenario)."),
    ] = "0",
    scenario: Annotated[str, typer.Option(help="random, class, or both (default).")] = "both",
    seed: Annotated[int, typer.Option(help="Seed for training and the forget set.")] = 0,
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated methods (default: every registered one).")
    ] = None,
    threads: ThreadsOpt = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """Train, forget a random 10% and then one class, compare every method against
    retraining in each scenario, and report."""
    _apply_threads(threads)
    from unbake.data import load_dataset
    from unbake.evaluation.compare import compare_methods
    from unbake.methods import METHODS
    from unbake.report import plot_comparison
    from unbake.training import TrainConfig
    from unbake.workspace.atomic import atomic_write_text
    from unbake.workspace.workspace import check_workspace_path

    check_workspace_path(workspace)  # before the long run, not after it
    if not 0 < forget_fraction < 1:
        raise InvalidParameterError(
            f"--forget-fraction must be in (0, 1). Got {forget_fraction} instead."
        )
    if scenario not in ("random", "class", "both"):
        raise InvalidParameterError(
            f"--scenario must be random, class or both. Got {scenario!r} instead."
        )
    chosen = [m.strip() for m in methods.split(",")] if methods else None
    for name in chosen or []:
        METHODS.get(name)
    ds = load_dataset(dataset)
    config = TrainConfig.parse(epochs=epochs)
    runs: dict[str, dict[str, Any]] = {
        "random": {"forget_fraction": forget_fraction},
        "class": {"forget_class": forget_class},
    }
    if scenario != "both":
        runs = {scenario: runs[scenario]}

    def show(row):
        if not as_json:
            console.print(f"  {row.method:<14} {row.model:<28} done in {row.seconds:.2f}s")

    workspace.mkdir(parents=True, exist_ok=True)
    reports = {}
    for name, kwargs in runs.items():
        if not as_json:
            what = (
                f"{forget_fraction:.0%} at random" if name == "random" else f"class {forget_class}"
            )
            console.print(
                f"Training {model} on {ds.name} ({len(ds.train)} train / {len(ds.val)} "
                f"validation / {len(ds.test)} test), "
                f"forgetting {what} (seed {seed}) and comparing methods…"
            )
        report = compare_methods(
            ds, methods=chosen, model=model, config=config, seed=seed, on_row=show, **kwargs
        )
        stem = "report" if name == "random" else f"report-{name}"
        atomic_write_text(workspace / f"{stem}.json", report.to_json() + "\n")
        atomic_write_text(workspace / f"{stem}.md", report.to_markdown())
        plot_comparison(report, workspace / f"{stem}.png")
        reports[name] = report
    if as_json:
        _emit_json({name: r.to_dict() for name, r in reports.items()})
        return
    cols = _metric_columns()
    for report in reports.values():
        verdicts = report.verdicts()
        console.print(
            _table(
                f"unbake demo on {ds.name}: forget {report.describe_scenario()} "
                "(avg gap and speedup against retraining the same model)",
                [
                    "method",
                    "model",
                    *(c.label for c in cols),
                    "avg gap",
                    "vs original",
                    "seconds",
                    "speedup",
                ],
                [
                    [
                        r.method,
                        r.model,
                        *(r.metrics.get(c.key, float("nan")) for c in cols),
                        r.avg_gap,
                        verdicts.get(r.method, "—"),
                        f"{r.seconds:.3f}" if math.isfinite(r.seconds) else "—",
                        f"{r.speedup:.1f}×" if math.isfinite(r.speedup) else "—",
                    ]
                    for r in report.rows
                ],
            )
        )
        behind = [m for m, v in verdicts.items() if v == "no"]
        if behind:
            console.print(f"Not better than doing nothing here: {', '.join(behind)}.")
        console.print(report.timing_note())
    strength = next(iter(reports.values())).attack_strength
    console.print(
        f"Attack strength (loss-threshold MIA, balanced accuracy on retain vs test): "
        f'{strength:.1f}% (50% = the attack sees nothing). "vs original": better = at most '
        "half of doing nothing's avg gap; slightly = below it; no = not below it."
    )
    console.print(f"Wrote report*.json, report*.md and report*.png to {workspace}.")
