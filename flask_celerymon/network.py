"""Bounded waits and clear errors for the calls that reach the broker or the result backend.

``submit``/``map`` (send), ``get``, the methods of a :class:`~flask_celerymon.Future` that read
its state, ``status()`` and ``celery.inspect``/``celery.control`` each make a network call in the
caller's thread. With Celery's defaults an unreachable Redis result backend is retried for about
20 s, each retry logged, then a ``RuntimeError`` that names no server is raised. Here:

* :func:`bounded_settings` gives the Celery settings that bound each such call to
  ``CELERY_SEND_TIMEOUT`` seconds (the connect timeouts are half of it, the retries stop once
  it has passed); a setting the app gives itself is kept as it is;
* :func:`translated` turns the connection errors of kombu, redis-py, py-amqp and Celery into a
  :class:`~flask_celerymon.errors.ConnectionFailed` (or its ``submit`` form) naming the server
  (password masked), the config key to check and the client's own reason. Nothing is logged:
  the caller receives the error.

The timeouts apply to every process that builds the app, workers included (a worker gives up
storing a result after the same time).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Iterator
from typing import Any

from .config import mask_url
from .errors import ConnectionFailed

#: the part of Celery's retry-limit message (raised as a plain RuntimeError) we recognise
_RETRY_LIMIT = "Retry limit exceeded while trying to reconnect"

BROKER = "broker"
BACKEND = "result backend"


class WaitTimeout(concurrent.futures.TimeoutError):
    """A wait for a task ran out of time: ``concurrent.futures.TimeoutError``, not a network
    error (Python's ``TimeoutError`` is an ``OSError``, like a socket's)."""


class BackendUnreachable(ConnectionFailed):
    """A send's PENDING record could not be written: the result backend (not the broker) failed.

    Raised by ``Task.apply_async`` (so ``delay()`` raises it as it is); ``submit``/``map`` turn
    it into their own error. ``reason`` is the client's exception.
    """

    def __init__(self, text: str, reason: BaseException) -> None:
        super().__init__(text)
        self.reason = reason


def bounded_settings(conf: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The Celery settings that bound broker and backend calls to ``timeout`` seconds.

    ``conf`` is the Celery configuration being built (the app's own settings in it win); the
    answer holds only the keys to add. Redis has unbounded defaults (no connect timeout, no
    read timeout, 20 backend retries one second apart); kombu's reconnect loop sleeps whole
    seconds; AMQP connects within ``broker_connection_timeout``.
    """
    out: dict[str, Any] = {}
    connect = max(0.1, timeout / 2)
    if "broker_connection_timeout" not in conf:
        out["broker_connection_timeout"] = min(4.0, connect)
    options = dict(conf.get("broker_transport_options") or {})
    # kombu's reconnect loop behind ``Connection.default_channel`` (remote control, purge):
    # it sleeps a whole second between tries and may run twice in one call
    options.setdefault("connect_retries_timeout", timeout / 4)
    options.setdefault("interval_start", 0)
    options.setdefault("interval_step", timeout / 8)
    options.setdefault("interval_max", timeout / 4)
    if _scheme(conf.get("broker_url")) in ("redis", "rediss", "sentinel"):
        options.setdefault("socket_connect_timeout", connect)
        options.setdefault("socket_timeout", timeout)  # kombu's advice: a publish can hang
    out["broker_transport_options"] = options
    if _scheme(conf.get("result_backend")) in ("redis", "rediss", "sentinel"):
        for key in ("redis_socket_connect_timeout", "redis_socket_timeout"):
            if key not in conf:  # Celery's defaults: none, and 120 s
                out[key] = connect
        options = dict(conf.get("result_backend_transport_options") or {})
        options.setdefault(
            "retry_policy",
            {
                "max_retries": 3,
                "interval_start": 0,
                "interval_step": timeout / 4,
                "interval_max": timeout / 2,
                "timeout": timeout,
            },
        )
        out["result_backend_transport_options"] = options
    return out


def _scheme(url: Any) -> str:
    if isinstance(url, (list, tuple)):
        url = url[0] if url else ""
    if not isinstance(url, str):
        return ""
    return url.partition("://")[0].partition("+")[0].lower()


def connection_errors() -> tuple[type[BaseException], ...]:
    """The exception classes that mean "the server did not answer", for every client we use."""
    import kombu.exceptions

    errors: list[type[BaseException]] = [
        OSError,  # ConnectionError, socket.timeout, TimeoutError, refused, DNS
        kombu.exceptions.OperationalError,
    ]
    with contextlib.suppress(ImportError):
        import redis.exceptions

        errors += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    with contextlib.suppress(ImportError):
        import amqp.exceptions

        errors.append(amqp.exceptions.ConnectionError)
    return tuple(errors)


def is_connection_error(exc: BaseException) -> bool:
    """True for a client's "no answer" error, or Celery's retry-limit RuntimeError over one."""
    if isinstance(exc, WaitTimeout):
        return False
    if isinstance(exc, connection_errors()):
        return True
    if isinstance(exc, RuntimeError) and _RETRY_LIMIT in str(exc):
        return True
    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, connection_errors()) and isinstance(exc, RuntimeError)


def part_of(exc: BaseException, default: str) -> str:
    """Which server an error came from: the backend for Celery's retry-limit error, else
    ``default``."""
    if isinstance(exc, RuntimeError) and _RETRY_LIMIT in str(exc):
        return BACKEND
    return default


def message(celery_app: Any, action: str, part: str, exc: BaseException) -> str:
    """``"submit() could not reach the broker at redis://... within 5 s ...; check ..."``.

    The bound named is the app's ``CELERY_SEND_TIMEOUT``, kept on the Celery app as
    ``celerymon_send_timeout`` by ``init_app``.
    """
    timeout = getattr(celery_app, "celerymon_send_timeout", None)
    conf = celery_app.conf
    if part == BACKEND:
        url, key = conf.result_backend, "CELERY_RESULT_BACKEND"
    else:
        url, key = conf.broker_url, "CELERY_BROKER_URL"
    shown = mask_url(str(url)) if url else "(not configured)"
    cause = exc.reason if isinstance(exc, BackendUnreachable) else exc
    text = " ".join(str(cause).split()) or type(cause).__name__
    within = f" within {timeout:g} s (CELERY_SEND_TIMEOUT)" if timeout else ""
    return (
        f"{action} could not reach the {part} at {shown}{within}: {text}; check that the "
        f"server is running and reachable from this host, and that {key} names it"
    )


@contextlib.contextmanager
def translated(
    celery_app: Any,
    action: str,
    part: str = BROKER,
    error: type[ConnectionFailed] = ConnectionFailed,
) -> Iterator[None]:
    """Raise ``error`` (message from :func:`message`) for a connection error in the block.

    ``action`` names what the caller did (``"submit()"``), ``part`` the server the block talks
    to unless the error says otherwise (see :func:`part_of`). Other exceptions pass through.
    """
    try:
        yield
    except BackendUnreachable as exc:
        raise error(message(celery_app, action, BACKEND, exc)) from None
    except ConnectionFailed:
        raise
    except Exception as exc:
        if not is_connection_error(exc):
            raise
        raise error(message(celery_app, action, part_of(exc, part), exc)) from None
