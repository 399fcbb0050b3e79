"""``unbake bench service``: the REST service's accept rate, kill -9 safety, end-to-end
times and a fuzz run against the committed OpenAPI schema.

1. **Accept rate.** A real ``unbake serve --no-worker`` process on the loopback
   interface; a concurrent httpx load generator (asyncio, ``concurrency`` requests in
   flight) files ``n`` one-sample requests and times each from send to ``202`` (the
   request is durable then), at each concurrency of a sweep (:data:`LEVELS`, the same
   ``n`` at each, one server per client, lowest level first). Reported per level:
   accepted requests per second over the wall time, and p50/p99 accept latency. By
   Little's law a level's mean latency is its concurrency over its rate (64 in flight at
   1,000/s is 64 ms), so the latency target can only hold at a lower concurrency; the
   summary quotes the level with the highest rate whose p99 meets :data:`P99_TARGET_MS`
   (``accept_concurrency``; if none does, the highest-rate level) and says whether the
   targets are met (``target_met``). httpx spends about 1 ms of CPU on each request,
   as much as the server, on the same 2 cores; the same sweep from a lean asyncio client
   (:class:`_RawClient`) is reported beside it (``*_lean_client``), to show what the
   server sustains when the cores are its own.
2. **kill -9.** Of the worker: :func:`worker_kill9_runs`, ``worker_kill9_runs`` times
   (100 in the full run) through ``unbake serve``'s supervisor, with nothing filed after
   each kill (``stuck_after_restart`` must be 0). Of the server: ``kill9_runs`` times, a server is killed with SIGKILL in the middle of a
   load (after 10 %, 20 %, ... 90 % of the answers, by run), restarted, and every request sent (each with its own idempotency key) is sent
   again. A request acknowledged before the kill must come back as a duplicate (not
   lost), and the ledger must hold exactly one request per key (nothing duplicated)
   and verify. ``kill9_lost_or_duplicated`` counts the violations (must be 0).
3. **Nothing to enumerate.** :func:`enumeration_band`: submissions naming present,
   absent and already-forgotten subjects and sample IDs, over HTTP, interleaved: their
   answers (status and body keys) and median accept times, and the ratio of the slowest
   median to the fastest.
4. **End to end.** For a SISA model and a monolithic one (whose default is the exact
   retrain), 1, 10 and 100 requests are filed over HTTP and then applied by the
   worker's step (:meth:`DeletionService.apply_pending`, what ``unbake worker`` runs)
   and certified; reported: seconds from the first accept to the last certificate,
   in one batch and one request per batch, so the table shows what batching saves.
5. **Fuzzing.** schemathesis generates valid and invalid requests for every operation
   of ``docs/openapi.json`` against the application (in process, an operator token);
   none may answer 5xx or a response outside the schema.

The load generator shares the machine with the server (2 cores here), so the accept
rate is a lower bound of what the server alone sustains.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from unbake.bench import BENCHMARKS
from unbake.service import apply

__all__ = [
    "LEVELS",
    "P99_TARGET_MS",
    "RATE_TARGET",
    "best_level",
    "enumeration_band",
    "fuzz_api",
    "service_benchmark",
    "worker_kill9_runs",
]

SPEC = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"
#: The concurrency sweep of the accept rate (requests in flight, one connection each).
LEVELS = (4, 8, 16, 32, 64)
#: The issue's targets: accepted requests per second, and their p99 accept latency (ms).
RATE_TARGET = 1000.0
P99_TARGET_MS = 50.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """``unbake serve --no-worker`` in a child process on a free loopback port; with
    ``serve_options``, those options instead of ``--no-worker`` (its own worker, say)."""

    def __init__(self, root: Path, serve_options: list[str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "unbake.cli", "serve", *(serve_options or ["--no-worker"])]
        cmd += ["--workspace", str(root), "--port", str(self.port)]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115  (closed by kill)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._log)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace").strip()
                self._log.close()
                raise RuntimeError(f"unbake serve exited with {self.proc.returncode}: {err}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"unbake serve did not answer on {self.url} within {timeout} s")

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait()
        self._log.close()


def _workspace(root: Path, *, strategy: str = "monolithic") -> tuple[list[str], dict[str, str]]:
    """A digits workspace with a logreg model; returns training IDs and tokens by role."""
    from unbake.training import TrainConfig
    from unbake.workspace import Workspace
    from unbake.workspace.tokens import create_token

    params = {"shards": 5, "slices": 2} if strategy == "sisa" else None
    with Workspace.create(root, dataset="digits") as ws:
        apply.train(
            ws,
            model="logreg",
            config=TrainConfig.parse(epochs=2, batch_size=64),
            seed=0,
            strategy=strategy,
            strategy_params=params,
        )
        train = [r["sample_id"] for r in ws.samples() if r["split"] == "train"]
        tokens = {role: create_token(ws, role)[0] for role in ("submitter", "operator")}
    return train, tokens


class _RawClient:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams (POST JSON, read the
    answer): about 0.05 ms of CPU a request against httpx's 1 ms, so on a small machine
    it leaves the cores to the server and measures the server's own capacity."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.head = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        data = json.dumps(body).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n".encode()
            + self.head
            + f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        await self.writer.drain()
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        fields = dict(line.split(":", 1) for line in head[1:] if ":" in line)
        length = int(next(v for k, v in fields.items() if k.lower() == "content-length"))
        return int(head[0].split()[1]), json.loads(await self.reader.readexactly(length))

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _load(
    url: str,
    token: str,
    bodies: list[dict[str, Any]],
    concurrency: int,
    *,
    client: str = "httpx",
    answered: list[int] | None = None,
) -> tuple[list[tuple[int, float, dict | None]], float]:
    """POST each body over ``concurrency`` keep-alive connections (one client each: a
    shared httpx pool costs several times more CPU a request). Returns (status, seconds,
    JSON) per body (status 0: not answered, the server died) and the wall time from the
    first request on (the clients are made before it). ``answered[0]`` counts answers."""
    import httpx

    results: list[tuple[int, float, dict | None]] = [(0, 0.0, None)] * len(bodies)
    next_index = 0
    headers = {"Authorization": f"Bearer {token}"}
    if client == "raw":
        conns: list[Any] = [_RawClient(url, headers) for _ in range(concurrency)]
    else:  # plain HTTP on loopback: no TLS context, no CA bundle to load per client
        conns = [
            httpx.AsyncClient(
                base_url=url,
                headers=headers,
                limits=httpx.Limits(max_connections=1),
                timeout=30,
                verify=False,
            )
            for _ in range(concurrency)
        ]

    async def connection(conn) -> None:
        nonlocal next_index
        while next_index < len(bodies):
            i = next_index
            next_index += 1
            start = time.perf_counter()
            try:
                if client == "raw":
                    status, answer = await conn.post("/v1/requests", bodies[i])
                else:
                    r = await conn.post("/v1/requests", json=bodies[i])
                    status, answer = r.status_code, r.json()
            except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, ValueError):
                return  # the server is gone
            results[i] = (status, time.perf_counter() - start, answer)
            if answered is not None:
                answered[0] += 1

    start = time.perf_counter()
    try:
        await asyncio.gather(*(connection(c) for c in conns))
        wall = time.perf_counter() - start
    finally:
        for conn in conns:
            await conn.aclose()
    return results, wall


def _bodies(train: list[str], n: int, tag: str) -> list[dict[str, Any]]:
    return [
        {"sample_ids": [train[i % len(train)]], "idempotency_key": f"{tag}-{i}"} for i in range(n)
    ]


def _accept_sweep(
    root: Path, train: list[str], token: str, n: int, levels: tuple[int, ...], client: str
) -> list[dict[str, Any]]:
    """One server; after a warm-up, ``n`` requests at each concurrency of ``levels``."""
    server = _Server(root)
    rows = []
    try:
        warm = _bodies(train, 50, f"warm-{client}")
        asyncio.run(_load(server.url, token, warm, max(levels), client=client))
        for level in levels:
            cpu = time.process_time()
            bodies = _bodies(train, n, f"load-{client}-{level}")
            results, wall = asyncio.run(_load(server.url, token, bodies, level, client=client))
            cpu = time.process_time() - cpu
            ok = [s for code, s, _ in results if code == 202]
            ms = np.array(ok) * 1000
            rows.append(
                {
                    "client": client,
                    "requests": n,
                    "concurrency": level,
                    "accepted": len(ok),
                    "seconds": round(wall, 3),
                    "accepted_per_second": round(len(ok) / wall, 1),
                    "p50_accept_ms": round(float(np.percentile(ms, 50)), 2) if len(ok) else None,
                    "p99_accept_ms": round(float(np.percentile(ms, 99)), 2) if len(ok) else None,
                    "client_cpu_ms_per_request": round(cpu / n * 1000, 3),
                }
            )
    finally:
        server.kill()
    return rows


def best_level(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """The level the summary quotes: the highest rate among those whose p99 meets
    :data:`P99_TARGET_MS`, else the highest rate; and whether it meets both targets.

    >>> rows = [{"accepted_per_second": 900.0, "p99_accept_ms": 20.0},
    ...         {"accepted_per_second": 1100.0, "p99_accept_ms": 45.0},
    ...         {"accepted_per_second": 1200.0, "p99_accept_ms": 90.0}]
    >>> best_level(rows)
    ({'accepted_per_second': 1100.0, 'p99_accept_ms': 45.0}, True)
    >>> best_level(rows[2:])
    ({'accepted_per_second': 1200.0, 'p99_accept_ms': 90.0}, False)
    """

    def fast(r: dict[str, Any]) -> bool:
        return r["p99_accept_ms"] is not None and r["p99_accept_ms"] <= P99_TARGET_MS

    pick = max([r for r in rows if fast(r)] or rows, key=lambda r: r["accepted_per_second"])
    return pick, fast(pick) and pick["accepted_per_second"] >= RATE_TARGET


def _received(root: Path) -> list[str]:
    """The request ID of every ``received`` ledger entry (after checking the chain)."""
    from unbake.service import DeletionService

    with DeletionService(root, read_only=True) as svc:
        svc.workspace.catalog.verify_ledger()
        entries = svc.workspace.catalog.request_entries()
    return [e["request_id"] for e in entries if e["state"] == "received"]


def _kill9_run(root: Path, train: list[str], token: str, run: int, n: int, conc: int) -> dict:
    """Kill a loaded server with SIGKILL, restart it, resend everything; count requests
    acknowledged but lost, and requests made more than once."""
    before = set(_received(root))
    bodies = _bodies(train, n, f"kill{run}")
    server = _Server(root)

    async def load_and_kill() -> list[tuple[int, float, dict | None]]:
        answered = [0]
        load = _load(server.url, token, bodies, conc, client="raw", answered=answered)
        task = asyncio.create_task(load)
        # Somewhere in the middle of the load: after 10 %, 20 %, ... 90 % of the answers.
        while answered[0] < n * (1 + run % 9) / 10 and not task.done():
            await asyncio.sleep(0.001)
        server.proc.send_signal(signal.SIGKILL)
        return (await task)[0]

    first = asyncio.run(load_and_kill())
    server.kill()
    acked = {i: r["request_id"] for i, (code, _, r) in enumerate(first) if code == 202 and r}
    server = _Server(root)
    try:
        again, _ = asyncio.run(_load(server.url, token, bodies, conc, client="raw"))
    finally:
        server.kill()
    # Lost: acknowledged, yet the retry with its key made another request (or failed).
    lost = sum(
        1
        for i, rid in acked.items()
        if again[i][0] != 202 or (again[i][2] or {}).get("request_id") != rid
    )
    received = [r for r in _received(root) if r not in before]
    # Duplicated: a request received twice, or more requests than keys.
    duplicated = len(received) - len(set(received)) + max(0, len(set(received)) - n)
    return {
        "run": run,
        "sent": n,
        "acknowledged_before_kill": len(acked),
        "requests_after_retry": len(set(received)),
        "lost": lost,
        "duplicated": duplicated,
    }


#: The policy of the supervised kill -9 runs: small batches, applied at once.
_KILL_POLICY = """version = 1
[batch]
max_requests = 4
max_seconds = 0.2
[models.default]
fallback = "retrain"
"""


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux: read from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return out


def worker_kill9_runs(
    root: Path,
    train: list[str],
    token: str,
    *,
    runs: int,
    seed: int = 0,
    per_run: int = 2,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Kill ``unbake serve``'s own worker with SIGKILL ``runs`` times; after each kill,
    file nothing more and wait until every request filed so far is certified.

    ``root`` is a workspace with a model; ``token`` an operator's. One server runs
    throughout, its supervisor restarting the worker (restart window 1 s, so the kills
    never exhaust its crash-loop limit). Each run files ``per_run`` one-sample requests,
    then kills the worker: on even runs while a request is ``applying`` (the moment that
    left requests stuck before), on odd runs at a seeded random moment of its life
    (starting, idle, applying or certifying). Then only the restarted worker's own
    recovery can finish them. Returns what the service benchmark reports:
    ``stuck_after_restart`` (requests not certified within ``timeout`` seconds of a kill,
    summed over runs; must be 0), ``applied_more_than_once`` and ``never_applied`` (must
    be 0), the most and the median seconds from a kill to the last certificate, and
    whether the ledger verifies at the end.
    """
    import httpx

    rng = np.random.default_rng(seed)
    picks = iter(rng.permutation(train).tolist())
    policy = root.parent / f"{root.name}-kill-policy.toml"
    policy.write_text(_KILL_POLICY)
    server = _Server(root, ["--policy", str(policy), "--restart-window", "1"])
    headers = {"Authorization": f"Bearer {token}"}
    rids: list[str] = []
    kills: list[dict[str, Any]] = []
    certified: set[str] = set()
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:

            def applying() -> bool:
                got = client.get("/v1/requests", params={"state": "applying"})
                return got.status_code == 200 and bool(got.json())

            def worker_pid() -> int:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    pids = _children(server.proc.pid)
                    if pids:
                        return pids[0]
                    time.sleep(0.02)
                raise RuntimeError("unbake serve did not restart its worker within 60 s")

            for run in range(runs):
                for _ in range(per_run):
                    answer = client.post("/v1/requests", json={"sample_ids": [next(picks)]})
                    answer.raise_for_status()
                    rids.append(answer.json()["request_id"])
                pid = worker_pid()
                if run % 2 == 0:  # while applying (or, if it never shows, after 30 s)
                    deadline = time.monotonic() + 30
                    while not applying() and time.monotonic() < deadline:
                        time.sleep(0.01)
                    time.sleep(float(rng.uniform(0, 0.05)))
                else:
                    time.sleep(float(rng.uniform(0, 3.0)))
                hit = applying()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()
                while time.monotonic() - killed < timeout:
                    for rid in rids:
                        if rid not in certified:
                            got = client.get(f"/v1/requests/{rid}").json()
                            if got.get("state") == "certified":
                                certified.add(rid)
                    if len(certified) == len(rids):
                        break
                    time.sleep(0.05)
                kills.append(
                    {
                        "while_applying": hit,
                        "seconds": time.monotonic() - killed,
                        "stuck": len(rids) - len(certified),
                    }
                )
            verified = client.get("/v1/ledger/verify")
            rows = client.get("/v1/ledger", params={"limit": 10_000}).json()["entries"]
    finally:
        server.kill()
        policy.unlink(missing_ok=True)
    applied = collections.Counter(e["request_id"] for e in rows if e["state"] == "applied")
    seconds = [k["seconds"] for k in kills]
    return {
        "kill9_runs": runs,
        "requests": len(rids),
        "kills_while_applying": sum(k["while_applying"] for k in kills),
        "stuck_after_restart": sum(k["stuck"] for k in kills),
        "applied_more_than_once": sum(1 for r in rids if applied[r] > 1),
        "never_applied": sum(1 for r in rids if applied[r] == 0),
        "max_seconds_to_certified_after_kill": round(max(seconds), 3),
        "median_seconds_to_certified_after_kill": round(float(np.median(seconds)), 3),
        "ledger_verified": verified.status_code == 200 and verified.json()["valid"] is True,
    }


def _people_workspace(root: Path, people: int = 40, rows_each: int = 5) -> dict[str, Any]:
    """A CSV workspace of ``people`` subjects (``rows_each`` rows each) with a logreg
    model, one person and two other rows forgotten through the worker; returns its
    tokens and the six selections the enumeration band compares."""
    from unbake.service import DeletionService
    from unbake.training import TrainConfig
    from unbake.workspace import Workspace
    from unbake.workspace.tokens import create_token

    rng = np.random.default_rng(0)
    source = root.parent / f"{root.name}-people.csv"
    lines = ["uid,person,f1,f2,target"]
    for i in range(people * rows_each):
        f1, f2 = rng.normal(size=2)
        lines.append(f"u{i},p{i % people},{f1:.4f},{f2:.4f},{'AB'[int(f1 > 0)]}")
    source.write_text("\n".join(lines) + "\n")
    options = {"path": str(source), "label": "target", "id_column": "uid"}
    options["subject_column"] = "person"
    with Workspace.create(root, dataset="csv", dataset_options=options) as ws:
        apply.train(ws, model="logreg", config=TrainConfig.parse(epochs=1), seed=0)
        tokens = [create_token(ws, "submitter")[0] for _ in range(2)]
        rows = [r for r in ws.samples() if r["split"] == "train"]
    names = sorted({r["subject"] for r in rows})
    gone, present = names[0], names[1]
    ids = [r["sample_id"] for r in rows if r["subject"] not in (gone, present)]
    with DeletionService(root) as svc:
        svc.submit(subject=gone)
        svc.submit(sample_ids=ids[:2])
        svc.apply_pending()
    return {
        "tokens": tokens,
        "selections": {
            "present subject": {"subject": present},
            "absent subject": {"subject": "nobody-at-all"},
            "forgotten subject": {"subject": gone},
            "present IDs": {"sample_ids": ids[2:4]},
            "absent IDs": {"sample_ids": ["u-none-1", "u-none-2"]},
            "forgotten IDs": {"sample_ids": ids[:2]},
        },
    }


def enumeration_band(root: Path, rounds: int) -> dict[str, Any]:
    """Over HTTP against ``unbake serve``: ``rounds`` submissions of each kind (present,
    absent and already-forgotten subjects and sample IDs, from two submitters,
    interleaved so the machine's load falls on every kind alike). Reports each kind's
    status codes, answer shapes, and median and p90 accept time, and the ratio of the
    slowest median to the fastest (``max_median_ratio``): an attacker timing the
    answers should see one population."""
    import httpx

    setup = _people_workspace(root)
    server = _Server(root)
    times: dict[str, list[float]] = {k: [] for k in setup["selections"]}
    shapes: dict[str, set[tuple[int, tuple[str, ...]]]] = {k: set() for k in times}
    try:
        clients = [
            httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {t}"})
            for t in setup["tokens"]
        ]
        for _ in range(rounds):
            for kind, selection in setup["selections"].items():
                for client in clients:
                    start = time.perf_counter()
                    r = client.post("/v1/requests", json=selection)
                    times[kind].append(time.perf_counter() - start)
                    shapes[kind].add((r.status_code, tuple(sorted(r.json()))))
        for client in clients:
            client.close()
    finally:
        server.kill()
    rows: list[dict[str, Any]] = [
        {
            "kind": kind,
            "submissions": len(t),
            "answers": sorted([code, list(keys)] for code, keys in shapes[kind]),
            "median_ms": round(float(np.median(t)) * 1000, 3),
            "p90_ms": round(float(np.percentile(t, 90)) * 1000, 3),
        }
        for kind, t in times.items()
    ]
    medians = [r["median_ms"] for r in rows]
    return {
        "rows": rows,
        "same_answers": len({json.dumps(r["answers"]) for r in rows}) == 1,
        "max_median_ratio": round(max(medians) / min(medians), 3),
    }


def _end_to_end(strategy: str, sizes: tuple[int, ...], tmp: Path) -> list[dict[str, Any]]:
    """Seconds from the first accept to the last certificate, batched and one by one."""
    import httpx

    from unbake.service import DeletionService
    from unbake.workspace.certificates import issue_certificate

    template = tmp / f"e2e-{strategy}"
    train, tokens = _workspace(template, strategy=strategy)
    rows = []
    for n in sizes:
        for batch in sorted({n, 1}, reverse=True):
            root = tmp / f"e2e-{strategy}-{n}-{batch}"
            shutil.copytree(template, root)
            server = _Server(root)
            rng = np.random.default_rng(n)
            picks = rng.choice(len(train), size=n, replace=False)
            headers = {"Authorization": f"Bearer {tokens['operator']}"}
            try:
                start = time.perf_counter()
                with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
                    rids = [
                        client.post("/v1/requests", json={"sample_ids": [train[i]]}).json()[
                            "request_id"
                        ]
                        for i in picks
                    ]
                accepted = time.perf_counter() - start
                with DeletionService(root) as worker:  # the worker's step, as `unbake worker`
                    done: list[str] = []
                    while len(done) < n:
                        done += worker.apply_pending(max_batch=batch)
                    applied = time.perf_counter() - start
                    for rid in rids:
                        issue_certificate(worker.workspace, rid)
                    states = {worker.request(r)["state"] for r in rids}
                total = time.perf_counter() - start
            finally:
                server.kill()
                shutil.rmtree(root, ignore_errors=True)
            rows.append(
                {
                    "strategy": strategy,
                    "method": "sisa" if strategy == "sisa" else "retrain",
                    "requests": n,
                    "batch": batch,
                    "accepted_s": round(accepted, 3),
                    "applied_s": round(applied, 3),
                    "certified_s": round(total, 3),
                    "states": sorted(states),
                }
            )
    return rows


def fuzz_api(app, spec: dict[str, Any], token: str, *, examples: int) -> dict[str, Any]:
    """schemathesis against ``spec`` on the ASGI ``app``: up to ``examples`` valid and as
    many invalid cases per operation (derandomised, so a rerun makes the same cases).
    Every response is checked: no 5xx, a documented status and content type, a body in
    the schema. Returns the case count and the failures (``{"operation", "error"}``)."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.result import Err
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_dict(spec)
    schema.app = app
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    headers = {"Authorization": f"Bearer {token}"}
    cases = 0
    failures: list[dict[str, str]] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # an operation the schema cannot describe: recorded
            failures.append({"operation": "(schema)", "error": str(result.err())[:2000]})
            continue
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case) -> None:
                nonlocal cases
                cases += 1
                case.call_and_validate(headers=headers, checks=checks)

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (an operation without input)
                continue
            except BaseException as exc:  # a failed check (a group): recorded, go on
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                name = f"{operation.method.upper()} {operation.path} ({mode.value})"
                failures.append({"operation": name, "error": str(exc)[:2000]})
    return {"cases": cases, "failures": failures}


def _fuzz(tmp: Path, examples: int) -> dict[str, Any]:
    from unbake.service import DeletionService
    from unbake.service.api import create_app, openapi_spec

    root = tmp / "fuzz"
    _, tokens = _workspace(root)
    # The committed schema in a checkout; an installed unbake has only the generated one.
    spec = json.loads(SPEC.read_text()) if SPEC.is_file() else openapi_spec()
    with DeletionService(root) as svc:
        return fuzz_api(create_app(svc), spec, tokens["operator"], examples=examples)


@BENCHMARKS.register("service")
def service_benchmark(*, quick: bool, data_dir: str | None) -> dict[str, Any]:
    del data_dir  # digits ships with scikit-learn
    n, concurrency = (300, 32) if quick else (20_000, 64)  # per sweep level; kill -9 load
    kill_runs, kill_n = (2, 200) if quick else (100, 500)
    worker_runs = 2 if quick else 100
    sizes = (1, 10) if quick else (1, 10, 100)
    examples = 5 if quick else 100
    with tempfile.TemporaryDirectory(prefix="unbake-bench-service-") as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "accept"
        train, tokens = _workspace(root)
        sweeps = {}
        for client in ("httpx", "raw"):  # each on a fresh copy, so neither sees the other's
            copy = tmp / f"accept-{client}"
            shutil.copytree(root, copy)
            sweeps[client] = _accept_sweep(copy, train, tokens["submitter"], n, LEVELS, client)
            shutil.rmtree(copy, ignore_errors=True)
        (accept, met), (raw, raw_met) = best_level(sweeps["httpx"]), best_level(sweeps["raw"])
        kills = []
        for run in range(kill_runs):
            kill_root = tmp / f"kill{run}"
            shutil.copytree(root, kill_root)
            kills.append(
                _kill9_run(kill_root, train, tokens["submitter"], run, kill_n, concurrency)
            )
            shutil.rmtree(kill_root, ignore_errors=True)
        worker_root = tmp / "worker-kill9"
        shutil.copytree(root, worker_root)
        worker = worker_kill9_runs(worker_root, train, tokens["operator"], runs=worker_runs)
        shutil.rmtree(worker_root, ignore_errors=True)
        band = enumeration_band(tmp / "enumeration", 10 if quick else 200)
        e2e = [row for s in ("sisa", "monolithic") for row in _end_to_end(s, sizes, tmp)]
        fuzz = _fuzz(tmp, examples)
    return {
        "dataset": "digits",
        "config": {
            "model": "logreg",
            "requests_per_level": n,
            "concurrency_levels": list(LEVELS),
            "kill9_concurrency": concurrency,
            "rate_target": RATE_TARGET,
            "p99_target_ms": P99_TARGET_MS,
            "kill9_runs": kill_runs,
            "kill9_requests": kill_n,
            "worker_kill9_runs": worker_runs,
            "end_to_end_sizes": list(sizes),
            "sisa": {"shards": 5, "slices": 2},
            "fuzz_examples_per_operation_and_mode": examples,
            "cpu_count": os.cpu_count(),
        },
        "rows": [{"part": "accept", **r} for c in ("httpx", "raw") for r in sweeps[c]]
        + [{"part": "kill9", **k} for k in kills]
        + [{"part": "worker_kill9", **worker}]
        + [{"part": "enumeration", **r} for r in band["rows"]]
        + [{"part": "end_to_end", **r} for r in e2e],
        "summary": {
            # The sweep level with the highest rate whose p99 meets the target (else the
            # highest rate): its concurrency, and whether both targets hold there.
            "accepted_per_second": accept["accepted_per_second"],
            "p50_accept_ms": accept["p50_accept_ms"],
            "p99_accept_ms": accept["p99_accept_ms"],
            "accept_concurrency": accept["concurrency"],
            "target_met": met,
            # The same sweep from a client that costs the server's cores almost nothing.
            "accepted_per_second_lean_client": raw["accepted_per_second"],
            "p99_accept_ms_lean_client": raw["p99_accept_ms"],
            "accept_concurrency_lean_client": raw["concurrency"],
            "target_met_lean_client": raw_met,
            "kill9_runs": kill_runs,
            "kill9_lost_or_duplicated": sum(k["lost"] + k["duplicated"] for k in kills),
            # The worker killed under `unbake serve`'s supervisor, nothing filed after each
            # kill: every request must still be certified, exactly once.
            "worker_kill9_runs": worker["kill9_runs"],
            "stuck_after_restart": worker["stuck_after_restart"],
            "worker_kill9_applied_twice_or_never": worker["applied_more_than_once"]
            + worker["never_applied"],
            "max_seconds_to_certified_after_kill": worker["max_seconds_to_certified_after_kill"],
            # Present, absent and forgotten subjects and IDs: one answer, one time band.
            "enumeration_same_answers": band["same_answers"],
            "enumeration_max_median_ratio": band["max_median_ratio"],
            "fuzz_cases": fuzz["cases"],
            "fuzz_failures": len(fuzz["failures"]),
            "fuzz_failure_details": fuzz["failures"][:5],
        },
    }
