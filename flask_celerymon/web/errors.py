"""How an error becomes a response: the one place, for every route of the monitor blueprint.

Handlers and operations raise; they never build error responses. :func:`register` installs
the blueprint's error handlers:

* :class:`~flask_celerymon.errors.OperationError` (the operations' errors, the pages' and the
  API's bad input, a search error) -> the status of :data:`STATUS`, as ``{"error": message}``
  JSON, or the HTML error page for a page (a ``GET`` of an endpoint in
  :data:`~.common.PAGE_ENDPOINTS`);
* the broker's and result backend's connection errors (:data:`UNAVAILABLE`, and Celery's
  bare ``RuntimeError`` over one) on an API route -> 503 ``{"error": "Broker or result
  backend unavailable: ..."}`` (the pages keep Flask's own handling).

:func:`json_error` and :func:`page_error` are the two forms a refusal takes; the guard's
checks (which return, not raise, their refusals) use :func:`json_error` too.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from flask import Response, render_template, request
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import (
    ConflictError,
    InvalidInput,
    NotFoundError,
    OperationError,
    RefusedError,
    UnavailableError,
)
from .common import PAGE_ENDPOINTS
from .common import error as json_error

log = logging.getLogger(__name__)

#: The HTTP status of each kind of :class:`OperationError` (the first match wins).
STATUS: tuple[tuple[type[OperationError], int], ...] = (
    (InvalidInput, 400),
    (RefusedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (UnavailableError, 503),
)
#: The error page's title per status, unless the error gives one.
TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Conflict"}

#: Exceptions that mean "the broker or the result backend cannot be reached" (-> 503).
UNAVAILABLE: tuple[type[Exception], ...] = (
    OperationalError,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    socket.timeout,
)


def status_of(exc: OperationError) -> int:
    """The HTTP status of ``exc`` (:data:`STATUS`; 500 for a kind it does not list)."""
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def page_error(status: int, title: str, message: str) -> Response:
    """The HTML error page (``celerymon/error.html``) with ``title`` and ``message``."""
    return Response(
        render_template("celerymon/error.html", title=title, message=message),
        status=status,
        mimetype="text/html",
    )


def is_page() -> bool:
    """True when the current request asks for an HTML page (its errors are pages too)."""
    return request.method == "GET" and (request.endpoint or "") in PAGE_ENDPOINTS


def is_api_request() -> bool:
    """True when the current request matched a route of the JSON API (``.../api/...``)."""
    rule = request.url_rule
    return rule is not None and "/api/" in rule.rule


def operation_error(exc: OperationError) -> Response:
    """The response to ``exc``: its status, with JSON or, for a page, the error page."""
    status = status_of(exc)
    if is_page():
        title = getattr(exc, "title", None) or TITLES.get(status, "Error")
        return page_error(status, title, str(exc))
    return json_error(status, str(exc))


def unavailable(exc: Exception) -> Response:
    """503 for an API route when the broker or the result backend cannot be reached."""
    if not is_api_request():
        raise exc  # the pages of the blueprint keep Flask's own handling
    log.warning("celerymon: broker or result backend unavailable: %s", exc)
    return json_error(503, f"Broker or result backend unavailable: {exc}")


def runtime_error(exc: RuntimeError) -> Response:
    """Celery's result consumer gives up on a dead backend with a bare RuntimeError."""
    if isinstance(exc.__cause__, UNAVAILABLE) and is_api_request():
        return unavailable(exc.__cause__)
    raise exc


def register(bp: Any) -> None:
    """Install the error handlers on the monitor blueprint ``bp``."""
    bp.register_error_handler(OperationError, operation_error)
    for exc_type in UNAVAILABLE:
        bp.register_error_handler(exc_type, unavailable)
    bp.register_error_handler(RuntimeError, runtime_error)
