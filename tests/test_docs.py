"""The documentation: the README is the door, the site builds offline with ``--strict``,
the results pages show exactly the committed JSON, and the snippets that claim to run do."""

import html
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unbake.cli import app
from unbake.evaluation.base import result_specs
from unbake.report.docs import METHODS_MARKER, methods_table, results_pages
from unbake.report.render import APPROXIMATE_COLUMNS, BANK_COLUMNS, TRADEOFF_COLUMNS, load_result

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
README = ROOT / "README.md"


def _fenced(text: str, lang: str) -> list[str]:
    """The code blocks in ``lang`` that follow a ``<!-- tested -->`` line."""
    pattern = rf"<!-- tested -->\n```{lang}\n(.*?)\n```"
    return re.findall(pattern, text, flags=re.S)


# --- the README ---------------------------------------------------------------------------


def test_readme_is_a_short_door_with_the_two_commands_and_working_links():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    makefile = (ROOT / "Makefile").read_text()
    for command in ("demo", "test"):
        assert re.search(rf"^{command}:", makefile, flags=re.M)
        assert f"make {command}" in text
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "the README links into the docs"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


def test_readme_python_quickstart_runs(tmp_path, monkeypatch):
    (block,) = _fenced(README.read_text(encoding="utf-8"), "python")
    assert len(block.splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert (tmp_path / "ws" / "catalog.sqlite").exists()
    assert namespace["record"].method == "retrain"
    assert namespace["record"].evaluation is not None


def test_readme_cli_quickstart_runs(tmp_path, monkeypatch):
    (block,) = _fenced(README.read_text(encoding="utf-8"), "bash")
    lines = [line.split("#")[0].strip() for line in block.splitlines()]
    commands = [shlex.split(line) for line in lines if line]
    assert 5 <= len(commands) <= 12 and all(c[0] == "unbake" for c in commands)
    monkeypatch.chdir(tmp_path)  # the default workspace, ./unbake-workspace, as printed
    runner = CliRunner()
    for command in commands:
        out = runner.invoke(app, command[1:])
        assert out.exit_code == 0, (command, out.output)
    log = runner.invoke(app, ["log", "--json"])
    assert log.exit_code == 0 and log.stdout.count('"request_id"') >= 2, log.stdout


# --- the site -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings_handlers.python")
    out = tmp_path_factory.mktemp("site")
    env = {
        **os.environ,
        "NO_MKDOCS_2_WARNING": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_site_builds_strict_and_references_nothing_online(site):
    pages = list(site.rglob("*.html"))
    assert (site / "index.html").exists() and len(pages) > 20
    remote = re.compile(r"<(?:link|script|img)[^>]*(?:href|src)=\"(?:https?:)?//", re.I)
    online = [p.relative_to(site) for p in pages if remote.search(p.read_text(encoding="utf-8"))]
    assert not online, online
    for path in RESULTS.glob("*.json"):
        assert (site / "results" / path.stem / "index.html").exists(), path.name
    reference = (site / "reference" / "workspace" / "index.html").read_text(encoding="utf-8")
    assert "Workspace" in reference and "commit_staged" in reference  # from the docstrings


def _cells_of(markdown: str) -> list[str]:
    return [
        cell.strip().replace("\\|", "|")
        for line in markdown.splitlines()
        if line.startswith("| ") and not line.startswith("|---")
        for cell in re.split(r"(?<!\\)\|", line)[1:-1]
    ]


def test_built_results_pages_show_the_generated_tables_cell_for_cell(site):
    for uri, page in results_pages(RESULTS).items():
        if uri.endswith("index.md"):
            continue
        built = (site / uri.removesuffix(".md") / "index.html").read_text(encoding="utf-8")
        cells = [
            html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
            for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", built, flags=re.S)
        ]
        expected = [re.sub(r"`([^`]*)`", r"\1", c) for c in _cells_of(page)]
        assert cells == expected, uri


def test_methods_table_comes_from_the_tags(site):
    from unbake.methods import METHODS

    page = (DOCS / "guides" / "approximate.md").read_text(encoding="utf-8")
    assert METHODS_MARKER in page and "| `retrain` |" not in page  # not typed by hand
    built = html.unescape((site / "guides" / "approximate" / "index.html").read_text())
    table = methods_table()
    for name in METHODS.available():
        tags = METHODS.create(name).tags
        assert f"| `{name}` | {tags.kind} |" in table
        assert name in built and (tags.cost or "—").split("`")[0][:40] in built


# --- the results pages equal their JSON ----------------------------------------------------

NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def _close(text: str, value) -> bool:
    """Whether the figure ``text`` is ``value`` rounded to the digits it shows."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return text == "—"
    if isinstance(value, bool):
        return text == ("yes" if value else "no")
    if not isinstance(value, int | float):
        return text == str(value)
    (number,) = NUMBER.findall(text.replace(",", ""))
    decimals = len(number.split("e")[0].partition(".")[2])
    return abs(float(number) - value) <= 0.5 * 10**-decimals + 1e-12 * abs(value)


def _tables(page: str) -> list[tuple[str, list[str], list[list[str]]]]:
    found = []
    for title, body in re.findall(r"^## (.+?)\n\n((?:\|.*\|\n)+)", page, flags=re.M):
        lines = [line for line in body.splitlines() if not line.startswith("|---")]
        split = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
        found.append((title, split[0], split[1:]))
    return found


def _check_rows(rows, headers, cells, keys):
    assert len(rows) == len(cells)
    for row, line in zip(rows, cells, strict=True):
        for header, text in zip(headers, line, strict=True):
            key = keys[header]
            value = row.get(key)
            if isinstance(value, dict | list):
                continue
            if text.endswith("×"):
                text = text[:-1]
            assert _close(text, value), (header, text, value)


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.stem)
def test_every_figure_on_a_results_page_is_its_json(path):
    result = load_result(path)
    page = results_pages(RESULTS)[f"results/{path.stem}.md"]
    summary = dict(re.findall(r"^- \*\*(.+?)\*\*: (.*)$", page, flags=re.M))
    shown = {k: v for k, v in result["summary"].items() if k not in ("targets", "targets_met")}
    assert set(summary) == set(shown)
    for key, text in summary.items():
        value = shown[key]
        if isinstance(value, int | float | type(None)) and not isinstance(value, bool):
            assert _close(text.split(" (target")[0], value), (key, text, value)
    tables = _tables(page)
    assert tables
    if result["benchmark"] == "approximate":
        for title, headers, cells in tables:
            (scenario,) = [
                s
                for s, req in result["config"]["scenarios"].items()
                if ("class" in title) == ("forget_class" in req)
            ]
            by_method = {r["method"]: r for r in result["rows"] if r["scenario"] == scenario}
            keys = {label: key for label, key, _ in APPROXIMATE_COLUMNS}
            for line in cells:
                row = by_method[line[0]]
                for header, text in zip(headers[1:], line[1:], strict=True):
                    mean, _, std = text.partition(" ± ")
                    assert _close(mean, row.get(keys[header])), (line[0], header, text)
                    if std:
                        assert _close(std, row.get(f"{keys[header]}_std")), (line[0], header)
    elif result["benchmark"] == "tradeoff":
        rows = [r for r in result["rows"] if r.get("part") == "tradeoff"]
        bank = [r for r in result["rows"] if r.get("part") == "bank"]
        attacks = {s.label: s.key for s in result_specs()}
        method = {"method": "method"}
        (_, h1, c1), (_, h2, c2), (_, h3, c3) = tables
        _check_rows(rows, h1, c1, method | {label: key for label, key, _ in TRADEOFF_COLUMNS})
        _check_rows(rows, h2, c2, method | attacks)
        _check_rows(bank, h3, c3, {label: key for label, key, _ in BANK_COLUMNS})
    else:
        parts = list(dict.fromkeys(r.get("part") for r in result["rows"]))
        assert len(tables) == len(parts)
        for part, (_, headers, cells) in zip(parts, tables, strict=True):
            rows = [r for r in result["rows"] if r.get("part") == part]
            _check_rows(rows, headers, cells, {h: h for h in headers})


# --- the guide pages ----------------------------------------------------------------------

HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b")


def _prose(text: str) -> str:
    return re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))


def test_no_commit_hashes_in_the_prose():
    pages = [README, *DOCS.rglob("*.md")]
    found = {p.name: HASH.findall(_prose(p.read_text(encoding="utf-8"))) for p in pages}
    assert not {k: v for k, v in found.items() if v}


@pytest.mark.parametrize(
    "page", sorted(p for p in DOCS.rglob("*.md") if "<!-- tested -->\n```python" in p.read_text())
)
def test_tested_python_snippets_on_guide_pages_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for block in _fenced(page.read_text(encoding="utf-8"), "python"):
        exec(compile(block, str(page), "exec"), {})


def _unbake_lines():
    """Every ``unbake …`` command line of a bash block in the README and the docs."""
    pages = [README, *DOCS.rglob("*.md")]
    for page in pages:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"^(?:[A-Z_]+=\S+ )+", "", line.split(" #")[0].strip())
                if line.startswith("unbake "):
                    yield page.name, line


def test_every_command_and_option_on_the_pages_exists():
    import typer

    root = typer.main.get_command(app)
    seen = 0
    for page, line in _unbake_lines():
        tokens = [t.strip("[]") for t in shlex.split(line.replace("&", ""))][1:]
        command = root
        while tokens and tokens[0] in getattr(command, "commands", {}):
            command = command.commands[tokens.pop(0)]
        assert not hasattr(command, "commands"), (page, line)
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        used = {t.split("=")[0] for t in tokens if t.startswith("-") and t != "-"}
        assert used <= options | {"--help"}, (page, line, used - options)
        seen += 1
    assert seen > 40
