"""The basic test app as one of several processes sharing a history store (gunicorn -w N).

Config comes from the environment: ``CELERYMON_TEST_BROKER``, ``CELERYMON_TEST_DB`` (a SQLite
path or a PostgreSQL URL), ``CELERYMON_TEST_LEASE_TTL`` and ``CELERYMON_SINGLE_INGESTER`` (``0``
turns the lease off: every process consumes, for bench/scaleout.py). ``/whoami`` tells which process
answered, its role and its own figures, and how many tasks it finds. With
``CELERYMON_TEST_ALERT_WEBHOOK`` (a URL) an alert rule ``failing`` (failure rate >= 0.5 over at
least 4 tasks, evaluated every 0.5 s) notifies that URL, and the monitor's pages and API answer
anonymous requests. Every answer has the header ``X-Pid``:
the process that answered.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from tests.apps import basic


def create_app() -> Flask:
    webhook = os.environ.get("CELERYMON_TEST_ALERT_WEBHOOK")
    alerts = (
        {
            "CELERY_MONITOR_ALERTS": [
                {"kind": "failure_rate", "name": "failing", "threshold": 0.5, "min_tasks": 4}
            ],
            "CELERY_MONITOR_ALERT_INTERVAL": 0.5,
            "CELERY_MONITOR_ALERT_WEBHOOK": webhook,
            "CELERY_MONITOR_ALLOW_ANONYMOUS": True,  # the test reads the API over HTTP
        }
        if webhook
        else {}
    )
    app = basic.create_app(
        CELERY_MONITOR_BLUEPRINT=True,
        CELERY_MONITOR_DB=os.environ["CELERYMON_TEST_DB"],
        CELERY_MONITOR_SINGLE_INGESTER=os.environ.get("CELERYMON_SINGLE_INGESTER", "1") == "1",
        CELERY_MONITOR_LEASE_TTL=float(os.environ.get("CELERYMON_TEST_LEASE_TTL", "3")),
        CELERY_MONITOR_ENABLE_EVENTS_INTERVAL=1.0,
        **alerts,
    )

    @app.after_request
    def pid_header(resp: Any) -> Any:
        resp.headers["X-Pid"] = str(os.getpid())
        return resp

    @app.get("/whoami")
    def whoami() -> dict:
        svc = app.extensions["celerymon"].monitor
        svc.ensure_started()
        fig = svc.figures()
        return {
            "pid": os.getpid(),
            "role": svc.role,
            "events_received": fig["events_received"],
            "tasks": svc.query_tasks(limit=0).total,
        }

    return app
