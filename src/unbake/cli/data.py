"""Data and training: ``train``, ``tofu``, ``samples``, ``status``, ``methods`` (``demo`` is
:mod:`unbake.cli.demo`'s)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
    _table,
    console,
    model_spec,
    parse_params,
)
from unbake.exceptions import InvalidParameterError

if TYPE_CHECKING:  # the CLI imports torch (through unbake.models) only when it runs
    pass

# --- methods -------------------------------------------------------------------------


@_handle_errors
def methods(as_json: JsonOpt = False) -> None:
    """List the registered unlearning methods: kind, what they read, cost, limits, each
    parameter's default, allowed values and help (and the scenarios they have tuned
    defaults for)."""
    from unbake._validation import parameters
    from unbake.methods import METHODS
    from unbake.methods.tuned import SCENARIOS, tuned_defaults

    rows: list[dict[str, Any]] = []
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
                "parameters": parameters(type(m)),
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
                    _tuned_cell(r["tuned_defaults"]),
                ]
                for r in rows
            ],
            left=7,
        )
    )
    console.print(
        _table(
            "their parameters (unbake forget --method M --param NAME=VALUE)",
            ["method", "parameter", "default", "allowed", "what it sets"],
            [
                [r["method"], p["name"], repr(p["default"]), p["allowed"], p["help"]]
                for r in rows
                for p in r["parameters"]
            ],
            left=5,
        )
    )


def _tuned_cell(tuned: dict[str, dict[str, Any]]) -> str:
    """The scenarios a method is tuned for, with the data and model they apply to."""
    where: dict[str, list[str]] = {}
    for scenario, entry in tuned.items():
        where.setdefault(f"{entry['dataset']}/{entry['model']}", []).append(scenario)
    return "; ".join(f"{', '.join(s)} on {w}" for w, s in where.items()) or "—"


# --- train ---------------------------------------------------------------------------


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
    standardize: Annotated[
        bool | None,
        typer.Option(
            "--standardize/--no-standardize",
            help="Standardise csv/parquet features, fitted on the training split and "
            "recorded (default: on; only when creating the workspace).",
        ),
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
        str,
        typer.Option(
            help="Training strategy: monolithic, sisa, sisa_lora, certified, or own (your "
            "train function: --param train=module:function --param config=JSON)."
        ),
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
    model_param: Annotated[
        list[str] | None,
        typer.Option(
            "--model-param",
            help="Model factory argument key=value (a JSON value: hidden=[64,32]): unbake "
            "calls factory(*, input_shape, n_classes, **model_params) under a seeded RNG.",
        ),
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

    config = TrainConfig.parse(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        schedule=schedule,
        weight_decay=weight_decay,
    )
    strategy_params = parse_params(param)
    spec = model_spec(model, parse_params(model_param, "--model-param"), strategy, strategy_params)
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
        "standardize": standardize,
        "poison": poison,
    }
    options = {k: v for k, v in options.items() if v is not None}
    with _workspace_for_training(
        workspace,
        dataset=dataset,
        options=options,
        strategy=strategy,
        strategy_params=strategy_params,
    ) as ws:
        model_id = train_model(
            ws,
            model=spec,
            config=config,
            seed=seed,
            strategy=strategy,
            strategy_params=strategy_params,
            device=device,
        )
        row = ws.catalog.model(model_id)
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


@contextlib.contextmanager
def _workspace_for_training(
    workspace: Path,
    *,
    dataset: str | None,
    options: dict[str, Any],
    strategy: str,
    strategy_params: dict[str, Any],
) -> Iterator[Any]:
    """The workspace ``train`` trains in: opened (when it holds the same dataset and split
    options) or created, and closed after the block; one this created is removed again
    when the block fails, so a failed first ``train`` leaves the folder as it was.

    Note: create-or-open-and-roll-back belongs in the workspace's store (issue 23 item 2).
    """
    from unbake.workspace import Workspace
    from unbake.workspace.workspace import CATALOG

    created = existed = False
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
        yield ws
    except BaseException:
        ws.close()
        if created:
            _remove_workspace(workspace, keep_folder=existed)
        raise
    ws.close()


def _check_split_unchanged(ws, options: dict[str, Any]) -> None:
    """A workspace's split is fixed at creation; a different one on reuse is refused."""
    spec = ws.dataset_spec
    if "poison" in options:
        ws.close()
        raise InvalidParameterError(
            f"--poison plants an attack when a workspace is created, and {ws.root} exists; "
            "drop --poison or use a new --workspace."
        )
    for key in ("test_fraction", "val_fraction", "split_seed", "standardize"):
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
    if "standardize" in spec:
        on = spec["standardize"] == "True"
        console.print(
            "Features: standardised, fitted on the training split (recorded)."
            if on
            else "Features: raw (created with --no-standardize)."
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
