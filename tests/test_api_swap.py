"""The served model is swapped atomically: once a request is applied (by a worker in
another process), no prediction is answered by a model that saw its data."""

import threading
import time

import pytest

pytest.importorskip("uvicorn")

import httpx
import uvicorn

from tests.waiting import wait_until
from unbake import Workspace
from unbake.service import DeletionService
from unbake.service.api import create_app
from unbake.testing.crash import kill9_trial
from unbake.workspace.tokens import create_token


@pytest.fixture
def server(root, train_ids):
    with Workspace.open(root) as ws:
        token, _ = create_token(ws, "operator")
    # A worker over the empty queue: it starts the fork server the test's worker comes
    # from (which imports unbake) before the predictions load the machine.
    assert kill9_trial(root, seed=0, kills=0) == 0
    svc = DeletionService(root)
    config = uvicorn.Config(create_app(svc), host="127.0.0.1", port=0, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_until(lambda: srv.started, "the server's start", poll=0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", token, svc, train_ids
    srv.should_exit = True
    thread.join(10)
    svc.close()


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
    # Not a fixed sleep: on a loaded machine the first answers can take longer than any guess.
    wait_until(lambda: len(results) >= 8, "predictions from the old model", poll=0.02)
    # The worker: another process, as `unbake worker` is (forked from a server that has
    # imported unbake once, so it costs a fork, not an import of torch).
    began = time.monotonic()
    assert kill9_trial(svc.root, seed=0, kills=0) == 0  # no kill: one worker drains the queue
    applied = time.monotonic()  # the request's `applied` entry committed before this
    wait_until(
        lambda: sum(s > applied for s, _, _ in list(results)) >= 4,
        "predictions after the request was applied",
        poll=0.02,
    )
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
