"""The monitor's data matches what really happened (issue 12), against a real Redis and worker.

Each test is one case seen in use; the kind behind it is guarded by the generated tests in
``test_differential.py`` and ``test_wire_values.py``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from celery import Celery
from celery.utils.nodenames import anon_nodename
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu.exceptions import OperationalError
from prometheus_client import generate_latest

from flask_celerymon.monitor.metrics import MonitorMetrics
from flask_celerymon.monitor.state import _INT_FIELDS, _Drop, coerce_field
from tests.conftest import WorkerProcess, free_port, metric_value, parse_metrics

from .conftest import wait_for

#: The worker runs in a zone far from the monitor's (below: America/New_York).
WORKER_TZ = "Asia/Tokyo"


def _worker(
    broker: str, name: str, logfile: str, queue: str = "celery", pool: str = "solo"
) -> WorkerProcess:
    return WorkerProcess(
        None, broker, name, logfile,
        args=("-P", pool, "-c", "1", "--heartbeat-interval", "1", "-E", "-Q", queue),
        celery_app="tests.monitor.worker_app",
        env={"CELERYMON_MONITOR_TEST_BROKER": broker, "TZ": WORKER_TZ}, loglevel="warning",
    )  # fmt: skip


@pytest.fixture(scope="module")
def app(module_broker: str) -> Celery:
    """This module's client of the workers below (the tasks of tests.monitor.worker_app are
    sent by name: that app's connections may belong to an earlier module's database)."""
    app = Celery("truth", broker=module_broker)
    app.conf.task_send_sent_event = True
    return app


@pytest.fixture(scope="module")
def tokyo_worker(module_broker: str, app: Celery, tmp_path_factory: Any) -> Iterator[WorkerProcess]:
    """A real worker whose local time zone is Asia/Tokyo (UTC+9)."""
    w = _worker(module_broker, "tokyo@test", str(tmp_path_factory.mktemp("w") / "w.log"))
    try:
        w.wait_ready(app)
        yield w
    finally:
        w.stop()


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The monitor (this process) in America/New_York for the test."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_process_that_sends_tasks_is_a_client_not_a_worker(tokyo_worker, app, make_service):
    # max_workers=1: a client counted as a worker would push the real worker out
    svc = make_service(app, max_workers=1)
    assert svc.wait_connected(10)

    wait_for(lambda: svc.worker(tokyo_worker.name), 10)
    result = app.send_task("mon.add", (2, 3))  # task-sent comes from this process, gen<pid>@<host>
    task = wait_for(lambda: (t := svc.task(result.id)) and t["state"] == "SUCCESS" and t, 20)
    assert task["client"] == anon_nodename()
    assert task["worker"] == tokyo_worker.name
    assert [w["hostname"] for w in svc.workers()] == [tokyo_worker.name]
    assert set(svc.worker_status()) == {tokyo_worker.name}
    assert set(svc.inspect(refresh=True)) == {tokyo_worker.name}
    assert svc.figures()["workers"] == 1


def test_event_times_are_unix_times_whatever_the_zones(new_york, tokyo_worker, app, make_service):
    svc = make_service(app)
    metrics = MonitorMetrics(svc)
    assert svc.wait_connected(10)

    before = time.time()
    result = app.send_task("mon.add", (20, 22))
    # task-sent comes from the client after the message: under load it can arrive last
    t = wait_for(
        lambda: (t := svc.task(result.id)) and t["state"] == "SUCCESS" and t["sent"] and t, 20
    )
    after = time.time()
    times = [t["sent"], t["received"], t["started"], t["succeeded"]]
    assert all(before - 1 <= x <= after + 1 for x in times), (before, times, after)
    # (task-sent is published after the message: it may come a moment after task-received)
    assert times[1:] == sorted(times[1:])
    # sent comes first, even when the client stamped it after the worker's received
    assert [h["state"] for h in t["history"]] == ["PENDING", "RECEIVED", "STARTED", "SUCCESS"]
    # "since 1 hour ago" finds it, in the window and in the history store
    for source in ("window", "store"):
        svc.flush()
        page = svc.query_tasks(received_start=time.time() - 3600, source=source)
        assert result.id in [x["uuid"] for x in page.tasks], source
    samples = parse_metrics(generate_latest(metrics.registry).decode())
    wait_sum = metric_value(
        samples, "celerymon_task_queue_wait_seconds_sum", task="mon.add", worker=tokyo_worker.name
    )
    assert wait_sum is not None and 0 <= wait_sum < 10


def test_one_bad_value_never_stops_the_history(celery_app, make_service):
    svc = make_service(celery_app)
    assert svc.wait_connected(10)
    with celery_app.connection_for_write() as conn:
        d = celery_app.events.Dispatcher(conn, hostname="w@h", enabled=True)
        d.send("task-received", uuid="surrogate", name="app.x", args="('\ud800',)",
               kwargs={"k": [1]}, retries=2**80)  # fmt: skip
        d.send("task-failed", uuid="surrogate", exception=["x"], traceback=None,
               runtime="slow")  # fmt: skip
        d.send("task-received", uuid="after", name="app.x", args="(1,)")
        d.send("task-succeeded", uuid="after", result="2", runtime=0.5)
    wait_for(lambda: (t := svc.task("after")) and t["state"] == "SUCCESS", 10)
    svc.flush()
    store = svc._store
    assert store is not None
    bad = store.get_task("surrogate")
    good = store.get_task("after")
    assert good is not None and good["state"] == "SUCCESS"
    assert bad is not None and bad["state"] == "FAILURE"
    assert (bad["args"], bad["kwargs"], bad["exception"]) == (
        "('\\ud800',)", "{'k': [1]}", "['x']"
    )  # fmt: skip
    assert bad["retries"] is None and bad["runtime"] is None
    f = svc.figures()
    # a surrogate, a kwargs dict, a huge int, an exception list, a runtime string
    assert f["fields_coerced"] == 5
    assert f["store_rows_dropped"] == 0 and f["events_dropped"] == 0
    stats = svc.task_stats(since=0, bucket=1e12)
    assert [(r["name"], r["succeeded"], r["failed"]) for r in stats] == [("app.x", 1, 1)]


def test_a_refresh_with_the_broker_down_is_an_error_not_an_empty_answer(make_service):
    app = Celery("down", broker=f"redis://127.0.0.1:{free_port()}/0")
    svc = make_service(app, db=None, inspect_timeout=1.0)
    svc.ensure_started()
    start = time.monotonic()
    with pytest.raises(OperationalError, match="Connection refused"):
        svc.inspect(refresh=True)
    assert time.monotonic() - start < 5
    assert svc.inspect() == {}  # the cache, without refresh, is still an answer


def test_a_task_running_on_a_killed_worker_is_lost(module_broker, app, make_service,
                                                   tmp_path):  # fmt: skip
    svc = make_service(app)
    assert svc.wait_connected(10)
    # prefork: a solo worker sends no event (heartbeats included) while its task runs
    w = _worker(module_broker, "doomed@test", str(tmp_path / "doomed.log"), "doomed", "prefork")
    try:
        w.wait_ready(app)

        result = app.send_task("mon.sleep", (60,), queue="doomed")
        wait_for(
            lambda: (t := svc.task(result.id)) and t["state"] == "STARTED",
            20,
            msg=lambda: (svc.task(result.id), w.log_text()),
        )
        children = psutil.Process(w.proc.pid).children(recursive=True)
        os.kill(w.proc.pid, signal.SIGKILL)
        w.proc.wait(10)
        for child in children:  # the pool process running the task
            child.kill()
        # heartbeats every second: offline after 2 s, then the running task is LOST
        t = wait_for(lambda: (t := svc.task(result.id)) and t["state"] == "LOST" and t, 20)
        assert t["worker"] == "doomed@test"
        assert [h["state"] for h in t["history"]][-2:] == ["STARTED", "LOST"]
        assert svc.worker("doomed@test")["status"] is False
        svc.flush()
        assert svc.query_tasks(state="LOST", source="store").total == 1
    finally:
        w.stop()


@pytest.fixture
def busy_worker(module_broker, app, tmp_path) -> Iterator[WorkerProcess]:
    """One pool process (prefork, so its events flow while a task runs), queue ``busy``."""
    w = _worker(module_broker, "busy@test", str(tmp_path / "busy.log"), "busy", "prefork")
    try:
        w.wait_ready(app)
        yield w
    finally:
        w.stop()


def test_a_revoked_task_waiting_behind_a_long_one_shows_revoke_requested_until_confirmed(
    busy_worker, app, make_service
):
    svc = make_service(app)
    assert svc.wait_connected(10)

    long = app.send_task("mon.sleep", (3,), queue="busy")
    waiting = app.send_task("mon.add", (1, 1), queue="busy")  # reserved behind the long task
    wait_for(lambda: (t := svc.task(waiting.id)) and t["state"] == "RECEIVED", 20)
    app.control.revoke(waiting.id)
    assert svc.revoke_requested([waiting.id, long.id, "unknown"]) == 2
    t = svc.task(waiting.id)
    assert t["state"] == "RECEIVED"
    assert t["history"][-1]["state"] == "revoke-requested"
    svc.flush()
    assert svc.query_tasks(search="revoke-requested", source="store").total == 0  # not text
    stored = svc._store.get_task(waiting.id)
    assert stored["history"][-2] == "revoke-requested"  # the marker is in the history too
    # when its turn comes the worker discards it: confirmed
    t = wait_for(lambda: (t := svc.task(waiting.id)) and t["state"] == "REVOKED" and t, 20)
    states = [h["state"] for h in t["history"]]
    assert states.index("revoke-requested") < states.index("REVOKED")


@pytest.fixture
def backend_worker(module_broker, app, tmp_path) -> Iterator[WorkerProcess]:
    """A worker (queue ``results``) storing results in Redis, sending no events."""
    w = WorkerProcess(
        None, module_broker, "silent@test", str(tmp_path / "silent.log"),
        args=("-P", "solo", "-c", "1", "-Q", "results"), celery_app="tests.monitor.worker_app",
        env={"CELERYMON_MONITOR_TEST_BROKER": module_broker,
             "CELERYMON_MONITOR_TEST_BACKEND": module_broker}, loglevel="warning",
    )  # fmt: skip
    try:
        w.wait_ready(app)
        yield w
    finally:
        w.stop()


def _backend_app(broker: str) -> Celery:
    app = Celery("with_backend", broker=broker, backend=broker)
    app.conf.task_send_sent_event = True
    return app


def test_tasks_whose_end_never_came_as_an_event_are_reconciled_with_the_backend(
    backend_worker, module_broker, make_service, monkeypatch
):
    from flask_celerymon.monitor import reconcile

    monkeypatch.setattr(reconcile, "MIN_AGE", 0.5)
    app = _backend_app(module_broker)
    svc = make_service(app, enable_events=False)  # the worker sends no event: only task-sent
    assert svc.wait_connected(10)
    ok = app.send_task("mon.add", (2, 2), queue="results")
    bad = app.send_task("mon.fail", ("nope",), queue="results")
    assert ok.get(timeout=20) == 4
    with pytest.raises(ValueError):
        bad.get(timeout=20)
    t = wait_for(lambda: (t := svc.task(ok.id)) and t["state"] == "SUCCESS" and t, 20)
    assert t["result"] == "4" and t["succeeded"] is not None
    t = wait_for(lambda: (t := svc.task(bad.id)) and t["state"] == "FAILURE" and t, 20)
    assert t["exception"] == "ValueError('nope')"
    assert svc.figures()["tasks_reconciled"] == 2


def test_a_killed_monitor_reports_the_gap_and_reconciles_after_a_restart(
    backend_worker, module_broker, make_service, monkeypatch, tmp_path
):
    import subprocess
    import sys

    from flask_celerymon.monitor import reconcile
    from flask_celerymon.monitor.sqlite_store import SQLiteStore

    monkeypatch.setattr(reconcile, "MIN_AGE", 0.5)
    db = str(tmp_path / "killed.sqlite3")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.monitor.monitor_proc", module_broker, module_broker, db],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready"
        app = _backend_app(module_broker)
        seen = app.send_task("mon.sleep", (2,), queue="results")
        reader = SQLiteStore(db)
        try:  # the killed monitor stored the task as sent
            wait_for(lambda: (r := reader.get_task(seen.id)) and r["state"] == "PENDING", 20)
        finally:
            reader.close()
        killed_at = time.time()
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert seen.get(timeout=20) == 2  # finished while nobody consumed its events
    svc = make_service(app, db=db, enable_events=False)
    assert svc.wait_connected(10)
    f = wait_for(lambda: (f := svc.figures())["gaps_total"] and f, 10)
    (gap,) = f["gaps"]
    assert gap["reason"] == "the monitor stopped without a clean shutdown (killed?)"
    assert gap["start"] <= killed_at and gap["seconds"] >= time.time() - killed_at - 5
    assert f["gap_seconds_total"] == pytest.approx(gap["seconds"], abs=0.001)
    t = wait_for(lambda: (t := svc.task(seen.id)) and t["state"] == "SUCCESS" and t, 20)
    assert t["result"] == "2"
    svc.flush()
    assert svc._store.get_task(seen.id)["state"] == "SUCCESS"


def test_a_task_that_retried_twice_then_succeeded_tells_one_story(tokyo_worker, app, make_service):
    svc = make_service(app)
    assert svc.wait_connected(10)

    since = time.time() - 1
    r = app.send_task("mon.flaky", (2,))
    t = wait_for(lambda: (t := svc.task(r.id)) and t["state"] == "SUCCESS" and t, 30)
    assert t["result"] == "2" and t["retries"] == 2
    # a retry is sent from the task itself (parent_id = its own id): not its own parent/child
    assert t["parent_id"] is None and t["children"] == []
    assert [h["state"] for h in t["history"]].count("RETRY") == 2
    # "retried" means the same everywhere: retries of the task (task-retried events)
    assert svc.counters()["tasks"]["mon.flaky"]["task-retried"] == 2
    (row,) = svc.task_stats(since=since, bucket=1e12, name="mon.flaky")
    assert (row["succeeded"], row["failed"], row["retried"]) == (1, 0, 2)
    svc.flush()
    (row,) = svc._store.task_stats(since, time.time() + 1, 1e12, "mon.flaky")
    assert row["retried"] == 2


def test_the_time_between_two_runs_is_reported_as_a_gap(celery_app, make_service, tmp_path):
    db = str(tmp_path / "runs.sqlite3")
    first = make_service(celery_app, db=db)
    assert first.wait_connected(10)
    first.flush()
    stopping = time.time()
    first.stop()
    stopped = time.time()
    second = make_service(celery_app, db=db)
    assert second.wait_connected(10)
    (gap,) = second.figures()["gaps"]
    assert gap["reason"] == "the monitor was not running"
    assert stopping <= gap["start"] <= stopped <= gap["end"]


def test_a_queue_whose_consumers_left_is_still_measured(busy_worker, app, make_service):
    svc = make_service(app)
    assert svc.wait_connected(10)

    def consumed() -> list[str]:
        info = svc.inspect(refresh=True).get("busy@test") or {}
        return [q["name"] for q in info.get("active_queues") or ()]

    wait_for(lambda: "busy" in consumed(), 20)
    app.control.cancel_consumer("busy", destination=["busy@test"], reply=True, timeout=5)
    assert "busy" not in consumed()
    app.send_task("mon.add", (1, 1), queue="busy")  # nobody takes it now
    lengths = wait_for(
        lambda: (d := {q["name"]: q["messages"] for q in svc.queues(max_age=0)}).get("busy") and d,
        10,
    )
    assert lengths["busy"] == 1


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(_INT_FIELDS)),
    st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([2**63 - 1, 2**63, -(2**63), 9.3e18, -9.3e18, 9.223372036854775e18]),
    ),
)
def test_an_int_field_is_an_int64_or_left_out(key, value):
    """Any number off the wire becomes an integer SQLite and PostgreSQL can store (a whole
    float past int64, 9.3e18, was refused by the store: the task's row was dropped) or the
    field is left out."""
    try:
        out = coerce_field(key, value)
    except _Drop:
        return
    assert type(out) is int and -(2**63) < out < 2**63, (value, out)
    assert out == value
