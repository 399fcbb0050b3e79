"""The ``unbake`` command line: a thin typer layer over the Python API.

Every command takes ``--workspace`` and ``--json``. A user error prints one line
(``error: <cause>; <fix>``) to stderr and exits with status 2, leaving the workspace
as it was.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from unbake._progress import enable_progress
from unbake.exceptions import InvalidParameterError, UnbakeError

app = typer.Typer(
    name="unbake",
    help="Remove training data from trained models, verify it is gone, and record it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# A pipe gets a wide console, so the comparison table is never truncated in logs.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

WorkspaceOpt = Annotated[Path, typer.Option("--workspace", "-w", help="Workspace folder.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout.")]
DEFAULT_WS = Path("unbake-workspace")


def _handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        enable_progress(None)
        try:
            return fn(*args, **kwargs)
        except UnbakeError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("error: interrupted; the workspace is unchanged.")
            raise typer.Exit(130) from None

    return wrapper


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values are parsed as JSON where possible (numbers, bools)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidParameterError(
                f"--param {item!r} is not key=value; write it like --param epochs=5."
            )
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _metric_columns(*, column_only: bool = True):
    """The declared metric results that compact tables show, in order."""
    from unbake.evaluation import result_specs

    return result_specs(column_only=column_only)


def _metric_line(values: dict[str, Any]) -> str:
    """``FA 98.00  RA 99.10 …`` for the compact columns present in ``values``."""
    return "  ".join(f"{c.label} {values[c.key]:.2f}" for c in _metric_columns() if c.key in values)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i < 2 else "right")
    for r in rows:
        table.add_row(*[f"{v:.2f}" if isinstance(v, float) else str(v) for v in r])
    return table


# --- demo ----------------------------------------------------------------------------


@app.command()
@_handle_errors
def demo(
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "digits",
    model: Annotated[str, typer.Option(help="Architecture of the main model.")] = "mlp",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 20,
    forget_fraction: Annotated[
        float, typer.Option(help="Share of the training set to forget.")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed for training and the forget set.")] = 0,
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated methods (default: every registered one).")
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """Train, forget a random 10%, compare every method against retraining, and report."""
    from unbake.data import load_dataset
    from unbake.evaluation.compare import compare_methods
    from unbake.methods import METHODS
    from unbake.report import plot_comparison
    from unbake.training import TrainConfig
    from unbake.workspace.atomic import atomic_write_text

    if not 0 < forget_fraction < 1:
        raise InvalidParameterError(
            f"--forget-fraction must be in (0, 1). Got {forget_fraction} instead."
        )
    chosen = [m.strip() for m in methods.split(",")] if methods else None
    for name in chosen or []:
        METHODS.get(name)
    ds = load_dataset(dataset)
    config = TrainConfig.parse(epochs=epochs)
    if not as_json:
        console.print(
            f"Training {model} on {ds.name} ({len(ds.train)} train / {len(ds.test)} test), "
            f"forgetting {forget_fraction:.0%} (seed {seed}) and comparing methods…"
        )

    def show(row):
        if not as_json:
            console.print(f"  {row.method:<14} {row.model:<28} done in {row.seconds:.2f}s")

    report = compare_methods(
        ds,
        methods=chosen,
        model=model,
        config=config,
        forget_fraction=forget_fraction,
        seed=seed,
        on_row=show,
    )
    workspace.mkdir(parents=True, exist_ok=True)
    atomic_write_text(workspace / "report.json", report.to_json() + "\n")
    atomic_write_text(workspace / "report.md", report.to_markdown())
    plot_comparison(report, workspace / "report.png")
    if as_json:
        _emit_json(report.to_dict())
        return
    cols = _metric_columns()
    table = _table(
        f"unbake demo on {ds.name}: forget {report.n_forget} of {report.n_train} "
        "(avg gap and speedup against retraining the same model)",
        ["method", "model", *(c.label for c in cols), "avg gap", "seconds", "speedup"],
        [
            [
                r.method,
                r.model,
                *(r.metrics.get(c.key, float("nan")) for c in cols),
                r.avg_gap,
                f"{r.seconds:.3f}",
                "—" if r.speedup != r.speedup else f"{r.speedup:.1f}×",
            ]
            for r in report.rows
        ],
    )
    console.print(table)
    console.print(
        f"Attack strength (loss-threshold MIA, balanced accuracy on retain vs test): "
        f"{report.attack_strength:.1f}% (50% = the attack sees nothing)."
    )
    console.print(f"Wrote report.json, report.md and report.png to {workspace}.")


# --- methods -------------------------------------------------------------------------


@app.command()
@_handle_errors
def methods(as_json: JsonOpt = False) -> None:
    """List the registered unlearning methods with their flags and parameters."""
    from unbake.methods import METHODS

    rows = []
    for name in METHODS.available():
        m = METHODS.create(name)
        rows.append(
            {
                "method": name,
                "exact": m.exact,
                "certified": m.certified,
                "needs_retain_data": m.needs_retain_data,
                "requires_strategy": m.requires_strategy,
                "params": m.get_params(),
                "summary": (type(m).__doc__ or "").strip().splitlines()[0],
            }
        )
    if as_json:
        _emit_json({"methods": rows})
        return
    console.print(
        _table(
            "unlearning methods",
            [
                "method",
                "exact",
                "certified",
                "retain data",
                "needs strategy",
                "parameters",
                "summary",
            ],
            [
                [
                    r["method"],
                    r["exact"],
                    r["certified"],
                    r["needs_retain_data"],
                    r["requires_strategy"] or "any",
                    ", ".join(f"{k}={v}" for k, v in r["params"].items()),
                    r["summary"],
                ]
                for r in rows
            ],
        )
    )


# --- train ---------------------------------------------------------------------------


@app.command()
@_handle_errors
def train(
    dataset: Annotated[
        str | None, typer.Option(help="Dataset (only when creating the workspace).")
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option(help="Folder holding the dataset's files.")
    ] = None,
    path: Annotated[
        str | None, typer.Option(help="CSV/Parquet file for --dataset csv|parquet.")
    ] = None,
    label: Annotated[str | None, typer.Option(help="Label column (csv/parquet).")] = None,
    id_column: Annotated[str | None, typer.Option(help="Sample ID column (csv/parquet).")] = None,
    subject_column: Annotated[
        str | None, typer.Option(help="Subject column (csv/parquet).")
    ] = None,
    model: Annotated[str, typer.Option(help="Architecture name or 'module:function'.")] = "mlp",
    strategy: Annotated[
        str, typer.Option(help="Training strategy: monolithic, sisa or certified.")
    ] = "monolithic",
    shards: Annotated[int | None, typer.Option(help="SISA shards.")] = None,
    slices: Annotated[int | None, typer.Option(help="SISA slices per shard.")] = None,
    backend: Annotated[
        str | None, typer.Option(help="Where SISA shards train: local or ray.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Shards trained in parallel (process pool or Ray).")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (default: start a local Ray).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd or adam.")] = None,
    schedule: Annotated[str | None, typer.Option(help="constant, cosine or step.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay.")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Strategy parameter key=value.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, or auto.")] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """Train a model on the workspace's active samples (creating the workspace if new)."""
    from unbake.training import TrainConfig
    from unbake.workspace import Workspace
    from unbake.workspace.workspace import CATALOG

    config = TrainConfig.parse(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        schedule=schedule,
        weight_decay=weight_decay,
    )
    strategy_params = parse_params(param)
    if shards is not None:
        strategy_params["shards"] = shards
    if slices is not None:
        strategy_params["slices"] = slices
    execution = {"backend": backend, "workers": workers, "ray_address": ray_address}
    strategy_params.update({k: v for k, v in execution.items() if v is not None})
    if path is not None:
        path = str(Path(path).resolve())  # the workspace reloads the source later, from anywhere
    options = {
        "data_dir": data_dir,
        "path": path,
        "label": label,
        "id_column": id_column,
        "subject_column": subject_column,
    }
    options = {k: v for k, v in options.items() if v is not None}
    created = False
    if (workspace / CATALOG).exists():
        ws = Workspace.open(workspace)
        held = ws.dataset_spec.get("name")
        if dataset is not None and held != dataset:
            ws.close()
            raise InvalidParameterError(
                f"Workspace {workspace} holds dataset {held!r}, not {dataset!r}; "
                "drop --dataset or use a new --workspace."
            )
    else:
        _check_strategy(strategy, strategy_params)
        ws = Workspace.create(workspace, dataset=dataset or "digits", dataset_options=options)
        created = True
    try:
        model_id = ws.train(
            model=model,
            config=config,
            seed=seed,
            strategy=strategy,
            strategy_params=strategy_params,
            device=device,
        )
        row = ws.catalog.model(model_id)
    except BaseException:
        ws.close()
        if created:
            _remove_workspace(workspace)
        raise
    ws.close()
    out = {
        "model_id": model_id,
        "description": row["description"],
        "sha256": row["sha256"],
        "n_train": row["n_train"],
        "workspace": str(workspace),
    }
    if as_json:
        _emit_json(out)
    else:
        console.print(
            f"Trained {row['description']} on {row['n_train']} samples → model {model_id} "
            f"(sha256 {row['sha256'][:12]}…) in {workspace}."
        )


def _check_strategy(strategy: str, params: dict[str, Any]) -> None:
    from unbake.training import STRATEGIES

    STRATEGIES.create(strategy, **params).validate()


def _remove_workspace(root: Path) -> None:
    """Undo a workspace this command created before failing, so nothing is left behind."""
    import shutil

    shutil.rmtree(root, ignore_errors=True)


# --- forget --------------------------------------------------------------------------


@app.command()
@_handle_errors
def forget(
    ids: Annotated[str | None, typer.Option(help="Comma-separated sample IDs.")] = None,
    ids_file: Annotated[Path | None, typer.Option(help="File with one sample ID per line.")] = None,
    subject: Annotated[
        str | None, typer.Option(help="Forget every sample of this subject.")
    ] = None,
    label: Annotated[int | None, typer.Option("--class", help="Forget a whole class.")] = None,
    method: Annotated[
        str, typer.Option(help="Unlearning method (see `unbake methods`).")
    ] = "retrain",
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Method parameter key=value.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model ID (default: the newest).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: the model's).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, or auto.")] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """File and apply a deletion request, then record it with its verification."""
    from unbake.workspace import Workspace

    id_list: list[str] = [i.strip() for i in ids.split(",") if i.strip()] if ids else []
    if ids_file is not None:
        try:
            id_list += [ln.strip() for ln in ids_file.read_text().splitlines() if ln.strip()]
        except OSError as exc:
            raise InvalidParameterError(
                f"Cannot read --ids-file {ids_file} ({exc.strerror}); check the path."
            ) from None
    params = parse_params(param)
    with Workspace.open(workspace) as ws:
        rec = ws.forget(
            ids=id_list,
            subject=subject,
            label=label,
            method=method,
            params=params,
            model_id=model,
            seed=seed,
            device=device,
        )
    out = {
        "request_id": rec.request_id,
        "method": rec.method,
        "n_samples": rec.n_samples,
        "model_before": rec.model_before,
        "model_after": rec.model_after,
        "seconds": round(rec.seconds, 4),
        "evaluation": rec.evaluation.to_dict(),
        "info": rec.result.info,
    }
    if as_json:
        _emit_json(out)
        return
    ev = rec.evaluation.to_dict()
    console.print(
        f"Request {rec.request_id}: forgot {rec.n_samples} samples with {rec.method} in "
        f"{rec.seconds:.2f}s → model {rec.model_after}.\n"
        f"  {_metric_line(ev)}  "
        f"(older models that saw the data were purged)"
    )


# --- evaluate / status / log ---------------------------------------------------------


@app.command()
@_handle_errors
def evaluate(
    model: Annotated[str | None, typer.Option(help="Model ID (default: the newest).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """FA (on everything forgotten so far), RA, TA and MIA of a model."""
    from unbake.workspace import Workspace

    with Workspace.open(workspace) as ws:
        row = ws._model_row(model)
        ev = ws.evaluate(row["model_id"])
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


@app.command()
@_handle_errors
def status(workspace: WorkspaceOpt = DEFAULT_WS, as_json: JsonOpt = False) -> None:
    """The workspace: its dataset, sample counts and models."""
    from unbake.workspace import Workspace

    with Workspace.open(workspace) as ws:
        st = ws.status()
    if as_json:
        _emit_json(st)
        return
    console.print(
        f"Workspace {st['workspace']}: dataset {st['dataset'].get('name')}, "
        f"{st['samples']['active']} active samples, {st['samples']['forgotten']} forgotten, "
        f"{st['subjects']} subjects."
    )
    console.print(
        _table(
            "models",
            [
                "model",
                "description",
                "origin",
                "parent",
                "trained on",
                "status",
                "sha256",
                "created",
            ],
            [
                [
                    m["model_id"],
                    m["description"],
                    m["origin"],
                    m["parent_id"] or "—",
                    m["n_train"],
                    m["status"],
                    m["sha256"][:12],
                    m["created_at"][:19],
                ]
                for m in st["models"]
            ],
        )
    )


@app.command()
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
                    json.dumps(r["selector"]),
                    r["n_samples"],
                    r["method"],
                    bool(r["exact"]),
                    f"{r['hash_before'][:8]} → {(r['hash_after'] or '')[:8]}",
                    r["seconds"],
                    *((r["metrics"] or {}).get(c.key, float("nan")) for c in cols),
                    _audit_cell(r.get("audit")),
                ]
                for r in reqs
            ],
        )
    )


# --- audit ---------------------------------------------------------------------------


def _audit_cell(record: dict[str, Any] | None) -> str:
    """``pass`` (indistinguishable) or ``flagged`` (distinguishable), or — if not audited."""
    if not record:
        return "—"
    return "flagged" if record["verdict"] == "distinguishable" else "pass"


@app.command()
@_handle_errors
def audit(
    request: Annotated[
        str | None, typer.Option(help="Request ID (default: the latest deletion).")
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
    from unbake.workspace import Workspace

    with Workspace.open(workspace) as ws:
        report = ws.audit(
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
    console.print(f"[bold]{report.verdict}[/]: {report.statement}", highlight=False)
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


# --- bench ---------------------------------------------------------------------------


@app.command()
@_handle_errors
def bench(
    name: Annotated[str, typer.Argument(help="Benchmark name (see `unbake bench --help`).")],
    quick: Annotated[bool, typer.Option(help="Small, fast configuration (< 2 minutes).")] = False,
    out: Annotated[Path | None, typer.Option(help="Write the JSON result here.")] = None,
    data_dir: Annotated[
        str | None, typer.Option(help="Folder holding the dataset's files.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a benchmark and write its JSON (and a Markdown summary)."""
    from unbake.bench import run_benchmark

    result = run_benchmark(name, quick=quick, out=out, data_dir=data_dir)
    if as_json:
        _emit_json(result)
    else:
        console.print_json(json.dumps(result.get("summary", {}), default=str))
        if out:
            console.print(f"Wrote {out}.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
