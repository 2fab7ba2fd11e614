"""Fixtures for the monitor blueprint: a real Redis, a real worker, the real service.

``monitored`` (module scope) gives a :class:`Monitored` with the Flask app (blueprint mounted at
``/monitor``), its running monitor service, a test client, the worker process and its name.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask

from tests.apps import basic
from tests.conftest import WorkerProcess

_dbs = iter(range(100, 200))


@dataclass
class Monitored:
    app: Flask
    broker: str
    worker: WorkerProcess
    worker_name: str

    @property
    def state(self) -> Any:
        return self.app.extensions["celerymon"]

    @property
    def service(self) -> Any:
        return self.state.monitor

    @property
    def celery_app(self) -> Any:
        return self.state.celery_app

    def client(self) -> Any:
        return self.app.test_client()

    def wait_for(self, predicate, timeout: float = 10.0, interval: float = 0.05) -> Any:
        """Poll ``predicate()`` until it returns a truthy value; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"condition not met within {timeout} s: {predicate}")


def make_monitored_app(broker: str, instance_path: str, **config: Any) -> Flask:
    os.environ["CELERYMON_TEST_BROKER"] = broker
    # The monitor refuses everyone without authentication outside debug and testing mode; these
    # apps open it on purpose (the auth tests pass their own settings).
    config.setdefault("CELERY_MONITOR_ALLOW_ANONYMOUS", True)
    try:
        config.setdefault("CELERY_MONITOR_DB", os.path.join(instance_path, "monitor.sqlite3"))
        app = basic.create_app(CELERY_MONITOR_BLUEPRINT=True, **config)
    finally:
        del os.environ["CELERYMON_TEST_BROKER"]
    app.instance_path = instance_path
    return app


@contextlib.contextmanager
def run_monitored(
    redis_server: Any, tmp_path_factory: Any, label: str, **config: Any
) -> Iterator[Monitored]:
    """A monitored app (extra ``config``) with a real prefork worker on queues celery, high."""
    broker = redis_server.url(next(_dbs))
    tmp = tmp_path_factory.mktemp(label)
    app = make_monitored_app(broker, str(tmp), **config)
    name = f"{label}-{next(_dbs)}@{socket.gethostname()}"
    worker = WorkerProcess(
        "tests.apps.basic:create_app",
        broker,
        name,
        str(tmp / "worker.log"),
        args=("-P", "prefork", "-c", "2", "-Q", "celery,high", "-E"),
    )
    env = Monitored(app, broker, worker, name)
    try:
        worker.wait_ready(env.celery_app)
        # events published before the subscription are lost (Redis pub/sub): wait for it
        assert env.service.wait_connected(30), "the monitor never subscribed to the event stream"
        yield env
    finally:
        env.state.shutdown()
        worker.stop()


@pytest.fixture(scope="module")
def monitored(redis_server, tmp_path_factory):
    with run_monitored(redis_server, tmp_path_factory, "web") as env:
        yield env


def feed_close(url: str, timeout: float = 10.0) -> tuple[int, str]:
    """Open the websocket ``url`` (``ws://``), read until the server ends it, and return the
    ``(code, reason)`` of its close frame; AssertionError when it ends without one.

    simple-websocket's client parses only the first event of its handshake read: a close frame
    sent right after the handshake, arriving in the same read, is dropped and the close reads
    as 1005 (about one refusal in 300 here). This reads every frame with wsproto.
    """
    from urllib.parse import urlsplit

    from wsproto import ConnectionType, WSConnection
    from wsproto.events import CloseConnection, RejectConnection, Request

    parts = urlsplit(url)
    conn = WSConnection(ConnectionType.CLIENT)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(conn.send(Request(host=parts.netloc, target=target)))
        while True:
            data = sock.recv(65536)
            conn.receive_data(data or None)
            for event in conn.events():
                if isinstance(event, CloseConnection):
                    return event.code, event.reason
                if isinstance(event, RejectConnection):
                    raise AssertionError(f"handshake refused: HTTP {event.status_code}")
            if not data:
                raise AssertionError("the connection ended without a close frame")
