"""``/api/queues/*``: lengths, purge, message listing and removal (Redis).

Each handler parses its parameters, calls :class:`~flask_celerymon.monitor.queues.Queues` and
renders the answer; errors are raised and answered by :mod:`..errors`.
"""

from __future__ import annotations

from flask import Response

from ..auth import ADMIN, VIEWER, requires
from ..params import Int, doc, use_params
from .common import MESSAGES_LIMIT, json_response, queues


@requires(VIEWER)
@doc("Queue lengths", "QueueLengths", 404, 503)
def queue_lengths() -> Response:
    """``GET /api/queues/length``: ``{"active_queues": [{"name", "messages"}...]}``.

    Status codes: 200; 404 the broker gives no lengths; 503 broker unavailable.
    """
    return json_response({"active_queues": queues().lengths()})


@requires(ADMIN)
@doc("Delete every waiting message of a queue", "Purged", 404, 503, mutation=True)
def queue_purge(queue: str) -> Response:
    """``POST /api/queues/purge/<queue>``: delete every message waiting in a queue.

    Status codes: 200 (``{"message", "purged": n}``); 400 a name with control characters;
    403 read-only/cross-site; 404 unknown queue; 503 broker unavailable.
    """
    n = queues().purge(queue)
    return json_response({"message": f"Purged {n} messages from '{queue}'", "purged": n})


@requires(VIEWER)
@doc("The messages waiting in a queue (Redis)", "QueueMessages", 404, 409, 503)
@use_params(limit=Int(MESSAGES_LIMIT, default=100, description="at most (default 100)"))
def queue_messages(queue: str, limit: int) -> Response:
    """``GET /api/queues/messages/<queue>?limit=100``: the messages waiting (Redis only).

    Items: ``task-id name args kwargs eta expires retries priority``, next to be taken first.
    Status codes: 200; 400 bad ``limit`` or a queue name with control characters; 404
    unknown queue; 409 the broker cannot list
    messages; 503 broker unavailable.
    """
    return json_response({"queue": queue, "messages": queues().messages(queue, limit)})


@requires(ADMIN)
@doc("Delete one waiting message (Redis)", "Removed", 404, 409, 503, mutation=True)
def queue_remove_message(queue: str, task_id: str) -> Response:
    """``POST /api/queues/remove/<queue>/<id>``: delete one waiting message (Redis only).

    Status codes: 200; 400 a queue name with control characters; 403 read-only/cross-site;
    404 unknown queue, or no message of that
    task waits in it; 409 the broker cannot delete one message; 503 broker unavailable.
    """
    queues().remove(queue, task_id)
    return json_response({"message": f"Removed '{task_id}' from '{queue}'", "task-id": task_id})
