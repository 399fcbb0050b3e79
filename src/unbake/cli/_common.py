"""What every command shares: option types, consoles, tables and the one-line error contract."""

from __future__ import annotations

import functools
import json
import sys
import warnings
from collections.abc import Sequence
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
from unbake.exceptions import InvalidParameterError, UnbakeError


class _OneLineErrors(TyperGroup):
    """Usage errors (a bad option value, a missing argument) get the one-line contract too."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        run = functools.partial(
            super().main,
            args,
            prog_name,
            complete_var,
            standalone_mode=False,
            windows_expand_args=windows_expand_args,
            **extra,
        )
        if not standalone_mode:
            return run()
        try:
            code = run()
        except click.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            ctx = getattr(exc, "ctx", None)  # a UsageError knows its command; others do not
            where = ctx.command_path if ctx else "unbake"
            print_error(f"{exc.format_message().rstrip('.')}; see `{where} --help`.")
            sys.exit(2)
        except typer.Abort:
            print_error("aborted; the workspace is unchanged.")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


# Nothing printed is read as rich markup or emoji codes: messages and tables quote user
# text (IDs, subjects, paths), which must appear exactly as given.
_PLAIN: dict[str, Any] = {"markup": False, "emoji": False, "highlight": False}
# A pipe gets a wide console, so the comparison table is never truncated in logs.
console = Console(width=None if sys.stdout.isatty() else 200, **_PLAIN)
err_console = Console(stderr=True, **_PLAIN)


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


def parse_params(items: list[str] | None, option: str = "--param") -> dict[str, Any]:
    """``key=value`` pairs; values are parsed as JSON where possible (numbers, bools)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidParameterError(
                f"{option} {item!r} is not key=value; write it like {option} epochs=5."
            )
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def model_spec(
    model: str, model_params: dict[str, Any], strategy: str, strategy_params: dict[str, Any]
):
    """The spec ``train`` builds from ``--model`` and ``--model-param``, checked against
    the factory's signature before any workspace is created (``--param lora_rank`` of an
    ``hf:`` model is still read as the model parameter it is); a ``--param`` that only
    the model takes is refused, pointing at ``--model-param``."""
    import inspect

    from unbake.models import ModelSpec, check_model_params, factory_of
    from unbake.training import STRATEGIES

    if model.startswith("hf:"):
        if "lora_rank" in strategy_params:
            model_params.setdefault("lora_rank", strategy_params.pop("lora_rank"))
        spec = ModelSpec(model, model_params)
        check_model_params(spec)
        return spec
    spec = ModelSpec(model, model_params)
    check_model_params(spec)
    takes = set(inspect.signature(factory_of(spec)).parameters) - {"input_shape", "n_classes"}
    own = set(inspect.signature(STRATEGIES.get(strategy)).parameters)
    for key in strategy_params:
        if key in takes and key not in own:
            raise InvalidParameterError(
                f"--param {key} goes to the {strategy} strategy, which has no such parameter, "
                f"and {key!r} is a parameter of model {model!r}; give it as --model-param "
                f"{key}=VALUE."
            )
    return spec


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


def _table(title: str, columns: list[str], rows: list[list[Any]], *, left: int = 2) -> Table:
    """A rich table; its first ``left`` columns are left-justified, the rest (figures) right."""
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i < left else "right")
    for r in rows:
        table.add_row(*[f"{v:.2f}" if isinstance(v, float) else str(v) for v in r])
    return table
