"""The one guard in front of every route of the monitor blueprint.

A single ``before_request`` function decides, for every request the blueprint serves (pages,
JSON API, websockets, metrics, login), whether it may go on. Handlers never repeat these
checks. It runs :data:`CHECKS` in order and sends the first refusal:

0. :func:`~.hardening.check_surface`: 400 for a ``Host`` that is not served (DNS rebinding),
   403 for a websocket handshake from another origin, 413 for a body over the size limit
   (see :mod:`.hardening`). It runs before anything reads the body;
1. :func:`~.auth.check_access`: who is asking, and whether their role meets what the route
   declares with :func:`~.auth.requires` (401 not logged in, 403 role too weak or no
   authentication configured; see :mod:`.auth`);
2. :func:`check_same_origin`: 403 for any **cross-site mutation**: a browser request whose
   ``Sec-Fetch-Site`` header is ``cross-site`` or ``same-site``, or whose ``Origin`` header
   is not this server's origin. Same-origin fetches of the monitor's own pages pass, and so
   do clients that send neither header (curl, ``requests`` scripts written for Flower):
   browsers always send at least one of them on a cross-site POST, so a forged form or
   ``fetch`` from another site cannot act;
3. :func:`~.auth.check_csrf`: 403 for a mutation by a user logged in with a cookie (OAuth2
   login, flask-login) without the page's CSRF token;
4. :func:`check_read_only`: 403 for any **mutation** (a method other than GET, HEAD,
   OPTIONS) while ``CELERY_MONITOR_READ_ONLY`` is on, except views marked :func:`safe` (a
   POST that only reads, such as a datatable query).

Refusals are ``{"error": ...}`` JSON (:func:`.errors.json_error`; the HTML pages get the
error page). The checks return their refusal rather than raise it: a ``before_request``
function stops the request by returning a response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, request

from .errors import json_error as error  # the refusals' form; also used by .auth, .hardening

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


def check_read_only() -> Response | None:
    """403 for a mutation while ``CELERY_MONITOR_READ_ONLY`` is on."""
    from . import get_state

    if is_mutation() and get_state().settings["CELERY_MONITOR_READ_ONLY"] and not _view_is_safe():
        return error(403, "the monitor is read-only (CELERY_MONITOR_READ_ONLY is on)")
    return None


def check_same_origin() -> Response | None:
    """403 for a mutation sent by a browser from another site."""
    if not is_mutation():
        return None
    reason = cross_site_reason()
    if reason is not None:
        return error(
            403,
            f"cross-site request refused: {reason}; send it from the monitor's own pages "
            "or from a client that sends no Origin header",
        )
    return None


def _checks() -> tuple[Callable[[], Response | None], ...]:
    from .auth import check_access, check_csrf
    from .hardening import check_surface  # first: host, websocket origin, body size

    return (check_surface, check_access, check_same_origin, check_csrf, check_read_only)


#: The checks run in order for every request; the first response returned is sent instead.
CHECKS: tuple[Callable[[], Response | None], ...] = _checks()


def guard() -> Response | None:
    """The blueprint's ``before_request``: run :data:`CHECKS`, stop at the first refusal."""
    for check in CHECKS:
        refusal = check()
        if refusal is not None:
            return refusal
    return None


def register(bp: Blueprint) -> None:
    """Install :func:`guard` as a ``before_request`` of the monitor blueprint."""
    bp.before_request(guard)
