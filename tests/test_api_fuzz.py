"""schemathesis against the committed OpenAPI schema: no 5xx, every response in the schema."""

import json
from pathlib import Path

import pytest

pytest.importorskip("schemathesis")

from unbake import TrainConfig, Workspace
from unbake.bench.service import fuzz_api
from unbake.service import DeletionService, apply
from unbake.service.api import create_app
from unbake.workspace.tokens import create_token

SPEC = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"


def _fuzz(root, examples, role="operator"):
    with Workspace.create(root, dataset="digits") as ws:
        apply.train(ws, model="logreg", config=TrainConfig.parse(epochs=1, batch_size=64), seed=0)
        token, _ = create_token(ws, role)
    with DeletionService(root) as svc:
        out = fuzz_api(create_app(svc), json.loads(SPEC.read_text()), token, examples=examples)
        svc.workspace.catalog.verify_ledger()  # whatever was filed, the ledger still verifies
    return out


def test_fuzz_a_few_cases_per_operation(tmp_path):
    out = _fuzz(tmp_path / "ws", examples=5)
    assert out["failures"] == []
    assert out["cases"] >= 16  # every operation ran, valid and invalid cases


@pytest.mark.slow
@pytest.mark.parametrize("role", ["operator", "submitter", "auditor"])
def test_fuzz_many_cases(tmp_path, role):
    out = _fuzz(tmp_path / "ws", examples=60, role=role)
    assert out["failures"] == []
    assert out["cases"] >= 300
