"""A host app with a page of its own and the monitor mounted, for tests that serve it for real.

Served by gunicorn (``tests.apps.served:create_app()``) or by ``flask celery monitor``; it is
configured by environment variables, which child processes inherit:

* ``CELERYMON_TEST_BROKER`` - the broker URL (a real Redis; it is the result backend too)
* ``CELERYMON_TEST_INSTANCE`` - the instance folder
* ``CELERYMON_TEST_CONFIG`` - more Flask config, as a JSON object
"""

from __future__ import annotations

import json
import os

from flask import Flask

from flask_celerymon import Celery

celery = Celery()


@celery.task
def noop():
    return None


def create_app() -> Flask:
    env = os.environ
    app = Flask(__name__, instance_path=env["CELERYMON_TEST_INSTANCE"])
    app.config.update(
        CELERY_BROKER_URL=env["CELERYMON_TEST_BROKER"],
        CELERY_START_LOCAL_WORKERS=False,
        CELERY_MONITOR=False,
        CELERY_MONITOR_DB=False,
        TESTING=True,  # the monitor is open without authentication in testing mode
    )
    app.config.update(json.loads(env.get("CELERYMON_TEST_CONFIG", "{}")))

    @app.route("/")
    def home() -> str:
        return "the host app's own page"

    celery.init_app(app)
    return app


def app_env(instance: str, broker: str, **config: object) -> dict[str, str]:
    """The environment variables that make ``create_app()`` build the app a test wants."""
    return {
        "CELERYMON_TEST_INSTANCE": instance,
        "CELERYMON_TEST_BROKER": broker,
        "CELERYMON_TEST_CONFIG": json.dumps(config),
    }
