"""``/api/workers`` and ``/api/worker/*``: list, shut down, pool and consumer control.

Each handler parses its parameters, calls :class:`~flask_celerymon.monitor.control.Control`
and renders the answer; errors are raised and answered by :mod:`..errors`.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Response

from ...errors import NotFoundError
from ...monitor.control import PoolChange
from ..auth import ADMIN, VIEWER, requires
from ..params import Bool, Int, QueueName, Text, doc, use_params
from .common import (
    POOL_MAX,
    POOL_MIN,
    POOL_STEP,
    _service,
    control,
    json_response,
)

log = logging.getLogger(__name__)


# -- workers -----------------------------------------------------------------------------------


@requires(VIEWER)
@doc("Inspect results per worker", "Workers", 404, 503)
@use_params(
    refresh=Bool(description="ask the workers first"),
    workername=Text(description="only this worker"),
    status=Bool(description="answer {hostname: online} instead"),
)
def list_workers(refresh: bool, workername: str | None, status: bool) -> Response:
    """``GET /api/workers``: inspect results per worker (Flower's shape).

    ``refresh=1`` asks the workers first (waits at most the inspect timeout), ``workername``
    limits the answer to one worker, ``status=1`` gives ``{hostname: online}`` instead.
    Status codes: 200; 400 bad parameter; 404 unknown worker; 503 broker unavailable on
    refresh.
    """
    name = workername
    svc = _service()
    if status:
        online = svc.worker_status()
        if name is not None:
            if name not in online:
                raise NotFoundError(f"Unknown worker '{name}'")
            online = {name: online[name]}
        return json_response(online)
    data = svc.inspect(name, refresh=refresh)  # an unreachable broker raises: 503
    if name is not None and name not in data:
        raise NotFoundError(f"Unknown worker '{name}'")
    return json_response(data)


@requires(ADMIN)
@doc("Shut a worker down", "Message", 404, 503, mutation=True)
def worker_shutdown(name: str) -> Response:
    """``POST /api/worker/shutdown/<name>``: ask a worker to shut down (no reply awaited).

    Status codes: 200; 403 read-only/cross-site; 404 unknown worker; 503 broker unavailable.
    """
    return json_response({"message": control().shutdown(name)})


def _pool_answer(change: PoolChange, autoscaler: bool = False) -> Response:
    data: dict[str, Any] = {"message": change.message, "processes": change.processes}
    if autoscaler:
        data["autoscaler"] = change.autoscaler
    return json_response(data)


@requires(ADMIN)
@doc("Restart a worker's pool", "Pool", 404, 503, mutation=True)
def worker_pool_restart(name: str) -> Response:
    """``POST /api/worker/pool/restart/<name>``: restart the pool (``reload=False``).

    Answers ``{"message", "processes"}``: the pool size read back after the restart.
    Status codes: 200; 403 pool restarts not enabled on the worker
    (``worker_pool_restarts``), read-only or cross-site; 404 unknown worker; 503 no reply or
    broker unavailable.
    """
    return _pool_answer(control().pool_restart(name))


def _known_worker(name: str, **_: str) -> None:
    """``first`` of the worker actions: an unknown worker is a 404 before a bad parameter is
    a 400."""
    control().known_worker(name)


_POOL_N = {"n": Int(POOL_STEP, default=1, description="processes (default 1)")}


def _pool_resize(name: str, n: int, grow: bool) -> Response:
    return _pool_answer(control().pool_resize(name, n, grow))


@requires(ADMIN)
@doc("Grow a worker's pool", "Pool", 404, 503, mutation=True)
@use_params(first=_known_worker, **_POOL_N)
def worker_pool_grow(name: str, n: int) -> Response:
    """``POST /api/worker/pool/grow/<name>?n=1``: add ``n`` pool processes.

    Answers ``{"message", "processes"}``: the pool size read back after the action.
    Status codes: 200; 400 bad ``n``; 403 the worker refused (the message says the size the
    pool has now), read-only or cross-site; 404 unknown worker; 503 no reply or broker
    unavailable.
    """
    return _pool_resize(name, n, grow=True)


@requires(ADMIN)
@doc("Shrink a worker's pool", "Pool", 404, 409, 503, mutation=True)
@use_params(first=_known_worker, **_POOL_N)
def worker_pool_shrink(name: str, n: int) -> Response:
    """``POST /api/worker/pool/shrink/<name>?n=1``: remove ``n`` pool processes.

    Status codes: as :func:`worker_pool_grow`, and 409 when ``n`` is not below the number of
    processes (the pool would be left empty: the worker would take tasks and never run them).
    """
    return _pool_resize(name, n, grow=False)


@requires(ADMIN)
@doc("Set the autoscaler's bounds", "Pool", 404, 503, mutation=True)
@use_params(
    first=_known_worker,
    min=Int(POOL_MIN, required=True, description="minimum"),
    max=Int(POOL_MAX, required=True, description="maximum"),
)
def worker_pool_autoscale(name: str, min: int, max: int) -> Response:  # noqa: A002
    """``POST /api/worker/pool/autoscale/<name>?min=&max=``: set the autoscaler's bounds.

    Answers ``{"message", "processes", "autoscaler"}`` read back from the worker.
    Status codes: 200; 400 missing or bad ``min``/``max``; 403 autoscale not enabled on the
    worker, read-only or cross-site; 404 unknown worker; 503 no reply or broker unavailable.
    """
    return _pool_answer(control().autoscale(name, min, max), autoscaler=True)


_QUEUE = {"queue": QueueName(description="queue name")}


@requires(ADMIN)
@doc("Start consuming a queue", "Message", 404, 503, mutation=True)
@use_params(first=_known_worker, **_QUEUE)
def worker_add_consumer(name: str, queue: str) -> Response:
    """``POST /api/worker/queue/add-consumer/<name>?queue=``: start consuming a queue.

    Status codes: 200; 400 missing ``queue`` or one with control characters (NUL, newline...);
    403 the worker refused, read-only or
    cross-site; 404 unknown worker; 503 no reply or broker unavailable.
    """
    return json_response({"message": control().add_consumer(name, queue)})


@requires(ADMIN)
@doc("Stop consuming a queue", "Message", 404, 503, mutation=True)
@use_params(first=_known_worker, **_QUEUE)
def worker_cancel_consumer(name: str, queue: str) -> Response:
    """``POST /api/worker/queue/cancel-consumer/<name>?queue=``: stop consuming a queue.

    Status codes: as :func:`worker_add_consumer`.
    """
    return json_response({"message": control().cancel_consumer(name, queue)})
