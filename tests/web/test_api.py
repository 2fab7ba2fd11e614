"""The monitor's JSON API against a real Redis, a real worker and the real monitor service.

Every response is checked against ``openapi.json`` by :class:`Api` (status documented, body
matching its schema), so these tests also keep the document honest.
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import schemathesis

from flask_celerymon.web.openapi import build_spec
from tests.conftest import WorkerProcess

PREFIX = "/monitor"
ADD = "tests.apps.basic:add"
FAIL = "tests.apps.basic:fail"
SLEEP = "tests.apps.basic:sleep"
REGISTERED = "tests.apps.basic.registered"


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    body = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{body}$")


class Api:
    """A test client for the API that checks every response against the OpenAPI document."""

    def __init__(self, app: Any, prefix: str = PREFIX) -> None:
        self.client = app.test_client()
        self.prefix = prefix
        self.spec = build_spec(prefix)
        self.schema = schemathesis.openapi.from_dict(self.spec)
        # static paths first, so /api/tasks/revoke never matches a templated path
        self.templates = sorted(self.spec["paths"], key=lambda t: ("{" in t, t))
        self.checked = 0

    def template(self, path: str) -> str:
        path = path.split("?", 1)[0]
        for t in self.templates:
            if _template_regex(t).match(path):
                return t
        raise AssertionError(f"{path} is not in openapi.json")

    def call(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.client.open(self.prefix + path, method=method, **kw)
        template = self.template(path)
        documented = self.spec["paths"][template][method.lower()]["responses"]
        assert str(resp.status_code) in documented, (
            f"{method} {path} answered {resp.status_code}, not documented "
            f"({sorted(documented)}): {resp.get_data(as_text=True)[:500]}"
        )
        assert resp.mimetype == "application/json", resp.get_data(as_text=True)[:500]
        self.schema[template][method.upper()].validate_response(resp)
        self.checked += 1
        return resp

    def get(self, path: str, **kw: Any) -> Any:
        return self.call("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.call("POST", path, **kw)


@pytest.fixture(scope="module")
def api(monitored) -> Api:
    return Api(monitored.app)


def _send(api: Api, name: str, *args: Any, **options: Any) -> str:
    resp = api.post(f"/api/task/async-apply/{name}", json={"args": list(args), **options})
    assert resp.status_code == 200, resp.json
    return resp.json["task-id"]


def _eventually(monitored, api: Api, path: str, expected: Any, **kw: Any) -> Any:
    """GET ``path`` until its JSON (passed through ``expected`` when callable) is as expected.

    The monitor is eventually consistent: the history store catches up with events within
    its flush interval.
    """
    seen: list[Any] = []

    def check() -> bool:
        body = api.get(path, **kw).json
        seen[:] = [body]
        return expected(body) if callable(expected) else body == expected

    try:
        monitored.wait_for(check, timeout=10)
    except AssertionError:
        raise AssertionError(f"GET {path}: {seen[0]!r} never became {expected!r}") from None
    return seen[0]


def _wait_state(monitored, task_id: str, *wanted: str, timeout: float = 15) -> dict:
    return monitored.wait_for(
        lambda: (info := monitored.service.task(task_id)) and info["state"] in wanted and info,
        timeout=timeout,
    )


# -- the document ------------------------------------------------------------------------------


def test_openapi_document_lists_exactly_the_api_routes(monitored, api):
    resp = api.get("/api/openapi.json")
    assert resp.status_code == 200
    doc = resp.json
    assert doc["openapi"].startswith("3.")
    assert doc["servers"] == [{"url": PREFIX}]
    routes = set()
    for rule in monitored.app.url_map.iter_rules():
        if rule.rule.startswith(PREFIX + "/api/") and not rule.endpoint.endswith("api_not_found"):
            path = re.sub(r"<(?:[a-z_]+:)?([a-z_]+)>", r"{\1}", rule.rule[len(PREFIX) :])
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                routes.add((path, method.lower()))
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert routes == documented


# -- reading -----------------------------------------------------------------------------------


def test_async_apply_then_result_info_and_types(monitored, api):
    task_id = _send(api, REGISTERED, 21)
    resp = api.get(f"/api/task/result/{task_id}?timeout=20")
    assert resp.json == {"task-id": task_id, "state": "SUCCESS", "result": 42}
    info = _wait_state(monitored, task_id, "SUCCESS")
    resp = api.get(f"/api/task/info/{task_id}")
    assert resp.status_code == 200
    body = resp.json
    assert body["uuid"] == task_id
    assert body["name"] == REGISTERED
    assert body["worker"] == monitored.worker_name
    assert body["args"] == "(21,)" or body["args"] == "[21]"
    assert body["result"] == info["result"] == "42"
    assert REGISTERED in api.get("/api/task/types").json["task-types"]


def test_apply_waits_for_the_result_of_a_submitted_function(api):
    resp = api.post(f"/api/task/apply/{ADD}", json={"args": [2, 3], "timeout": 20})
    assert resp.status_code == 200
    assert resp.json["state"] == "SUCCESS"
    assert resp.json["result"] == 5
    assert set(resp.json) == {"task-id", "state", "result"}


def test_a_result_json_cannot_hold_is_given_as_its_repr(api):
    resp = api.post(f"/api/task/apply/{ADD}", json={"args": [1e308, 1e308], "timeout": 20})
    assert resp.status_code == 200
    assert resp.json["result"] == "inf"  # JSON has no Infinity; a browser could not parse it


def test_apply_of_a_failing_task_gives_the_exception_and_traceback(api):
    resp = api.post(f"/api/task/apply/{FAIL}", json={"args": ["planned boom"], "timeout": 20})
    assert resp.json["state"] == "FAILURE"
    assert "planned boom" in resp.json["result"]
    assert "ValueError: planned boom" in resp.json["traceback"]


def test_apply_takes_kwargs_and_options(monitored, api):
    resp = api.post(
        f"/api/task/apply/{ADD}",
        json={"kwargs": {"x": 1, "y": 2}, "queue": "high", "priority": 3, "timeout": 20},
    )
    assert resp.json["result"] == 3
    meta = monitored.celery_app.backend.get_task_meta(resp.json["task-id"])
    assert meta["queue"] == "high"


def test_a_task_id_already_taken_is_refused_and_the_old_record_kept(monitored, api):
    """Sending under an existing task's id overwrote its record: an operator could erase a
    failure (its traceback, its arguments) by sending anything under its id."""
    resp = api.post(f"/api/task/apply/{FAIL}", json={"args": ["kept failure"], "timeout": 20})
    assert resp.json["state"] == "FAILURE"
    failed = resp.json["task-id"]
    for route, name in (("apply", ADD), ("async-apply", ADD), ("send-task", "no.such.task")):
        resp = api.post(f"/api/task/{route}/{name}", json={"args": [1, 2], "task_id": failed})
        assert resp.status_code == 409, (route, resp.json)
        assert resp.json == {
            "error": f"task_id '{failed}' is taken by an existing task, whose record sending it "
            "again would overwrite; leave task_id out (a new id is made) or choose an unused one"
        }
    meta = monitored.celery_app.backend.get_task_meta(failed)
    assert meta["status"] == "FAILURE"
    assert "kept failure" in str(meta["result"])
    assert "ValueError: kept failure" in meta["traceback"]
    # an id nobody has is still the caller's to choose
    fresh = str(uuid.uuid4())
    resp = api.post(
        f"/api/task/apply/{ADD}", json={"args": [1, 2], "task_id": fresh, "timeout": 20}
    )
    assert (resp.status_code, resp.json["task-id"], resp.json["result"]) == (200, fresh, 3)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{nope", 400, "the request body is not valid JSON"),
        (b"[1, 2]", 400, 'the request body must be a JSON object like {"args": [1, 2]}'),
        (b'{"args": 5}', 400, "args must be an array, not 5"),
        (b'{"kwargs": [1]}', 400, "kwargs must be an object, not [1]"),
        (b'{"serializer": "pickle"}', 400, "unknown option(s) serializer; allowed: queue"),
        (b'{"eta": "tomorrow"}', 400, "eta must be a date like '2024-01-31 13:45:00.000000'"),
        (b'{"countdown": -1}', 400, "countdown must be a number from 0 to 315360000, not -1"),
        (b'{"priority": 900}', 400, "priority must be an integer from 0 to 255, not 900"),
        (b'{"priority": "9"}', 400, "priority must be an integer from 0 to 255, not '9'"),
        (b'{"timeout": "x"}', 400, "timeout must be a number from 0 to 3600, not 'x'"),
        (b'{"ignore_result": "yes"}', 400, "ignore_result must be true or false, not 'yes'"),
        (
            b'{"eta": "0001-01-01T00:00:00"}',
            400,
            "eta must be a date like '2024-01-31 13:45:00.000000' or ISO 8601 between 1970 "
            "and 9998, not '0001-01-01T00:00:00'",
        ),
        (
            b'{"soft_time_limit": 5, "time_limit": 2}',
            400,
            "soft_time_limit (5) must be <= time_limit (2), as Celery requires",
        ),
    ],
)
def test_apply_refuses_a_bad_body_naming_the_problem(api, body, status, message):
    for route in ("apply", "async-apply", "send-task"):
        resp = api.post(f"/api/task/{route}/{ADD}", data=body, content_type="application/json")
        assert resp.status_code == status
        assert resp.json["error"].startswith(message), resp.json


def test_apply_of_an_unknown_or_unallowed_task_is_404(api):
    for name in (
        "no.such.task",
        "os:system",
        "flask_celerymon.dispatch",
        "tests.apps.basic:os.popen",
        "tests.apps.basic:os",
        "tests.apps.basic:time.sleep",
    ):
        for route in ("apply", "async-apply"):
            resp = api.post(f"/api/task/{route}/{name}", json={})
            assert resp.status_code == 404
            assert resp.json == {"error": f"Unknown task '{name}'"}


def test_send_task_sends_an_unregistered_name_and_records_it(monitored, api):
    resp = api.post(
        "/api/task/send-task/elsewhere.only_on_some_worker",
        json={"args": [1], "queue": "nobody-consumes-this"},
    )
    assert resp.status_code == 200
    task_id = resp.json["task-id"]
    assert resp.json["state"] == "PENDING"
    resp = api.get(f"/api/task/result/{task_id}")
    assert resp.json == {"task-id": task_id, "state": "PENDING"}
    meta = monitored.celery_app.backend.get_task_meta(task_id)
    assert meta["name"] == "elsewhere.only_on_some_worker"
    assert meta["args"] == [1]
    assert meta["queue"] == "nobody-consumes-this"


def test_send_task_of_a_reference_runs_it(api):
    resp = api.post(f"/api/task/send-task/{ADD}", json={"args": [20, 22]})
    task_id = resp.json["task-id"]
    assert api.get(f"/api/task/result/{task_id}?timeout=20").json["result"] == 42


def test_task_info_and_result_of_unknown_task_are_404(api):
    missing = str(uuid.uuid4())
    for path in (f"/api/task/info/{missing}", f"/api/task/result/{missing}"):
        resp = api.get(path)
        assert resp.status_code == 404
        assert resp.json == {"error": f"Unknown task '{missing}'"}


def test_result_refuses_a_bad_timeout(api):
    resp = api.get(f"/api/task/result/{uuid.uuid4()}?timeout=soon")
    assert resp.status_code == 400
    assert resp.json == {"error": "timeout must be a number from 0 to 3600, not 'soon'"}


def test_tasks_list_filters_sorts_pages_and_searches(monitored, api):
    marker = uuid.uuid4().hex[:10]
    # a registered task: the name of a submitted function depends on event order (see report)
    ok = [_send(api, REGISTERED, marker) for _ in range(3)]
    bad = _send(api, FAIL, f"oops {marker}")
    for t in ok:
        _wait_state(monitored, t, "SUCCESS")
    _wait_state(monitored, bad, "FAILURE")

    listed = _eventually(monitored, api, f"/api/tasks?search={marker}", lambda b: len(b) == 4)
    assert set(listed) == {*ok, bad}
    assert all(t["uuid"] == k for k, t in listed.items())

    base = f"/api/tasks?search={marker}"
    _eventually(monitored, api, f"{base}&state=FAILURE", lambda b: list(b) == [bad])
    by_name = f"{base}&taskname={REGISTERED}"
    _eventually(monitored, api, f"{by_name}&sort_by=received", lambda b: list(b) == ok)
    _eventually(monitored, api, f"{by_name}&sort_by=-received", lambda b: list(b) == ok[::-1])
    paged = f"{by_name}&sort_by=received&limit=1&offset=1"
    _eventually(monitored, api, paged, lambda b: list(b) == [ok[1]])
    w = monitored.worker_name
    _eventually(monitored, api, f"{base}&workername={w}&state=All", lambda b: len(b) == 4)
    assert api.get(f"{base}&workername=nobody@nowhere").json == {}
    # Flower's date format, local time
    start = time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() - 120))
    end = time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() + 120))
    resp = api.get(
        "/api/tasks", query_string={"search": marker, "received_start": start, "received_end": end}
    )
    assert len(resp.json) == 4
    resp = api.get(
        "/api/tasks", query_string={"search": marker, "received_end": "2001-01-01 00:00"}
    )
    assert resp.json == {}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("sort_by=colour", "sort_by must be one of name, -name, state, -state"),
        ("limit=many", "limit must be an integer from 0 to 1000000, not 'many'"),
        ("limit=-1", "limit must be an integer from 0 to 1000000, not '-1'"),
        ("offset=1.5", "offset must be an integer from 0 to 1000000000, not '1.5'"),
        ("received_start=yesterday", "received_start must be a date like '2024-01-31 13:45'"),
        ("started_end=0001-01-01%2000:00", "started_end must be a date like"),
        ("search=ab", "search term 'ab'"),
        ("search=(name:add", ""),
    ],
)
def test_tasks_list_refuses_bad_parameters_naming_them(api, query, message):
    resp = api.get(f"/api/tasks?{query}")
    assert resp.status_code == 400
    assert set(resp.json) == {"error"}
    assert message in resp.json["error"] if message else resp.json["error"]


def test_queue_lengths_list_the_worker_queues(api):
    api.get("/api/workers?refresh=1")  # queue names come from the workers' inspect replies
    resp = api.get("/api/queues/length")
    assert resp.status_code == 200
    names = {q["name"]: q["messages"] for q in resp.json["active_queues"]}
    assert {"celery", "high"} <= set(names)
    assert all(isinstance(n, int) for n in names.values())


# -- workers -----------------------------------------------------------------------------------


def test_workers_refresh_filter_and_status(monitored, api):
    name = monitored.worker_name
    resp = api.get("/api/workers?refresh=1")
    assert resp.status_code == 200
    info = resp.json[name]
    assert info["stats"]["pool"]["max-concurrency"] >= 1
    assert "tests.apps.basic.registered" in info["registered"]
    assert {q["name"] for q in info["active_queues"]} == {"celery", "high"}
    assert isinstance(info["timestamp"], float)

    resp = api.get(f"/api/workers?workername={name}&refresh=1")
    assert list(resp.json) == [name]
    assert "active" in resp.json[name]  # a one-worker refresh asks for the task lists too

    monitored.wait_for(lambda: monitored.service.worker(name))
    assert api.get("/api/workers?status=1").json[name] is True
    assert api.get(f"/api/workers?status=true&workername={name}").json == {name: True}

    for query in ("workername=nobody@nowhere", "status=1&workername=nobody@nowhere"):
        resp = api.get(f"/api/workers?{query}")
        assert resp.status_code == 404
        assert resp.json == {"error": "Unknown worker 'nobody@nowhere'"}
    resp = api.get("/api/workers?refresh=perhaps")
    assert resp.status_code == 400
    assert resp.json["error"].startswith("refresh must be a boolean")


def _pool_size(monitored) -> int:
    name = monitored.worker_name
    stats = monitored.celery_app.control.inspect(destination=[name], timeout=2).stats()
    return len(stats[name]["pool"]["processes"])


def test_pool_grow_and_shrink(monitored, api):
    name = monitored.worker_name
    before = _pool_size(monitored)
    resp = api.post(f"/api/worker/pool/grow/{name}?n=1")
    # the answer reads the pool back: it says what is true once it returns
    assert resp.json == {
        "message": f"Growing '{name}' worker's pool by 1; the pool has {before + 1} processes",
        "processes": before + 1,
    }
    assert _pool_size(monitored) == before + 1
    resp = api.post(f"/api/worker/pool/shrink/{name}", data={"n": "1"})
    assert resp.json == {
        "message": f"Shrinking '{name}' worker's pool by 1; the pool has {before} processes",
        "processes": before,
    }
    assert _pool_size(monitored) == before


def test_pool_restart_and_autoscale_report_the_worker_refusal(monitored, api):
    name = monitored.worker_name
    resp = api.post(f"/api/worker/pool/restart/{name}")
    assert resp.status_code == 403
    assert resp.json == {
        "error": f"Failed to restart the '{name}' pool: ValueError('Pool restarts not enabled')"
    }
    resp = api.post(f"/api/worker/pool/autoscale/{name}?min=1&max=3")
    assert resp.status_code == 403
    assert resp.json["error"].startswith(f"Failed to autoscale '{name}' worker: ")
    assert "Autoscale not enabled" in resp.json["error"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("pool/grow/{w}?n=0", "n must be an integer from 1 to 1000, not '0'"),
        ("pool/grow/{w}?n=two", "n must be an integer from 1 to 1000, not 'two'"),
        ("pool/shrink/{w}?n=100000", "n must be an integer from 1 to 1000, not '100000'"),
        ("pool/autoscale/{w}?max=3", "missing parameter 'min'"),
        ("pool/autoscale/{w}?min=5&max=3", "min must be <= max, not min=5 max=3"),
        ("queue/add-consumer/{w}", "missing parameter 'queue'"),
        ("queue/cancel-consumer/{w}?queue=", "missing parameter 'queue'"),
    ],
)
def test_worker_control_refuses_bad_parameters(monitored, api, path, message):
    resp = api.post("/api/worker/" + path.format(w=monitored.worker_name))
    assert resp.status_code == 400
    assert resp.json == {"error": message}


@pytest.mark.parametrize(
    "path",
    [
        "shutdown/{w}",
        "pool/restart/{w}",
        "pool/grow/{w}",
        "pool/shrink/{w}",
        "pool/autoscale/{w}?min=1&max=2",
        "queue/add-consumer/{w}?queue=q",
        "queue/cancel-consumer/{w}?queue=q",
    ],
)
def test_worker_control_of_an_unknown_worker_is_404(api, path):
    resp = api.post("/api/worker/" + path.format(w="ghost@nowhere"))
    assert resp.status_code == 404
    assert resp.json == {"error": "Unknown worker 'ghost@nowhere'"}


def test_rate_limit_and_time_limits(monitored, api):
    name = monitored.worker_name
    resp = api.post(
        f"/api/task/rate-limit/{REGISTERED}", data={"workername": name, "ratelimit": "100/m"}
    )
    assert resp.status_code == 200
    assert resp.json == {"message": "new rate limit set successfully"}
    resp = api.post(f"/api/task/timeout/{REGISTERED}?workername={name}&soft=30&hard=60")
    assert resp.json == {"message": "time limits set successfully"}
    # the worker really has them
    conf = monitored.celery_app.control.inspect(destination=[name], timeout=2)
    registered = conf.registered("rate_limit", "time_limit")[name]
    line = next(r for r in registered if r.startswith(REGISTERED))
    assert line == f"{REGISTERED} [rate_limit=100/m time_limit=60.0]"


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("rate-limit/{t}?ratelimit=1/m", 400, "missing parameter 'workername'"),
        ("rate-limit/{t}?workername={w}", 400, "missing parameter 'ratelimit'"),
        ("rate-limit/{t}?workername={w}&ratelimit=fast", 400, "ratelimit must be like '10/m'"),
        ("rate-limit/no.such.task?workername={w}&ratelimit=1", 404, "Unknown task 'no.such.task'"),
        ("rate-limit/{t}?workername=ghost@x&ratelimit=1", 404, "Unknown worker 'ghost@x'"),
        ("timeout/{t}?soft=1", 400, "missing parameter 'workername'"),
        ("timeout/{t}?workername={w}&soft=-1", 400, "soft must be a number from 0 to 315360000"),
        ("timeout/{t}?workername={w}&hard=nan", 400, "hard must be a number from 0 to 315360000"),
        ("timeout/no.such.task?workername={w}&soft=1", 404, "Unknown task 'no.such.task'"),
    ],
)
def test_task_limits_refuse_bad_parameters(monitored, api, path, status, message):
    resp = api.post("/api/task/" + path.format(t=REGISTERED, w=monitored.worker_name))
    assert resp.status_code == status
    assert resp.json["error"].startswith(message), resp.json


# -- revoke, abort, retry ----------------------------------------------------------------------


def test_revoke_with_terminate_and_signal_kills_a_running_task(monitored, api):
    task_id = _send(api, SLEEP, 30)
    _wait_state(monitored, task_id, "STARTED")
    resp = api.post(f"/api/task/revoke/{task_id}", data={"terminate": "true", "signal": "SIGKILL"})
    assert resp.json == {"message": f"Revoked '{task_id}'"}
    _wait_state(monitored, task_id, "REVOKED", "FAILURE")


def test_revoke_refuses_unknown_tasks_and_bad_parameters(api):
    missing = str(uuid.uuid4())
    resp = api.post(f"/api/task/revoke/{missing}")
    assert resp.status_code == 404
    assert resp.json == {"error": f"Unknown task '{missing}'"}
    resp = api.post(f"/api/task/revoke/{missing}?signal=SIGNOPE")
    assert resp.status_code == 400
    assert resp.json["error"].startswith("signal must be a signal name such as SIGTERM")
    resp = api.post(f"/api/task/revoke/{missing}?terminate=maybe")
    assert resp.status_code == 400
    assert resp.json["error"].startswith("terminate must be a boolean")


def test_revoke_of_a_waiting_task_reaches_the_worker(monitored, api):
    task_id = _send(api, SLEEP, 0.1, countdown=60)
    _wait_state(monitored, task_id, "RECEIVED")
    assert api.post(f"/api/task/revoke/{task_id}").status_code == 200
    revoked = monitored.celery_app.control.inspect(
        destination=[monitored.worker_name], timeout=2
    ).revoked()
    assert task_id in revoked[monitored.worker_name]


def test_abort_marks_a_running_task_and_refuses_finished_ones(monitored, api):
    task_id = _send(api, SLEEP, 1.5)
    _wait_state(monitored, task_id, "STARTED")
    resp = api.post(f"/api/task/abort/{task_id}")
    assert resp.json == {"message": f"Aborted '{task_id}'"}
    assert monitored.celery_app.AsyncResult(task_id).state in ("ABORTED", "SUCCESS")
    _wait_state(monitored, task_id, "SUCCESS")
    resp = api.post(f"/api/task/abort/{task_id}")
    assert resp.status_code == 409
    assert resp.json == {"error": f"Task '{task_id}' already finished (SUCCESS); nothing to abort"}
    missing = str(uuid.uuid4())
    resp = api.post(f"/api/task/abort/{missing}")
    assert resp.status_code == 404


def test_retry_resends_with_the_original_arguments_name_and_queue(monitored, api):
    long_arg = "x" * 5000  # events carry a truncated repr; retry must not
    first = _send(api, ADD, long_arg, "!", queue="high")
    _wait_state(monitored, first, "SUCCESS")
    resp = api.post(f"/api/task/retry/{first}")
    assert resp.status_code == 200
    new = resp.json["task-id"]
    assert new != first
    assert resp.json == {
        "message": f"Retried '{first}' as '{new}'",
        "task-id": new,
        "retried-from": first,
    }
    result = api.get(f"/api/task/result/{new}?timeout=20").json
    assert result["result"] == long_arg + "!"
    meta = monitored.celery_app.backend.get_task_meta(new)
    assert meta["queue"] == "high"  # the worker took it from the original queue
    assert meta["args"][:2] == [ADD, [long_arg, "!"]]

    registered = _send(api, REGISTERED, 4)
    _wait_state(monitored, registered, "SUCCESS")
    again = api.post(f"/api/task/retry/{registered}").json["task-id"]
    assert api.get(f"/api/task/result/{again}?timeout=20").json["result"] == 8


def test_retry_of_a_failed_task_fails_the_same_way(monitored, api):
    first = _send(api, FAIL, "again and again")
    _wait_state(monitored, first, "FAILURE")
    new = api.post(f"/api/task/retry/{first}").json["task-id"]
    result = api.get(f"/api/task/result/{new}?timeout=20").json
    assert result["state"] == "FAILURE"
    assert "again and again" in result["result"]


def test_retry_refuses_unfinished_unknown_and_argumentless_tasks(monitored, api):
    waiting = _send(api, SLEEP, 0.1, countdown=60)
    _wait_state(monitored, waiting, "RECEIVED")
    resp = api.post(f"/api/task/retry/{waiting}")
    assert resp.status_code == 409
    assert resp.json == {
        "error": f"Task '{waiting}' is RECEIVED, not finished; only finished tasks can be retried"
    }
    api.post(f"/api/task/revoke/{waiting}")

    missing = str(uuid.uuid4())
    assert api.post(f"/api/task/retry/{missing}").status_code == 404

    done = _send(api, ADD, 1, 1)
    _wait_state(monitored, done, "SUCCESS")
    monitored.celery_app.backend.forget(done)  # the backend's record (with the args) is gone
    resp = api.post(f"/api/task/retry/{done}")
    assert resp.status_code == 409
    assert resp.json["error"].startswith(f"the original arguments of task '{done}' are not known")


# -- bulk actions ------------------------------------------------------------------------------


def test_bulk_revoke_counts_in_dry_run_then_revokes(monitored, api):
    marker = uuid.uuid4().hex[:12]
    ids = [_send(api, REGISTERED, marker, countdown=60) for _ in range(3)]
    for t in ids:
        _wait_state(monitored, t, "RECEIVED")
    query = {"search": marker, "taskname": REGISTERED}
    resp = api.post("/api/tasks/revoke", data={**query, "dry_run": "1"})
    assert resp.json["dry_run"] is True
    assert resp.json["matched"] == 3
    assert resp.json["count"] == 3
    assert sorted(resp.json["task_ids"]) == sorted(ids)
    revoked = monitored.celery_app.control.inspect(
        destination=[monitored.worker_name], timeout=2
    ).revoked()[monitored.worker_name]
    assert not set(ids) & set(revoked)

    resp = api.post("/api/tasks/revoke", json=query)
    assert resp.json["dry_run"] is False
    assert resp.json["count"] == 3
    revoked = monitored.celery_app.control.inspect(
        destination=[monitored.worker_name], timeout=2
    ).revoked()[monitored.worker_name]
    assert set(ids) <= set(revoked)


def test_bulk_retry_resends_every_matching_finished_task(monitored, api):
    marker = uuid.uuid4().hex[:12]
    ids = [_send(api, FAIL, f"{marker} {i}") for i in range(2)]
    for t in ids:
        _wait_state(monitored, t, "FAILURE")
    resp = api.post(f"/api/tasks/retry?search={marker}&state=FAILURE&dry_run=yes")
    assert resp.json["count"] == 2
    assert resp.json["retried"] == {}
    resp = api.post(f"/api/tasks/retry?search={marker}&state=FAILURE")
    assert resp.json["count"] == 2
    assert set(resp.json["retried"]) == set(ids)
    assert resp.json["failed"] == {}
    for old, new in resp.json["retried"].items():
        result = api.get(f"/api/task/result/{new}?timeout=20").json
        i = ids.index(old)
        assert f"{marker} {i}" in result["result"]


def test_bulk_actions_need_a_filter_and_a_sane_limit(api):
    for action in ("revoke", "retry"):
        resp = api.post(f"/api/tasks/{action}")
        assert resp.status_code == 400
        assert resp.json["error"].startswith(f"bulk {action} needs at least one filter")
        resp = api.post(f"/api/tasks/{action}?state=All")
        assert resp.status_code == 400
        resp = api.post(f"/api/tasks/{action}?state=FAILURE&limit=0")
        assert resp.json == {"error": "limit must be an integer from 1 to 10000, not '0'"}
        resp = api.post(f"/api/tasks/{action}?search=x")
        assert resp.status_code == 400
        assert "search term 'x'" in resp.json["error"]


# -- queues ------------------------------------------------------------------------------------


def test_queue_messages_remove_one_and_purge(monitored, api):
    name = monitored.worker_name
    resp = api.post(f"/api/worker/queue/cancel-consumer/{name}?queue=high")
    assert resp.json == {"message": "no longer consuming from high"}

    def consumes_high() -> bool:
        insp = monitored.celery_app.control.inspect(destination=[name], timeout=2)
        return any(q["name"] == "high" for q in insp.active_queues()[name])

    monitored.wait_for(lambda: not consumes_high())
    time.sleep(2)  # a BRPOP the worker started before the cancel may still take one message
    try:
        ids = [_send(api, ADD, i, i, queue="high") for i in range(3)]
        lengths = {
            q["name"]: q["messages"] for q in api.get("/api/queues/length").json["active_queues"]
        }
        assert lengths["high"] == 3

        resp = api.get("/api/queues/messages/high")
        listed = resp.json["messages"]
        assert [m["task-id"] for m in listed] == ids, (listed, ids)  # next to be taken first
        assert listed[0]["name"] == ADD

        resp = api.post(f"/api/queues/remove/high/{ids[1]}")
        assert resp.json == {"message": f"Removed '{ids[1]}' from 'high'", "task-id": ids[1]}
        resp = api.post(f"/api/queues/remove/high/{ids[1]}")
        assert resp.status_code == 404
        assert resp.json == {"error": f"no message of task '{ids[1]}' waits in queue 'high'"}
        assert [m["task-id"] for m in api.get("/api/queues/messages/high").json["messages"]] == [
            ids[0],
            ids[2],
        ]
        assert api.get("/api/queues/messages/high?limit=1").json["messages"][0]["task-id"] == ids[0]

        resp = api.post("/api/queues/purge/high")
        assert resp.json == {"message": "Purged 2 messages from 'high'", "purged": 2}
        assert api.get("/api/queues/messages/high").json["messages"] == []
    finally:
        resp = api.post(f"/api/worker/queue/add-consumer/{name}?queue=high")
        assert resp.status_code == 200
        assert resp.json == {"message": "add consumer high"}


def test_queue_operations_on_an_unknown_queue_are_404(api):
    for method, path in (
        ("POST", "/api/queues/purge/nosuchqueue"),
        ("GET", "/api/queues/messages/nosuchqueue"),
        ("POST", f"/api/queues/remove/nosuchqueue/{uuid.uuid4()}"),
    ):
        resp = api.call(method, path)
        assert resp.status_code == 404
        assert resp.json == {"error": "Unknown queue 'nosuchqueue'"}


# -- routing errors ----------------------------------------------------------------------------


def test_unknown_api_paths_and_wrong_methods_answer_json(monitored):
    client = monitored.client()
    resp = client.get(f"{PREFIX}/api/nothing/here")
    assert resp.status_code == 404
    assert resp.json == {
        "error": f"no API route {PREFIX}/api/nothing/here; see {PREFIX}/api/openapi.json"
    }
    resp = client.get(f"{PREFIX}/api/task/revoke/{uuid.uuid4()}")
    assert resp.status_code == 405
    assert resp.json == {"error": "GET is not allowed here; use POST"}
    assert resp.headers["Allow"] == "POST, OPTIONS"
    resp = client.delete(f"{PREFIX}/api/tasks")
    assert resp.status_code == 405
    assert resp.headers["Allow"] == "GET, HEAD, OPTIONS"


def test_autoscale_then_shutdown_of_a_worker(monitored, api, tmp_path):
    name = f"doomed-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    worker = WorkerProcess(
        "tests.apps.basic:create_app",
        monitored.broker,
        name,
        str(tmp_path / "doomed.log"),
        args=("-P", "prefork", "--autoscale", "2,1", "-Q", "doomed", "-E"),
    )
    try:
        worker.wait_ready(monitored.celery_app)
        monitored.wait_for(lambda: monitored.service.worker(name))
        resp = api.post(f"/api/worker/pool/autoscale/{name}", data={"min": "1", "max": "3"})
        assert resp.json["message"].startswith(f"Autoscaling '{name}' worker (min=1, max=3); ")
        assert resp.json["autoscaler"]["max"] == 3 and resp.json["autoscaler"]["min"] == 1
        stats = monitored.celery_app.control.inspect(destination=[name], timeout=2).stats()
        assert stats[name]["autoscaler"]["max"] == 3

        resp = api.post(f"/api/worker/shutdown/{name}")
        assert resp.json == {"message": "Shutting down!"}
        assert worker.proc.wait(30) == 0
        assert monitored.worker.proc.poll() is None  # only that worker
    finally:
        worker.stop()


# -- the same shapes as a live Flower 2.2 ------------------------------------------------------

#: recorded from a live Flower 2.2 with a real worker (a copy of shared/reference's file)
SAMPLES = Path(__file__).resolve().parents[1] / "data" / "flower-2.2-api-samples.json"


@pytest.fixture(scope="module")
def flower() -> dict[str, Any]:
    """Responses of a live Flower 2.2 with a real worker (tests/data)."""
    return json.loads(SAMPLES.read_text())["responses"]


def _flower(flower: dict[str, Any], prefix: str) -> dict[str, Any]:
    return next(v for k, v in flower.items() if k.startswith(prefix))


def _json_type(value: Any) -> str:
    return {bool: "bool", int: "number", float: "number", str: "str", list: "list"}.get(
        type(value), type(value).__name__
    )


def test_task_info_and_list_have_flowers_keys_and_types(monitored, api, flower):
    task_id = _send(api, FAIL, "shape check")
    _wait_state(monitored, task_id, "FAILURE")
    ours = _eventually(
        monitored, api, f"/api/task/info/{task_id}", lambda b: b["traceback"] is not None
    )
    theirs = _flower(flower, "/api/task/info/8ee2d110")["json"]  # a failed task too
    assert set(ours) == set(theirs) | {"history"}
    for key, value in theirs.items():
        if value is not None and ours[key] is not None:
            assert _json_type(ours[key]) == _json_type(value), key
    listed = api.get(f"/api/tasks?search=name:{FAIL.split(':')[1]}&limit=3").json
    assert listed and all(set(t) == set(ours) for t in listed.values())
    assert set(_flower(flower, "/api/tasks?limit=3")["json"].popitem()[1]) | {"history"} == set(
        ours
    )


def test_unknown_task_error_has_flowers_text(api, flower):
    missing = "00000000-0000-0000-0000-000000000000"
    theirs = flower[f"/api/task/info/{missing}"]
    resp = api.get(f"/api/task/info/{missing}")
    assert resp.status_code == theirs["status"] == 404
    assert resp.json == {"error": theirs["text"]}  # same text, as JSON instead of text/plain


def test_workers_and_queues_have_flowers_shapes(monitored, api, flower):
    name = monitored.worker_name
    ours = api.get("/api/workers?refresh=1").json[name]
    theirs = flower["/api/workers?refresh=1"]["json"]["realworker@vm"]
    assert set(theirs) <= set(ours)
    assert set(theirs["stats"]) <= set(ours["stats"])
    assert set(theirs["stats"]["pool"]) <= set(ours["stats"]["pool"])
    assert set(theirs["active_queues"][0]) <= set(ours["active_queues"][0])
    monitored.wait_for(lambda: monitored.service.worker(name))
    status = api.get("/api/workers?status=1").json
    assert {type(v) for v in status.values()} == {
        type(v) for v in flower["/api/workers?status=1"]["json"].values()
    }
    queues = api.get("/api/queues/length").json
    sample = flower["/api/queues/length"]["json"]
    assert set(queues) == set(sample)
    assert set(queues["active_queues"][0]) == set(sample["active_queues"][0])
    types = api.get("/api/task/types").json
    assert set(types) == set(flower["/api/task/types"]["json"])
