"""Kill -9 trials of the worker: kill it at seeded random points, restart, check the result.

A trial files requests, then starts the worker (``drain(once=True)``) in a child process
and kills it with SIGKILL after a seeded random delay, again and again, until a worker
finishes on its own. :func:`check_exactly_once` then checks what the issue asks: every
request applied exactly once, the catalog matching the checkpoints, the ledger intact,
and the final model trained on no forgotten sample. Children come from a fork server
that imported unbake once, so a restart costs a fork, not an import of torch.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["check_exactly_once", "kill9_trial"]

_CONTEXT: Any = None


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["unbake.service.deletion"])
    return _CONTEXT


def _work(root: str, batch: int, policy: str | None) -> None:
    from unbake.service.deletion import DeletionService, drain

    with DeletionService(root, policy=policy) as svc:
        drain(svc, batch=batch, window=0.0, once=True)


def kill9_trial(
    root: str | os.PathLike,
    *,
    seed: int,
    batch: int = 2,
    max_delay: float = 1.0,
    kills: int = 3,
    policy: str | os.PathLike | None = None,
) -> int:
    """Run the worker over ``root``'s queue, killing it ``kills`` times at seeded random
    delays in ``[0, max_delay)`` seconds (each restart resumes), then let a last one
    finish. Returns how many workers were killed before they finished. With ``policy``
    (a TOML file) each worker applies the requests under it, so a kill can land in the
    middle of a policy's attempts.

    The workers come from a fork server, so a script calling this needs the
    ``if __name__ == "__main__":`` guard that multiprocessing asks for.
    """
    rng = np.random.default_rng(seed)
    ctx = _context()
    killed = 0
    for _ in range(kills):
        proc = ctx.Process(
            target=_work, args=(str(root), batch, None if policy is None else str(policy))
        )
        proc.start()
        proc.join(timeout=float(rng.uniform(0.0, max_delay)))
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
            killed += 1
        elif proc.exitcode != 0:
            raise RuntimeError(f"the worker failed (exit code {proc.exitcode})")
    proc = ctx.Process(
        target=_work, args=(str(root), batch, None if policy is None else str(policy))
    )
    proc.start()
    proc.join(timeout=300)
    if proc.exitcode != 0:
        raise RuntimeError(f"the last worker did not finish cleanly (exit code {proc.exitcode})")
    return killed


def check_exactly_once(root: str | os.PathLike, request_ids: dict[str, list[str]]) -> list[str]:
    """What is wrong with ``root`` after the worker applied ``request_ids`` (``{request
    ID: its sample IDs}``, every request naming its own samples); empty when all is well.

    Every request is ``applied`` (or ``certified``, with at most one ``certified`` entry)
    with one ``applied`` entry and one request row; each
    sample is forgotten by the request that named it; the ledger verifies; exactly one
    model is active, its checkpoint's bytes match the catalog, and the checkpoints folder
    holds nothing else; nothing is left in the queue.
    """
    from unbake.service.deletion import DeletionService

    problems = []
    with DeletionService(root) as svc:  # opening sweeps what a killed worker left
        ws = svc.workspace
        ws.catalog.verify_ledger()
        applied = Counter(ws.request_store.ids_in_state("applied"))
        certified = Counter(ws.request_store.ids_in_state("certified"))
        rows = Counter(ws.request_store.applied_ids())
        for rid in request_ids:
            state = svc.request(rid)["state"]
            done = state == "applied" or (state == "certified" and certified[rid] == 1)
            if not done or applied[rid] != 1 or rows[rid] != 1:
                problems.append(
                    f"{rid}: {state}, {applied[rid]} applied entries, {rows[rid]} request rows"
                )
        owner = ws.sample_store.forgotten_by()
        wanted = {sid: rid for rid, ids in request_ids.items() for sid in ids}
        if owner != wanted:
            problems.append(
                f"forgotten samples differ from the requests: {len(owner)} vs {len(wanted)}"
            )
        models = ws.model_store.active_checkpoints()
        if len(models) != 1:
            problems.append(f"{len(models)} active models")
        folder = Path(root) / "checkpoints"
        files = {f"checkpoints/{p.name}" for p in folder.iterdir()}
        live = ws.model_store.live_checkpoints()
        if files != live:
            problems.append(f"checkpoint files {sorted(files ^ live)} do not match the catalog")
        for m in models:
            digest = hashlib.sha256((Path(root) / m["checkpoint"]).read_bytes()).hexdigest()
            if digest != m["sha256"]:
                problems.append(f"{m['checkpoint']} does not match its sha256")
        if ws.request_store.queue_size():
            problems.append("requests left in the queue")
    return problems
