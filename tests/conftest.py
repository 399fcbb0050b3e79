import os

import pytest

import unbake  # noqa: F401  (first: its thread policy must precede torch)

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture
def workspace_dir(tmp_path):
    return tmp_path / "ws"
