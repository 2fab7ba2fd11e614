"""Inspector coalescing and time bounds; queue lengths on non-Redis brokers."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from celery import Celery

from flask_celerymon.monitor import broker
from flask_celerymon.monitor.inspector import Inspector


class SlowControl:
    """Stands in for ``app.control``: each inspect method sleeps, then answers for one worker."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def inspect(self, destination=None, timeout=1.0, limit=None, connection=None):
        control = self

        class Insp:
            def __getattr__(self, method):
                def call():
                    with control.lock:
                        control.calls.append(method)
                    time.sleep(control.delay)
                    return {"w1@h": {"method": method}}

                return call

        return Insp()


@pytest.fixture
def app_with(monkeypatch):
    def make(delay: float) -> tuple[Celery, SlowControl]:
        app = Celery("insp", broker="memory://")
        control = SlowControl(delay)
        monkeypatch.setattr(type(app), "control", property(lambda self: control))
        return app, control

    return make


def test_concurrent_refreshes_of_the_same_method_are_coalesced(app_with):
    app, control = app_with(0.2)
    insp = Inspector(app, timeout=1.0)
    threads = [threading.Thread(target=insp.refresh, args=(None, ["stats"])) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert control.calls == ["stats"]
    assert insp.get()["w1@h"]["stats"] == {"method": "stats"}
    assert insp.get()["w1@h"]["timestamp"] > 0
    insp.close()


def test_all_methods_run_concurrently_within_one_timeout(app_with):
    app, control = app_with(0.5)
    insp = Inspector(app, timeout=3.0)
    t0 = time.monotonic()
    data = insp.refresh("w1@h")
    assert time.monotonic() - t0 < 2.0  # 8 methods of 0.5 s each, one after the other: 4 s
    assert sorted(control.calls) == sorted(
        ["stats", "active_queues", "registered", "scheduled", "active", "reserved", "revoked",
         "conf"]
    )  # fmt: skip
    assert data["w1@h"]["revoked"] == {"method": "revoked"}
    insp.close()


def test_a_caller_never_waits_longer_than_the_timeout(app_with):
    app, _ = app_with(2.5)
    insp = Inspector(app, timeout=0.3)
    t0 = time.monotonic()
    assert insp.refresh("w1@h", ["stats"]) == {}
    assert time.monotonic() - t0 < 1.5
    insp.close(timeout=1.0)


def test_a_refresh_on_a_shut_down_pool_keeps_the_last_answer_instead_of_raising():
    # what the housekeeping thread meets when the interpreter exits under it (the pool is shut
    # down by concurrent.futures' atexit hook): no traceback, no call
    insp = Inspector(Celery(broker="memory://"))
    insp._pool().shutdown()
    assert insp.refresh(wait=False) == {}
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        insp.refresh(wait=True)


def test_unknown_inspect_method_is_refused():
    insp = Inspector(Celery(broker="memory://"))
    with pytest.raises(ValueError, match="unknown inspect method 'bogus'; use one of stats"):
        insp.refresh(methods=["bogus"])


def test_queue_lengths_by_passive_declare_on_other_transports():
    app = Celery("mem", broker="memory://")
    with app.connection_for_write() as conn:
        q = conn.SimpleQueue("work")
        q.put({"n": 1})
        q.put({"n": 2})
        assert broker.queue_lengths(app, ["work", "missing"]) == [
            {"name": "work", "messages": 2, "consumers": 0},
            {"name": "missing", "messages": 0},
        ]
        q.close()


def test_rabbitmq_lengths_come_from_the_management_api():
    seen = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            seen["path"] = self.path
            seen["auth"] = self.headers.get("Authorization")
            body = json.dumps([
                {"name": "celery", "messages": 4, "messages_ready": 3, "consumers": 1},
                {"name": "other-app", "messages": 9},
            ]).encode()  # fmt: skip
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        app = Celery("amqp", broker="amqp://guest:secret@127.0.0.1:1/myvhost")
        api = f"http://127.0.0.1:{server.server_port}/api/"
        with app.connection_for_read() as conn:
            got = broker._rabbitmq_api(conn, ["celery"], api)
    finally:
        server.shutdown()
    assert got == [{"name": "celery", "messages": 4, "messages_ready": 3, "consumers": 1}]
    assert seen["path"] == "/api/queues/myvhost"
    assert seen["auth"] == "Basic Z3Vlc3Q6c2VjcmV0"
