import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture
def workspace_dir(tmp_path):
    return tmp_path / "ws"
