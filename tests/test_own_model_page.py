"""The "bring your own model and data" guide runs as written: every snippet, in order."""

import importlib.metadata
import sys
from pathlib import Path

from tests.docs_snippets import blocks, run_page
from unbake import Workspace, models

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PAGE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "own-model.md"


def _install_entry_points(monkeypatch, declared: dict) -> None:
    """What `pip install` of a package with the page's pyproject table would do."""
    eps = [
        importlib.metadata.EntryPoint(name, value, group)
        for group, items in declared["project"]["entry-points"].items()
        for name, value in items.items()
    ]
    real = importlib.metadata.entry_points

    def entry_points(**kw):
        mine = [ep for ep in eps if ep.group == kw.get("group")]
        return mine or real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(models.MODELS, "_items", dict(models.MODELS._items))
    monkeypatch.setattr(models.MODELS, "_plugins_loaded", False)


def test_every_snippet_of_the_page_runs_in_order(tmp_path, monkeypatch):
    # The "Your own model" part; "Your own data" runs on its own (tests/test_own_data_page.py).
    own_model = PAGE.read_text(encoding="utf-8").split("\n## Your own data\n", 1)[0]
    page = tmp_path / "own-model.md"
    page.write_text(own_model, encoding="utf-8")
    (toml,) = [b for b in blocks(own_model) if b.lang == "toml"]
    _install_entry_points(monkeypatch, tomllib.loads(toml.code))
    monkeypatch.setattr(models, "_ALLOWED", set())  # the page's allow_factory calls
    monkeypatch.syspath_prepend(str(tmp_path))  # to reopen its workspaces afterwards
    namespace, shown = run_page(page, tmp_path)
    assert {b.lang for b in shown} == {"text", "toml"}
    # the page's claims, checked on what it left behind
    assert namespace["result"].method == "retrain" and len(namespace["retain"]) > 0
    trained = {"ws": (32, "own"), "cli-ws": (16, "monolithic"), "own-ws": (32, "own")}
    trained["ep-ws"] = (16, "monolithic")
    for name, (hidden, strategy) in trained.items():
        with Workspace.open(tmp_path / name) as ws:
            model = ws.load_model()
            assert model.module[1].out_features == hidden, name
            assert model.strategy == strategy, name
    with Workspace.open(tmp_path / "ws") as ws:
        assert [r["method"] for r in ws.log()] == ["retrain"]
