"""The app ``bench/store_scale.py --http`` serves: the basic test app over a large shared store.

Config comes from the environment: ``CELERYMON_TEST_BROKER`` (a Redis URL: the broker and the
ingester lease) and ``CELERYMON_TEST_DB`` (a SQLite path or a PostgreSQL URL). Retention is
off (a million stored tasks stay), the API answers anonymous requests, and ``/whoami`` tells
the answering process's role (``ingester`` or ``follower``) and pid.
"""

from __future__ import annotations

import os

from flask import Flask

from tests.apps import basic


def create_app() -> Flask:
    app = basic.create_app(
        CELERY_MONITOR_BLUEPRINT=True,
        CELERY_MONITOR_DB=os.environ["CELERYMON_TEST_DB"],
        CELERY_MONITOR_SINGLE_INGESTER=True,
        CELERY_MONITOR_LEASE_TTL=3.0,
        CELERY_MONITOR_RETENTION_TASKS=10**9,
        CELERY_MONITOR_RETENTION_DAYS=10**5,
        CELERY_MONITOR_ALLOW_ANONYMOUS=True,
    )

    @app.get("/whoami")
    def whoami() -> dict:
        svc = app.extensions["celerymon"].monitor
        svc.ensure_started()
        return {"pid": os.getpid(), "role": svc.role}

    return app
