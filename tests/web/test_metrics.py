"""``<prefix>/metrics`` scraped after real tasks ran on a real worker, parsed and asserted."""

from __future__ import annotations

import json
import os
import re
import socket
from typing import Any

import pytest
import yaml

from tests.apps import basic
from tests.conftest import Samples, WorkerProcess, metric_value, parse_metrics
from tests.web.conftest import Monitored, _dbs, run_monitored

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def env(redis_server, tmp_path_factory):
    """The monitored app and a real worker (queues celery, high); ``idle`` has no consumer."""
    with run_monitored(
        redis_server, tmp_path_factory, "metrics", CELERY_MONITOR_QUEUES=["idle"]
    ) as monitored:
        assert monitored.service.wait_connected(10)
        yield monitored


def scrape(env: Monitored) -> Samples:
    resp = env.client().get("/monitor/metrics")
    assert resp.status_code == 200
    return parse_metrics(resp.get_data(as_text=True))


value = metric_value


def wait(env: Monitored, predicate: Any, timeout: float = 20.0) -> Any:
    """``env.wait_for`` whose failure shows the service's figures (is it consuming?)."""
    try:
        return env.wait_for(predicate, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; service figures: {env.service.figures()}") from None


def finished(env: Monitored, ids: list[str]) -> bool:
    states = [(env.service.task(i) or {}).get("state") for i in ids]
    return all(s in ("SUCCESS", "FAILURE") for s in states)


def test_scrape_after_real_tasks_counts_them_exactly(env):
    before = scrape(env)
    with env.app.app_context():
        ok = [basic.celery.submit(basic.add, i, 1) for i in range(3)]
        bad = basic.celery.submit(basic.fail, "boom")
        assert [f.result(timeout=30) for f in ok] == [1, 2, 3]
        assert isinstance(bad.exception(timeout=30), Exception)
    wait(env, lambda: finished(env, [f.id for f in ok] + [bad.id]))
    # submit() sends the dispatch task; its events and our labels name the function
    add, fail = "tests.apps.basic:add", "tests.apps.basic:fail"
    after = scrape(env)
    w = env.worker_name

    def delta(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    for etype in ("task-received", "task-started", "task-succeeded"):
        assert delta("flower_events_total", worker=w, type=etype, task=add) == 3
    assert delta("flower_events_total", worker=w, type="task-failed", task=fail) == 1
    assert delta("flower_task_runtime_seconds_count", worker=w, task=add) == 3
    assert 0 < delta("flower_task_runtime_seconds_sum", worker=w, task=add) < 3
    assert delta("flower_task_runtime_seconds_bucket", worker=w, task=add, le="+Inf") == 3
    assert value(after, "flower_worker_prefetched_tasks", worker=w, task=add) == 0
    assert value(after, "flower_task_prefetch_time_seconds", worker=w, task=add) == 0

    tasks = "celerymon_tasks_total"
    assert delta(tasks, task=add, worker="", state="PENDING", exception="") == 3
    assert delta(tasks, task=add, worker=w, state="SUCCESS", exception="") == 3
    assert delta(tasks, task=fail, worker=w, state="FAILURE", exception="ValueError") == 1
    # the test process sent the tasks with task-sent events, so each wait was measured
    assert delta("celerymon_task_queue_wait_seconds_count", task=add, worker=w) == 3
    assert delta("celerymon_task_queue_wait_seconds_count", task=fail, worker=w) == 1
    assert 0 <= delta("celerymon_task_queue_wait_seconds_sum", task=add, worker=w) < 30

    assert value(after, "flower_worker_online", worker=w) == 1
    assert value(after, "celerymon_workers_online") >= 1
    assert value(after, "celerymon_event_stream_connected") == 1
    assert delta("celerymon_events_received_total") >= 4 * 4
    assert value(after, "celerymon_events_malformed_total") == 0
    assert value(after, "celerymon_broker_up") == 1
    assert value(after, "celerymon_queue_length", queue="celery") == 0

    # the executing count comes from the worker's heartbeats (every 2 s)
    wait(env, lambda: (env.service.worker(w) or {}).get("active") is not None)
    executing = "flower_worker_number_of_currently_executing_tasks"
    assert value(scrape(env), executing, worker=w) == env.service.worker(w)["active"] == 0


def test_queue_length_and_latency_of_a_queue_nobody_consumes(env):
    with env.app.app_context():
        futures = [basic.celery.submit(basic.add, i, i, queue="idle") for i in range(2)]
    wait(
        env, lambda: all((env.service.task(f.id) or {}).get("state") == "PENDING" for f in futures)
    )
    try:
        # queue lengths are cached for a second
        wait(env, lambda: value(scrape(env), "celerymon_queue_length", queue="idle") == 2)
        s = scrape(env)
        assert 0 < value(s, "celerymon_queue_latency_seconds", queue="idle") < 60
        assert value(s, "celerymon_queue_latency_seconds", queue="celery") == 0
    finally:
        with env.celery_app.connection_for_write() as conn:
            conn.default_channel.client.delete("idle")


def test_purged_worker_leaves_no_series_behind(env, tmp_path):
    name = f"metrics-b-{next(_dbs)}@{socket.gethostname()}"
    other = WorkerProcess(
        "tests.apps.basic:create_app",
        env.broker,
        name,
        str(tmp_path / "worker-b.log"),
        args=("-P", "solo", "-Q", "b-only", "-E"),
    )
    try:
        other.wait_ready(env.celery_app)
        with env.app.app_context():
            future = basic.celery.submit(basic.add, 20, 22, queue="b-only")
            assert future.result(timeout=30) == 42
        wait(env, lambda: finished(env, [future.id]))
        s = scrape(env)
        assert value(s, "flower_worker_online", worker=name) == 1
        add = "tests.apps.basic:add"
        assert value(s, "flower_events_total", worker=name, type="task-succeeded", task=add) == 1
    finally:
        other.stop()
    wait(env, lambda: (env.service.worker(name) or {}).get("status") is False)
    purged = value(scrape(env), "celerymon_workers_purged_total")
    assert env.service.purge_worker(name)
    s = scrape(env)
    assert [k for k in s if ("worker", name) in k[1]] == []
    assert value(s, "celerymon_workers_purged_total") == purged + 1
    assert value(s, "flower_worker_online", worker=env.worker_name) == 1


def test_labels_are_bounded_to_names_never_task_ids(env):
    with env.app.app_context():
        basic.celery.submit(basic.add, 1, 1).result(timeout=30)
    allowed = {"worker", "type", "task", "state", "exception", "queue", "le"}
    allowed |= {"method", "status", "url_rule", "version"}  # the app's request metrics
    for (name, labels), _v in scrape(env).items():
        assert {k for k, _ in labels} <= allowed, name
        assert not any(UUID_RE.search(v) for _, v in labels), (name, labels)


def test_metrics_speak_text_format_and_openmetrics(env):
    client = env.client()
    resp = client.get("/monitor/metrics")
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# TYPE flower_events_total counter" in resp.get_data(as_text=True)
    resp = client.get("/monitor/metrics", headers={"Accept": "application/openmetrics-text"})
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert resp.get_data(as_text=True).endswith("# EOF\n")


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:flower|celerymon|flask)_[a-z_]+)\b", expr))


def _exposed(samples: Samples) -> set[str]:
    return {name for name, _labels in samples}


def test_shipped_dashboard_and_alerts_use_only_exposed_metrics(env):
    with env.app.app_context():
        basic.celery.submit(basic.add, 1, 1).result(timeout=30)
    env.client().get("/no-such-page")  # so the request metrics have samples
    # and a heartbeat, for the executing-tasks gauge
    wait(env, lambda: (env.service.worker(env.worker_name) or {}).get("active") is not None)
    exposed = _exposed(scrape(env))
    with open(os.path.join(ROOT, "docs", "prometheus", "celerymon-alerts.yml")) as fh:
        rules = yaml.safe_load(fh)
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {"CeleryHighTaskFailureRate", "CeleryQueueTooLong", "CeleryWorkerDown"} <= set(alerts)
    used = set()
    for rule in alerts.values():
        used |= _metric_names(rule["expr"])
    with open(os.path.join(ROOT, "docs", "grafana", "celerymon-dashboard.json")) as fh:
        dashboard = json.load(fh)
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", ())]
    assert len(exprs) >= 10
    for expr in exprs:
        used |= _metric_names(expr)
    assert used, "no metric referenced"
    assert sorted(used - exposed) == []


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", ()))
    return out
