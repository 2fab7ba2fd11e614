"""The Flask app the submit benchmark runs its worker against."""

from __future__ import annotations

import os

from flask import Flask

from flask_celerymon import Celery

celery = Celery()


def add(x, y):
    return x + y


@celery.task
def add_task(x, y):
    return x + y


def create_app():
    app = Flask(__name__)
    app.config.update(
        CELERY_BROKER_URL=os.environ["BENCH_BROKER_URL"],
        CELERY_START_LOCAL_WORKERS=False,
        CELERY_MONITOR_BLUEPRINT=False,
    )
    celery.init_app(app)
    return app
