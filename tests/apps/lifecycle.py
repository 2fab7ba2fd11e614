"""A factory app whose tasks record what Flask context they see at every point of their life.

Every signal handler (``task_prerun``, ``task_success``, ``task_failure``, ``task_retry``,
``task_postrun``), every handler of the app-wide ``base_task`` (:class:`AppBase`) and of a
per-task ``base=`` (:class:`TaskBase`), and every task body appends one JSON record to the
Redis list ``lifecycle:<task id>`` at the app's ``LIFECYCLE_SINK`` (default: the broker in
``CELERYMON_TEST_BROKER``). A record says where it was made, in which execution (the retry
count), whether an app and a request context were pushed, the ``LIFECYCLE_MARK`` of
``current_app``, and ``g.trail``: the places this execution has recorded so far in the same
``g`` (it starts empty for each execution). Signal handlers record only for the tasks of a
lifecycle app, so other apps of the test session are left alone.

Its worker runs as ``celery -A flask_celerymon.celery worker`` with
``FLASK_APP=tests.apps.lifecycle:create_app``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Task, signals
from flask import Flask, current_app, g, has_app_context, has_request_context

from flask_celerymon import Celery


def record(where: str, task: Task) -> None:
    """Append what ``task``'s current execution sees here to its list in the app's sink."""
    import redis

    entry: dict[str, Any] = {
        "where": where,
        "execution": task.request.retries,
        "app_context": has_app_context(),
        "request_context": has_request_context(),
    }
    if has_app_context():
        entry["mark"] = current_app.config.get("LIFECYCLE_MARK")
        trail = g.setdefault("trail", [])
        trail.append(where)
        entry["trail"] = list(trail)
    # the sink is found through the task, so a record is made even without an app context
    client = redis.Redis.from_url(task.app.flask_app.config["LIFECYCLE_SINK"])
    try:
        client.rpush(f"lifecycle:{task.request.id}", json.dumps(entry))
    finally:
        client.close()


class AppBase(Task):
    """The app-wide ``base_task``: its handlers record."""

    def before_start(self, task_id, args, kwargs):
        record("before_start", self)

    def on_success(self, retval, task_id, args, kwargs):
        record("on_success", self)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        record("on_failure", self)

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        record("on_retry", self)

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        record("after_return", self)


class TaskBase(Task):
    """A per-task ``base=`` (as celery-once and friends are used): its handlers record too."""

    def before_start(self, task_id, args, kwargs):
        record("task_base.before_start", self)
        super().before_start(task_id, args, kwargs)

    def on_success(self, retval, task_id, args, kwargs):
        record("task_base.on_success", self)
        super().on_success(retval, task_id, args, kwargs)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        record("task_base.on_failure", self)
        super().on_failure(exc, task_id, args, kwargs, einfo)

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        record("task_base.after_return", self)
        super().after_return(status, retval, task_id, args, kwargs, einfo)


celery = Celery(base_task=AppBase)


@celery.task(bind=True)
def succeed(self):
    record("body", self)
    return current_app.config["LIFECYCLE_MARK"]


@celery.task(bind=True)
def fail(self):
    record("body", self)
    raise ValueError("planned failure")


@celery.task(bind=True, max_retries=1)
def retry_once(self):
    record("body", self)
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return "retried"


@celery.task(bind=True, base=TaskBase)
def based(self):
    record("body", self)
    return current_app.config["LIFECYCLE_MARK"]


@celery.task(bind=True, base=TaskBase)
def based_fail(self):
    record("body", self)
    raise ValueError("planned failure")


def submitted():
    """A plain function sent with ``celery.submit`` (it runs inside the dispatch task)."""
    from celery import current_task

    record("body", current_task)
    return current_app.config["LIFECYCLE_MARK"]


def _ours(task: Task) -> bool:
    """A task of a lifecycle app (the handlers are connected for every app of the process)."""
    flask_app = getattr(task.app, "flask_app", None)
    return flask_app is not None and flask_app.import_name == __name__


def _on_prerun(task=None, **kw):
    if _ours(task):
        record("task_prerun", task)


def _on_postrun(task=None, **kw):
    if _ours(task):
        record("task_postrun", task)


def _on_success(sender=None, **kw):
    if _ours(sender):
        record("task_success", sender)


def _on_failure(sender=None, **kw):
    if _ours(sender):
        record("task_failure", sender)


def _on_retry(sender=None, **kw):
    if _ours(sender):
        record("task_retry", sender)


def connect_signals() -> None:
    """Connect the recording signal handlers (once per process)."""
    for signal, handler in (
        (signals.task_prerun, _on_prerun),
        (signals.task_postrun, _on_postrun),
        (signals.task_success, _on_success),
        (signals.task_failure, _on_failure),
        (signals.task_retry, _on_retry),
    ):
        signal.connect(handler, weak=False, dispatch_uid=f"lifecycle-{handler.__name__}")


def create_app(**config: Any) -> Flask:
    app = Flask(__name__)
    broker = os.environ.get("CELERYMON_TEST_BROKER", "memory://")
    app.config.update(
        CELERY_BROKER_URL=broker,
        CELERY_START_LOCAL_WORKERS=False,
        CELERY_MONITOR_BLUEPRINT=False,
        LIFECYCLE_MARK="lifecycle-app",
        LIFECYCLE_SINK=broker,
    )
    app.config.update(config)
    connect_signals()
    celery.init_app(app)
    return app
