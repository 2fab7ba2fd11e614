"""``/api/task*``: read, control (revoke, abort, time and rate limits), retry and bulk."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celery.contrib.abortable import AbortableAsyncResult
from celery.utils.time import rate as parse_rate
from flask import Response

from ...dispatch import DISPATCH_TASK_NAME
from ...errors import DispatchRefused
from .. import get_state
from ..auth import ADMIN, OPERATOR, VIEWER, requires
from ..params import Float, Int, Pattern, Text, doc, use_params
from .common import (
    BULK_PARAMS,
    FILTER_PARAMS,
    FINISHED,
    RATE_PATTERN,
    REVOKE_PARAMS,
    SECONDS,
    SORT_PARAM,
    TASKS_LIMIT,
    TASKS_OFFSET,
    WAIT,
    ApiError,
    _add_result,
    _backend,
    _capp,
    _control_reply,
    _known_task,
    _known_worker,
    _query,
    _reply_timeout,
    _service,
    _state_store,
    _task_state,
    _wait,
    has_filter,
    json_response,
)
from .send import _send, _sending

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
    sig = signal
    _known_task(task_id)
    log.info("celerymon: revoking task %s (terminate=%s, signal=%s)", task_id, terminate, sig)
    _capp().control.revoke(task_id, terminate=terminate, signal=sig)
    _service().revoke_requested([task_id])  # shown until the worker confirms
    return json_response({"message": f"Revoked '{task_id}'"})


@requires(OPERATOR)
@doc("Abort a task (AbortableTask)", "Message", 404, 409, 503, mutation=True)
def task_abort(task_id: str) -> Response:
    """``POST /api/task/abort/<id>``: mark a task ABORTED for ``AbortableTask`` to see.

    Status codes: 200; 403 read-only/cross-site; 404 unknown task; 409 the task already
    finished (aborting would overwrite its result); 503 no result backend, or it is
    unavailable.
    """
    if _backend() is None:
        raise ApiError(503, "no result backend is configured; abort needs one")
    if _state_store() is None:
        raise ApiError(
            409,
            "the rpc:// result backend cannot mark a task ABORTED; configure a result backend "
            "that stores states (CELERY_RESULT_BACKEND: Redis, a database...)",
        )
    info, meta = _known_task(task_id)
    state = _task_state(info, meta)
    if state in FINISHED:
        raise ApiError(409, f"Task '{task_id}' already finished ({state}); nothing to abort")
    AbortableAsyncResult(task_id, app=_capp()).abort()
    return json_response({"message": f"Aborted '{task_id}'"})


def _registered_name(name: str, worker: str | None = None) -> None:
    """404 unless ``name`` is a task of this app or one the worker registered."""
    if name in _capp().tasks:
        return
    for info in _service().inspector.get(worker).values():
        registered = info.get("registered") or ()
        if any(r == name or str(r).split(" ", 1)[0] == name for r in registered):
            return
    raise ApiError(404, f"Unknown task '{name}'")


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

    Status codes: 200; 400 missing ``workername`` or bad ``soft``/``hard``; 403 the worker
    refused, read-only or cross-site; 404 unknown task or worker; 503 no reply or broker
    unavailable.
    """
    worker = workername
    _registered_name(name, worker)
    _known_worker(worker)
    replies = _capp().control.time_limit(
        name,
        soft=soft,
        hard=hard,
        destination=[worker],
        reply=True,
        timeout=_reply_timeout(),
        limit=1,
    )
    msg = _control_reply(worker, replies, f"Failed to set time limits of '{name}'")
    return json_response({"message": msg})


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
    worker, limit = workername, ratelimit
    parse_rate(limit)
    _registered_name(name, worker)
    _known_worker(worker)
    replies = _capp().control.rate_limit(
        name, limit, destination=[worker], reply=True, timeout=_reply_timeout(), limit=1
    )
    msg = _control_reply(worker, replies, f"Failed to set rate limit of '{name}'")
    return json_response({"message": msg})


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
        raise ApiError(404, f"Unknown task '{task_id}'")
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
        raise ApiError(503, "no result backend is configured")
    _known_task(task_id)
    result = _capp().AsyncResult(task_id)
    if timeout:
        _wait(result, timeout)
    response: dict[str, Any] = {"task-id": task_id, "state": result.state}
    if result.ready():
        _add_result(response, result)
    return json_response(response)


# -- beyond Flower: retry, bulk actions, queues ------------------------------------------------


def _retry(task_id: str) -> Any:
    """Re-send a finished task with its original name, arguments and queue."""
    info, meta = _known_task(task_id)
    state = _task_state(info, meta)
    if state not in FINISHED:
        raise ApiError(
            409, f"Task '{task_id}' is {state}, not finished; only finished tasks can be retried"
        )
    if meta is None or meta.get("args") is None or not meta.get("name"):
        raise ApiError(
            409,
            f"the original arguments of task '{task_id}' are not known: the result backend "
            "keeps no extended result for it (result_extended off, result expired, or the "
            "task was aborted); events only carry truncated reprs",
        )
    name, args, kwargs = meta["name"], list(meta["args"]), dict(meta.get("kwargs") or {})
    queue = meta.get("queue") or (info or {}).get("routing_key") or None
    options: dict[str, Any] = {"queue": queue} if queue else {}
    state_ = get_state()
    if name == DISPATCH_TASK_NAME or (":" in name and args and args[0] == name):
        # sent by celery.submit: args are the dispatch task's [ref, args, kwargs]
        try:
            state_.allowlist.resolve(args[0], state_.celery_app.tasks)
        except DispatchRefused as exc:
            raise ApiError(409, f"task '{task_id}' cannot be retried: {exc}") from None
        with _sending(name):
            return state_.dispatch_task.apply_async(args, kwargs, shadow=args[0], **options)
    return _send(name, args, kwargs, options)


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
        raise ApiError(
            400,
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
    if ids and not dry_run:
        log.info("celerymon: bulk revoke of %d tasks", len(ids))
        _capp().control.revoke(ids, terminate=terminate, signal=sig)
        _service().revoke_requested(ids)  # shown until the workers confirm
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
            except ApiError as exc:
                failed[tid] = exc.message
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
