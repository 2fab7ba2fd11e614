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

The package is split as Flower's API is: :mod:`.workers` (``/api/workers``, ``/api/worker/*``),
:mod:`.tasks` (``/api/task*``: reading, control, retry, bulk), :mod:`.send` (apply,
async-apply, send-task), :mod:`.queues` (``/api/queues/*``), and :mod:`.common` (what they
share: JSON encoding, the task filters' declarations, the operations of the current app).
Handlers declare their parameters with :mod:`..params` (which parses them and writes them into
``openapi.json``), call an operation of :mod:`flask_celerymon.monitor` (``control``,
``queues``, ``send``) and render; what they raise is answered by :mod:`..errors`. This module
holds the route table, the OpenAPI route and the JSON 404/405 of paths and methods the API
does not have, and re-exports the names other modules use (``from flask_celerymon.web import
api; api.TASKS_LIMIT``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import PathConverter

from ...appstate import get_state
from ...monitor.control import FINISHED
from ..auth import VIEWER, requires
from ..errors import is_api_request, json_error
from .common import (
    APPLY_DATE_FORMAT,
    APPLY_OPTIONS,
    APPLY_WAIT,
    BOOL_PATTERN,
    BULK_LIMIT,
    BULK_MAX,
    BULK_RANGE,
    FALSE,
    FILTER_PARAMS,
    FILTERS,
    LIST_DATE_FORMAT,
    MAX_POOL_STEP,
    MAX_SECONDS,
    MAX_UNIX_TIME,
    MAX_WAIT,
    MESSAGES_LIMIT,
    POOL_MAX,
    POOL_MIN,
    POOL_STEP,
    PRIORITY,
    RATE_PATTERN,
    RETRIES,
    SECONDS,
    SIGNALS,
    SORT_CHOICES,
    TASKS_LIMIT,
    TASKS_OFFSET,
    TIME_FILTERS,
    TRUE,
    UNIX_TIME,
    WAIT,
    Range,
    control,
    has_filter,
    json_response,
    queues,
    sender,
)
from .queues import (
    queue_lengths,
    queue_messages,
    queue_purge,
    queue_remove_message,
)
from .send import (
    task_apply,
    task_async_apply,
    task_send,
)
from .tasks import (
    _retry as _retry,
)
from .tasks import (
    list_tasks,
    task_abort,
    task_info,
    task_rate_limit,
    task_result,
    task_retry,
    task_revoke,
    task_timeout,
    task_types,
    tasks_retry,
    tasks_revoke,
)
from .workers import (
    list_workers,
    worker_add_consumer,
    worker_cancel_consumer,
    worker_pool_autoscale,
    worker_pool_grow,
    worker_pool_restart,
    worker_pool_shrink,
    worker_shutdown,
)

#: What ``from flask_celerymon.web import api`` offers: the handlers, the parameter ranges and
#: parsers (used by :mod:`..openapi`, :mod:`..insight`, the tests and ``bench/``), ``register``.
__all__ = [
    "sender",
    "queues",
    "control",
    "APPLY_DATE_FORMAT",
    "APPLY_OPTIONS",
    "APPLY_WAIT",
    "AnyPathConverter",
    "BOOL_PATTERN",
    "BULK_LIMIT",
    "BULK_MAX",
    "BULK_RANGE",
    "CONVERTER",
    "FALSE",
    "FILTER_PARAMS",
    "FILTERS",
    "FINISHED",
    "LIST_DATE_FORMAT",
    "MAX_POOL_STEP",
    "MAX_SECONDS",
    "MAX_UNIX_TIME",
    "MAX_WAIT",
    "MESSAGES_LIMIT",
    "POOL_MAX",
    "POOL_MIN",
    "POOL_STEP",
    "PRIORITY",
    "RATE_PATTERN",
    "RETRIES",
    "ROUTES",
    "Range",
    "SECONDS",
    "SIGNALS",
    "SORT_CHOICES",
    "TASKS_LIMIT",
    "TASKS_OFFSET",
    "TIME_FILTERS",
    "TRUE",
    "UNIX_TIME",
    "WAIT",
    "has_filter",
    "json_response",
    "list_tasks",
    "list_workers",
    "not_found",
    "queue_lengths",
    "queue_messages",
    "queue_purge",
    "queue_remove_message",
    "register",
    "task_abort",
    "task_apply",
    "task_async_apply",
    "task_info",
    "task_rate_limit",
    "task_result",
    "task_retry",
    "task_revoke",
    "task_send",
    "task_timeout",
    "task_types",
    "tasks_retry",
    "tasks_revoke",
    "worker_add_consumer",
    "worker_cancel_consumer",
    "worker_pool_autoscale",
    "worker_pool_grow",
    "worker_pool_restart",
    "worker_pool_shrink",
    "worker_shutdown",
]


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
    resp = json_error(405, f"{request.method} is not allowed here; use {', '.join(usable)}")
    resp.headers["Allow"] = ", ".join(allowed)
    return resp


@requires(VIEWER)
def not_found(rest: str) -> Response:
    """Any other path under ``/api/``: 404, or 405 when the path exists for other methods."""
    allowed = _allowed_methods()
    if allowed:
        return _method_not_allowed(allowed)
    return json_error(
        404, f"no API route {request.path}; see {request.script_root}{_api_root()}/openapi.json"
    )


def _allow_header(response: Response) -> Response:
    """An API ``OPTIONS`` answer lists the route's own methods, not the catch-all's."""
    if request.method == "OPTIONS" and is_api_request():
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
)


def _http_error(exc: HTTPException) -> Any:
    if not is_api_request():
        return exc
    if isinstance(exc, MethodNotAllowed):
        allowed = _allowed_methods()
        if allowed:
            return _method_not_allowed(allowed)
    if isinstance(exc, (NotFound, MethodNotAllowed)) or exc.code is None:
        return json_error(exc.code or 500, exc.description or exc.name)
    return json_error(exc.code, exc.description or exc.name)


def _add_converter(setup: Any) -> None:
    setup.app.url_map.converters.setdefault(CONVERTER, AnyPathConverter)


def register(bp: Blueprint) -> None:
    """Add the API routes, the catch-all and the JSON 404/405 to the monitor blueprint.

    Every other error (bad input, unknown objects, conflicts, an unavailable broker) is
    answered by :mod:`..errors`, registered by the blueprint for all its routes.
    """
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
    bp.register_error_handler(HTTPException, _http_error)
