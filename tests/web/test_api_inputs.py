"""Every API input gets a clear answer: ranges, arguments, pool actions, methods, queue keys.

Real Redis and a real worker (the ``monitored`` fixture); the number ranges are generated from
``openapi.json`` itself, so a new parameter without a range, or a range the parser does not
keep, fails here.
"""

from __future__ import annotations

import json
import socket
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from flask_celerymon.web import api as api_module
from flask_celerymon.web.openapi import api_routes, build_spec
from tests.conftest import WorkerProcess
from tests.web.conftest import make_monitored_app
from tests.web.test_api import ADD, PREFIX, REGISTERED, Api

#: Out-of-range texts tried on every number parameter, besides its minimum - 1 and maximum + 1.
HUGE = ["9223372036854775808", "12345678901234567890", "-12345678901234567890", "1e400", "nan"]
#: ... and, in the query string only, text that is not a number (an empty value is the default).
NOT_NUMBERS = [" ", " 1", "1 2", "1_0", "0x10", "\u0661", "inf", "-infinity"]


@pytest.fixture(scope="module")
def api(monitored) -> Api:
    monitored.wait_for(lambda: monitored.service.worker(monitored.worker_name))
    return Api(monitored.app)


@pytest.fixture(scope="module")
def task_id(api) -> str:
    resp = api.post(f"/api/task/async-apply/{ADD}", json={"args": [1, 2]})
    assert resp.status_code == 200, resp.json
    return resp.json["task-id"]


def _number_schemas(spec: dict[str, Any]) -> Iterator[tuple[str, str, str, str, dict]]:
    """(path, method, where, name, schema) of every number parameter and body property."""
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for param in op.get("parameters", ()):
                for s in param["schema"].get("anyOf", [param["schema"]]):
                    if s.get("type") in ("integer", "number"):
                        yield path, method, "query", param["name"], s
            if "requestBody" in op:
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                body = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
                for name, schema in body["properties"].items():
                    for s in schema.get("oneOf", [schema]):
                        if s.get("type") in ("integer", "number"):
                            yield path, method, "body", name, s


def _context(monitored, task_id: str) -> dict[str, str]:
    """Real path values, so that only the parameter under test is wrong."""
    return {
        "name_worker": monitored.worker_name,
        "name_task": REGISTERED,
        "task_id": task_id,
        "queue": "celery",
    }


def _url(path: str, ctx: dict[str, str]) -> str:
    name = ctx["name_worker"] if path.startswith("/api/worker/") else ctx["name_task"]
    return path.format(
        name=name, task_id=ctx["task_id"], queue=ctx["queue"], gid="0" * 16, entry="no-entry"
    )


def _base_query(path: str, ctx: dict[str, str]) -> dict[str, str]:
    if path.startswith("/api/task/timeout/") or path.startswith("/api/task/rate-limit/"):
        return {"workername": ctx["name_worker"], "ratelimit": "10/m"}
    if path.startswith("/api/worker/pool/autoscale/"):
        return {"min": "1", "max": "2"}
    if path.startswith("/api/tasks/"):
        return {"state": "SUCCESS", "dry_run": "1"}
    return {}


def test_every_number_parameter_declares_a_range_that_fits_sqlite():
    found = list(_number_schemas(build_spec(PREFIX)))
    assert len(found) >= 20, found
    for path, method, where, name, schema in found:
        assert "minimum" in schema and "maximum" in schema, (path, method, where, name)
        assert -(2**63) < schema["minimum"] <= schema["maximum"] < 2**63, (path, name)


def test_every_number_parameter_refuses_values_outside_its_range(monitored, api, task_id):
    ctx = _context(monitored, task_id)
    tried = set()
    for path, method, where, name, schema in _number_schemas(build_spec(PREFIX)):
        lo, hi = schema["minimum"], schema["maximum"]
        step = 1 if schema["type"] == "integer" else 0.5
        for bad in [repr(lo - step), repr(hi + step), *HUGE, *NOT_NUMBERS]:
            url = _url(path, ctx)
            if where == "body" and bad in NOT_NUMBERS:
                continue
            if where == "query":
                query = {**_base_query(path, ctx), name: bad}
                resp = api.call(method.upper(), url, query_string=query)
            else:
                number = bad if bad != "nan" else "NaN"
                body = f'{{"args": [1], "{name}": {number}}}'
                resp = api.call(method.upper(), url, data=body, content_type="application/json")
            assert resp.status_code == 400, (method, url, name, bad, resp.json)
            error = resp.json["error"]
            assert error.startswith(f"{name} must be "), (method, url, name, bad, error)
            tried.add((path, name))
    assert ("/api/tasks", "limit") in tried and ("/api/task/apply/{name}", "priority") in tried


def test_tasks_list_answers_400_for_a_limit_or_offset_beyond_64_bits(api):
    resp = api.get("/api/tasks?limit=9223372036854775808")
    assert resp.status_code == 400
    assert resp.json == {
        "error": "limit must be an integer from 0 to 1000000, not '9223372036854775808'"
    }
    resp = api.get("/api/tasks?offset=12345678901234567890")
    assert resp.status_code == 400
    assert resp.json == {
        "error": "offset must be an integer from 0 to 1000000000, not '12345678901234567890'"
    }


def test_the_largest_limit_and_offset_reach_the_store_and_answer(monitored, api, task_id):
    top_limit = int(api_module.TASKS_LIMIT.maximum)
    top_offset = int(api_module.TASKS_OFFSET.maximum)
    resp = api.get(f"/api/tasks?limit={top_limit}&offset={top_offset}")
    assert resp.status_code == 200 and resp.json == {}
    page = monitored.service.query_tasks(source="store", limit=top_limit, offset=top_offset)
    assert page.tasks == []
    # the store catches up with events within its flush interval
    monitored.wait_for(
        lambda: monitored.service.query_tasks(source="store", limit=top_limit).total >= 1
    )


# -- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["apply", "async-apply", "send-task"])
@pytest.mark.parametrize(
    ("name", "body", "problem"),
    [
        (REGISTERED, {"args": []}, "missing a required argument: 'x'"),
        (REGISTERED, {"args": [1, 2]}, "too many positional arguments"),
        (REGISTERED, {"args": [1], "kwargs": {"y": 2}}, "got an unexpected keyword argument 'y'"),
        (ADD, {"args": [1]}, "missing a required argument: 'y'"),
        (ADD, {"args": [1, 2, 3]}, "too many positional arguments"),
    ],
)
def test_arguments_that_do_not_fit_the_task_are_400_before_sending(
    monitored, api, route, name, body, problem
):
    before = monitored.service.queues(max_age=0)
    resp = api.post(f"/api/task/{route}/{name}", json=body)
    assert resp.status_code == 400
    assert resp.json == {
        "error": f"the arguments do not fit task '{name}': {problem}; fix args/kwargs in the body"
    }
    assert monitored.service.queues(max_age=0) == before


# -- methods -----------------------------------------------------------------------------------


def _api_rules(app) -> Iterator[Any]:
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(PREFIX + "/api/") and not rule.endpoint.endswith("api_not_found"):
            yield rule


def test_options_and_405_list_exactly_the_methods_of_each_route(monitored):
    client = monitored.client()
    rules = list(_api_rules(monitored.app))
    # the API's routes, the OpenAPI document's and the insight API's (openapi.api_routes)
    assert len(rules) == len(list(api_routes()))
    for rule in rules:
        url = rule.rule.replace("<celerymon_path:", "<").replace("<", "x").replace(">", "")
        allow = ", ".join(
            [m for m in ("GET", "POST") if m in rule.methods]
            + (["HEAD", "OPTIONS"] if "GET" in rule.methods else ["OPTIONS"])
        )
        resp = client.options(url)
        assert resp.status_code == 200, url
        assert resp.headers["Allow"] == allow, url
        for method in ("PUT", "PATCH", "DELETE", "TRACE", "GET", "POST"):
            if method in rule.methods:
                continue
            resp = client.open(url, method=method)
            assert resp.status_code == 405, (method, url)
            assert resp.headers["Allow"] == allow, (method, url)
            usable = allow.replace(", HEAD", "").replace(", OPTIONS", "")
            assert resp.json == {"error": f"{method} is not allowed here; use {usable}"}


# -- the pool ----------------------------------------------------------------------------------


def _stats_processes(monitored, name: str) -> int:
    stats = monitored.celery_app.control.inspect(destination=[name], timeout=2).stats()
    return len(stats[name]["pool"]["processes"])


def test_a_shrink_that_would_empty_the_pool_is_refused_and_the_pool_keeps_working(
    monitored, api, tmp_path
):
    name = f"shrink-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    worker = WorkerProcess(
        "tests.apps.basic:create_app",
        monitored.broker,
        name,
        str(tmp_path / "shrink.log"),
        args=("-P", "prefork", "-c", "2", "-Q", "shrinkq", "-E"),
    )
    try:
        worker.wait_ready(monitored.celery_app)
        monitored.wait_for(lambda: monitored.service.worker(name))
        for n in (5, 2):
            resp = api.post(f"/api/worker/pool/shrink/{name}?n={n}")
            assert resp.status_code == 409
            assert resp.json == {
                "error": f"shrinking '{name}' worker's pool by {n} would leave it without a "
                "process (it has 2); shrink by at most 1"
            }
        assert _stats_processes(monitored, name) == 2
        resp = api.post(f"/api/worker/pool/shrink/{name}?n=1")
        assert resp.status_code == 200
        assert resp.json == {
            "message": f"Shrinking '{name}' worker's pool by 1; the pool has 1 process",
            "processes": 1,
        }
        assert _stats_processes(monitored, name) == 1
        resp = api.post(f"/api/worker/pool/shrink/{name}?n=1")
        assert resp.status_code == 409
        assert "(it has 1); shrink by at most 0" in resp.json["error"]
        # the worker still runs what it takes
        resp = api.post(
            f"/api/task/apply/{ADD}", json={"args": [2, 3], "queue": "shrinkq", "timeout": 30}
        )
        assert resp.json["state"] == "SUCCESS" and resp.json["result"] == 5
    finally:
        worker.stop()


# -- queue keys: with and without a global key prefix, with priority steps ---------------------

_queue_dbs = iter(range(200, 240))


@pytest.mark.parametrize("prefix", ["", "pre:"])
@pytest.mark.parametrize("steps", [None, list(range(10))])
def test_queue_endpoints_see_the_same_keys_as_kombu(redis_server, tmp_path, prefix, steps):
    options: dict[str, Any] = {"queue_order_strategy": "priority"}
    if prefix:
        options["global_keyprefix"] = prefix
    if steps is not None:
        options["priority_steps"] = steps
    broker = redis_server.url(next(_queue_dbs))
    raw = redis.Redis.from_url(broker)
    raw.flushdb()
    app = make_monitored_app(broker, str(tmp_path), CELERY_BROKER_TRANSPORT_OPTIONS=options)
    state = app.extensions["celerymon"]
    api = Api(app)
    try:
        ids = {}
        for label, priority in (("low", 9), ("top", 0), ("mid", 5), ("plain", None)):
            body: dict[str, Any] = {"args": [1, 2], "queue": "celery"}
            if priority is not None:
                body["priority"] = priority
            resp = api.post(f"/api/task/async-apply/{ADD}", json=body)
            assert resp.status_code == 200, resp.json
            ids[label] = resp.json["task-id"]
        keys = {k.decode() for k in raw.keys("*") if b"_kombu" not in k and b"celery" in k}
        queue_keys = {k for k in keys if k.endswith("celery") or "celery\x06\x16" in k}
        assert len(queue_keys) == 3, keys  # priority 0, 5's step and 9's step
        assert all(k.startswith(prefix + "celery") for k in queue_keys), queue_keys
        # kombu takes priority 0 first, in sending order, then the higher steps
        order = [ids["top"], ids["plain"], ids["mid"], ids["low"]]

        def lengths() -> dict[str, int]:
            resp = api.get("/api/queues/length")
            return {q["name"]: q["messages"] for q in resp.json["active_queues"]}

        state.monitor.queues(max_age=0)
        assert lengths()["celery"] == 4
        listed = api.get("/api/queues/messages/celery").json["messages"]
        assert [m["task-id"] for m in listed] == order
        assert listed[2]["priority"] == 5
        assert [m["task-id"] for m in api.get("/api/queues/messages/celery?limit=2").json[
            "messages"
        ]] == order[:2]  # fmt: skip

        resp = api.post(f"/api/queues/remove/celery/{ids['mid']}")
        assert resp.json == {
            "message": f"Removed '{ids['mid']}' from 'celery'",
            "task-id": ids["mid"],
        }
        listed = api.get("/api/queues/messages/celery").json["messages"]
        assert [m["task-id"] for m in listed] == [ids["top"], ids["plain"], ids["low"]]
        state.monitor.queues(max_age=0)
        assert lengths()["celery"] == 3

        resp = api.post("/api/queues/purge/celery")
        assert resp.json == {"message": "Purged 3 messages from 'celery'", "purged": 3}
        assert api.get("/api/queues/messages/celery").json["messages"] == []
        state.monitor.queues(max_age=0)
        assert lengths()["celery"] == 0
        assert not [k for k in raw.keys("*") if b"celery\x06" in k]
    finally:
        state.shutdown()
        raw.close()


def test_message_listing_reads_only_full_keys(redis_server, tmp_path):
    """A prefixed broker's queue listing never shows an unprefixed list of the same name."""
    broker = redis_server.url(next(_queue_dbs))
    raw = redis.Redis.from_url(broker)
    raw.flushdb()
    stray = json.dumps({"headers": {"id": "stray", "task": "x"}, "properties": {}})
    raw.lpush("celery", stray)
    app = make_monitored_app(
        broker, str(tmp_path), CELERY_BROKER_TRANSPORT_OPTIONS={"global_keyprefix": "pre:"}
    )
    state = app.extensions["celerymon"]
    try:
        api = Api(app)
        assert api.get("/api/queues/messages/celery").json["messages"] == []
        resp = api.post("/api/queues/remove/celery/stray")
        assert resp.status_code == 404
        assert raw.llen("celery") == 1
    finally:
        state.shutdown()
        raw.close()


# -- the pages' numbers that reach the store ---------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/tasks?page=9223372036854775808", "page must be an integer from 1 to 1000000"),
        ("/tasks?per_page=12345678901234567890", "per_page must be an integer from 1 to 500"),
        ("/tasks?page=0", "page must be an integer from 1 to 1000000"),
        (
            "/tasks/datatable?start=9223372036854775808",
            "start must be an integer from 0 to 1000000000",
        ),
        ("/tasks/datatable?length=-2", "length must be an integer from -1 to 10000"),
        ("/tasks/datatable?draw=99999999999999999999", "draw must be an integer from 0 to"),
    ],
)
def test_page_numbers_beyond_their_range_are_400_not_a_store_error(monitored, url, message):
    resp = monitored.client().get(PREFIX + url)
    assert resp.status_code == 400
    assert message in resp.get_data(as_text=True)


def test_the_largest_page_numbers_reach_the_store_and_answer(monitored):
    client = monitored.client()
    resp = client.get(f"{PREFIX}/tasks?page=1000000&per_page=500")
    assert resp.status_code == 200
    resp = client.get(f"{PREFIX}/tasks/datatable?start=1000000000&length=10000")
    assert resp.status_code == 200 and resp.json["data"] == []


def test_a_message_celery_refuses_to_send_is_400_with_celerys_reason(redis_server, tmp_path):
    broker = redis_server.url(next(_queue_dbs))
    app = make_monitored_app(broker, str(tmp_path), CELERY_TASK_CREATE_MISSING_QUEUES=False)
    state = app.extensions["celerymon"]
    try:
        api = Api(app)
        for route, name, args in (
            ("async-apply", ADD, [1, 2]),
            ("apply", REGISTERED, [1]),
            ("send-task", "not.registered.here", []),
        ):
            body = {"args": args, "queue": "nope", "task_id": f"refused-{route}"}
            resp = api.post(f"/api/task/{route}/{name}", json=body)
            assert resp.status_code == 400, resp.json
            assert resp.json == {
                "error": f"Celery refused to send task '{name}': \"Queue 'nope' missing from "
                'task_queues"'
            }
        # send-task records PENDING first (for result and retry); a refused send leaves none
        assert not state.celery_app.backend.client.exists("celery-task-meta-refused-send-task")
    finally:
        state.shutdown()


#: Queue names no broker should get: control characters (NUL, newline, DEL, C1), any position.
BAD_QUEUE_NAMES = ["a\x00b", "celery\n", "\x1b[31mred", "x\x7f", "x\x85y", "\tq"]


@pytest.mark.parametrize("route", ["apply", "async-apply", "send-task"])
@pytest.mark.parametrize("option", ["queue", "routing_key", "exchange"])
def test_apply_options_naming_a_queue_refuse_control_characters(api, route, option):
    for name in BAD_QUEUE_NAMES:
        resp = api.post(f"/api/task/{route}/{ADD}", json={"args": [1, 2], option: name})
        assert resp.status_code == 400, (name, resp.json)
        assert resp.json == {
            "error": f"{option} must not contain control characters "
            f"({next(c for c in name if ord(c) < 32 or 127 <= ord(c) < 160)!r} in {name!r})"
        }


def test_a_queue_name_like_a_path_is_only_a_name(api):
    """``../../etc`` is a broker key, not a path: sent to that queue, which nobody consumes."""
    resp = api.post(f"/api/task/async-apply/{ADD}", json={"args": [1, 2], "queue": "../../etc"})
    assert resp.status_code == 200, resp.json


def test_every_queue_name_parameter_refuses_control_characters(monitored, api):
    worker = monitored.worker_name
    # checked before a query parameter is stripped of surrounding white space
    for name in [*BAD_QUEUE_NAMES, "que\nue"]:
        pct = urllib.parse.quote(name, safe="")
        first_bad = next(c for c in name if ord(c) < 32 or 127 <= ord(c) < 160)
        message = f"queue must not contain control characters ({first_bad!r} in {name!r})"
        for method, path in (
            ("POST", f"/api/worker/queue/add-consumer/{worker}?queue={pct}"),
            ("POST", f"/api/worker/queue/cancel-consumer/{worker}?queue={pct}"),
            ("POST", f"/api/queues/purge/{pct}"),
            ("GET", f"/api/queues/messages/{pct}"),
            ("POST", f"/api/queues/remove/{pct}/{uuid.uuid4()}"),
        ):
            resp = api.call(method, path)
            assert resp.status_code == 400, (method, path, resp.json)
            assert resp.json == {"error": message}, (method, path)


def test_a_hard_time_limit_below_the_soft_one_is_400_naming_both(monitored, api):
    resp = api.post(
        f"/api/task/timeout/{REGISTERED}?workername={monitored.worker_name}&soft=10&hard=1"
    )
    assert resp.status_code == 400, resp.json
    assert resp.json == {
        "error": "hard must be >= soft, not soft=10 hard=1 (seconds; the soft time limit "
        "warns the task before the hard one kills it)"
    }
    ok = api.post(
        f"/api/task/timeout/{REGISTERED}?workername={monitored.worker_name}&soft=1&hard=10"
    )
    assert ok.status_code == 200, ok.json
