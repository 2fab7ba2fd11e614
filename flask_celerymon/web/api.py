"""The monitor's JSON API: a drop-in for Flower's ``/api/*``, plus retry, bulk actions, queues.

Every route lives under ``<prefix>/api/`` (``CELERY_MONITOR_URL_PREFIX``, default
``/monitor``). Paths, parameters and JSON shapes are Flower 2.2's, so a script written for
Flower works by changing its base URL. Parameters are read like Flower's ``get_argument``:
from the query string or a form body; we also accept a JSON object body. The apply endpoints
take a JSON body as in Flower.

Errors are always ``{"error": "..."}`` with a status (Flower answers ``text/plain``):

* 400: a bad parameter (the message names it), JSON nested deeper than
  ``CELERY_MONITOR_MAX_JSON_DEPTH``, or a host not in ``CELERY_MONITOR_TRUSTED_HOSTS``
* 403: read-only, cross-site (both from :mod:`.guard`), or a worker refused the command
* 404: unknown task, worker, task name, queue or route
* 405: a known route with another method
* 409: the action conflicts with the state of the task (not finished, or its original
  arguments are not known for a retry), of the worker's pool, or the broker cannot do it
* 413: a body larger than ``CELERY_MONITOR_MAX_CONTENT_LENGTH`` bytes
* 503: the broker or the result backend is unavailable, or a worker did not reply

Read-only mode and cross-site refusals are decided once, in :mod:`.guard`, never here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import inspect
import json
import logging
import math
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from celery import states
from celery.backends.base import DisabledBackend
from celery.backends.rpc import RPCBackend
from celery.contrib.abortable import AbortableAsyncResult
from celery.exceptions import QueueNotFound
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.utils import uuid as new_uuid
from celery.utils.time import rate as parse_rate
from flask import Blueprint, Response, current_app, request
from kombu.exceptions import EncodeError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import PathConverter

from ..dispatch import DISPATCH_TASK_NAME
from ..errors import DispatchRefused
from ..monitor import broker as _broker
from ..monitor.query import SearchError
from . import get_state
from .auth import ADMIN, OPERATOR, VIEWER, requires
from .guard import error
from .params import (  # the ranges and choices are re-exported: tests and docs name them here
    APPLY_OPTIONS,  # noqa: F401
    BOOL_PATTERN,  # noqa: F401
    BULK_LIMIT,
    BULK_MAX,  # noqa: F401
    BULK_RANGE,
    MAX_SECONDS,  # noqa: F401
    MAX_UNIX_TIME,  # noqa: F401
    MAX_WAIT,  # noqa: F401
    MESSAGES_LIMIT,
    POOL_MAX,
    POOL_MIN,
    POOL_STEP,
    PRIORITY,  # noqa: F401
    RATE_PATTERN,
    RETRIES,  # noqa: F401
    SECONDS,
    SIGNALS,  # noqa: F401
    SORT_CHOICES,
    TASKS_LIMIT,
    TASKS_OFFSET,
    UNIX_TIME,  # noqa: F401
    WAIT,
    ApplyBody,
    BadParameter,
    Bool,
    Choice,
    Float,
    Int,
    Names,
    Pattern,
    Range,  # noqa: F401
    Signal,
    Text,
    Time,
    doc,
    use_body,
    use_params,
)

log = logging.getLogger(__name__)

#: Exceptions that mean "the broker or the result backend cannot be reached" (-> 503).
UNAVAILABLE: tuple[type[Exception], ...] = (
    OperationalError,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    socket.timeout,
)

#: States after which a task will not change any more (retry takes these, revoke skips them).
FINISHED = frozenset(states.READY_STATES) | {"REJECTED", "IGNORED", "LOST"}

#: Default wait of ``/api/task/apply`` when the body gives no ``timeout``.
APPLY_WAIT = 60.0
#: Longest wait for a pool action to show in the worker's stats (seconds; Celery's prefork
#: pool drops exited processes at least every 5 s).
POOL_READ_BACK = 6.0
class ApiError(Exception):
    """An API failure with its HTTP status; answered as ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- responses --------------------------------------------------------------------------------


def _default(obj: Any) -> Any:
    if isinstance(obj, (dt.datetime, dt.date)):
        return obj.isoformat()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    return repr(obj)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_response(data: Any, status: int = 200) -> Response:
    """JSON keeping the order of ``data`` (Flask's provider would sort the task map).

    NaN and infinities (which JSON has not) become null.
    """
    try:
        body = json.dumps(data, default=_default, allow_nan=False)
    except ValueError:
        body = json.dumps(_finite(data), default=_default, allow_nan=False)
    return current_app.response_class(body, status=status, mimetype="application/json")


def _safe_result(value: Any) -> Any:
    """The value if it is JSON-encodable, else its repr (as Flower's ``safe_result``)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value


# -- the app's pieces --------------------------------------------------------------------------


def _capp() -> Any:
    return get_state().celery_app


def _service() -> Any:
    return get_state().monitor


def _backend() -> Any | None:
    """The result backend, or None when results are disabled."""
    backend = _capp().backend
    return None if isinstance(backend, DisabledBackend) else backend


def _reply_timeout() -> float:
    return max(1.0, float(_service().settings.inspect_timeout))


def _state_store() -> Any | None:
    """The result backend when it can store a task's state by id, else None.

    ``rpc://`` only sends each result to the client that sent the task, so it cannot record
    a state for another task (PENDING on send-task, ABORTED on abort).
    """
    backend = _backend()
    return None if isinstance(backend, RPCBackend) else backend


def _backend_meta(task_id: str) -> dict[str, Any] | None:
    """The backend's record of ``task_id``, or None when it has none (or no backend)."""
    backend = _backend()
    if backend is None:
        return None
    meta = backend.get_task_meta(task_id)
    if meta.get("status") == states.PENDING and not meta.get("task_id") and not meta.get("name"):
        return None
    return meta


def _known_task(task_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(monitor's task dict, backend record); 404 when neither knows ``task_id``."""
    info = _service().task(task_id, children=False)
    meta = _backend_meta(task_id)
    if info is None and meta is None:
        raise ApiError(404, f"Unknown task '{task_id}'")
    return info, meta


def _task_state(info: dict[str, Any] | None, meta: dict[str, Any] | None) -> str:
    """The most final state either source knows."""
    found = [s for s in ((info or {}).get("state"), (meta or {}).get("status")) if s]
    for s in found:
        if s in FINISHED:
            return s
    return found[0] if found else states.PENDING


def _known_worker(name: str) -> None:
    svc = _service()
    if svc.worker(name) is None and name not in svc.inspector.get(name):
        raise ApiError(404, f"Unknown worker '{name}'")


def _control_reply(worker: str, replies: Any, failure: str) -> str:
    """The ``ok`` text of ``worker``'s reply; 403 with its error, 503 without a reply."""
    reply = None
    for item in replies or ():
        if isinstance(item, dict) and worker in item:
            reply = item[worker]
    if reply is None:
        raise ApiError(503, f"worker '{worker}' did not reply within {_reply_timeout():g} s")
    if isinstance(reply, dict) and "ok" in reply:
        return str(reply["ok"])
    reason = reply.get("error", "Unknown reason") if isinstance(reply, dict) else reply
    raise ApiError(403, f"{failure}: {reason}")


def _broadcast(worker: str, command: str, failure: str, **arguments: Any) -> str:
    replies = _capp().control.broadcast(
        command,
        arguments=arguments,
        destination=[worker],
        reply=True,
        timeout=_reply_timeout(),
        limit=1,
    )
    return _control_reply(worker, replies, failure)


# -- workers -----------------------------------------------------------------------------------


@requires(VIEWER)
@doc("Inspect results per worker", "Workers", 404, 503)
@use_params(
    refresh=Bool(description="ask the workers first"),
    workername=Text(description="only this worker"),
    status=Bool(description="answer {hostname: online} instead"),
)
def list_workers(refresh: bool, workername: str | None, status: bool) -> Response:
    """``GET /api/workers``: inspect results per worker (Flower's shape).

    ``refresh=1`` asks the workers first (waits at most the inspect timeout), ``workername``
    limits the answer to one worker, ``status=1`` gives ``{hostname: online}`` instead.
    Status codes: 200; 400 bad parameter; 404 unknown worker; 503 broker unavailable on
    refresh.
    """
    name = workername
    svc = _service()
    if status:
        online = svc.worker_status()
        if name is not None:
            if name not in online:
                raise ApiError(404, f"Unknown worker '{name}'")
            online = {name: online[name]}
        return json_response(online)
    data = svc.inspect(name, refresh=refresh)  # an unreachable broker raises: 503
    if name is not None and name not in data:
        raise ApiError(404, f"Unknown worker '{name}'")
    return json_response(data)


@requires(ADMIN)
@doc("Shut a worker down", "Message", 404, 503, mutation=True)
def worker_shutdown(name: str) -> Response:
    """``POST /api/worker/shutdown/<name>``: ask a worker to shut down (no reply awaited).

    Status codes: 200; 403 read-only/cross-site; 404 unknown worker; 503 broker unavailable.
    """
    _known_worker(name)
    log.info("celerymon: shutting down worker %s", name)
    _capp().control.broadcast("shutdown", destination=[name])
    return json_response({"message": "Shutting down!"})


def _pool(worker: str) -> dict[str, Any] | None:
    """``worker``'s pool as its ``stats`` reply says now (``processes`` list of pids,
    ``max-concurrency``...) plus ``autoscaler``; None when it does not reply."""
    stats = (
        _capp().control.inspect(destination=[worker], timeout=_reply_timeout()).stats() or {}
    ).get(worker)
    if not isinstance(stats, dict):
        return None
    pool = dict(stats.get("pool") or {})
    pool["autoscaler"] = stats.get("autoscaler") or None
    return pool


def _processes(pool: dict[str, Any] | None) -> int | None:
    procs = (pool or {}).get("processes")
    return len(procs) if isinstance(procs, list) else None


def _pool_after(worker: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """Read ``worker``'s pool until ``done(pool)`` or the reply timeout; the last read.

    A pool action returns before the pool shows it (a shrunk process leaves the list when
    the worker next maintains its pool, within 5 s), so the answer waits, at most
    :data:`POOL_READ_BACK` seconds, for what is true.
    """
    deadline = time.monotonic() + max(_reply_timeout(), POOL_READ_BACK)
    pool = _pool(worker)
    while pool is not None and not done(pool) and time.monotonic() < deadline:
        time.sleep(0.1)
        pool = _pool(worker)
    return pool


def _pool_text(pool: dict[str, Any] | None) -> str:
    n = _processes(pool)
    if n is None:
        return "the pool size could not be read back"
    return f"the pool has {n} process{'' if n == 1 else 'es'}"


@requires(ADMIN)
@doc("Restart a worker's pool", "Pool", 404, 503, mutation=True)
def worker_pool_restart(name: str) -> Response:
    """``POST /api/worker/pool/restart/<name>``: restart the pool (``reload=False``).

    Answers ``{"message", "processes"}``: the pool size read back after the restart.
    Status codes: 200; 403 pool restarts not enabled on the worker
    (``worker_pool_restarts``), read-only or cross-site; 404 unknown worker; 503 no reply or
    broker unavailable.
    """
    _known_worker(name)
    before = _pool(name)
    old = set((before or {}).get("processes") or ())
    _broadcast(name, "pool_restart", f"Failed to restart the '{name}' pool", reload=False)
    after = _pool_after(name, lambda pool: not old & set(pool.get("processes") or ()))
    return json_response(
        {
            "message": f"Restarting '{name}' worker's pool; {_pool_text(after)}",
            "processes": _processes(after),
        }
    )


def _pool_resize(name: str, n: int, grow: bool) -> Response:
    _known_worker(name)
    before = _processes(_pool(name))
    if not grow and before is not None and n >= before:
        raise ApiError(
            409,
            f"shrinking '{name}' worker's pool by {n} would leave it without a process "
            f"(it has {before}); shrink by at most {before - 1}",
        )
    capp = _capp()
    fn = capp.control.pool_grow if grow else capp.control.pool_shrink
    verb = "grow" if grow else "shrink"
    replies = fn(n=n, destination=[name], reply=True, timeout=_reply_timeout(), limit=1)
    want = None if before is None else before + (n if grow else -n)
    try:
        _control_reply(name, replies, f"Failed to {verb} '{name}' worker's pool")
    except ApiError as exc:
        after = _pool(name)
        raise ApiError(exc.status, f"{exc.message}; {_pool_text(after)}") from None
    after = _pool_after(name, lambda pool: want is None or _processes(pool) == want)
    doing = "Growing" if grow else "Shrinking"
    return json_response(
        {
            "message": f"{doing} '{name}' worker's pool by {n}; {_pool_text(after)}",
            "processes": _processes(after),
        }
    )


_POOL_N = {"n": Int(POOL_STEP, default=1, description="processes (default 1)")}


@requires(ADMIN)
@doc("Grow a worker's pool", "Pool", 404, 503, mutation=True)
@use_params(**_POOL_N)
def worker_pool_grow(name: str, n: int) -> Response:
    """``POST /api/worker/pool/grow/<name>?n=1``: add ``n`` pool processes.

    Answers ``{"message", "processes"}``: the pool size read back after the action.
    Status codes: 200; 400 bad ``n``; 403 the worker refused (the message says the size the
    pool has now), read-only or cross-site; 404 unknown worker; 503 no reply or broker
    unavailable.
    """
    return _pool_resize(name, n, grow=True)


@requires(ADMIN)
@doc("Shrink a worker's pool", "Pool", 404, 409, 503, mutation=True)
@use_params(**_POOL_N)
def worker_pool_shrink(name: str, n: int) -> Response:
    """``POST /api/worker/pool/shrink/<name>?n=1``: remove ``n`` pool processes.

    Status codes: as :func:`worker_pool_grow`, and 409 when ``n`` is not below the number of
    processes (the pool would be left empty: the worker would take tasks and never run them).
    """
    return _pool_resize(name, n, grow=False)


@requires(ADMIN)
@doc("Set the autoscaler's bounds", "Pool", 404, 503, mutation=True)
@use_params(
    min=Int(POOL_MIN, required=True, description="minimum"),
    max=Int(POOL_MAX, required=True, description="maximum"),
)
def worker_pool_autoscale(name: str, min: int, max: int) -> Response:  # noqa: A002
    """``POST /api/worker/pool/autoscale/<name>?min=&max=``: set the autoscaler's bounds.

    Answers ``{"message", "processes", "autoscaler"}`` read back from the worker.
    Status codes: 200; 400 missing or bad ``min``/``max``; 403 autoscale not enabled on the
    worker, read-only or cross-site; 404 unknown worker; 503 no reply or broker unavailable.
    """
    lo, hi = min, max
    _known_worker(name)
    if lo > hi:
        raise ApiError(400, f"min must be <= max, not min={lo} max={hi}")
    _broadcast(name, "autoscale", f"Failed to autoscale '{name}' worker", min=lo, max=hi)
    after = _pool_after(
        name,
        lambda pool: (
            (pool.get("autoscaler") or {}).get("max") == hi
            and (pool.get("autoscaler") or {}).get("min") == lo
        ),
    )
    scaler = (after or {}).get("autoscaler")
    return json_response(
        {
            "message": f"Autoscaling '{name}' worker (min={lo}, max={hi}); {_pool_text(after)}",
            "processes": _processes(after),
            "autoscaler": scaler,
        }
    )


_QUEUE = {"queue": Text(required=True, description="queue name")}


@requires(ADMIN)
@doc("Start consuming a queue", "Message", 404, 503, mutation=True)
@use_params(**_QUEUE)
def worker_add_consumer(name: str, queue: str) -> Response:
    """``POST /api/worker/queue/add-consumer/<name>?queue=``: start consuming a queue.

    Status codes: 200; 400 missing ``queue``; 403 the worker refused, read-only or
    cross-site; 404 unknown worker; 503 no reply or broker unavailable.
    """
    _known_worker(name)
    msg = _broadcast(
        name, "add_consumer", f"Failed to add '{queue}' consumer to '{name}' worker", queue=queue
    )
    return json_response({"message": msg})


@requires(ADMIN)
@doc("Stop consuming a queue", "Message", 404, 503, mutation=True)
@use_params(**_QUEUE)
def worker_cancel_consumer(name: str, queue: str) -> Response:
    """``POST /api/worker/queue/cancel-consumer/<name>?queue=``: stop consuming a queue.

    Status codes: as :func:`worker_add_consumer`.
    """
    _known_worker(name)
    msg = _broadcast(
        name,
        "cancel_consumer",
        f"Failed to cancel '{queue}' consumer from '{name}' worker",
        queue=queue,
    )
    return json_response({"message": msg})


# -- task control ------------------------------------------------------------------------------


#: ``terminate`` and ``signal`` of the revokes.
REVOKE_PARAMS = {
    "terminate": Bool(description="also kill the process running the task"),
    "signal": Signal(description="signal sent with terminate (default SIGTERM)"),
}


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


# -- tasks: reading ----------------------------------------------------------------------------

#: The filters shared by the task list and the bulk actions: parameter -> query keyword.
FILTERS = {
    "workername": "worker",
    "taskname": "name",
    "state": "state",
}
TIME_FILTERS = ("received_start", "received_end", "started_start", "started_end")
_AS_RECEIVED = "as received_start"
#: The declarations of the filters (names as Flower's).
FILTER_PARAMS = {
    "workername": Names(description="worker hostname(s), comma-separated; All = any"),
    "taskname": Names(description="task name(s), comma-separated; All = any"),
    "state": Names(description="state(s), comma-separated; All = any"),
    "received_start": Time(
        description="'%Y-%m-%d %H:%M' (local time), ISO 8601 or Unix seconds"
    ),
    "received_end": Time(description=_AS_RECEIVED),
    "started_start": Time(description=_AS_RECEIVED),
    "started_end": Time(description=_AS_RECEIVED),
    "search": Text(
        strip=False,
        description="the search language (name:, state:, worker:, args:, kwargs:, result:)",
    ),
}
SORT_PARAM = {
    "sort_by": Choice(
        SORT_CHOICES, description="a column; a leading - sorts descending (default -received)"
    )
}


def _filters(p: Mapping[str, Any]) -> dict[str, Any]:
    """The query keywords of the parsed filters in ``p`` (those given)."""
    out: dict[str, Any] = {}
    for param, keyword in FILTERS.items():
        if p.get(param) is not None:
            out[keyword] = p[param]
    for param in (*TIME_FILTERS, "search"):
        if p.get(param) is not None:
            out[param] = p[param]
    return out


def _query(p: Mapping[str, Any], **kw: Any) -> Any:
    try:
        return _service().query_tasks(**_filters(p), **kw)
    except SearchError as exc:
        raise ApiError(400, str(exc)) from None


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


def _wait(result: Any, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``result``, within the app's limits.

    The wait is cut to ``CELERY_MONITOR_MAX_WAIT_SECONDS``, and skipped when
    ``CELERY_MONITOR_MAX_CONCURRENT_WAITS`` requests are waiting already: a waiting request
    holds one of the server's threads, so the waits together must never hold them all. The
    caller answers with the state the task has then (as when a wait times out).
    """
    limits = get_state().limits
    with limits.waits.hold() as entered:
        if not entered:
            return
        try:
            result.get(
                timeout=min(timeout, limits.max_wait),
                propagate=False,
                disable_sync_subtasks=False,
            )
        except CeleryTimeout:
            pass


def _add_result(response: dict[str, Any], result: Any) -> None:
    response["result"] = _safe_result(result.result)
    if result.state == states.FAILURE:
        response["traceback"] = result.traceback


@requires(VIEWER)
@doc("Queue lengths", "QueueLengths", 404, 503)
def queue_lengths() -> Response:
    """``GET /api/queues/length``: ``{"active_queues": [{"name", "messages"}...]}``.

    Status codes: 200; 404 the broker gives no lengths; 503 broker unavailable.
    """
    queues = _service().queues()
    if queues is None:
        raise ApiError(404, "this broker does not give queue lengths")
    return json_response({"active_queues": queues})


# -- tasks: sending ----------------------------------------------------------------------------

def _sendable(name: str, args: list[Any], kwargs: dict[str, Any]) -> tuple[Any, list, dict, dict]:
    """(task, args, kwargs, extra options) to send ``name``; 404 when it is unknown.

    ``name`` is a registered task, or a ``module:function`` reference on the submit allowlist
    (sent through the dispatch task, as ``celery.submit`` does). The arguments are checked
    against the task's or the function's signature here, before anything is sent: 400 with
    Python's message when they do not fit.
    """
    state = get_state()
    task = state.celery_app.tasks.get(name)
    if task is not None and name != DISPATCH_TASK_NAME:
        if getattr(task, "typing", True):
            _check_arguments(name, getattr(task, "__header__", None), args, kwargs)
        return task, args, kwargs, {}
    if ":" in name:
        try:
            fn = state.allowlist.resolve(name, state.celery_app.tasks)
        except DispatchRefused:
            raise ApiError(404, f"Unknown task '{name}'") from None
        _check_arguments(name, getattr(fn, "__header__", fn), args, kwargs)
        return state.dispatch_task, [name, args, kwargs], {}, {"shadow": name}
    raise ApiError(404, f"Unknown task '{name}'")


def _check_arguments(name: str, fn: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
    """400 with Python's message when ``fn(*args, **kwargs)`` would not bind."""
    if fn is None:
        return
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin without a signature: the worker will tell
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ApiError(
            400, f"the arguments do not fit task '{name}': {exc}; fix args/kwargs in the body"
        ) from None


def _record_pending(name: str, task_id: str, args: Any, kwargs: Any, queue: str | None) -> None:
    """Record a task sent by name as PENDING with its arguments (for result and retry)."""
    from celery.app.task import Context

    backend = _state_store()
    if backend is None:
        return
    request_ = Context(
        task=name,
        args=list(args),
        kwargs=dict(kwargs),
        delivery_info={"routing_key": queue} if queue else {},
        children=[],
    )
    try:
        backend.store_result(task_id, None, states.PENDING, request=request_)
    except UNAVAILABLE:
        log.warning("celerymon: could not record task %s as PENDING", task_id, exc_info=True)


@contextlib.contextmanager
def _sending(name: str) -> Iterator[None]:
    """Celery's and kombu's refusals of a message become a 400 with their message."""
    try:
        yield
    except (TypeError, ValueError, EncodeError, QueueNotFound) as exc:
        raise ApiError(400, f"Celery refused to send task '{name}': {exc}") from None


def _apply(name: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]) -> Any:
    """Send the task or reference ``name`` (see :func:`_sendable`); its AsyncResult."""
    task, a, kw, extra = _sendable(name, args, kwargs)
    with _sending(name):
        return task.apply_async(a, kw, **options, **extra)


def _send(name: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]) -> Any:
    capp = _capp()
    if name in capp.tasks or ":" in name:
        return _apply(name, args, kwargs, options)
    task_id = options.pop("task_id", None) or new_uuid()
    _record_pending(name, task_id, args, kwargs, options.get("queue"))
    try:
        with _sending(name):
            return capp.send_task(name, args=args, kwargs=kwargs, task_id=task_id, **options)
    except ApiError:
        backend = _backend()
        if backend is not None:
            backend.forget(task_id)  # nothing was sent: no PENDING record left behind
        raise


def _check_new_task_id(options: Mapping[str, Any]) -> None:
    """409 when ``options`` names a ``task_id`` that a task already has.

    Sending under a taken id would overwrite that task's record in the result backend (its
    result, traceback and arguments) and mix two runs in the monitor's history.
    """
    task_id = options.get("task_id")
    if task_id is None:
        return
    if _service().task(task_id, children=False) is None and _backend_meta(task_id) is None:
        return
    raise ApiError(
        409,
        f"task_id {task_id!r} is taken by an existing task, whose record sending it again "
        "would overwrite; leave task_id out (a new id is made) or choose an unused one",
    )


def _sent(result: Any) -> dict[str, Any]:
    response: dict[str, Any] = {"task-id": result.id}
    if _backend() is not None:
        response["state"] = result.state
    return response


def _options(given: Mapping[str, Any]) -> dict[str, Any]:
    """The ``apply_async`` options given in the parsed apply body (null: Celery's default)."""
    return {k: v for k, v in given.items() if v is not None}


_SEND = (404, 409, 503)


@requires(OPERATOR)
@doc("Run a task and wait for its result", "Result", *_SEND, body="ApplyBody", mutation=True)
@use_body(ApplyBody())
def task_apply(
    name: str, args: list[Any], kwargs: dict[str, Any], timeout: float | None, **given: Any
) -> Response:
    """``POST /api/task/apply/<name>``: run a task and wait for its result.

    JSON body: ``args``, ``kwargs``, ``timeout`` (seconds to wait, default 60, at most 3600,
    cut to ``CELERY_MONITOR_MAX_WAIT_SECONDS`` and skipped while
    ``CELERY_MONITOR_MAX_CONCURRENT_WAITS`` requests wait already; on expiry the answer has
    the state so far and no result), and ``apply_async`` options (:data:`APPLY_OPTIONS`).
    Status codes: 200; 400 bad body or option, or JSON nested too deep; 403
    read-only/cross-site; 404 unknown task; 409 ``task_id`` names an existing task; 413 body
    too large; 503 broker or backend unavailable.
    """
    options = _options(given)
    _check_new_task_id(options)
    result = _apply(name, args, kwargs, options)
    response: dict[str, Any] = {"task-id": result.id}
    if _backend() is None:
        return json_response(response)
    _wait(result, timeout or APPLY_WAIT)
    response["state"] = result.state
    if result.ready():
        _add_result(response, result)
    return json_response(response)


@requires(OPERATOR)
@doc("Send a task", "Sent", *_SEND, body="ApplyBody", mutation=True)
@use_body(ApplyBody())
def task_async_apply(
    name: str, args: list[Any], kwargs: dict[str, Any], timeout: float | None, **given: Any
) -> Response:
    """``POST /api/task/async-apply/<name>``: send a task; answer at once with its id.

    Body and status codes as :func:`task_apply` (``timeout`` is ignored).
    """
    options = _options(given)
    _check_new_task_id(options)
    return json_response(_sent(_apply(name, args, kwargs, options)))


@requires(OPERATOR)
@doc("Send a task by name", "Sent", *_SEND, body="ApplyBody", mutation=True)
@use_body(ApplyBody())
def task_send(
    name: str, args: list[Any], kwargs: dict[str, Any], timeout: float | None, **given: Any
) -> Response:
    """``POST /api/task/send-task/<name>``: send by name; the task need not be registered here.

    Body as :func:`task_apply`. Status codes: 200; 400 bad body or option; 403
    read-only/cross-site; 409 ``task_id`` names an existing task; 503 broker unavailable.
    """
    options = _options(given)
    _check_new_task_id(options)
    return json_response(_sent(_send(name, args, kwargs, options)))


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


def has_filter(p: Mapping[str, Any]) -> bool:
    """Whether the parsed parameters ``p`` give at least one task filter (what a bulk action
    requires)."""
    return any(p.get(k) is not None for k in (*FILTERS, *TIME_FILTERS, "search"))


#: The parameters of both bulk actions: the filters, ``sort_by``, ``limit`` and ``dry_run``.
BULK_PARAMS = {
    **FILTER_PARAMS,
    **SORT_PARAM,
    "limit": Int(BULK_RANGE, default=BULK_LIMIT, description="at most this many (default 1000)"),
    "dry_run": Bool(description="only count and list"),
}


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


def _queue_names() -> list[str]:
    svc = _service()
    active: list[Any] = []
    for info in svc.inspector.get().values():
        active.extend(info.get("active_queues") or ())
    return _broker.queue_names(_capp(), active, svc.settings.queues)


def _known_queue(queue: str) -> None:
    if queue not in _queue_names():
        raise ApiError(404, f"Unknown queue '{queue}'")


def _redis_channel(conn: Any, what: str) -> Any:
    if conn.transport.driver_type != "redis":
        raise ApiError(409, f"the {conn.transport.driver_type} broker does not allow {what}")
    return conn.default_channel


def _message_summary(raw: bytes | str) -> dict[str, Any] | None:
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested too deep for the parser
        return None
    if not isinstance(msg, dict):
        return None
    headers = msg.get("headers") or {}
    props = msg.get("properties") or {}
    return {
        "task-id": headers.get("id") or props.get("correlation_id"),
        "name": headers.get("shadow") or headers.get("task"),
        "args": headers.get("argsrepr"),
        "kwargs": headers.get("kwargsrepr"),
        "eta": headers.get("eta"),
        "expires": headers.get("expires"),
        "retries": headers.get("retries"),
        "priority": props.get("priority"),
    }


@requires(ADMIN)
@doc("Delete every waiting message of a queue", "Purged", 404, 503, mutation=True)
def queue_purge(queue: str) -> Response:
    """``POST /api/queues/purge/<queue>``: delete every message waiting in a queue.

    Status codes: 200 (``{"message", "purged": n}``); 403 read-only/cross-site; 404 unknown
    queue; 503 broker unavailable.
    """
    _known_queue(queue)
    with _capp().connection_for_write() as conn:
        n = conn.default_channel.queue_purge(queue) or 0
    log.info("celerymon: purged %d messages from queue %s", n, queue)
    return json_response({"message": f"Purged {n} messages from '{queue}'", "purged": n})


@requires(VIEWER)
@doc("The messages waiting in a queue (Redis)", "QueueMessages", 404, 409, 503)
@use_params(limit=Int(MESSAGES_LIMIT, default=100, description="at most (default 100)"))
def queue_messages(queue: str, limit: int) -> Response:
    """``GET /api/queues/messages/<queue>?limit=100``: the messages waiting (Redis only).

    Items: ``task-id name args kwargs eta expires retries priority``, next to be taken first.
    Status codes: 200; 400 bad ``limit``; 404 unknown queue; 409 the broker cannot list
    messages; 503 broker unavailable.
    """
    _known_queue(queue)
    with _capp().connection_for_read() as conn:
        raws = _broker.redis_messages(_redis_channel(conn, "listing messages"), queue, limit)
    out = [m for m in map(_message_summary, raws) if m is not None]
    return json_response({"queue": queue, "messages": out})


@requires(ADMIN)
@doc("Delete one waiting message (Redis)", "Removed", 404, 409, 503, mutation=True)
def queue_remove_message(queue: str, task_id: str) -> Response:
    """``POST /api/queues/remove/<queue>/<id>``: delete one waiting message (Redis only).

    Status codes: 200; 403 read-only/cross-site; 404 unknown queue, or no message of that
    task waits in it; 409 the broker cannot delete one message; 503 broker unavailable.
    """
    _known_queue(queue)

    def of_task(raw: bytes) -> bool:
        summary = _message_summary(raw)
        return summary is not None and summary["task-id"] == task_id

    with _capp().connection_for_write() as conn:
        chan = _redis_channel(conn, "deleting one message")
        if _broker.redis_remove(chan, queue, of_task):
            log.info("celerymon: removed task %s from queue %s", task_id, queue)
            return json_response(
                {"message": f"Removed '{task_id}' from '{queue}'", "task-id": task_id}
            )
    raise ApiError(404, f"no message of task '{task_id}' waits in queue '{queue}'")


@requires(VIEWER)
@doc("This document", "OpenAPI")
def openapi_document() -> Response:
    """``GET /api/openapi.json``: the OpenAPI 3 description of this API. Status codes: 200."""
    from .openapi import build_spec

    prefix = get_state().settings["CELERY_MONITOR_URL_PREFIX"] or ""
    return json_response(build_spec(prefix))


def _allowed_methods() -> list[str]:
    """The methods the API route at this request's path takes (not counting the catch-all),
    with HEAD and OPTIONS as Flask adds them; empty when no route has this path."""
    adapter = current_app.url_map.bind_to_environ(request.environ)
    allowed = []
    for method in ("GET", "POST"):
        try:
            endpoint, _ = adapter.match(method=method)
        except HTTPException:
            continue
        if not endpoint.endswith(".api_not_found"):
            allowed.append(method)
    if not allowed:
        return []
    return [*allowed, *(["HEAD", "OPTIONS"] if "GET" in allowed else ["OPTIONS"])]


def _method_not_allowed(allowed: list[str]) -> Response:
    """405 naming the methods to use, with the ``Allow`` header."""
    usable = [m for m in allowed if m not in ("HEAD", "OPTIONS")]
    resp = error(405, f"{request.method} is not allowed here; use {', '.join(usable)}")
    resp.headers["Allow"] = ", ".join(allowed)
    return resp


@requires(VIEWER)
def not_found(rest: str) -> Response:
    """Any other path under ``/api/``: 404, or 405 when the path exists for other methods."""
    allowed = _allowed_methods()
    if allowed:
        return _method_not_allowed(allowed)
    return error(
        404, f"no API route {request.path}; see {request.script_root}{_api_root()}/openapi.json"
    )


def _allow_header(response: Response) -> Response:
    """An API ``OPTIONS`` answer lists the route's own methods, not the catch-all's."""
    if request.method == "OPTIONS" and _is_api_request():
        allowed = _allowed_methods()
        if allowed:
            response.headers["Allow"] = ", ".join(allowed)
    return response


def _api_root() -> str:
    return (get_state().settings["CELERY_MONITOR_URL_PREFIX"] or "") + "/api"


# -- registration ------------------------------------------------------------------------------


class AnyPathConverter(PathConverter):
    """Werkzeug's ``path`` that also matches control characters (a newline in a name gets
    our JSON 404, not the app's HTML one)."""

    regex = "(?s:[^/].*?)"


CONVERTER = "celerymon_path"

#: (rule, view, methods): every route of the API, in the order of the docs.
ROUTES: tuple[tuple[str, Callable[..., Response], tuple[str, ...]], ...] = (
    ("/api/workers", list_workers, ("GET",)),
    ("/api/worker/shutdown/<celerymon_path:name>", worker_shutdown, ("POST",)),
    ("/api/worker/pool/restart/<celerymon_path:name>", worker_pool_restart, ("POST",)),
    ("/api/worker/pool/grow/<celerymon_path:name>", worker_pool_grow, ("POST",)),
    ("/api/worker/pool/shrink/<celerymon_path:name>", worker_pool_shrink, ("POST",)),
    ("/api/worker/pool/autoscale/<celerymon_path:name>", worker_pool_autoscale, ("POST",)),
    ("/api/worker/queue/add-consumer/<celerymon_path:name>", worker_add_consumer, ("POST",)),
    ("/api/worker/queue/cancel-consumer/<celerymon_path:name>", worker_cancel_consumer, ("POST",)),
    ("/api/tasks", list_tasks, ("GET",)),
    ("/api/task/types", task_types, ("GET",)),
    ("/api/queues/length", queue_lengths, ("GET",)),
    ("/api/task/info/<task_id>", task_info, ("GET",)),
    ("/api/task/apply/<celerymon_path:name>", task_apply, ("POST",)),
    ("/api/task/async-apply/<celerymon_path:name>", task_async_apply, ("POST",)),
    ("/api/task/send-task/<celerymon_path:name>", task_send, ("POST",)),
    ("/api/task/result/<task_id>", task_result, ("GET",)),
    ("/api/task/abort/<task_id>", task_abort, ("POST",)),
    ("/api/task/revoke/<task_id>", task_revoke, ("POST",)),
    ("/api/task/timeout/<celerymon_path:name>", task_timeout, ("POST",)),
    ("/api/task/rate-limit/<celerymon_path:name>", task_rate_limit, ("POST",)),
    ("/api/task/retry/<task_id>", task_retry, ("POST",)),
    ("/api/tasks/revoke", tasks_revoke, ("POST",)),
    ("/api/tasks/retry", tasks_retry, ("POST",)),
    ("/api/queues/purge/<celerymon_path:queue>", queue_purge, ("POST",)),
    ("/api/queues/messages/<celerymon_path:queue>", queue_messages, ("GET",)),
    ("/api/queues/remove/<queue>/<task_id>", queue_remove_message, ("POST",)),
    ("/api/openapi.json", openapi_document, ("GET",)),
)


def _is_api_request() -> bool:
    rule = request.url_rule
    return rule is not None and "/api/" in rule.rule


def _api_error(exc: ApiError | BadParameter) -> Response:
    return error(exc.status, exc.message)


def _unavailable(exc: Exception) -> Response:
    if not _is_api_request():
        raise exc  # the pages of the blueprint keep Flask's own handling
    log.warning("celerymon: broker or result backend unavailable: %s", exc)
    return error(503, f"Broker or result backend unavailable: {exc}")


def _runtime_error(exc: RuntimeError) -> Response:
    """Celery's result consumer gives up on a dead backend with a bare RuntimeError."""
    if isinstance(exc.__cause__, UNAVAILABLE) and _is_api_request():
        return _unavailable(exc.__cause__)
    raise exc


def _http_error(exc: HTTPException) -> Any:
    if not _is_api_request():
        return exc
    if isinstance(exc, MethodNotAllowed):
        allowed = _allowed_methods()
        if allowed:
            return _method_not_allowed(allowed)
    if isinstance(exc, (NotFound, MethodNotAllowed)) or exc.code is None:
        return error(exc.code or 500, exc.description or exc.name)
    return error(exc.code, exc.description or exc.name)


def _add_converter(setup: Any) -> None:
    setup.app.url_map.converters.setdefault(CONVERTER, AnyPathConverter)


def register(bp: Blueprint) -> None:
    """Add the API routes and its JSON error handlers to the monitor blueprint."""
    bp.record_once(_add_converter)
    for rule, view, methods in ROUTES:
        bp.add_url_rule(rule, f"api_{view.__name__}", view, methods=list(methods))
    bp.add_url_rule(
        "/api/<celerymon_path:rest>",
        "api_not_found",
        not_found,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "TRACE"],
    )
    bp.after_request(_allow_header)
    bp.register_error_handler(ApiError, _api_error)
    bp.register_error_handler(BadParameter, _api_error)
    for exc_type in UNAVAILABLE:
        bp.register_error_handler(exc_type, _unavailable)
    bp.register_error_handler(RuntimeError, _runtime_error)
    bp.register_error_handler(HTTPException, _http_error)
