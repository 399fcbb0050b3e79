"""The codebase's layout rules, checked on the source: SQL lives in the stores only."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "unbake"
#: The modules that own tables (and the catalog, which owns the schema and connection).
STORES = {
    "workspace/catalog.py",
    "workspace/ledger.py",
    "workspace/personal.py",
    "workspace/tokens.py",
    "workspace/references.py",
    "workspace/sample_store.py",
    "workspace/model_store.py",
    "workspace/request_store.py",
}
SQL = re.compile(
    r"\b(SELECT\b[^\"']*\bFROM|INSERT (OR \w+ )?INTO|UPDATE \w+ SET|DELETE FROM|"
    r"CREATE (TEMP )?TABLE|SAVEPOINT|PRAGMA)\b"
)


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_no_sql_outside_the_stores():
    found = [
        f"{path.relative_to(SRC)}:{n}"
        for path in _modules()
        if str(path.relative_to(SRC)) not in STORES
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if SQL.search(line)
    ]
    assert found == [], f"SQL outside the stores (move it into a store): {found}"


def test_the_pattern_finds_sql():
    assert SQL.search('"SELECT sample_id FROM samples"')
    assert SQL.search("cur.execute(\"UPDATE models SET status='purged'\")")
    assert not SQL.search("select the samples from a request")
