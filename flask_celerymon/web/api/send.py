"""``/api/task/apply``, ``async-apply`` and ``send-task``: the body, checks and sending."""

from __future__ import annotations

import contextlib
import datetime as dt
import inspect
import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any

from celery import states
from celery.exceptions import QueueNotFound
from celery.utils import uuid as new_uuid
from flask import Response, request
from kombu.exceptions import EncodeError

from ...dispatch import DISPATCH_TASK_NAME
from ...errors import DispatchRefused
from .. import get_state
from ..auth import OPERATOR, requires
from .common import (
    APPLY_DATE_FORMAT,
    APPLY_WAIT,
    PRIORITY,
    RETRIES,
    SECONDS,
    UNAVAILABLE,
    WAIT,
    ApiError,
    Range,
    _add_result,
    _backend,
    _backend_meta,
    _capp,
    _parse_json,
    _service,
    _state_store,
    _wait,
    json_response,
)

log = logging.getLogger(__name__)


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
    body = _parse_json(raw) if raw.strip() else {}
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
    timeout = _json_number(body, "timeout", WAIT)
    body.pop("timeout", None)
    unknown = sorted(set(body) - set(APPLY_OPTIONS))
    if unknown:
        raise ApiError(
            400, f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(APPLY_OPTIONS)}"
        )
    return args, kwargs, _options(body), timeout


def _json_number(body: Mapping[str, Any], key: str, bounds: Range) -> Any:
    """``body[key]`` as a JSON number within ``bounds`` (None when null or absent); 400 else.

    A JSON body is typed: ``"5"`` is not a number here (a query string or form has only text,
    and :func:`p_int`/:func:`p_float` parse that).
    """
    value = body.get(key)
    if value is None:
        return None
    integer_ok = isinstance(value, int) and not isinstance(value, bool)
    if not (integer_ok or (not bounds.integer and isinstance(value, float))):
        raise ApiError(400, f"{key} must be {bounds.text()}, not {value!r}")
    if not (math.isfinite(value) and bounds.minimum <= value <= bounds.maximum):
        raise ApiError(400, f"{key} must be {bounds.text()}, not {value!r}")
    return value


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """apply_async options from the apply body's JSON values; null means Celery's default."""
    opts: dict[str, Any] = {}
    for key in ("queue", "routing_key", "exchange", "task_id"):
        value = body.get(key)
        if value is not None:
            if not isinstance(value, str) or (key != "exchange" and not value):
                raise ApiError(400, f"{key} must be a non-empty string, not {value!r}")
            opts[key] = value
    for key, bounds in (
        ("priority", PRIORITY),
        ("retries", RETRIES),
        ("countdown", SECONDS),
        ("time_limit", SECONDS),
        ("soft_time_limit", SECONDS),
    ):
        value = _json_number(body, key, bounds)
        if value is not None:
            opts[key] = value
    soft, hard = opts.get("soft_time_limit"), opts.get("time_limit")
    if soft and hard and soft > hard:
        raise ApiError(
            400, f"soft_time_limit ({soft:g}) must be <= time_limit ({hard:g}), as Celery requires"
        )
    ignore = body.get("ignore_result")
    if ignore is not None:
        if not isinstance(ignore, bool):
            raise ApiError(400, f"ignore_result must be true or false, not {ignore!r}")
        opts["ignore_result"] = ignore
    if body.get("eta") is not None:
        opts["eta"] = _apply_date(body, "eta")
    expires = body.get("expires")
    if isinstance(expires, str):
        opts["expires"] = _apply_date(body, "expires")
    elif expires is not None:
        opts["expires"] = _json_number(body, "expires", SECONDS)
    return opts


#: Dates apply accepts for ``eta`` and ``expires``: years 1970 to 9998, so that Celery's time
#: zone conversions cannot overflow.
_DATE_RANGE = (dt.datetime(1970, 1, 2), dt.datetime(9998, 12, 31))


def _apply_date(body: Mapping[str, Any], key: str) -> dt.datetime:
    """``body[key]``: Flower's ``%Y-%m-%d %H:%M:%S.%f`` or ISO 8601, 1970-9998; 400 else."""
    value = body[key]
    if isinstance(value, str):
        for parse in (
            lambda s: dt.datetime.strptime(s, APPLY_DATE_FORMAT),
            dt.datetime.fromisoformat,
        ):
            try:
                date = parse(value.strip())
            except ValueError:
                continue
            if _DATE_RANGE[0] <= date.replace(tzinfo=None) <= _DATE_RANGE[1]:
                return date
    raise ApiError(
        400,
        f"{key} must be a date like '2024-01-31 13:45:00.000000' or ISO 8601 between 1970 and "
        f"9998, not {value!r}",
    )


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


@requires(OPERATOR)
def task_apply(name: str) -> Response:
    """``POST /api/task/apply/<name>``: run a task and wait for its result.

    JSON body: ``args``, ``kwargs``, ``timeout`` (seconds to wait, default 60, at most 3600,
    cut to ``CELERY_MONITOR_MAX_WAIT_SECONDS`` and skipped while
    ``CELERY_MONITOR_MAX_CONCURRENT_WAITS`` requests wait already; on expiry the answer has
    the state so far and no result), and ``apply_async`` options (:data:`APPLY_OPTIONS`).
    Status codes: 200; 400 bad body or option, or JSON nested too deep; 403
    read-only/cross-site; 404 unknown task; 409 ``task_id`` names an existing task; 413 body
    too large; 503 broker or backend unavailable.
    """
    args, kwargs, options, timeout = _apply_body()
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
def task_async_apply(name: str) -> Response:
    """``POST /api/task/async-apply/<name>``: send a task; answer at once with its id.

    Body and status codes as :func:`task_apply` (``timeout`` is ignored).
    """
    args, kwargs, options, _ = _apply_body()
    _check_new_task_id(options)
    return json_response(_sent(_apply(name, args, kwargs, options)))


@requires(OPERATOR)
def task_send(name: str) -> Response:
    """``POST /api/task/send-task/<name>``: send by name; the task need not be registered here.

    Body as :func:`task_apply`. Status codes: 200; 400 bad body or option; 403
    read-only/cross-site; 409 ``task_id`` names an existing task; 503 broker unavailable.
    """
    args, kwargs, options, _ = _apply_body()
    _check_new_task_id(options)
    return json_response(_sent(_send(name, args, kwargs, options)))
