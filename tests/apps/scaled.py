"""The basic test app as one of several processes sharing a history store (gunicorn -w N).

Config comes from the environment: ``CELERYMON_TEST_BROKER``, ``CELERYMON_TEST_DB`` (a SQLite
path or a PostgreSQL URL), ``CELERYMON_TEST_LEASE_TTL`` and ``CELERYMON_SINGLE_INGESTER`` (``0``
turns the lease off: every process consumes, for bench/scaleout.py). ``/whoami`` tells which process
answered, its role and its own figures, and how many tasks it finds.
"""

from __future__ import annotations

import os

from flask import Flask

from tests.apps import basic


def create_app() -> Flask:
    app = basic.create_app(
        CELERY_MONITOR_BLUEPRINT=True,
        CELERY_MONITOR_DB=os.environ["CELERYMON_TEST_DB"],
        CELERY_MONITOR_SINGLE_INGESTER=os.environ.get("CELERYMON_SINGLE_INGESTER", "1") == "1",
        CELERY_MONITOR_LEASE_TTL=float(os.environ.get("CELERYMON_TEST_LEASE_TTL", "3")),
        CELERY_MONITOR_ENABLE_EVENTS_INTERVAL=1.0,
    )

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
