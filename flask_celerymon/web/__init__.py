"""The monitoring blueprint: HTML pages, JSON API, websockets and metrics under one prefix.

``init_monitor(app, state)`` is called by ``Celery.init_app`` when ``CELERY_MONITOR_BLUEPRINT``
is on. Each part lives in its own module and adds its routes to the blueprint through a
``register(bp)`` function; views find the app's :class:`~flask_celerymon.extension.AppState`
through :func:`get_state`, never through a global.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Blueprint, Flask, current_app

if TYPE_CHECKING:
    from ..extension import AppState

BLUEPRINT_NAME = "celerymon"


def get_state() -> AppState:
    """The flask_celerymon state of the app handling the current request."""
    return current_app.extensions["celerymon"]


def make_blueprint() -> Blueprint:
    """A fresh blueprint with every part of the monitor registered on it."""
    from . import api, guard, insight, live, metrics, views

    bp = Blueprint(
        BLUEPRINT_NAME,
        __name__,
        template_folder="../templates",
        static_folder="../static/celerymon",
        static_url_path="/static",
    )
    guard.register(bp)  # refuse first: a refused request must not start the service
    bp.before_request(_start_service)
    api.register(bp)
    views.register(bp)
    live.register(bp)
    metrics.register(bp)
    insight.register(bp)
    return bp


def _start_service() -> None:
    """The monitor service starts lazily, on the first request to the monitor."""
    get_state().monitor.ensure_started()


def init_monitor(app: Flask, state: AppState) -> None:
    """Mount the monitor blueprint on ``app`` at ``CELERY_MONITOR_URL_PREFIX``."""
    prefix = state.settings["CELERY_MONITOR_URL_PREFIX"]
    app.register_blueprint(make_blueprint(), url_prefix=prefix or None)
