"""Shared fixtures: a real Redis server on a free loopback port for the whole test session.

``redis_server`` is a :class:`RedisServer` that tests may ``stop()`` and ``start()`` again (on the
same port) to simulate a broker outage; ``redis_url`` gives a fresh logical database per test so
tests never see each other's keys.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest


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
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--databases", "256",
                "--dir", self.workdir,
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


_db_numbers = itertools.count(1)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A Redis URL on a logical database no other test uses in this session."""
    if redis_server.proc is None:
        redis_server.start()
    return redis_server.url(next(_db_numbers) % 256)


@pytest.fixture(autouse=True)
def _no_inherited_celery_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their own config; a developer's CELERY_BROKER_URL must not leak in."""
    for key in list(os.environ):
        if key.startswith("CELERY_"):
            monkeypatch.delenv(key)
