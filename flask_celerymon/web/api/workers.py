"""``/api/workers`` and ``/api/worker/*``: list, shut down, pool and consumer control.

Each handler parses its parameters, calls :class:`~flask_celerymon.monitor.control.Control`
and renders the answer; errors are raised and answered by :mod:`..errors`.
"""

from __future__ import annotations

import logging

from flask import Response

from ...errors import NotFoundError
from ...monitor.control import PoolChange
from ..auth import ADMIN, VIEWER, requires
from .common import (
    POOL_MAX,
    POOL_MIN,
    POOL_STEP,
    _service,
    control,
    json_response,
    p_bool,
    p_int,
    p_str,
    params,
)

log = logging.getLogger(__name__)


# -- workers -----------------------------------------------------------------------------------


@requires(VIEWER)
def list_workers() -> Response:
    """``GET /api/workers``: inspect results per worker (Flower's shape).

    ``refresh=1`` asks the workers first (waits at most the inspect timeout), ``workername``
    limits the answer to one worker, ``status=1`` gives ``{hostname: online}`` instead.
    Status codes: 200; 400 bad parameter; 404 unknown worker; 503 broker unavailable on
    refresh.
    """
    p = params()
    refresh = p_bool(p, "refresh")
    name = p_str(p, "workername")
    svc = _service()
    if p_bool(p, "status"):
        status = svc.worker_status()
        if name is not None:
            if name not in status:
                raise NotFoundError(f"Unknown worker '{name}'")
            status = {name: status[name]}
        return json_response(status)
    data = svc.inspect(name, refresh=refresh)  # an unreachable broker raises: 503
    if name is not None and name not in data:
        raise NotFoundError(f"Unknown worker '{name}'")
    return json_response(data)


@requires(ADMIN)
def worker_shutdown(name: str) -> Response:
    """``POST /api/worker/shutdown/<name>``: ask a worker to shut down (no reply awaited).

    Status codes: 200; 403 read-only/cross-site; 404 unknown worker; 503 broker unavailable.
    """
    return json_response({"message": control().shutdown(name)})


def _pool_answer(change: PoolChange, autoscaler: bool = False) -> Response:
    data = {"message": change.message, "processes": change.processes}
    if autoscaler:
        data["autoscaler"] = change.autoscaler
    return json_response(data)


@requires(ADMIN)
def worker_pool_restart(name: str) -> Response:
    """``POST /api/worker/pool/restart/<name>``: restart the pool (``reload=False``).

    Answers ``{"message", "processes"}``: the pool size read back after the restart.
    Status codes: 200; 403 pool restarts not enabled on the worker
    (``worker_pool_restarts``), read-only or cross-site; 404 unknown worker; 503 no reply or
    broker unavailable.
    """
    return _pool_answer(control().pool_restart(name))


def _pool_resize(name: str, grow: bool) -> Response:
    ctl = control()
    ctl.known_worker(name)  # an unknown worker is a 404 before a bad n is a 400
    n = p_int(params(), "n", POOL_STEP, default=1)
    assert n is not None
    return _pool_answer(ctl.pool_resize(name, n, grow))


@requires(ADMIN)
def worker_pool_grow(name: str) -> Response:
    """``POST /api/worker/pool/grow/<name>?n=1``: add ``n`` pool processes.

    Answers ``{"message", "processes"}``: the pool size read back after the action.
    Status codes: 200; 400 bad ``n``; 403 the worker refused (the message says the size the
    pool has now), read-only or cross-site; 404 unknown worker; 503 no reply or broker
    unavailable.
    """
    return _pool_resize(name, grow=True)


@requires(ADMIN)
def worker_pool_shrink(name: str) -> Response:
    """``POST /api/worker/pool/shrink/<name>?n=1``: remove ``n`` pool processes.

    Status codes: as :func:`worker_pool_grow`, and 409 when ``n`` is not below the number of
    processes (the pool would be left empty: the worker would take tasks and never run them).
    """
    return _pool_resize(name, grow=False)


@requires(ADMIN)
def worker_pool_autoscale(name: str) -> Response:
    """``POST /api/worker/pool/autoscale/<name>?min=&max=``: set the autoscaler's bounds.

    Answers ``{"message", "processes", "autoscaler"}`` read back from the worker.
    Status codes: 200; 400 missing or bad ``min``/``max``; 403 autoscale not enabled on the
    worker, read-only or cross-site; 404 unknown worker; 503 no reply or broker unavailable.
    """
    ctl = control()
    ctl.known_worker(name)
    p = params()
    lo = p_int(p, "min", POOL_MIN, required=True)
    hi = p_int(p, "max", POOL_MAX, required=True)
    assert lo is not None and hi is not None
    return _pool_answer(ctl.autoscale(name, lo, hi), autoscaler=True)


@requires(ADMIN)
def worker_add_consumer(name: str) -> Response:
    """``POST /api/worker/queue/add-consumer/<name>?queue=``: start consuming a queue.

    Status codes: 200; 400 missing ``queue``; 403 the worker refused, read-only or
    cross-site; 404 unknown worker; 503 no reply or broker unavailable.
    """
    ctl = control()
    ctl.known_worker(name)
    queue = p_str(params(), "queue", required=True)
    assert queue is not None
    return json_response({"message": ctl.add_consumer(name, queue)})


@requires(ADMIN)
def worker_cancel_consumer(name: str) -> Response:
    """``POST /api/worker/queue/cancel-consumer/<name>?queue=``: stop consuming a queue.

    Status codes: as :func:`worker_add_consumer`.
    """
    ctl = control()
    ctl.known_worker(name)
    queue = p_str(params(), "queue", required=True)
    assert queue is not None
    return json_response({"message": ctl.cancel_consumer(name, queue)})
