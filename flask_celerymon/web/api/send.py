"""``/api/task/apply``, ``async-apply`` and ``send-task``: the body and its options.

The handlers parse and check the JSON body here, then send through
:class:`~flask_celerymon.monitor.send.Sender` (the send path the extension's ``apply_async``
shares for its PENDING record); errors are raised and answered by :mod:`..errors`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Response

from ..auth import OPERATOR, requires
from ..params import ApplyBody, doc, use_body
from .common import (
    APPLY_WAIT,
    _add_result,
    _backend,
    _wait,
    json_response,
    sender,
)

log = logging.getLogger(__name__)


# -- tasks: sending ----------------------------------------------------------------------------

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
    send = sender()
    send.check_new_task_id(options)
    result = send.apply(name, args, kwargs, options)
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
    send = sender()
    send.check_new_task_id(options)
    return json_response(_sent(send.apply(name, args, kwargs, options)))


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
    send = sender()
    send.check_new_task_id(options)
    return json_response(_sent(send.send(name, args, kwargs, options)))
