"""A factory app for the local-process, CLI and embedded-broker tests.

Child processes build it again from ``FLASK_APP=tests.apps.local:create_app()``, so everything
a test chooses travels in environment variables (children inherit them):

* ``CELERYMON_TEST_INSTANCE`` - the instance folder (required: logs and the embedded broker)
* ``CELERYMON_TEST_BROKER`` - the broker URL; unset or empty means the embedded broker
* ``CELERYMON_TEST_WORKERS`` - ``CELERY_WORKERS`` as JSON (default ``1``)
* ``CELERYMON_TEST_MONITOR_PORT`` - start the local monitor on this port (default: no monitor)
* ``CELERYMON_TEST_BEAT`` - ``1`` to run beat for the hourly schedule below
* ``CELERYMON_TEST_START_TIMEOUT`` - ``CELERY_START_TIMEOUT`` (default 30)
* ``CELERYMON_TEST_MONITOR_AUTH`` - ``CELERY_MONITOR_BASIC_AUTH`` (default: none)
* ``CELERYMON_TEST_STOP_TIMEOUT`` - ``CELERY_STOP_TIMEOUT`` (default: the extension's)
"""

from __future__ import annotations

import json
import os
import time

from flask import Flask, g

from flask_celerymon import Celery, current_task

celery = Celery()


@celery.schedule(3600, name="hourly-report")
def hourly_report():
    return "report"


def add(x, y):
    return x + y


def nap(seconds):
    """Sleep, then answer how long: a task that is still running when the workers stop."""
    time.sleep(seconds)
    return seconds


def hostname():
    """The node name of the worker running this task."""
    return current_task.request.hostname


def g_counter():
    """1 when the task runs in an app context of its own (g is not shared between tasks)."""
    g.counter = g.get("counter", 0) + 1
    return g.counter


def local_process_count():
    """Submit from inside a task, and report how many local processes that started here."""
    celery.submit(add, 1, 1)
    return len(celery.processes)


def create_app() -> Flask:
    env = os.environ
    app = Flask(__name__, instance_path=env["CELERYMON_TEST_INSTANCE"])
    if env.get("CELERYMON_TEST_BROKER"):
        app.config["CELERY_BROKER_URL"] = env["CELERYMON_TEST_BROKER"]
    app.config["CELERY_WORKERS"] = json.loads(env.get("CELERYMON_TEST_WORKERS", "1"))
    port = env.get("CELERYMON_TEST_MONITOR_PORT")
    app.config["CELERY_MONITOR"] = bool(port)
    if port:  # the standalone monitor serves it; the app does not mount the blueprint
        app.config["CELERY_MONITOR_PORT"] = int(port)
        app.config["CELERY_MONITOR_BLUEPRINT"] = False
        app.config["CELERY_MONITOR_DB"] = False
    app.config["CELERY_SCHEDULER"] = env.get("CELERYMON_TEST_BEAT") == "1"
    app.config["CELERY_START_TIMEOUT"] = float(env.get("CELERYMON_TEST_START_TIMEOUT", "30"))
    app.config["CELERY_LOG_LEVEL"] = "info"
    if env.get("CELERYMON_TEST_MONITOR_AUTH"):
        app.config["CELERY_MONITOR_BASIC_AUTH"] = env["CELERYMON_TEST_MONITOR_AUTH"]
    if env.get("CELERYMON_TEST_STOP_TIMEOUT"):
        app.config["CELERY_STOP_TIMEOUT"] = float(env["CELERYMON_TEST_STOP_TIMEOUT"])
    celery.init_app(app)
    return app


def app_env(
    instance: str,
    broker: str | None = None,
    workers: object = 1,
    *,
    monitor_port: int | None = None,
    beat: bool = False,
    start_timeout: float = 30,
    stop_timeout: float | None = None,
) -> dict[str, str]:
    """The environment variables that make ``create_app()`` build the app a test wants."""
    env = {
        "CELERYMON_TEST_INSTANCE": str(instance),
        "CELERYMON_TEST_WORKERS": json.dumps(workers),
        "CELERYMON_TEST_START_TIMEOUT": str(start_timeout),
        "CELERYMON_TEST_BEAT": "1" if beat else "0",
        "CELERYMON_TEST_BROKER": broker or "",
        "CELERYMON_TEST_MONITOR_PORT": "" if monitor_port is None else str(monitor_port),
        "CELERYMON_TEST_STOP_TIMEOUT": "" if stop_timeout is None else str(stop_timeout),
    }
    return env


class environment:
    """Set environment variables for the block (children started in it inherit them)."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> environment:
        for key, value in self.values.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value
        return self

    def __exit__(self, *exc: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
