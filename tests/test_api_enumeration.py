"""Nothing to enumerate over REST: a submitter cannot learn who is, or was, in the data.

Submitting a subject or sample IDs answers the same way whether they are present, absent
or already forgotten (status and body; and time within a wide band, checked under the
``slow`` marker); the worker rejects the last two, with a reason on that request only
that names no other request or submitter; another token's request answers exactly as a
missing one; no body carries a path.
"""

import re
import shutil
import sqlite3
import statistics
import time

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from tests.test_workspace import CSV_OPTIONS, _people_csv
from unbake import TrainConfig, Workspace
from unbake.service import DeletionService, apply
from unbake.service.api import create_app
from unbake.workspace.tokens import authenticate, create_token

REQUEST_ID = re.compile(r"req-[0-9a-f]{12}")
#: Submissions of each kind whose median time is compared.
ROUNDS = 7


class Recording(TestClient):
    """A test client that keeps every response body, to grep them all for paths."""

    bodies: list[bytes]

    def request(self, *args, **kwargs):
        response = super().request(*args, **kwargs)
        self.bodies.append(response.content)
        return response


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A 30-person CSV workspace with a model, an operator and two submitters; submitter
    ``a`` had one person and two sample IDs forgotten through the worker."""
    base = tmp_path_factory.mktemp("enum")
    source = _people_csv(base / "people.csv")
    root = base / "ws"
    cfg = TrainConfig.parse(epochs=1, batch_size=32)
    with Workspace.create(
        root, dataset="csv", dataset_options={"path": str(source), **CSV_OPTIONS}
    ) as ws:
        apply.train(ws, model="logreg", config=cfg, seed=0)
        tokens = {name: create_token(ws, "submitter")[0] for name in ("a", "b")}
        tokens["operator"] = create_token(ws, "operator")[0]
        rows = [r for r in ws.samples() if r["split"] == "train"]
    people = sorted({r["subject"] for r in rows})
    gone_person, present_person = people[0], people[1]
    ids = [r["sample_id"] for r in rows if r["subject"] not in (gone_person, present_person)]
    with DeletionService(root) as svc:
        a = authenticate(svc.workspace, tokens["a"]).name
        first = svc.submit(subject=gone_person, submitted_by=a)
        second = svc.submit(sample_ids=ids[:2], submitted_by=a)
        svc.apply_pending()
        assert {svc.request(r.request_id)["state"] for r in (first, second)} == {"applied"}
    selections = {
        "present subject": {"subject": present_person},
        "absent subject": {"subject": "nobody-at-all"},
        "forgotten subject": {"subject": gone_person},
        "present IDs": {"sample_ids": ids[2:4]},
        "absent IDs": {"sample_ids": ["u-none-1", "u-none-2"]},
        "forgotten IDs": {"sample_ids": ids[:2]},
    }
    earlier = {first.request_id, second.request_id}
    return base, root, tokens, selections, earlier


@pytest.fixture
def env(template, tmp_path):
    base, root, tokens, selections, earlier = template
    copy = tmp_path / "ws"
    shutil.copytree(root, copy)
    svc = DeletionService(copy)
    client = Recording(create_app(svc))
    client.bodies = []
    with client:
        yield client, svc, tokens, selections, earlier
    svc.close()
    for body in client.bodies:  # no response, errors included, names a path of the test's
        for path in (str(base), str(copy), str(tmp_path)):
            assert path.encode() not in body, body


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def _shape(response):
    """What a submission's answer shows, but for its (random) request ID."""
    body = response.json()
    assert REQUEST_ID.fullmatch(body["request_id"]), body
    masked = response.content.replace(body["request_id"].encode(), b"req-ID")
    return response.status_code, response.headers["content-type"], masked


def _submit_rounds(client, tokens, selections, rounds):
    """``rounds`` submissions of each kind by each of submitters a and b, interleaved so
    the machine's load falls on every kind alike: the answers' shapes, each kind's times
    in seconds, and the request IDs by (kind, submitter)."""
    shapes, times, filed = set(), {kind: [] for kind in selections}, {}
    for _ in range(rounds):
        for kind, selection in selections.items():
            for who in ("a", "b"):
                start = time.perf_counter()
                r = client.post("/v1/requests", json=selection, headers=auth(tokens[who]))
                times[kind].append(time.perf_counter() - start)
                shapes.add(_shape(r))
                filed.setdefault((kind, who), []).append(r.json()["request_id"])
    return shapes, times, filed


def test_submissions_answer_the_same_whether_present_absent_or_forgotten(env):
    client, svc, tokens, selections, _ = env
    shapes, _, filed = _submit_rounds(client, tokens, selections, ROUNDS)
    assert shapes == {
        (202, "application/json", b'{"request_id":"req-ID","state":"queued","duplicate":false}')
    }
    svc.apply_pending()
    for (kind, who), rids in filed.items():
        others = {t for k, t in tokens.items() if k != who}
        for rid in rids:
            r = client.get(f"/v1/requests/{rid}", headers=auth(tokens[who]))
            assert r.status_code == 200, r.text
            body = r.json()
            expected = "applied" if kind.startswith("present") else "rejected"
            assert body["state"] == expected, (kind, body)
            # Only its own ID, and no other submitter, anywhere in what it reads.
            assert set(REQUEST_ID.findall(r.text)) == {rid}, (kind, r.text)
            other_names = {authenticate(svc.workspace, t).name for t in others}
            assert not any(name in r.text for name in other_names), (kind, r.text)
            if expected == "rejected":
                reason = body["entries"][-1]["payload"]["reason"]
                assert reason and "\n" not in reason and not REQUEST_ID.search(reason)
                named = selections[kind].get("sample_ids") or [selections[kind]["subject"]]
                assert not any(x in reason for x in named)  # nor the IDs or the person
    # The worker's words do not tell an absent selection from a forgotten one.
    reasons = {
        kind: svc.request(filed[(kind, "b")][0])["entries"][-1]["payload"]["reason"]
        for kind in selections
        if not kind.startswith("present")
    }
    assert reasons["absent subject"] == reasons["forgotten subject"]
    assert reasons["absent IDs"] == reasons["forgotten IDs"]
    svc.workspace.catalog.verify_ledger()


# A timing band, which a loaded machine can break: so under `slow`, and `unbake bench
# service` measures the same band over HTTP (its summary's enumeration_max_median_ratio).
@pytest.mark.slow
def test_no_kind_of_submission_answers_measurably_slower(env):
    """A security property measured in time: medians and a wide band (a factor of 3 or
    50 ms), so that only a real difference between the kinds fails it."""
    client, _, tokens, selections, _ = env
    _, times, _ = _submit_rounds(client, tokens, selections, ROUNDS)
    medians = {kind: statistics.median(t) for kind, t in times.items()}
    assert max(medians.values()) <= 3 * min(medians.values()) + 0.05, medians


def test_a_submitter_sees_only_its_own_requests(env):
    client, _, tokens, selections, earlier = env
    mine = client.post(
        "/v1/requests", json=selections["absent subject"], headers=auth(tokens["b"])
    ).json()["request_id"]
    listed = {r["request_id"] for r in client.get("/v1/requests", headers=auth(tokens["b"])).json()}
    assert listed == {mine}
    theirs = {r["request_id"] for r in client.get("/v1/requests", headers=auth(tokens["a"])).json()}
    assert theirs == earlier
    everyone = client.get("/v1/requests", headers=auth(tokens["operator"])).json()
    assert {r["request_id"] for r in everyone} == earlier | {mine}


@pytest.mark.parametrize("suffix", ["", "/certificate"])
def test_another_tokens_request_answers_as_a_missing_one(env, suffix):
    client, _, tokens, _, earlier = env
    theirs = sorted(earlier)[0]  # filed by submitter a; applied, not certified
    missing = "req-" + "0" * 12
    assert missing not in earlier
    got = client.get(f"/v1/requests/{theirs}{suffix}", headers=auth(tokens["b"]))
    none = client.get(f"/v1/requests/{missing}{suffix}", headers=auth(tokens["b"]))
    assert got.status_code == none.status_code == 404
    assert got.content.replace(theirs.encode(), b"ID") == none.content.replace(
        missing.encode(), b"ID"
    )
    assert dict(got.headers) == dict(none.headers)  # same length, same type
    assert got.json()["error"]["type"] == "NotFoundError"
    # Its own submitter and an operator read it.
    for who in ("a", "operator"):
        assert client.get(f"/v1/requests/{theirs}", headers=auth(tokens[who])).status_code == 200


def test_error_bodies_carry_no_path(template, tmp_path):
    """A read-only workspace (409) and a damaged catalog (500) have messages that name
    the workspace folder for a local operator; over REST they show ``<workspace>``."""
    _, root, tokens, selections, _ = template
    copy = tmp_path / "ws"
    shutil.copytree(root, copy)
    conn = sqlite3.connect(copy / "catalog.sqlite")
    conn.execute("UPDATE ledger SET payload = '{not json' WHERE seq = 1")
    conn.commit()
    conn.close()
    with DeletionService(copy, read_only=True) as svc, TestClient(create_app(svc)) as client:
        r = client.post("/v1/requests", json=selections["absent IDs"], headers=auth(tokens["a"]))
        assert r.status_code == 409 and "read-only" in r.json()["error"]["message"]
        assert "<workspace>" in r.json()["error"]["message"]
        damaged = client.get("/v1/ledger", headers=auth(tokens["operator"]))
        assert damaged.status_code == 500 and "damaged" in damaged.json()["error"]["message"]
        for body in (r.content, damaged.content):
            assert str(copy).encode() not in body and str(tmp_path).encode() not in body


def test_a_failed_requests_reason_carries_no_path(env):
    """A failure's message (here a missing checkpoint, named by its path for a local
    operator) is recorded where its submitter reads it, without the path."""
    client, svc, tokens, selections, _ = env
    row = svc.workspace.catalog.latest_active_model()
    (svc.root / row["checkpoint"]).unlink()
    rid = client.post(
        "/v1/requests", json=selections["present IDs"], headers=auth(tokens["a"])
    ).json()["request_id"]
    svc.apply_pending()
    r = client.get(f"/v1/requests/{rid}", headers=auth(tokens["a"]))
    reasons = [e["payload"]["reason"] for e in r.json()["entries"] if "reason" in e["payload"]]
    assert any("Checkpoint" in x and "<workspace>" in x for x in reasons), r.text
    assert str(svc.root).encode() not in r.content  # (and the fixture greps every body)
