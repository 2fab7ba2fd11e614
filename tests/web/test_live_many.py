"""``flask celery monitor`` on gevent: more live pages than a thread-per-socket server holds.

The standalone monitor runs as users run it (gunicorn's gevent worker, a real Redis). It opens
100 live pages while ``--threads 8`` is given (the gthread model would have allowed 4 live
pages), then a worker event published on the broker reaches every page.
"""

from __future__ import annotations

import json
import time

import psutil
import redis

from flask_celerymon.cli import monitor_limits
from tests.apps.served import app_env
from tests.conftest import free_port
from tests.web.test_limits_served import FeedClient, served

PAGES = 100


def _heartbeat(hostname: str) -> tuple[str, bytes]:
    """A worker-online event as a worker's event dispatcher publishes it on Redis."""
    import base64

    event = {"hostname": hostname, "utcoffset": 0, "pid": 1, "clock": 1, "freq": 2.0,
             "active": 0, "processed": 0, "loadavg": [0.1, 0.1, 0.1], "sw_ident": "py-celery",
             "sw_ver": "5.4.0", "sw_sys": "Linux", "timestamp": time.time(),
             "type": "worker-online"}  # fmt: skip
    body = base64.b64encode(json.dumps(event).encode()).decode()
    msg = {"body": body, "content-encoding": "utf-8", "content-type": "application/json",
           "headers": {"hostname": hostname},
           "properties": {"delivery_mode": 1, "body_encoding": "base64", "priority": 0,
                          "delivery_info": {"exchange": "celeryev",
                                            "routing_key": "worker.online"},
                          "delivery_tag": "1"}}  # fmt: skip
    return "worker.online", json.dumps(msg).encode()


def _read_until(ws: FeedClient, want: str, timeout: float) -> bool:
    from wsproto.events import Ping, TextMessage

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws.timeout = max(0.1, deadline - time.monotonic())
        event = ws.next_event()
        if isinstance(event, Ping):
            continue
        assert isinstance(event, TextMessage), event
        msg = json.loads(event.data)
        items = msg.get("items", []) if msg["type"] == "batch" else [msg]
        if any(it.get("type") == "worker" and it.get("id") == want for it in items):
            return True
    return False


def test_the_gevent_monitor_holds_more_live_pages_than_threads_and_updates_them_all(
    redis_url, tmp_path
):
    assert monitor_limits(8) == {
        "CELERY_MONITOR_MAX_LIVE_SOCKETS": 4,
        "CELERY_MONITOR_MAX_CONCURRENT_WAITS": 1,
    }
    assert monitor_limits(8, "gevent", 200) == {
        "CELERY_MONITOR_MAX_LIVE_SOCKETS": 150,
        "CELERY_MONITOR_MAX_CONCURRENT_WAITS": 25,
    }
    port = free_port()
    env = app_env(str(tmp_path), redis_url)
    args = ["flask", "--app", "tests.apps.served:create_app", "celery", "monitor", "--port",
            str(port), "--threads", "8", "--connections", "200"]  # fmt: skip
    pages: list[FeedClient] = []
    with served(args, env, port, tmp_path / "monitor.log") as base:
        ws_url = base.replace("http://", "ws://") + "/monitor/ws?view=workers"
        try:
            for _ in range(PAGES):
                ws = FeedClient(ws_url, timeout=30)
                pages.append(ws)
                hello = json.loads(ws.next_event().data)
                assert hello == {"type": "hello", "view": "workers"}
            # one process, no thread per page
            server = [p for p in psutil.Process().children() if "celery" in " ".join(p.cmdline())]
            threads = sum(p.num_threads() + sum(c.num_threads() for c in p.children())
                          for p in server)  # fmt: skip
            assert threads < PAGES // 2, threads

            client = redis.Redis.from_url(redis_url)
            db = client.connection_pool.connection_kwargs.get("db", 0)
            rk, message = _heartbeat("many-pages@test")
            deadline = time.monotonic() + 30
            got = [False] * PAGES
            while not all(got) and time.monotonic() < deadline:
                client.publish(f"/{db}.celeryev/{rk}", message)  # until the consumer listens
                for i, ws in enumerate(pages):
                    if not got[i]:
                        got[i] = _read_until(ws, "many-pages@test", timeout=1.0)
            client.close()
            assert sum(got) == PAGES, f"{sum(got)} of {PAGES} pages got the new worker"
        finally:
            for ws in pages:
                ws.close()
