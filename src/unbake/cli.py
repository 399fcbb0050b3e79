"""The ``unbake`` command line: a thin typer layer over the Python API.

Every command takes ``--workspace`` and ``--json``. The error contract: every failure
prints ONE line (``error: <cause>; <fix>``) to stderr, never a traceback. Bad input, a
usage error or a damaged workspace exits with status 2 and leaves the workspace as it
was; an unexpected failure prints ``error: internal error: ...; please report it`` and
exits with status 1. Console output never interprets user text as rich markup, and
``--json`` output is strict JSON (a non-finite number is ``null``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import stat
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer._click import exceptions as click  # typer vendors click; these are its errors
from typer.core import TyperGroup

from unbake import _json as strict_json
from unbake._progress import enable_progress
from unbake._threads import configure_threads
from unbake.bench import BENCHMARKS
from unbake.exceptions import InvalidParameterError, UnbakeError


class _OneLineErrors(TyperGroup):
    """Usage errors (a bad option value, a missing argument) get the one-line contract too."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            where = exc.ctx.command_path if getattr(exc, "ctx", None) else "unbake"
            print_error(f"{exc.format_message().rstrip('.')}; see `{where} --help`.")
            sys.exit(2)
        except typer.Abort:
            print_error("aborted; the workspace is unchanged.")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="unbake",
    help="Remove training data from trained models, verify it is gone, and record it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_OneLineErrors,
)
# Nothing printed is read as rich markup or emoji codes: messages and tables quote user
# text (IDs, subjects, paths), which must appear exactly as given.
_PLAIN = {"markup": False, "emoji": False, "highlight": False}
# A pipe gets a wide console, so the comparison table is never truncated in logs.
console = Console(width=None if sys.stdout.isatty() else 200, **_PLAIN)
err_console = Console(stderr=True, **_PLAIN)


def _print_version(value: bool) -> None:
    if value:
        from unbake._version import __version__

        console.print(f"unbake {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version, exit."
        ),
    ] = False,
) -> None:
    """Remove training data from trained models, verify it is gone, and record it."""


WorkspaceOpt = Annotated[Path, typer.Option("--workspace", "-w", help="Workspace folder.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout.")]
DEFAULT_WS = Path("unbake-workspace")
MethodParamOpt = Annotated[
    list[str] | None, typer.Option("--param", help="Method parameter key=value.")
]
SeedOpt = Annotated[int | None, typer.Option(help="Seed (default: the model's).")]
DataDirOpt = Annotated[str | None, typer.Option(help="Folder holding the dataset's files.")]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda, or auto.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help="Intra-op threads for training and unlearning (default: sized to the work).",
    ),
]


def _apply_threads(threads: int | None) -> None:
    """``--threads N`` fixes the count; without it the policy set on import stands (an
    ``UNBAKE_THREADS`` in the environment included)."""
    if threads is not None:
        configure_threads(threads)


def _one_line(text: str) -> str:
    """``text`` on one line: newlines and other control characters shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def print_error(message: str) -> None:
    """Print ``error: <message>`` as one literal line on stderr."""
    line = Text.assemble(("error:", "bold red"), " ", _one_line(message))
    err_console.print(line, soft_wrap=True)


def _handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        enable_progress(None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                out = _run_command(fn, args, kwargs)
            except typer.Exit as exc:
                if exc.exit_code == 0:
                    _print_warnings(caught)
                raise  # a failure already printed its one line; warnings would add more
        _print_warnings(caught)
        return out

    return wrapper


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    """A command that succeeded shows each distinct warning as one literal line."""
    for message in dict.fromkeys(str(w.message) for w in caught):
        err_console.print(Text.assemble(("warning:", "yellow"), " ", _one_line(message)))


def _run_command(fn, args, kwargs):
    """Run a command, turning every failure into one line on stderr and an exit status."""
    try:
        return fn(*args, **kwargs)
    except UnbakeError as exc:
        print_error(str(exc))
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        print_error("interrupted; the workspace is unchanged.")
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort, click.ClickException):
        raise
    except OSError as exc:
        # The environment refused (disk full, permissions): a cause the user can fix.
        where = f" ({exc.filename})" if exc.filename else ""
        print_error(
            f"{exc.strerror or exc}{where}; check the path, its permissions and free space."
        )
        raise typer.Exit(2) from None
    except Exception as exc:  # a bug: still one line, and a non-zero exit
        print_error(
            f"internal error: {type(exc).__name__}: {exc}; please report it to the unbake "
            "developers with the command you ran."
        )
        raise typer.Exit(1) from None


def _emit_json(obj: Any) -> None:
    sys.stdout.write(strict_json.dumps(obj, indent=2) + "\n")


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


def _int_list(text: str | None, option: str) -> list[int] | None:
    """``"0,2"`` as ``[0, 2]``; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise InvalidParameterError(
            f"{option} must be comma-separated whole numbers, like {option} 0,1. "
            f"Got {text!r} instead."
        ) from None


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
    runs = {
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


# --- methods -------------------------------------------------------------------------


@app.command()
@_handle_errors
def methods(as_json: JsonOpt = False) -> None:
    """List the registered unlearning methods: kind, what they read, cost and parameters
    (and the scenarios they have tuned defaults for)."""
    from unbake.methods import METHODS
    from unbake.methods.tuned import SCENARIOS, tuned_defaults

    rows = []
    for name in METHODS.available():
        m = METHODS.create(name)
        tags = m.tags
        rows.append(
            {
                "method": name,
                "kind": tags.kind,
                "exact": tags.exact,
                "certified": tags.certified,
                "reads": ["model", *tags.reads],
                "needs_retain_data": tags.needs_retain_data,
                "requires_strategy": tags.requires_strategy,
                "cost": tags.cost,
                "limits": tags.limits,
                "inputs": list(tags.inputs),
                "params": m.get_params(),
                "tuned_defaults": {
                    s: t.to_dict() for s in SCENARIOS if (t := tuned_defaults(name, s))
                },
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
                "kind",
                "reads",
                "needs strategy",
                "cost",
                "does not help",
                "parameters",
                "tuned for",
            ],
            [
                [
                    r["method"],
                    r["kind"],
                    ", ".join(r["reads"]),
                    r["requires_strategy"] or "any",
                    r["cost"],
                    r["limits"] or "—",
                    ", ".join(f"{k}={v}" for k, v in r["params"].items()),
                    ", ".join(r["tuned_defaults"]) or "—",
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
    data_dir: DataDirOpt = None,
    path: Annotated[
        str | None, typer.Option(help="CSV/Parquet/JSONL file for --dataset csv|parquet|jsonl.")
    ] = None,
    label: Annotated[str | None, typer.Option(help="Label column (csv/parquet).")] = None,
    id_column: Annotated[str | None, typer.Option(help="Sample ID column (csv/parquet).")] = None,
    subject_column: Annotated[
        str | None, typer.Option(help="Subject column (csv/parquet).")
    ] = None,
    test_fraction: Annotated[
        float | None, typer.Option(help="Share of rows held out for test (default 0.2).")
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(help="Share of rows held out for validation, never trained on (default 0.1)."),
    ] = None,
    split_seed: Annotated[
        int | None, typer.Option(help="Key of the split hash (default 0).")
    ] = None,
    poison: Annotated[
        str | None,
        typer.Option(
            help="Plant an attack in the training split (only when creating the workspace): "
            "backdoor:fraction=F,target=T[,size=K] or flip:fraction=F,source=S,target=T."
        ),
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            help="Architecture name, a trusted 'module:function' (allow-listed in "
            "UNBAKE_ALLOWED_FACTORIES or registered under the unbake.models entry points), "
            "or hf:PATH (a causal LM)."
        ),
    ] = "mlp",
    strategy: Annotated[
        str, typer.Option(help="Training strategy: monolithic, sisa, sisa_lora or certified.")
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
    threads: ThreadsOpt = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """Train a model on the workspace's active samples (creating the workspace if new)."""
    _apply_threads(threads)
    from unbake.service.apply import train as train_model
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
    if model.startswith("hf:") and "lora_rank" in strategy_params:  # a model parameter
        from unbake.models import ModelSpec

        model = ModelSpec(model, {"lora_rank": strategy_params.pop("lora_rank")})
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
        "test_fraction": test_fraction,
        "val_fraction": val_fraction,
        "split_seed": split_seed,
        "poison": poison,
    }
    options = {k: v for k, v in options.items() if v is not None}
    created = False
    if (workspace / CATALOG).exists():
        ws = Workspace.open(workspace)
        try:
            held = ws.dataset_spec.get("name")
            if dataset is not None and held != dataset:
                raise InvalidParameterError(
                    f"Workspace {workspace} holds dataset {held!r}, not {dataset!r}; "
                    "drop --dataset or use a new --workspace."
                )
            _check_split_unchanged(ws, options)
        except BaseException:
            ws.close()
            raise
    else:
        _check_strategy(strategy, strategy_params)
        existed = workspace.exists()
        ws = Workspace.create(workspace, dataset=dataset or "digits", dataset_options=options)
        created = True
    try:
        model_id = train_model(
            ws,
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
            _remove_workspace(workspace, keep_folder=existed)
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


def _check_split_unchanged(ws, options: dict[str, Any]) -> None:
    """A workspace's split is fixed at creation; a different one on reuse is refused."""
    spec = ws.dataset_spec
    if "poison" in options:
        ws.close()
        raise InvalidParameterError(
            f"--poison plants an attack when a workspace is created, and {ws.root} exists; "
            "drop --poison or use a new --workspace."
        )
    for key in ("test_fraction", "val_fraction", "split_seed"):
        if key in options and str(spec.get(key)) != str(options[key]):
            ws.close()
            flag = "--" + key.replace("_", "-")
            raise InvalidParameterError(
                f"Workspace {ws.root} was split with {key}={spec.get(key, '(none)')}, not "
                f"{options[key]}; "
                f"drop {flag} or use a new --workspace."
            )


def _check_strategy(strategy: str, params: dict[str, Any]) -> None:
    from unbake.training import STRATEGIES

    STRATEGIES.create_checked(strategy, params)


def _remove_workspace(root: Path, *, keep_folder: bool) -> None:
    """Undo a workspace this command created before failing, so nothing is left behind.

    A folder that existed before keeps everything but what unbake put there.
    """
    import shutil

    from unbake.workspace.keys import SECRET, SIGNING_KEY
    from unbake.workspace.workspace import CATALOG, CHECKPOINTS

    if not keep_folder:
        shutil.rmtree(root, ignore_errors=True)
        return
    for path in (root / CHECKPOINTS).glob("*model-*"):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (root / CHECKPOINTS).rmdir()  # only if empty: a folder of the user's stays
    for name in (CATALOG, f"{CATALOG}-journal", ".lock", SECRET, SIGNING_KEY):
        (root / name).unlink(missing_ok=True)


# --- tofu ----------------------------------------------------------------------------


@app.command()
@_handle_errors
def tofu(
    out: Annotated[Path, typer.Option(help="Folder to write the JSONL files and splits.json.")],
    persons: Annotated[int, typer.Option(help="Fictitious persons trained on.")] = 200,
    facts: Annotated[int, typer.Option(help="Question–answer pairs per person (1–6).")] = 4,
    seed: Annotated[int, typer.Option(help="Seed: the same seed writes the same set.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Write a seeded TOFU-style set (persons, forget splits, holdout, canaries) as JSONL."""
    from unbake.data.tofu import generate_tofu, write_tofu

    made = generate_tofu(persons, seed=seed, facts=facts)
    paths = write_tofu(out, made)
    result = {
        "files": {k: str(v) for k, v in paths.items()},
        "train_rows": len(made.train),
        "forget": {k: list(v) for k, v in made.forget.items()},
    }
    if as_json:
        _emit_json(result)
    else:
        console.print(
            f"Wrote {len(made.train)} training rows ({persons} persons, "
            f"{len(made.canaries)} canaries), {len(made.holdout)} holdout and "
            f"{len(made.world)} real-world rows to {out}; train with "
            f"`unbake train --dataset jsonl --path {paths['train']} --model hf:...`."
        )


# --- forget --------------------------------------------------------------------------


@app.command()
@_handle_errors
def forget(
    ids: Annotated[str | None, typer.Option(help="Comma-separated sample IDs.")] = None,
    ids_file: Annotated[Path | None, typer.Option(help="File with one sample ID per line.")] = None,
    subject: Annotated[
        str | None, typer.Option(help="Forget every sample of this subject.")
    ] = None,
    label: Annotated[
        str | None,
        typer.Option("--class", help="Forget a whole class, by name or index (--class Sandal)."),
    ] = None,
    method: Annotated[
        str, typer.Option(help="Unlearning method (see `unbake methods`).")
    ] = "retrain",
    param: MethodParamOpt = None,
    tuned: Annotated[
        bool,
        typer.Option(
            "--tuned/--no-tuned",
            help="Start from the method's tuned defaults for the request's scenario "
            "(see `unbake methods`); --param overrides them.",
        ),
    ] = True,
    model: Annotated[str | None, typer.Option(help="Model ID (default: the newest).")] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Client key: filing the same request again with it changes nothing."),
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """File and apply a deletion request, then record it with its verification."""
    _apply_threads(threads)
    from unbake.service import DeletionService

    id_list: list[str] = [i.strip() for i in ids.split(",") if i.strip()] if ids else []
    if ids_file is not None:
        try:
            text = ids_file.read_bytes().decode("utf-8")
        except OSError as exc:
            raise InvalidParameterError(
                f"Cannot read --ids-file {ids_file} ({exc.strerror}); check the path."
            ) from None
        except UnicodeDecodeError as exc:
            raise InvalidParameterError(
                f"--ids-file {ids_file} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                f"offset {exc.start}); give a text file with one sample ID per line."
            ) from None
        id_list += [ln.strip() for ln in text.splitlines() if ln.strip()]
    params = parse_params(param)
    with DeletionService(workspace) as svc:  # files the request, then applies it at once
        rec = svc.forget(
            ids=id_list,
            subject=subject,
            label=label,
            method=method,
            params=params,
            model_id=model,
            seed=seed,
            device=device,
            idempotency_key=idempotency_key,
            tuned=tuned,
        )
    out = {
        "request_id": rec.request_id,
        "method": rec.method,
        "n_samples": rec.n_samples,
        "n_held_out": rec.n_held_out,
        "model_changed": rec.changed_model,
        "model_before": rec.model_before,
        "model_after": rec.model_after,
        "seconds": round(rec.seconds, 4),
        "evaluation": rec.evaluation.to_dict() if rec.evaluation else None,
        "info": rec.result.info if rec.result else {},
    }
    if as_json:
        _emit_json(out)
        return
    held = (
        f" and marked {rec.n_held_out} validation/test samples forgotten" if rec.n_held_out else ""
    )
    if rec.evaluation is None:
        console.print(
            f"Request {rec.request_id}: marked {rec.n_held_out} validation/test samples "
            "forgotten. No model was trained on them, so no model changed and none was "
            "purged; evaluation no longer reads them."
        )
        return
    console.print(
        f"Request {rec.request_id}: forgot {rec.n_samples} samples with {rec.method} in "
        f"{rec.seconds:.2f}s → model {rec.model_after}{held}.\n"
        f"  {_metric_line(rec.evaluation.to_dict())}  "
        f"(older models that saw the data were purged)"
    )
    tuned_from = out["info"].get("tuned_defaults")
    if tuned_from:
        overridden = tuned_from["overridden"]
        console.print(
            f"  Parameters: the tuned defaults {tuned_from['applied']}, {tuned_from['summary']}"
            + (f"; --param set {', '.join(overridden)}" if overridden else "")
            + "."
        )


# --- worker --------------------------------------------------------------------------


@app.command()
@_handle_errors
def worker(
    once: Annotated[
        bool, typer.Option("--once", help="Apply what is queued now, batch by batch, then exit.")
    ] = False,
    batch: Annotated[
        int | None,
        typer.Option(help="Most requests in one batch (N; default: the policy's, else 32)."),
    ] = None,
    window: Annotated[
        float | None,
        typer.Option(
            help="Apply a smaller batch once its oldest request waited this long "
            "(seconds; default: the policy's, else 5)."
        ),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            help="Deletion policy TOML: methods to try, thresholds, fallback, batch window."
        ),
    ] = None,
    certify: Annotated[
        bool,
        typer.Option(
            "--certify/--no-certify",
            help="Sign a certificate for each applied request (state certified).",
        ),
    ] = True,
    stop_with: Annotated[
        int | None,
        typer.Option(hidden=True, help="Stop when this parent process is gone (`unbake serve`)."),
    ] = None,
    threads: ThreadsOpt = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """Drain the queue of deletion requests (until SIGTERM or Ctrl-C): one batch at a time
    (N requests or T seconds, whichever comes first), each request without a method of its
    own under the policy (its steps in order, each audited, then the exact fallback), each
    applied request then certified (a signed certificate); crash-safe (a restart resumes
    what a killed worker left, and certifies what it applied)."""
    _apply_threads(threads)
    from unbake.service import DeletionService
    from unbake.service.deletion import drain
    from unbake.service.policy import load_policy
    from unbake.service.supervisor import worker_stop

    if (batch is not None and batch < 1) or (window is not None and window < 0):
        raise InvalidParameterError(
            f"--batch must be >= 1 and --window >= 0; got {batch} and {window}."
        )
    rules = load_policy(policy) if policy is not None else None  # checked once, at start
    # SIGTERM, or the death of the server that started it: stop after the current batch.
    with worker_stop(stop_with) as stop, DeletionService(workspace, policy=rules) as svc:
        try:
            finished = drain(svc, batch=batch, window=window, once=once, certify=certify, stop=stop)
        except KeyboardInterrupt:
            finished = None
        counts = svc.state_counts()
    if as_json:
        _emit_json({"finished": finished, "states": counts})
    else:
        done = "" if finished is None else f"finished {finished} requests; "
        console.print(f"Worker stopped: {done}requests by state: {counts}.")


# --- clean ---------------------------------------------------------------------------


@app.command()
@_handle_errors
def clean(
    detect: Annotated[
        str, typer.Option(help="Detector (loss, tracin, self-influence, spectral, ...).")
    ],
    budget: Annotated[int, typer.Option(help="How many top-ranked training samples to remove.")],
    detector_param: Annotated[
        list[str] | None,
        typer.Option("--detector-param", help="Detector parameter key=value."),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="Unlearning method (default: sisa for a SISA model, else retrain)."),
    ] = None,
    param: MethodParamOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """Find suspect training samples with a detector and unlearn the top --budget of them."""
    _apply_threads(threads)
    from unbake.service.cleaning import clean as run_clean
    from unbake.workspace import Workspace

    with Workspace.open(workspace) as ws:
        report = run_clean(
            ws,
            detect=detect,
            budget=budget,
            method=method,
            params=parse_params(param),
            detector_params=parse_params(detector_param),
            seed=seed,
            device=device,
        )
    out = report.to_dict()
    if as_json:
        _emit_json(out)
        return

    def pair(before: float | None, after: float | None) -> str:
        return f"{before:.2f}% → {after:.2f}%" if before is not None else "n/a (no backdoor)"

    found = out["detection"]
    hits = f"; {found[f'recall@{budget}']:.0%} of the planted samples among them" if found else ""
    console.print(
        f"Request {report.request_id} (cleaning): {report.detector} flagged {budget} samples"
        f"{hits}; unlearned with {report.method} in {report.seconds:.2f}s → model "
        f"{report.model_after}.\n"
        f"  clean TA {pair(report.ta_before, report.ta_after)}   "
        f"ASR {pair(report.asr_before, report.asr_after)}"
    )
    if "flip_rate" in report.harm_before:
        b, a = report.harm_before, report.harm_after
        console.print(
            f"  source-class accuracy {pair(b['source_acc'], a['source_acc'])}   "
            f"flip rate {pair(b['flip_rate'], a['flip_rate'])}"
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
    spec, splits = st["dataset"], st["splits"]
    console.print(
        f"Workspace {st['workspace']}: dataset {spec.get('name')}, "
        f"{st['samples']['active']} active training samples, "
        f"{st['samples']['forgotten']} forgotten (all splits), "
        f"{st['subjects']} subjects.\n"
        f"Split (keyed hash, seed {spec.get('split_seed', '—')}): {splits['train']} train, "
        f"{splits['val']} validation (fraction {spec.get('val_fraction', '—')}), "
        f"{splits['test']} test (fraction {spec.get('test_fraction', 'official')})."
    )
    if spec.get("poison"):
        planted = len(json.loads(spec.get("poison_ids") or "[]"))
        console.print(f"Planted attack: {spec['poison']} ({planted} training samples).")
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
    for r in st["overdue_requests"]:
        console.print(
            f"OVERDUE: request {r['request_id']} ({r['state']}) was received "
            f"{r['received_at'][:19]} and was due {r['deadline'][:19]}."
        )
    for r in st["stuck_requests"]:
        console.print(
            f"STUCK: request {r['request_id']} has been applying since {r['since'][:19]} "
            f"({r['seconds']:.0f} s); is `unbake worker` (or `unbake serve`) running?"
        )
    for r in st["failed_requests"]:
        console.print(
            f"FAILED: request {r['request_id']} at {r['at'][:19]}: {r['reason']}", markup=False
        )


@app.command()
@_handle_errors
def samples(
    subject: Annotated[str | None, typer.Option(help="Only this subject's samples.")] = None,
    forgotten: Annotated[
        bool, typer.Option("--forgotten", help="List forgotten samples instead.")
    ] = False,
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """The samples: ID, subject, split (train, val, test), label name and status."""
    from unbake.workspace import Workspace

    with Workspace.open(workspace) as ws:
        rows = ws.samples(subject=subject, forgotten=forgotten)
    if as_json:
        _emit_json({"samples": rows})
        return
    console.print(
        _table(
            f"{len(rows)} {'forgotten' if forgotten else 'active'} samples",
            ["sample", "subject", "split", "label", "request"],
            [
                [
                    r["sample_id"],
                    r["subject"] or "—",
                    r["split"],
                    "—" if r["label"] is None else r["label"],
                    r["request_id"] or "—",
                ]
                for r in rows
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


@app.command()
@_handle_errors
def tune(
    method: Annotated[str, typer.Option(help="Method to tune (see `unbake methods`).")],
    trials: Annotated[int, typer.Option(help="Trial budget.")] = 20,
    scenario: Annotated[str, typer.Option(help="random (10% of training) or class.")] = "random",
    forget_class: Annotated[
        str | None, typer.Option(help="Class to forget in the class scenario (name or index).")
    ] = None,
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "digits",
    model: Annotated[str, typer.Option(help="Model architecture.")] = "mlp",
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
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search a method's knobs with Optuna against retraining (validation, never test)."""
    _apply_threads(threads)
    from unbake.bench.tune import tune as run_tune
    from unbake.bench.tune import write_defaults as record_defaults
    from unbake.data import load_dataset
    from unbake.methods.tuned import defaults_path, read_table
    from unbake.training import TrainConfig

    if write_defaults:
        if out is None:
            raise InvalidParameterError(
                "--write-defaults needs --out STUDY.json: the defaults cite the study they "
                "came from (commit it under benchmarks/tuning/)."
            )
        read_table()  # an unreadable table fails now, not after the study
    params = parse_params(param)
    config = TrainConfig.parse(epochs=epochs, batch_size=batch_size)
    ds = load_dataset(dataset, **({"data_dir": data_dir} if data_dir else {}))
    study = run_tune(
        ds,
        method,
        trials=trials,
        scenario=scenario,
        forget_class=forget_class,
        model=model,
        config=config,
        time_fraction=time_fraction,
        seed=seed,
        fixed=params,
        cache_dir=cache_dir,
    )
    if out is not None:
        study.save(out)
    recorded = refused = None
    if write_defaults:
        try:
            recorded = record_defaults(study, out)
        except InvalidParameterError as exc:  # reported after the study's own output
            refused = exc
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
        _table(f"tune {method} ({study.scenario})", ["#", "state", "avg gap", "s", "params"], rows)
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
            f"Wrote the tuned defaults of {method} for {study.scenario} forgetting to "
            f"{defaults_path()}: {recorded.params}, {recorded.describe()}."
        )
    if refused:
        raise refused


@app.command()
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


# --- ledger and certificates ---------------------------------------------------------

ledger_app = typer.Typer(help="The hash-chained ledger of deletion requests.", no_args_is_help=True)
certificate_app = typer.Typer(help="Signed deletion certificates.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")
app.add_typer(certificate_app, name="certificate")


CertificateArg = Annotated[Path, typer.Argument(help="The certificate (JSON).")]


def _read_input(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidParameterError(
            f"Cannot read the {what} {path} ({exc.strerror}); check the path."
        ) from None


@ledger_app.command("verify")
@_handle_errors
def ledger_verify(workspace: WorkspaceOpt = DEFAULT_WS, as_json: JsonOpt = False) -> None:
    """Recompute the hash chain; name the first entry edited, deleted or reordered."""
    from unbake.workspace import Workspace

    with Workspace.open(workspace) as ws:
        entries, head = ws.catalog.verify_ledger()
    if as_json:
        _emit_json({"valid": True, "entries": entries, "head": head})
        return
    console.print(f"Ledger intact: {entries} entries, head {head}.")


@ledger_app.command("show")
@_handle_errors
def ledger_show(
    request: Annotated[str | None, typer.Option(help="Only this request's entries.")] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """The ledger's entries (state transitions), oldest first."""
    from unbake.workspace import Workspace

    with Workspace.open(workspace) as ws:
        entries = ws.ledger(request_id=request)
    if as_json:
        _emit_json({"entries": entries})
        return
    console.print(
        _table(
            "ledger",
            ["seq", "request", "state", "time", "details", "hash"],
            [
                [
                    e["seq"],
                    e["request_id"],
                    e["state"],
                    e["timestamp"][:19],
                    json.dumps(e["payload"], sort_keys=True)[:80],
                    e["hash"][:12],
                ]
                for e in entries
            ],
        )
    )


@ledger_app.command("retention")
@_handle_errors
def ledger_retention(
    reason_days: Annotated[
        int | None,
        typer.Option(help="Days a done request keeps its reason before it is erased (default 0)."),
    ] = None,
    id_days: Annotated[
        int | None,
        typer.Option(
            help="Days a done request keeps its sample IDs (the proof window; default 30)."
        ),
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """Show, or set, how long a done request keeps its personal data (see docs/personal-data.md)."""
    from unbake.workspace import Workspace

    with Workspace.open(workspace) as ws:
        if reason_days is not None or id_days is not None:
            ws.set_retention(reason_days=reason_days, id_days=id_days)
        days = ws.retention()
    if as_json:
        _emit_json({"retention_days": days})
        return
    console.print(
        f"A done request keeps its reason {days['reason']} days and its sample IDs "
        f"{days['sample_ids']} days, then `unbake ledger shred` (or the worker) erases them."
    )


@ledger_app.command("shred")
@_handle_errors
def ledger_shred(workspace: WorkspaceOpt = DEFAULT_WS, as_json: JsonOpt = False) -> None:
    """Erase the reasons and sample IDs of done requests whose retention has ended
    (their keys are destroyed; the ledger still verifies). The worker runs it too."""
    from unbake.workspace import Workspace

    with Workspace.open(workspace) as ws:
        done = ws.shred_due()
    if as_json:
        _emit_json(done)
        return
    console.print(
        f"Erased {len(done['shredded'])} personal fields of done requests"
        + ("." if done["wal_truncated"] else "; a reader kept the WAL: run it again.")
    )


@certificate_app.command("issue")
@_handle_errors
def certificate_issue(
    request: Annotated[str, typer.Option(help="ID of an applied request.")],
    out: Annotated[Path | None, typer.Option(help="Write it here (default: stdout).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
) -> None:
    """Sign a certificate for an applied request (the ledger records it as certified)."""
    from unbake.workspace import Workspace
    from unbake.workspace.atomic import atomic_write_bytes
    from unbake.workspace.certificates import issue_certificate

    with Workspace.open(workspace) as ws:
        data, _ = issue_certificate(ws, request)
    if out is None:
        sys.stdout.write(data.decode("ascii"))
        return
    atomic_write_bytes(out, data)
    console.print(f"Certificate of request {request} written to {out}.")


@certificate_app.command("public-key")
@_handle_errors
def certificate_public_key(
    out: Annotated[Path | None, typer.Option(help="Write it here (default: stdout).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
) -> None:
    """The workspace's Ed25519 public key (PEM), for verifying its certificates offline."""
    from unbake.workspace import Workspace
    from unbake.workspace.atomic import atomic_write_bytes
    from unbake.workspace.certificates import workspace_public_key

    with Workspace.open(workspace) as ws:
        pem = workspace_public_key(ws)
    if out is None:
        sys.stdout.write(pem.decode("ascii"))
    else:
        atomic_write_bytes(out, pem)


@certificate_app.command("verify")
@_handle_errors
def certificate_verify(
    file: CertificateArg,
    public_key: Annotated[Path, typer.Option(help="The workspace's public key (PEM).")],
    as_json: JsonOpt = False,
) -> None:
    """Check a certificate's signature offline (no workspace needed); exit 2 if it fails."""
    from unbake.workspace.certificates import LEGACY_FORMAT, fingerprint, verify_certificate

    key = _read_input(public_key, "public key")
    body = verify_certificate(_read_input(file, "certificate"), key)
    if as_json:
        _emit_json({"valid": True, "key_fingerprint": fingerprint(key), "certificate": body})
        return
    console.print(
        f"Valid: request {body['request_id']}, {len(body['sample_hmacs'])} samples, "
        f"{body['method']} ({body['guarantee']}), model {body['model_before']['id']} → "
        f"{body['model_after']['id']}, issued {body['issued_at'][:19]}."
    )
    console.print(f"Signed by the key with SHA-256 fingerprint {fingerprint(key)}.", soft_wrap=True)
    if body["format"] == LEGACY_FORMAT:
        console.print(
            f"Format {LEGACY_FORMAT} (before RFC 8785: signed over Python's sorted-key JSON); "
            "certificates issued now are signed over RFC 8785 canonical JSON."
        )


@certificate_app.command("check-subject")
@_handle_errors
def certificate_check_subject(
    file: CertificateArg,
    subject: Annotated[str, typer.Option(help="The subject ID to look for.")],
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """Whether the certificate names SUBJECT (by its keyed hash, with the workspace secret)."""
    from unbake.workspace import Workspace
    from unbake.workspace.certificates import read_certificate, subject_matches

    body = read_certificate(_read_input(file, "certificate"))
    with Workspace.open(workspace) as ws:
        found = subject_matches(ws, body, subject)
    if as_json:
        _emit_json({"request_id": body["request_id"], "names_subject": found})
    else:
        verb = "names" if found else "does not name"
        console.print(f"Certificate of request {body['request_id']} {verb} this subject.")
    if not found:
        raise typer.Exit(1)


# --- policy --------------------------------------------------------------------------

policy_app = typer.Typer(
    help="Deletion policies: the methods to try, their audit thresholds, the exact fallback.",
    no_args_is_help=True,
)
app.add_typer(policy_app, name="policy")


@policy_app.command("check")
@_handle_errors
def policy_check(
    file: Annotated[Path, typer.Argument(help="The policy (TOML).")],
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """Validate a policy against the workspace's current model; exit 2 naming the problem."""
    from unbake.service.policy import ModelInfo, check_policy, load_policy
    from unbake.workspace import Workspace

    policy = load_policy(file)
    with Workspace.open(workspace) as ws:
        model = ws.load_model()
    summary = check_policy(policy, ModelInfo.of(model))
    if as_json:
        _emit_json({"valid": True, "file": str(file), **summary})
        return
    m, batch = summary["model"], summary["batch"]
    deadline = summary["deadline_days"]
    console.print(
        f"Policy {file} is valid; model {m['architecture']} (strategy {m['strategy']}) is "
        f"governed by section {summary['section']!r} (of {', '.join(summary['sections'])})."
    )
    console.print(
        f"Batches: up to {batch['max_requests']} requests or {batch['max_seconds']:g} s; "
        f"deadline: {f'{deadline} days' if deadline else 'one calendar month'}."
    )
    for i, step in enumerate(summary["steps"], 1):
        params = ", ".join(f"{k}={v}" for k, v in step["params"].items()) or "defaults"
        limits = ", ".join(step["checks"])
        role = "fallback" if step["fallback"] else f"step {i}"
        console.print(
            f"  {role}: {step['method']} ({step['guarantee']}; {params})"
            + (f", must pass {limits}" if limits else "")
        )
    for note in summary["notes"]:
        console.print(f"Note: {note}.")


# --- tokens and the REST service ----------------------------------------------------

token_app = typer.Typer(
    help="Bearer tokens of the REST API (`unbake serve`).", no_args_is_help=True
)
app.add_typer(token_app, name="token")


@token_app.command("create")
@_handle_errors
def token_create(
    role: Annotated[str, typer.Option(help="submitter, operator or auditor.")],
    name: Annotated[str | None, typer.Option(help="A label to recognise the token by.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write the token to this file, mode 0600 (default: print it)."),
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """Make a bearer token and print it once (only its keyed hash is stored)."""
    from unbake.workspace import Workspace
    from unbake.workspace.atomic import PRIVATE, atomic_write_bytes
    from unbake.workspace.tokens import create_token

    with Workspace.open(workspace) as ws:
        token, token_id = create_token(ws, role, name=name)
    if out is not None:
        atomic_write_bytes(out, (token + "\n").encode("ascii"), mode=PRIVATE)
        err_console.print(f"Token {token_id} ({role}) written to {out} (mode 0600).")
        return
    _keep_stdout_private()
    if as_json:
        _emit_json({"token": token, "token_id": token_id, "role": role})
    else:
        sys.stdout.write(token + "\n")


def _keep_stdout_private() -> None:
    """A secret printed into a file of ours (``> operator.token``) that others could read:
    make the file 0600 before a byte of the secret is in it, and say so."""
    try:
        fd = sys.stdout.fileno()
        st = os.fstat(fd)
    except (AttributeError, OSError, ValueError):  # not a real file (a pipe, a test)
        return
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077 and st.st_uid == os.getuid():
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)
        err_console.print("note: the file the token goes to was readable by others; now 0600.")


@token_app.command("list")
@_handle_errors
def token_list(workspace: WorkspaceOpt = DEFAULT_WS, as_json: JsonOpt = False) -> None:
    """List the tokens: ID, role, name, when made and when revoked (never the token)."""
    from unbake.workspace import Workspace
    from unbake.workspace.tokens import list_tokens

    with Workspace.open(workspace, read_only=True) as ws:
        rows = list_tokens(ws)
    if as_json:
        _emit_json(rows)
        return
    columns = ["token_id", "role", "name", "created_at", "revoked_at"]
    cells = [[r[c] if r[c] is not None else "" for c in columns] for r in rows]
    console.print(_table(f"Tokens ({len(rows)})", columns, cells))


@token_app.command("revoke")
@_handle_errors
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's ID, as `unbake token list` shows.")],
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a token: a running `unbake serve` refuses it (401) from its next request."""
    from unbake.workspace import Workspace
    from unbake.workspace.tokens import revoke_token

    with Workspace.open(workspace) as ws:
        row = revoke_token(ws, token_id)
    if as_json:
        _emit_json(row)
    elif row["revoked"]:
        console.print(f"Revoked token {token_id} ({row['role']}).")
    else:
        console.print(f"Token {token_id} was already revoked at {row['revoked_at']}.")


def _worker_command(workspace: Path, policy: Path | None = None) -> list[str]:
    """The command line of `unbake worker` for ``workspace`` (and its policy file), which
    stops if this process dies."""
    command = [sys.executable, "-m", "unbake.cli", "worker", "--workspace", str(workspace)]
    command += ["--stop-with", str(os.getpid())]
    return command + (["--policy", str(policy)] if policy is not None else [])


def _log_to_stderr(name: str) -> None:
    """Show the INFO (and worse) records of logger ``name`` on stderr, through rich."""
    import logging

    from rich.logging import RichHandler

    log = logging.getLogger(name)
    if not log.handlers:
        log.addHandler(RichHandler(console=err_console, show_path=False))
        log.setLevel(logging.INFO)
        log.propagate = False


class _Stopped(Exception):
    """SIGINT or SIGTERM reached `unbake serve` (after uvicorn's graceful shutdown)."""


@contextlib.contextmanager
def _stop_on_signals():
    """uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal; this
    turns it into a clean return, so the worker is stopped too (a default SIGTERM would
    end the process at once and leave the worker running)."""
    import signal

    def stop(signum, frame):
        raise _Stopped

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except _Stopped:
        console.print("Stopped.")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@app.command()
@_handle_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="Do not start `unbake worker` beside the server.")
    ] = False,
    openapi: Annotated[
        Path | None, typer.Option(help="Write the OpenAPI schema to this file and exit.")
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            help="Deletion policy TOML for the worker (methods, thresholds, fallback, batch "
            "window) and for new requests' deadlines."
        ),
    ] = None,
    stuck_after: Annotated[
        float,
        typer.Option(help="Seconds after which a request still applying makes /healthz degraded."),
    ] = 900.0,
    restart_window: Annotated[
        float,
        typer.Option(
            help="The worker is left stopped after 5 exits within this many seconds "
            "(/healthz then says degraded); each restart waits 0.5 s, doubled for each "
            "exit within it."
        ),
    ] = 60.0,
    workspace: WorkspaceOpt = DEFAULT_WS,
) -> None:
    """Serve the REST API (file requests, read the ledger and certificates, predict), and
    by default run the worker that applies queued requests in its own process, restarted
    with backoff when it exits (not after 5 exits in 60 s: /healthz then says degraded).
    A restarted worker resumes at once what the killed one was applying."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise UnbakeError(
            f"`unbake serve` needs the service extra ({exc.name} is missing); install it with "
            "`pip install --constraint constraints.txt -e '.[service]'`."
        ) from None
    if openapi is not None:
        from unbake.service.api import openapi_text
        from unbake.workspace.atomic import atomic_write_text

        atomic_write_text(openapi, openapi_text())
        console.print(f"Wrote the OpenAPI schema to {openapi}.")
        return
    from unbake.service import DeletionService
    from unbake.service.api import create_app
    from unbake.service.policy import Limits, load_policy
    from unbake.service.supervisor import WorkerSupervisor

    if stuck_after <= 0 or restart_window <= 0:
        raise InvalidParameterError(
            f"--stuck-after and --restart-window must be > 0 seconds; got {stuck_after:g} "
            f"and {restart_window:g}."
        )
    rules = load_policy(policy) if policy is not None else None  # refused before serving
    command = None if no_worker else _worker_command(workspace, policy)
    _log_to_stderr("unbake.serve")
    # Leaving the block stops the worker first (SIGTERM: it finishes its batch), then the
    # service.
    with (
        DeletionService(workspace, policy=rules) as svc,
        WorkerSupervisor(command, window=restart_window) as worker,
    ):
        who = f"; worker pid {worker.pid}" if worker.pid is not None else "; no worker"
        console.print(f"Serving workspace {workspace} on http://{host}:{port}{who} (Ctrl-C stops).")
        with _stop_on_signals():
            uvicorn.run(
                create_app(svc, worker=worker, stuck_after=stuck_after),
                host=host,
                port=port,
                log_level="warning",
                access_log=False,
                # h11 (when httptools is absent) refuses large headers itself, without JSON:
                # leave that to the app's [limits] max_header_bytes (431).
                h11_max_incomplete_event_size=2
                * (rules.limits if rules else Limits()).max_header_bytes,
            )


# --- bench ---------------------------------------------------------------------------


@app.command()
@_handle_errors
def bench(
    name: Annotated[str, typer.Argument(help=f"Benchmark: {', '.join(BENCHMARKS.available())}.")],
    quick: Annotated[bool, typer.Option(help="Small, fast configuration (< 2 minutes).")] = False,
    out: Annotated[Path | None, typer.Option(help="Write the JSON result here.")] = None,
    data_dir: DataDirOpt = None,
    seeds: Annotated[
        str | None, typer.Option(help="Comma-separated seeds to run (approximate: a subset).")
    ] = None,
    scenarios: Annotated[
        str | None, typer.Option(help="Comma-separated scenarios to run: random, class.")
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Keep finished cells here and reuse them (default: --out with its "
            "suffix replaced by .cells)."
        ),
    ] = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a benchmark and write its JSON (and a Markdown summary)."""
    _apply_threads(threads)
    from unbake.bench import run_benchmark

    result = run_benchmark(
        name,
        quick=quick,
        out=out,
        data_dir=data_dir,
        seeds=_int_list(seeds, "--seeds"),
        scenarios=[s.strip() for s in scenarios.split(",")] if scenarios else None,
        cache_dir=cache_dir,
    )
    if as_json:
        _emit_json(result)
    else:
        console.print_json(strict_json.dumps(result.get("summary", {})))
        if out:
            console.print(f"Wrote {out}.")


@app.command()
@_handle_errors
def report(
    result: Annotated[Path, typer.Argument(help="A benchmark result (`unbake bench --out`).")],
    html_out: Annotated[
        Path | None, typer.Option("--html", help="Write one self-contained HTML file here.")
    ] = None,
    markdown_out: Annotated[
        Path | None, typer.Option("--markdown", help="Write the Markdown here.")
    ] = None,
    plot_out: Annotated[
        Path | None, typer.Option("--plot", help="Write the plot (PNG) here.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Render a benchmark result: Markdown to stdout, or HTML / Markdown / PNG files."""
    from unbake.report import load_result, render_markdown, write_report

    data = load_result(result)
    written = write_report(data, html_path=html_out, markdown_path=markdown_out, plot_path=plot_out)
    if as_json:
        out: dict[str, Any] = {"written": [str(p) for p in written]}
        _emit_json(out if written else {**out, "markdown": render_markdown(data)})
    elif not written:
        sys.stdout.write(render_markdown(data))
    else:
        for path in written:
            console.print(f"Wrote {path}.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
