"""``/api/task/apply``, ``async-apply`` and ``send-task``: the body, checks and sending."""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from celery import states
from celery.exceptions import QueueNotFound
from celery.utils import uuid as new_uuid
from flask import Response
from kombu.exceptions import EncodeError

from ...dispatch import DISPATCH_TASK_NAME
from ...errors import DispatchRefused
from .. import get_state
from ..auth import OPERATOR, requires
from ..params import ApplyBody, doc, use_body
from .common import (
    APPLY_WAIT,
    UNAVAILABLE,
    ApiError,
    _add_result,
    _backend,
    _backend_meta,
    _capp,
    _service,
    _state_store,
    _wait,
    json_response,
)

log = logging.getLogger(__name__)


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
