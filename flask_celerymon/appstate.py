"""One app's flask_celerymon state, and the one way to find it: :func:`get_state`.

Everything flask_celerymon keeps for one Flask app lives in one :class:`AppState`, stored by
``Celery.init_app`` in ``app.extensions["celerymon"]`` (:data:`EXTENSION_KEY`): the app's
``celery.Celery`` instance, its :class:`~flask_celerymon.config.Settings`, the submit allowlist,
the local processes, the monitor service, and what the monitor blueprint sets up for the app
(access policy, login client, limits, metrics, insight engine). Every module finds it with
:func:`get_state`; none keeps a second ``app.extensions`` key.

This module sits below the extension: it imports neither :mod:`flask_celerymon.extension` nor
:mod:`flask_celerymon.web` (the web layer sets its attributes from ``init_monitor``).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

from flask import Flask, current_app

from . import config as config_mod
from .dispatch import DISPATCH_TASK_NAME, Allowlist
from .errors import NotInitializedError, StartError
from .futures import ResultWatcher

if TYPE_CHECKING:
    import celery as celery_pkg
    from celery.app.task import Task as CeleryTask

    from .extension import Celery
    from .monitor.insight import Insight
    from .monitor.service import MonitorService
    from .processes import LocalProcesses, ProcessPlan
    from .web.auth import AccessPolicy
    from .web.hardening import Limits
    from .web.live import LiveHub
    from .web.login import Login
    from .web.metrics import WebMetrics

log = logging.getLogger(__name__)

#: ``app.extensions`` key of the app's :class:`AppState` (the only key flask_celerymon uses).
EXTENSION_KEY = "celerymon"
#: Name of the monitor blueprint (its endpoints are ``celerymon.<view>``).
BLUEPRINT_NAME = "celerymon"

_UNSET = object()


def find_state(app: Flask) -> AppState | None:
    """The :class:`AppState` of ``app``, or None when flask_celerymon is not initialised on it."""
    return app.extensions.get(EXTENSION_KEY)


def set_state(app: Flask, state: AppState) -> None:
    """Store ``state`` as the state of ``app`` (``Celery.init_app`` does, once per app)."""
    app.extensions[EXTENSION_KEY] = state


def get_state(app: Flask | None = None) -> AppState:
    """The :class:`AppState` of ``app`` (default: the current app).

    Raises :class:`~flask_celerymon.errors.NotInitializedError` when ``init_app`` was not called
    for the app, and Flask's ``RuntimeError`` when ``app`` is None outside an app context.
    """
    if app is None:
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    state = find_state(app)
    if state is None:
        raise NotInitializedError(
            f"flask_celerymon is not initialised on app {app.name!r}; call "
            "celery.init_app(app) first"
        )
    return state


class AppState:
    """Everything flask_celerymon keeps for one Flask app (``app.extensions["celerymon"]``).

    Set by the monitor blueprint when it is mounted (``web.init_monitor``), None otherwise:
    ``access`` (the :class:`~.web.auth.AccessPolicy`), ``login`` (the OAuth2/OIDC
    :class:`~.web.login.Login`, when a provider is configured), ``metrics``
    (:class:`~.web.metrics.WebMetrics`) and ``insight`` (created on first use).
    """

    def __init__(
        self,
        app: Flask,
        extension: Celery,
        settings: config_mod.Settings,
        celery_app: celery_pkg.Celery,
        allowlist: Allowlist,
    ) -> None:
        self.app = app
        self.extension = extension
        self.settings = settings
        self.celery_app = celery_app
        self.allowlist = allowlist
        self.watcher = ResultWatcher(celery_app)
        self.dispatch_task: CeleryTask = celery_app.tasks[DISPATCH_TASK_NAME]
        self.access: AccessPolicy | None = None
        self.login: Login | None = None
        self.metrics: WebMetrics | None = None
        self.insight: Insight | None = None
        #: the live pages' shared subscription (:class:`~.web.live.LiveHub`), made on first use
        self.live: LiveHub | None = None
        self._limits: Limits | None = None
        #: guards the members created on first use (processes, monitor, insight)
        self.lock = threading.RLock()
        self._processes: LocalProcesses | None = None
        self._monitor: MonitorService | None = None
        self._late_seen = config_mod.late_settings(app.config)

    @property
    def eager(self) -> bool:
        """True when tasks run here and now (``task_always_eager``, as ``app.config`` says now)."""
        self.sync_late_settings()
        return bool(self.celery_app.conf.task_always_eager)

    def sync_late_settings(self) -> None:
        """Apply the eager-mode keys (:data:`~flask_celerymon.config.LATE_KEYS`) set after init_app.

        Tests often set ``app.config["CELERY_TASK_ALWAYS_EAGER"] = True`` after the factory
        returned. Each send compares those keys with the values seen last, and passes a changed
        one on to Celery's conf (a value set on the Celery conf directly is left alone while the
        Flask key does not change).
        """
        now = config_mod.late_settings(self.app.config)
        if now == self._late_seen:
            return
        changed = {k: v for k, v in now.items() if self._late_seen.get(k, _UNSET) != v}
        self._late_seen = now
        if changed:
            log.info("Celery settings changed in app.config after init_app: %s", changed)
            self.celery_app.conf.update(changed)

    def process_plan(self) -> ProcessPlan:
        """The :class:`~.processes.ProcessPlan` of this app as its settings, schedule and
        blueprints say now (asked at each start and stop of its local processes).

        Never raises: an app whose import target cannot be told gets ``app_import=None`` and the
        reason in ``app_import_error`` (raised as ``StartError`` only if a child is spawned).
        """
        from .launch import import_target, reloader_watcher
        from .processes import ProcessPlan

        settings = self.settings
        try:
            app_import: str | None = import_target(self.app, settings.app_import)
            problem = ""
        except StartError as exc:
            app_import, problem = None, str(exc)
        return ProcessPlan(
            app_import=app_import,
            app_import_error=problem,
            workers=settings.workers,
            loglevel=settings.log_level,
            log_dir=settings.log_dir,
            beat=bool(settings.scheduler and self.celery_app.conf.beat_schedule),
            beat_schedule_file=os.path.join(
                settings.instance_path, "celery", "celerybeat-schedule"
            ),
            monitor=settings.monitor,
            monitor_mounted=BLUEPRINT_NAME in self.app.blueprints,
            monitor_address=settings.monitor_address,
            monitor_port=settings.monitor_port,
            monitor_url_prefix=settings.monitor_url_prefix,
            start_timeout=float(settings.start_timeout),
            stop_timeout=float(settings.stop_timeout),
            embedded_broker_dir=settings.embedded_broker_dir,
            reloader_watcher=reloader_watcher(),
        )

    @property
    def processes(self) -> LocalProcesses:
        """The local worker/beat/monitor processes of this app (created on first use)."""
        with self.lock:
            if self._processes is None:
                from .processes import LocalProcesses

                self._processes = LocalProcesses(self.celery_app, self.process_plan)
            return self._processes

    @property
    def monitor(self) -> MonitorService:
        """The monitor service of this app (created on first use, not started)."""
        with self.lock:
            if self._monitor is None:
                from .monitor.service import MonitorService
                from .monitor.settings import MonitorSettings

                self._monitor = MonitorService(
                    self.celery_app,
                    MonitorSettings.from_config(
                        self.settings.own,
                        self.settings.instance_path,
                        app_queues=[q for w in self.settings.workers for q in w.queues],
                    ),
                )
            return self._monitor

    @property
    def limits(self) -> Limits:
        """The monitor's per-process limits: live sockets, result waits, JSON depth.

        Raises :class:`NotInitializedError` when the monitor blueprint is not mounted on the app
        (it sets them up).
        """
        if self._limits is None:
            raise NotInitializedError(
                f"the monitor blueprint is not mounted on app {self.app.name!r} "
                "(CELERY_MONITOR_BLUEPRINT is off), so it has no monitor limits"
            )
        return self._limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        self._limits = limits

    def ensure_local_processes(self) -> None:
        """Start the configured local processes on first send, when the config asks for it."""
        if self.eager or not self.settings.start_local_workers:
            return
        if self._processes is not None and self._processes.started:
            return
        self.start_local_processes()

    def start_local_processes(self, timeout: float | None = None) -> None:
        """Start the local processes; with the monitor mounted in this app, start it too.

        The in-app monitor otherwise starts on the first request to it, and would miss every
        task sent before someone opened it. Nothing starts in the watcher process of
        Werkzeug's reloader (see :func:`~flask_celerymon.launch.reloader_watcher`).
        """
        self.processes.start(timeout=timeout)
        if not self.processes.started:  # the reloader's watcher: its serving child starts them
            return
        if self.settings.monitor and self.processes.monitor_mounted:
            try:
                self.monitor.ensure_started()
                self.monitor.wait_connected(5.0)
            except Exception:  # noqa: BLE001 - the app works without its monitor
                log.warning("the monitor service did not start", exc_info=True)

    def shutdown(self) -> None:
        """Stop local processes, the monitor service, its insight engine (closing the insight
        store's connections) and the result watcher of this app."""
        self.watcher.stop()
        if self._monitor is not None:
            self._monitor.stop()
        if self.insight is not None:
            self.insight.close()
        if self._processes is not None:
            self._processes.stop()

    def __repr__(self) -> str:
        return f"<AppState of {self.app.name!r}>"
