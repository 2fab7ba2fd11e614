"""Monitor blueprint part: ``<prefix>/metrics`` (Prometheus) and ``<prefix>/healthcheck``.

When the blueprint is registered on an app, this part creates the app's
:class:`~flask_celerymon.monitor.metrics.MonitorMetrics` (its own registry, listening to the
app's monitor service) and instruments the app's requests with prometheus-flask-exporter
into the **same** registry. The exporter gets no route of its own (``path=None``), so a host
app that serves its own ``/metrics`` keeps it, and its own exporter keeps counting: ours
tracks requests under separate request flags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast

from flask import Blueprint, Flask, Response, jsonify, request
from flask.blueprints import BlueprintSetupState
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_flask_exporter import PrometheusMetrics

from ..appstate import get_state
from ..errors import NotInitializedError
from ..monitor.metrics import MonitorMetrics, check_health
from .auth import METRICS, PUBLIC, requires

#: Seconds the health check waits for the broker.
HEALTH_BROKER_TIMEOUT = 2.0


@dataclass
class WebMetrics:
    """The metrics of one Flask app: the monitor's collector and the request exporter."""

    monitor: MonitorMetrics
    requests: PrometheusMetrics

    @property
    def registry(self) -> CollectorRegistry:
        """The registry ``<prefix>/metrics`` serves (never the process-global one)."""
        return self.monitor.registry


class _RequestMetrics(PrometheusMetrics):
    """prometheus-flask-exporter with its own per-request "already counted" flags.

    The exporter marks a request as counted with ``request.prom_*`` attributes; a host app
    running its own exporter would otherwise see our mark and skip the request (or we theirs).
    """

    @staticmethod
    def _not_yet_handled(tracking_key: str) -> bool:
        key = f"celerymon_prom_{tracking_key}"
        if hasattr(request, key):
            return False
        setattr(request, key, True)
        return True


def url_rule(req: Any) -> str:
    """The ``url_rule`` label: the route pattern (bounded), never the path with its ids."""
    rule = req.url_rule
    return rule.rule if rule is not None else "<unmatched>"


def get_metrics(app: Flask | None = None) -> WebMetrics:
    """The :class:`WebMetrics` of ``app`` (default: the current app): ``AppState.metrics``.

    Raises :class:`~flask_celerymon.errors.NotInitializedError` when flask_celerymon or its
    monitor blueprint is not set up on the app.
    """
    state = get_state(app)
    if state.metrics is None:
        raise NotInitializedError(
            f"the monitor blueprint is not mounted on app {state.app.name!r}: it has no metrics"
        )
    return state.metrics


def _setup(setup_state: BlueprintSetupState) -> None:
    app = cast(Flask, setup_state.app)  # typed as the sansio App; a blueprint is set up on a Flask
    state = get_state(app)
    monitor = MonitorMetrics(state.monitor)
    prefix = (setup_state.url_prefix or "").rstrip("/")
    requests = _RequestMetrics(
        app,
        path=None,
        registry=monitor.registry,
        group_by=url_rule,
        excluded_paths=[re.escape(prefix) + r"/(metrics|healthcheck)$"],
    )
    state.metrics = WebMetrics(monitor, requests)


@requires(METRICS)
def metrics() -> Response:
    """Prometheus metrics of the monitor and of the app's requests.

    Text exposition format, or OpenMetrics when the ``Accept`` header asks for it.
    Status codes: 200.
    """
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    resp = Response(encoder(get_metrics().registry), content_type=content_type)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@requires(PUBLIC)
def healthcheck() -> Response | tuple[Response, int]:
    """``OK`` when the monitor consumes events and the broker answers.

    Status codes: 200 (``OK``, text/plain); 503 with JSON ``{"error": reason, "checks":
    {"service": bool, "events": bool, "broker": bool}}`` otherwise.
    """
    health = check_health(get_state().monitor, HEALTH_BROKER_TIMEOUT)
    if health.ok:
        resp = Response("OK", mimetype="text/plain")
        resp.headers["Cache-Control"] = "no-store"
        return resp
    resp = jsonify(error=health.reason, checks=health.checks)
    resp.headers["Cache-Control"] = "no-store"
    return resp, 503


def register(bp: Blueprint) -> None:
    """Add ``/metrics`` and ``/healthcheck`` and set up the app's metrics on registration."""
    bp.record_once(_setup)
    bp.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])
    bp.add_url_rule("/healthcheck", "healthcheck", healthcheck, methods=["GET"])
