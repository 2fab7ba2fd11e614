"""An example shop back office: a Flask app (factory pattern) with Celery tasks and the monitor.

Run it with its workers, beat and the monitor (``http://127.0.0.1:5000/``)::

    python -m example_app

It uses the embedded broker unless ``CELERY_BROKER_URL`` is set in the environment (for example
``CELERY_BROKER_URL=redis://127.0.0.1:6379/0``). The workers it starts find this app through
``FLASK_APP=example_app`` (set for them), so ``flask --app example_app celery cluster`` and
``FLASK_APP=example_app celery -A flask_celerymon.celery worker`` work too.
"""

from __future__ import annotations

import os
from collections import deque

from flask import Flask

from flask_celerymon import Celery

celery = Celery()

HERE = os.path.dirname(os.path.abspath(__file__))


class Config:
    SECRET_KEY = os.environ.get("SECRET_KEY", "example-only-not-secret")
    # Two workers: "default" takes the default queue, "priority" the high-priority one.
    CELERY_WORKERS = {
        "default": {"concurrency": 2, "queues": ["celery"]},
        "priority": {"concurrency": 1, "queues": ["high-priority"]},
    }
    CELERY_START_TIMEOUT = 60
    # The monitor is the blueprint mounted in this app at /monitor: it starts with the workers,
    # inside this process (no separate monitor process).
    CELERY_TASK_DEFAULT_QUEUE = "celery"
    # What ``submit`` and the monitor's apply routes may run: the tasks module only. The default
    # (the whole ``example_app`` package) would let an operator run ``create_app`` or a view on a
    # worker, and ``create_app("some.module")`` imports any module (see docs/security.rst).
    CELERY_SUBMIT_ALLOWLIST = ["example_app.tasks"]
    # The monitor refuses everyone until authentication is configured (see docs/security.rst);
    # ``python -m example_app`` opens it when it serves on a loopback address only.
    CELERY_MONITOR_ALLOW_ANONYMOUS = False


def create_app(config: object = Config, open_monitor: bool = False) -> Flask:
    """Build the app; ``CELERY_BROKER_URL`` in the environment selects another broker.

    ``EXAMPLE_APP_INSTANCE`` moves the instance folder (logs, embedded broker data).
    ``open_monitor`` lets anyone who reaches the app use the monitor (for a loopback server).
    """
    instance = os.environ.get("EXAMPLE_APP_INSTANCE") or os.path.join(HERE, "instance")
    app = Flask(__name__, instance_path=instance)
    app.config.from_object(config)
    if open_monitor:
        app.config["CELERY_MONITOR_ALLOW_ANONYMOUS"] = True
    if os.environ.get("CELERY_BROKER_URL"):
        app.config["CELERY_BROKER_URL"] = os.environ["CELERY_BROKER_URL"]
    celery.init_app(app)
    app.extensions["example_recent"] = deque(maxlen=20)  # ids of the work this page submitted

    from . import tasks, views

    tasks.register(app)
    app.register_blueprint(views.bp)
    return app
