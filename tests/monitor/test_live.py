"""The event path end to end: a real worker on a real Redis, the service consuming its events."""

from __future__ import annotations

import json

import pytest
import redis
from celery import Celery

from flask_celerymon.monitor import MonitorService

from .conftest import WorkerProcess, wait_for

FLOWER_TASK_KEYS = {
    "uuid", "name", "state", "received", "sent", "started", "rejected", "succeeded", "failed",
    "retried", "revoked", "args", "kwargs", "eta", "expires", "retries", "worker", "result",
    "exception", "timestamp", "runtime", "traceback", "exchange", "routing_key", "clock",
    "client", "root", "root_id", "parent", "parent_id", "children",
}  # fmt: skip
FLOWER_WORKER_KEYS = {
    "hostname", "pid", "freq", "heartbeats", "clock", "active", "processed", "loadavg",
    "sw_ident", "sw_ver", "sw_sys", "status",
}  # fmt: skip


@pytest.fixture(scope="module")
def live(worker_app: Celery, real_worker: WorkerProcess, tmp_path_factory) -> MonitorService:
    from flask_celerymon.monitor import MonitorSettings

    db = str(tmp_path_factory.mktemp("live") / "celerymon.sqlite3")
    svc = MonitorService(
        worker_app,
        MonitorSettings(db=db, enable_events_interval=0.3, flush_interval=0.05,
                        inspect_timeout=1.0),
    )  # fmt: skip
    assert svc.wait_connected(10)
    yield svc
    svc.stop()


def test_service_switches_on_events_of_a_worker_started_without_them(live, worker_app):
    wait_for(lambda: live.worker("monworker@test"), timeout=15)
    result = worker_app.send_task("mon.add", (2, 3))
    assert result.id
    task = wait_for(lambda: (t := live.task(result.id)) and t["state"] == "SUCCESS" and t, 15)
    assert task["name"] == "mon.add"
    assert task["worker"] == "monworker@test"
    assert task["args"] == "(2, 3)"
    assert task["result"] == "5"
    assert task["runtime"] > 0
    assert [h["state"] for h in task["history"]][-3:] == ["RECEIVED", "STARTED", "SUCCESS"]


def test_task_dicts_carry_every_flower_field(live, worker_app):
    r = worker_app.send_task("mon.fail", ("planned failure",))
    task = wait_for(lambda: (t := live.task(r.id)) and t["state"] == "FAILURE" and t, 15)
    assert set(task) >= FLOWER_TASK_KEYS
    assert task["exception"] == "ValueError('planned failure')"
    assert "Traceback" in task["traceback"]
    assert task["root_id"] == r.id
    json.dumps(task)  # JSON-ready


def test_children_are_linked_to_their_parent(live, worker_app):
    r = worker_app.send_task("mon.spawn", (2,))

    def children():
        task = live.task(r.id)
        return task is not None and len(task["children"]) == 2 and task["children"]

    kids = wait_for(children, 15)
    for kid in kids:
        child = wait_for(lambda kid=kid: live.task(kid), 15)
        assert child["parent_id"] == r.id
        assert child["root_id"] == r.id


def test_worker_shows_online_with_flower_fields_and_counters(live):
    w = wait_for(lambda: (w := live.worker("monworker@test")) and w["status"] and w, 15)
    assert set(w) >= FLOWER_WORKER_KEYS
    wait_for(lambda: live.worker("monworker@test").get("worker-heartbeat", 0) >= 1, 15)
    assert live.worker_status()["monworker@test"] is True


def test_query_filters_live_tasks_by_state_name_and_search(live, worker_app):
    ids = [worker_app.send_task("mon.add", (i, 100)).id for i in range(3)]
    for tid in ids:
        wait_for(lambda tid=tid: (t := live.task(tid)) and t["state"] == "SUCCESS", 15)
    page = live.query_tasks(name="mon.add", state="SUCCESS", search='args:"100)"', limit=2)
    assert page.total >= 3
    assert len(page.tasks) == 2
    assert all(t["name"] == "mon.add" and "100)" in t["args"] for t in page.tasks)
    assert "mon.add" in live.task_types()


def test_inspect_answers_within_the_timeout_and_keeps_event_only_workers(live):
    import time

    t0 = time.monotonic()
    data = live.inspect(refresh=True)
    assert time.monotonic() - t0 < live.settings.inspect_timeout + 0.7
    assert "monworker@test" in data
    info = wait_for(lambda: live.inspect().get("monworker@test", {}).get("registered"), 5)
    assert "mon.add" in info
    assert live.inspect()["monworker@test"]["timestamp"] is not None
    wanted = {"stats", "active", "reserved", "revoked", "scheduled"}
    # one refresh asks every command; under load a reply may miss the timeout, so ask again
    wait_for(
        lambda: set(live.inspect("monworker@test", refresh=True)["monworker@test"]) >= wanted, 15
    )


def test_queue_lengths_come_from_redis(live, worker_app):
    r = redis.Redis.from_url(worker_app.conf.broker_url)
    r.lpush("extra-queue", b"x", b"y")
    r.lpush("extra-queue\x06\x163", b"z")
    from dataclasses import replace

    live.settings = replace(live.settings, queues=("extra-queue",))
    queues = {q["name"]: q["messages"] for q in live.queues(max_age=0)}
    assert queues["extra-queue"] == 3
    assert "celery" in queues


def test_a_stopped_worker_goes_offline_and_is_purged_everywhere(live, real_worker):
    # Runs last in this module: it stops the module's worker.
    heard = []
    live.add_purge_listener(heard.append)
    real_worker.stop()
    wait_for(lambda: live.worker("monworker@test")["status"] is False, 15)
    assert live.worker("monworker@test").get("worker-offline") == 1
    assert live.purge_worker("monworker@test") is True
    assert live.worker("monworker@test") is None
    assert "monworker@test" not in live.inspect()
    assert heard == ["monworker@test"]
