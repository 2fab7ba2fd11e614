"""The monitor's HTML pages through the test client, against a real Redis, worker and service.

The browser tests (live updates, buttons) are in ``test_ui.py``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from contextlib import contextmanager
from html import unescape

import pytest
from werkzeug.datastructures import MultiDict
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_celerymon.web.views import BadInput, TaskFilter, chart_data
from tests.apps import basic
from tests.web.conftest import make_monitored_app


def submit(monitored, fn, *args):
    with monitored.app.app_context():
        return basic.celery.submit(fn, *args)


def finished(monitored, future, state):
    """Wait until the service has seen the task reach ``state`` and its name; return its dict.

    The name comes with task-sent/received, which may be applied after the final state (events
    of two connections, or a reconcile with the result backend)."""
    return monitored.wait_for(
        lambda: (t := monitored.service.task(future.id)) and t["state"] == state and t["name"] and t
    )


@pytest.fixture(scope="module")
def done(monitored):
    """One succeeded and one failed task, seen by the service."""
    ok = submit(monitored, basic.add, 20, 22)
    bad = submit(monitored, basic.fail, "boom-for-pages")
    return finished(monitored, ok, "SUCCESS"), finished(monitored, bad, "FAILURE")


@contextmanager
def other_app(monitored, tmp_path, **config):
    """A second app on the same broker (its own service), shut down afterwards."""
    app = make_monitored_app(monitored.broker, str(tmp_path), **config)
    try:
        yield app
    finally:
        app.extensions["celerymon"].shutdown()


def text(resp) -> str:
    return unescape(resp.get_data(as_text=True))


# -- workers ----------------------------------------------------------------------------------


def test_workers_page_shows_the_worker_with_counts_linking_to_filtered_tasks(monitored, done):
    resp = monitored.client().get("/monitor/")
    body = text(resp)
    assert resp.status_code == 200
    assert monitored.worker_name in body
    assert "Online" in body
    assert f"/monitor/tasks?worker={monitored.worker_name}&state=SUCCESS" in body
    assert f"/monitor/tasks?worker={monitored.worker_name}&state=FAILURE" in body
    assert re.search(r'data-total="online">[1-9]', body)
    assert monitored.client().get("/monitor/workers").status_code == 200


def test_workers_json_answers_like_flower(monitored, done):
    resp = monitored.client().get("/monitor/workers?json=1&refresh=1")
    assert resp.status_code == 200
    data = {w["hostname"]: w for w in resp.get_json()["data"]}
    mine = data[monitored.worker_name]
    assert mine["status"] is True
    assert mine["task-succeeded"] >= 1 and mine["task-failed"] >= 1


def test_tasks_datatable_answers_like_flower(monitored, done):
    ok, bad = done
    client = monitored.client()
    form = {
        "draw": "3",
        "start": "0",
        "length": "10",
        "search[value]": "args:boom-for-pages",
        "order[0][column]": "1",
        "order[0][dir]": "desc",
        "columns[0][data]": "name",
        "columns[1][data]": "received",
    }
    body = client.post("/monitor/tasks/datatable", data=form).get_json()
    assert body["draw"] == 3
    assert [t["uuid"] for t in body["data"]] == [bad["uuid"]]
    assert body["recordsFiltered"] == 1
    assert body["recordsTotal"] >= 2
    everything = client.get("/monitor/tasks/datatable?length=-1").get_json()
    assert {ok["uuid"], bad["uuid"]} <= {t["uuid"] for t in everything["data"]}
    resp = client.get("/monitor/tasks/datatable?search[value]=ab")
    assert resp.status_code == 400
    assert "error" in resp.get_json()
    resp = client.get("/monitor/tasks/datatable?start=-5")
    assert resp.status_code == 400
    assert resp.get_json() == {"error": "start must be an integer from 0 to 1000000000, not '-5'"}


def test_worker_page_shows_every_tab_from_inspect(monitored, done):
    client = monitored.client()
    url = f"/monitor/worker/{monitored.worker_name}"
    pool = text(client.get(url))
    assert re.search(r'id="pool-size">2<', pool)
    queues = text(client.get(url + "?tab=queues"))
    assert 'data-queue="celery"' in queues and 'data-queue="high"' in queues
    limits = text(client.get(url + "?tab=limits"))
    assert "tests.apps.basic.registered" in limits
    tasks = text(client.get(url + "?tab=tasks"))
    assert "Processed by task name" in tasks and "Revoked" in tasks
    assert "broker_url" in text(client.get(url + "?tab=config"))
    assert "Resource usage" in text(client.get(url + "?tab=system"))
    assert "Concurrency" not in text(client.get(url + "?tab=broker"))


def test_worker_page_answers_404_for_an_unknown_worker_and_400_for_a_bad_tab(monitored):
    client = monitored.client()
    resp = client.get("/monitor/worker/nobody@nowhere")
    assert resp.status_code == 404
    assert "No worker named 'nobody@nowhere' is known." in text(resp)
    resp = client.get(f"/monitor/worker/{monitored.worker_name}?tab=secrets")
    assert resp.status_code == 400
    assert "tab must be one of pool, broker, queues, tasks, limits, config, system" in text(resp)


# -- tasks ------------------------------------------------------------------------------------


def test_tasks_page_lists_tasks_and_filters_by_state(monitored, done):
    ok, bad = done
    client = monitored.client()
    everything = text(client.get("/monitor/tasks"))
    assert ok["uuid"] in everything and bad["uuid"] in everything
    failed = text(client.get("/monitor/tasks?state=FAILURE"))
    assert bad["uuid"] in failed and ok["uuid"] not in failed
    assert 'class="chip on" href="/monitor/tasks?state=FAILURE"' in failed


def test_tasks_page_searches_sorts_and_chooses_columns(monitored, done):
    ok, bad = done
    client = monitored.client()
    found = text(client.get("/monitor/tasks?search=args:boom-for-pages"))
    assert bad["uuid"] in found and ok["uuid"] not in found
    cols = text(client.get("/monitor/tasks?columns=name,uuid,args,result&sort=name"))
    assert 'data-col="args"' in cols and 'data-col="worker"' not in cols
    assert 'aria-sort="ascending"' in cols
    assert "boom-for-pages" in cols
    # the column chooser's checkboxes give the same view
    assert 'data-col="kwargs"' in text(client.get("/monitor/tasks?column=uuid&column=kwargs"))


def test_tasks_page_pages_and_keeps_filters_in_its_links(monitored, done):
    resp = text(monitored.client().get("/monitor/tasks?per_page=1&state=SUCCESS,FAILURE"))
    assert re.search(r"Showing 1 to 1 of \d+ tasks", resp)
    assert "/monitor/tasks?state=SUCCESS,FAILURE&page=2&per_page=1" in resp


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("state=DONE", "state must be one of PENDING, RECEIVED"),
        ("sort=colour", "colour"),
        ("page=0", "page must be an integer from 1 to 1000000, not '0'"),
        ("per_page=x", "per_page must be an integer from 1 to 500, not 'x'"),
        ("columns=name,secret", "columns must be a comma list of name, uuid"),
        ("since=1y", "since must be one of 15m, 1h, 6h, 24h, 7d, not '1y'"),
        ("from=yesterday", "from must be a UTC time like 2026-01-31 13:45, not 'yesterday'"),
        ("search=ab", "search: "),
    ],
)
def test_tasks_page_answers_400_with_the_reason_for_bad_parameters(monitored, query, message):
    resp = monitored.client().get(f"/monitor/tasks?{query}")
    assert resp.status_code == 400
    assert message in text(resp)


def test_task_filter_matches_like_the_service_query():
    task = {
        "uuid": "0f3a",
        "name": "app.add",
        "state": "SUCCESS",
        "worker": "w1@h",
        "args": "[1, 2]",
        "kwargs": "{'user': 7}",
        "result": "3",
        "received": 100.0,
    }
    assert TaskFilter.from_args(MultiDict({"search": "kwargs:user=7"})).matches(task)
    assert not TaskFilter.from_args(MultiDict({"search": "kwargs:user=8"})).matches(task)
    assert TaskFilter.from_args(MultiDict({"state": "success", "worker": "w1@h"})).matches(task)
    assert not TaskFilter.from_args(MultiDict({"state": "FAILURE"})).matches(task)
    assert not TaskFilter(since="15m", now=10_000.0).matches(task)
    with pytest.raises(BadInput, match="state must be one of"):
        TaskFilter.from_args(MultiDict({"state": "nope"}))


def test_task_filter_round_trips_through_its_url(monitored):
    args = MultiDict(
        {"state": "FAILURE", "search": 'name:add "x y"', "sort": "runtime", "page": "3"}
    )
    flt = TaskFilter.from_args(args)
    with monitored.app.test_request_context("/monitor/tasks"):
        url = flt.url()
    from urllib.parse import parse_qs, urlsplit

    again = TaskFilter.from_args(
        MultiDict([(k, v) for k, vs in parse_qs(urlsplit(url).query).items() for v in vs])
    )
    assert again == flt


def test_task_page_shows_details_traceback_and_actions(monitored, done):
    ok, bad = done
    client = monitored.client()
    page = text(client.get(f"/monitor/task/{bad['uuid']}"))
    assert "ValueError" in page and "boom-for-pages" in page
    assert 'id="task-traceback"' in page
    assert f"/monitor/worker/{monitored.worker_name}" in page
    assert 'id="timeline"' in page and "FAILURE" in page and "STARTED" in page
    assert f'action="/monitor/api/task/retry/{bad["uuid"]}"' in page
    assert "btn-revoke" not in page
    done_page = text(client.get(f"/monitor/task/{ok['uuid']}"))
    assert "btn-retry" not in done_page and "btn-revoke" not in done_page


def test_task_keeps_its_function_name_when_task_sent_arrives_after_the_worker(monitored):
    """submit() sends the dispatch task with shadow=<function>: the worker's events carry the
    function, task-sent carries ``flask_celerymon.dispatch`` and may arrive last."""
    uuid = "late-sent-0001"
    now = 1_700_000_000.0
    monitored.service.apply_events(
        [
            {"type": "task-received", "uuid": uuid, "timestamp": now, "name": "app.jobs:crunch",
             "args": "('app.jobs:crunch', [1], {})", "kwargs": "{}", "hostname": "w@h"},
            {"type": "task-started", "uuid": uuid, "timestamp": now + 1, "hostname": "w@h"},
            {"type": "task-sent", "uuid": uuid, "timestamp": now - 0.1,
             "name": "flask_celerymon.dispatch", "args": "('app.jobs:crunch', [1], {})"},
        ]
    )  # fmt: skip
    assert monitored.service.task(uuid)["name"] == "app.jobs:crunch"
    page = text(monitored.client().get(f"/monitor/task/{uuid}"))
    assert "app.jobs:crunch</a>" in page
    assert "flask_celerymon.dispatch" not in page


def test_task_page_answers_404_for_an_unknown_task(monitored):
    resp = monitored.client().get("/monitor/task/no-such-task")
    assert resp.status_code == 404
    assert "No task with id 'no-such-task' is known." in text(resp)


# -- broker, charts ---------------------------------------------------------------------------


def test_broker_page_lists_the_queues_with_lengths(monitored, done):
    resp = monitored.client().get("/monitor/broker")
    body = text(resp)
    assert resp.status_code == 200
    assert 'data-queue="celery"' in body and 'data-queue="high"' in body
    assert "redis://" in body


def test_charts_page_shows_counts_and_runtimes_per_task_name(monitored, done):
    ok, bad = done
    # A task revoked before any worker received it has no name (other tests may leave such
    # tasks too): it is counted under "?".
    unnamed = str(uuid.uuid4())
    monitored.service.apply_events(
        [{"type": "task-revoked", "uuid": unnamed, "timestamp": time.time()}]
    )
    client = monitored.client()
    with monitored.app.app_context():
        rows = chart_data("15m", None)["names"]  # the page is built from these, or more
    body = text(client.get("/monitor/charts?window=15m"))
    names = {r["name"] for r in rows}
    assert {ok["name"], bad["name"], ""} <= names
    assert next(r for r in rows if r["name"] == "")["revoked"] >= 1
    assert 'id="chart-throughput"' in body
    for name in names:
        assert f">{name or '?'}</a></td>" in body
    assert 'id="chart-runtime"' in body
    assert re.search(r'<rect class="bar-ok" x="[\d.]+" y="[\d.]+" width="[\d.]+" height', body)
    resp = client.get("/monitor/charts?window=1y")
    assert resp.status_code == 400
    assert "window must be one of 15m, 1h, 6h, 24h, 7d" in text(resp)


# -- modes and deployment ---------------------------------------------------------------------


def test_read_only_mode_hides_every_control(monitored, done, tmp_path):
    ok, bad = done
    with other_app(monitored, tmp_path, CELERY_MONITOR_READ_ONLY=True) as app:
        client = app.test_client()
        task_page = text(client.get(f"/monitor/task/{bad['uuid']}"))
        assert "read-only" in task_page
        assert "js-action" not in task_page
        pool = text(client.get(f"/monitor/worker/{monitored.worker_name}"))
        assert "btn-grow" not in pool and "btn-shutdown" not in pool
        # a read by POST stays allowed
        assert client.post("/monitor/tasks/datatable", data={"length": "1"}).status_code == 200
    full = text(monitored.client().get(f"/monitor/worker/{monitored.worker_name}"))
    assert "btn-grow" in full and "btn-shutdown" in full


def test_pages_link_right_under_a_prefix_behind_a_reverse_proxy(monitored, done, tmp_path):
    with other_app(monitored, tmp_path, CELERY_MONITOR_URL_PREFIX="/ops/celery") as app:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_prefix=1, x_proto=1, x_host=1)
        client = app.test_client()
        service = app.extensions["celerymon"].monitor
        monitored.wait_for(lambda: service.ensure_started().worker(monitored.worker_name))
        headers = {"X-Forwarded-Prefix": "/edge", "X-Forwarded-Proto": "https"}
        body = text(client.get("/ops/celery/", headers=headers))
        assert re.search(r'href="/edge/ops/celery/celerymon-static/celerymon.css\?v=\d+"', body)
        assert 'data-ws="/edge/ops/celery/ws"' in body
        assert 'href="/edge/ops/celery/tasks?worker=' in body
        assert client.get("/ops/celery/celerymon-static/celerymon.js").status_code == 200
        assert client.get("/monitor/").status_code == 404


def test_pages_and_their_assets_work_at_the_root_with_an_empty_prefix(monitored, tmp_path):
    with other_app(monitored, tmp_path, CELERY_MONITOR_URL_PREFIX="") as app:
        client = app.test_client()
        body = text(client.get("/tasks"))
        css = re.search(r'href="(/celerymon-static/celerymon.css\?v=\d+)"', body)
        assert css is not None
        resp = client.get(css.group(1))
        assert resp.status_code == 200
        assert resp.mimetype == "text/css"
        assert 'data-ws="/ws"' in body
        assert client.get("/celerymon-static/nothing.js").status_code == 404


def test_live_task_feed_keeps_to_one_page_of_rows(monitored):
    from flask_celerymon.web.live import Feed

    def task(i: int) -> dict:
        return {"uuid": f"feed-{i}", "name": "x", "state": "RECEIVED", "received": 1.0 + i}

    with monitored.app.test_request_context("/monitor/tasks"):
        feed = Feed("tasks", MultiDict({"per_page": "3", "search": "name:x"}))
        feed.prime(monitored.service)
        batch = [{"type": "task", "id": f"feed-{i}", "data": task(i)} for i in range(10)]
        out = feed.messages(batch)
        assert [m["id"] for m in out] == ["feed-7", "feed-8", "feed-9"]
        assert all(m["insert"] for m in out)
        assert list(feed.rows) == ["feed-9", "feed-8", "feed-7"]
        # a row the page dropped, or one older than the page, is not sent; one it shows is
        again = feed.messages([batch[7], batch[2]])
        assert [(m["id"], m.get("insert")) for m in again] == [("feed-7", None)]
        newer = feed.messages([{"type": "task", "id": "feed-10", "data": task(10)}])
        assert [(m["id"], m["insert"]) for m in newer] == [("feed-10", True)]
        assert list(feed.rows) == ["feed-10", "feed-9", "feed-8"]
        # elsewhere than the newest-first first page, new tasks are only counted
        later = Feed("tasks", MultiDict({"page": "2", "search": "name:x"}))
        later.prime(monitored.service)
        assert later.messages(batch[:4]) == [{"type": "new-tasks", "count": 4}]


def test_live_task_feeds_in_the_same_state_share_one_result_and_one_encoding(monitored):
    from flask_celerymon.web.live import Batch, Feed

    def task(i: int) -> dict:
        return {"uuid": f"share-{i}", "name": "y", "state": "RECEIVED", "received": 1.0 + i}

    def item(i: int) -> dict:
        return {"type": "task", "id": f"share-{i}", "data": task(i)}

    args = MultiDict({"per_page": "3", "search": "name:y"})
    with monitored.app.test_request_context("/monitor/tasks"):
        a, b, behind, alone = (Feed("tasks", args) for _ in range(4))
        for f in (a, b, behind, alone):
            f.prime(monitored.service)
        first = Batch(item(i) for i in range(5))
        a.messages(first), b.messages(first)
        alone.messages([item(i) for i in range(5)])  # a private batch: computed alone
        second = Batch([item(3), item(6), item(7)])
        out_a, out_b = a.messages(second), b.messages(second)
        assert out_a is out_b  # computed once for both
        assert a.encode(out_a) is b.encode(out_b)  # and encoded once
        assert json.loads(a.encode(out_a)) == {"type": "batch", "items": out_a}
        # a page in another state (it missed the first batch) gets its own messages
        out_behind = behind.messages(second)
        assert [(m["id"], m.get("insert")) for m in out_behind] == [
            ("share-3", True), ("share-6", True), ("share-7", True)]  # fmt: skip
        assert list(behind.rows) == ["share-7", "share-6", "share-3"]
        # the shared result is what a page computing alone gets, and leaves the same state
        out_alone = alone.messages([item(3), item(6), item(7)])
        assert out_a == out_alone
        assert [(m["id"], m.get("insert")) for m in out_a] == [
            ("share-3", None), ("share-6", True), ("share-7", True)]  # fmt: skip
        assert list(a.rows) == list(b.rows) == list(alone.rows) == ["share-7", "share-6", "share-4"]
        assert a.shown == b.shown == {"share-7", "share-6", "share-4"}
        assert a.received == alone.received
        # state copied, not shared: one page moving on leaves the other as it was
        a.messages([item(8)])
        assert list(b.rows) == ["share-7", "share-6", "share-4"]


def test_websocket_route_refuses_plain_http(monitored):
    assert monitored.client().get("/monitor/ws?view=workers").status_code == 400
