"""The exact families live in one package each: no import runs from training/ or methods/
up into them, and their strategies and methods are registered whenever unbake is imported."""

import ast
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

import unbake
from tests.waiting import HUNG_AFTER
from unbake import TrainConfig, fit
from unbake.methods import METHODS, UnlearnTask
from unbake.testing import tiny_dataset

SRC = pathlib.Path(unbake.__file__).parent


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("lower", ["training", "methods"])
def test_lower_layers_never_import_the_families(lower):
    upward = {
        f"{path.relative_to(SRC)}: {name}"
        for path in sorted((SRC / lower).rglob("*.py"))
        for name in _imports(path)
        if name == "unbake.families" or name.startswith("unbake.families.")
    }
    assert not upward, upward


def test_a_fresh_interpreter_registers_the_families_from_any_entry_module():
    # Importing only the registries' own modules still runs unbake/__init__, which
    # imports the families: what a spawned worker or a Ray task does when it unpickles.
    code = (
        "import json; from unbake.training import STRATEGIES; from unbake.methods import METHODS;"
        "print(json.dumps([STRATEGIES.available(), METHODS.available()]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=HUNG_AFTER
    )
    strategies, methods = json.loads(out.stdout)
    assert {"sisa", "certified"} <= set(strategies)
    assert {"sisa", "certified"} <= set(methods)


@pytest.mark.parametrize(
    ("strategy", "model", "params"),
    [
        ("sisa", "logreg", {"shards": 2, "slices": 2, "assignment": "hash"}),
        ("certified", "logreg", {"lam": 1e-2, "sigma": 5.0}),
    ],
)
def test_retrain_finds_the_family_strategy_and_matches_training_from_scratch(
    strategy, model, params
):
    train = tiny_dataset().train.subset(np.arange(120))
    config = TrainConfig.parse(epochs=1, batch_size=32)
    original = fit(
        train, n_classes=10, model=model, config=config, strategy=strategy, strategy_params=params
    )
    forget, retain = train.split(train.ids[:5])
    result = METHODS.create("retrain").unlearn(UnlearnTask(original, forget, retain), seed=0)
    scratch = fit(
        retain, n_classes=10, model=model, config=config, strategy=strategy, strategy_params=params
    )
    assert result.model.strategy == strategy
    assert result.model.describe() == original.describe()
    got, want = result.model.module.state_dict(), scratch.module.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
