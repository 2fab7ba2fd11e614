"""The Prometheus collector over a real monitor service (events applied through its API).

The end-to-end scrape with a real worker lives in tests/web/test_metrics.py; here the events
are written out so every value the collector derives from them can be asserted exactly.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

import pytest
from celery import Celery
from prometheus_client import REGISTRY, generate_latest

from flask_celerymon.monitor import MonitorService, MonitorSettings
from flask_celerymon.monitor.metrics import (
    OTHER,
    PENDING_GRACE,
    Health,
    MonitorMetrics,
    check_health,
    exception_class,
)
from tests.conftest import Samples, metric_value, parse_metrics
from tests.monitor.conftest import wait_for

T0 = 1_700_000_000.0
W1 = "w1@host"
W2 = "w2@host"
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def scrape(metrics: MonitorMetrics) -> Samples:
    """One scrape of the collector's registry, parsed by prometheus_client."""
    return parse_metrics(generate_latest(metrics.registry).decode())


value = metric_value


def uid(i: int) -> str:
    return f"{i:08x}-0000-4000-8000-000000000000"


def ev(etype: str, i: int, ts: float, hostname: str = W1, **fields: Any) -> dict[str, Any]:
    return {"type": etype, "uuid": uid(i), "hostname": hostname, "timestamp": ts, **fields}


def run(i: int, name: str, t: float, worker: str = W1, runtime: float = 0.3, **sent: Any):
    """sent (by a client) at t, received t+1, started t+3, succeeded t+3+runtime."""
    return [
        ev("task-sent", i, t, "gen1@client", name=name, queue="celery", **sent),
        ev("task-received", i, t + 1, worker, name=name, eta=sent.get("eta")),
        ev("task-started", i, t + 3, worker),
        ev("task-succeeded", i, t + 3 + runtime, worker, runtime=runtime),
    ]


@pytest.fixture
def service(celery_app: Celery) -> MonitorService:
    svc = MonitorService(celery_app, MonitorSettings(enable_events=False), autostart=False)
    return svc


@pytest.fixture
def metrics(service: MonitorService) -> MonitorMetrics:
    return MonitorMetrics(service)


def test_flower_series_follow_flowers_update_rules(service, metrics):
    service.apply_events(run(1, "app.add", T0)[:3])  # sent, received, started
    s = scrape(metrics)
    assert value(s, "flower_events_total", worker=W1, type="task-received", task="app.add") == 1
    # a client's hostname (a new one per process) is no label: task-sent has worker=""
    assert value(s, "flower_events_total", worker="", type="task-sent", task="app.add") == 1
    # started - received, and the task left the prefetched count when it started
    assert value(s, "flower_task_prefetch_time_seconds", worker=W1, task="app.add") == 2.0
    assert value(s, "flower_worker_prefetched_tasks", worker=W1, task="app.add") == 0

    service.apply_events(run(1, "app.add", T0)[3:])
    s = scrape(metrics)
    assert value(s, "flower_task_prefetch_time_seconds", worker=W1, task="app.add") == 0.0
    assert value(s, "flower_task_runtime_seconds_count", worker=W1, task="app.add") == 1
    assert value(s, "flower_task_runtime_seconds_sum", worker=W1, task="app.add") == 0.3
    assert value(s, "flower_task_runtime_seconds_bucket", worker=W1, task="app.add", le="0.25") == 0
    assert value(s, "flower_task_runtime_seconds_bucket", worker=W1, task="app.add", le="0.5") == 1
    assert value(s, "flower_task_runtime_seconds_bucket", worker=W1, task="app.add", le="+Inf") == 1


def test_prefetched_counts_tasks_received_but_not_started(service, metrics):
    service.apply_events(run(1, "app.add", T0)[:2] + run(2, "app.add", T0)[:2])
    assert value(scrape(metrics), "flower_worker_prefetched_tasks", worker=W1, task="app.add") == 2
    service.apply_events([ev("task-revoked", 2, T0 + 2)])
    assert value(scrape(metrics), "flower_worker_prefetched_tasks", worker=W1, task="app.add") == 1


def test_tasks_with_an_eta_stay_out_of_prefetch_series(service, metrics):
    eta = "2027-01-15T08:00:00+00:00"
    service.apply_events(run(1, "app.later", T0, eta=eta))
    s = scrape(metrics)
    assert value(s, "flower_worker_prefetched_tasks", worker=W1, task="app.later") is None
    assert value(s, "flower_task_prefetch_time_seconds", worker=W1, task="app.later") is None


def test_task_counter_by_state_names_the_exception_class_of_failures(service, metrics):
    service.apply_events(run(1, "app.add", T0) + run(2, "app.add", T0))
    service.apply_events(
        [
            ev("task-received", 3, T0, name="app.fail"),
            ev("task-started", 3, T0 + 1),
            ev("task-failed", 3, T0 + 2, exception="KeyError('missing')"),
            ev("task-received", 4, T0, W2, name="app.fail"),
            ev("task-failed", 4, T0 + 1, W2, exception="ValueError('x')"),
        ]
    )
    s = scrape(metrics)
    total = "celerymon_tasks_total"
    assert value(s, total, task="app.add", worker=W1, state="SUCCESS", exception="") == 2
    assert value(s, total, task="app.add", worker="", state="PENDING", exception="") == 2
    assert value(s, total, task="app.fail", worker=W1, state="FAILURE", exception="KeyError") == 1
    assert value(s, total, task="app.fail", worker=W2, state="FAILURE", exception="ValueError") == 1
    assert value(s, total, task="app.fail", worker=W2, state="RECEIVED", exception="") == 1


def test_a_runtime_that_is_no_finite_number_stays_out_of_the_runtime_series(service, metrics):
    # Off the wire a runtime may be an int past a float's range (float() raises), NaN or
    # infinite: the state keeps no runtime for them, and neither does the histogram (a NaN
    # would make its sum NaN for good); the task is still counted, no listener fails.
    hostile = [10**400, float("nan"), float("inf"), -float("inf")]
    evs = [ev("task-succeeded", i, T0, runtime=r) for i, r in enumerate([*hostile, 0.5, 2])]
    service.apply_events(evs)
    s = scrape(metrics)
    assert value(s, "celerymon_listener_errors_total") == 0
    assert value(s, "flower_events_total", worker=W1, type="task-succeeded", task="") == 6
    assert value(s, "celerymon_tasks_total", worker=W1, task="", state="SUCCESS", exception="") == 6
    assert value(s, "flower_task_runtime_seconds_count", worker=W1, task="") == 2
    assert value(s, "flower_task_runtime_seconds_sum", worker=W1, task="") == 2.5
    assert value(s, "flower_task_runtime_seconds_bucket", worker=W1, task="", le="+Inf") == 2
    assert [service.task(uid(i))["runtime"] for i in range(len(hostile))] == [None] * 4


def test_exception_class_is_read_from_the_event_text():
    assert exception_class("ValueError('boom')") == "ValueError"
    assert exception_class("myapp.errors.Conflict: id 4") == "Conflict"
    assert exception_class("TimeLimitExceeded(60,)") == "TimeLimitExceeded"
    assert exception_class("<object at 0x1>") == "unknown"
    assert exception_class(None) == "unknown"


def test_queue_wait_is_started_minus_the_later_of_sent_and_eta(service, metrics):
    service.apply_events(run(1, "app.add", T0))  # sent T0, started T0+3: 3 s
    eta = "2027-01-15T08:00:00+00:00"
    eta_ts = datetime.fromisoformat(eta).timestamp()
    service.apply_events(
        [
            ev("task-sent", 2, eta_ts - 100, "gen1@client", name="app.add", eta=eta),
            ev("task-received", 2, eta_ts - 99, name="app.add", eta=eta),
            ev("task-started", 2, eta_ts + 0.2),  # 0.2 s after its eta
        ]
    )
    s = scrape(metrics)
    name = "celerymon_task_queue_wait_seconds"
    assert value(s, name + "_count", task="app.add", worker=W1) == 2
    assert value(s, name + "_sum", task="app.add", worker=W1) == pytest.approx(3.2)
    assert value(s, name + "_bucket", task="app.add", worker=W1, le="0.1") == 0
    assert value(s, name + "_bucket", task="app.add", worker=W1, le="0.25") == 1
    assert value(s, name + "_bucket", task="app.add", worker=W1, le="2.5") == 1
    assert value(s, name + "_bucket", task="app.add", worker=W1, le="5.0") == 2


def test_queue_wait_is_measured_when_the_sent_event_comes_last(service, metrics):
    sent, received, started, succeeded = run(1, "app.add", T0)
    service.apply_events([received, started, sent, succeeded])
    s = scrape(metrics)
    assert value(s, "celerymon_task_queue_wait_seconds_count", task="app.add", worker=W1) == 1
    assert value(s, "celerymon_task_queue_wait_seconds_sum", task="app.add", worker=W1) == 3


def test_queue_wait_is_measured_when_the_sent_event_reads_later_than_started(service, metrics):
    # the client stamps task-sent after the message left: on a busy machine that can read
    # later than the worker's task-started, and arrive last
    sent, received, started, succeeded = run(1, "app.add", T0)
    sent = {**sent, "timestamp": started["timestamp"] + 0.01}
    service.apply_events([received, started, succeeded, sent])
    s = scrape(metrics)
    assert value(s, "celerymon_task_queue_wait_seconds_count", task="app.add", worker=W1) == 1
    assert value(s, "celerymon_task_queue_wait_seconds_sum", task="app.add", worker=W1) == 0


def test_a_retry_is_measured_from_its_own_sent_event(service, metrics):
    first = run(1, "app.add", T0)
    service.apply_events(first[:3])  # sent T0, started T0+3
    service.apply_events(
        [
            ev("task-retried", 1, T0 + 4, exception="Retry()"),
            ev("task-sent", 1, T0 + 5, W1, name="app.add", queue="celery"),
            ev("task-received", 1, T0 + 5.5, name="app.add"),
            ev("task-started", 1, T0 + 6),
        ]
    )
    s = scrape(metrics)
    assert value(s, "celerymon_task_queue_wait_seconds_count", task="app.add", worker=W1) == 2
    assert value(s, "celerymon_task_queue_wait_seconds_sum", task="app.add", worker=W1) == 4


def test_queue_wait_needs_the_sent_event(service, metrics):
    service.apply_events(run(1, "app.add", T0)[1:])  # no task-sent seen
    s = scrape(metrics)
    assert value(s, "celerymon_task_queue_wait_seconds_count", task="app.add", worker=W1) is None


def test_task_names_past_the_cap_share_one_label(service):
    metrics = MonitorMetrics(service, max_task_names=2)
    for i, name in enumerate(["a", "b", "c", "d"]):
        service.apply_events(run(i, name, T0))
    s = scrape(metrics)
    ok = {"worker": W1, "type": "task-succeeded"}
    assert value(s, "flower_events_total", task="a", **ok) == 1
    assert value(s, "flower_events_total", task="b", **ok) == 1
    assert value(s, "flower_events_total", task="c", **ok) is None
    assert value(s, "flower_events_total", task=OTHER, **ok) == 2


def test_label_values_never_hold_task_ids(service, metrics):
    for i in range(20):
        service.apply_events(run(i, f"app.t{i % 3}", T0 + i))
    names = set()
    for (name, labels), _v in scrape(metrics).items():
        names.update(k for k, _ in labels)
        for _, v in labels:
            assert not UUID_RE.search(v), (name, labels)
    assert names <= {"worker", "type", "task", "state", "exception", "queue", "le"}


def test_purging_a_worker_removes_its_label_sets(service, metrics):
    service.apply_events(run(1, "app.add", T0, W1) + run(2, "app.add", T0, W2))
    service.apply_events([ev("worker-offline", 0, T0 + 9, W1)])
    assert service.purge_worker(W1)
    s = scrape(metrics)
    assert not [k for k in s if (("worker", W1) in k[1])]
    assert value(s, "flower_events_total", worker=W2, type="task-succeeded", task="app.add") == 1
    assert value(s, "celerymon_workers_purged_total") == 1


def test_worker_series_are_read_from_the_service_at_scrape_time(service, metrics):
    now = time.time()
    service.apply_events(
        [
            {"type": "worker-online", "hostname": W1, "timestamp": now, "freq": 2.0},
            {"type": "worker-heartbeat", "hostname": W1, "timestamp": now, "freq": 2.0,
             "active": 3},
            {"type": "worker-online", "hostname": W2, "timestamp": now - 1},
            {"type": "worker-offline", "hostname": W2, "timestamp": now},
            # the farewell of a worker never seen registers nothing (as Celery's state)
            {"type": "worker-offline", "hostname": "never@seen", "timestamp": now},
            ev("task-sent", 1, now, "gen1@client", name="app.add", queue="celery"),
        ]
    )  # fmt: skip
    s = scrape(metrics)
    assert value(s, "flower_worker_online", worker=W1) == 1
    assert value(s, "flower_worker_online", worker=W2) == 0
    assert value(s, "flower_worker_number_of_currently_executing_tasks", worker=W1) == 3
    # a client that only sent a task is not a worker
    assert value(s, "flower_worker_online", worker="gen1@client") is None
    assert value(s, "celerymon_workers_online") == 1
    assert value(s, "celerymon_workers") == 2


def test_service_figures_are_exported(service, metrics):
    service.apply_events([{"type": "task-received"}, *run(1, "app.add", T0)])
    s = scrape(metrics)
    assert value(s, "celerymon_events_received_total") == 5
    assert value(s, "celerymon_events_applied_total") == 4
    assert value(s, "celerymon_events_malformed_total") == 1
    # dropped: every event received and never applied (received = applied + dropped)
    assert value(s, "celerymon_events_dropped_total") == 1
    assert value(s, "celerymon_event_stream_connected") == 0
    assert value(s, "celerymon_window_tasks") == 1
    assert value(s, "celerymon_ingest_lag_seconds") > 0


def test_a_batch_ending_in_an_event_of_no_finite_timestamp_leaves_the_lag_alone(service, metrics):
    # The last event of a batch stamps the ingest lag; off the wire its timestamp may be an
    # int past a float's range (time.time() - it raised OverflowError after the batch was
    # applied: the consumer then counted the applied batch as dropped) or infinite (-inf made
    # the largest lag infinite for good).
    service.apply_events(run(1, "app.add", T0))
    lag_max = service.figures()["lag_max"]
    for ts in (10**400, -(10**400), float("-inf"), float("inf"), float("nan")):
        service.apply_events([{"type": "worker-heartbeat", "hostname": W1, "timestamp": ts}])
    fig = service.figures()
    assert fig["events_applied"] == 4 + 5
    assert fig["events_dropped"] == 0
    assert fig["lag"] <= lag_max == fig["lag_max"] < float("inf")
    s = scrape(metrics)
    assert value(s, "celerymon_ingest_lag_max_seconds") == lag_max


def test_two_services_keep_separate_registries_off_the_global_one(redis_url):
    a = MonitorService(Celery("a", broker=redis_url), MonitorSettings(), autostart=False)
    b = MonitorService(Celery("b", broker=redis_url), MonitorSettings(), autostart=False)
    ma, mb = MonitorMetrics(a), MonitorMetrics(b)
    a.apply_events(run(1, "app.add", T0))
    ok = {"worker": W1, "type": "task-succeeded", "task": "app.add"}
    assert value(scrape(ma), "flower_events_total", **ok) == 1
    assert value(scrape(mb), "flower_events_total", **ok) is None
    assert REGISTRY.get_sample_value("flower_events_total", ok) is None


def test_bad_buckets_and_caps_are_refused(service):
    with pytest.raises(ValueError, match=r"^runtime_buckets must be increasing numbers"):
        MonitorMetrics(service, runtime_buckets=[1.0, 0.5])
    with pytest.raises(ValueError, match=r"^queue_wait_buckets must be increasing numbers"):
        MonitorMetrics(service, queue_wait_buckets=[])
    with pytest.raises(ValueError, match=r"^max_task_names must be an integer >= 1, not 0$"):
        MonitorMetrics(service, max_task_names=0)


def test_queue_length_and_latency_come_from_the_broker_and_sent_events(redis_url, make_service):
    app = Celery("latency", broker=redis_url)
    app.conf.task_send_sent_event = True
    svc = make_service(app, db=False, queues=("idle",), enable_events=False)
    metrics = MonitorMetrics(svc)
    assert svc.wait_connected(10)
    for i in range(3):
        app.send_task("app.nobody_runs_me", args=(i,), queue="idle")
    wait_for(lambda: len(svc.query_tasks(state="PENDING").tasks) == 3)
    s = scrape(metrics)
    assert value(s, "celerymon_broker_up") == 1
    assert value(s, "celerymon_queue_length", queue="idle") == 3
    assert value(s, "celerymon_queue_length", queue="celery") == 0
    assert 0 < value(s, "celerymon_queue_latency_seconds", queue="idle") < 30
    assert value(s, "celerymon_queue_latency_seconds", queue="celery") == 0

    # the queue is emptied behind the monitor's back (a purge): latency drops to 0 and the
    # three tasks no longer count once a new one waits
    time.sleep(PENDING_GRACE)  # tasks sent just before an "empty" answer are kept
    with app.connection_for_write() as conn:
        conn.default_channel.client.delete("idle")
    cleared = time.time()
    wait_for(lambda: value(scrape(metrics), "celerymon_queue_length", queue="idle") == 0)
    assert value(scrape(metrics), "celerymon_queue_latency_seconds", queue="idle") == 0
    app.send_task("app.nobody_runs_me", args=(4,), queue="idle")
    latency = wait_for(
        lambda: value(scrape(metrics), "celerymon_queue_latency_seconds", queue="idle")
    )
    assert 0 < latency <= time.time() - cleared


def test_latency_ignores_a_task_received_before_its_sent_event(celery_app, service, metrics):
    celery_app.send_task("app.add", queue="celery")  # one real message waits in the queue
    now = time.time()
    service.apply_events(
        [
            ev("task-received", 1, now - 59, name="app.add"),
            ev("task-sent", 1, now - 60, "gen1@client", name="app.add", queue="celery"),
        ]
    )
    s = scrape(metrics)
    assert value(s, "celerymon_queue_length", queue="celery") == 1
    assert value(s, "celerymon_queue_latency_seconds", queue="celery") is None
    service.apply_events(
        [ev("task-sent", 2, now - 5, "gen1@client", name="app.add", queue="celery")]
    )
    latency = value(scrape(metrics), "celerymon_queue_latency_seconds", queue="celery")
    assert 5 <= latency < 10


def test_health_needs_a_running_service_consuming_events(celery_app, make_service):
    svc = make_service(celery_app, db=False, enable_events=False)
    down = {"service": False, "events": False, "broker": True}
    assert check_health(svc) == Health(False, "the monitor service is not running", down)
    svc.start()
    assert svc.wait_connected(10)
    assert check_health(svc) == Health(True, "", {"service": True, "events": True, "broker": True})
    svc.stop()
    assert check_health(svc).checks == down


def test_health_names_a_broker_that_does_not_answer():
    svc = MonitorService(Celery("nobroker", broker="redis://127.0.0.1:1/0"), autostart=False)
    health = check_health(svc, timeout=1.0)
    assert health.checks["broker"] is False
    assert health.reason == (
        "the monitor service is not running; the broker does not answer: OperationalError: "
        "Error 111 connecting to 127.0.0.1:1. Connection refused."
    )


def test_store_flushes_are_exported(celery_app, tmp_path):
    """``celerymon_store_flushes_total`` and ``..._flush_seconds_total`` count the history
    store's writes (a scraper, or the bench, tells from them that a burst is written)."""
    svc = MonitorService(
        celery_app,
        MonitorSettings(db=str(tmp_path / "m.sqlite3"), enable_events=False),
        autostart=False,
    )
    metrics = MonitorMetrics(svc)
    s = scrape(metrics)
    assert value(s, "celerymon_store_flushes_total") == 0
    assert value(s, "celerymon_store_flush_seconds_total") == 0
    svc.start()
    try:
        svc.apply_events(run(1, "app.add", T0))
        assert svc.flush() in (0, 1)  # (the housekeeping thread may have written it first)
        flushes = svc.figures()["flushes"]
        s = scrape(metrics)
        assert value(s, "celerymon_store_flushes_total") >= flushes >= 1
        assert value(s, "celerymon_store_flush_seconds_total") > 0
        assert value(s, "celerymon_store_pending_tasks") == 0
    finally:
        svc.stop()
