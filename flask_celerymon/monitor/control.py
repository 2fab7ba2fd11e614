"""Worker and task control: the operations behind the control endpoints and buttons.

:class:`Control` is built per use over one Celery app and its :class:`~.service.MonitorService`
(cheap: it holds two references) and imports no Flask, so a script, the CLI or a test calls
it as the JSON API does. Every call runs in the caller's thread and makes its broadcasts and
inspect calls there; a wait for a reply lasts at most :meth:`Control.reply_timeout` seconds
(the service's ``inspect_timeout``, at least 1 s), a pool read-back at most
:data:`POOL_READ_BACK` seconds more.

Errors are the :class:`~flask_celerymon.errors.OperationError` family: ``NotFoundError`` for an
unknown worker, task or task name, ``RefusedError`` when a worker answers with an error,
``NoReplyError`` when it does not answer, ``ConflictError`` when the task's or pool's state
does not allow the action, ``UnavailableError`` when the result backend is needed and missing.
A broker that cannot be reached raises the client's own connection error (kombu's
``OperationalError``, redis-py's ``ConnectionError``...).
"""

from __future__ import annotations

import logging
import signal as _signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from celery import states
from celery.backends.base import DisabledBackend
from celery.backends.rpc import RPCBackend
from celery.contrib.abortable import AbortableAsyncResult

from ..errors import (
    ConflictError,
    InvalidInput,
    NoReplyError,
    NotFoundError,
    RefusedError,
    UnavailableError,
)
from .queues import check_queue_name

log = logging.getLogger(__name__)

#: States after which a task will not change any more (retry takes these, revoke skips them).
#: Celery's ready states and the monitor's REJECTED, IGNORED and LOST.
FINISHED = frozenset(states.READY_STATES) | {"REJECTED", "IGNORED", "LOST"}

#: Longest wait for a pool action to show in the worker's stats (seconds; Celery's prefork
#: pool drops exited processes at least every 5 s).
POOL_READ_BACK = 6.0


def _signal_choices() -> tuple[str, ...]:
    """Signal names ``signal`` takes: ``SIGTERM``, ``TERM``, ``sigterm``, ``term``..."""
    names = sorted(n for n in _signal.Signals.__members__ if n.startswith("SIG") and "_" not in n)
    return tuple(dict.fromkeys(f for n in names for f in (n, n[3:], n.lower(), n[3:].lower())))


#: Every signal name :func:`signal_name` takes, generated from the platform's signals.
SIGNALS = _signal_choices()
#: What a signal name looks like, for messages.
SIGNAL_HINT = "a signal name such as SIGTERM, SIGKILL, TERM, kill"


def signal_name(value: str | None) -> str:
    """``value`` (one of :data:`SIGNALS`, or None for the default) as a ``SIGTERM``-style name.

    Raises :class:`InvalidInput` for a name that is not a signal of this platform.
    """
    if value is None:
        return "SIGTERM"
    if value not in SIGNALS:
        raise InvalidInput(f"signal must be {SIGNAL_HINT}, not {value!r}")
    name = value.upper()
    return name if name.startswith("SIG") else "SIG" + name


def result_backend(celery_app: Any) -> Any | None:
    """``celery_app``'s result backend, or None when results are disabled."""
    backend = celery_app.backend
    return None if isinstance(backend, DisabledBackend) else backend


def state_store(celery_app: Any) -> Any | None:
    """The result backend when it can store a state for any task id, else None.

    ``rpc://`` only sends each result to the client that sent the task, so it cannot record
    a state for another task (PENDING on send-task, ABORTED on abort).
    """
    backend = result_backend(celery_app)
    return None if isinstance(backend, RPCBackend) else backend


def final_state(info: dict[str, Any] | None, meta: dict[str, Any] | None) -> str:
    """The most final state that the monitor's record ``info`` or the backend's ``meta`` know."""
    found = [s for s in ((info or {}).get("state"), (meta or {}).get("status")) if s]
    for s in found:
        if s in FINISHED:
            return str(s)
    return str(found[0]) if found else states.PENDING


@dataclass(frozen=True)
class PoolChange:
    """What a pool action did: ``message`` for people, ``processes`` (the pool size read back
    after it, None when the worker did not say) and ``autoscaler`` (its ``min``/``max``...,
    None when the worker has none)."""

    message: str
    processes: int | None
    autoscaler: dict[str, Any] | None = None


class Control:
    """Worker and task control on ``celery_app``, checked against the monitor ``service``."""

    def __init__(self, celery_app: Any, service: Any) -> None:
        self.celery_app = celery_app
        self.service = service

    # -- lookups ---------------------------------------------------------------------------

    def reply_timeout(self) -> float:
        """Seconds to wait for a worker's reply: the service's inspect timeout, at least 1."""
        return max(1.0, float(self.service.settings.inspect_timeout))

    def known_worker(self, name: str) -> None:
        """Raises :class:`NotFoundError` unless the monitor or the last inspect knows ``name``."""
        svc = self.service
        if svc.worker(name) is None and name not in svc.inspector.get(name):
            raise NotFoundError(f"Unknown worker '{name}'")

    def backend_meta(self, task_id: str) -> dict[str, Any] | None:
        """The result backend's record of ``task_id``; None when it has none (or no backend)."""
        backend = result_backend(self.celery_app)
        if backend is None:
            return None
        meta = backend.get_task_meta(task_id)
        if (
            meta.get("status") == states.PENDING
            and not meta.get("task_id")
            and not meta.get("name")
        ):
            return None
        return dict(meta)

    def known_task(self, task_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(the monitor's task dict, the backend's record); either may be None.

        Raises :class:`NotFoundError` when neither knows ``task_id``.
        """
        info = self.service.task(task_id, children=False)
        meta = self.backend_meta(task_id)
        if info is None and meta is None:
            raise NotFoundError(f"Unknown task '{task_id}'")
        return info, meta

    def task_id_taken(self, task_id: str) -> bool:
        """Whether the monitor or the result backend knows a task with id ``task_id``."""
        return (
            self.service.task(task_id, children=False) is not None
            or self.backend_meta(task_id) is not None
        )

    def registered_name(self, name: str, worker: str | None = None) -> None:
        """Raises :class:`NotFoundError` unless ``name`` is a task of this app or one that
        ``worker`` (any worker when None) registered."""
        if name in self.celery_app.tasks:
            return
        for info in self.service.inspector.get(worker).values():
            registered = info.get("registered") or ()
            if any(r == name or str(r).split(" ", 1)[0] == name for r in registered):
                return
        raise NotFoundError(f"Unknown task '{name}'")

    # -- replies ---------------------------------------------------------------------------

    def _reply(self, worker: str, replies: Any, failure: str) -> str:
        """The ``ok`` text of ``worker``'s reply.

        Raises :class:`RefusedError` with the worker's error, :class:`NoReplyError` without a
        reply.
        """
        reply = None
        for item in replies or ():
            if isinstance(item, dict) and worker in item:
                reply = item[worker]
        if reply is None:
            raise NoReplyError(f"worker '{worker}' did not reply within {self.reply_timeout():g} s")
        if isinstance(reply, dict) and "ok" in reply:
            return str(reply["ok"])
        reason = reply.get("error", "Unknown reason") if isinstance(reply, dict) else reply
        raise RefusedError(f"{failure}: {reason}")

    def _broadcast(self, worker: str, command: str, failure: str, **arguments: Any) -> str:
        replies = self.celery_app.control.broadcast(
            command,
            arguments=arguments,
            destination=[worker],
            reply=True,
            timeout=self.reply_timeout(),
            limit=1,
        )
        return self._reply(worker, replies, failure)

    # -- workers ---------------------------------------------------------------------------

    def shutdown(self, name: str) -> str:
        """Ask worker ``name`` to shut down (no reply awaited); the message to show.

        Raises :class:`NotFoundError` for an unknown worker.
        """
        self.known_worker(name)
        log.info("celerymon: shutting down worker %s", name)
        self.celery_app.control.broadcast("shutdown", destination=[name])
        return "Shutting down!"

    def pool(self, worker: str) -> dict[str, Any] | None:
        """``worker``'s pool as its ``stats`` reply says now (``processes`` list of pids,
        ``max-concurrency``...) plus ``autoscaler``; None when it does not reply."""
        inspect = self.celery_app.control.inspect(
            destination=[worker], timeout=self.reply_timeout()
        )
        stats = (inspect.stats() or {}).get(worker)
        if not isinstance(stats, dict):
            return None
        pool = dict(stats.get("pool") or {})
        pool["autoscaler"] = stats.get("autoscaler") or None
        return pool

    def _pool_after(
        self, worker: str, done: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any] | None:
        """Read ``worker``'s pool until ``done(pool)`` or the reply timeout; the last read.

        A pool action returns before the pool shows it (a shrunk process leaves the list when
        the worker next maintains its pool, within 5 s), so the answer waits, at most
        :data:`POOL_READ_BACK` seconds, for what is true.
        """
        deadline = time.monotonic() + max(self.reply_timeout(), POOL_READ_BACK)
        pool = self.pool(worker)
        while pool is not None and not done(pool) and time.monotonic() < deadline:
            time.sleep(0.1)
            pool = self.pool(worker)
        return pool

    def pool_restart(self, name: str) -> PoolChange:
        """Restart worker ``name``'s pool (``reload=False``); the pool size read back after.

        Raises :class:`NotFoundError`, :class:`RefusedError` (pool restarts are not enabled on
        the worker: ``worker_pool_restarts``), :class:`NoReplyError`.
        """
        self.known_worker(name)
        before = self.pool(name)
        old = set((before or {}).get("processes") or ())
        self._broadcast(name, "pool_restart", f"Failed to restart the '{name}' pool", reload=False)
        after = self._pool_after(name, lambda pool: not old & set(pool.get("processes") or ()))
        return PoolChange(
            f"Restarting '{name}' worker's pool; {_pool_text(after)}", _processes(after)
        )

    def pool_resize(self, name: str, n: int, grow: bool) -> PoolChange:
        """Add (``grow``) or remove ``n`` (>= 1) processes of worker ``name``'s pool.

        Raises :class:`NotFoundError`; :class:`ConflictError` when shrinking by ``n`` would
        leave the pool without a process (the worker would take tasks and never run them);
        :class:`RefusedError` (its message says the size the pool has now) and
        :class:`NoReplyError`.
        """
        self.known_worker(name)
        before = _processes(self.pool(name))
        if not grow:
            check_shrink(name, n, before)
        control = self.celery_app.control
        fn = control.pool_grow if grow else control.pool_shrink
        verb = "grow" if grow else "shrink"
        replies = fn(n=n, destination=[name], reply=True, timeout=self.reply_timeout(), limit=1)
        want = None if before is None else before + (n if grow else -n)
        try:
            self._reply(name, replies, f"Failed to {verb} '{name}' worker's pool")
        except (RefusedError, NoReplyError) as exc:
            after = self.pool(name)
            raise type(exc)(f"{exc}; {_pool_text(after)}") from None
        after = self._pool_after(name, lambda pool: want is None or _processes(pool) == want)
        doing = "Growing" if grow else "Shrinking"
        return PoolChange(
            f"{doing} '{name}' worker's pool by {n}; {_pool_text(after)}", _processes(after)
        )

    def autoscale(self, name: str, lo: int, hi: int) -> PoolChange:
        """Set worker ``name``'s autoscaler bounds; the pool and autoscaler read back after.

        Raises :class:`InvalidInput` when ``lo > hi``, :class:`NotFoundError`,
        :class:`RefusedError` (autoscale is not enabled on the worker), :class:`NoReplyError`.
        """
        self.known_worker(name)
        check_autoscale(lo, hi)
        self._broadcast(name, "autoscale", f"Failed to autoscale '{name}' worker", min=lo, max=hi)
        after = self._pool_after(
            name,
            lambda pool: (
                (pool.get("autoscaler") or {}).get("max") == hi
                and (pool.get("autoscaler") or {}).get("min") == lo
            ),
        )
        return PoolChange(
            f"Autoscaling '{name}' worker (min={lo}, max={hi}); {_pool_text(after)}",
            _processes(after),
            (after or {}).get("autoscaler"),
        )

    def add_consumer(self, name: str, queue: str) -> str:
        """Make worker ``name`` consume ``queue``; the worker's reply text.

        Raises :class:`InvalidInput` for a queue name with control characters
        (:func:`~.queues.check_queue_name`), :class:`NotFoundError`, :class:`RefusedError`,
        :class:`NoReplyError`.
        """
        check_queue_name(queue)
        self.known_worker(name)
        return self._broadcast(
            name,
            "add_consumer",
            f"Failed to add '{queue}' consumer to '{name}' worker",
            queue=queue,
        )

    def cancel_consumer(self, name: str, queue: str) -> str:
        """Make worker ``name`` stop consuming ``queue``; as :meth:`add_consumer`."""
        check_queue_name(queue)
        self.known_worker(name)
        return self._broadcast(
            name,
            "cancel_consumer",
            f"Failed to cancel '{queue}' consumer from '{name}' worker",
            queue=queue,
        )

    # -- tasks -----------------------------------------------------------------------------

    def revoke(
        self, task_ids: Iterable[str], terminate: bool = False, signal: str = "SIGTERM"
    ) -> None:
        """Revoke ``task_ids`` (with ``terminate``, their running processes get ``signal``, a
        ``SIGTERM``-style name); the monitor shows them revoke-requested until the workers
        confirm. Checks nothing: see :meth:`known_task`."""
        ids = list(task_ids)
        if not ids:
            return
        log.info(
            "celerymon: revoking %d task(s) (terminate=%s, signal=%s)", len(ids), terminate, signal
        )
        self.celery_app.control.revoke(ids, terminate=terminate, signal=signal)
        self.service.revoke_requested(ids)

    def abort(self, task_id: str) -> None:
        """Mark ``task_id`` ABORTED in the result backend, for an ``AbortableTask`` to see.

        Raises :class:`UnavailableError` without a result backend; :class:`ConflictError`
        when the backend cannot store states (``rpc://``) or the task already finished
        (aborting would overwrite its result); :class:`NotFoundError` for an unknown task.
        """
        if result_backend(self.celery_app) is None:
            raise UnavailableError("no result backend is configured; abort needs one")
        if state_store(self.celery_app) is None:
            raise ConflictError(
                "the rpc:// result backend cannot mark a task ABORTED; configure a result "
                "backend that stores states (CELERY_RESULT_BACKEND: Redis, a database...)"
            )
        info, meta = self.known_task(task_id)
        state = final_state(info, meta)
        if state in FINISHED:
            raise ConflictError(f"Task '{task_id}' already finished ({state}); nothing to abort")
        AbortableAsyncResult(task_id, app=self.celery_app).abort()

    def time_limit(self, name: str, worker: str, soft: float | None, hard: float | None) -> str:
        """Set task ``name``'s time limits (seconds; None: unchanged) on ``worker``; its reply.

        Raises :class:`InvalidInput` when ``hard`` is below ``soft``, both set and not 0 (Celery
        would accept it, and the soft limit would never fire), :class:`NotFoundError` (task name or worker),
        :class:`RefusedError`, :class:`NoReplyError`.
        """
        if soft and hard and hard < soft:  # 0 is "no limit" to Celery
            raise InvalidInput(
                f"hard must be >= soft, not soft={soft:g} hard={hard:g} (seconds; the soft time "
                "limit warns the task before the hard one kills it)"
            )
        self.registered_name(name, worker)
        self.known_worker(worker)
        replies = self.celery_app.control.time_limit(
            name,
            soft=soft,
            hard=hard,
            destination=[worker],
            reply=True,
            timeout=self.reply_timeout(),
            limit=1,
        )
        return self._reply(worker, replies, f"Failed to set time limits of '{name}'")

    def rate_limit(self, name: str, worker: str, limit: str) -> str:
        """Set task ``name``'s rate limit (Celery's syntax: ``10/m``, ``2/s``, ``100``) on
        ``worker``; its reply. Raises as :meth:`time_limit`."""
        self.registered_name(name, worker)
        self.known_worker(worker)
        replies = self.celery_app.control.rate_limit(
            name, limit, destination=[worker], reply=True, timeout=self.reply_timeout(), limit=1
        )
        return self._reply(worker, replies, f"Failed to set rate limit of '{name}'")


def check_shrink(name: str, n: int, processes: int | None) -> None:
    """Refuse to shrink worker ``name``'s pool of ``processes`` processes (None: unknown, not
    refused) by ``n``: raises :class:`ConflictError` when it would leave no process (the worker
    would take tasks and never run them). Shared by :meth:`Control.pool_resize` and the CLI."""
    if processes is not None and n >= processes:
        raise ConflictError(
            f"shrinking '{name}' worker's pool by {n} would leave it without a process "
            f"(it has {processes}); shrink by at most {processes - 1}"
        )


def check_autoscale(lo: int, hi: int) -> None:
    """Raises :class:`InvalidInput` when the autoscaler's ``lo`` (min) is above ``hi`` (max)."""
    if lo > hi:
        raise InvalidInput(f"min must be <= max, not min={lo} max={hi}")


def pool_sizes(celery_app: Any, nodes: list[str] | None, timeout: float) -> dict[str, int | None]:
    """``{node: number of pool processes}`` of the workers ``nodes`` (every worker when None)
    that answer ``stats`` within ``timeout`` seconds; None for a pool that lists no processes
    (solo, threads...). Raises the broker client's connection error."""
    stats = celery_app.control.inspect(destination=nodes, timeout=timeout).stats() or {}
    return {
        node: _processes(dict(info.get("pool") or {}))
        for node, info in stats.items()
        if isinstance(info, dict)
    }


def _processes(pool: dict[str, Any] | None) -> int | None:
    procs = (pool or {}).get("processes")
    return len(procs) if isinstance(procs, list) else None


def _pool_text(pool: dict[str, Any] | None) -> str:
    n = _processes(pool)
    if n is None:
        return "the pool size could not be read back"
    return f"the pool has {n} process{'' if n == 1 else 'es'}"
