"""Shared fixtures: a real Redis server on a free loopback port for the whole test session.

``redis_server`` is a :class:`RedisServer` that tests may ``stop()`` and ``start()`` again (on the
same port) to simulate a broker outage; ``redis_url`` gives a fresh logical database per test so
tests never see each other's keys.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest_plugins = ["tests.services"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server child process bound to 127.0.0.1 on a fixed port."""

    def __init__(self, port: int, workdir: str) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--databases",
                "256",
                "--dir",
                self.workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        # Celery results unsubscribe from the backend when collected; let them do it while the
        # server is up, or each one retries a lost connection for 20 s later, in another test.
        gc.collect()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    workdir = tempfile.mkdtemp(prefix="celerymon-redis-")
    server = RedisServer(free_port(), workdir)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for one test module alone: its database numbers clash with no other test."""
    server = RedisServer(free_port(), str(tmp_path_factory.mktemp("redis")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


#: logical databases 1-99 are handed out by ``redis_url``; fixtures that need a fixed database
#: for a whole module take theirs from 100 up (tests/web/conftest.py, test_worker_integration).
_db_numbers = itertools.count(0)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A Redis URL on an emptied logical database (1-99) of the session's server."""
    if redis_server.proc is None:
        redis_server.start()
    db = 1 + next(_db_numbers) % 99
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=5) as s:
        s.sendall(f"SELECT {db}\r\nFLUSHDB\r\n".encode())
        reply = b""
        while reply.count(b"\r\n") < 2:
            reply += s.recv(64)
    return redis_server.url(db)


@pytest.fixture(autouse=True)
def _no_inherited_celery_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their own config; a developer's CELERY_BROKER_URL must not leak in."""
    for key in list(os.environ):
        if key.startswith("CELERY_"):
            monkeypatch.delenv(key)


class WorkerProcess:
    """A real ``celery worker`` subprocess.

    By default for a Flask app using flask_celerymon (``flask_app`` is its ``FLASK_APP``, the
    broker travels in ``CELERYMON_TEST_BROKER``); ``celery_app`` names another ``-A`` target,
    e.g. a plain Celery app, with ``flask_app=None``.
    """

    def __init__(
        self,
        flask_app: str | None,
        broker_url: str,
        name: str,
        logfile: str,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        celery_app: str = "flask_celerymon.celery",
        loglevel: str = "info",
    ) -> None:
        import sys

        self.name = name
        self.logfile = logfile
        child_env = {**os.environ, "CELERYMON_TEST_BROKER": broker_url, **(env or {})}
        if flask_app is not None:
            child_env["FLASK_APP"] = flask_app
        command = [sys.executable, "-m", "celery", "-A", celery_app, "worker", "-n", name,
                   "--without-mingle", "--without-gossip", "-l", loglevel, *args]  # fmt: skip
        self._log = open(logfile, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            command,
            env=child_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )

    @property
    def hostname(self) -> str:
        return self.name

    def wait_ready(self, celery_app, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.log_text()[-3000:]}")
            replies = celery_app.control.inspect(destination=[self.name], timeout=0.5).ping()
            if replies and self.name in replies:
                return
        raise RuntimeError(f"worker {self.name} did not answer: {self.log_text()[-3000:]}")

    def log_text(self) -> str:
        with open(self.logfile, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


#: one Prometheus scrape: {(sample name, sorted labels): value}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@contextlib.contextmanager
def basic_worker(app: Any, broker_url: str, hostname: str, log_dir: Any) -> Iterator[Any]:
    """A real solo worker of ``tests.apps.basic`` sending events, ready to take ``app``'s
    tasks (waited for up to 120 s) and stopped when the block ends; its log in
    ``log_dir/worker.log``."""
    from tests.apps import basic

    worker = WorkerProcess("tests.apps.basic:create_app", broker_url, hostname,
                           str(log_dir / "worker.log"), args=("-P", "solo", "-E"))  # fmt: skip
    try:
        worker.wait_ready(basic.celery.get_app(app), timeout=120)
        yield worker
    finally:
        worker.stop()


def run_basic_tasks(app: Any, ok: int, bad: int = 0) -> tuple[list[Any], list[Any]]:
    """Submit ``ok`` ``tests.apps.basic:add(i, i)`` and ``bad`` ``tests.apps.basic:fail`` tasks
    from ``app`` (its context pushed here) and wait for them through a running worker: the
    sums are asserted, every failure raises ``ValueError``. Returns both lists of futures."""
    from tests.apps import basic

    with app.app_context():
        good = [basic.celery.submit(basic.add, i, i) for i in range(ok)]
        failing = [basic.celery.submit(basic.fail, f"order {i} failed") for i in range(bad)]
        assert [f.result(timeout=30) for f in good] == [2 * i for i in range(ok)]
        for f in failing:
            with pytest.raises(ValueError):
                f.result(timeout=30)
    return good, failing


def started_pair(apps: list[Any], timeout: float = 30) -> tuple[Any, Any]:
    """Start the monitors of two apps sharing a store with ``CELERY_MONITOR_SINGLE_INGESTER``;
    ``(follower app, ingester app)`` once one holds the lease and consumes (events published
    before it subscribes are lost: Redis pub/sub)."""
    services = [app.extensions["celerymon"].monitor for app in apps]
    for svc in services:
        svc.ensure_started()
    deadline = time.monotonic() + timeout
    while sorted(s.role for s in services) != ["follower", "ingester"]:
        assert time.monotonic() < deadline, [s.role for s in services]
        time.sleep(0.05)
    follower, ingester = sorted(apps, key=lambda a: a.extensions["celerymon"].monitor.role)
    assert ingester.extensions["celerymon"].monitor.wait_connected(timeout)
    return follower, ingester


def parse_metrics(text: str) -> Samples:
    """Parse a Prometheus exposition with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric_value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of one sample of a scrape, or None when it is absent."""
    return samples.get((name, tuple(sorted(labels.items()))))
