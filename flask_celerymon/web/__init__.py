"""The monitoring blueprint: HTML pages, JSON API, websockets and metrics under one prefix.

``init_monitor(app, state)`` is called by ``Celery.init_app`` when ``CELERY_MONITOR_BLUEPRINT``
is on. Each part lives in its own module and adds its routes to the blueprint through a
``register(bp)`` function; views find the app's :class:`~flask_celerymon.appstate.AppState`
through :func:`~flask_celerymon.appstate.get_state` (re-exported here), never through a global.
The parts import it from :mod:`flask_celerymon.appstate`, never from this package (which imports
them).

Parts: ``views`` (pages), ``api`` (JSON API), ``live`` (websocket feed), ``metrics``
(``/metrics``, ``/healthcheck``), ``login`` (OAuth2/OIDC login and logout); ``errors`` turns
what any of them raises into a response (JSON or the error page). In front of all of
them, ``guard`` runs its checks; ``auth`` holds who may see and do what: each view declares
the role it needs with ``auth.requires``, and ``init_monitor`` builds the app's access policy
(``AppState.access``), login client (``AppState.login``) and limits (``AppState.limits``) from
the settings.
"""

from __future__ import annotations

from flask import Blueprint, Flask

from ..appstate import BLUEPRINT_NAME, AppState, get_state

__all__ = ["BLUEPRINT_NAME", "get_state", "init_monitor", "make_blueprint"]


def make_blueprint() -> Blueprint:
    """A fresh blueprint with every part of the monitor registered on it."""
    from . import api, errors, guard, hardening, insight, live, login, metrics, openapi, views

    # no static_folder: the pages' assets have a route of their own (views.assets), so that
    # every route of the blueprint declares who may use it
    bp = Blueprint(BLUEPRINT_NAME, __name__, template_folder="../templates")
    guard.register(bp)  # refuse first: a refused request must not start the service
    hardening.register(bp)  # security headers on every response
    errors.register(bp)  # how an error raised by any route becomes a response
    bp.before_request(_start_service)
    api.register(bp)
    openapi.register(bp)
    views.register(bp)
    live.register(bp)
    metrics.register(bp)
    login.register(bp)
    insight.register(bp)
    return bp


def _start_service() -> None:
    """The monitor service starts lazily, on the first request to the monitor.

    Not for the routes that need no monitor (assets, login pages).
    """
    from flask import request

    from .auth import ANYONE, required_level

    if required_level(request.endpoint) != ANYONE:
        get_state().monitor.ensure_started()


def init_monitor(app: Flask, state: AppState) -> None:
    """Mount the monitor blueprint on ``app`` at ``CELERY_MONITOR_URL_PREFIX``."""
    from .auth import init_policy
    from .hardening import Limits
    from .login import init_login

    policy = init_policy(app, state.settings, state.extension)
    init_login(app, state.settings, policy)
    state.limits = Limits.from_settings(state.settings)
    prefix = state.settings.monitor_url_prefix
    app.register_blueprint(make_blueprint(), url_prefix=prefix or None)
