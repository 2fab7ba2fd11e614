"""The monitor's JSON API: a drop-in for Flower's ``/api/*``, plus retry, bulk actions, queues.

Every route lives under ``<prefix>/api/`` (``CELERY_MONITOR_URL_PREFIX``, default
``/monitor``). Paths, parameters and JSON shapes are Flower 2.2's, so a script written for
Flower works by changing its base URL. Parameters are read like Flower's ``get_argument``:
from the query string or a form body; we also accept a JSON object body. The apply endpoints
take a JSON body as in Flower.

Errors are always ``{"error": "..."}`` with a status (Flower answers ``text/plain``):

* 400: a bad parameter (the message names it)
* 403: read-only, cross-site (both from :mod:`.guard`), or a worker refused the command
* 404: unknown task, worker, task name, queue or route
* 405: a known route with another method
* 409: the action conflicts with the task's state, or the broker cannot do it
* 422: a retry whose original arguments are not known
* 503: the broker or the result backend is unavailable, or a worker did not reply

Read-only mode and cross-site refusals are decided once, in :mod:`.guard`, never here.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import signal as _signal
import socket
from collections.abc import Callable, Mapping
from typing import Any

from celery import states
from celery.backends.base import DisabledBackend
from celery.backends.rpc import RPCBackend
from celery.contrib.abortable import AbortableAsyncResult
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.utils import uuid as new_uuid
from celery.utils.time import rate as parse_rate
from flask import Blueprint, Response, current_app, request
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import PathConverter

from ..dispatch import DISPATCH_TASK_NAME
from ..errors import DispatchRefused
from ..monitor import broker as _broker
from ..monitor.query import SearchError
from . import get_state
from .guard import error

log = logging.getLogger(__name__)

#: Exceptions that mean "the broker or the result backend cannot be reached" (-> 503).
UNAVAILABLE: tuple[type[Exception], ...] = (
    OperationalError,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    socket.timeout,
)

#: Flower's date formats: ``received_start``/``received_end`` and apply's ``eta``/``expires``.
LIST_DATE_FORMAT = "%Y-%m-%d %H:%M"
APPLY_DATE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

#: States after which a task will not change any more (retry takes these, revoke skips them).
FINISHED = frozenset(states.READY_STATES) | {"REJECTED", "IGNORED"}

#: Longest wait of ``/api/task/apply`` and ``/api/task/result`` (seconds).
MAX_WAIT = 3600.0
#: Default wait of ``/api/task/apply`` when the body gives no ``timeout``.
APPLY_WAIT = 60.0
#: Default and largest number of tasks a bulk action handles in one request.
BULK_LIMIT = 1000
BULK_MAX = 10_000
#: Largest ``n`` of pool grow/shrink and ``max`` of autoscale.
MAX_POOL_STEP = 1000

TRUE = frozenset({"y", "yes", "t", "true", "on", "1"})
FALSE = frozenset({"n", "no", "f", "false", "off", "0", ""})


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


# -- parameters -------------------------------------------------------------------------------


def _json_body() -> Any:
    if not request.get_data(cache=True):
        return None
    if not request.is_json:
        return None
    try:
        return json.loads(request.get_data(cache=True))
    except ValueError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None


def params() -> dict[str, Any]:
    """The request's parameters: query string, then form body, then a JSON object body."""
    out: dict[str, Any] = {k: v for k, v in request.args.items()}
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        out.update(request.form.items())
    body = _json_body()
    if isinstance(body, dict):
        out.update(body)
    return out


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and value.strip() == "")


def p_str(p: Mapping[str, Any], name: str, required: bool = False) -> str | None:
    value = p.get(name)
    if not _present(value):
        if required:
            raise ApiError(400, f"missing parameter {name!r}")
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string, not {value!r}")
    return value.strip()


def p_bool(p: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = p.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False if text else default
    raise ApiError(400, f"{name} must be a boolean (1/0, true/false, yes/no), not {value!r}")


def p_int(
    p: Mapping[str, Any],
    name: str,
    default: int | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
    required: bool = False,
) -> int | None:
    value: Any = p.get(name)
    if not _present(value):
        if required:
            raise ApiError(400, f"missing parameter {name!r}")
        return default
    try:
        if isinstance(value, (bool, float)):
            raise ValueError
        n = int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be an integer, not {value!r}") from None
    if minimum is not None and n < minimum:
        raise ApiError(400, f"{name} must be >= {minimum}, not {n}")
    if maximum is not None and n > maximum:
        raise ApiError(400, f"{name} must be <= {maximum}, not {n}")
    return n


def p_float(
    p: Mapping[str, Any],
    name: str,
    minimum: float = 0.0,
    maximum: float | None = None,
) -> float | None:
    value: Any = p.get(name)
    if not _present(value):
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        f = float(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(f) or f < minimum or (maximum is not None and f > maximum):
        top = f" and <= {maximum:g}" if maximum is not None else ""
        raise ApiError(400, f"{name} must be a number >= {minimum:g}{top}, not {value!r}")
    return f


def p_time(p: Mapping[str, Any], name: str) -> float | None:
    """Flower's ``%Y-%m-%d %H:%M`` (local time), ISO 8601, or Unix seconds; as Unix seconds."""
    value = p.get(name)
    if not _present(value):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ApiError(400, f"{name} must be a finite Unix time, not {value!r}")
        return float(value)
    text = str(value).strip()
    try:
        if text.replace(".", "", 1).isdigit():
            return float(text)
        return _parse_date(text).timestamp()
    except (ValueError, OverflowError, OSError):
        raise ApiError(
            400,
            f"{name} must be a date like '2024-01-31 13:45' (local time), ISO 8601 or "
            f"Unix seconds, not {value!r}",
        ) from None


def _parse_date(text: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(text, LIST_DATE_FORMAT)
    except ValueError:
        return dt.datetime.fromisoformat(text)


def p_list(p: Mapping[str, Any], name: str) -> tuple[str, ...] | None:
    """One value, or several separated by commas; ``All`` means no filter (as Flower)."""
    value = p.get(name)
    if not _present(value) or value == "All":
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    elif isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    else:
        raise ApiError(400, f"{name} must be a string, not {value!r}")
    items = [v for v in items if v and v != "All"]
    return tuple(items) or None


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


def list_workers() -> Response:
    """``GET /api/workers``: inspect results per worker (Flower's shape).

    ``refresh=1`` asks the workers first (waits at most the inspect timeout), ``workername``
    limits the answer to one worker, ``status=1`` gives ``{hostname: online}`` instead.
    Status codes: 200; 400 bad parameter; 404 unknown worker; 503 broker unavailable on
    refresh.
    """
    p = params()
    refresh = p_bool(p, "refresh")
    name = p_str(p, "workername")
    svc = _service()
    if p_bool(p, "status"):
        status = svc.worker_status()
        if name is not None:
            if name not in status:
                raise ApiError(404, f"Unknown worker '{name}'")
            status = {name: status[name]}
        return json_response(status)
    errors = svc.inspector.errors
    data = svc.inspect(name, refresh=refresh)
    if refresh and svc.inspector.errors > errors and not data:
        raise ApiError(503, "Broker or result backend unavailable: the workers could not be asked")
    if name is not None and name not in data:
        raise ApiError(404, f"Unknown worker '{name}'")
    return json_response(data)


def worker_shutdown(name: str) -> Response:
    """``POST /api/worker/shutdown/<name>``: ask a worker to shut down (no reply awaited).

    Status codes: 200; 403 read-only/cross-site; 404 unknown worker; 503 broker unavailable.
    """
    _known_worker(name)
    log.info("celerymon: shutting down worker %s", name)
    _capp().control.broadcast("shutdown", destination=[name])
    return json_response({"message": "Shutting down!"})


def worker_pool_restart(name: str) -> Response:
    """``POST /api/worker/pool/restart/<name>``: restart the pool (``reload=False``).

    Status codes: 200; 403 pool restarts not enabled on the worker
    (``worker_pool_restarts``), read-only or cross-site; 404 unknown worker; 503 no reply or
    broker unavailable.
    """
    _known_worker(name)
    _broadcast(name, "pool_restart", f"Failed to restart the '{name}' pool", reload=False)
    return json_response({"message": f"Restarting '{name}' worker's pool"})


def _pool_resize(name: str, grow: bool) -> Response:
    _known_worker(name)
    n = p_int(params(), "n", default=1, minimum=1, maximum=MAX_POOL_STEP)
    capp = _capp()
    fn = capp.control.pool_grow if grow else capp.control.pool_shrink
    verb = "grow" if grow else "shrink"
    replies = fn(n=n, destination=[name], reply=True, timeout=_reply_timeout(), limit=1)
    _control_reply(name, replies, f"Failed to {verb} '{name}' worker's pool")
    doing = "Growing" if grow else "Shrinking"
    return json_response({"message": f"{doing} '{name}' worker's pool by {n}"})


def worker_pool_grow(name: str) -> Response:
    """``POST /api/worker/pool/grow/<name>?n=1``: add ``n`` pool processes.

    Status codes: 200; 400 bad ``n``; 403 the worker refused, read-only or cross-site;
    404 unknown worker; 503 no reply or broker unavailable.
    """
    return _pool_resize(name, grow=True)


def worker_pool_shrink(name: str) -> Response:
    """``POST /api/worker/pool/shrink/<name>?n=1``: remove ``n`` pool processes.

    Status codes: as :func:`worker_pool_grow`.
    """
    return _pool_resize(name, grow=False)


def worker_pool_autoscale(name: str) -> Response:
    """``POST /api/worker/pool/autoscale/<name>?min=&max=``: set the autoscaler's bounds.

    Status codes: 200; 400 missing or bad ``min``/``max``; 403 autoscale not enabled on the
    worker, read-only or cross-site; 404 unknown worker; 503 no reply or broker unavailable.
    """
    _known_worker(name)
    p = params()
    lo = p_int(p, "min", minimum=0, maximum=MAX_POOL_STEP, required=True)
    hi = p_int(p, "max", minimum=1, maximum=MAX_POOL_STEP, required=True)
    assert lo is not None and hi is not None
    if lo > hi:
        raise ApiError(400, f"min must be <= max, not min={lo} max={hi}")
    _broadcast(name, "autoscale", f"Failed to autoscale '{name}' worker", min=lo, max=hi)
    return json_response({"message": f"Autoscaling '{name}' worker (min={lo}, max={hi})"})


def worker_add_consumer(name: str) -> Response:
    """``POST /api/worker/queue/add-consumer/<name>?queue=``: start consuming a queue.

    Status codes: 200; 400 missing ``queue``; 403 the worker refused, read-only or
    cross-site; 404 unknown worker; 503 no reply or broker unavailable.
    """
    _known_worker(name)
    queue = p_str(params(), "queue", required=True)
    msg = _broadcast(
        name, "add_consumer", f"Failed to add '{queue}' consumer to '{name}' worker", queue=queue
    )
    return json_response({"message": msg})


def worker_cancel_consumer(name: str) -> Response:
    """``POST /api/worker/queue/cancel-consumer/<name>?queue=``: stop consuming a queue.

    Status codes: as :func:`worker_add_consumer`.
    """
    _known_worker(name)
    queue = p_str(params(), "queue", required=True)
    msg = _broadcast(
        name,
        "cancel_consumer",
        f"Failed to cancel '{queue}' consumer from '{name}' worker",
        queue=queue,
    )
    return json_response({"message": msg})


# -- task control ------------------------------------------------------------------------------


def _signal_name(value: str | None) -> str:
    if value is None:
        return "SIGTERM"
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name.isdigit() or name not in _signal.Signals.__members__:
        raise ApiError(
            400, f"signal must be a signal name such as SIGTERM or SIGKILL, not {value!r}"
        )
    return name


def task_revoke(task_id: str) -> Response:
    """``POST /api/task/revoke/<id>?terminate=false&signal=SIGTERM``: revoke a task.

    With ``terminate`` a running task's process gets ``signal``. Status codes: 200; 400 bad
    ``terminate``/``signal``; 403 read-only/cross-site; 404 unknown task; 503 broker
    unavailable.
    """
    p = params()
    terminate = p_bool(p, "terminate")
    sig = _signal_name(p_str(p, "signal"))
    _known_task(task_id)
    log.info("celerymon: revoking task %s (terminate=%s, signal=%s)", task_id, terminate, sig)
    _capp().control.revoke(task_id, terminate=terminate, signal=sig)
    return json_response({"message": f"Revoked '{task_id}'"})


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


def task_timeout(name: str) -> Response:
    """``POST /api/task/timeout/<name>?workername=&soft=&hard=``: set time limits.

    Status codes: 200; 400 missing ``workername`` or bad ``soft``/``hard``; 403 the worker
    refused, read-only or cross-site; 404 unknown task or worker; 503 no reply or broker
    unavailable.
    """
    p = params()
    worker = p_str(p, "workername", required=True)
    assert worker is not None
    soft = p_float(p, "soft")
    hard = p_float(p, "hard")
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


def task_rate_limit(name: str) -> Response:
    """``POST /api/task/rate-limit/<name>?workername=&ratelimit=``: set a rate limit.

    ``ratelimit`` is Celery's syntax (``10/m``, ``2/s``, ``100``). Status codes: 200; 400
    missing or bad parameter; 403 the worker refused, read-only or cross-site; 404 unknown
    task or worker; 503 no reply or broker unavailable.
    """
    p = params()
    worker = p_str(p, "workername", required=True)
    limit = p.get("ratelimit")
    if not _present(limit):
        raise ApiError(400, "missing parameter 'ratelimit'")
    limit = str(limit).strip()
    try:
        parse_rate(limit)
    except (ValueError, KeyError, TypeError):
        raise ApiError(
            400, f"ratelimit must be like '10/m', '2/s', '1/h' or a number, not {limit!r}"
        ) from None
    assert worker is not None
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


def _filters(p: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for param, keyword in FILTERS.items():
        values = p_list(p, param)
        if values is not None:
            out[keyword] = values
    for param in TIME_FILTERS:
        value = p_time(p, param)
        if value is not None:
            out[param] = value
    search = p.get("search")
    if _present(search):
        if not isinstance(search, str):
            raise ApiError(400, f"search must be a string, not {search!r}")
        out["search"] = search
    return out


def _query(p: Mapping[str, Any], **kw: Any) -> Any:
    try:
        return _service().query_tasks(**_filters(p), **kw)
    except SearchError as exc:
        raise ApiError(400, str(exc)) from None


def list_tasks() -> Response:
    """``GET /api/tasks``: tasks keyed by uuid, in ``sort_by`` order (default newest received).

    Parameters: ``limit`` (default: the window size), ``offset``, ``sort_by``
    (``name state received started runtime timestamp``, ``-`` for descending), ``workername``,
    ``taskname``, ``state`` (``All`` = no filter; commas for several), ``received_start``,
    ``received_end``, ``started_start``, ``started_end`` (``%Y-%m-%d %H:%M`` local time, ISO
    8601 or Unix seconds), ``search`` (the search language). Status codes: 200; 400 bad
    parameter or search syntax.
    """
    p = params()
    svc = _service()
    limit = p_int(p, "limit", default=svc.settings.max_tasks, minimum=0)
    offset = p_int(p, "offset", default=0, minimum=0)
    sort_by = p_str(p, "sort_by")
    page = _query(p, sort_by=sort_by, offset=offset, limit=limit)
    return json_response({t["uuid"]: t for t in page.tasks})


def task_types() -> Response:
    """``GET /api/task/types``: ``{"task-types": [names seen]}``. Status codes: 200."""
    return json_response({"task-types": _service().task_types()})


def task_info(task_id: str) -> Response:
    """``GET /api/task/info/<id>``: the task as Flower's ``Task.as_dict()`` plus ``history``.

    Flower's docstring shows a ``task-id`` key, its code returns ``uuid``; we follow the code.
    Status codes: 200; 404 unknown task.
    """
    info = _service().task(task_id)
    if info is None:
        raise ApiError(404, f"Unknown task '{task_id}'")
    return json_response(info)


def task_result(task_id: str) -> Response:
    """``GET /api/task/result/<id>?timeout=``: state and, once ready, result (and traceback).

    With ``timeout`` (seconds) waits that long for the result. Status codes: 200; 400 bad
    ``timeout``; 404 unknown task; 503 no result backend, or it is unavailable.
    """
    timeout = p_float(params(), "timeout", maximum=MAX_WAIT)
    if _backend() is None:
        raise ApiError(503, "no result backend is configured")
    _known_task(task_id)
    result = _capp().AsyncResult(task_id)
    if timeout:
        try:
            result.get(timeout=timeout, propagate=False, disable_sync_subtasks=False)
        except CeleryTimeout:
            pass
    response: dict[str, Any] = {"task-id": task_id, "state": result.state}
    if result.ready():
        _add_result(response, result)
    return json_response(response)


def _add_result(response: dict[str, Any], result: Any) -> None:
    response["result"] = _safe_result(result.result)
    if result.state == states.FAILURE:
        response["traceback"] = result.traceback


def queue_lengths() -> Response:
    """``GET /api/queues/length``: ``{"active_queues": [{"name", "messages"}...]}``.

    Status codes: 200; 404 the broker gives no lengths; 503 broker unavailable.
    """
    queues = _service().queues()
    if queues is None:
        raise ApiError(404, "this broker does not give queue lengths")
    return json_response({"active_queues": queues})


# -- tasks: sending ----------------------------------------------------------------------------

#: ``apply_async`` options the apply endpoints accept, besides ``args``/``kwargs``/``timeout``.
#: (Flower passes any key through; we refuse the rest, e.g. ``serializer``, with a 400.)
APPLY_OPTIONS = (
    "queue",
    "routing_key",
    "exchange",
    "priority",
    "countdown",
    "eta",
    "expires",
    "time_limit",
    "soft_time_limit",
    "task_id",
    "ignore_result",
    "retries",
)


def _apply_body() -> tuple[list[Any], dict[str, Any], dict[str, Any], float | None]:
    """(args, kwargs, apply_async options, timeout) from the JSON body; 400 when malformed."""
    raw = request.get_data(cache=True)
    if raw.strip():
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    else:
        body = {}
    if not isinstance(body, dict):
        raise ApiError(400, 'the request body must be a JSON object like {"args": [1, 2]}')
    body = dict(body)
    args = body.pop("args", None)
    kwargs = body.pop("kwargs", None)
    args = [] if args is None else args
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(args, list):
        raise ApiError(400, f"args must be an array, not {args!r}")
    if not isinstance(kwargs, dict):
        raise ApiError(400, f"kwargs must be an object, not {kwargs!r}")
    timeout = p_float(body, "timeout", maximum=MAX_WAIT)
    body.pop("timeout", None)
    unknown = sorted(set(body) - set(APPLY_OPTIONS))
    if unknown:
        raise ApiError(
            400, f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(APPLY_OPTIONS)}"
        )
    return args, kwargs, _options(body), timeout


def _options(body: dict[str, Any]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for key in ("queue", "routing_key", "exchange", "task_id"):
        if key in body and body[key] is not None:
            if not isinstance(body[key], str) or (key != "exchange" and not body[key]):
                raise ApiError(400, f"{key} must be a non-empty string, not {body[key]!r}")
            opts[key] = body[key]
    if "priority" in body and body["priority"] is not None:
        opts["priority"] = p_int(body, "priority", minimum=0, maximum=255)
    if "retries" in body and body["retries"] is not None:
        opts["retries"] = p_int(body, "retries", minimum=0)
    for key in ("countdown", "time_limit", "soft_time_limit"):
        value = p_float(body, key, maximum=10 * 365 * 86400)
        if value is not None:
            opts[key] = value
    if "ignore_result" in body:
        opts["ignore_result"] = p_bool(body, "ignore_result")
    if _present(body.get("eta")):
        opts["eta"] = _apply_date(body, "eta")
    if _present(body.get("expires")):
        try:
            opts["expires"] = p_float(body, "expires", maximum=10 * 365 * 86400)
        except ApiError:
            opts["expires"] = _apply_date(body, "expires")
    return opts


def _apply_date(body: Mapping[str, Any], key: str) -> dt.datetime:
    value = body[key]
    if isinstance(value, str):
        for parse in (
            lambda s: dt.datetime.strptime(s, APPLY_DATE_FORMAT),
            dt.datetime.fromisoformat,
        ):
            try:
                return parse(value.strip())
            except ValueError:
                continue
    raise ApiError(
        400, f"{key} must be a date like '2024-01-31 13:45:00.000000' or ISO 8601, not {value!r}"
    )


def _sendable(name: str, args: list[Any], kwargs: dict[str, Any]) -> tuple[Any, list, dict, dict]:
    """(task, args, kwargs, extra options) to send ``name``; 404 when it is unknown.

    ``name`` is a registered task, or a ``module:function`` reference on the submit allowlist
    (sent through the dispatch task, as ``celery.submit`` does).
    """
    state = get_state()
    task = state.celery_app.tasks.get(name)
    if task is not None and name != DISPATCH_TASK_NAME:
        return task, args, kwargs, {}
    if ":" in name:
        try:
            state.allowlist.resolve(name, state.celery_app.tasks)
        except DispatchRefused:
            raise ApiError(404, f"Unknown task '{name}'") from None
        return state.dispatch_task, [name, args, kwargs], {}, {"shadow": name}
    raise ApiError(404, f"Unknown task '{name}'")


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


def _send(name: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]) -> Any:
    capp = _capp()
    if name in capp.tasks or ":" in name:
        task, a, kw, extra = _sendable(name, args, kwargs)
        return task.apply_async(a, kw, **options, **extra)
    task_id = options.pop("task_id", None) or new_uuid()
    _record_pending(name, task_id, args, kwargs, options.get("queue"))
    return capp.send_task(name, args=args, kwargs=kwargs, task_id=task_id, **options)


def _sent(result: Any) -> dict[str, Any]:
    response: dict[str, Any] = {"task-id": result.id}
    if _backend() is not None:
        response["state"] = result.state
    return response


def task_apply(name: str) -> Response:
    """``POST /api/task/apply/<name>``: run a task and wait for its result.

    JSON body: ``args``, ``kwargs``, ``timeout`` (seconds to wait, default 60, at most 3600;
    on expiry the answer has the state so far and no result), and ``apply_async`` options
    (:data:`APPLY_OPTIONS`). Status codes: 200; 400 bad body or option; 403
    read-only/cross-site; 404 unknown task; 503 broker or backend unavailable.
    """
    args, kwargs, options, timeout = _apply_body()
    task, a, kw, extra = _sendable(name, args, kwargs)
    result = task.apply_async(a, kw, **options, **extra)
    response: dict[str, Any] = {"task-id": result.id}
    if _backend() is None:
        return json_response(response)
    try:
        result.get(timeout=timeout or APPLY_WAIT, propagate=False, disable_sync_subtasks=False)
    except CeleryTimeout:
        pass
    response["state"] = result.state
    if result.ready():
        _add_result(response, result)
    return json_response(response)


def task_async_apply(name: str) -> Response:
    """``POST /api/task/async-apply/<name>``: send a task; answer at once with its id.

    Body and status codes as :func:`task_apply` (``timeout`` is ignored).
    """
    args, kwargs, options, _ = _apply_body()
    task, a, kw, extra = _sendable(name, args, kwargs)
    return json_response(_sent(task.apply_async(a, kw, **options, **extra)))


def task_send(name: str) -> Response:
    """``POST /api/task/send-task/<name>``: send by name; the task need not be registered here.

    Body as :func:`task_apply`. Status codes: 200; 400 bad body or option; 403
    read-only/cross-site; 503 broker unavailable.
    """
    args, kwargs, options, _ = _apply_body()
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
            422,
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
            raise ApiError(422, f"task '{task_id}' cannot be retried: {exc}") from None
        return state_.dispatch_task.apply_async(args, kwargs, shadow=args[0], **options)
    return _send(name, args, kwargs, options)


def task_retry(task_id: str) -> Response:
    """``POST /api/task/retry/<id>``: send a finished task again, as it was first sent.

    The name, arguments and queue come from the result backend's extended record
    (``result_extended``, on by default here), never from the truncated reprs in events.
    Answers ``{"task-id": new id, "retried-from": id, "message"}``. Status codes: 200; 403
    read-only/cross-site; 404 unknown task; 409 the task has not finished; 422 the original
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
    if not any(
        _present(p.get(k)) and p.get(k) != "All" for k in (*FILTERS, *TIME_FILTERS, "search")
    ):
        raise ApiError(
            400,
            f"bulk {action} needs at least one filter: state, taskname, workername, "
            "received_start, received_end, started_start, started_end or search",
        )
    limit = p_int(p, "limit", default=BULK_LIMIT, minimum=1, maximum=BULK_MAX)
    page = _query(p, sort_by=p_str(p, "sort_by"), offset=0, limit=limit)
    return page.total, page.tasks


def tasks_revoke() -> Response:
    """``POST /api/tasks/revoke``: revoke every unfinished task matching the filters.

    Filters as ``GET /api/tasks`` (at least one is required); ``limit`` (default 1000, at most
    10000) caps how many are handled; ``dry_run=1`` only counts; ``terminate``/``signal`` as
    the single revoke. Answers ``{"dry_run", "matched", "count", "task_ids"}``. Status codes:
    200; 400 bad or missing filter; 403 read-only/cross-site; 503 broker unavailable.
    """
    p = params()
    dry_run = p_bool(p, "dry_run")
    terminate = p_bool(p, "terminate")
    sig = _signal_name(p_str(p, "signal"))
    total, tasks = _bulk_selection(p, "revoke")
    ids = [t["uuid"] for t in tasks if t.get("state") not in FINISHED]
    if ids and not dry_run:
        log.info("celerymon: bulk revoke of %d tasks", len(ids))
        _capp().control.revoke(ids, terminate=terminate, signal=sig)
    return json_response({"dry_run": dry_run, "matched": total, "count": len(ids), "task_ids": ids})


def tasks_retry() -> Response:
    """``POST /api/tasks/retry``: retry every finished task matching the filters.

    Filters, ``limit`` and ``dry_run`` as :func:`tasks_revoke`. Answers ``{"dry_run",
    "matched", "count", "task_ids", "retried": {old: new}, "failed": {old: reason}}``; a task
    whose arguments are not known is listed in ``failed``. Status codes: 200; 400 bad or
    missing filter; 403 read-only/cross-site; 503 broker or backend unavailable.
    """
    p = params()
    dry_run = p_bool(p, "dry_run")
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


def _queue_keys(chan: Any, queue: str) -> list[str]:
    steps = list(getattr(chan, "priority_steps", [0]))
    return list(dict.fromkeys(chan._q_for_pri(queue, p) for p in steps))


def _message_summary(raw: bytes | str) -> dict[str, Any] | None:
    try:
        msg = json.loads(raw)
    except ValueError:
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


def queue_messages(queue: str) -> Response:
    """``GET /api/queues/messages/<queue>?limit=100``: the messages waiting (Redis only).

    Items: ``task-id name args kwargs eta expires retries priority``, next to be taken first.
    Status codes: 200; 400 bad ``limit``; 404 unknown queue; 409 the broker cannot list
    messages; 503 broker unavailable.
    """
    limit = p_int(params(), "limit", default=100, minimum=0, maximum=BULK_MAX)
    assert limit is not None
    _known_queue(queue)
    out: list[dict[str, Any]] = []
    with _capp().connection_for_read() as conn:
        chan = _redis_channel(conn, "listing messages")
        client = chan.client
        for key in _queue_keys(chan, queue):
            if len(out) >= limit:
                break
            # kombu pushes with LPUSH and takes with BRPOP: the tail is taken first
            raw = client.lrange(key, -(limit - len(out)), -1)
            for item in reversed(raw):
                summary = _message_summary(item)
                if summary is not None:
                    out.append(summary)
    return json_response({"queue": queue, "messages": out})


def queue_remove_message(queue: str, task_id: str) -> Response:
    """``POST /api/queues/remove/<queue>/<id>``: delete one waiting message (Redis only).

    Status codes: 200; 403 read-only/cross-site; 404 unknown queue, or no message of that
    task waits in it; 409 the broker cannot delete one message; 503 broker unavailable.
    """
    _known_queue(queue)
    with _capp().connection_for_write() as conn:
        chan = _redis_channel(conn, "deleting one message")
        client = chan.client
        for key in _queue_keys(chan, queue):
            for raw in client.lrange(key, 0, -1):
                summary = _message_summary(raw)
                if (
                    summary is not None
                    and summary["task-id"] == task_id
                    and client.lrem(key, 1, raw)
                ):
                    log.info("celerymon: removed task %s from queue %s", task_id, queue)
                    return json_response(
                        {"message": f"Removed '{task_id}' from '{queue}'", "task-id": task_id}
                    )
    raise ApiError(404, f"no message of task '{task_id}' waits in queue '{queue}'")


def openapi_document() -> Response:
    """``GET /api/openapi.json``: the OpenAPI 3 description of this API. Status codes: 200."""
    from .openapi import build_spec

    prefix = get_state().settings["CELERY_MONITOR_URL_PREFIX"] or ""
    return json_response(build_spec(prefix))


def not_found(rest: str) -> Response:
    """Any other path under ``/api/``: 404, or 405 when the path exists for other methods."""
    adapter = current_app.url_map.bind_to_environ(request.environ)
    allowed = []
    for method in ("GET", "POST"):
        if method == request.method:
            continue
        try:
            endpoint, _ = adapter.match(method=method)
        except HTTPException:
            continue
        if not endpoint.endswith(".api_not_found"):
            allowed.append(method)
    if allowed:
        resp = error(405, f"{request.method} is not allowed here; use {', '.join(allowed)}")
        extra = ["HEAD", "OPTIONS"] if "GET" in allowed else ["OPTIONS"]
        resp.headers["Allow"] = ", ".join([*allowed, *extra])
        return resp
    return error(
        404, f"no API route {request.path}; see {request.script_root}{_api_root()}/openapi.json"
    )


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


def _api_error(exc: ApiError) -> Response:
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
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    )
    bp.register_error_handler(ApiError, _api_error)
    for exc_type in UNAVAILABLE:
        bp.register_error_handler(exc_type, _unavailable)
    bp.register_error_handler(RuntimeError, _runtime_error)
    bp.register_error_handler(HTTPException, _http_error)
