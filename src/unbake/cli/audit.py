"""Audit and evaluation: ``evaluate``, ``log``, ``tune``, ``audit``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from unbake.cli._common import (
    DEFAULT_WS,
    DataDirOpt,
    JsonOpt,
    ThreadsOpt,
    WorkspaceOpt,
    _apply_threads,
    _emit_json,
    _handle_errors,
    _metric_columns,
    _table,
    console,
    parse_params,
)
from unbake.exceptions import InvalidParameterError

# --- evaluate / status / log ---------------------------------------------------------


@_handle_errors
def evaluate(
    model: Annotated[str | None, typer.Option(help="Model ID (default: the newest).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """FA (on everything forgotten so far), RA, TA and MIA of a model."""
    from unbake.service.apply import evaluate_model
    from unbake.workspace import Workspace

    with Workspace.open(workspace) as ws:
        row = ws.model_row(model)
        ev = evaluate_model(ws, row["model_id"])
    out = {"model_id": row["model_id"], **ev.to_dict()}
    if as_json:
        _emit_json(out)
        return
    console.print(
        _table(
            f"model {row['model_id']} ({row['description']})",
            ["metric", "", "value"],
            [
                [c.label, c.description, ev[c.key]]
                for c in _metric_columns(column_only=False)
                if c.key in ev
            ],
        )
    )


@_handle_errors
def log(workspace: WorkspaceOpt = DEFAULT_WS, as_json: JsonOpt = False) -> None:
    """Every deletion request: what was forgotten, when, how, at what cost, how well."""
    from unbake.workspace import Workspace

    with Workspace.open(workspace) as ws:
        reqs = ws.log()
    if as_json:
        _emit_json({"requests": reqs})
        return
    cols = _metric_columns()
    console.print(
        _table(
            "deletion requests",
            [
                "request",
                "when",
                "selector",
                "samples",
                "method",
                "exact",
                "before → after",
                "seconds",
                *(c.label for c in cols),
                "audit",
            ],
            [
                [
                    r["request_id"],
                    r["created_at"][:19],
                    _selector_cell(r),
                    _log_count(r),
                    r["method"],
                    bool(r["exact"]),
                    _log_models(r),
                    r["seconds"],
                    *((r["metrics"] or {}).get(c.key, "—") for c in cols),
                    _audit_cell(r.get("audit")),
                ]
                for r in reqs
            ],
        )
    )


def _selector_cell(r: dict[str, Any]) -> str:
    """The request's selector; a cleaning request shows its reason, not its ID list."""
    if (r["info"] or {}).get("reason") == "cleaning":
        return f"cleaning ({r['n_samples']} suspects)"
    return json.dumps(r["selector"])


def _log_count(r: dict[str, Any]) -> str:
    """Training samples unlearned, plus validation/test rows marked forgotten."""
    held = (r["info"] or {}).get("held_out", 0)
    return f"{r['n_samples']} + {held} held out" if held else str(r["n_samples"])


def _log_models(r: dict[str, Any]) -> str:
    if r["model_after"] == r["model_before"]:
        return "no model changed"
    return f"{r['hash_before'][:8]} → {(r['hash_after'] or '')[:8]}"


# --- tune / audit --------------------------------------------------------------------


def _audit_cell(record: dict[str, Any] | None) -> str:
    """``pass`` (indistinguishable) or ``flagged`` (distinguishable), or — if not audited."""
    if not record:
        return "—"
    return "flagged" if record["verdict"] == "distinguishable" else "pass"


@_handle_errors
def tune(
    method: Annotated[str, typer.Option(help="Method to tune (see `unbake methods`).")],
    trials: Annotated[int, typer.Option(help="Trial budget.")] = 20,
    scenario: Annotated[str, typer.Option(help="random (10% of training) or class.")] = "random",
    forget_class: Annotated[
        str | None, typer.Option(help="Class to forget in the class scenario (name or index).")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name (default digits).")] = None,
    model: Annotated[str | None, typer.Option(help="Model architecture (default mlp).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs of the original.")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Training batch size of the original.")
    ] = None,
    time_fraction: Annotated[
        float, typer.Option(help="Prune trials slower than this fraction of retrain time.")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the data, training and sampler.")] = 0,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Pin a parameter: key=value.")
    ] = None,
    data_dir: DataDirOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write the study's JSON here.")] = None,
    write_defaults: Annotated[
        bool,
        typer.Option(
            "--write-defaults",
            help="Record the best trial as the method's tuned defaults for this scenario "
            "(the table `unbake forget` reads; needs --out).",
        ),
    ] = False,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Keep the original and its retrain reference here for later studies."),
    ] = None,
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace",
            "-w",
            help="Tune on this workspace's own data and current model, and write its own "
            "tuned defaults (which `unbake forget` there prefers).",
        ),
    ] = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search a method's knobs with Optuna against retraining (validation, never test)."""
    _apply_threads(threads)
    options = {"trials": trials, "scenario": scenario, "forget_class": forget_class,
               "time_fraction": time_fraction, "seed": seed, "fixed": parse_params(param)}  # fmt: skip
    if workspace is not None:
        given = {"--dataset": dataset, "--model": model, "--epochs": epochs,
                 "--batch-size": batch_size, "--data-dir": data_dir, "--cache-dir": cache_dir,
                 "--write-defaults": write_defaults or None}  # fmt: skip
        clash = next((k for k, v in given.items() if v is not None), None)
        if clash is not None:
            raise InvalidParameterError(
                f"{clash} does not go with --workspace, which tunes on the workspace's own "
                f"data and model and writes its own table; drop {clash} or --workspace."
            )
        study, recorded = _tune_workspace(workspace, method, options)
        if out is not None:
            study.save(out)
        _report_study(
            study, recorded, None, out, as_json, f"the workspace's own table in {workspace}"
        )
        return
    study, recorded, refused = _tune_package(
        method, options, dataset or "digits", model or "mlp", epochs, batch_size, data_dir,
        out, write_defaults, cache_dir,
    )  # fmt: skip
    from unbake.methods.tuned import defaults_path

    _report_study(study, recorded, refused, out, as_json, str(defaults_path()))


def _tune_workspace(workspace: Path, method: str, options: dict[str, Any]):
    from unbake.bench.tune_workspace import tune_workspace
    from unbake.workspace import Workspace

    with Workspace.open(workspace) as ws:
        return tune_workspace(ws, method, **options)


def _tune_package(
    method, options, dataset, model, epochs, batch_size, data_dir, out, write_defaults, cache_dir
):
    """A study on a named dataset; with ``write_defaults``, the packaged table's entry."""
    from unbake.bench.tune import tune as run_tune
    from unbake.bench.tune import write_defaults as record_defaults
    from unbake.data import load_dataset
    from unbake.methods.tuned import read_table
    from unbake.training import TrainConfig

    if write_defaults:
        if out is None:
            raise InvalidParameterError(
                "--write-defaults needs --out STUDY.json: the defaults cite the study they "
                "came from (commit it under benchmarks/tuning/)."
            )
        read_table()  # an unreadable table fails now, not after the study
    config = TrainConfig.parse(epochs=epochs, batch_size=batch_size)
    ds = load_dataset(dataset, **({"data_dir": data_dir} if data_dir else {}))
    study = run_tune(ds, method, model=model, config=config, cache_dir=cache_dir, **options)
    if out is not None:
        study.save(out)
    recorded = refused = None
    if write_defaults and out is not None:  # --write-defaults without --out raised above
        try:
            recorded = record_defaults(study, out)
        except InvalidParameterError as exc:  # reported after the study's own output
            refused = exc
    return study, recorded, refused


def _report_study(study, recorded, refused, out, as_json: bool, table: str) -> None:
    """The study's trials and best, where its defaults were written; then any refusal."""
    if as_json:
        _emit_json({**study.to_dict(), "tuned_defaults": recorded and recorded.to_dict()})
        if refused:
            raise refused
        return
    best = study.best
    rows = [
        [t["number"], t["state"], t["score"], t["seconds"], json.dumps(t["params"])]
        for t in study.trials
    ]
    console.print(
        _table(
            f"tune {study.method} ({study.scenario})",
            ["#", "state", "avg gap", "s", "params"],
            rows,
        )
    )
    if best is None:
        console.print("No trial finished within the time budget; raise --time-fraction.")
    else:
        console.print(
            f"Best: trial {best['number']}, avg gap {best['score']:.2f} (original "
            f"{study.original_score}), {best['time_fraction']:.3f} × retrain time: {best['params']}"
        )
    if out:
        console.print(f"Wrote {out}.")
    if recorded is not None:
        console.print(
            f"Wrote the tuned defaults of {study.method} for {study.scenario} forgetting to "
            f"{table}: {recorded.params}, {recorded.describe()}."
        )
    if refused:
        raise refused


@_handle_errors
def audit(
    request: Annotated[
        str | None,
        typer.Option(help="Request ID (default: the latest deletion that changed a model)."),
    ] = None,
    references: Annotated[
        int, typer.Option(help="Reference models K (trained once, reused by later audits).")
    ] = 8,
    model: Annotated[
        str | None, typer.Option(help="Deployed model to score (default: the request's result).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the permutation test and sampling.")] = 0,
    backend: Annotated[str, typer.Option(help="Where references train: local or ray.")] = "local",
    workers: Annotated[int, typer.Option(help="References trained in parallel.")] = 1,
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """Is a request's unlearning distinguishable from retraining? U-LiRA against K references."""
    from unbake.service.audit import audit_request
    from unbake.workspace import Workspace

    with Workspace.open(workspace) as ws:
        report = audit_request(
            ws,
            request_id=request,
            references=references,
            model_id=model,
            seed=seed,
            backend=backend,
            workers=workers,
        )
    out = report.to_dict()
    if as_json:
        _emit_json(out)
        return
    if request is None:
        console.print(
            f"No --request given: auditing {report.stats['request_id']}, the latest deletion "
            "that changed a model."
        )
    console.print(f"{report.verdict}: {report.statement}")
    console.print(
        _table(
            f"audit of request {report.stats['request_id']} ({report.method})",
            ["statistic", "value"],
            [
                [k, f"{v:.4g}" if isinstance(v, float) else v]
                for k, v in report.stats.items()
                if k != "request_id"
            ],
        )
    )
    console.print("Recorded on the request (see `unbake log`).")
