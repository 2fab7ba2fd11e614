"""What the API's handlers share: limits and ranges, JSON encoding, parameter parsing, the
operations of the current app (:func:`control`, :func:`queues`, :func:`sender`), task filters
and the waits for results.

Handlers raise the :class:`~flask_celerymon.errors.OperationError` family (the operations'
errors, and :class:`~flask_celerymon.errors.InvalidInput` for a bad parameter);
:mod:`..errors` turns them into responses.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery import states
from celery.exceptions import TimeoutError as CeleryTimeout
from flask import Response, current_app, request

from ...errors import InvalidInput
from ...monitor.control import (
    SIGNAL_HINT,
    SIGNALS,
    Control,
    result_backend,
    signal_name,
)
from ...monitor.query import SORT_KEYS
from ...monitor.queues import Queues
from ...monitor.send import Sender
from .. import get_state
from ..hardening import JSONTooDeep, load_json

log = logging.getLogger(__name__)

#: Flower's date formats: ``received_start``/``received_end`` and apply's ``eta``/``expires``.
LIST_DATE_FORMAT = "%Y-%m-%d %H:%M"
APPLY_DATE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

#: Longest wait of ``/api/task/apply`` and ``/api/task/result`` (seconds).
MAX_WAIT = 3600.0
#: Default wait of ``/api/task/apply`` when the body gives no ``timeout``.
APPLY_WAIT = 60.0
#: Default and largest number of tasks a bulk action handles in one request.
BULK_LIMIT = 1000
BULK_MAX = 10_000
#: Largest ``n`` of pool grow/shrink and ``max`` of autoscale.
MAX_POOL_STEP = 1000
#: Longest countdown, expiry and time limit accepted (seconds: ten years).
MAX_SECONDS = 10 * 365 * 86400
#: Latest Unix time accepted by the time filters (9999-12-31 23:59:59 UTC).
MAX_UNIX_TIME = 253_402_300_799


@dataclass(frozen=True)
class Range:
    """The documented range of a number parameter, inclusive at both ends.

    The one declaration of each bound: :func:`p_int`/:func:`p_float` refuse a value outside
    it with a 400 naming the parameter and the range, and :mod:`.openapi` writes it into the
    document (``minimum``/``maximum``). Every bound fits SQLite's 64-bit integers.
    """

    minimum: float
    maximum: float
    integer: bool = True

    def schema(self) -> dict[str, Any]:
        """The OpenAPI schema of a value in this range."""
        kind = "integer" if self.integer else "number"
        return {"type": kind, "minimum": self.minimum, "maximum": self.maximum}

    def text(self) -> str:
        """``"an integer from 0 to 10000"``, for error messages and the docs."""
        kind = "an integer" if self.integer else "a number"
        return f"{kind} from {_plain(self.minimum)} to {_plain(self.maximum)}"


def _plain(x: float) -> str:
    """``1000000`` rather than ``1e+06``."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


#: ``ratelimit`` of ``/api/task/rate-limit``: Celery's syntax (tasks per second, or per
#: ``/s``, ``/m``, ``/h``); matched with ``re.search`` as JSON Schema's ``pattern`` is.
RATE_PATTERN = r"^[0-9]{1,9}(\.[0-9]{1,6})?(/[smh])?$"
#: Every value of ``sort_by`` (``-`` for descending).
SORT_CHOICES = tuple(f"{d}{k}" for k in SORT_KEYS for d in ("", "-"))

#: ``limit`` and ``offset`` of ``GET /api/tasks``.
TASKS_LIMIT = Range(0, 1_000_000)
TASKS_OFFSET = Range(0, 1_000_000_000)
#: ``limit`` of the bulk actions and of ``GET /api/queues/messages``.
BULK_RANGE = Range(1, BULK_MAX)
MESSAGES_LIMIT = Range(0, BULK_MAX)
#: ``n`` of pool grow/shrink, ``min``/``max`` of autoscale.
POOL_STEP = Range(1, MAX_POOL_STEP)
POOL_MIN = Range(0, MAX_POOL_STEP)
POOL_MAX = Range(1, MAX_POOL_STEP)
#: ``timeout`` of result and apply (seconds).
WAIT = Range(0, MAX_WAIT, integer=False)
#: ``soft``/``hard`` time limits, ``countdown``, ``expires``, ``(soft_)time_limit`` (seconds).
SECONDS = Range(0, MAX_SECONDS, integer=False)
#: apply's ``priority`` (AMQP's 0-255; Redis uses 0-9) and ``retries``.
PRIORITY = Range(0, 255)
RETRIES = Range(0, 1_000_000)
#: The time filters given as Unix seconds.
UNIX_TIME = Range(0, MAX_UNIX_TIME, integer=False)

TRUE = frozenset({"y", "yes", "t", "true", "on", "1"})
FALSE = frozenset({"n", "no", "f", "false", "off", "0", ""})


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c}]" if c.isalpha() else c for c in word)


#: The texts a boolean parameter takes (Flower's ``strtobool`` words in any case, or empty for
#: the default), as a JSON Schema ``pattern`` matched with ``re.search`` (as JSON Schema is).
BOOL_PATTERN = "^(" + "|".join(_any_case(w) for w in sorted(TRUE | FALSE) if w) + ")?$"


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


def _parse_json(raw: bytes) -> Any:
    """Request JSON, nested at most ``CELERY_MONITOR_MAX_JSON_DEPTH`` deep; 400 otherwise."""
    try:
        return load_json(raw, get_state().limits.max_json_depth)
    except JSONTooDeep as exc:
        raise InvalidInput(str(exc)) from None
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from None


def _json_body() -> Any:
    if not request.get_data(cache=True):
        return None
    if not request.is_json:
        return None
    return _parse_json(request.get_data(cache=True))


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
            raise InvalidInput(f"missing parameter {name!r}")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, not {value!r}")
    return value.strip()


def p_choice(
    p: Mapping[str, Any], name: str, choices: tuple[str, ...], shown: str | None = None
) -> str | None:
    """``p[name]`` exactly as given when it is one of ``choices``; None when absent or empty.

    Raises :class:`~flask_celerymon.errors.InvalidInput` naming the choices otherwise.
    """
    value = p.get(name)
    if value is None or value == "":
        return None
    if value not in choices:
        raise InvalidInput(
            f"{name} must be {shown or 'one of ' + ', '.join(choices)}, not {value!r}"
        )
    return value


def p_pattern(p: Mapping[str, Any], name: str, pattern: str, example: str) -> str:
    """Required ``p[name]`` matching ``pattern`` (``re.search``, as JSON Schema), stripped.

    Raises :class:`~flask_celerymon.errors.InvalidInput` when it is missing or does not match.
    """
    value = p.get(name)
    if not _present(value):
        raise InvalidInput(f"missing parameter {name!r}")
    if not isinstance(value, str) or not re.search(pattern, value):
        raise InvalidInput(f"{name} must be like {example}, not {value!r}")
    return value.strip()


def p_bool(p: Mapping[str, Any], name: str, default: bool = False) -> bool:
    """``p[name]`` as a boolean: a text matching :data:`BOOL_PATTERN` (empty: ``default``),
    or a JSON boolean, 0 or 1. Raises :class:`~flask_celerymon.errors.InvalidInput` for anything else."""
    value = p.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and re.search(BOOL_PATTERN, value):
        text = value.strip().lower()
        return True if text in TRUE else (False if text else default)
    raise InvalidInput(f"{name} must be a boolean (1/0, true/false, yes/no), not {value!r}")


#: Number texts: ASCII digits only (Python's int() and float() also take other scripts' digits,
#: ``_`` separators, white space, ``inf`` and ``nan``).
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def p_int(
    p: Mapping[str, Any],
    name: str,
    bounds: Range,
    default: int | None = None,
    required: bool = False,
) -> int | None:
    """``p[name]`` as an int within ``bounds``; ``default`` when absent or empty.

    Raises :class:`~flask_celerymon.errors.InvalidInput` when it is missing but ``required``, not an integer (white
    space is not one), or outside ``bounds``.
    """
    value: Any = p.get(name)
    if value is None or value == "":
        if required:
            raise InvalidInput(f"missing parameter {name!r}")
        return default
    if isinstance(value, str) and _INT_TEXT.fullmatch(value):
        n = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        raise InvalidInput(f"{name} must be {bounds.text()}, not {value!r}")
    if not bounds.minimum <= n <= bounds.maximum:
        raise InvalidInput(f"{name} must be {bounds.text()}, not {value!r}")
    return n


def p_float(p: Mapping[str, Any], name: str, bounds: Range) -> float | None:
    """``p[name]`` as a finite float within ``bounds``, or None when absent or empty.

    Raises :class:`~flask_celerymon.errors.InvalidInput` when it is not a number (white space is not one) or
    outside ``bounds``.
    """
    value: Any = p.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value):
        f = float(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            f = float(value)
        except OverflowError:
            raise InvalidInput(f"{name} must be {bounds.text()}, not {value!r}") from None
    else:
        raise InvalidInput(f"{name} must be {bounds.text()}, not {value!r}")
    if not (math.isfinite(f) and bounds.minimum <= f <= bounds.maximum):
        raise InvalidInput(f"{name} must be {bounds.text()}, not {value!r}")
    return f


def p_time(p: Mapping[str, Any], name: str) -> float | None:
    """Flower's ``%Y-%m-%d %H:%M`` (local time), ISO 8601, or Unix seconds; as Unix seconds.

    Raises :class:`~flask_celerymon.errors.InvalidInput` for any other value, and for a time outside
    :data:`UNIX_TIME` (1970 to 9999).
    """
    value = p.get(name)
    if not _present(value):
        return None
    bad = InvalidInput(
        f"{name} must be a date like '2024-01-31 13:45' (local time), ISO 8601 or "
        f"Unix seconds from 0 to {MAX_UNIX_TIME}, not {value!r}",
    )
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise bad
    try:
        if isinstance(value, str):
            text = value.strip()
            digits = text.replace(".", "", 1)
            if digits.isascii() and digits.isdigit():
                seconds = float(text)
            else:
                seconds = _parse_date(text).timestamp()
        else:
            seconds = float(value)
    except (ValueError, OverflowError, OSError):
        raise bad from None
    if not (math.isfinite(seconds) and UNIX_TIME.minimum <= seconds <= UNIX_TIME.maximum):
        raise bad
    return seconds


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
        raise InvalidInput(f"{name} must be a string, not {value!r}")
    items = [v for v in items if v and v != "All"]
    return tuple(items) or None


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


def _signal_name(p: Mapping[str, Any]) -> str:
    """The ``signal`` parameter as ``SIGTERM``-style name; 400 for an unknown one."""
    return signal_name(p_choice(p, "signal", SIGNALS, SIGNAL_HINT))


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
            raise InvalidInput(f"search must be a string, not {search!r}")
        out["search"] = search
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
    """Whether ``p`` names at least one task filter (what a bulk action requires)."""
    return any(
        _present(p.get(k)) and p.get(k) != "All" for k in (*FILTERS, *TIME_FILTERS, "search")
    )
