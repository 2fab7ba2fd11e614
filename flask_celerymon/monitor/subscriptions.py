"""Live feeds of the monitor service: subscriptions (websockets) and event listeners (metrics).

A :class:`Subscription` is offered each changed task and worker by the ingest thread (O(1),
never blocking: a subscriber too slow is dropped) and read by its own thread with
:meth:`Subscription.get`. An event listener (``add_listener``) is called in the ingest thread
after each applied event; a listener given a ``batch`` hook has the hook's context entered
once around each batch of events (up to ``events.BATCH``, applied under the state lock), so
it takes its own lock once a batch instead of once an event. A purge listener is called when
a worker is purged. The listener tuples are replaced, never changed in place, so the ingest
thread reads them without a lock.

:class:`Subscriptions` is a part of :class:`~.service.MonitorService` (a base class of it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from .service import MonitorService
    from .settings import MonitorSettings

#: listener(event, task): ``event`` is the decoded event dict, ``task`` the record it changed
#: (read its attributes, don't keep or change it) or None for worker events.
EventListener = Callable[[dict[str, Any], Any], None]
#: batch(): a context manager entered before the first event of a batch is passed to its
#: listener and exited after the last (e.g. the listener's lock: ``lambda: self._lock``).
BatchHook = Callable[[], AbstractContextManager[Any]]


class Subscription:
    """A live feed of changed objects for one subscriber (a websocket, a test...).

    Changes are coalesced per object: a task that changed ten times since the last
    :meth:`get` is reported once, with its current data. When more than ``buffer`` distinct
    objects wait, the subscriber is too slow: it is dropped (:attr:`closed` becomes True,
    :attr:`reason` says why) and ingest never waits for it.
    """

    def __init__(
        self,
        service: MonitorService,
        kinds: frozenset[str],
        task_ids: frozenset[str] | None,
        buffer: int,
    ) -> None:
        self._service = service
        self.kinds = kinds
        self.task_ids = task_ids
        self.buffer = buffer
        self._pending: dict[tuple[str, str], None] = {}
        self._cond = threading.Condition(threading.Lock())
        self.closed = False
        self.reason: str | None = None

    def _offer(self, kind: str, ident: str) -> None:
        """Called by the ingest thread; O(1), never blocks on the subscriber."""
        if self.closed or kind not in self.kinds:
            return
        if kind == "task" and self.task_ids is not None and ident not in self.task_ids:
            return
        key = (kind, ident)
        with self._cond:
            pending = self._pending
            if key in pending:
                return
            if len(pending) >= self.buffer:
                self.closed = True
                self.reason = f"dropped: more than {self.buffer} updates waiting"
                pending.clear()
                self._cond.notify_all()
                self._service._drop(self)
                return
            pending[key] = None
            if len(pending) == 1:
                self._cond.notify_all()

    def get(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Wait up to ``timeout`` s for changes; return them (possibly ``[]``).

        Items: ``{"type": "task" | "worker" | "worker-purged", "id": uuid or hostname,
        "data": current dict or None}``. Raises ``EOFError`` once the subscription is closed
        (see :attr:`reason`).
        """
        with self._cond:
            if not self._pending and not self.closed:
                self._cond.wait(timeout)
            if self.closed:
                raise EOFError(self.reason or "subscription closed")
            keys = list(self._pending)
            self._pending.clear()
        svc = self._service
        out = []
        for kind, ident in keys:
            if kind == "task":
                data = svc.task(ident, children=False)
            elif kind == "worker":
                data = svc.worker(ident)
            else:
                data = None
            out.append({"type": kind, "id": ident, "data": data})
        return out

    def close(self) -> None:
        """Unsubscribe (idempotent)."""
        with self._cond:
            if not self.closed:
                self.closed = True
                self.reason = self.reason or "closed"
            self._cond.notify_all()
        self._service._drop(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscriptions:
    """Subscriptions and listeners of the service (see the module docstring)."""

    # Set by MonitorService.__init__.
    settings: MonitorSettings
    _subs: tuple[Subscription, ...]
    _subs_lock: threading.Lock
    _subs_dropped: int
    _listeners: tuple[tuple[EventListener, BatchHook | None], ...]
    _purge_listeners: tuple[Callable[[str], None], ...]
    _purged: list[tuple[float, str]]

    # -- listeners and subscriptions -------------------------------------------------------

    def add_listener(self, fn: EventListener, *, batch: BatchHook | None = None) -> None:
        """Call ``fn(event, task)`` in the ingest thread after each applied event.

        For metrics: ``event`` has ``type``, ``hostname``, ``timestamp`` and the event's
        fields; ``task`` is the changed task record (``name``, ``state``, ``received``,
        ``started``, ``runtime``, ``worker``...) or None. Keep it fast; exceptions are logged
        and counted, never raised into ingest.

        ``batch``, optional: called once per batch of events (up to ``events.BATCH`` of them,
        applied under the state lock) before ``fn`` sees the first of them; the context
        manager it returns is entered then and exited after ``fn`` saw the last one (in the
        ingest thread, the state lock held throughout). ``fn`` is still called per event, in
        order, with the task as that event left it. A hook that raises on entry is logged and
        counted in ``listener_errors``, and ``fn`` misses that batch.
        """
        with self._subs_lock:
            self._listeners = (*self._listeners, (fn, batch))

    def remove_listener(self, fn: EventListener) -> None:
        """Stop calling ``fn`` (compared by ``==``, so the same bound method obtained again
        is removed); nothing happens when it was not added."""
        with self._subs_lock:
            self._listeners = tuple(e for e in self._listeners if e[0] != fn)

    def add_purge_listener(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(hostname)`` when an offline worker is purged (drop its metric series)."""
        with self._subs_lock:
            self._purge_listeners = (*self._purge_listeners, fn)

    def purged_workers(self) -> list[tuple[float, str]]:
        """The last 1000 purged workers as ``(time, hostname)``, oldest first."""
        return list(self._purged)

    def subscribe(
        self,
        kinds: Iterable[str] = ("task", "worker", "worker-purged"),
        task_ids: Iterable[str] | None = None,
        buffer: int | None = None,
    ) -> Subscription:
        """A new live feed (thread-safe). ``task_ids`` limits task updates to those tasks.

        Raises ``ValueError`` for an unknown kind.
        """
        ks = frozenset(kinds)
        bad = ks - {"task", "worker", "worker-purged"}
        if bad:
            raise ValueError(f"unknown subscription kind(s) {sorted(bad)}")
        sub = Subscription(
            cast("MonitorService", self),  # Subscriptions is a base of MonitorService only
            ks,
            None if task_ids is None else frozenset(task_ids),
            buffer or self.settings.subscriber_buffer,
        )
        with self._subs_lock:
            self._subs = (*self._subs, sub)
        return sub

    def _drop(self, sub: Subscription) -> None:
        with self._subs_lock:
            if sub in self._subs:
                self._subs = tuple(s for s in self._subs if s is not sub)
                if sub.reason and sub.reason.startswith("dropped"):
                    self._subs_dropped += 1
