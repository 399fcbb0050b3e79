"""The served model is swapped atomically: once a request is applied (by a worker in
another process), no prediction is answered by a model that saw its data."""

import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("uvicorn")

import httpx
import uvicorn

from unbake import TrainConfig, Workspace
from unbake.service import DeletionService, apply
from unbake.service.api import create_app
from unbake.workspace.tokens import create_token

APPLY = "from unbake.service import DeletionService; import sys; print(DeletionService(sys.argv[1]).apply_pending())"


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "ws"
    with Workspace.create(root, dataset="digits") as ws:
        apply.train(ws, model="logreg", config=TrainConfig.parse(epochs=1, batch_size=64), seed=0)
        token, _ = create_token(ws, "operator")
        train = [r["sample_id"] for r in ws.samples() if r["split"] == "train"]
    svc = DeletionService(root)
    config = uvicorn.Config(create_app(svc), host="127.0.0.1", port=0, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", token, svc, train
    srv.should_exit = True
    thread.join(10)
    svc.close()


def _wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.02)


def test_no_prediction_after_applied_comes_from_the_old_model(server):
    url, token, svc, train = server
    old = svc.current_model()["model_id"]
    rid = svc.submit(sample_ids=train[:5]).request_id
    results: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def hammer():
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
            while not stop.is_set():
                start = time.monotonic()
                r = c.post("/v1/predict", json={"inputs": [[1.0] * 64] * 8})
                model = r.json().get("model_id") if r.status_code == 200 else None
                results.append((start, r.status_code, model))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    _wait_for(lambda: len(results) >= 8, "predictions from the old model")  # not a fixed
    # sleep: on a loaded machine the first answers can take longer than any guess
    # The worker: another process, as `unbake worker` is.
    began = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", APPLY, str(svc.root)], capture_output=True, text=True
    )
    applied = time.monotonic()  # the request's `applied` entry committed before this
    assert out.returncode == 0 and rid in out.stdout, out.stderr
    _wait_for(lambda: sum(s > applied for s, _, _ in list(results)) >= 4, "predictions after it")
    stop.set()
    for t in threads:
        t.join()
    new = svc.current_model()["model_id"]
    assert new != old and svc.request(rid)["state"] == "applied"
    assert {code for _, code, _ in results} == {200}
    before = [m for s, _, m in results if s < began]
    after = [m for s, _, m in results if s > applied]
    assert before and set(before) == {old}  # the old model was being served
    assert len(after) >= 4 and set(after) == {new}  # and never after `applied`
    assert svc.workspace.catalog.model(old)["status"] == "purged"
