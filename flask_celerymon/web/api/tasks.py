"""``/api/task*``: read, control (revoke, abort, time and rate limits), retry and bulk.

Each handler parses its parameters, calls :class:`~flask_celerymon.monitor.control.Control`
or :class:`~flask_celerymon.monitor.send.Sender` and renders the answer; errors are raised
and answered by :mod:`..errors`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celery.utils.time import rate as parse_rate
from flask import Response

from ...errors import InvalidInput, NotFoundError, OperationError, UnavailableError
from ...monitor.control import FINISHED
from ..auth import ADMIN, OPERATOR, VIEWER, requires
from ..params import Float, Int, Pattern, Text, doc, use_params
from .common import (
    BULK_PARAMS,
    FILTER_PARAMS,
    RATE_PATTERN,
    REVOKE_PARAMS,
    SECONDS,
    SORT_PARAM,
    TASKS_LIMIT,
    TASKS_OFFSET,
    WAIT,
    _add_result,
    _backend,
    _capp,
    _query,
    _service,
    _wait,
    control,
    has_filter,
    json_response,
    sender,
)

log = logging.getLogger(__name__)


@requires(OPERATOR)
@doc("Revoke a task", "Message", 404, 503, mutation=True)
@use_params(**REVOKE_PARAMS)
def task_revoke(task_id: str, terminate: bool, signal: str) -> Response:
    """``POST /api/task/revoke/<id>?terminate=false&signal=SIGTERM``: revoke a task.

    With ``terminate`` a running task's process gets ``signal``. Status codes: 200; 400 bad
    ``terminate``/``signal``; 403 read-only/cross-site; 404 unknown task; 503 broker
    unavailable.
    """
    ctl = control()
    ctl.known_task(task_id)
    ctl.revoke([task_id], terminate=terminate, signal=signal)
    return json_response({"message": f"Revoked '{task_id}'"})


@requires(OPERATOR)
@doc("Abort a task (AbortableTask)", "Message", 404, 409, 503, mutation=True)
def task_abort(task_id: str) -> Response:
    """``POST /api/task/abort/<id>``: mark a task ABORTED for ``AbortableTask`` to see.

    Status codes: 200; 403 read-only/cross-site; 404 unknown task; 409 the task already
    finished (aborting would overwrite its result), or the result backend is ``rpc://``; 503
    no result backend, or it is unavailable.
    """
    control().abort(task_id)
    return json_response({"message": f"Aborted '{task_id}'"})


_WORKER = {"workername": Text(required=True, description="worker hostname")}


@requires(OPERATOR)
@doc("Set a task's time limits on a worker", "Message", 404, 503, mutation=True)
@use_params(
    **_WORKER,
    soft=Float(SECONDS, description="soft time limit (s)"),
    hard=Float(SECONDS, description="hard time limit (s)"),
)
def task_timeout(name: str, workername: str, soft: float | None, hard: float | None) -> Response:
    """``POST /api/task/timeout/<name>?workername=&soft=&hard=``: set time limits.

    Status codes: 200; 400 missing ``workername``, bad ``soft``/``hard`` or ``hard`` below
    ``soft``; 403 the worker
    refused, read-only or cross-site; 404 unknown task or worker; 503 no reply or broker
    unavailable.
    """
    return json_response({"message": control().time_limit(name, workername, soft, hard)})


@requires(OPERATOR)
@doc("Set a task's rate limit on a worker", "Message", 404, 503, mutation=True)
@use_params(
    **_WORKER,
    ratelimit=Pattern(RATE_PATTERN, "'10/m', '2/s', '1/h' or a number",
                      description="e.g. 10/m, 2/s, 100"),
)  # fmt: skip
def task_rate_limit(name: str, workername: str, ratelimit: str) -> Response:
    """``POST /api/task/rate-limit/<name>?workername=&ratelimit=``: set a rate limit.

    ``ratelimit`` is Celery's syntax (``10/m``, ``2/s``, ``100``). Status codes: 200; 400
    missing or bad parameter; 403 the worker refused, read-only or cross-site; 404 unknown
    task or worker; 503 no reply or broker unavailable.
    """
    parse_rate(ratelimit)
    return json_response({"message": control().rate_limit(name, workername, ratelimit)})


@requires(VIEWER)
@doc("List tasks", "TaskMap")
@use_params(
    limit=Int(TASKS_LIMIT, description="at most this many"),
    offset=Int(TASKS_OFFSET, default=0, description="skip this many"),
    **SORT_PARAM,
    **FILTER_PARAMS,
)
def list_tasks(limit: int | None, offset: int, sort_by: str | None, **filters: Any) -> Response:
    """``GET /api/tasks``: tasks keyed by uuid, in ``sort_by`` order (default newest received).

    Parameters: ``limit`` (default: the window size), ``offset``, ``sort_by``
    (``name state received started runtime timestamp``, ``-`` for descending), ``workername``,
    ``taskname``, ``state`` (``All`` = no filter; commas for several), ``received_start``,
    ``received_end``, ``started_start``, ``started_end`` (``%Y-%m-%d %H:%M`` local time, ISO
    8601 or Unix seconds), ``search`` (the search language). Status codes: 200; 400 bad
    parameter or search syntax.
    """
    if limit is None:
        limit = _service().settings.max_tasks
    page = _query(filters, sort_by=sort_by, offset=offset, limit=limit)
    return json_response({t["uuid"]: t for t in page.tasks})


@requires(VIEWER)
@doc("Task names seen", "TaskTypes")
def task_types() -> Response:
    """``GET /api/task/types``: ``{"task-types": [names seen]}``. Status codes: 200."""
    return json_response({"task-types": _service().task_types()})


@requires(VIEWER)
@doc("One task", "Task", 404)
def task_info(task_id: str) -> Response:
    """``GET /api/task/info/<id>``: the task as Flower's ``Task.as_dict()`` plus ``history``.

    Flower's docstring shows a ``task-id`` key, its code returns ``uuid``; we follow the code.
    Status codes: 200; 404 unknown task.
    """
    info = _service().task(task_id)
    if info is None:
        raise NotFoundError(f"Unknown task '{task_id}'")
    return json_response(info)


@requires(VIEWER)
@doc("A task's state and result", "Result", 404, 503)
@use_params(timeout=Float(WAIT, description="wait (s)"))
def task_result(task_id: str, timeout: float | None) -> Response:
    """``GET /api/task/result/<id>?timeout=``: state and, once ready, result (and traceback).

    With ``timeout`` (seconds) waits that long for the result, at most
    ``CELERY_MONITOR_MAX_WAIT_SECONDS``, and not at all while
    ``CELERY_MONITOR_MAX_CONCURRENT_WAITS`` requests wait already (the answer then has the
    state so far). Status codes: 200; 400 bad ``timeout``; 404 unknown task; 503 no result
    backend, or it is unavailable.
    """
    if _backend() is None:
        raise UnavailableError("no result backend is configured")
    control().known_task(task_id)
    result = _capp().AsyncResult(task_id)
    if timeout:
        _wait(result, timeout)
    response: dict[str, Any] = {"task-id": task_id, "state": result.state}
    if result.ready():
        _add_result(response, result)
    return json_response(response)


# -- beyond Flower: retry, bulk actions, queues ------------------------------------------------


def _retry(task_id: str) -> Any:
    """Re-send a finished task with its original name, arguments and queue (see
    :meth:`~flask_celerymon.monitor.send.Sender.retry`); its new ``AsyncResult``."""
    return sender().retry(task_id)


@requires(OPERATOR)
@doc("Send a finished task again with its original arguments", "Retried", 404, 409, 503,
     mutation=True)  # fmt: skip
def task_retry(task_id: str) -> Response:
    """``POST /api/task/retry/<id>``: send a finished task again, as it was first sent.

    The name, arguments and queue come from the result backend's extended record
    (``result_extended``, on by default here), never from the truncated reprs in events.
    Answers ``{"task-id": new id, "retried-from": id, "message"}``. Status codes: 200; 403
    read-only/cross-site; 404 unknown task; 409 the task has not finished, or its original
    arguments are not known; 503 broker or backend unavailable.
    """
    result = _retry(task_id)
    return json_response(
        {
            "message": f"Retried '{task_id}' as '{result.id}'",
            "task-id": result.id,
            "retried-from": task_id,
        }
    )


def _bulk_selection(p: Mapping[str, Any], action: str) -> tuple[int, list[dict[str, Any]]]:
    if not has_filter(p):
        raise InvalidInput(
            f"bulk {action} needs at least one filter: state, taskname, workername, "
            "received_start, received_end, started_start, started_end or search",
        )
    page = _query(p, sort_by=p["sort_by"], offset=0, limit=p["limit"])
    return page.total, page.tasks


@requires(ADMIN)
@doc("Revoke the unfinished tasks matching filters", "Bulk", 503, mutation=True)
@use_params(**BULK_PARAMS, **REVOKE_PARAMS)
def tasks_revoke(**p: Any) -> Response:
    """``POST /api/tasks/revoke``: revoke every unfinished task matching the filters.

    Filters as ``GET /api/tasks`` (at least one is required); ``limit`` (default 1000, at most
    10000) caps how many are handled; ``dry_run=1`` only counts; ``terminate``/``signal`` as
    the single revoke. Answers ``{"dry_run", "matched", "count", "task_ids"}``. Status codes:
    200; 400 bad or missing filter; 403 read-only/cross-site; 503 broker unavailable.
    """
    dry_run, terminate, sig = p["dry_run"], p["terminate"], p["signal"]
    total, tasks = _bulk_selection(p, "revoke")
    ids = [t["uuid"] for t in tasks if t.get("state") not in FINISHED]
    if not dry_run:
        control().revoke(ids, terminate=terminate, signal=sig)
    return json_response({"dry_run": dry_run, "matched": total, "count": len(ids), "task_ids": ids})


@requires(ADMIN)
@doc("Retry the finished tasks matching filters", "Bulk", 503, mutation=True)
@use_params(**BULK_PARAMS)
def tasks_retry(**p: Any) -> Response:
    """``POST /api/tasks/retry``: retry every finished task matching the filters.

    Filters, ``limit`` and ``dry_run`` as :func:`tasks_revoke`. Answers ``{"dry_run",
    "matched", "count", "task_ids", "retried": {old: new}, "failed": {old: reason}}``; a task
    whose arguments are not known is listed in ``failed``. Status codes: 200; 400 bad or
    missing filter; 403 read-only/cross-site; 503 broker or backend unavailable.
    """
    dry_run = p["dry_run"]
    total, tasks = _bulk_selection(p, "retry")
    ids = [t["uuid"] for t in tasks if t.get("state") in FINISHED]
    retried: dict[str, str] = {}
    failed: dict[str, str] = {}
    if not dry_run:
        for tid in ids:
            try:
                retried[tid] = _retry(tid).id
            except OperationError as exc:
                failed[tid] = str(exc)
    return json_response(
        {
            "dry_run": dry_run,
            "matched": total,
            "count": len(ids),
            "task_ids": ids,
            "retried": retried,
            "failed": failed,
        }
    )
