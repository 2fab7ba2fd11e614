"""Metrics without double counting: one ingester, one follower, a real Redis and a real worker.

Two apps in this process share a history store with ``CELERY_MONITOR_SINGLE_INGESTER``: one
takes the lease and consumes events, the other follows. A scrape of either gives the same
cluster-wide task series (the follower exports what the ingester publishes in Redis), while
each keeps its own per-process figures.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from flask_celerymon.monitor.metrics import cluster_metrics_key, decode_series, encode_series
from tests.apps import basic
from tests.conftest import basic_worker, parse_metrics, run_basic_tasks, started_pair

CLUSTER_SERIES = (
    "flower_events_total",
    "celerymon_tasks_total",
    "flower_task_runtime_seconds_count",
    "flower_task_runtime_seconds_bucket",
    "flower_worker_prefetched_tasks",
)


def _scrape(app: Any) -> dict:
    resp = app.test_client().get("/monitor/metrics")
    assert resp.status_code == 200
    return parse_metrics(resp.get_data(as_text=True))


def _cluster(samples: dict) -> dict:
    return {k: v for k, v in samples.items() if k[0] in CLUSTER_SERIES}


def _succeeded(samples: dict) -> float:
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "celerymon_tasks_total" and ("state", "SUCCESS") in labels
    )


def _scrape_until(app: Any, ok: Any, timeout: float = 20) -> dict:
    """A scrape of ``app`` for which ``ok(samples)`` holds, polled for up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        samples = _scrape(app)
        if ok(samples):
            return samples
        assert time.monotonic() < deadline, _cluster(samples)
        time.sleep(0.2)


@pytest.fixture
def two_apps(redis_url, tmp_path, monkeypatch):
    monkeypatch.setenv("CELERYMON_TEST_BROKER", redis_url)
    config = dict(
        CELERY_MONITOR_BLUEPRINT=True,
        CELERY_MONITOR_DB=str(tmp_path / "shared.sqlite3"),
        CELERY_MONITOR_SINGLE_INGESTER=True,
        CELERY_MONITOR_LEASE_TTL=3.0,
        CELERY_MONITOR_ENABLE_EVENTS_INTERVAL=1.0,
        TESTING=True,
    )
    apps = [basic.create_app(**config), basic.create_app(**config)]
    try:
        yield apps
    finally:
        for app in apps:
            app.extensions["celerymon"].shutdown()


def test_an_ingester_and_a_follower_scrape_the_same_task_counters(two_apps, redis_url, tmp_path):
    follower, ingester = started_pair(two_apps)
    with basic_worker(ingester, redis_url, "metrics@test", tmp_path):
        run_basic_tasks(ingester, ok=12)

        # the ingester counts the 12 successes; the follower exports the same series
        deadline = time.monotonic() + 20
        while True:
            mine, theirs = _scrape(ingester), _scrape(follower)
            if _succeeded(mine) == 12 and _cluster(theirs) == _cluster(mine):
                break
            assert time.monotonic() < deadline, (_cluster(mine), _cluster(theirs))
            time.sleep(0.2)

    assert _cluster(mine)  # not two empty scrapes
    assert _succeeded(theirs) == 12
    # which process is which, and the per-process figures stay each process's own
    assert mine[("celerymon_ingester", ())] == 1
    assert theirs[("celerymon_ingester", ())] == 0
    assert mine[("celerymon_events_received_total", ())] > 0
    assert theirs[("celerymon_events_received_total", ())] == 0
    assert 0 <= theirs[("celerymon_cluster_metrics_age_seconds", ())] < 5
    assert ("celerymon_cluster_metrics_age_seconds", ()) not in mine


def test_published_series_round_trip_and_bad_data_is_refused():
    from flask_celerymon.monitor.metrics import _Histogram

    h = _Histogram(2)
    h.counts = [1, 0, 2]
    h.total = 3.5
    snap = {
        "events": {("w1", "task-succeeded", "t"): 4},
        "prefetch_time": {("w1", "t"): 0.25},
        "prefetched": {("w1", "t"): 1},
        "tasks": {("t", "w1", "SUCCESS", ""): 4},
        "runtime": {("w1", "t"): h},
        "queue_wait": {},
    }
    back = decode_series(encode_series(snap, 1000.0))
    assert back["at"] == 1000.0
    assert back["events"] == snap["events"] and back["tasks"] == snap["tasks"]
    assert back["runtime"][("w1", "t")].counts == [1, 0, 2]
    assert back["runtime"][("w1", "t")].total == 3.5
    for bad in (b"", b"[]", b'{"at": 1}', b"not json"):
        with pytest.raises(ValueError, match="not a published metrics snapshot"):
            decode_series(bad)
    assert cluster_metrics_key("shop") == "celerymon:shop:metrics"


#: The counter-type series of the cluster (gauges may go down).
COUNTER_SERIES = (
    "flower_events_total",
    "celerymon_tasks_total",
    "flower_task_runtime_seconds_count",
    "flower_task_runtime_seconds_bucket",
    "flower_task_runtime_seconds_sum",
)


def _counters(samples: dict) -> dict:
    return {k: v for k, v in samples.items() if k[0] in COUNTER_SERIES}


def test_the_cluster_counters_continue_across_a_handover(two_apps, redis_url, tmp_path):
    follower, ingester = started_pair(two_apps)
    with basic_worker(ingester, redis_url, "handover@test", tmp_path):
        run_basic_tasks(ingester, ok=8)
        # the follower exports the ingester's 8 successes
        before = _scrape_until(follower, lambda samples: _succeeded(samples) == 8)

        # the ingester stops (giving the lease up); the follower takes it over
        ingester.extensions["celerymon"].monitor.stop()
        successor = follower.extensions["celerymon"].monitor
        deadline = time.monotonic() + 10
        while successor.role != "ingester":
            assert time.monotonic() < deadline, successor.role
            time.sleep(0.05)
        assert successor.wait_connected(30)
        run_basic_tasks(follower, ok=5)
        # the successor's own events are added to the last ingester's
        after = _scrape_until(follower, lambda samples: _succeeded(samples) == 8 + 5)

    assert after[("celerymon_ingester", ())] == 1
    old, new = _counters(before), _counters(after)
    assert old  # not two empty scrapes
    went_down = {k: (v, new.get(k)) for k, v in old.items() if new.get(k, 0) < v}
    assert not went_down
    assert sum(v for k, v in new.items() if k[0] == "flower_task_runtime_seconds_count") == (
        sum(v for k, v in old.items() if k[0] == "flower_task_runtime_seconds_count") + 5
    )
    # what the successor writes is what it exports (it continued from the written copy)
    published = decode_series(
        redis.Redis.from_url(redis_url).get(
            cluster_metrics_key(basic.celery.get_app(follower).main or "celery")
        )
    )
    assert sum(v for k, v in published["tasks"].items() if k[2] == "SUCCESS") == 13
