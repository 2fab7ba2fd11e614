"""Starting child processes that never outlive this one.

:func:`spawn` starts a child in its own process group (so a stop reaches its own children too)
with ``PR_SET_PDEATHSIG`` on Linux (the kernel sends it ``SIGTERM`` when this process dies, even
by ``SIGKILL``). Children are forked from the main thread or from one long-lived daemon thread
(``celerymon-spawner``), because the death signal fires when the *thread* that forked ends.

Used by :mod:`.processes` (workers, beat, monitor) and :mod:`.embedded` (the Redis server); it
imports neither, so both can use it without importing each other.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any


def _pdeathsig() -> Callable[[], None] | None:
    """A preexec function asking Linux to send SIGTERM to the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # pragma: no cover - not glibc/musl
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)

    return preexec


class _Spawner:
    """Starts children from one long-lived thread.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends, so a child spawned
    from a short-lived thread (a request handler calling ``submit()``) would be told to stop as
    soon as that request ended. Children are therefore spawned from the main thread, or from
    this daemon thread, which lives as long as the process.
    """

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], Any]) -> Any:
        if threading.current_thread() is threading.main_thread():
            return fn()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="celerymon-spawner", daemon=True
                )
                self._thread.start()
        reply: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._jobs.put((fn, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value

    def _loop(self) -> None:
        while True:
            fn, reply = self._jobs.get()
            try:
                reply.put((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                reply.put((False, exc))


_spawner = _Spawner()


def spawn(
    command: Sequence[str],
    *,
    stdout: IO[bytes] | int,
    stderr: IO[bytes] | int,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group that is told to stop when this process dies."""
    preexec = _pdeathsig()

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec,
            close_fds=True,
        )

    return _spawner.run(start)
