"""Reconciliation: tasks the monitor holds as unfinished, checked against the result backend.

The monitor learns from events, and some changes come late or never: the end of a task while
the monitor was down or disconnected (a gap in the event stream), a task of a worker running
without events. The service's housekeeping thread asks the result backend, in batches and at a
bounded rate, for the state of tasks it holds as unfinished, and applies a finished state the
backend knows as if its event had arrived (``hostname`` None, so the task's worker stays).

Only key-value backends that read many keys in one round trip (Redis and the embedded broker's
Redis, Memcached...) are asked: a backend without ``mget`` would cost one round trip per task,
and the RPC backend's results belong to the client that sent the task.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from celery import Celery
from celery.states import READY_STATES

log = logging.getLogger(__name__)

#: States a task may leave without the monitor seeing the event.
UNFINISHED = ("PENDING", "RECEIVED", "STARTED", "RETRY")
#: Tasks asked about per housekeeping round, and seconds between rounds.
BATCH = 200
INTERVAL = 5.0
#: A task is asked about once its last event is this old (seconds): its events may be on
#: their way, and asking costs a backend read.
MIN_AGE = 5.0
#: The same task is asked about again after this long at the earliest (seconds).
RECHECK = 60.0

_EVENT_OF = {"SUCCESS": "task-succeeded", "FAILURE": "task-failed", "REVOKED": "task-revoked"}


def supported(app: Celery) -> bool:
    """True when ``app``'s result backend can be asked for many tasks in one round trip."""
    try:
        backend = app.backend
    except Exception:  # noqa: BLE001 - a backend that cannot even be built is not asked
        return False
    from celery.backends.base import BaseKeyValueStoreBackend

    mget = getattr(type(backend), "mget", None)
    return (
        isinstance(backend, BaseKeyValueStoreBackend)
        and mget is not None
        and mget is not BaseKeyValueStoreBackend.mget
    )


def finished_events(app: Celery, task_ids: Sequence[str], now: float) -> list[dict[str, Any]]:
    """Events that bring ``task_ids`` to the finished state the result backend holds.

    One ``mget`` round trip; tasks the backend holds as unfinished or does not know are left
    out. ``timestamp`` is the backend's ``date_done`` (UTC), else ``now``. Raises the
    backend's connection error.
    """
    backend = app.backend
    keys = [backend.get_key_for_task(t) for t in task_ids]
    values = backend.mget(keys)
    out = []
    for task_id, raw in zip(task_ids, values):
        if raw is None:
            continue
        try:
            meta = backend.decode_result(raw)
        except Exception as exc:  # noqa: BLE001 - one undecodable result is skipped
            log.warning("celerymon: result of %s is undecodable: %s", task_id, exc)
            continue
        status = meta.get("status")
        if status not in READY_STATES:
            continue
        event: dict[str, Any] = {
            "type": _EVENT_OF[status],
            "uuid": task_id,
            "timestamp": _date_done(meta.get("date_done"), now),
            "reconciled": True,
        }
        result = meta.get("result")
        if status == "SUCCESS":
            event["result"] = repr(result)
        elif status == "FAILURE":
            event["exception"] = repr(result)
            if isinstance(meta.get("traceback"), str):
                event["traceback"] = meta["traceback"]
        out.append(event)
    return out


def _date_done(value: Any, now: float) -> float:
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return now
    else:
        return now
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)  # Celery stores date_done in UTC
    return min(dt.timestamp(), now)
