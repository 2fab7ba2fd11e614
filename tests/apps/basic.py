"""A factory-pattern Flask app used by the extension's integration tests.

Its worker runs as ``celery -A flask_celerymon.celery worker`` with
``FLASK_APP=tests.apps.basic:create_app`` and the broker in ``CELERYMON_TEST_BROKER``.
"""

from __future__ import annotations

import os
import time

from flask import Flask, current_app

from flask_celerymon import Celery, current_task

celery = Celery()

#: how many times create_app ran in this process (a worker must build the app once)
BUILDS = {"count": 0}


@celery.task
def registered(x):
    return x * 2


@celery.schedule(hour=0, minute=0, name="nightly-cleanup")
def nightly():
    return "cleaned"


def add(x, y):
    return x + y


def fail(message):
    raise ValueError(message)


def sleep(seconds):
    time.sleep(seconds)
    return seconds


def whoami():
    return current_task.request.id


def progress(steps):
    for i in range(steps):
        current_task.update_state(state="PROGRESS", meta={"done": i + 1, "total": steps})
        time.sleep(0.2)
    return steps


def app_name():
    return current_app.name


def app_builds():
    return BUILDS["count"]


def create_app(**config):
    BUILDS["count"] += 1
    app = Flask(__name__)
    app.config.update(
        CELERY_BROKER_URL=os.environ.get("CELERYMON_TEST_BROKER", "memory://"),
        # the result backend of a non-Redis broker (default: the extension's choice)
        **(
            {"CELERY_RESULT_BACKEND": os.environ["CELERYMON_TEST_BACKEND"]}
            if os.environ.get("CELERYMON_TEST_BACKEND")
            else {}
        ),  # fmt: skip
        CELERY_START_LOCAL_WORKERS=False,
        CELERY_MONITOR_BLUEPRINT=False,
        SECRET_KEY="not-for-celery",
    )
    app.config.update(config)
    celery.init_app(app)
    return app
