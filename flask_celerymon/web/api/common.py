"""What the API's handlers share: JSON encoding, the operations of the current app
(:func:`control`, :func:`queues`, :func:`sender`), the declarations of the task filters and
revoke parameters (fields of :mod:`..params`, whose ranges are re-exported here) and the
waits for results.

Handlers raise the :class:`~flask_celerymon.errors.OperationError` family (the operations'
errors, and :class:`~flask_celerymon.errors.InvalidInput` for a bad parameter);
:mod:`..errors` turns them into responses.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import orjson
from celery import states
from celery.exceptions import TimeoutError as CeleryTimeout
from flask import Response, current_app

from ...appstate import get_state
from ...monitor.control import Control, result_backend
from ...monitor.queues import Queues
from ...monitor.send import Sender
from ..params import (  # the parameter declarations; re-exported for the package's modules
    APPLY_DATE_FORMAT,  # noqa: F401
    APPLY_OPTIONS,  # noqa: F401
    BOOL_PATTERN,  # noqa: F401
    BULK_LIMIT,
    BULK_MAX,  # noqa: F401
    BULK_RANGE,
    FALSE,  # noqa: F401
    LIST_DATE_FORMAT,  # noqa: F401
    MAX_POOL_STEP,  # noqa: F401
    MAX_SECONDS,  # noqa: F401
    MAX_UNIX_TIME,  # noqa: F401
    MAX_WAIT,  # noqa: F401
    MESSAGES_LIMIT,  # noqa: F401
    POOL_MAX,  # noqa: F401
    POOL_MIN,  # noqa: F401
    POOL_STEP,  # noqa: F401
    PRIORITY,  # noqa: F401
    RATE_PATTERN,  # noqa: F401
    RETRIES,  # noqa: F401
    SECONDS,  # noqa: F401
    SIGNALS,  # noqa: F401
    SORT_CHOICES,
    TASKS_LIMIT,  # noqa: F401
    TASKS_OFFSET,  # noqa: F401
    TRUE,  # noqa: F401
    UNIX_TIME,  # noqa: F401
    WAIT,  # noqa: F401
    Bool,
    Choice,
    Int,
    Names,
    Range,  # noqa: F401
    Signal,
    Text,
    Time,
)

log = logging.getLogger(__name__)

#: Default wait of ``/api/task/apply`` when the body gives no ``timeout``.
APPLY_WAIT = 60.0
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


#: orjson takes the exact builtin types (str, int within 64 bits, float, bool, None, dict with
#: str keys, list, tuple) and hands everything else to :func:`_orjson_default` (subclasses,
#: datetimes and dataclasses included, by these options).
_ORJSON_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def _orjson_default(obj: Any) -> Any:
    """:func:`_default` for the types whose stdlib result is plain; anything else raises
    ``TypeError``, so the whole payload goes the standard library's way."""
    t = type(obj)
    if t is dt.datetime or t is dt.date:
        return obj.isoformat()
    if t is set or t is frozenset:
        return list(obj)
    if t is bytes:
        return obj.decode("utf-8", "replace")
    raise TypeError(t.__name__)


def encode_json(data: Any) -> bytes:
    """``data`` as JSON (UTF-8 bytes), keys in ``data``'s order; NaN and infinities are null.

    The encoding of :func:`json_response`: orjson for what it takes as the standard library
    would (exact builtin types with str keys, datetimes and dates as ISO 8601, sets as
    lists, bytes as UTF-8 text); anything else (non-str keys, integers beyond 64 bits,
    subclasses of builtins, other objects: their ``repr``) goes through :mod:`json` with
    :func:`_default`, so the JSON value is the same either way. One exception, as orjson
    encodes them natively: a ``uuid.UUID`` is its text and a plain ``enum.Enum`` member its
    value (the standard library would give their ``repr``); the API's payloads hold neither.

    Raises ``TypeError`` for what :mod:`json` refuses (e.g. a tuple as a key).
    """
    try:
        return orjson.dumps(data, default=_orjson_default, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError included
        pass
    try:
        body = json.dumps(data, default=_default, allow_nan=False)
    except ValueError:
        body = json.dumps(_finite(data), default=_default, allow_nan=False)
    return body.encode()


def json_response(data: Any, status: int = 200) -> Response:
    """JSON keeping the order of ``data`` (Flask's provider would sort the task map); see
    :func:`encode_json`. NaN and infinities (which JSON has not) become null.
    """
    return current_app.response_class(
        encode_json(data), status=status, mimetype="application/json"
    )


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
    return result_backend(_capp())


def control() -> Control:
    """Worker and task control on the current app."""
    return Control(_capp(), _service())


def queues() -> Queues:
    """The queues of the current app's broker."""
    return Queues(_capp(), _service())


def sender() -> Sender:
    """The send path of the current app (apply, send-task, retry)."""
    state = get_state()
    return Sender(state.celery_app, state.monitor, state.allowlist, state.dispatch_task)


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
#: ``terminate`` and ``signal`` of the revokes.
REVOKE_PARAMS = {
    "terminate": Bool(description="also kill the process running the task"),
    "signal": Signal(description="signal sent with terminate (default SIGTERM)"),
}
#: The parameters of both bulk actions: the filters, ``sort_by``, ``limit`` and ``dry_run``.
BULK_PARAMS = {
    **FILTER_PARAMS,
    **SORT_PARAM,
    "limit": Int(BULK_RANGE, default=BULK_LIMIT, description="at most this many (default 1000)"),
    "dry_run": Bool(description="only count and list"),
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
    """The page of tasks matching the filters of ``p``. Raises
    :class:`~flask_celerymon.monitor.query.SearchError` (an ``InvalidInput``: 400)."""
    return _service().query_tasks(**_filters(p), **kw)


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


def has_filter(p: Mapping[str, Any]) -> bool:
    """Whether the parsed parameters ``p`` give at least one task filter (what a bulk action
    requires)."""
    return any(p.get(k) is not None for k in (*FILTERS, *TIME_FILTERS, "search"))
