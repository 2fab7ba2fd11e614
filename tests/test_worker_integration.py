"""The extension against a real Redis and a real ``celery worker`` subprocess."""

from __future__ import annotations

import concurrent.futures as cf
import socket
import threading
import time

import pytest

from flask_celerymon import Future, FuturePool, TaskNotFound
from flask_celerymon.dispatch import DISPATCH_TASK_NAME
from tests.apps import basic

WORKER = f"itest@{socket.gethostname()}"


@pytest.fixture(scope="module")
def broker(redis_server, tmp_path_factory):
    return redis_server.url(255)  # the monitor tests' module databases start at 200


@pytest.fixture(scope="module")
def app(broker, tmp_path_factory):
    import os

    os.environ["CELERYMON_TEST_BROKER"] = broker
    try:
        flask_app = basic.create_app()
    finally:
        del os.environ["CELERYMON_TEST_BROKER"]
    return flask_app


@pytest.fixture(scope="module")
def worker(app, broker, tmp_path_factory):
    from tests.conftest import WorkerProcess

    logfile = str(tmp_path_factory.mktemp("worker") / "worker.log")
    proc = WorkerProcess(
        "tests.apps.basic:create_app",
        broker,
        WORKER,
        logfile,
        args=("-P", "prefork", "-c", "2", "-Q", "celery,high"),
    )
    try:
        proc.wait_ready(basic.celery.get_app(app))
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def ctx(app, worker):
    with app.app_context():
        yield app


def test_submit_returns_future_with_result(ctx):
    future = basic.celery.submit(basic.add, 1, 2)
    assert isinstance(future, Future)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=10) == 3
    assert future.done()
    assert future.state == "SUCCESS" and future.status == "SUCCESS"
    assert future.name == "tests.apps.basic:add"


def test_submit_passes_keyword_arguments(ctx):
    assert basic.celery.submit(basic.add, 1, y=2).result(timeout=10) == 3
    assert basic.celery.submit(basic.add, x=1, y=2).result(timeout=10) == 3


def test_submit_routes_to_named_queue(ctx):
    future = basic.celery.submit(basic.add, 2, 2, queue="high")
    assert future.result(timeout=10) == 4
    meta = future.async_result.backend.get_task_meta(future.id)
    assert meta["queue"] == "high"


def test_submit_with_countdown_waits_before_running(ctx):
    start = time.monotonic()
    future = basic.celery.submit(basic.add, 1, 1, countdown=1)
    assert future.result(timeout=15) == 2
    assert time.monotonic() - start >= 0.9


def test_map_sends_group_and_returns_pool(ctx):
    pool = basic.celery.map(basic.add, [1, 2], [3, 4], [5, 6])
    assert isinstance(pool, FuturePool)
    assert len(pool) == 3
    assert pool.id is not None
    assert pool.result(timeout=10) == [3, 7, 11]
    assert [f.result() for f in pool] == [3, 7, 11]
    assert pool.done() and not pool.running() and not pool.cancelled()
    assert pool.state == "SUCCESS"


def test_map_with_constant_keyword_arguments(ctx):
    pool = basic.celery.map(basic.add, [1], [3], [5], y=2)
    assert pool.result(timeout=10) == [3, 5, 7]


def test_get_returns_future_bound_to_app(ctx):
    task_id = basic.celery.submit(basic.add, 4, 4).id
    future = basic.celery.get(task_id)
    assert isinstance(future, Future)
    assert future.id == task_id
    assert future.result(timeout=10) == 8


def test_get_of_queued_task_before_it_runs(ctx):
    future = basic.celery.submit(basic.add, 1, 1, countdown=30)
    try:
        again = basic.celery.get(future.id)
        assert again.state == "PENDING"
        assert not again.done()
    finally:
        future.cancel()


def test_get_unknown_id_raises_task_not_found(ctx):
    with pytest.raises(TaskNotFound, match="no task with id 'no-such-task' is known"):
        basic.celery.get("no-such-task")


def test_futures_work_with_concurrent_wait_and_as_completed(ctx):
    futures = [basic.celery.submit(basic.sleep, d) for d in (0.6, 0.1)]
    done, not_done = cf.wait(futures, timeout=15)
    assert len(done) == 2 and not not_done
    order = [
        f.result()
        for f in cf.as_completed(
            [basic.celery.submit(basic.sleep, d) for d in (0.8, 0.1)], timeout=15
        )
    ]
    assert order == [0.1, 0.8]


def test_running_is_true_only_once_started(ctx):
    queued = basic.celery.submit(basic.add, 1, 1, countdown=30)
    try:
        assert queued.state == "PENDING"
        assert not queued.running()
    finally:
        queued.cancel()
    busy = basic.celery.submit(basic.sleep, 1.5)
    deadline = time.monotonic() + 10
    while not busy.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert busy.running()
    assert busy.state == "STARTED"
    assert not busy.done()
    assert busy.cancel() is False  # a started task cannot be cancelled
    assert busy.result(timeout=10) == 1.5
    assert not busy.running()


def test_cancel_revokes_a_queued_task(ctx):
    future = basic.celery.submit(basic.add, 1, 1, countdown=2)
    assert future.cancel() is True
    assert future.cancelled()
    assert future.done()
    assert future.state == "REVOKED"
    with pytest.raises(cf.CancelledError):
        future.result(timeout=1)
    time.sleep(2.5)  # the worker discards it instead of running it
    assert basic.celery.get(future.id).state == "REVOKED"


def test_done_callback_runs_once_without_anyone_waiting(ctx):
    calls = []
    fired = threading.Event()

    def callback(f):
        calls.append(f.result())
        fired.set()

    future = basic.celery.submit(basic.sleep, 0.3)
    future.add_done_callback(callback)
    assert fired.wait(10)
    time.sleep(0.3)
    assert calls == [0.3]


def test_done_callback_added_after_completion_runs_immediately(ctx):
    future = basic.celery.submit(basic.add, 1, 1)
    future.result(timeout=10)
    calls = []
    future.add_done_callback(lambda f: calls.append(f.result()))
    assert calls == [2]


def test_exception_returns_the_task_error(ctx):
    future = basic.celery.submit(basic.fail, "boom")
    exc = future.exception(timeout=10)
    assert isinstance(exc, ValueError)
    assert str(exc) == "boom"
    assert future.state == "FAILURE"
    with pytest.raises(ValueError, match="boom"):
        future.result()


def test_result_timeout_expires(ctx):
    future = basic.celery.submit(basic.sleep, 2)
    with pytest.raises(cf.TimeoutError, match=f"task {future.id} did not finish within 0.2 s"):
        future.result(timeout=0.2)
    with pytest.raises(cf.TimeoutError):
        future.exception(timeout=0.1)
    assert future.result(timeout=10) == 2


def test_current_task_is_the_running_task(ctx):
    future = basic.celery.submit(basic.whoami)
    assert future.result(timeout=10) == future.id


def test_update_state_reports_progress(ctx):
    future = basic.celery.submit(basic.progress, 8)
    deadline = time.monotonic() + 10
    seen = set()
    running = set()
    while not future.done() and time.monotonic() < deadline:
        # state and info are two reads: the task may finish in between (info is then 8)
        if future.state == "PROGRESS" and isinstance(info := future.info, dict):
            seen.add(info["total"])
            running.add(future.running())  # False only if it finished in between
        time.sleep(0.05)
    assert seen == {8}
    assert True in running  # a task in a custom state still runs
    assert future.result(timeout=10) == 8


def test_tasks_run_inside_app_context_built_once_per_worker_process(ctx):
    assert basic.celery.submit(basic.app_name).result(timeout=10) == "tests.apps.basic"
    builds = basic.celery.map(basic.app_builds, *[[] for _ in range(8)]).result(timeout=10)
    assert set(builds) == {1}


def test_disallowed_reference_fails_task_and_worker_survives(ctx, worker):
    dispatch = basic.celery.app.tasks[DISPATCH_TASK_NAME]
    result = dispatch.apply_async(args=["os:system", ["echo pwned"], {}])
    with pytest.raises(Exception) as info:
        result.get(timeout=10)
    assert type(info.value).__name__ == "DispatchRefused"
    assert "os:system is not on this worker's submit allowlist" in str(info.value)
    assert "pwned" not in worker.log_text().split("Received task")[-1].replace("echo pwned", "")
    assert basic.celery.submit(basic.add, 2, 3).result(timeout=10) == 5


@pytest.mark.parametrize(
    "ref",
    ["tests.apps.basic:os.popen", "tests.apps.basic:os", "tests.apps.basic.os:system"],
)
def test_reference_through_an_imported_module_is_refused_by_the_worker(ctx, worker, ref, tmp_path):
    """The case of the security issue: ``myapp:os.popen`` published straight to the broker."""
    target = tmp_path / "pwned"
    dispatch = basic.celery.app.tasks[DISPATCH_TASK_NAME]
    result = dispatch.apply_async(args=[ref, [f"touch {target}"], {}])
    with pytest.raises(Exception) as info:
        result.get(timeout=10)
    assert type(info.value).__name__ == "DispatchRefused"
    assert not target.exists()
    assert basic.celery.submit(basic.add, 2, 3).result(timeout=10) == 5


def test_an_entry_point_module_is_refused_by_the_worker(ctx, worker):
    """``pkg.__main__:main`` would parse the worker's command line and end its pool process."""
    dispatch = basic.celery.app.tasks[DISPATCH_TASK_NAME]
    result = dispatch.apply_async(args=["tests.apps.surface.__main__:main", [["--help"]], {}])
    with pytest.raises(Exception) as info:
        result.get(timeout=10)
    assert type(info.value).__name__ == "DispatchRefused"
    assert "malformed function reference 'tests.apps.surface.__main__:main'" in str(info.value)


def test_registered_task_delay_and_lookup(ctx):
    assert basic.registered.delay(21).get(timeout=10) == 42
    assert basic.celery.task.registered is basic.registered
    assert basic.celery.task["tests.apps.basic.registered"] is basic.registered
    assert basic.celery.submit(basic.registered, 5).result(timeout=10) == 10


def test_inspect_returns_plain_dicts(ctx):
    registered = basic.celery.inspect.registered(destination=WORKER, timeout=5)
    assert "tests.apps.basic.registered" in registered[WORKER]
    assert DISPATCH_TASK_NAME in registered[WORKER]
    stats = basic.celery.inspect.stats(destination=WORKER, timeout=5)
    assert set(stats) == {WORKER}
    assert "broker" in stats[WORKER]
    assert basic.celery.inspect.active_queues(destination=WORKER, timeout=5)[WORKER][0]["name"] in (
        "celery",
        "high",
    )


def test_control_passes_real_arguments(ctx):
    grown = basic.celery.control.pool_grow(1, destination=WORKER, timeout=5)
    assert grown == {WORKER: {"ok": "pool will grow"}}
    shrunk = basic.celery.control.pool_shrink(1, destination=[WORKER], timeout=5)
    assert shrunk == {WORKER: {"ok": "pool will shrink"}}
    limited = basic.celery.control.rate_limit(
        "tests.apps.basic.registered", "100/m", destination=WORKER, timeout=5
    )
    assert "new rate limit set successfully" in limited[WORKER]["ok"]
    scaled = basic.celery.control.autoscale(5, 1, destination=WORKER, timeout=5)
    assert "Autoscale not enabled" in scaled[WORKER]["error"]
    assert basic.celery.control.heartbeat(timeout=2) == {WORKER: None}


def test_status_pings_workers(ctx):
    assert basic.celery.status(timeout=1) == {WORKER: "OK"}


def test_unknown_command_names_the_method(ctx):
    with pytest.raises(AttributeError, match="celery.inspect has no method 'bogus'"):
        basic.celery.inspect.bogus  # noqa: B018


def test_monitor_sees_submitted_functions_by_reference_with_their_own_arguments(ctx):
    from flask_celerymon.monitor import MonitorService, MonitorSettings

    service = MonitorService(basic.celery.app, MonitorSettings())
    service.start()
    try:
        assert service.wait_connected(10)
        time.sleep(0.5)  # the receiver binds its queue; events sent before that are not seen
        future = basic.celery.submit(basic.add, 20, y=22)
        assert future.result(timeout=10) == 42
        deadline = time.monotonic() + 10
        task = None
        while time.monotonic() < deadline:
            task = service.task(future.id)
            if task and task["state"] == "SUCCESS" and task.get("sent"):
                break
            time.sleep(0.05)
        assert task is not None
        assert task["name"] == "tests.apps.basic:add"
        assert task["args"] == "(20,)"
        assert task["kwargs"] == "{'y': 22}"
        assert task["result"] == "42"
        # it saw task-sent; not always first: Celery publishes task-sent after the message, so
        # under load the worker's task-received can carry the earlier timestamp
        assert "PENDING" in [h["state"] for h in task["history"]], task["history"]
    finally:
        service.stop()
