"""``flask celery monitor`` as a real subprocess: it consumes events from the moment it is up."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import urllib.request

import pytest
import redis
from celery import Celery

from flask_celerymon.monitor.settings import DB_FILENAME
from tests.apps import local
from tests.conftest import free_port
from tests.test_cli import _child, _end, _wait_for


def test_the_served_monitor_sees_tasks_sent_before_its_first_request(own_redis, tmp_path):
    broker = own_redis.url(223)
    port = free_port()
    env = local.app_env(tmp_path, broker, {}, monitor_port=port)
    r = redis.Redis.from_url(broker)
    baseline = r.execute_command("PUBSUB", "NUMPAT")
    log = tmp_path / "monitor.log"
    with open(log, "wb") as out:
        proc = _child(["flask", "celery", "monitor", "--port", str(port)], env, out)
    try:
        # subscribed to the event stream without anyone asking for a page
        _wait_for(
            lambda: r.execute_command("PUBSUB", "NUMPAT") > baseline or proc.poll() is not None,
            60,
            "the monitor's event subscription",
        )
        assert proc.poll() is None, log.read_text()
        app = Celery("sender", broker=broker)
        with app.connection_for_write() as conn:
            d = app.events.Dispatcher(conn, hostname="w@h", enabled=True)
            d.send("task-received", uuid="early", name="app.early")
            d.send("task-succeeded", uuid="early", result="1", runtime=0.1)

        def info():
            url = f"http://127.0.0.1:{port}/monitor/api/task/info/early"
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return json.loads(resp.read())
            except OSError:
                return None

        task = _wait_for(lambda: (t := info()) and t["state"] == "SUCCESS" and t, 30, "the task")
        assert (task["name"], task["worker"]) == ("app.early", "w@h")
    finally:
        _end(proc)


def test_the_monitor_on_a_taken_port_is_a_one_line_error(own_redis, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with local.environment(local.app_env(tmp_path, own_redis.url(223), {})):
            app = local.create_app()
        result = app.test_cli_runner().invoke(
            args=["celery", "monitor", "--port", str(port), "--worker-class", "gthread"]
        )
    assert result.exit_code == 1
    assert (
        result.output == f"Error: cannot serve the monitor on 127.0.0.1:{port}: the port is taken\n"
    )


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_the_monitor_stopped_by_sigterm_writes_its_clean_stop(own_redis, tmp_path, worker_class):
    port = free_port()
    env = local.app_env(tmp_path, own_redis.url(232), {})  # the default SQLite history store
    log = tmp_path / "monitor.log"
    with open(log, "wb") as out:
        proc = _child(
            ["flask", "celery", "monitor", "--port", str(port), "--worker-class", worker_class],
            env,
            out,
        )
    try:

        def healthy():
            try:
                url = f"http://127.0.0.1:{port}/monitor/healthcheck"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return resp.status == 200
            except OSError:
                return proc.poll() is not None

        _wait_for(healthy, 60, "the monitor")
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        _end(proc)
    db = tmp_path / DB_FILENAME
    with sqlite3.connect(db) as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    assert meta.get("clean_stop") == "1", (meta, log.read_text())


def test_serving_process_freezes_its_startup_heap_and_spaces_young_collections():
    import gc

    from flask_celerymon.cli import GC_THRESHOLD0, _freeze_startup_heap

    before = gc.get_threshold()
    try:
        _freeze_startup_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_THRESHOLD0, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
