"""Every method of Future and FuturePool, on eager results and on a real worker's results.

Celery hands back an ``EagerResult`` (no result backend) in eager mode and an ``AsyncResult``
otherwise; code written for one kind only broke the other (``result(timeout=...)`` raised
AttributeError in eager mode), so each test runs against both.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import socket
import threading

import pytest

from flask_celerymon import Future, FuturePool
from tests.apps import basic

WORKER = f"futures@{socket.gethostname()}"


@pytest.fixture(scope="module")
def worker_app(own_redis, tmp_path_factory):
    from tests.conftest import WorkerProcess

    broker = own_redis.url(3)
    os.environ["CELERYMON_TEST_BROKER"] = broker
    try:
        app = basic.create_app()
    finally:
        del os.environ["CELERYMON_TEST_BROKER"]
    logfile = str(tmp_path_factory.mktemp("futures") / "worker.log")
    proc = WorkerProcess("tests.apps.basic:create_app", broker, WORKER, logfile, args=("-c", "2"))
    try:
        proc.wait_ready(basic.celery.get_app(app))
        yield app
    finally:
        proc.stop()


@pytest.fixture(params=["eager", "worker"])
def ctx(request):
    if request.param == "eager":
        app = basic.create_app(CELERY_TASK_ALWAYS_EAGER=True)
    else:
        app = request.getfixturevalue("worker_app")
    with app.app_context():
        yield request.param


def _callback_recorder():
    calls: list[object] = []
    done = threading.Event()

    def callback(obj):
        calls.append(obj)
        done.set()

    return calls, done, callback


def test_every_future_method_on_a_success(ctx):
    future = basic.celery.submit(basic.add, 1, 2)
    assert isinstance(future, Future) and isinstance(future, cf.Future)
    assert future.result(timeout=10) == 3
    assert future.exception(timeout=10) is None
    assert future.done() and not future.running() and not future.cancelled()
    assert future.cancel() is False  # finished: nothing to cancel
    assert future.state == future.status == "SUCCESS"
    assert future.name == "tests.apps.basic:add"
    assert future.async_result.id == future.id and isinstance(future.id, str)
    assert future.info == 3
    assert repr(future) == f"<Future {future.id} tests.apps.basic:add state=SUCCESS>"
    calls, done, callback = _callback_recorder()
    future.add_done_callback(callback)
    assert done.wait(10) and calls == [future]
    assert cf.wait([future], timeout=10).done == {future}
    assert list(cf.as_completed([future], timeout=10)) == [future]
    again = basic.celery.get(future.id)
    assert again.result(timeout=10) == 3 and again.state == "SUCCESS"


def test_every_future_method_on_a_failure(ctx):
    future = basic.celery.submit(basic.fail, "bad input")
    exc = future.exception(timeout=10)
    assert isinstance(exc, ValueError) and str(exc) == "bad input"
    with pytest.raises(ValueError, match="bad input"):
        future.result(timeout=10)
    assert future.done() and not future.running() and not future.cancelled()
    assert future.cancel() is False
    assert future.state == future.status == "FAILURE"
    calls, done, callback = _callback_recorder()
    future.add_done_callback(callback)
    assert done.wait(10) and calls == [future]


def test_result_without_timeout_waits_for_the_task(ctx):
    future = basic.celery.submit(basic.sleep, 0.2)
    assert future.result() == 0.2
    assert future.exception() is None


def test_every_pool_method_on_successes(ctx):
    pool = basic.celery.map(basic.add, [1, 2], [3, 4], [5, 6])
    assert isinstance(pool, FuturePool) and len(pool) == 3
    assert pool.result(timeout=10) == [3, 7, 11]
    assert pool.exception(timeout=10) == [None, None, None]
    assert [f.result(timeout=0) for f in pool] == [3, 7, 11]
    assert pool[1].result(timeout=0) == 7 and pool.futures == list(pool)
    assert pool.done() and not pool.running() and not pool.cancelled()
    assert pool.cancel() is False
    assert pool.state == pool.status == "SUCCESS"
    assert repr(pool) == "<FuturePool 3 futures state=SUCCESS>"
    assert isinstance(pool.id, str)
    calls, done, callback = _callback_recorder()
    pool.add_done_callback(callback)
    assert done.wait(10) and calls == [pool]


def test_every_pool_method_with_a_failure(ctx):
    pool = basic.celery.map(basic.fail, "first", "second")
    with pytest.raises(ValueError, match="first"):
        pool.result(timeout=10)
    assert [str(e) for e in pool.exception(timeout=10)] == ["first", "second"]
    assert pool.done() and pool.state == "FAILURE"


def test_a_timeout_of_zero_answers_at_once(ctx):
    future = basic.celery.submit(basic.add, 2, 2)
    if ctx == "eager":  # finished when submit returned
        assert future.result(timeout=0) == 4
        assert basic.celery.map(basic.add, [1, 1]).result(timeout=0) == [2]
    else:
        assert future.result(timeout=10) == 4
        slow = basic.celery.submit(basic.sleep, 1)
        with pytest.raises(cf.TimeoutError):
            slow.result(timeout=0)
        assert slow.result(timeout=10) == 1
