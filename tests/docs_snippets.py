"""Run a documentation page's snippets, in order, the way a reader would.

:func:`blocks` extracts a page's fenced code blocks. :func:`run_page` runs them in a
working folder: a block with a ``title="name.py"`` is a file the page asks the reader to
create, and is written there; ``python`` blocks run in order in one namespace (each sees
what the ones above defined); each ``unbake …`` line of a ``bash`` block runs through
the CLI in the same process (``VAR=value`` prefixes set for that line only) and must
exit 0; other blocks (``text``, ``toml``) are shown, and returned for the test to check.
The working folder is on ``sys.path`` while the page runs, so the files it wrote import.

Any page can be tested this way (``tests/test_own_model_page.py`` runs the "bring your
own model and data" guide); a page's test adds only what the page cannot do itself,
such as installing the entry points a ``toml`` block declares.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Block", "blocks", "run_page"]

_FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```\s*$", re.S | re.M)
_TITLE = re.compile(r'title="([^"]+)"')


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, its ``title`` (if any), its code and first line."""

    lang: str
    title: str | None
    code: str
    line: int


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown page, in order."""
    out = []
    for m in _FENCE.finditer(text):
        title = _TITLE.search(m.group(2))
        line = text.count("\n", 0, m.start()) + 1
        out.append(Block(m.group(1), title.group(1) if title else None, m.group(3), line))
    return out


@contextlib.contextmanager
def _env(pairs: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in pairs}
    os.environ.update(pairs)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_bash(block: Block, page: str) -> None:
    from typer.testing import CliRunner

    from unbake.cli import app

    runner = CliRunner()
    for n, raw in enumerate(block.code.replace("\\\n", " ").splitlines()):
        tokens = shlex.split(raw.split(" #")[0])
        env = {}
        while tokens and re.match(r"^[A-Z_]+=", tokens[0]):
            key, _, value = tokens.pop(0).partition("=")
            env[key] = value
        if not tokens or tokens[0] != "unbake":
            continue
        with _env(env):
            result = runner.invoke(app, tokens[1:])
        where = f"{page}:{block.line + n + 1}"
        assert result.exit_code == 0, f"{where}: {raw}\n{result.output}"


def run_page(page: Path, workdir: Path) -> tuple[dict, list[Block]]:
    """Run ``page``'s snippets in ``workdir`` (see the module docstring); returns the
    namespace the ``python`` blocks left and the blocks it did not run.

    The current directory, ``sys.path`` and the modules imported from ``workdir`` are
    restored afterwards, so one page's files do not leak into another test.
    """
    text = page.read_text(encoding="utf-8")
    namespace: dict = {"__name__": "__docs__"}
    shown: list[Block] = []
    before, cwd = set(sys.modules), os.getcwd()
    sys.path.insert(0, str(workdir))
    os.chdir(workdir)
    try:
        for block in blocks(text):
            if block.title:
                (workdir / block.title).write_text(block.code, encoding="utf-8")
            elif block.lang == "python":
                code = "\n" * block.line + block.code  # tracebacks name the page's lines
                exec(compile(code, str(page), "exec"), namespace)
            elif block.lang == "bash":
                _run_bash(block, page.name)
            else:
                shown.append(block)
    finally:
        os.chdir(cwd)
        sys.path.remove(str(workdir))
        for name in set(sys.modules) - before:
            origin = getattr(sys.modules[name], "__file__", None) or ""
            if origin.startswith(str(workdir)):
                del sys.modules[name]
    return namespace, shown
