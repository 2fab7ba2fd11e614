"""Insight across processes: one ingester, one follower, a real PostgreSQL, Redis and worker.

Two apps in this process share a history with ``CELERY_MONITOR_SINGLE_INGESTER`` (PostgreSQL,
and a SQLite file on one host): one takes the lease, consumes the events and writes the
insight tables; the other follows and answers ``/api/errors``, ``/api/analytics`` and
``/api/alerts`` from the same tables, its live pages told of each write over the fan-out
channel. An alert rule configured in both fires once for the cluster (one webhook call), and
goes on firing, not sent again, when the follower takes the ingester's place.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from flask_celerymon.web.insight import get_insight
from tests.apps import basic
from tests.conftest import WorkerProcess, run_basic_tasks, started_pair

#: Fields of the answers that are the time of the request itself.
NOW_FIELDS = ("since", "until")


class _Hook(BaseHTTPRequestHandler):
    bodies: list[dict]

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        n = int(self.headers.get("Content-Length") or 0)
        type(self).bodies.append(json.loads(self.rfile.read(n)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook():
    """A real HTTP server counting the alert notifications it receives."""

    class Hook(_Hook):
        bodies: list[dict] = []

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", Hook.bodies
    server.shutdown()
    server.server_close()


@pytest.fixture(params=["postgresql", "sqlite"])
def shared_db(request, tmp_path) -> str:
    """The shared history (and insight tables): a PostgreSQL database, or a SQLite file on
    this host."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return str(tmp_path / "shared.sqlite3")


@pytest.fixture
def two_apps(redis_url, shared_db, webhook, monkeypatch):
    monkeypatch.setenv("CELERYMON_TEST_BROKER", redis_url)
    config = dict(
        CELERY_MONITOR_BLUEPRINT=True,
        CELERY_MONITOR_DB=shared_db,
        CELERY_MONITOR_SINGLE_INGESTER=True,
        CELERY_MONITOR_LEASE_TTL=3.0,
        CELERY_MONITOR_ENABLE_EVENTS_INTERVAL=1.0,
        CELERY_MONITOR_ALERTS=[
            {"kind": "failure_rate", "name": "failing", "threshold": 0.5, "min_tasks": 4}
        ],  # fmt: skip
        CELERY_MONITOR_ALERT_INTERVAL=0.5,
        CELERY_MONITOR_ALERT_WEBHOOK=webhook[0],
        TESTING=True,
    )
    apps = [basic.create_app(**config), basic.create_app(**config)]
    try:
        yield apps
    finally:
        for app in apps:
            with app.app_context():
                get_insight().stop()
            app.extensions["celerymon"].shutdown()


def _get(app: Any, path: str) -> Any:
    resp = app.test_client().get("/monitor" + path)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    data = resp.get_json()
    for k in NOW_FIELDS:
        data.pop(k, None)
    return data


def test_a_follower_answers_the_insight_of_the_ingester(two_apps, redis_url, tmp_path, webhook):
    follower, ingester = started_pair(two_apps)
    for app in (follower, ingester):
        _get(app, "/api/errors")  # the first request starts the insight engine
    with follower.app_context():
        f_insight = get_insight()
    with ingester.app_context():
        i_insight = get_insight()
    assert f_insight.store is not i_insight.store  # two processes' worth of connections
    seen = f_insight.versions()

    worker = WorkerProcess("tests.apps.basic:create_app", redis_url, "insight@test",
                           str(tmp_path / "worker.log"), args=("-P", "solo", "-E"))  # fmt: skip
    try:
        worker.wait_ready(basic.celery.get_app(ingester), timeout=120)
        _ok, bad = run_basic_tasks(ingester, ok=6, bad=4)
        bad_ids = {f.id for f in bad}

        # the failures recorded by the ingester are the follower's error groups
        deadline = time.monotonic() + 30
        while True:
            mine, theirs = _get(ingester, "/api/errors"), _get(follower, "/api/errors")
            groups = mine["groups"]
            if groups and groups[0]["failures"] == 4 and theirs == mine:
                break
            assert time.monotonic() < deadline, (mine, theirs)
            time.sleep(0.2)
        (group,) = groups
        assert group["exception_type"] == "ValueError"
        assert group["message"] == "order <n> failed"
        gid = group["id"]
        while True:  # each task's state is read from the shared history, flushed each second
            mine = _get(ingester, f"/api/errors/{gid}?limit=10")
            theirs = _get(follower, f"/api/errors/{gid}?limit=10")
            if theirs == mine and all(t["state"] == "FAILURE" for t in mine["tasks"]):
                break
            assert time.monotonic() < deadline, (mine, theirs)
            time.sleep(0.2)
        assert {t["uuid"] for t in theirs["tasks"]} == bad_ids

        # the analytics are the same, counted once
        for path in ("/api/analytics?window=1h", "/api/analytics?window=24h"):
            mine, theirs = _get(ingester, path), _get(follower, path)
            assert theirs == mine
        counts = {t["name"]: t["current"] for t in theirs["tasks"]}
        name = "tests.apps.basic:fail"
        assert counts["tests.apps.basic:add"]["succeeded"] == 6 and counts[name]["failed"] == 4
        series = f"/api/analytics/series?name={name}&window=1h"
        assert _get(follower, series) == _get(ingester, series)

        # the alert fires once for the cluster: one firing alert, one webhook call
        while True:
            mine, theirs = _get(ingester, "/api/alerts"), _get(follower, "/api/alerts")
            if mine["alerts"] and mine["alerts"][0]["notifications"] == 1 and theirs == mine:
                break
            assert time.monotonic() < deadline, (mine, theirs, webhook[1])
            time.sleep(0.2)
        time.sleep(2.0)  # several evaluations later: nothing sent again, nothing opened twice
        (alert,) = _get(follower, "/api/alerts")["alerts"]
        assert (alert["status"], alert["rule"], alert["subject"]) == ("firing", "failing", name)
        assert [b["status"] for b in webhook[1]] == ["firing"]
    finally:
        worker.stop()

    # the follower's live pages were told of the writes; the follower wrote nothing
    moved = f_insight.versions()
    assert moved["errors"] > seen["errors"] and moved["analytics"] > seen["analytics"]
    assert moved["alerts"] > seen["alerts"]
    figures = f_insight.figures()
    assert figures["writing"] is False and figures["last_evaluation"] is None
    assert i_insight.figures()["writing"] is True
    assert i_insight.figures()["last_evaluation"] is not None

    # the ingester stops: the follower takes the lease and goes on with the firing alert
    # (read back from the shared table): not opened again, not sent again
    with ingester.app_context():
        i_insight.stop()
    ingester.extensions["celerymon"].shutdown()
    svc = follower.extensions["celerymon"].monitor
    deadline = time.monotonic() + 30
    while svc.role != "ingester" or f_insight.figures()["last_evaluation"] is None:
        assert time.monotonic() < deadline, (svc.role, f_insight.figures())
        time.sleep(0.1)
    time.sleep(1.5)  # a few evaluations by the new ingester
    assert f_insight.figures()["writing"] is True
    (after,) = _get(follower, "/api/alerts")["alerts"]
    assert (after["id"], after["status"], after["notifications"]) == (alert["id"], "firing", 1)
    assert [b["status"] for b in webhook[1]] == ["firing"]
