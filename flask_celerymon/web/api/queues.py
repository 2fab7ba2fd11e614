"""``/api/queues/*``: lengths, purge, message listing and removal (Redis)."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Response

from ...monitor import broker as _broker
from ..auth import ADMIN, VIEWER, requires
from ..params import Int, doc, use_params
from .common import (
    MESSAGES_LIMIT,
    ApiError,
    _capp,
    _service,
    json_response,
)

log = logging.getLogger(__name__)


@requires(VIEWER)
@doc("Queue lengths", "QueueLengths", 404, 503)
def queue_lengths() -> Response:
    """``GET /api/queues/length``: ``{"active_queues": [{"name", "messages"}...]}``.

    Status codes: 200; 404 the broker gives no lengths; 503 broker unavailable.
    """
    queues = _service().queues()
    if queues is None:
        raise ApiError(404, "this broker does not give queue lengths")
    return json_response({"active_queues": queues})


def _queue_names() -> list[str]:
    svc = _service()
    active: list[Any] = []
    for info in svc.inspector.get().values():
        active.extend(info.get("active_queues") or ())
    return _broker.queue_names(_capp(), active, svc.settings.queues)


def _known_queue(queue: str) -> None:
    if queue not in _queue_names():
        raise ApiError(404, f"Unknown queue '{queue}'")


def _redis_channel(conn: Any, what: str) -> Any:
    if conn.transport.driver_type != "redis":
        raise ApiError(409, f"the {conn.transport.driver_type} broker does not allow {what}")
    return conn.default_channel


def _message_summary(raw: bytes | str) -> dict[str, Any] | None:
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


@requires(ADMIN)
@doc("Delete every waiting message of a queue", "Purged", 404, 503, mutation=True)
def queue_purge(queue: str) -> Response:
    """``POST /api/queues/purge/<queue>``: delete every message waiting in a queue.

    Status codes: 200 (``{"message", "purged": n}``); 403 read-only/cross-site; 404 unknown
    queue; 503 broker unavailable.
    """
    _known_queue(queue)
    with _capp().connection_for_write() as conn:
        n = conn.default_channel.queue_purge(queue) or 0
    log.info("celerymon: purged %d messages from queue %s", n, queue)
    return json_response({"message": f"Purged {n} messages from '{queue}'", "purged": n})


@requires(VIEWER)
@doc("The messages waiting in a queue (Redis)", "QueueMessages", 404, 409, 503)
@use_params(limit=Int(MESSAGES_LIMIT, default=100, description="at most (default 100)"))
def queue_messages(queue: str, limit: int) -> Response:
    """``GET /api/queues/messages/<queue>?limit=100``: the messages waiting (Redis only).

    Items: ``task-id name args kwargs eta expires retries priority``, next to be taken first.
    Status codes: 200; 400 bad ``limit``; 404 unknown queue; 409 the broker cannot list
    messages; 503 broker unavailable.
    """
    _known_queue(queue)
    with _capp().connection_for_read() as conn:
        raws = _broker.redis_messages(_redis_channel(conn, "listing messages"), queue, limit)
    out = [m for m in map(_message_summary, raws) if m is not None]
    return json_response({"queue": queue, "messages": out})


@requires(ADMIN)
@doc("Delete one waiting message (Redis)", "Removed", 404, 409, 503, mutation=True)
def queue_remove_message(queue: str, task_id: str) -> Response:
    """``POST /api/queues/remove/<queue>/<id>``: delete one waiting message (Redis only).

    Status codes: 200; 403 read-only/cross-site; 404 unknown queue, or no message of that
    task waits in it; 409 the broker cannot delete one message; 503 broker unavailable.
    """
    _known_queue(queue)

    def of_task(raw: bytes) -> bool:
        summary = _message_summary(raw)
        return summary is not None and summary["task-id"] == task_id

    with _capp().connection_for_write() as conn:
        chan = _redis_channel(conn, "deleting one message")
        if _broker.redis_remove(chan, queue, of_task):
            log.info("celerymon: removed task %s from queue %s", task_id, queue)
            return json_response(
                {"message": f"Removed '{task_id}' from '{queue}'", "task-id": task_id}
            )
    raise ApiError(404, f"no message of task '{task_id}' waits in queue '{queue}'")
