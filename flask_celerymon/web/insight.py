"""Pages and JSON API of the insight features: error groups, analytics, beat, alerts.

Routes (relative to ``CELERY_MONITOR_URL_PREFIX``). Each view declares who may call it with
:func:`~.auth.requires`: the reads need ``viewer``, the three POSTs (group retry and revoke,
"run now") ``operator``:

=====================================  ======  ==============================================
``/errors``                            GET     error groups, ``?since=`` (``1h 24h 7d 30d``,
                                               default ``7d``), ``?name=``, ``?status=open|
                                               resolved``
``/errors/<id>``                       GET     one group: traceback, workers, failed tasks
``/analytics``                         GET     task analytics, ``?window=`` (``15m`` ...
                                               ``30d``) and ``?name=`` for the charts
``/beat``                              GET     the beat schedule
``/alerts``                            GET     alert rules, firing and recent alerts
``/api/errors``                        GET     ``{"since", "until", "groups": [...]}``
``/api/errors/<id>``                   GET     one group with its recent ``tasks``
``/api/errors/<id>/retry``             POST    retry the group's failed tasks
``/api/errors/<id>/revoke``            POST    revoke the group's unfinished (retrying) tasks
``/api/analytics``                     GET     :func:`~..monitor.insight.analytics.task_analytics`
``/api/analytics/series``              GET     one task's points over a window
``/api/beat``                          GET     ``{"beat": status, "entries": [...]}``
``/api/beat/run/<entry>``              POST    send an entry's task now
``/api/alerts``                        GET     ``{"rules": [...], "alerts": [...]}``
``/canvas/<task id>``                  GET     the task page's canvas graph (HTML fragment)
``/api/task/canvas/<task id>``         GET     :func:`~..monitor.insight.canvas.canvas_graph`
=====================================  ======  ==============================================

API errors are ``{"error": ...}``: 400 bad parameter, 404 unknown group or entry, 503 broker
unavailable. Pages answer 400/404 with the error page. The insight engine
(:class:`~..monitor.insight.Insight`) of an app is kept in ``AppState.insight`` and starts with
the monitor service, on the first request.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from flask import Blueprint, Flask, Response, render_template, request, url_for

from ..appstate import get_state
from ..errors import InvalidInput, NotFoundError, OperationError
from ..monitor.control import FINISHED
from ..monitor.insight import Insight, InsightSettings, parse_rules
from ..monitor.insight import analytics as _analytics
from ..monitor.insight import beat as _beat
from ..monitor.insight.canvas import canvas_graph, layout
from . import api
from .auth import OPERATOR, VIEWER, requires
from .errors import page_error
from .params import (
    BULK_LIMIT,
    BULK_RANGE,
    Bool,
    Choice,
    Int,
    Range,
    Signal,
    Text,
    doc,
    parse_args,
    schema,
    use_params,
)

#: Windows of the error list: name -> seconds.
ERROR_WINDOWS: dict[str, int] = {"1h": 3600, "24h": 86400, "7d": 604800, "30d": 2592000}
SPARK_POINTS = 24
#: ``limit`` of the tasks listed with one error group
GROUP_TASKS_LIMIT = Range(1, 10_000)
GROUP_ID = re.compile(r"^[0-9a-f]{16}$")
#: Beat entry options passed on by "run now".
RUN_OPTIONS = ("queue", "routing_key", "exchange", "priority", "expires", "time_limit",
               "soft_time_limit")  # fmt: skip


#: A page or API parameter is not valid; the message names it (400).
BadParam = InvalidInput

#: Statuses of the error list and of the alerts.
ERROR_STATUSES = ("open", "resolved", "all")
ALERT_STATUSES = ("firing", "resolved", "all")


def _since(**kw: object) -> Choice:
    return Choice(tuple(ERROR_WINDOWS), strip=True, default="7d", **kw)  # type: ignore[arg-type]


def _window(**kw: object) -> Choice:
    return Choice(tuple(_analytics.WINDOWS), strip=True, default="24h", **kw)  # type: ignore[arg-type]


#: The parameters of the pages (their query strings).
ERRORS_PAGE = schema(
    since=_since(), status=Choice(ERROR_STATUSES, strip=True, default="all"), name=Text()
)
ANALYTICS_PAGE = schema(window=_window(), name=Text())


def get_insight(app: Flask | None = None) -> Insight:
    """The insight engine of ``app`` (the current app by default), created on first use."""
    state = get_state(app)
    ins = state.insight
    if ins is None:  # an Insight starts no thread when built: a racing twin is just dropped
        with state.lock:
            if state.insight is None:
                state.insight = Insight(state.monitor, _settings(state))
            ins = state.insight
    return ins


def _settings(state: Any) -> InsightSettings:
    s = state.settings
    return InsightSettings(
        alerts=parse_rules(s["CELERY_MONITOR_ALERTS"]),
        webhook=s["CELERY_MONITOR_ALERT_WEBHOOK"],
        webhook_format=s["CELERY_MONITOR_ALERT_FORMAT"],
        alert_interval=float(s["CELERY_MONITOR_ALERT_INTERVAL"]),
        monitor_url=s["CELERY_MONITOR_ALERT_LINK"],
    )


def _start() -> None:
    """``before_request``: the insight engine starts with the monitor service."""
    if get_state().monitor.running:
        get_insight().ensure_started()


# -- shared reads ------------------------------------------------------------------------------


def error_groups(since: str, name: str | None, status: str | None, now: float) -> dict[str, Any]:
    """The error groups for the list and ``GET /api/errors``."""
    span = ERROR_WINDOWS[since]
    store = get_insight().store
    groups = store.error_groups(since=now - span, name=name or None)
    if status == "open":
        groups = [g for g in groups if g["resolved_at"] is None]
    elif status == "resolved":
        groups = [g for g in groups if g["resolved_at"] is not None]
    bucket = span // SPARK_POINTS
    start = math.ceil(now / 60) * 60 - span
    counts = store.error_counts([g["id"] for g in groups], start, start + span, bucket)
    for g in groups:
        g["status"] = "resolved" if g["resolved_at"] is not None else "open"
        g["sparkline"] = counts.get(g["id"], [])
    return {"since": now - span, "until": now, "bucket": bucket, "groups": groups}


def _group(gid: str) -> dict[str, Any]:
    if not GROUP_ID.match(gid):
        raise NotFoundError(
            f"no error group {gid!r}; ids are 16 hex digits", title="Unknown error group"
        )
    found = get_insight().store.error_groups(group=gid)
    if not found:
        raise NotFoundError(
            f"no error group {gid!r}; see the list at /api/errors", title="Unknown error group"
        )
    g = found[0]
    g["status"] = "resolved" if g["resolved_at"] is not None else "open"
    return g


def _group_tasks(gid: str, limit: int) -> list[dict[str, Any]]:
    svc = get_state().monitor
    out = []
    for occ in get_insight().store.error_tasks(gid, limit):
        t = svc.task(occ["uuid"], children=False)
        out.append({**occ, "state": None if t is None else t.get("state"),
                    "worker": None if t is None else t.get("worker")})  # fmt: skip
    return out


def beat_data(now: float) -> dict[str, Any]:
    """``{"beat": {"running", "how"}, "entries": [...]}`` for the page and ``/api/beat``."""
    state = get_state()
    svc = state.monitor

    def last_task(task_name: str) -> dict[str, Any] | None:
        page = svc.query_tasks(name=task_name, sort_by="-received", limit=1)
        return page.tasks[0] if page.tasks else None

    started = get_insight().started_at or now
    items = _beat.entries(state.celery_app, last_task, now, started)
    local = None
    procs = state._processes.processes if state._processes is not None else {}
    if "beat" in procs:
        local = procs["beat"].alive()
    return {"beat": _beat.beat_status(items, local), "entries": items}


def _rules() -> list[dict[str, Any]]:
    return [
        {
            "name": r.name,
            "kind": r.kind,
            "threshold": r.threshold,
            "window": r.window,
            "for": r.for_,
            "repeat": r.repeat,
            "subject": r.subject,
        }  # fmt: skip
        for r in get_insight().settings.alerts
    ]


# -- pages -------------------------------------------------------------------------------------


def errors_context(args: Any, now: float) -> dict[str, Any]:
    """The error list's template context from its query ``args``. Raises :class:`BadParam`."""
    p = parse_args(ERRORS_PAGE, args)
    since, status, name = p["since"], p["status"], p["name"]
    data = error_groups(since, name, status, now)
    return {"window": since, "status": status, "name": name, "windows": ERROR_WINDOWS,
            "spark": _spark_points, **data}  # fmt: skip


@requires(VIEWER)
def errors_page() -> Any:
    """Error groups. 200; 400 bad parameter."""
    ctx = errors_context(request.args, time.time())
    return render_template("celerymon/errors.html", **ctx)


def _spark_points(values: list[int], width: int = 120, height: int = 24) -> str:
    top = max(values or [0]) or 1
    n = max(1, len(values) - 1)
    return " ".join(
        f"{i * width / n:.1f},{height - 1 - v / top * (height - 2):.1f}"
        for i, v in enumerate(values)
    )


def error_group_context(gid: str) -> dict[str, Any]:
    """One error group's template context. Raises :class:`NotFoundError` when unknown."""
    from .views import can

    g = _group(gid)
    return {"g": g, "tasks": _group_tasks(gid, 50), "can_act": can(f"errors/{gid}/retry")}


@requires(VIEWER)
def error_group_page(gid: str) -> Any:
    """One error group. 200; 404 unknown group."""
    ctx = error_group_context(gid)
    return render_template("celerymon/error_group.html", **ctx)


def analytics_context(args: Any, now: float) -> dict[str, Any]:
    """The analytics page's template context from its query ``args`` (``window``, ``name``).
    Raises :class:`BadParam`."""
    p = parse_args(ANALYTICS_PAGE, args)
    window = p["window"]
    ins = get_insight()
    ins.flush()
    data = _analytics.task_analytics(ins.store, window, now)
    name = p["name"] or (data["tasks"][0]["name"] if data["tasks"] else None)
    series = _analytics.task_series(ins.store, name, window, now) if name else None
    return {"windows": _analytics.WINDOWS, "selected": name, "series": series, **data}


@requires(VIEWER)
def analytics_page() -> Any:
    """Task analytics over a window, with the previous window. 200; 400 bad window."""
    ctx = analytics_context(request.args, time.time())
    return render_template("celerymon/analytics.html", **ctx)


@requires(VIEWER)
def beat_page() -> Any:
    """The beat schedule. 200."""
    from .views import can

    data = beat_data(time.time())
    return render_template("celerymon/beat.html", can_run=can("beat/run/x"), **data)


def alerts_context() -> dict[str, Any]:
    """The alerts page's template context: rules, firing and the 100 most recent alerts."""
    ins = get_insight()
    return {"rules": _rules(), "firing": ins.store.alerts(status="firing"),
            "recent": ins.store.alerts(limit=100), "settings": ins.settings,
            "figures": ins.figures()}  # fmt: skip


@requires(VIEWER)
def alerts_page() -> Any:
    """Alert rules, firing and recent alerts. 200."""
    return render_template("celerymon/alerts.html", **alerts_context())


# -- API ---------------------------------------------------------------------------------------


@requires(VIEWER)
@doc("Error groups", "ErrorGroups", tags=("insight",))
@use_params(
    since=_since(description="window (7d; empty: the default)"),
    name=Text(description="task name"),
    status=Choice(ERROR_STATUSES, strip=True, default="all", description="status"),
)
def api_errors(since: str, name: str | None, status: str) -> Response:
    """``GET /api/errors``: error groups seen in ``since`` (``1h 24h 7d 30d``, default 7d),
    newest first; ``name`` (a task name) and ``status`` (``open``/``resolved``) filter.

    Each group: ``{"id", "name", "exception_type", "message" (normalised), "sample_exception",
    "sample_traceback", "sample_task", "failures", "retries", "first_seen", "last_seen",
    "resolved_at", "status", "workers" ({hostname: count}), "sparkline" (24 counts over
    ``since``)}``. Status codes: 200; 400 bad parameter.
    """
    return api.json_response(error_groups(since, name, status, time.time()))


@requires(VIEWER)
@doc("One error group and its recent tasks", "ErrorGroup", 404, tags=("insight",))
@use_params(limit=Int(GROUP_TASKS_LIMIT, default=100, description="at most this many"))
def api_error_group(gid: str, limit: int) -> Response:
    """``GET /api/errors/<id>``: one group and its most recent occurrences (``limit``,
    default 100) as ``tasks: [{"uuid", "ts", "kind" (``failure``, ``retry`` or ``retried``: a
    failure sent again), "state", "worker"}]``. Status codes: 200;
    400 bad limit; 404 unknown group."""
    g = _group(gid)
    return api.json_response({**g, "tasks": _group_tasks(gid, limit)})


_GROUP_LIMIT = {"limit": Int(BULK_RANGE, default=BULK_LIMIT, description="at most this many")}
_DRY_RUN = {"dry_run": Bool(description="only count and list")}


@requires(OPERATOR)
@doc("Retry the failed tasks of an error group", "GroupBulk", 404, 503, mutation=True,
     tags=("insight",))  # fmt: skip
@use_params(**_GROUP_LIMIT, **_DRY_RUN)
def api_error_group_retry(gid: str, limit: int, dry_run: bool) -> Response:
    """``POST /api/errors/<id>/retry``: retry the group's failed tasks not retried from here
    before (at most ``limit``, default 1000), as ``POST /api/tasks/retry`` does; ``dry_run=1``
    only counts. The tasks sent again are marked ``retried`` in the group's occurrences.

    Answers ``{"dry_run", "matched", "count", "task_ids", "retried": {old: new}, "failed":
    {old: reason}}``. Status codes: 200; 400 bad parameter; 404 unknown group; 503 broker or
    backend unavailable.
    """
    _group(gid)
    occ = get_insight().store.error_tasks(gid, limit, kind="failure")
    svc = get_state().monitor
    ids = []
    for o in occ:
        t = svc.task(o["uuid"], children=False)
        if t is not None and t.get("state") in FINISHED:
            ids.append(o["uuid"])
    retried: dict[str, str] = {}
    failed: dict[str, str] = {}
    if not dry_run:
        for tid in ids:
            try:
                retried[tid] = api._retry(tid).id
            except OperationError as exc:
                failed[tid] = str(exc)
        get_insight().store.mark_retried(gid, retried)
    return api.json_response({"dry_run": dry_run, "matched": len(occ), "count": len(ids),
                              "task_ids": ids, "retried": retried, "failed": failed})  # fmt: skip


@requires(OPERATOR)
@doc("Revoke the unfinished tasks of an error group", "GroupBulk", 404, 503, mutation=True,
     tags=("insight",))  # fmt: skip
@use_params(
    **_GROUP_LIMIT,
    **_DRY_RUN,
    terminate=Bool(description="also kill running ones"),
    signal=Signal(description="signal sent with terminate (default SIGTERM)"),
)
def api_error_group_revoke(
    gid: str, limit: int, dry_run: bool, terminate: bool, signal: str
) -> Response:
    """``POST /api/errors/<id>/revoke``: revoke the group's tasks that have not finished
    (waiting for a retry); ``terminate``/``signal`` as the single revoke, ``dry_run=1`` only
    counts. Answers ``{"dry_run", "matched", "count", "task_ids"}``. Status codes: 200; 400
    bad parameter; 404 unknown group; 503 broker unavailable."""
    _group(gid)
    occ = get_insight().store.error_tasks(gid, limit)
    svc = get_state().monitor
    ids = []
    for o in occ:
        t = svc.task(o["uuid"], children=False)
        if t is not None and t.get("state") not in FINISHED and o["uuid"] not in ids:
            ids.append(o["uuid"])
    if not dry_run:
        api.control().revoke(ids, terminate=terminate, signal=signal)
    return api.json_response({"dry_run": dry_run, "matched": len(occ), "count": len(ids),
                              "task_ids": ids})  # fmt: skip


@requires(VIEWER)
@doc("Task analytics over a window and the one before", "Analytics", tags=("insight",))
@use_params(window=_window(description="window (24h)"), name=Text(description="task"))
def api_analytics(window: str, name: str | None) -> Response:
    """``GET /api/analytics``: per task name over ``window`` (``15m 1h 6h 24h 7d 30d``,
    default 24h) and the window before: ``{"window", "since", "until", "tasks": [{"name",
    "current", "previous", "change"}]}`` (see :mod:`~..monitor.insight.analytics`); ``name``
    limits it to one task. Status codes: 200; 400 bad parameter."""
    ins = get_insight()
    ins.flush()
    data = _analytics.task_analytics(ins.store, window, time.time(), name)
    return api.json_response(data)


@requires(VIEWER)
@doc("One task's throughput and p95 per bucket", "AnalyticsSeries", tags=("insight",))
@use_params(
    name=Text(required=True, description="task name"), window=_window(description="window (24h)")
)
def api_analytics_series(name: str, window: str) -> Response:
    """``GET /api/analytics/series?name=<task>&window=24h``: ``{"name", "window", "bucket",
    "points": [{"start", "succeeded", "failed", "retried", "revoked", "runtime_p95",
    "wait_p95"}]}``. Status codes: 200; 400 bad or missing parameter."""
    ins = get_insight()
    ins.flush()
    data = _analytics.task_series(ins.store, name, window, time.time())
    return api.json_response({"name": name, "window": window, **data})


@requires(VIEWER)
@doc("The beat schedule and whether beat runs", "Beat", tags=("insight",))
def api_beat() -> Response:
    """``GET /api/beat``: ``{"beat": {"running": true | false | null, "how"}, "entries":
    [{"name", "task", "schedule" (in words), "args", "kwargs", "options", "next_run",
    "period", "last_run", "late"}]}``. Status codes: 200."""
    return api.json_response(beat_data(time.time()))


@requires(OPERATOR)
@doc("Send a beat entry's task now", "BeatRun", 404, 503, mutation=True, tags=("insight",))
def api_beat_run(entry: str) -> Response:
    """``POST /api/beat/run/<entry>``: send the entry's task now, with its arguments and
    routing options. Answers ``{"message", "task-id"}``. Status codes: 200; 404 unknown entry;
    503 broker unavailable."""
    capp = get_state().celery_app
    e = (capp.conf.beat_schedule or {}).get(entry)
    if e is None:
        raise NotFoundError(f"no beat entry {entry!r}; see /api/beat for the entries")
    options = {k: v for k, v in (e.get("options") or {}).items() if k in RUN_OPTIONS}
    name = e["task"]
    args, kwargs = list(e.get("args") or ()), dict(e.get("kwargs") or {})
    task = capp.tasks.get(name)
    if task is not None:
        result = task.apply_async(args, kwargs, **options)
    else:
        result = capp.send_task(name, args, kwargs, **options)
    return api.json_response({"message": f"Sent {name} for beat entry '{entry}'",
                              "task-id": result.id})  # fmt: skip


@requires(VIEWER)
@doc("Alert rules and alerts", "Alerts", tags=("insight",))
@use_params(status=Choice(ALERT_STATUSES, strip=True, default="all", description="status"))
def api_alerts(status: str) -> Response:
    """``GET /api/alerts``: ``{"rules": [...], "alerts": [{"id", "rule", "kind", "subject",
    "status", "value", "threshold", "message", "started", "resolved", "notified",
    "notifications", "delivery"}]}``, newest first; ``status=firing|resolved`` filters.
    Status codes: 200; 400 bad parameter."""
    alerts = get_insight().store.alerts(status=None if status == "all" else status)
    return api.json_response({"rules": _rules(), "alerts": alerts})


def task_canvas(uuid: str) -> dict[str, Any] | None:
    """The canvas graph of a task (None when unknown); also the task page's template helper."""
    svc = get_state().monitor
    ins = get_insight()
    ins.flush()
    return canvas_graph(lambda i: svc.task(i), uuid, members=ins.store.canvas_members)


@requires(VIEWER)
def canvas_fragment(task_id: str) -> Any:
    """The canvas card of the task page alone (the page's script swaps it in). 200; 404."""
    graph = task_canvas(task_id)
    if graph is None:
        return page_error(404, "Unknown task", f"No task with id {task_id!r} is known.")
    return render_template("celerymon/_canvas.html", canvas=graph)


@requires(VIEWER)
@doc("The chain, group or chord a task belongs to, as a graph", "Canvas", 404,
     tags=("insight",))  # fmt: skip
def api_task_canvas(task_id: str) -> Response:
    """``GET /api/task/canvas/<id>``: the chain/group/chord the task belongs to: ``{"root",
    "task", "nodes": [{"id", "name", "state", "parent", "depth", "known"}], "edges": [[parent,
    child]], "truncated", "final"}``. Status codes: 200; 404 unknown task."""
    graph = task_canvas(task_id)
    if graph is None:
        raise NotFoundError(f"Unknown task '{task_id}'")
    return api.json_response(graph)


#: (rule, endpoint, view, methods)
ROUTES: tuple[tuple[str, str, Any, tuple[str, ...]], ...] = (
    ("/errors", "errors", errors_page, ("GET",)),
    ("/errors/<gid>", "error_group", error_group_page, ("GET",)),
    ("/analytics", "analytics", analytics_page, ("GET",)),
    ("/beat", "beat", beat_page, ("GET",)),
    ("/alerts", "alerts", alerts_page, ("GET",)),
    ("/api/errors", "api_errors", api_errors, ("GET",)),
    ("/api/errors/<gid>", "api_error_group", api_error_group, ("GET",)),
    ("/api/errors/<gid>/retry", "api_error_group_retry", api_error_group_retry, ("POST",)),
    ("/api/errors/<gid>/revoke", "api_error_group_revoke", api_error_group_revoke, ("POST",)),
    ("/api/analytics", "api_analytics", api_analytics, ("GET",)),
    ("/api/analytics/series", "api_analytics_series", api_analytics_series, ("GET",)),
    ("/api/beat", "api_beat", api_beat, ("GET",)),
    ("/api/beat/run/<celerymon_path:entry>", "api_beat_run", api_beat_run, ("POST",)),
    ("/api/alerts", "api_alerts", api_alerts, ("GET",)),
    ("/canvas/<task_id>", "canvas_fragment", canvas_fragment, ("GET",)),
    ("/api/task/canvas/<task_id>", "api_task_canvas", api_task_canvas, ("GET",)),
)


def register(bp: Blueprint) -> None:
    """Add the insight pages and API to the monitor blueprint."""
    bp.before_request(_start)
    bp.context_processor(
        lambda: {"insight_nav": nav_links, "insight_canvas": task_canvas, "canvas_layout": layout}
    )
    for rule, endpoint, view, methods in ROUTES:
        bp.add_url_rule(rule, endpoint, view, methods=list(methods))


def nav_links() -> list[tuple[str, str, tuple[str, ...]]]:
    """(label, URL, endpoints marked active) of the navigation entries added here."""
    return [
        ("Errors", url_for("celerymon.errors"), ("celerymon.errors", "celerymon.error_group")),
        ("Analytics", url_for("celerymon.analytics"), ("celerymon.analytics",)),
        ("Beat", url_for("celerymon.beat"), ("celerymon.beat",)),
        ("Alerts", url_for("celerymon.alerts"), ("celerymon.alerts",)),
    ]
