"""The app's own request metrics (prometheus-flask-exporter) in the monitor's registry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry
from prometheus_flask_exporter import PrometheusMetrics

from flask_celerymon import Celery
from tests.conftest import metric_value, parse_metrics

DURATION = "flask_http_request_duration_seconds_count"


parse = parse_metrics
value = metric_value


@pytest.fixture
def make_app(redis_url: str) -> Iterator:
    """make_app(host_exporter=None|"before"|"after"): an app with the monitor and a route.

    ``host_exporter`` adds the host's own prometheus-flask-exporter at ``/metrics`` (its own
    registry), created before or after ``init_app``; it is returned as ``app.host_registry``.
    """
    apps: list[Flask] = []

    def make(host_exporter: str | None = None) -> Flask:
        app = Flask(f"host{len(apps)}")
        app.config.update(
            CELERY_BROKER_URL=redis_url,
            CELERY_START_LOCAL_WORKERS=False,
            CELERY_MONITOR_BLUEPRINT=True,
            CELERY_MONITOR_DB=False,
            CELERY_MONITOR_ALLOW_ANONYMOUS=True,
        )
        registry = CollectorRegistry()
        if host_exporter == "before":
            PrometheusMetrics(app, registry=registry)
        Celery(app)
        if host_exporter == "after":
            PrometheusMetrics(app, registry=registry)

        @app.get("/items/<int:item_id>")
        def item(item_id: int) -> dict[str, int]:
            return {"id": item_id}

        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["celerymon"].shutdown()


@pytest.mark.parametrize("order", ["before", "after"])
def test_host_exporter_and_ours_both_count_every_request(make_app, order):
    app = make_app(host_exporter=order)
    client = app.test_client()
    for i in (1, 2, 3):
        assert client.get(f"/items/{i}").status_code == 200
    host = parse(client.get("/metrics").get_data(as_text=True))
    ours = parse(client.get("/monitor/metrics").get_data(as_text=True))
    # the host's exporter keeps its /metrics, its registry and its labels (path)
    for i in (1, 2, 3):
        assert value(host, DURATION, method="GET", status="200", path=f"/items/{i}") == 1
    assert not any(name.startswith("flower_") for name, _ in host)
    # ours groups by route, so ids in paths never become label values
    assert value(ours, DURATION, method="GET", status="200", url_rule="/items/<int:item_id>") == 3
    # the host's scrape endpoint is marked "do not track", and ours respects that
    assert value(ours, DURATION, method="GET", status="200", url_rule="/metrics") is None


def test_scrapes_and_health_checks_are_not_counted_but_unknown_paths_are(make_app):
    app = make_app()
    client = app.test_client()
    client.get("/monitor/metrics")
    client.get("/monitor/healthcheck")
    assert client.get("/wp-admin/1234").status_code == 404
    ours = parse(client.get("/monitor/metrics").get_data(as_text=True))
    rules = {dict(labels).get("url_rule") for name, labels in ours if name == DURATION}
    assert rules == {"<unmatched>"}
    assert value(ours, DURATION, method="GET", status="404", url_rule="<unmatched>") == 1
    assert app.url_map.bind("").match("/monitor/metrics")[0] == "celerymon.metrics"
    assert [r.rule for r in app.url_map.iter_rules() if r.rule.endswith("/metrics")] == [
        "/monitor/metrics"
    ]


def test_two_apps_in_one_process_keep_their_own_metrics(make_app):
    a, b = make_app(), make_app()
    ca, cb = a.test_client(), b.test_client()
    for i in (1, 2):
        ca.get(f"/items/{i}")
    cb.get("/items/9")
    rule = "/items/<int:item_id>"
    ours_a = parse(ca.get("/monitor/metrics").get_data(as_text=True))
    ours_b = parse(cb.get("/monitor/metrics").get_data(as_text=True))
    assert value(ours_a, DURATION, method="GET", status="200", url_rule=rule) == 2
    assert value(ours_b, DURATION, method="GET", status="200", url_rule=rule) == 1
