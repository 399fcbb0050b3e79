"""The ``unbake`` command line: a thin typer layer over the Python API.

Every command takes ``--workspace`` and ``--json``. The error contract: every failure
prints ONE line (``error: <cause>; <fix>``) to stderr, never a traceback. Bad input, a
usage error or a damaged workspace exits with status 2 and leaves the workspace as it
was; an unexpected failure prints ``error: internal error: ...; please report it`` and
exits with status 1. Console output never interprets user text as rich markup, and
``--json`` output is strict JSON (a non-finite number is ``null``).

Each command group lives in a module of its own and this module only assembles them (as
mlflow's ``cli.add_command``): :mod:`~unbake.cli.data` (data and training), :mod:`~unbake.cli.demo`,
:mod:`~unbake.cli.forgetting`, :mod:`~unbake.cli.audit` (audit and evaluation),
:mod:`~unbake.cli.service` (the REST service, its worker and policies),
:mod:`~unbake.cli.records` (tokens, the ledger and certificates) and
:mod:`~unbake.cli.bench` (benchmarks and reports); what they share is in
:mod:`~unbake.cli._common`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from unbake.cli import audit, bench, data, demo, forgetting, records, service
from unbake.cli._common import (
    _OneLineErrors,
    console,
    err_console,
    parse_params,
    print_error,
)
from unbake.cli.service import _worker_command as _worker_command  # tests read it here

__all__ = ["app", "console", "err_console", "main", "parse_params", "print_error"]

app = typer.Typer(
    name="unbake",
    help="Remove training data from trained models, verify it is gone, and record it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_OneLineErrors,
)


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


# The commands in the order `unbake --help` lists them.
for _command in (
    demo.demo,
    data.methods,
    data.train,
    data.tofu,
    forgetting.forget,
    service.worker,
    forgetting.clean,
    audit.evaluate,
    data.status,
    data.samples,
    audit.log,
    audit.tune,
    audit.audit,
    service.serve,
    bench.bench,
    bench.report,
):
    app.command(cls=bench.BenchCommand if _command is bench.bench else None)(_command)
app.add_typer(records.ledger_app, name="ledger")
app.add_typer(records.certificate_app, name="certificate")
app.add_typer(service.policy_app, name="policy")
app.add_typer(records.token_app, name="token")


def main() -> None:
    app()
