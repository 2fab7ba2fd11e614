"""Queue inspection and edits: names, lengths, purge, and the raw Redis message edits.

:class:`Queues` is built per use over one Celery app and its
:class:`~.service.MonitorService` and imports no Flask. Each call opens a broker connection
from the app's pool in the caller's thread. The per-broker work is :mod:`.broker`'s.

Errors: :class:`~flask_celerymon.errors.InvalidInput` for a queue name no broker can hold
(:func:`check_queue_name`), :class:`~flask_celerymon.errors.NotFoundError` for a queue the
monitor does not know
(or a message not waiting), :class:`~flask_celerymon.errors.ConflictError` when the broker
cannot do it (listing or deleting one message needs Redis); an unreachable broker raises the
client's own connection error.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from typing import Any

from ..errors import ConflictError, InvalidInput, NotFoundError
from . import broker as _broker

log = logging.getLogger(__name__)


def check_queue_name(name: str, what: str = "queue") -> str:
    """``name`` when it can name a queue (or an exchange, a routing key): returned unchanged.

    Raises :class:`~flask_celerymon.errors.InvalidInput` naming ``what`` (the parameter) when
    ``name`` is not a string or holds a control character (NUL, newline, tab, DEL, the C1
    range: Unicode category ``Cc``). Such names end up in broker keys, log lines and the
    monitor's pages, where they can cut or forge a line. Any other text is a valid name to
    AMQP and Redis (``../x`` is a key, not a path), so it is allowed.
    """
    if not isinstance(name, str):
        raise InvalidInput(f"{what} must be a string, not {name!r}")
    for ch in name:
        if unicodedata.category(ch) == "Cc":
            raise InvalidInput(f"{what} must not contain control characters ({ch!r} in {name!r})")
    return name


def message_summary(raw: bytes | str) -> dict[str, Any] | None:
    """A waiting Celery message (protocol 2, JSON) as ``{"task-id", "name", "args",
    "kwargs", "eta", "expires", "retries", "priority"}`` (args/kwargs as the sender's reprs);
    None for a message that is not a JSON object."""
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested too deep for the parser
        return None
    if not isinstance(msg, dict):
        return None
    headers = msg.get("headers") or {}
    props = msg.get("properties") or {}
    return {
        "task-id": headers.get("id") or props.get("correlation_id"),
        "name": headers.get("shadow") or headers.get("task"),
        "args": headers.get("argsrepr"),
        "kwargs": headers.get("kwargsrepr"),
        "eta": headers.get("eta"),
        "expires": headers.get("expires"),
        "retries": headers.get("retries"),
        "priority": props.get("priority"),
    }


def _redis_channel(conn: Any, what: str) -> Any:
    """``conn``'s kombu channel; :class:`ConflictError` unless the broker is Redis."""
    if conn.transport.driver_type != "redis":
        raise ConflictError(f"the {conn.transport.driver_type} broker does not allow {what}")
    return conn.default_channel


class Queues:
    """The queues of ``celery_app``'s broker, as the monitor ``service`` knows them."""

    def __init__(self, celery_app: Any, service: Any) -> None:
        self.celery_app = celery_app
        self.service = service

    def names(self) -> list[str]:
        """Every queue the monitor knows (see :func:`.broker.known_queue_names`)."""
        svc = self.service
        return _broker.known_queue_names(self.celery_app, svc.inspector, svc.settings.queues)

    def known(self, queue: str) -> None:
        """Raises :class:`InvalidInput` for a name with control characters
        (:func:`check_queue_name`), :class:`NotFoundError` unless ``queue`` is one of
        :meth:`names`."""
        check_queue_name(queue)
        if queue not in self.names():
            raise NotFoundError(f"Unknown queue '{queue}'")

    def lengths(self) -> list[dict[str, Any]]:
        """``[{"name", "messages", ...}]`` for every known queue (cached by the service for a
        second). Raises :class:`NotFoundError` when the broker gives no lengths."""
        queues = self.service.queues()
        if queues is None:
            raise NotFoundError("this broker does not give queue lengths")
        return list(queues)

    def purge(self, queue: str) -> int:
        """Delete every message waiting in ``queue``; how many were. Raises
        :class:`NotFoundError` for an unknown queue."""
        self.known(queue)
        with self.celery_app.connection_for_write() as conn:
            n = conn.default_channel.queue_purge(queue) or 0
        log.info("celerymon: purged %d messages from queue %s", n, queue)
        return n

    def messages(self, queue: str, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` messages waiting in ``queue`` (:func:`message_summary` items), the
        next to be taken first. Raises :class:`NotFoundError` for an unknown queue,
        :class:`ConflictError` unless the broker is Redis."""
        self.known(queue)
        with self.celery_app.connection_for_read() as conn:
            chan = _redis_channel(conn, "listing messages")
            raws = _broker.redis_messages(chan, queue, limit)
        return [m for m in map(message_summary, raws) if m is not None]

    def remove(self, queue: str, task_id: str) -> None:
        """Delete the message of task ``task_id`` waiting in ``queue``.

        Raises :class:`NotFoundError` for an unknown queue or when no message of that task
        waits in it (a worker took it meanwhile), :class:`ConflictError` unless the broker is
        Redis.
        """
        self.known(queue)

        def of_task(raw: bytes) -> bool:
            summary = message_summary(raw)
            return summary is not None and summary["task-id"] == task_id

        with self.celery_app.connection_for_write() as conn:
            chan = _redis_channel(conn, "deleting one message")
            if _broker.redis_remove(chan, queue, of_task):
                log.info("celerymon: removed task %s from queue %s", task_id, queue)
                return
        raise NotFoundError(f"no message of task '{task_id}' waits in queue '{queue}'")
