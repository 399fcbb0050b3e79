"""Forgetting: ``forget`` and ``clean``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from unbake.cli._common import (
    DEFAULT_WS,
    DeviceOpt,
    JsonOpt,
    MethodParamOpt,
    SeedOpt,
    ThreadsOpt,
    WorkspaceOpt,
    _apply_threads,
    _emit_json,
    _handle_errors,
    _metric_line,
    console,
    parse_params,
)
from unbake.exceptions import InvalidParameterError

# --- forget --------------------------------------------------------------------------


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
        str | None,
        typer.Option(
            help="Unlearning method (see `unbake methods`; default: the model's exact "
            "family, sisa for a SISA model and certified for a certified one, else retrain)."
        ),
    ] = None,
    param: MethodParamOpt = None,
    tuned: Annotated[
        bool,
        typer.Option(
            "--tuned/--no-tuned",
            help="Start from the method's tuned defaults for the request's scenario, "
            "where they were tuned on this dataset and architecture (see `unbake methods`); "
            "--param overrides them.",
        ),
    ] = True,
    allow_one_class: Annotated[
        bool,
        typer.Option(
            "--allow-one-class",
            help="Accept a request that leaves the retain set with a single class.",
        ),
    ] = False,
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
            ids=id_list or None,
            subject=subject,
            label=label,
            method=method,
            params=params,
            model_id=model,
            seed=seed,
            device=device,
            idempotency_key=idempotency_key,
            tuned=tuned,
            allow_one_class=allow_one_class,
        )
    out: dict[str, Any] = {
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
    _print_defaults(out["info"])


def _print_defaults(info: dict) -> None:
    """Which defaults the method ran with and why, and whether it barely forgot."""
    tuned_from, defaults = info.get("tuned_defaults"), info.get("defaults") or {}
    if tuned_from:
        overridden = tuned_from["overridden"]
        where = "the workspace's own" if tuned_from.get("source") == "workspace" else "the"
        console.print(
            f"  Parameters: {where} tuned defaults {tuned_from['applied']}, "
            f"{tuned_from['summary']}"
            + (f"; --param set {', '.join(overridden)}" if overridden else "")
            + "."
        )
    elif defaults.get("skipped"):
        console.print(f"  Parameters: {defaults['why']}.")
    check = info.get("forgetting_check")
    if check and check.get("verdict") == "barely forgot":
        console.print(f"  Warning: {check['message']}")


# --- clean ---------------------------------------------------------------------------


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
