"""Keep `unbake serve`'s worker process alive: restart it with backoff, give up on a crash
loop, stop it when the server stops.

:class:`WorkerSupervisor` runs a command (``unbake worker``) in a child process of its own
session (a Ctrl-C at the terminal reaches the server, which then stops the worker) and
watches it from a thread. When the child exits while the server runs, its exit code is
logged and it is started again after a backoff that doubles with each exit in the last
``window`` seconds (``backoff``, twice that, ... at most ``max_backoff``). After
``max_exits`` exits within ``window`` seconds it is left stopped: :meth:`health` then says
``failed`` and ``/healthz`` answers ``degraded`` (requests are still accepted and queued;
an operator fixes the cause, which the worker's own log names, and restarts the server).
The worker is crash-safe, so a restart resumes what a killed worker left.

>>> import sys
>>> sup = WorkerSupervisor([sys.executable, "-c", "raise SystemExit(3)"],
...                        max_exits=2, window=60, backoff=0.01)
>>> sup.start()
>>> sup.wait_for("failed", timeout=30)
True
>>> h = sup.health(); h["state"], h["restarts"], h["last_exit_code"]
('failed', 1, 3)
>>> sup.stop()
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = [
    "WORKER_STATES",
    "WorkerSupervisor",
    "describe_exit",
    "stop_when_orphaned",
    "worker_stop",
]

#: What :meth:`WorkerSupervisor.health` reports: ``disabled``, no worker (``--no-worker``);
#: ``stopped``, after :meth:`WorkerSupervisor.stop` (the server is stopping).
WORKER_STATES = ("running", "restarting", "failed", "disabled", "stopped")

log = logging.getLogger("unbake.serve")


def describe_exit(code: int) -> str:
    """``exit code 3``, or ``killed by SIGKILL`` for a negative Popen return code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class WorkerSupervisor:
    """Runs ``command`` and restarts it when it exits, until :meth:`stop`.

    ``max_exits`` exits within ``window`` seconds stop the restarts (state ``failed``);
    ``backoff`` is the first wait before a restart, doubled for each recent exit, at most
    ``max_backoff``; :meth:`stop` sends SIGTERM and, after ``stop_timeout`` seconds,
    SIGKILL. ``command=None`` is a supervisor of no worker (state ``disabled``).
    """

    def __init__(
        self,
        command: Sequence[str] | None,
        *,
        max_exits: int = 5,
        window: float = 60.0,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.command = list(command) if command is not None else None
        self.max_exits, self.window = max_exits, window
        self.backoff, self.max_backoff, self.stop_timeout = backoff, max_backoff, stop_timeout
        self._state = "disabled" if command is None else "restarting"
        self._proc: subprocess.Popen | None = None
        self._restarts = 0
        self._last_exit: int | None = None
        self._stopping = threading.Event()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    # --- what /healthz reads ---------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def pid(self) -> int | None:
        """The running worker's process ID (``None`` when none runs)."""
        proc = self._proc
        return proc.pid if proc is not None and self._state == "running" else None

    def health(self) -> dict[str, Any]:
        """``{"state", "restarts", "last_exit_code"}`` (a signal as a negative code)."""
        return {"state": self._state, "restarts": self._restarts, "last_exit_code": self._last_exit}

    def wait_for(self, state: str, *, timeout: float, restarts: int = 0) -> bool:
        """Wait until the state is ``state`` after at least ``restarts`` restarts."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._state == state and self._restarts >= restarts, timeout
            )

    def _set(self, state: str) -> None:
        with self._changed:
            self._state = state
            self._changed.notify_all()

    # --- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        if self.command is None or self._thread is not None:
            return
        self._spawn()  # the first start fails loudly, in the caller (a missing executable)
        self._thread = threading.Thread(target=self._watch, name="unbake-worker", daemon=True)
        self._thread.start()

    def _spawn(self, *, restart: bool = False) -> bool:
        """Start the worker unless the supervisor is stopping (checked under the lock that
        :meth:`stop` takes, so a worker is never started after it)."""
        with self._changed:
            if self._stopping.is_set():
                return False
            self._proc = subprocess.Popen(self.command, start_new_session=True)
            self._state = "running"
            self._restarts += restart
            self._changed.notify_all()
        log.info("Worker started (pid %d).", self._proc.pid)
        return True

    def _watch(self) -> None:
        exits: collections.deque[float] = collections.deque()
        while True:
            proc = self._proc
            started = time.monotonic()
            code = proc.wait()
            if self._stopping.is_set():
                return
            now = time.monotonic()
            self._last_exit = code
            exits.append(now)
            while exits and exits[0] < now - self.window:
                exits.popleft()
            how = f"Worker (pid {proc.pid}) {describe_exit(code)} after {now - started:.1f} s"
            if len(exits) >= self.max_exits:
                log.error(
                    "%s: %d exits within %g s, so it is not restarted and /healthz reports "
                    "degraded; fix the cause (the worker's messages above) and restart "
                    "`unbake serve`.",
                    how,
                    len(exits),
                    self.window,
                )
                self._set("failed")
                return
            delay = min(self.max_backoff, self.backoff * 2 ** (len(exits) - 1))
            log.warning("%s; restarting it in %.1f s.", how, delay)
            self._set("restarting")
            if self._stopping.wait(delay):
                return
            try:
                if not self._spawn(restart=True):
                    return
            except OSError as exc:  # the executable vanished meanwhile
                log.error("Could not restart the worker (%s); it stays stopped.", exc)
                self._set("failed")
                return

    def stop(self) -> None:
        """Stop restarting, then stop the worker: SIGTERM (`unbake worker` finishes the
        batch it is applying, then exits), and SIGKILL after ``stop_timeout`` seconds (it
        is crash-safe: a restart resumes the batch)."""
        with self._changed:
            self._stopping.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join()
        if self._state not in ("disabled", "failed"):
            self._set("stopped")

    def __enter__(self) -> WorkerSupervisor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def worker_stop(parent: int | None = None) -> Iterator[threading.Event]:
    """The event `unbake worker`'s loop stops on (between batches) while in the block:
    SIGTERM (in the main thread; its handler is restored on leaving), and, given
    ``parent``, that process's death (see :func:`stop_when_orphaned`)."""
    stop = stop_when_orphaned(parent) if parent is not None else threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def stop_when_orphaned(parent: int, *, poll: float = 1.0) -> threading.Event:
    """An event set once this process's parent is no longer ``parent`` (it died, even by
    SIGKILL, and the process was adopted): the worker's loop stops between batches, so a
    killed server leaves no worker behind."""
    stop = threading.Event()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        stop.set()

    threading.Thread(target=watch, name="unbake-parent-watch", daemon=True).start()
    return stop
