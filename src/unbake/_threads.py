"""The thread policy: training must not slow down 100× when another process shares the CPU.

Two things go wrong on a shared machine (a CI runner, a container with a CPU limit, a
server running anything else):

1. **Spinning.** torch's OpenMP workers busy-wait for work by default. When another
   process holds one of the cores, the spinning threads fight it for the core and each
   parallel region waits for a thread that is not running: a 0.4 s training run on
   digits took 55–79 s beside one busy process with 2 threads, and 0.36–1.7 s with one.
   ``OMP_WAIT_POLICY=PASSIVE`` makes idle workers sleep instead. OpenMP reads it once,
   when torch loads its runtime, so it must be in the environment *before* ``import
   torch``: :mod:`unbake` sets it on import unless the user set a policy of their own.
2. **Oversized pools.** A model and batch this small gain nothing from a second
   thread. The training loop sizes its intra-op threads to the work
   (:func:`threads_for`): one thread below :data:`FLOPS_PER_THREAD` floating-point
   operations per forward pass of a batch, more above it, up to the cores available.
   The count depends only on the model, the batch shape and the machine's cores, never
   on the load, so the same seed keeps giving the same bits.

Library users who import torch *before* unbake call :func:`configure_threads`; when the
passive policy can no longer take effect it warns (:class:`ThreadPolicyWarning`) and
the automatic sizing stays at one thread, which cannot spin. ``configure_threads(n)``
(the CLI's ``--threads N``) fixes the count instead. ``UNBAKE_THREAD_POLICY=off`` leaves
torch's defaults alone, for comparison.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = [
    "FLOPS_PER_THREAD",
    "ThreadPolicyWarning",
    "apply_env_policy",
    "configure_threads",
    "pin_threads",
    "policy_env",
    "thread_policy",
    "threads_for",
]

#: Forward-pass FLOPs of one batch below which a second thread does not pay. Measured on
#: a 2-core Xeon with the passive policy (`unbake bench threads`): the digits and
#: Fashion-MNIST MLPs (6.5 and 30 MFLOP at batch 64) and the Fashion-MNIST CNN (0.49
#: GFLOP) train no faster, or slower, on two threads than on one.
FLOPS_PER_THREAD = 2e9

_DEFAULT_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",
    # Keep MKL/OpenMP from resizing their pools under load, which can change the order
    # of floating-point reductions between runs (bitwise determinism on CPU).
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
}


class ThreadPolicyWarning(RuntimeWarning):
    """The passive OpenMP wait policy could not be applied in this process."""


class _State:
    #: OMP_WAIT_POLICY as torch's OpenMP runtime read it ("" unknown: torch came first).
    wait_policy_at_load: str = ""
    #: A fixed intra-op thread count (``configure_threads(n)``), or None for automatic.
    fixed: int | None = None
    #: A count pinned by the caller for a block (SISA shards: one thread each).
    pinned: int | None = None
    #: The count the last training loop ran on (reported by :func:`thread_policy`).
    last: int | None = None
    warned: bool = False


_state = _State()


def _disabled() -> bool:
    return os.environ.get("UNBAKE_THREAD_POLICY", "").lower() in ("off", "0", "false", "no")


def policy_env() -> dict[str, str]:
    """The environment a child process (pool or Ray worker) needs for the same policy."""
    if _disabled():
        return {"UNBAKE_THREAD_POLICY": "off"}
    env = {k: os.environ.get(k, v) for k, v in _DEFAULT_ENV.items()}
    if _state.fixed is not None:
        env["UNBAKE_THREADS"] = str(_state.fixed)
    return env


def apply_env_policy() -> None:
    """Put the policy into the environment; call before torch is imported.

    A policy the user set (``OMP_WAIT_POLICY`` in the environment) is kept. If torch is
    already loaded, the OpenMP runtime has read its environment already: the policy in
    force is unknown, which :func:`configure_threads` reports.
    """
    if _disabled():
        return
    preset = os.environ.get("OMP_WAIT_POLICY", "")
    torch_loaded = "torch" in sys.modules
    for key, value in _DEFAULT_ENV.items():
        os.environ.setdefault(key, value)
    # torch not loaded yet: OpenMP will read what is set now. Loaded already: a policy the
    # user set before we came was most likely there before torch too; else unknown.
    _state.wait_policy_at_load = (preset if torch_loaded else os.environ["OMP_WAIT_POLICY"]).upper()
    fixed = os.environ.get("UNBAKE_THREADS", "")
    if fixed.isdigit() and int(fixed) > 0:
        _state.fixed = int(fixed)


def _passive() -> bool:
    return _state.wait_policy_at_load == "PASSIVE"


def configure_threads(threads: int | None = None) -> dict[str, Any]:
    """Apply unbake's thread policy in this process; returns what is in force.

    ``threads=None`` sizes intra-op threads to the work in every training loop;
    ``threads=N`` fixes the count at ``N`` (and in the pool and Ray workers unbake
    starts). Warns with :class:`ThreadPolicyWarning` when torch was imported before
    unbake and the passive wait policy may not be in force: then automatic sizing keeps
    to one thread, which cannot spin.

    >>> configure_threads()["wait_policy"]
    'PASSIVE'
    """
    import torch

    from unbake.exceptions import InvalidParameterError

    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise InvalidParameterError(
            f"--threads must be a whole number ≥ 1. Got {threads!r} instead; "
            "leave it out to size threads to the work."
        )
    _state.fixed = threads
    if threads is not None:
        torch.set_num_threads(threads)
        os.environ["UNBAKE_THREADS"] = str(threads)
    else:
        os.environ.pop("UNBAKE_THREADS", None)
    if not _disabled() and not _state.wait_policy_at_load and not _state.warned:
        _state.warned = True
        warnings.warn(
            "torch was imported before unbake, so OpenMP's passive wait policy may not be "
            "in force and busy-waiting threads can slow training many times over on a "
            "shared CPU; import unbake first or set OMP_WAIT_POLICY=PASSIVE before starting "
            "Python. Meanwhile unbake's training loops keep to one thread, which cannot spin.",
            ThreadPolicyWarning,
            stacklevel=2,
        )
    return thread_policy()


def thread_policy() -> dict[str, Any]:
    """What is in force: the wait policy OpenMP read, and fixed or automatic threads."""
    import torch

    return {
        "wait_policy": "off (torch defaults)"
        if _disabled()
        else _state.wait_policy_at_load or "unknown (torch loaded first)",
        "threads": _state.fixed if _state.fixed is not None else "auto",
        "torch_threads": torch.get_num_threads(),
        "last_training_threads": _state.last,
        "cores": _cores(),
        "disabled": _disabled(),
    }


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_threads(flops: float) -> int:
    """Intra-op threads for a forward pass of ``flops`` per batch (automatic policy)."""
    if not _passive():
        return 1
    if not math.isfinite(flops):  # a module the FLOP counter cannot trace: assume it is large
        return _cores()
    return max(1, min(_cores(), int(flops // FLOPS_PER_THREAD) + 1))


def forward_flops(module, sample) -> float:
    """FLOPs of one forward pass of ``module`` on ``sample`` (a batch), counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()  # no running-statistics update, no dropout draw: the count has no effect
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(sample)
    except Exception:  # a module the counter cannot trace: assume the work is large
        return float("inf")
    finally:
        module.train(was_training)
    return float(counter.get_total_flops())


@contextlib.contextmanager
def threads_for(module, sample) -> Iterator[int]:
    """Run the ``with`` block on the threads the policy gives this model and batch.

    Only on the CPU; the previous count is restored afterwards.
    """
    import torch

    if _disabled() or sample.device.type != "cpu":
        _state.last = torch.get_num_threads()
        yield _state.last
        return
    if _state.pinned is not None:
        n = _state.pinned
    elif _state.fixed is not None:
        n = _state.fixed
    else:
        n = auto_threads(forward_flops(module, sample))
    _state.last = n
    with _torch_threads(n) as got:
        yield got


@contextlib.contextmanager
def pin_threads(n: int) -> Iterator[int]:
    """Run the ``with`` block, training loops included, on exactly ``n`` threads.

    SISA trains each shard on one thread, so every backend gives the same bits.
    """
    previous = _state.pinned
    _state.pinned = n
    try:
        with _torch_threads(n) as got:
            yield got
    finally:
        _state.pinned = previous


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[int]:
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if n != before:
            torch.set_num_threads(before)


# Importing this module (unbake's first import) applies the policy to the environment.
apply_env_policy()
