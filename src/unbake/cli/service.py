"""The service: ``serve``, ``worker`` and ``policy …``."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from unbake.cli._common import (
    DEFAULT_WS,
    JsonOpt,
    ThreadsOpt,
    WorkspaceOpt,
    _apply_threads,
    _emit_json,
    _handle_errors,
    console,
    err_console,
)
from unbake.exceptions import InvalidParameterError, UnbakeError

# --- worker --------------------------------------------------------------------------


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


# --- policy --------------------------------------------------------------------------

policy_app = typer.Typer(
    help="Deletion policies: the methods to try, their audit thresholds, the exact fallback.",
    no_args_is_help=True,
)


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
