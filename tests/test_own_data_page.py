"""The "Your own data" section of the bring-your-own guide runs as written: its python
blocks, in order, in one namespace, in a fresh folder (standalone: it needs nothing from
the sections above it)."""

import re
import sys
from pathlib import Path

from tests import hf_standin

PAGE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "own-model.md"


def _section_blocks(text: str, heading: str) -> list[str]:
    section = text.split(f"\n{heading}\n", 1)[1]
    section = re.split(r"\n## ", section, maxsplit=1)[0]
    return re.findall(r"^```python\n(.*?)^```\s*$", section, flags=re.S | re.M)


def test_the_own_data_section_runs_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "datasets", hf_standin.module())
    blocks = _section_blocks(PAGE.read_text(encoding="utf-8"), "## Your own data")
    assert len(blocks) >= 5
    namespace: dict = {}
    for k, code in enumerate(blocks):
        exec(compile(code, f"own-model.md (own data, block {k + 1})", "exec"), namespace)
    # what the page claims, checked on what it left behind
    assert namespace["forget"].streamed and len(namespace["forget"]) == 10
    assert namespace["result"].method == "neggrad_plus"
    assert namespace["loader_model"].config.batch_size == namespace["loader"].batch_size == 32
    assert (tmp_path / "scans-ws" / "catalog.sqlite").exists()
    assert namespace["dataset"].train.streamed and len(namespace["people"]) == 500
