"""The documentation's generated pages: results from ``benchmarks/results/*.json`` and the
methods table from the method registry's tags and hyperparameter declarations.

Nothing here retypes a figure: a results page is ``unbake report``'s Markdown of one
committed JSON (:func:`~unbake.report.render.render_markdown`), and the methods table is
built from each registered method's :class:`~unbake.methods.base.MethodTags` and its
declared hyperparameters (:func:`unbake._validation.parameters`), as ``unbake methods``
prints them. The MkDocs
hook ``docs/hooks.py`` adds these pages to the site at build time.

>>> page = results_page({"benchmark": "x", "dataset": "d", "rows": [{"a": 1.5}], "summary": {}})
>>> "| 1.500 |" in page
True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unbake.report.render import load_result, render_markdown

if TYPE_CHECKING:
    from unbake.registry import ClassRegistry

__all__ = [
    "methods_table",
    "parameters_table",
    "results_index",
    "results_page",
    "results_pages",
]

#: Where a results page lives in the site, under the docs folder.
RESULTS_DIR = "results"


def results_page(result: dict) -> str:
    """One benchmark result as a documentation page: exactly ``unbake report``'s Markdown,
    under a line that names its source."""
    return render_markdown(result)


def results_pages(results: str | os.PathLike) -> dict[str, str]:
    """``{"results/NAME.md": page}`` for every ``NAME.json`` in the folder ``results``,
    plus ``results/index.md`` listing them."""
    pages: dict[str, str] = {}
    found: list[tuple[str, dict]] = []
    for path in sorted(Path(results).glob("*.json")):
        result = load_result(path)
        note = (
            f"*Generated at build time from `benchmarks/results/{path.name}`; "
            f"rerun the benchmark and commit its JSON to change it.*\n\n"
        )
        pages[f"{RESULTS_DIR}/{path.stem}.md"] = _after_title(results_page(result), note)
        found.append((path.stem, result))
    pages[f"{RESULTS_DIR}/index.md"] = results_index(found)
    return pages


def _after_title(page: str, text: str) -> str:
    title, _, rest = page.partition("\n\n")
    return f"{title}\n\n{text}{rest}"


def results_index(found: list[tuple[str, dict]]) -> str:
    """The results section's front page: one line per committed benchmark JSON."""
    lines = [
        "# Benchmark results",
        "",
        "Every page in this section is generated when the site is built, from the JSON that "
        "`unbake bench NAME --out benchmarks/results/NAME.json` wrote and that is committed "
        "beside the code. No figure on them is typed by hand. `unbake report FILE.json` "
        "prints the same Markdown (`--html` for a self-contained page).",
        "",
        "| page | benchmark | dataset | run | quick |",
        "|---|---|---|---|---|",
    ]
    for stem, result in found:
        lines.append(
            f"| [{stem}]({stem}.md) | `{result['benchmark']}` | {result.get('dataset', '—')} "
            f"| {result.get('date', '—')} | {'yes' if result.get('quick') else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def methods_table() -> str:
    """The registered methods as a Markdown table, from their tags and docstrings, then
    their parameters (:func:`parameters_table`)."""
    from unbake.methods import METHODS

    lines = [
        "| method | kind | reads | needs strategy | inputs | what it is | cost | does not help |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in METHODS.available():
        method = METHODS.create(name)
        tags = method.tags
        summary = (type(method).__doc__ or "").strip().split("\n\n")[0]
        cells = [
            f"`{name}`",
            tags.kind,
            ", ".join(tags.reads) or "—",
            f"`{tags.requires_strategy}`" if tags.requires_strategy else "any",
            ", ".join(tags.inputs),
            " ".join(summary.replace("``", "`").split()),
            tags.cost or "—",
            tags.limits or "—",
        ]
        lines.append("| " + " | ".join(_esc(c) for c in cells) + " |")
    return "\n".join(lines) + "\n\n" + parameters_table()


def parameters_table(kind: str = "method") -> str:
    """Every registered method's (``kind="strategy"``: training strategy's)
    hyperparameters as declared: default, allowed values and help, as ``unbake methods``
    prints them.

    >>> "| `retrain` | `epochs` | `None` | an int in [0, inf) or None |" in parameters_table()
    True
    >>> "| `sisa` | `shards` | `5` | an int in [1, inf) |" in parameters_table("strategy")
    True
    """
    from unbake._validation import parameters
    from unbake.methods import METHODS
    from unbake.training import STRATEGIES

    registry: ClassRegistry[Any] = METHODS if kind == "method" else STRATEGIES
    lines = [
        f"| {kind} | parameter | default | allowed | what it sets |",
        "|---|---|---|---|---|",
    ]
    for name in registry.available():
        for i, p in enumerate(parameters(registry.get(name))):
            cells = [
                f"`{name}`" if i == 0 else "",
                f"`{p['name']}`",
                f"`{p['default']!r}`",
                p["allowed"],
                p["help"],
            ]
            lines.append("| " + " | ".join(_esc(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


#: Where a page asks for the generated methods table.
METHODS_MARKER = "<!-- unbake: methods table -->"
#: Where a page asks for the generated table of the training strategies' parameters.
STRATEGIES_MARKER = "<!-- unbake: strategies table -->"


# --- the MkDocs hook (mkdocs.yml: hooks: [src/unbake/report/docs.py]) ---------------------


def on_files(files, config):
    """Add the results pages, generated from the committed JSON, to the site's files."""
    from mkdocs.structure.files import File

    root = Path(config.config_file_path).parent
    for uri, content in results_pages(root / "benchmarks" / "results").items():
        files.append(File.generated(config, uri, content=content))
    return files


def on_page_markdown(markdown, page, config, files):
    """Fill in the methods table and the strategies' parameters where a page asks."""
    if METHODS_MARKER in markdown:
        markdown = markdown.replace(METHODS_MARKER, methods_table())
    if STRATEGIES_MARKER in markdown:
        markdown = markdown.replace(STRATEGIES_MARKER, parameters_table("strategy"))
    return markdown
