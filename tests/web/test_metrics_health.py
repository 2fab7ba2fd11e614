"""``<prefix>/healthcheck`` against a broker that goes away and comes back.

The outage is staged on a Redis server of this module's own, never the session's shared one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from flask_celerymon import Celery
from tests.conftest import RedisServer, free_port


@pytest.fixture
def own_redis(tmp_path: Any) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), str(tmp_path))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def app(own_redis: RedisServer) -> Iterator[Flask]:
    app = Flask("health")
    app.config.update(
        CELERY_BROKER_URL=own_redis.url(0),
        CELERY_START_LOCAL_WORKERS=False,
        CELERY_MONITOR_BLUEPRINT=True,
        CELERY_MONITOR_DB=False,
        # no authentication: only the health check and (opened for scrapers) the metrics answer
        CELERY_MONITOR_METRICS_PUBLIC=True,
    )
    Celery(app)
    yield app
    app.extensions["celerymon"].shutdown()


def wait_status(client: Any, status: int, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get("/monitor/healthcheck")
        if resp.status_code == status:
            return resp
        if time.monotonic() > deadline:
            pytest.fail(f"healthcheck stayed {resp.status_code} {resp.get_data(as_text=True)}")
        time.sleep(0.1)


def gauge(client: Any, name: str) -> float:
    text = client.get("/monitor/metrics").get_data(as_text=True)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                return s.value
    raise AssertionError(f"{name} not exposed")


def test_healthcheck_is_ok_only_while_events_flow_and_the_broker_answers(app, own_redis):
    client = app.test_client()
    resp = wait_status(client, 200)
    assert resp.get_data(as_text=True) == "OK"
    assert resp.mimetype == "text/plain"

    own_redis.stop()
    resp = wait_status(client, 503, timeout=10)
    body = resp.get_json()
    assert body["checks"]["broker"] is False
    assert "the broker does not answer: OperationalError: " in body["error"]
    # the consumer notices the outage too; metrics still answer, without queue series
    wait = time.monotonic() + 10
    while resp.get_json()["checks"]["events"] and time.monotonic() < wait:
        time.sleep(0.1)
        resp = client.get("/monitor/healthcheck")
    assert resp.get_json()["checks"] == {"service": True, "events": False, "broker": False}
    assert "the monitor is not consuming events" in resp.get_json()["error"]
    assert gauge(client, "celerymon_broker_up") == 0
    assert gauge(client, "celerymon_event_stream_connected") == 0

    own_redis.start()
    resp = wait_status(client, 200)
    assert resp.get_data(as_text=True) == "OK"
    assert gauge(client, "celerymon_event_stream_connected") == 1
