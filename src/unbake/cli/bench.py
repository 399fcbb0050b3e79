"""Benchmarks and their reports: ``bench`` and ``report``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand

from unbake import _json as strict_json
from unbake.cli._common import (
    DataDirOpt,
    JsonOpt,
    ThreadsOpt,
    _apply_threads,
    _emit_json,
    _handle_errors,
    _int_list,
    console,
)

# --- bench ---------------------------------------------------------------------------


class BenchCommand(TyperCommand):
    """Names the registered benchmarks in ``--help`` only: listing them imports them all
    (and torch), which the rest of the CLI must not pay for."""

    def format_help(self, ctx, formatter):
        from unbake.bench import BENCHMARKS

        for param in self.params:
            if param.name == "name" and isinstance(param, TyperArgument):
                param.help = f"Benchmark: {', '.join(BENCHMARKS.available())}."
        return super().format_help(ctx, formatter)


@_handle_errors
def bench(
    name: Annotated[str, typer.Argument(help="Benchmark: see `unbake bench --help`.")],
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
