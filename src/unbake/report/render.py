"""Reports of benchmark results: Markdown, and one self-contained HTML file.

A result is the JSON object ``unbake bench NAME --out FILE.json`` wrote. Its rows become
tables (for ``tradeoff``: the trade-off table, the population attacks and the bank
timing; for ``approximate``: one table per forgetting scenario, mean ± std over seeds;
for any other benchmark: one table of every scalar column), its summary a list.
The HTML file embeds its plot as a base64 PNG and its style inline: it references no
external asset, so it can be mailed or archived as it is.

>>> md = render_markdown({"benchmark": "x", "dataset": "d", "rows": [{"a": 1.5}], "summary": {}})
>>> "| a |" in md and "| 1.500 |" in md
True
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unbake.evaluation.base import result_specs
from unbake.exceptions import InvalidParameterError
from unbake.report.plots import plot_tradeoff
from unbake.workspace.atomic import atomic_write_bytes, atomic_write_text

__all__ = [
    "Table",
    "load_result",
    "render_html",
    "render_markdown",
    "report_plot",
    "report_tables",
    "write_report",
]

#: The required keys of a benchmark result (see DESIGN.md, benchmark conventions).
REQUIRED = ("benchmark", "rows", "summary")


@dataclass
class Table:
    """A titled table of text cells; ``numeric[i]`` right-aligns column ``i``."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool] = field(default_factory=list)
    note: str = ""


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    """Read a benchmark result, or raise one line naming what is wrong and the fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise InvalidParameterError(
            f"Cannot read the benchmark result {path} ({why}); pass the JSON file that "
            "`unbake bench NAME --out FILE.json` wrote."
        ) from None
    try:
        result = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidParameterError(
            f"{path} is not JSON ({exc.msg} at line {exc.lineno}); pass the file that "
            "`unbake bench NAME --out FILE.json` wrote."
        ) from None
    missing = [k for k in REQUIRED if not isinstance(result, dict) or k not in result]
    if missing or not isinstance(result["rows"], list):
        raise InvalidParameterError(
            f"{path} is not a benchmark result (no {', '.join(missing) or 'list of rows'}); "
            "pass the file that `unbake bench NAME --out FILE.json` wrote."
        )
    return result


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "—"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _times(value: Any) -> str:
    return f"{value:.1f}×" if isinstance(value, int | float) and math.isfinite(value) else "—"


# column label, row key, format
TRADEOFF_COLUMNS: list[tuple[str, str, Any]] = [
    ("guarantee", "guarantee", str),
    ("seconds", "seconds", lambda v: _cell(v, 3)),
    ("speedup", "speedup", _times),
    ("TA retained %", "ta_retained", lambda v: _cell(v, 1)),
    ("avg gap", "avg_gap", lambda v: _cell(v, 2)),
    ("U-LiRA AUC", "ulira_auc", _cell),
    ("TPR@1%FPR", "ulira_tpr_at_1pct_fpr", _cell),
    ("verdict", "verdict", str),
    ("KLoM forget", "klom_forget", _cell),
    ("challenge", "challenge_score", _cell),
    ("ghost gap", "ghost_gap", _cell),
    ("audit s", "audit_s", lambda v: _cell(v, 1)),
]
BANK_COLUMNS: list[tuple[str, str, Any]] = [
    ("backend", "backend", str),
    ("workers", "workers", _cell),
    ("references", "references", _cell),
    ("seconds", "seconds", lambda v: _cell(v, 2)),
    ("speedup", "speedup", lambda v: _cell(v, 2)),
    ("efficiency", "efficiency", lambda v: _cell(v, 2)),
    ("with start-up", "efficiency_with_startup", lambda v: _cell(v, 2)),
    ("start-up s", "startup_s", lambda v: _cell(v, 2)),
    ("warm-up s", "warmup_s", lambda v: _cell(v, 2)),
    ("same bits", "bitwise_equal", _cell),
    ("load after", "load_after", lambda v: _cell(v, 2)),
    ("error", "error", _cell),
]


def _table(title: str, rows: list[dict[str, Any]], columns, note: str = "") -> Table:
    """The ``columns`` (label, key, format) of ``rows``; a column no row has is dropped."""
    present = [c for c in columns if any(c[1] in r for r in rows)]
    return Table(
        title,
        [label for label, _, _ in present],
        [
            [fmt(r.get(key)) if r.get(key) is not None else "—" for _, key, fmt in present]
            for r in rows
        ],
        [fmt is not str for _, _, fmt in present],
        note,
    )


def _tradeoff_tables(result: dict[str, Any]) -> list[Table]:
    rows = [r for r in result["rows"] if r.get("part") == "tradeoff"]
    bank = [r for r in result["rows"] if r.get("part") == "bank"]
    cfg = result.get("config", {})
    method = [("method", "method", str)]
    attacks = [(s.label, s.key, lambda v: _cell(v, 2)) for s in result_specs()]
    k = cfg.get("references", "?")
    return [
        _table(
            "Trade-off: efficiency, utility and privacy against retraining",
            rows,
            method + TRADEOFF_COLUMNS,
            f"Speedup against retraining the same model, measured in the same run; TA "
            f"retained against the original; U-LiRA, KLoM (median over the forget set), the "
            f"challenge score and the ghost gap from the audit against K = {k} reference models "
            f"(other recipes: K = {cfg.get('family_references', '?')}). The retrain row's audit "
            "is the privacy noise floor. " + cfg.get("challenge_note", ""),
        ),
        _table(
            "Population attacks and accuracy (%)",
            rows,
            method + attacks,
            "Membership-inference scores of the metric registry, forget against test.",
        ),
        _table(
            "Building the reference bank",
            bank,
            BANK_COLUMNS,
            "The same jobs and seeds on each backend; efficiency = speedup ÷ workers against "
            "sequential training on one thread. Ray's start-up and warm-up (one job per "
            "worker) are timed apart; the local pool starts its processes inside the build.",
        ),
    ]


#: The approximate benchmark's columns: (label, row key, decimals).
APPROXIMATE_COLUMNS = [
    ("FA", "fa", 2),
    ("RA", "ra", 2),
    ("TA", "ta", 2),
    ("MIA AUC", "mia", 2),
    ("MIA-efficacy", "mia_efficacy", 2),
    ("avg gap", "avg_gap", 2),
    ("seconds", "seconds", 1),
    ("× retrain time", "time_fraction", 3),
]
_FRAMES = ("retrain", "retrain_seed", "original")


def _mean_std(row: dict[str, Any], key: str, digits: int) -> str:
    mean, std = row.get(key), row.get(f"{key}_std")
    if not isinstance(mean, int | float) or not math.isfinite(mean):
        return "—"
    if row.get("seeds", 1) > 1 and isinstance(std, int | float) and math.isfinite(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def _approximate_tables(result: dict[str, Any]) -> list[Table]:
    """One table per scenario: the framing rows first, then the methods by avg gap."""
    cfg = result.get("config", {})
    strength = result.get("summary", {}).get("attack_strength", {})
    tables = []
    for scenario, request in cfg.get("scenarios", {}).items():
        rows = [r for r in result["rows"] if r.get("scenario") == scenario]
        framing = sorted(
            (r for r in rows if r["method"] in _FRAMES), key=lambda r: _FRAMES.index(r["method"])
        )
        methods = sorted(
            (r for r in rows if r["method"] not in _FRAMES),
            key=lambda r: (r.get("avg_gap") is None, r.get("avg_gap") or 0.0),
        )
        cells = [
            {"method": r["method"], **{k: _mean_std(r, k, d) for _, k, d in APPROXIMATE_COLUMNS}}
            for r in framing + methods
        ]
        what = (
            f"forgetting class {request['forget_class']}"
            if "forget_class" in request
            else f"forgetting a random {100 * request.get('forget_fraction', 0):g}%"
        )
        seeds = cfg.get("seeds", [])
        attack = strength.get(scenario, {})
        attack_text = _mean_std(
            {"a": attack.get("mean"), "a_std": attack.get("std"), "seeds": len(seeds)}, "a", 1
        )
        note = (
            f"Mean ± std over seeds {seeds}; accuracies and MIA in %, avg gap in points "
            "against `retrain` (the reference); × retrain time against the reference timed in "
            "the same cell. `retrain_seed` (a retrain with another seed) is the noise floor, "
            "`original` is doing nothing. The population attack's balanced accuracy on retain "
            f"against test: {attack_text} (50: it tells them apart no better than chance)."
        )
        tables.append(
            _table(
                f"Approximate unlearning, {what}",
                cells,
                [("method", "method", str)]
                + [(label, key, lambda v: v) for label, key, _ in APPROXIMATE_COLUMNS],
                note,
            )
        )
    return tables


def _generic_tables(result: dict[str, Any]) -> list[Table]:
    """One table of every scalar column; rows that name their ``part`` get a table per
    part, each with only the columns its rows have."""
    rows = result["rows"]
    parts = list(dict.fromkeys(r.get("part") for r in rows))
    tables = []
    for part in parts:
        group = [r for r in rows if r.get("part") == part]
        keys = dict.fromkeys(k for r in group for k, v in r.items() if not isinstance(v, dict))
        title = "Rows" if len(parts) == 1 else f"Rows: {part}"
        tables.append(_table(title, group, [(k, k, _cell) for k in keys]))
    return tables


def report_tables(result: dict[str, Any]) -> list[Table]:
    """The tables of a result: specialised for ``tradeoff`` and ``approximate``, generic
    otherwise."""
    if result.get("benchmark") == "tradeoff":
        return _tradeoff_tables(result)
    if result.get("benchmark") == "approximate":
        return _approximate_tables(result)
    return _generic_tables(result)


def report_plot(result: dict[str, Any]) -> bytes | None:
    """The result's plot as PNG bytes (``tradeoff``), or None for benchmarks without one."""
    return plot_tradeoff(result) if result.get("benchmark") == "tradeoff" else None


def _summary_items(result: dict[str, Any]) -> list[tuple[str, str]]:
    summary = result.get("summary", {})
    met = summary.get("targets_met", {})
    items = []
    for key, value in summary.items():
        if key in ("targets", "targets_met"):
            continue
        verdict = {True: "met", False: "missed", None: "not measured in this run"}
        mark = f" (target {verdict[met[key]]})" if key in met else ""
        items.append((key, _cell(value, 4) + mark))
    return items


def _heading(result: dict[str, Any]) -> tuple[str, str]:
    machine = result.get("machine", {})
    title = f"unbake bench {result['benchmark']} on {result.get('dataset', '?')}"
    if result.get("quick"):
        title += " (--quick)"
    line = (
        f"Run {result.get('date', '?')} on {machine.get('cpu', '?')} "
        f"({machine.get('cores', '?')} cores, torch {machine.get('torch', '?')}, "
        f"{machine.get('device', '?')}); load average "
        f"{_cell(result.get('load_average', {}).get('start'))} → "
        f"{_cell(result.get('load_average', {}).get('end'))}."
    )
    return title, line


def _markdown_table(table: Table) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    aligns = ["---:" if n else "---" for n in table.numeric]
    lines = [
        "| " + " | ".join(map(esc, table.headers)) + " |",
        "|" + "|".join(aligns) + "|",
        *("| " + " | ".join(map(esc, row)) + " |" for row in table.rows),
    ]
    note = f"\n\n{table.note}" if table.note else ""
    return f"## {table.title}\n\n" + "\n".join(lines) + note + "\n"


def render_markdown(result: dict[str, Any]) -> str:
    """The result as Markdown: heading, summary, then each table."""
    title, line = _heading(result)
    summary = "\n".join(f"- **{k}**: {v}" for k, v in _summary_items(result))
    tables = "\n".join(_markdown_table(t) for t in report_tables(result))
    return f"# {title}\n\n{line}\n\n## Summary\n\n{summary}\n\n{tables}"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 78em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; font-size: 0.86em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.55em; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
p.note { color: #555; font-size: 0.85em; max-width: 70em; } img { max-width: 100%; }
"""


def _html_table(table: Table) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if num else "text"}">{esc(cell)}</td>'
            for cell, num in zip(row, table.numeric, strict=True)
        )
        + "</tr>"
        for row in table.rows
    )
    note = f'<p class="note">{esc(table.note)}</p>' if table.note else ""
    return (
        f"<h2>{esc(table.title)}</h2>\n<table><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>{note}\n"
    )


def render_html(result: dict[str, Any], png: bytes | None = None) -> str:
    """One self-contained HTML page: inline style, the plot as a base64 PNG, the tables."""
    esc = html.escape
    title, line = _heading(result)
    png = report_plot(result) if png is None else png
    figure = ""
    if png:
        data = base64.b64encode(png).decode("ascii")
        figure = (
            '<h2>Privacy, utility and efficiency</h2>\n<img alt="trade-off plot" '
            f'src="data:image/png;base64,{data}">\n'
        )
    summary = "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in _summary_items(result))
    tables = "".join(_html_table(t) for t in report_tables(result))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>{esc(title)}</h1>\n<p>{esc(line)}</p>\n{figure}"
        f"<h2>Summary</h2>\n<ul>{summary}</ul>\n{tables}</body></html>\n"
    )


def write_report(
    result: dict[str, Any],
    *,
    html_path: str | os.PathLike | None = None,
    markdown_path: str | os.PathLike | None = None,
    plot_path: str | os.PathLike | None = None,
) -> list[Path]:
    """Write the requested renderings atomically; the paths written."""
    written = []
    png = report_plot(result) if html_path or plot_path else None
    if plot_path and png is None:
        raise InvalidParameterError(
            f"Benchmark {result['benchmark']!r} has no plot; drop --plot (the tradeoff "
            "benchmark has one)."
        )
    if html_path:
        atomic_write_text(Path(html_path), render_html(result, png))
        written.append(Path(html_path))
    if markdown_path:
        atomic_write_text(Path(markdown_path), render_markdown(result))
        written.append(Path(markdown_path))
    if plot_path and png is not None:
        atomic_write_bytes(Path(plot_path), png)
        written.append(Path(plot_path))
    return written
