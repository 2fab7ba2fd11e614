"""A Flask app for the insight tests: a task that fails on demand, one that retries, and a
beat entry every second. Its worker and beat run with ``FLASK_APP=tests.apps.insight_app:
create_app`` and the broker in ``CELERYMON_TEST_BROKER``."""

from __future__ import annotations

import os
import time

from flask import Flask

from flask_celerymon import Celery, current_task

celery = Celery()


@celery.task
def flaky(order):
    if order < 0:
        raise ValueError(f"order {order} failed")
    return order


@celery.task
def nap(seconds):
    time.sleep(seconds)
    return seconds


@celery.task
def total(values):
    return sum(values)


@celery.task
def retrying(order):
    raise current_task.retry(exc=KeyError(f"slot {order}"), countdown=300, max_retries=1)


@celery.schedule(1.0, name="tick")
def tick():
    return "tick"


def create_app(**config):
    app = Flask(__name__)
    app.config.update(
        CELERY_BROKER_URL=os.environ.get("CELERYMON_TEST_BROKER", "memory://"),
        CELERY_START_LOCAL_WORKERS=False,
        CELERY_MONITOR_BLUEPRINT=False,
        SECRET_KEY="not-for-celery",
    )
    app.config.update(config)
    celery.init_app(app)
    return app
