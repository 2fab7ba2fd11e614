"""The app context covers a task's whole life, on a real worker (prefork and threads) and eager.

The tasks of ``tests/apps/lifecycle.py`` record, at every signal, handler and body, whether an
app context and a request context exist, ``current_app``'s config and the ``g.trail`` of the
execution. One table says what every execution must record; the worker tests and the eager
tests check the same table with the same function.
"""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import redis
from flask import g

from tests.apps import lifecycle

SUCCESS = ["task_prerun", "before_start", "body", "on_success", "task_success", "after_return",
           "task_postrun"]  # fmt: skip
FAILURE = ["task_prerun", "before_start", "body", "on_failure", "task_failure", "after_return",
           "task_postrun"]  # fmt: skip
#: Celery calls no after_return for a RETRY; the retried execution runs afresh
RETRIED = ["task_prerun", "before_start", "body", "on_retry", "task_retry", "task_postrun"]
BASED = ["task_prerun", "task_base.before_start", "before_start", "body", "task_base.on_success",
         "on_success", "task_success", "task_base.after_return", "after_return",
         "task_postrun"]  # fmt: skip
BASED_FAILURE = ["task_prerun", "task_base.before_start", "before_start", "body",
                 "task_base.on_failure", "on_failure", "task_failure", "task_base.after_return",
                 "after_return", "task_postrun"]  # fmt: skip

#: task -> (the executions it records, its final state, its result)
EXPECTED = {
    "succeed": ([SUCCESS], "SUCCESS", "lifecycle-app"),
    "fail": ([FAILURE], "FAILURE", None),
    "retry_once": ([RETRIED, SUCCESS], "SUCCESS", "retried"),
    "based": ([BASED], "SUCCESS", "lifecycle-app"),
    "based_fail": ([BASED_FAILURE], "FAILURE", None),
    "submitted": ([SUCCESS], "SUCCESS", "lifecycle-app"),  # celery.submit(plain function)
}


def send(name: str):
    """Send the task ``name`` of the lifecycle app; its AsyncResult (or EagerResult)."""
    if name == "submitted":
        return lifecycle.celery.submit(lifecycle.submitted).async_result
    return lifecycle.celery.task[name].delay()


def records(sink: str, task_id: str, count: int, timeout: float = 20.0) -> list[dict]:
    """The records of one task, once ``count`` of them arrived (postrun comes after the result)."""
    client = redis.Redis.from_url(sink)
    try:
        deadline = time.monotonic() + timeout
        while True:
            raw = client.lrange(f"lifecycle:{task_id}", 0, -1)
            if len(raw) >= count or time.monotonic() > deadline:
                return [json.loads(r) for r in raw]
            time.sleep(0.05)
    finally:
        client.close()


def check_lifecycle(sink: str, name: str, result) -> None:
    """Every place of every execution of ``name`` ran in one fresh app context, no request."""
    executions, state, value = EXPECTED[name]
    if state == "FAILURE":
        with pytest.raises(ValueError, match="planned failure"):
            result.get(timeout=20)
    else:
        assert result.get(timeout=20) == value
    assert result.state == state
    got = records(sink, result.id, sum(len(execution) for execution in executions))
    # executions of a retried task may overlap (the retry runs in another pool thread)
    by_execution = [[r for r in got if r["execution"] == n] for n in range(len(executions))]
    assert [[r["where"] for r in ex] for ex in by_execution] == executions
    for n, execution in enumerate(executions):
        for i, where in enumerate(execution):
            assert by_execution[n][i] == {
                "where": where,
                "execution": n,
                "app_context": True,
                "request_context": False,
                "mark": "lifecycle-app",
                "trail": execution[: i + 1],  # one g per execution, empty at task_prerun
            }, f"{name}: execution {n}, record {i}"


# -- on a real worker ------------------------------------------------------------------------
POOLS = {
    # one pool process: consecutive tasks run in the same process, so a g kept between
    # executions would show in the trail
    "prefork": ("-P", "prefork", "-c", "1"),
    "threads": ("-P", "threads", "-c", "2"),
}


@pytest.fixture(scope="module")
def broker(own_redis):
    return own_redis.url(0)


@pytest.fixture(scope="module")
def app(broker):
    os.environ["CELERYMON_TEST_BROKER"] = broker
    try:
        return lifecycle.create_app()
    finally:
        del os.environ["CELERYMON_TEST_BROKER"]


@pytest.fixture(scope="module", params=sorted(POOLS))
def worker(request, app, broker, tmp_path_factory):
    from tests.conftest import WorkerProcess

    name = f"lifecycle-{request.param}@{socket.gethostname()}"
    logfile = str(tmp_path_factory.mktemp("worker") / f"{request.param}.log")
    proc = WorkerProcess(
        "tests.apps.lifecycle:create_app", broker, name, logfile, args=POOLS[request.param]
    )
    try:
        proc.wait_ready(lifecycle.celery.get_app(app))
        yield proc
    finally:
        proc.stop()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_worker_runs_every_place_of_a_task_in_one_fresh_app_context(app, broker, worker, name):
    with app.app_context():
        result = send(name)
    check_lifecycle(broker, name, result)


def test_worker_gives_each_execution_its_own_g(app, broker, worker):
    with app.app_context():
        results = [send("succeed") for _ in range(4)]
    for result in results:
        check_lifecycle(broker, "succeed", result)


# -- eager ----------------------------------------------------------------------------------
@pytest.fixture
def eager_app(redis_url):
    return lifecycle.create_app(
        CELERY_BROKER_URL="memory://", CELERY_TASK_ALWAYS_EAGER=True, LIFECYCLE_SINK=redis_url
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_eager_task_records_what_a_worker_records(eager_app, redis_url, name):
    with eager_app.app_context():
        result = send(name)
    check_lifecycle(redis_url, name, result)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_eager_task_called_from_a_view_sees_no_request_and_a_fresh_g(eager_app, redis_url, name):
    with eager_app.test_request_context("/view"):
        g.trail = ["view"]
        result = send(name)
        assert g.trail == ["view"]  # the task appended to its own g, not to the view's
    check_lifecycle(redis_url, name, result)


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"submitted"}))
def test_eager_task_outside_any_context_gets_one(eager_app, redis_url, name):
    task = lifecycle.celery.task[name].bound(eager_app.extensions["celerymon"])
    check_lifecycle(redis_url, name, task.delay())


def test_eager_flag_set_after_init_app_is_honoured(redis_url):
    # the usual pytest fixture: build the app, then switch eager mode on
    app = lifecycle.create_app(CELERY_BROKER_URL="memory://", LIFECYCLE_SINK=redis_url)
    app.config["CELERY_TASK_ALWAYS_EAGER"] = True
    with app.app_context():
        result = lifecycle.celery.task.succeed.delay()
    check_lifecycle(redis_url, "succeed", result)
