"""The browser surface of the monitor and the limits that keep one client from starving the app.

It applies to the monitor's own routes (pages, API, websocket, metrics, login) and never to
the host app's: :func:`check_surface` is the first of the guard's checks, and :func:`register`
adds the headers to the blueprint. In request order:

* **Host check**: with ``CELERY_MONITOR_TRUSTED_HOSTS`` set, a
  request whose ``Host`` names another server is refused with ``400 {"error": ...}``. This is
  what defeats DNS rebinding (a hostile page whose name resolves to the monitor's address sends
  its own name as ``Host``). ``flask celery monitor`` bound to a loopback address sets it to the
  loopback names unless the app configures a list (ours, or Flask's ``TRUSTED_HOSTS``, which
  Flask itself enforces for the whole app).
* **Anonymous access under a name** (:func:`check_anonymous_host`, run by
  :func:`.auth.check_access` when it lets a request in without credentials): with no trusted
  hosts configured, anonymous access is served only to a ``Host`` that no other site can make
  its own: an IP address, ``localhost`` or a ``*.localhost`` name. A DNS name is refused with
  403, since a rebinding page would send its own name; debug mode, testing mode and
  ``CELERY_MONITOR_ALLOW_ANONYMOUS`` all open the monitor to anonymous users, so without this
  any web page a developer visits could drive a local monitor (the example app, ``flask run
  --debug``).
* **Websocket origin**: the live feed (``<prefix>/ws``) refuses with 403 a
  handshake a browser sends from another origin (:func:`.guard.cross_site_reason`); without it
  any site could open the feed and read task arguments and results.
* **Body size**: a body larger than ``CELERY_MONITOR_MAX_CONTENT_LENGTH``
  bytes is answered ``413 {"error": ...}`` before any view runs (a chunked body is read
  first, up to one byte past the limit).
* **Headers** (``after_request``): :data:`SECURITY_HEADERS` on every monitor response: a strict
  ``Content-Security-Policy`` (scripts, styles and connections from this origin only, no inline
  script, no framing), ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff`` and
  ``Referrer-Policy: same-origin``. A header a view set itself is kept.

The limits the handlers apply (one :class:`Limits` per app, ``AppState.limits``):

* at most ``CELERY_MONITOR_MAX_LIVE_SOCKETS`` live pages at once per process; the next one is
  closed with code :data:`BUSY_CLOSE_CODE` and the page polls instead (``.live``);
* at most ``CELERY_MONITOR_MAX_CONCURRENT_WAITS`` requests waiting for a task result at once,
  each for at most ``CELERY_MONITOR_MAX_WAIT_SECONDS``; beyond that a request answers at once
  with the task's current state (``.api``);
* request JSON nested at most ``CELERY_MONITOR_MAX_JSON_DEPTH`` deep (:func:`load_json`).
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

if TYPE_CHECKING:
    from ..config import Settings

#: The policy of every monitor response: nothing inline, nothing from elsewhere, never framed.
#: ``connect-src 'self'`` covers the same-origin websocket (CSP level 3).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)

#: Headers added to every response of the monitor blueprint (unless the view set them).
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

#: Host names a standalone monitor bound to a loopback address serves by default.
LOOPBACK_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

#: Websocket close code for "the live-page cap is reached": the page polls instead.
#: (4000-4999 are for applications; 1013 "try again later" already means "reconnect now".)
BUSY_CLOSE_CODE = 4503


class Gate:
    """A count of holders that never exceeds ``size``; entering never blocks.

    Thread-safe. ``size`` 0 lets nobody in.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """How many hold the gate now."""
        return self._held

    def enter(self) -> bool:
        """Take a place if one is free: True when taken (then call :meth:`leave`)."""
        with self._lock:
            if self._held >= self.size:
                return False
            self._held += 1
            return True

    def leave(self) -> None:
        """Give back a place taken by :meth:`enter`."""
        with self._lock:
            if self._held <= 0:
                raise RuntimeError("Gate.leave() without a matching enter()")
            self._held -= 1

    @contextmanager
    def hold(self) -> Iterator[bool]:
        """``with gate.hold() as entered:``; ``entered`` is False when the gate was full."""
        entered = self.enter()
        try:
            yield entered
        finally:
            if entered:
                self.leave()


@dataclass(frozen=True)
class Limits:
    """The per-process limits of one app's monitor (see the module docstring)."""

    sockets: Gate
    waits: Gate
    max_wait: float
    poll_interval: float
    max_json_depth: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            sockets=Gate(settings["CELERY_MONITOR_MAX_LIVE_SOCKETS"]),
            waits=Gate(settings["CELERY_MONITOR_MAX_CONCURRENT_WAITS"]),
            max_wait=float(settings["CELERY_MONITOR_MAX_WAIT_SECONDS"]),
            poll_interval=float(settings["CELERY_MONITOR_POLL_INTERVAL"]),
            max_json_depth=settings["CELERY_MONITOR_MAX_JSON_DEPTH"],
        )


# -- JSON -------------------------------------------------------------------------------------


class JSONTooDeep(ValueError):
    """A JSON document nested deeper than allowed."""


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(raw: bytes | str, stop_above: int | None = None) -> int:
    """How deep arrays and objects nest in the JSON text ``raw`` (0 for a scalar).

    Brackets inside strings do not count. Linear in ``len(raw)``, no recursion; stops
    counting once the depth exceeds ``stop_above``. Bytes are decoded as :func:`json.loads`
    would (UTF-8, -16 or -32, detected).
    """
    text = raw if isinstance(raw, str) else raw.decode(json.detect_encoding(raw), "surrogatepass")
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    depth = deepest = 0
    for ch in brackets:
        if ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_above is not None and deepest > stop_above:
                    break
        else:
            depth -= 1
    return deepest


def load_json(raw: bytes | str, max_depth: int) -> Any:
    """Parse request JSON nested at most ``max_depth`` deep.

    Raises :class:`JSONTooDeep` (a ValueError) when it nests deeper, before parsing (Python's
    parser recurses, and a deep document would exhaust the stack), and ``json``'s ValueError
    when it is not JSON.
    """
    if json_depth(raw, stop_above=max_depth) > max_depth:
        raise JSONTooDeep(
            f"the JSON body nests deeper than {max_depth} levels "
            "(CELERY_MONITOR_MAX_JSON_DEPTH); send a flatter document"
        )
    return json.loads(raw)


# -- host names -------------------------------------------------------------------------------


def host_name(host: str) -> str | None:
    """The lower-cased name of a ``Host`` value (``[::1]:5555`` -> ``::1``), None if invalid."""
    try:
        parts = urlsplit("//" + host)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    name = parts.hostname
    if not name or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    return name.rstrip(".")


def host_is_trusted(host: str, trusted: list[str] | tuple[str, ...]) -> bool:
    """True when the ``Host`` value ``host`` names one of ``trusted``.

    A trusted entry is a name (``monitor.example.com``), an IP address (``127.0.0.1``,
    ``::1`` or ``[::1]``), or ``.example.com`` for that domain and every subdomain (Flask's
    ``TRUSTED_HOSTS`` syntax). Ports are ignored; names compare case-insensitively.
    (werkzeug's own matcher cannot express IPv6 addresses, hence this one.)
    """
    name = host_name(host)
    if name is None:
        return False
    for entry in trusted:
        entry = entry.strip().lower().strip("[]").rstrip(".")
        if entry.startswith("."):
            if name == entry[1:] or name.endswith(entry):
                return True
        elif name == entry:
            return True
    return False


def host_is_pinned(host: str) -> bool:
    """True when the ``Host`` value ``host`` cannot name a hostile site: an IP address,
    ``localhost`` or a ``*.localhost`` name (RFC 6761; browsers resolve it to loopback
    themselves). Ports are ignored. A DNS rebinding page always sends a DNS name it owns."""
    name = host_name(host)
    if name is None:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


# -- the blueprint's hooks --------------------------------------------------------------------


def _settings() -> Any:
    from ..appstate import get_state

    return get_state().settings


def check_host() -> Response | None:
    """400 when ``CELERY_MONITOR_TRUSTED_HOSTS`` is set and the ``Host`` header is not in it."""
    from .common import error

    trusted = _settings()["CELERY_MONITOR_TRUSTED_HOSTS"]
    if trusted is None:
        return None
    host = request.headers.get("Host", "")
    if host_is_trusted(host, trusted):
        return None
    return error(
        400,
        f"host {host!r} is not served by this monitor (it serves {', '.join(trusted)}); "
        "add the name to CELERY_MONITOR_TRUSTED_HOSTS if it is yours",
    )


def trusted_hosts_configured() -> bool:
    """True when the app lists the host names it serves (ours or Flask's ``TRUSTED_HOSTS``)."""
    return (
        _settings()["CELERY_MONITOR_TRUSTED_HOSTS"] is not None
        or current_app.config.get("TRUSTED_HOSTS") is not None
    )


def check_anonymous_host() -> str | None:
    """Why anonymous access must be refused for the current request's ``Host``, or None.

    None when the app lists its trusted hosts (:func:`check_host` enforces them) or the
    ``Host`` is pinned (:func:`host_is_pinned`). Otherwise a message for a 403 that names the
    settings to use.
    """
    host = request.headers.get("Host", "")
    if host_is_pinned(host) or trusted_hosts_configured():
        return None
    return (
        f"anonymous access to the monitor is served only under an IP address or localhost, "
        f"not under the name {host!r}: a hostile page can make any name it owns point here "
        "(DNS rebinding); list the names you serve the monitor under in "
        "CELERY_MONITOR_TRUSTED_HOSTS (or Flask's TRUSTED_HOSTS), or configure authentication"
    )


def _is_live_feed() -> bool:
    from ..appstate import BLUEPRINT_NAME

    return request.endpoint == f"{BLUEPRINT_NAME}.live"


def check_live_origin() -> Response | None:
    """403 for a websocket handshake that a browser sends from another origin."""
    from .common import cross_site_reason, error

    if not _is_live_feed():
        return None
    reason = cross_site_reason()
    if reason is None:
        return None
    return error(403, f"live feed refused: {reason}; open it from the monitor's own pages")


def limit_body() -> None:
    """Cap the request body at ``CELERY_MONITOR_MAX_CONTENT_LENGTH`` bytes.

    Raises RequestEntityTooLarge (413) at once when ``Content-Length`` says more, whether or
    not the view reads the body. A chunked body (no ``Content-Length``) is read here, up to one
    byte past the limit: werkzeug would silently cut it at the limit, and a cut form body is a
    different request.
    """
    limit = _settings()["CELERY_MONITOR_MAX_CONTENT_LENGTH"]
    if request.content_length is not None:
        request.max_content_length = limit
        if request.content_length > limit:
            raise RequestEntityTooLarge()
    elif "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        request.max_content_length = limit + 1
        if len(request.get_data(cache=True)) > limit:
            raise RequestEntityTooLarge()
    else:
        request.max_content_length = limit


def check_surface() -> Response | None:
    """The guard's first check (:data:`.guard.CHECKS`): host, websocket origin, body size."""
    refusal = check_host() or check_live_origin()
    if refusal is not None:
        return refusal
    limit_body()
    return None


def too_large(exc: RequestEntityTooLarge) -> Response:
    """413 ``{"error": ...}`` naming the limit and the setting."""
    from .common import error

    limit = _settings()["CELERY_MONITOR_MAX_CONTENT_LENGTH"]
    return error(
        413,
        f"the request body is larger than {limit} bytes (CELERY_MONITOR_MAX_CONTENT_LENGTH); "
        "send less, or raise the setting",
    )


def add_headers(response: Response) -> Response:
    """The blueprint's ``after_request``: add :data:`SECURITY_HEADERS`."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def register(bp: Blueprint) -> None:
    """Install the headers and the 413 handler on the monitor blueprint.

    The checks run as the guard's first (:func:`check_surface` in :data:`.guard.CHECKS`), so
    that a wrong host or an oversized body is refused before anyone reads the request.
    """
    bp.after_request(add_headers)
    bp.register_error_handler(RequestEntityTooLarge, too_large)
