"""The guard (read-only, cross-site refusals), 503s when the broker is down, 409/503 when
the broker or the result backend lacks a feature.

No worker is needed: the guard answers before anything reaches the broker, and with the
broker down nothing would answer anyway. Every response is still checked against
``openapi.json``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from flask import Flask

from tests.conftest import free_port
from tests.web.conftest import _dbs, make_monitored_app
from tests.web.test_api import Api

MUTATIONS = [
    ("POST", "/api/task/revoke/{id}"),
    ("POST", "/api/task/abort/{id}"),
    ("POST", "/api/task/retry/{id}"),
    ("POST", "/api/task/apply/tests.apps.basic.registered"),
    ("POST", "/api/task/async-apply/tests.apps.basic.registered"),
    ("POST", "/api/task/send-task/anything"),
    ("POST", "/api/task/timeout/tests.apps.basic.registered?workername=w@h"),
    ("POST", "/api/task/rate-limit/tests.apps.basic.registered?workername=w@h&ratelimit=1"),
    ("POST", "/api/worker/shutdown/w@h"),
    ("POST", "/api/worker/pool/restart/w@h"),
    ("POST", "/api/worker/pool/grow/w@h"),
    ("POST", "/api/worker/pool/shrink/w@h"),
    ("POST", "/api/worker/pool/autoscale/w@h?min=1&max=2"),
    ("POST", "/api/worker/queue/add-consumer/w@h?queue=q"),
    ("POST", "/api/worker/queue/cancel-consumer/w@h?queue=q"),
    ("POST", "/api/tasks/revoke?state=FAILURE"),
    ("POST", "/api/tasks/retry?state=FAILURE"),
    ("POST", "/api/queues/purge/celery"),
    ("POST", "/api/queues/remove/celery/{id}"),
]
READS = [
    "/api/workers",
    "/api/workers?status=1",
    "/api/tasks",
    "/api/task/types",
    "/api/queues/length",
    "/api/openapi.json",
]


def _app(broker: str, tmp_path, **config) -> Iterator[Flask]:
    app = make_monitored_app(broker, str(tmp_path), **config)
    try:
        yield app
    finally:
        app.extensions["celerymon"].shutdown()


@pytest.fixture(scope="module")
def read_only_app(redis_server, tmp_path_factory) -> Iterator[Flask]:
    tmp = tmp_path_factory.mktemp("read_only")
    yield from _app(redis_server.url(next(_dbs)), tmp, CELERY_MONITOR_READ_ONLY=True)


@pytest.fixture(scope="module")
def app(redis_server, tmp_path_factory) -> Iterator[Flask]:
    yield from _app(redis_server.url(next(_dbs)), tmp_path_factory.mktemp("guarded"))


@pytest.fixture(scope="module")
def down_app(tmp_path_factory) -> Iterator[Flask]:
    """An app whose broker and result backend (Redis) nobody listens on."""
    yield from _app(
        f"redis://127.0.0.1:{free_port()}/0",
        tmp_path_factory.mktemp("down"),
        CELERY_BROKER_TRANSPORT_OPTIONS={"max_retries": 1, "interval_start": 0},
        CELERY_REDIS_SOCKET_CONNECT_TIMEOUT=1,
        CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS={"retry_policy": {"max_retries": 0}},
        CELERY_BROKER_CONNECTION_MAX_RETRIES=1,
    )


# -- read-only ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), MUTATIONS)
def test_read_only_refuses_every_mutation(read_only_app, method, path):
    api = Api(read_only_app)
    resp = api.call(method, path.format(id=uuid.uuid4()), json={})
    assert resp.status_code == 403
    assert resp.json == {"error": "the monitor is read-only (CELERY_MONITOR_READ_ONLY is on)"}


def test_read_only_still_answers_reads(read_only_app):
    api = Api(read_only_app)
    for path in READS:
        assert api.get(path).status_code == 200, path


#: Sample queries for each route marked as a read by POST (``guard.safe``): a new such route
#: needs its queries here and its line in docs/api.rst's read-only rule.
SAFE_QUERIES = {
    "celerymon.tasks_datatable": [
        {},
        {"draw": "3", "start": "1", "length": "2"},
        {"length": "-1", "search[value]": "name:app.add"},
        {"order[0][column]": "0", "columns[0][data]": "runtime", "order[0][dir]": "desc"},
        {"order[0][column]": "1", "columns[1][data]": "name", "search[value]": "state:failure"},
    ],
}


def _snapshot(svc) -> tuple:
    """Everything a request could change in the monitor: every task and every worker."""
    return svc.query_tasks(limit=None).tasks, svc.workers(), svc.task_types()


def test_every_route_marked_safe_only_reads_and_is_named_in_the_docs(tmp_path):
    from tests.test_docs import DOCS

    app = make_monitored_app("memory://", str(tmp_path), CELERY_MONITOR_READ_ONLY=True)
    try:
        svc = app.extensions["celerymon"].monitor
        now = time.time()
        events = [{"type": "worker-online", "hostname": "w@h", "timestamp": now - 9, "freq": 60}]
        for i in range(6):
            events += [
                {"type": "task-received", "uuid": f"t{i}", "name": "app.add" if i % 2 else "app.x",
                 "args": f"({i},)", "hostname": "w@h", "timestamp": now - 8 + i},
                {"type": "task-started", "uuid": f"t{i}", "hostname": "w@h",
                 "timestamp": now - 7.5 + i},
                {"type": "task-failed" if i == 3 else "task-succeeded", "uuid": f"t{i}",
                 "hostname": "w@h", "timestamp": now - 7.5 + i + i / 10, "runtime": i / 10},
            ]  # fmt: skip
        svc.apply_events(events)
        safe = {
            rule.rule: rule.endpoint
            for rule in app.url_map.iter_rules()
            if "POST" in (rule.methods or ())
            and getattr(app.view_functions[rule.endpoint], "_celerymon_safe", False)
        }
        assert sorted(safe.values()) == sorted(SAFE_QUERIES)
        docs = " ".join((DOCS / "api.rst").read_text(encoding="utf-8").split())
        read_only = docs[docs.index("With ``CELERY_MONITOR_READ_ONLY = True``") :]
        for path in safe:
            assert f"``POST <prefix>{path.removeprefix('/monitor')}``" in read_only, path
        client = app.test_client()
        for path, endpoint in safe.items():
            for query in SAFE_QUERIES[endpoint]:
                before = _snapshot(svc)
                got = client.get(path, query_string=query)
                posted = client.post(path, data=query)
                assert got.status_code == posted.status_code == 200, (query, posted.json)
                assert posted.json == got.json, query
                assert _snapshot(svc) == before, query
        # the samples are not vacuous: they read the tasks the events made
        assert client.post("/monitor/tasks/datatable", data={}).json["recordsTotal"] == 6
    finally:
        app.extensions["celerymon"].shutdown()


# -- cross-site --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Origin": "http://evil.example"}, "Origin 'http://evil.example' is not this server"),
        ({"Origin": "http://localhost:8080"}, "Origin 'http://localhost:8080' is not this server"),
        ({"Origin": "http://localhost.evil.example"}, "Origin 'http://localhost.evil.example'"),
        ({"Origin": "file://"}, "Origin 'file://' is not this server"),
        ({"Origin": "null"}, "Origin 'null' is not this server"),
        ({"Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site is 'cross-site'"),
        ({"Sec-Fetch-Site": "same-site"}, "Sec-Fetch-Site is 'same-site'"),
        (
            {"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost"},
            "Sec-Fetch-Site is 'cross-site'",
        ),
    ],
)
def test_cross_site_mutations_are_refused(app, headers, reason):
    api = Api(app)
    task_id = uuid.uuid4()
    resp = api.post(f"/api/task/revoke/{task_id}", headers=headers)
    assert resp.status_code == 403
    assert resp.json["error"].startswith(f"cross-site request refused: {reason}")


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, requests: a script written for Flower
        {"Origin": "http://localhost"},
        {"Origin": "HTTP://LOCALHOST"},
        {"Origin": "http://localhost:80"},
        {"Origin": "https://localhost"},  # TLS ended by a proxy: Flask sees http
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"},
        {"Sec-Fetch-Site": "none"},
    ],
)
def test_same_origin_and_non_browser_mutations_pass_the_guard(app, headers):
    api = Api(app)
    task_id = uuid.uuid4()
    resp = api.post(f"/api/task/revoke/{task_id}", headers=headers)
    assert resp.status_code == 404  # the handler ran: nobody knows this task
    assert resp.json == {"error": f"Unknown task '{task_id}'"}


def test_cross_site_reads_are_answered(app):
    api = Api(app)
    resp = api.get("/api/task/types", headers={"Origin": "http://evil.example"})
    assert resp.status_code == 200


# -- broker down -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/task/async-apply/tests.apps.basic.registered"),
        ("POST", "/api/task/apply/tests.apps.basic.registered"),
        ("POST", "/api/task/send-task/anything"),
        ("GET", "/api/task/result/{id}"),
        ("POST", "/api/task/revoke/{id}"),
        ("POST", "/api/task/retry/{id}"),
        ("GET", "/api/queues/length"),
        ("POST", "/api/queues/purge/celery"),
        ("GET", "/api/workers?refresh=1"),
    ],
)
def test_broker_down_gives_503(down_app, method, path):
    api = Api(down_app)
    started = time.monotonic()
    resp = api.call(method, path.format(id=uuid.uuid4()), json={"args": [1]})
    assert resp.status_code == 503, resp.json
    assert resp.json["error"].startswith(("Broker or result backend unavailable", "worker ")), (
        resp.json
    )
    assert time.monotonic() - started < 15


# -- a broker that cannot list messages, no result backend ------------------------------------


@pytest.fixture(scope="module")
def bare_app(tmp_path_factory) -> Iterator[Flask]:
    """Kombu's in-memory broker and no result backend at all."""
    tmp = tmp_path_factory.mktemp("bare")
    yield from _app("memory://", tmp, CELERY_RESULT_BACKEND="disabled")


def test_without_a_result_backend_result_and_abort_are_503(bare_app):
    api = Api(bare_app)
    task_id = uuid.uuid4()
    resp = api.get(f"/api/task/result/{task_id}")
    assert resp.status_code == 503
    assert resp.json == {"error": "no result backend is configured"}
    resp = api.post(f"/api/task/abort/{task_id}")
    assert resp.status_code == 503
    assert resp.json == {"error": "no result backend is configured; abort needs one"}


def test_without_a_result_backend_sending_answers_only_the_id(bare_app):
    api = Api(bare_app)
    resp = api.post("/api/task/async-apply/tests.apps.basic.registered", json={"args": [1]})
    assert resp.status_code == 200
    assert set(resp.json) == {"task-id"}  # as Flower: no state without a backend


def test_a_broker_without_lists_refuses_message_operations_but_purges(bare_app):
    api = Api(bare_app)
    resp = api.get("/api/queues/messages/celery")
    assert resp.status_code == 409
    assert resp.json == {"error": "the memory broker does not allow listing messages"}
    resp = api.post(f"/api/queues/remove/celery/{uuid.uuid4()}")
    assert resp.status_code == 409
    assert resp.json == {"error": "the memory broker does not allow deleting one message"}
    api.post("/api/task/async-apply/tests.apps.basic.registered", json={"args": [2]})
    resp = api.post("/api/queues/purge/celery")
    assert resp.status_code == 200
    assert resp.json["purged"] >= 1
