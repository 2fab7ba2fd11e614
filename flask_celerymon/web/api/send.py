"""``/api/task/apply``, ``async-apply`` and ``send-task``: the body and its options.

The handlers parse and check the JSON body here, then send through
:class:`~flask_celerymon.monitor.send.Sender` (the send path the extension's ``apply_async``
shares for its PENDING record); errors are raised and answered by :mod:`..errors`.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping
from typing import Any

from flask import Response, request

from ...errors import InvalidInput
from ..auth import OPERATOR, requires
from .common import (
    APPLY_DATE_FORMAT,
    APPLY_WAIT,
    PRIORITY,
    RETRIES,
    SECONDS,
    WAIT,
    Range,
    _add_result,
    _backend,
    _parse_json,
    _wait,
    json_response,
    sender,
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
        raise InvalidInput('the request body must be a JSON object like {"args": [1, 2]}')
    body = dict(body)
    args = body.pop("args", None)
    kwargs = body.pop("kwargs", None)
    args = [] if args is None else args
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(args, list):
        raise InvalidInput(f"args must be an array, not {args!r}")
    if not isinstance(kwargs, dict):
        raise InvalidInput(f"kwargs must be an object, not {kwargs!r}")
    timeout = _json_number(body, "timeout", WAIT)
    body.pop("timeout", None)
    unknown = sorted(set(body) - set(APPLY_OPTIONS))
    if unknown:
        raise InvalidInput(
            f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(APPLY_OPTIONS)}"
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
        raise InvalidInput(f"{key} must be {bounds.text()}, not {value!r}")
    if not (math.isfinite(value) and bounds.minimum <= value <= bounds.maximum):
        raise InvalidInput(f"{key} must be {bounds.text()}, not {value!r}")
    return value


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """apply_async options from the apply body's JSON values; null means Celery's default."""
    opts: dict[str, Any] = {}
    for key in ("queue", "routing_key", "exchange", "task_id"):
        value = body.get(key)
        if value is not None:
            if not isinstance(value, str) or (key != "exchange" and not value):
                raise InvalidInput(f"{key} must be a non-empty string, not {value!r}")
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
        raise InvalidInput(
            f"soft_time_limit ({soft:g}) must be <= time_limit ({hard:g}), as Celery requires"
        )
    ignore = body.get("ignore_result")
    if ignore is not None:
        if not isinstance(ignore, bool):
            raise InvalidInput(f"ignore_result must be true or false, not {ignore!r}")
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
    raise InvalidInput(
        f"{key} must be a date like '2024-01-31 13:45:00.000000' or ISO 8601 between 1970 and "
        f"9998, not {value!r}",
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
def task_async_apply(name: str) -> Response:
    """``POST /api/task/async-apply/<name>``: send a task; answer at once with its id.

    Body and status codes as :func:`task_apply` (``timeout`` is ignored).
    """
    args, kwargs, options, _ = _apply_body()
    send = sender()
    send.check_new_task_id(options)
    return json_response(_sent(send.apply(name, args, kwargs, options)))


@requires(OPERATOR)
def task_send(name: str) -> Response:
    """``POST /api/task/send-task/<name>``: send by name; the task need not be registered here.

    Body as :func:`task_apply`. Status codes: 200; 400 bad body or option; 403
    read-only/cross-site; 409 ``task_id`` names an existing task; 503 broker unavailable.
    """
    args, kwargs, options, _ = _apply_body()
    send = sender()
    send.check_new_task_id(options)
    return json_response(_sent(send.send(name, args, kwargs, options)))
