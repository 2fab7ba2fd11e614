"""``/api/workers`` and ``/api/worker/*``: list, shut down, pool and consumer control."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Response

from ..auth import ADMIN, VIEWER, requires
from ..params import Bool, Int, Text, doc, use_params
from .common import (
    POOL_MAX,
    POOL_MIN,
    POOL_READ_BACK,
    POOL_STEP,
    ApiError,
    _broadcast,
    _capp,
    _control_reply,
    _known_worker,
    _reply_timeout,
    _service,
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
                raise ApiError(404, f"Unknown worker '{name}'")
            online = {name: online[name]}
        return json_response(online)
    data = svc.inspect(name, refresh=refresh)  # an unreachable broker raises: 503
    if name is not None and name not in data:
        raise ApiError(404, f"Unknown worker '{name}'")
    return json_response(data)


@requires(ADMIN)
@doc("Shut a worker down", "Message", 404, 503, mutation=True)
def worker_shutdown(name: str) -> Response:
    """``POST /api/worker/shutdown/<name>``: ask a worker to shut down (no reply awaited).

    Status codes: 200; 403 read-only/cross-site; 404 unknown worker; 503 broker unavailable.
    """
    _known_worker(name)
    log.info("celerymon: shutting down worker %s", name)
    _capp().control.broadcast("shutdown", destination=[name])
    return json_response({"message": "Shutting down!"})


def _pool(worker: str) -> dict[str, Any] | None:
    """``worker``'s pool as its ``stats`` reply says now (``processes`` list of pids,
    ``max-concurrency``...) plus ``autoscaler``; None when it does not reply."""
    stats = (
        _capp().control.inspect(destination=[worker], timeout=_reply_timeout()).stats() or {}
    ).get(worker)
    if not isinstance(stats, dict):
        return None
    pool = dict(stats.get("pool") or {})
    pool["autoscaler"] = stats.get("autoscaler") or None
    return pool


def _processes(pool: dict[str, Any] | None) -> int | None:
    procs = (pool or {}).get("processes")
    return len(procs) if isinstance(procs, list) else None


def _pool_after(worker: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """Read ``worker``'s pool until ``done(pool)`` or the reply timeout; the last read.

    A pool action returns before the pool shows it (a shrunk process leaves the list when
    the worker next maintains its pool, within 5 s), so the answer waits, at most
    :data:`POOL_READ_BACK` seconds, for what is true.
    """
    deadline = time.monotonic() + max(_reply_timeout(), POOL_READ_BACK)
    pool = _pool(worker)
    while pool is not None and not done(pool) and time.monotonic() < deadline:
        time.sleep(0.1)
        pool = _pool(worker)
    return pool


def _pool_text(pool: dict[str, Any] | None) -> str:
    n = _processes(pool)
    if n is None:
        return "the pool size could not be read back"
    return f"the pool has {n} process{'' if n == 1 else 'es'}"


@requires(ADMIN)
@doc("Restart a worker's pool", "Pool", 404, 503, mutation=True)
def worker_pool_restart(name: str) -> Response:
    """``POST /api/worker/pool/restart/<name>``: restart the pool (``reload=False``).

    Answers ``{"message", "processes"}``: the pool size read back after the restart.
    Status codes: 200; 403 pool restarts not enabled on the worker
    (``worker_pool_restarts``), read-only or cross-site; 404 unknown worker; 503 no reply or
    broker unavailable.
    """
    _known_worker(name)
    before = _pool(name)
    old = set((before or {}).get("processes") or ())
    _broadcast(name, "pool_restart", f"Failed to restart the '{name}' pool", reload=False)
    after = _pool_after(name, lambda pool: not old & set(pool.get("processes") or ()))
    return json_response(
        {
            "message": f"Restarting '{name}' worker's pool; {_pool_text(after)}",
            "processes": _processes(after),
        }
    )


def _pool_resize(name: str, n: int, grow: bool) -> Response:
    _known_worker(name)
    before = _processes(_pool(name))
    if not grow and before is not None and n >= before:
        raise ApiError(
            409,
            f"shrinking '{name}' worker's pool by {n} would leave it without a process "
            f"(it has {before}); shrink by at most {before - 1}",
        )
    capp = _capp()
    fn = capp.control.pool_grow if grow else capp.control.pool_shrink
    verb = "grow" if grow else "shrink"
    replies = fn(n=n, destination=[name], reply=True, timeout=_reply_timeout(), limit=1)
    want = None if before is None else before + (n if grow else -n)
    try:
        _control_reply(name, replies, f"Failed to {verb} '{name}' worker's pool")
    except ApiError as exc:
        after = _pool(name)
        raise ApiError(exc.status, f"{exc.message}; {_pool_text(after)}") from None
    after = _pool_after(name, lambda pool: want is None or _processes(pool) == want)
    doing = "Growing" if grow else "Shrinking"
    return json_response(
        {
            "message": f"{doing} '{name}' worker's pool by {n}; {_pool_text(after)}",
            "processes": _processes(after),
        }
    )


_POOL_N = {"n": Int(POOL_STEP, default=1, description="processes (default 1)")}


@requires(ADMIN)
@doc("Grow a worker's pool", "Pool", 404, 503, mutation=True)
@use_params(**_POOL_N)
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
@use_params(**_POOL_N)
def worker_pool_shrink(name: str, n: int) -> Response:
    """``POST /api/worker/pool/shrink/<name>?n=1``: remove ``n`` pool processes.

    Status codes: as :func:`worker_pool_grow`, and 409 when ``n`` is not below the number of
    processes (the pool would be left empty: the worker would take tasks and never run them).
    """
    return _pool_resize(name, n, grow=False)


@requires(ADMIN)
@doc("Set the autoscaler's bounds", "Pool", 404, 503, mutation=True)
@use_params(
    min=Int(POOL_MIN, required=True, description="minimum"),
    max=Int(POOL_MAX, required=True, description="maximum"),
)
def worker_pool_autoscale(name: str, min: int, max: int) -> Response:  # noqa: A002
    """``POST /api/worker/pool/autoscale/<name>?min=&max=``: set the autoscaler's bounds.

    Answers ``{"message", "processes", "autoscaler"}`` read back from the worker.
    Status codes: 200; 400 missing or bad ``min``/``max``; 403 autoscale not enabled on the
    worker, read-only or cross-site; 404 unknown worker; 503 no reply or broker unavailable.
    """
    lo, hi = min, max
    _known_worker(name)
    if lo > hi:
        raise ApiError(400, f"min must be <= max, not min={lo} max={hi}")
    _broadcast(name, "autoscale", f"Failed to autoscale '{name}' worker", min=lo, max=hi)
    after = _pool_after(
        name,
        lambda pool: (
            (pool.get("autoscaler") or {}).get("max") == hi
            and (pool.get("autoscaler") or {}).get("min") == lo
        ),
    )
    scaler = (after or {}).get("autoscaler")
    return json_response(
        {
            "message": f"Autoscaling '{name}' worker (min={lo}, max={hi}); {_pool_text(after)}",
            "processes": _processes(after),
            "autoscaler": scaler,
        }
    )


_QUEUE = {"queue": Text(required=True, description="queue name")}


@requires(ADMIN)
@doc("Start consuming a queue", "Message", 404, 503, mutation=True)
@use_params(**_QUEUE)
def worker_add_consumer(name: str, queue: str) -> Response:
    """``POST /api/worker/queue/add-consumer/<name>?queue=``: start consuming a queue.

    Status codes: 200; 400 missing ``queue``; 403 the worker refused, read-only or
    cross-site; 404 unknown worker; 503 no reply or broker unavailable.
    """
    _known_worker(name)
    msg = _broadcast(
        name, "add_consumer", f"Failed to add '{queue}' consumer to '{name}' worker", queue=queue
    )
    return json_response({"message": msg})


@requires(ADMIN)
@doc("Stop consuming a queue", "Message", 404, 503, mutation=True)
@use_params(**_QUEUE)
def worker_cancel_consumer(name: str, queue: str) -> Response:
    """``POST /api/worker/queue/cancel-consumer/<name>?queue=``: stop consuming a queue.

    Status codes: as :func:`worker_add_consumer`.
    """
    _known_worker(name)
    msg = _broadcast(
        name,
        "cancel_consumer",
        f"Failed to cancel '{queue}' consumer from '{name}' worker",
        queue=queue,
    )
    return json_response({"message": msg})
