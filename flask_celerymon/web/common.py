"""Request helpers shared by the guard (:mod:`.guard`) and its checks (:mod:`.auth`,
:mod:`.hardening`) and the handlers: the JSON error response, what a mutation is, views marked
as reads, and the cross-site test. A leaf: it imports no other part of the blueprint, so the
guard can import the checks and the checks these helpers without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Response, current_app, jsonify, request

#: Methods that never change anything.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: Sec-Fetch-Site values that mean "not from another site" (``none``: typed by the user).
SAME_SITE_FETCH = frozenset({"same-origin", "none"})

F = TypeVar("F", bound=Callable[..., Any])


def safe(view: F) -> F:
    """Mark a view as a read even when it is reached by POST (exempt from read-only).

    Cross-site checks still apply to it.
    """
    view._celerymon_safe = True  # type: ignore[attr-defined]
    return view


#: Endpoints answered with HTML (their refusals too).
PAGE_ENDPOINTS = frozenset(
    f"celerymon.{e}"
    for e in (
        *("index", "workers", "worker", "tasks", "task", "broker", "charts", "login", "logout"),
        *("errors", "error_group", "analytics", "beat", "alerts"),  # .insight
    )
)


def error(status: int, message: str) -> Response:
    """A JSON error response ``{"error": message}`` with ``status``."""
    resp = jsonify(error=message)
    resp.status_code = status
    return resp


def is_mutation() -> bool:
    """True when the current request may change something (its method is not a safe one)."""
    return request.method not in SAFE_METHODS


def _view_is_safe() -> bool:
    endpoint = request.endpoint
    view = current_app.view_functions.get(endpoint) if endpoint else None
    return bool(getattr(view, "_celerymon_safe", False))


_DEFAULT_PORTS = (":80", ":443")


def _host(netloc: str) -> str:
    netloc = netloc.strip().lower()
    for port in _DEFAULT_PORTS:
        if netloc.endswith(port):
            return netloc[: -len(port)]
    return netloc


def cross_site_reason() -> str | None:
    """Why the current request comes from another site, or None when it does not.

    A request with neither ``Origin`` nor ``Sec-Fetch-Site`` is a non-browser client and is
    not cross-site. ``Origin`` is compared with the request's host and port, not its scheme:
    behind a proxy that ends TLS, Flask sees ``http`` while the browser says ``https``.
    """
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.strip().lower() not in SAME_SITE_FETCH:
        return f"Sec-Fetch-Site is {fetch_site!r}"
    origin = request.headers.get("Origin")
    if origin is not None:
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return f"Origin {origin!r} is not this server"
        if _host(parts.netloc) != _host(request.host):
            return f"Origin {origin!r} is not this server ({request.host})"
    return None
