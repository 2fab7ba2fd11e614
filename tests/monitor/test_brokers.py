"""Broker variants: the embedded broker's unix socket and kombu's global_keyprefix."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest
import redis
from celery import Celery

from .conftest import wait_for


@pytest.fixture
def socket_broker():
    """A redis-server on a unix socket only, as the embedded broker runs it."""
    work = tempfile.mkdtemp(prefix="cm-sock-")
    path = os.path.join(work, "redis.sock")
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", "0", "--unixsocket", path,
         "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", work],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: os.path.exists(path), 10)
        yield f"redis+socket://{path}"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def send(app, *events):
    with app.connection_for_write() as conn:
        d = app.events.Dispatcher(conn, hostname="w@h", enabled=True)
        for type_, fields in events:
            d.send(type_, **fields)


def test_events_and_queue_lengths_over_the_embedded_brokers_unix_socket(
    socket_broker, make_service
):
    app = Celery("sock", broker=socket_broker)
    svc = make_service(app)
    assert svc.wait_connected(5)
    send(app, ("task-received", {"uuid": "s1", "name": "app.x"}))
    wait_for(lambda: svc.task("s1"))
    client = redis.Redis(unix_socket_path=socket_broker[len("redis+socket://") :])
    client.lpush("celery", b"1", b"2")
    assert {q["name"]: q["messages"] for q in svc.queues(max_age=0)}["celery"] == 2


def test_global_keyprefix_applies_to_events_and_queue_lengths(redis_url, make_service):
    app = Celery("pfx", broker=redis_url)
    app.conf.broker_transport_options = {"global_keyprefix": "tenant1:"}
    app.conf.task_queues = None
    svc = make_service(app, queues=("jobs",))
    assert svc.wait_connected(5)
    send(app, ("task-received", {"uuid": "p1", "name": "app.x"}))
    wait_for(lambda: svc.task("p1"))
    r = redis.Redis.from_url(redis_url)
    r.lpush("tenant1:jobs", b"a")
    r.lpush("tenant1:jobs\x06\x169", b"b", b"c")
    r.lpush("jobs", b"not ours")  # an unprefixed key must not count
    lengths = {q["name"]: q["messages"] for q in svc.queues(max_age=0)}
    assert lengths["jobs"] == 3
