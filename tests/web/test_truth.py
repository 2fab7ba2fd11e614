"""Pages and API tell what really happened (issue 12): failures are not empty successes, lost
tasks say so. Event-level cases with a real worker are in tests/monitor/test_truth.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from html import unescape

import pytest
from flask import Flask

from tests.conftest import free_port
from tests.web.conftest import make_monitored_app
from tests.web.test_api import Api


@pytest.fixture(scope="module")
def down_app(tmp_path_factory) -> Iterator[Flask]:
    """An app whose broker nobody listens on, with Celery's default retry settings."""
    app = make_monitored_app(
        f"redis://127.0.0.1:{free_port()}/0", str(tmp_path_factory.mktemp("down-default"))
    )
    try:
        yield app
    finally:
        app.extensions["celerymon"].shutdown()


def test_workers_refresh_with_the_broker_down_is_503_not_an_empty_success(down_app):
    api = Api(down_app)
    started = time.monotonic()
    resp = api.get("/api/workers?refresh=1")
    assert resp.status_code == 503, resp.json
    assert resp.json["error"].startswith("Broker or result backend unavailable: ")
    assert "Connection refused" in resp.json["error"]
    assert time.monotonic() - started < 5
    # the page still renders what is known
    page = down_app.test_client().get("/monitor/workers?refresh=1")
    assert page.status_code == 200


@pytest.fixture
def memory_app(tmp_path) -> Iterator[Flask]:
    app = make_monitored_app("memory://", str(tmp_path))
    try:
        yield app
    finally:
        app.extensions["celerymon"].shutdown()


def test_a_lost_task_says_so_on_its_page_and_in_the_api(memory_app):
    svc = memory_app.extensions["celerymon"].monitor
    now = time.time()
    svc.apply_events(
        [
            {"type": "worker-online", "hostname": "w@h", "timestamp": now - 3, "freq": 2.0},
            {"type": "task-received", "uuid": "run", "name": "app.long", "hostname": "w@h",
             "timestamp": now - 2},
            {"type": "task-started", "uuid": "run", "hostname": "w@h", "timestamp": now - 1},
            {"type": "task-received", "uuid": "wait", "name": "app.long", "hostname": "w@h",
             "timestamp": now - 1},
            {"type": "worker-offline", "hostname": "w@h", "timestamp": now},
        ]
    )  # fmt: skip
    client = memory_app.test_client()
    page = unescape(client.get("/monitor/task/run").get_data(as_text=True))
    assert 'id="task-state">LOST</span>' in page
    assert "Lost: this task was running on w@h when the worker went offline" in page
    assert "task-lost" not in client.get("/monitor/task/wait").get_data(as_text=True)
    api = Api(memory_app)
    resp = api.get("/api/tasks?state=LOST")
    assert list(resp.json) == ["run"]
    # a received task is redelivered by the broker, not lost
    assert api.get("/api/task/info/wait").json["state"] == "RECEIVED"


def test_a_configured_queue_nobody_consumes_is_still_measured(redis_server, tmp_path):
    from tests.web.conftest import _dbs

    broker = redis_server.url(next(_dbs))
    app = make_monitored_app(
        broker, str(tmp_path), CELERY_WORKERS={"reporter": {"queues": ["reports", "archive"]}}
    )
    try:
        api = Api(app)
        lengths = {
            q["name"]: q["messages"] for q in api.get("/api/queues/length").json["active_queues"]
        }
        assert lengths["reports"] == 0 and lengths["archive"] == 0
        celery_app = app.extensions["celerymon"].celery_app
        for _ in range(3):
            celery_app.send_task("app.report", queue="reports")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            resp = api.get("/api/queues/length")
            lengths = {q["name"]: q["messages"] for q in resp.json["active_queues"]}
            if lengths["reports"] == 3:
                break
            time.sleep(0.2)
        assert lengths["reports"] == 3
        metrics = app.test_client().get("/monitor/metrics").get_data(as_text=True)
        assert 'celerymon_queue_length{queue="reports"} 3.0' in metrics
        broker_page = unescape(app.test_client().get("/monitor/broker").get_data(as_text=True))
        assert 'data-queue="archive"' in broker_page
    finally:
        app.extensions["celerymon"].shutdown()


def test_a_revoke_from_the_api_shows_as_requested_until_the_worker_confirms(memory_app):
    svc = memory_app.extensions["celerymon"].monitor
    now = time.time()
    svc.apply_events(
        [{"type": "task-received", "uuid": f"r{i}", "name": "app.wait", "hostname": "w@h",
          "timestamp": now} for i in range(3)]
    )  # fmt: skip
    api = Api(memory_app)
    assert api.post("/api/task/revoke/r0").status_code == 200
    resp = api.post("/api/tasks/revoke?name=app.wait&state=RECEIVED")
    assert resp.json["count"] == 3
    client = memory_app.test_client()
    for i in range(3):
        info = api.get(f"/api/task/info/r{i}").json
        assert info["state"] == "RECEIVED"
        assert info["history"][-1]["state"] == "revoke-requested"
    assert 'id="task-revoke-requested"' in client.get("/monitor/task/r1").get_data(as_text=True)
    svc.apply_events([{"type": "task-revoked", "uuid": "r1", "hostname": "w@h",
                       "timestamp": time.time()}])  # fmt: skip
    page = client.get("/monitor/task/r1").get_data(as_text=True)
    assert 'id="task-revoke-requested"' not in page and ">REVOKED</span>" in page


def test_the_workers_page_says_when_events_may_be_missing(memory_app):
    svc = memory_app.extensions["celerymon"].monitor
    client = memory_app.test_client()
    assert 'id="event-gaps"' not in client.get("/monitor/").get_data(as_text=True)
    svc._figures.disconnected_at = time.time() - 42  # the stream was lost 42 s ago...
    svc._on_connect()  # ...and is subscribed again
    page = unescape(client.get("/monitor/").get_data(as_text=True))
    assert 'id="event-gaps"' in page
    assert "(the event stream was disconnected)" in page
    assert svc.figures()["gaps_total"] == 1


def test_a_retried_task_page_shows_earlier_attempts_as_attempts(memory_app):
    svc = memory_app.extensions["celerymon"].monitor
    t0 = time.time() - 10
    events = [{"type": "worker-online", "hostname": "w@h", "timestamp": t0, "freq": 60.0}]
    for attempt in range(3):
        ts = t0 + attempt
        events += [
            {"type": "task-received", "uuid": "rt", "name": "app.flaky", "hostname": "w@h",
             "timestamp": ts, "retries": attempt,
             "parent_id": None if attempt == 0 else "rt", "root_id": "rt"},
            {"type": "task-started", "uuid": "rt", "hostname": "w@h", "timestamp": ts + 0.1},
        ]  # fmt: skip
        if attempt < 2:
            events.append({"type": "task-retried", "uuid": "rt", "hostname": "w@h",
                           "timestamp": ts + 0.2, "exception": f"ValueError('attempt {attempt}')",
                           "traceback": "Traceback (most recent call last): ..."})  # fmt: skip
    events.append({"type": "task-succeeded", "uuid": "rt", "hostname": "w@h",
                   "timestamp": t0 + 2.3, "result": "2", "runtime": 0.2})  # fmt: skip
    svc.apply_events(events)
    client = memory_app.test_client()
    page = unescape(client.get("/monitor/task/rt").get_data(as_text=True))
    assert 'id="task-state">SUCCESS</span>' in page
    assert "Exception of the last retried attempt" in page and 'data-attempt="earlier"' in page
    assert "Traceback of the last retried attempt" in page
    assert "<th>Parent</th>" not in page and "<th>Children</th>" not in page
    assert page.count('<span class="badge warn">RETRY</span>') == 2  # the timeline
    charts = unescape(client.get("/monitor/charts?window=15m").get_data(as_text=True))
    row = charts[charts.index(">app.flaky</a></td>") :].split("</tr>", 1)[0]
    cells = [c.split("<", 1)[0] for c in row.split('<td class="n">')[1:]]
    # succeeded (linked), failed (linked), retried, revoked
    assert [c or "link" for c in cells[:4]] == ["link", "link", "2", "0"]
    workers = unescape(client.get("/monitor/?json=1").get_data(as_text=True))
    assert '"task-retried": 2' in workers or '"task-retried":2' in workers
