"""The monitor service: one object per Flask app owning ingest, state, history and inspection.

Threads (none before :meth:`MonitorService.start`):

* ``celerymon-events`` (+ a socket reader for Redis): consumes events and applies them to the
  window; it is the only writer of task and worker state.
* ``celerymon-house``: flushes changed tasks to the history store in batches, purges offline
  workers, prunes the store, sends ``enable_events`` and schedules inspect refreshes; in the
  ingester only, also marks tasks LOST and reconciles with the result backend.
* With ``single_ingester``, the lease and fan-out threads of :class:`.lease.Coordinator`: the
  process holding the lease consumes (and opens the restart gap then); the others follow,
  reading the shared store.
* ``celerymon-inspect-*``: a small pool running inspect broadcasts.

Reads come from any thread (web requests, websockets, metrics) and take the state lock only
for as long as a copy or a scan of the window takes.

Everything returned is plain JSON-ready dicts and lists, with Flower's field names.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from celery import Celery

from . import broker as _broker
from . import reconcile as _reconcile
from .events import EventConsumer, Figures
from .inspector import Inspector
from .query import SearchError, parse, parse_sort
from .settings import MonitorSettings
from .sqlite_store import aggregate_stats
from .state import (
    TASK_EVENTS,
    WORKER_EVENTS,
    MalformedEvent,
    State,
    TaskRecord,
    WorkerRecord,
)
from .state import task_dict as _task_dict
from .store import HistoryStore, TaskQuery, open_store
from .store import redact as _redact

log = logging.getLogger(__name__)

#: listener(event, task): ``event`` is the decoded event dict, ``task`` the record it changed
#: (read its attributes, don't keep or change it) or None for worker events.
EventListener = Callable[[dict, Any], None]


PRUNE_INTERVAL = 60.0
PURGE_CHECK_INTERVAL = 1.0
#: Rows the store may index for search per housekeeping tick, while ingest is busy / idle.
INDEX_BUSY = 500
INDEX_IDLE = 2_000
#: Gaps in the event stream remembered for figures() and the pages.
GAPS_KEPT = 20
#: Unfinished tasks of the history read back after a restart, to reconcile.
RESTART_RECHECK_MAX = 10_000


class TaskPage:
    """A page of tasks and the number of tasks matching the query.

    Unpacks as ``total, tasks = page``. ``exact`` is False only when a history-store query
    stopped counting (at :data:`~.sql_query.COUNT_CAP` matches, or a page past the one asked
    for on a common search term; see :mod:`.sql_query`): then ``total`` is a lower bound,
    shown as "at least N".
    """

    __slots__ = ("total", "tasks", "exact")

    def __init__(self, total: int, tasks: list[dict[str, Any]], exact: bool = True) -> None:
        self.total = total
        self.tasks = tasks
        self.exact = exact

    def __iter__(self) -> Iterator[Any]:
        return iter((self.total, self.tasks))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TaskPage):
            return (self.total, self.tasks, self.exact) == (other.total, other.tasks, other.exact)
        return NotImplemented

    def __repr__(self) -> str:
        return f"TaskPage(total={self.total}, tasks=[{len(self.tasks)} tasks], exact={self.exact})"


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


def _ts(value: float | datetime | None, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise SearchError(f"{what} must be a Unix time or a datetime, not {value!r}")


def _tuple(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None or value == "" or value == "All":
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(v for v in value if v and v != "All")


class MonitorService:
    """The monitor of one Celery app. Construct freely; threads start with :meth:`start`.

    Every read method starts the service on first use when ``autostart`` is True (the
    default): a Flask app only consumes events in the process that serves the monitor, never
    in the reloader's parent. ``start``/``stop`` are idempotent and thread-safe; a service
    used after a ``fork`` restarts its threads in the child.
    """

    def __init__(
        self,
        celery_app: Celery,
        settings: MonitorSettings | None = None,
        *,
        autostart: bool = True,
    ) -> None:
        self.celery_app = celery_app
        self.settings = settings or MonitorSettings()
        self.autostart = autostart
        self._lifecycle = threading.RLock()
        self._pid: int | None = None
        self._stopped = False
        self._stop_event = threading.Event()
        self._house: threading.Thread | None = None
        self._consumer: EventConsumer | None = None
        self._store: HistoryStore | None = None
        self._store_empty_at_start = True
        #: With ``single_ingester``: the lease (see :mod:`.lease`) and whether we follow.
        self._coordinator: Any = None
        self._following = False
        self._workers_stale = False
        self._figures = Figures()
        self._state = self._new_state()
        self._dirty: dict[str, TaskRecord] = {}
        self._dirty_workers: dict[str, WorkerRecord] = {}
        self._subs: tuple[Subscription, ...] = ()
        self._subs_lock = threading.Lock()
        self._subs_dropped = 0
        self._listeners: tuple[EventListener, ...] = ()
        self._purge_listeners: tuple[Callable[[str], None], ...] = ()
        self._listener_errors = 0
        self._purged: list[tuple[float, str]] = []
        self._evicted_workers: list[str] = []
        self._queues_cache: tuple[float, list[dict] | None] | None = None
        self._flushes = 0
        self._flush_seconds = 0.0
        self._rows_dropped = 0
        self._flush_lock = threading.Lock()
        # Gaps in the event stream and reconciliation with the result backend.
        self._gaps: deque[dict[str, Any]] = deque(maxlen=GAPS_KEPT)
        self._gaps_total = 0
        self._gap_seconds = 0.0
        self._gap_open: tuple[float, str] | None = None
        self._checked: dict[str, float] = {}
        self._store_unfinished: list[str] = []
        self._reconcile_ok: bool | None = None
        self._reconciled = 0
        self._reconcile_errors = 0
        self._indexed = 0
        self._index_seconds = 0.0
        self.inspector = Inspector(
            celery_app, self.settings.inspect_timeout, expected_workers=self._online_hostnames
        )

    def _new_state(self) -> State:
        st = State(
            self.settings.max_tasks,
            self.settings.max_workers,
            self.settings.worker_offline_after,
        )
        st.on_task = self._task_changed
        st.on_worker = self._worker_changed
        st.on_worker_evicted = self._worker_evicted
        return st

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop` in this process."""
        return self._pid == os.getpid()

    def ensure_started(self) -> MonitorService:
        """Start unless running in this process; returns self (for chaining)."""
        if self._pid != os.getpid():
            self.start()
        return self

    def start(self) -> None:
        """Open the history store, start consuming events and the housekeeping thread.

        Idempotent. After a restart with a populated store, answers come from the store at
        once; nothing is replayed.
        """
        with self._lifecycle:
            self._stopped = False
            if self._pid == os.getpid():
                return
            if self._pid is not None:  # forked: the parent's threads are not ours
                self._reset_after_fork()
            self._stop_event.clear()
            path = self.settings.db_path
            if path is not None and self._store is None:
                store = open_store(path)
                self._store_empty_at_start = store.is_empty()
                with self._state.lock:
                    self._state.restore_workers(store.load_workers().values())
                if not self.settings.single_ingester:  # else when it takes the lease
                    self._open_restart_gap(store)
                self._store = store
            if self.settings.single_ingester:
                self._start_coordinated()
            else:
                self._consumer = EventConsumer(
                    self.celery_app, self._ingest, self._figures, on_connect=self._on_connect
                )
                self._consumer.start()
            self._house = threading.Thread(
                target=self._housekeeping, name="celerymon-house", daemon=True
            )
            self._house.start()
            self._pid = os.getpid()

    # -- one ingester per cluster (see lease.py) --------------------------------------------

    def _start_coordinated(self) -> None:
        from .lease import Coordinator

        self._following = True
        self._coordinator = Coordinator(
            self.celery_app,
            self.celery_app.main or "celery",
            self.settings.lease_ttl,
            on_lead=self._lead,
            on_follow=self._follow,
            on_changes=self._changes_elsewhere,
        )
        self._coordinator.start()

    def _lead(self) -> None:
        """Lease thread: we hold the lease now; consume events and write the store."""
        if not self._lock_unless_stopping():
            return
        try:
            if self._consumer is not None:
                return
            if self._store is not None:
                # Events sent while no process ingested are gone: the gap since the last
                # ingester consumed, and its unfinished tasks to reconcile, are ours now.
                try:
                    self._open_restart_gap(self._store)
                except Exception:  # noqa: BLE001 - ingest anyway; the gap goes unreported
                    log.exception("celerymon: reading the last ingester's meta failed")
            self._following = False
            self._consumer = EventConsumer(
                self.celery_app, self._ingest, self._figures, on_connect=self._on_connect
            )
            self._consumer.start()
        finally:
            self._lifecycle.release()

    def _lock_unless_stopping(self) -> bool:
        """Take the lifecycle lock, or give up (False) once :meth:`stop` runs: stop() holds
        the lock while it waits for the lease thread."""
        while not self._lifecycle.acquire(timeout=0.1):
            if self._stop_event.is_set():
                return False
        if self._stop_event.is_set():
            self._lifecycle.release()
            return False
        return True

    def _follow(self) -> None:
        """Lease thread: the lease is lost; stop consuming (what was applied is flushed)."""
        if not self._lock_unless_stopping():
            return
        try:
            consumer, self._consumer = self._consumer, None
            self._following = True
        finally:
            self._lifecycle.release()
        if consumer is not None:
            consumer.stop()
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - the next ingester writes its own
            log.exception("celerymon: the last write as ingester failed")

    def _changes_elsewhere(self, tasks: list[str], workers: list[str]) -> None:
        """Fan-out thread (followers): the ingester wrote these tasks and workers."""
        if workers:
            self._workers_stale = True  # reloaded from the store when next read
        for sub in self._subs:
            for t in tasks:
                sub._offer("task", t)
            for h in workers:
                sub._offer("worker", h)

    def _refresh_workers(self) -> None:
        """Followers: reload the workers from the store if the ingester wrote some since."""
        store = self._store
        if not self._workers_stale or store is None:
            return
        self._workers_stale = False
        snaps = store.load_workers()
        with self._state.lock:
            self._state.workers.clear()
            self._state.restore_workers(snaps.values())

    @property
    def role(self) -> str:
        """``"ingester"`` (consumes events), ``"follower"`` (reads the shared store) or
        ``"stopped"``."""
        if not self.running:
            return "stopped"
        return "follower" if self._following else "ingester"

    def _open_restart_gap(self, store: HistoryStore) -> None:
        """After a restart, events sent since the last run consumed are gone: open a gap from
        then (closed when the stream is subscribed), and read back the unfinished tasks of the
        history to reconcile them against the result backend."""
        until = store.get_meta("consuming_until")
        clean = store.get_meta("clean_stop") == "1"
        store.set_meta({"clean_stop": None})
        try:
            since = float(until) if until is not None else None
        except ValueError:
            since = None
        if since is None:
            return
        self._gap_open = (
            since,
            "the monitor was not running"
            if clean
            else "the monitor stopped without a clean shutdown (killed?)",
        )
        _, rows = store.query(
            TaskQuery(state=_reconcile.UNFINISHED, limit=RESTART_RECHECK_MAX, sort_key="received")
        )
        self._store_unfinished = [r["uuid"] for r in rows]

    def _reset_after_fork(self) -> None:
        self._coordinator = None
        self._following = False
        self._consumer = None
        self._house = None
        self._store = None
        self._state = self._new_state()
        self._dirty = {}
        self._dirty_workers = {}
        self._subs = ()
        self.inspector = Inspector(
            self.celery_app, self.settings.inspect_timeout, expected_workers=self._online_hostnames
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the threads, write pending changes to the store and close it. Idempotent.

        Reads after ``stop()`` answer from memory and do not start the service again; call
        :meth:`start` for that.
        """
        with self._lifecycle:
            self._stopped = True
            if self._pid != os.getpid():
                return
            self._stop_event.set()
            until = self._consuming_until()  # events were consumed up to now
            ingesting = not self._following
            if self._consumer is not None:
                self._consumer.stop(timeout)
            if self._house is not None:
                self._house.join(timeout)
            self.inspector.close()
            try:
                self.flush()
                if self._store is not None and ingesting:  # followers leave the meta alone
                    meta = {"clean_stop": "1"}
                    if until is not None:
                        meta["consuming_until"] = until
                    self._store.set_meta(meta)
            except Exception:  # noqa: BLE001 - still release everything
                log.exception("celerymon: the last write to the history store failed")
            if self._coordinator is not None:
                # Given up only now: a successor reads the meta written just above.
                self._coordinator.stop(timeout)
                self._coordinator = None
            if self._store is not None:
                self._store.close()
                self._store = None
            for sub in self._subs:
                sub.close()
            self._consumer = None
            self._house = None
            self._pid = None

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """Wait until the event stream is subscribed (tests, the CLI). Starts the service."""
        self.ensure_started()
        c = self._consumer
        return c is not None and c.wait_connected(timeout)

    # -- ingest (the consumer thread) ------------------------------------------------------

    def _ingest(self, events: list[dict[str, Any]]) -> None:
        st = self._state
        fig = self._figures
        listeners = self._listeners
        now = time.time()
        applied = malformed = unknown = 0
        with st.lock:
            apply = st.apply
            for ev in events:
                try:
                    t = apply(ev, now)
                except MalformedEvent as exc:
                    malformed += 1
                    if fig.events_malformed + malformed <= 100 or malformed == 1:
                        log.warning("celerymon: skipped malformed event: %s", exc)
                    continue
                except Exception:  # noqa: BLE001 - never let one event stop ingest
                    malformed += 1
                    log.exception("celerymon: could not apply event %r", ev.get("type"))
                    continue
                applied += 1
                etype = ev["type"]
                if etype not in TASK_EVENTS and etype not in WORKER_EVENTS:
                    unknown += 1
                if listeners:
                    for fn in listeners:
                        try:
                            fn(ev, t)
                        except Exception:  # noqa: BLE001
                            self._listener_errors += 1
                            log.exception("celerymon: event listener %r failed", fn)
        fig.events_applied += applied
        fig.events_malformed += malformed
        fig.events_dropped += malformed  # received, never applied
        fig.events_unknown += unknown
        last = events[-1].get("timestamp")
        if isinstance(last, (int, float)):
            lag = max(0.0, time.time() - last)
            fig.lag = lag
            fig.lag_max = max(fig.lag_max, lag)
        fig.last_event_at = now

    def apply_events(self, events: Iterable[dict[str, Any]]) -> None:
        """Apply decoded events as if they came from the broker (tests, imports, replays)."""
        evs = [dict(e) for e in events]
        if evs:
            self._figures.events_received += len(evs)
            self._ingest(evs)

    def _task_changed(self, t: TaskRecord) -> None:
        if self.settings.db_path is not None:
            self._dirty[t.uuid] = t
        for sub in self._subs:
            sub._offer("task", t.uuid)

    def _worker_changed(self, w: WorkerRecord) -> None:
        if self.settings.db_path is not None:
            self._dirty_workers[w.hostname] = w
        for sub in self._subs:
            sub._offer("worker", w.hostname)

    def _worker_evicted(self, hostname: str) -> None:
        """A worker dropped for ``max_workers`` (ingest thread, state lock held)."""
        self._dirty_workers.pop(hostname, None)
        self.inspector.forget(hostname)
        self._evicted_workers.append(hostname)

    def _on_connect(self) -> None:
        now = time.time()
        fig = self._figures
        opened = self._gap_open
        if fig.disconnected_at is not None:
            if opened is None:
                opened = (fig.disconnected_at, "the event stream was disconnected")
            fig.disconnected_at = None
        self._gap_open = None
        if opened is not None:
            start, reason = opened
            gap = {"start": start, "end": now, "seconds": max(0.0, now - start), "reason": reason}
            self._gaps.append(gap)
            self._gaps_total += 1
            self._gap_seconds += gap["seconds"]
            self._checked = {}  # every unfinished task may have changed meanwhile
            log.warning(
                "celerymon: events between %s and %s are missing (%s); unfinished tasks are "
                "checked against the result backend",
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start)),
                time.strftime("%H:%M:%S", time.gmtime(now)),
                reason,
            )
        if self.settings.enable_events:
            self._enable_events()
        self.inspector.refresh(wait=False)

    def _consuming_until(self) -> str | None:
        """Now, as the time up to which events were consumed, if subscribed; else None."""
        c = self._consumer
        return repr(time.time()) if c is not None and c.connected else None

    def reconcile(self) -> int:
        """Ask the result backend about a batch of tasks held as unfinished; returns how many
        it brought to a finished state (see :mod:`.reconcile`).

        The window's unfinished tasks whose last event is older than ``reconcile.MIN_AGE``
        and not asked about for ``reconcile.RECHECK`` seconds come first, then the history's
        unfinished tasks read back after a restart. At most ``reconcile.BATCH`` per call.
        """
        if self._reconcile_ok is None:
            self._reconcile_ok = _reconcile.supported(self.celery_app)
        if not self._reconcile_ok:
            return 0
        now = time.time()
        mono = time.monotonic()
        st = self._state
        checked = self._checked
        old = now - _reconcile.MIN_AGE
        again = mono - _reconcile.RECHECK
        ask: list[str] = []
        with st.lock:
            for t in st.tasks.values():
                if (
                    t.state in _reconcile.UNFINISHED
                    and (t.timestamp or 0.0) <= old
                    and checked.get(t.uuid, -1e18) <= again
                ):
                    ask.append(t.uuid)
                    if len(ask) >= _reconcile.BATCH:
                        break
            if len(checked) > 2 * st.max_tasks + 1000:
                self._checked = checked = {u: m for u, m in checked.items() if u in st.tasks}
        room = _reconcile.BATCH - len(ask)
        from_store = set(self._store_unfinished[:room]) if room > 0 else set()
        del self._store_unfinished[: len(from_store)]
        ask += [u for u in from_store if u not in ask]
        if not ask:
            return 0
        for u in ask:
            checked[u] = mono
        try:
            events = _reconcile.finished_events(self.celery_app, ask, now)
        except Exception as exc:  # noqa: BLE001 - the backend may be down; asked again later
            self._reconcile_errors += 1
            log.warning("celerymon: asking the result backend failed: %s", exc)
            return 0
        store = self._store
        rows = {}
        if store is not None:
            for ev in events:
                if ev["uuid"] in from_store:
                    row = store.get_task(ev["uuid"])
                    if row is not None:
                        rows[ev["uuid"]] = row
        with st.lock:
            for row in rows.values():
                st.adopt(TaskRecord.from_row(row))
            for ev in events:
                st.apply(ev, now)
        self._reconciled += len(events)
        if events:
            log.info("celerymon: %d task(s) finished per the result backend", len(events))
        return len(events)

    def revoke_requested(self, task_ids: Iterable[str]) -> int:
        """Note in the history of each unfinished task that this monitor asked to revoke it
        (``revoke-requested``), shown until the worker confirms; returns tasks noted."""
        now = time.time()
        st = self._state
        with st.lock:
            return sum(st.note(u, "revoke-requested", now) for u in task_ids)

    def _enable_events(self) -> None:
        try:
            self.celery_app.control.enable_events()
        except Exception as exc:  # noqa: BLE001 - the broker may be down; retried later
            log.info("celerymon: enable_events failed: %s", exc)

    # -- housekeeping thread ---------------------------------------------------------------

    def _housekeeping(self) -> None:
        s = self.settings
        next_enable = time.monotonic() + s.enable_events_interval
        next_inspect = time.monotonic() + s.inspect_interval
        next_prune = time.monotonic() + 5.0
        next_purge = time.monotonic() + PURGE_CHECK_INTERVAL
        next_flush = time.monotonic() + s.flush_interval
        next_reconcile = time.monotonic() + 1.0
        tick = min(s.flush_interval, PURGE_CHECK_INTERVAL, 0.5)
        while not self._stop_event.wait(tick):
            now = time.monotonic()
            if now >= next_flush:
                next_flush = now + s.flush_interval
                try:
                    self._index(self.flush())
                except Exception:  # noqa: BLE001 - keep housekeeping alive
                    log.exception("celerymon: writing to the history store failed")
            if now >= next_purge:
                try:
                    if not self._following:  # the ingester marks them in the shared store
                        self._mark_lost()
                    self._purge_offline()
                except Exception:  # noqa: BLE001
                    log.exception("celerymon: purging offline workers failed")
            if now >= next_purge:
                next_purge = now + PURGE_CHECK_INTERVAL
            if s.enable_events and now >= next_enable and not self._following:
                next_enable = now + s.enable_events_interval
                self._enable_events()
            if now >= next_inspect:
                next_inspect = now + s.inspect_interval
                try:
                    self.inspector.refresh(wait=False)
                except Exception:  # noqa: BLE001
                    log.exception("celerymon: inspect refresh failed")
            if now >= next_reconcile and not self._following:
                next_reconcile = now + _reconcile.INTERVAL
                try:
                    self.reconcile()
                except Exception:  # noqa: BLE001
                    log.exception("celerymon: reconciling with the result backend failed")
            if now >= next_prune and not self._following:
                next_prune = now + PRUNE_INTERVAL
                try:
                    self.prune()
                except Exception:  # noqa: BLE001
                    log.exception("celerymon: pruning the history failed")

    def flush(self) -> int:
        """Write changed tasks and workers to the store now; returns the number of tasks.

        When it returns, every change made before the call is in the store (a flush running
        in the housekeeping thread is waited for).
        """
        with self._flush_lock:
            return self._flush()

    def _flush(self) -> int:
        store = self._store
        if store is None:
            return 0
        st = self._state
        now = time.time()
        with st.lock:
            dirty, self._dirty = self._dirty, {}
            wdirty, self._dirty_workers = self._dirty_workers, {}
            gone, self._evicted_workers = self._evicted_workers, []
            rows = [t.row() for t in dirty.values()]
            wsnap = {h: w.as_dict(now, st.worker_offline_after) for h, w in wdirty.items()}
        t0 = time.perf_counter()
        try:
            try:
                store.write_tasks(rows)
            except store.unavailable_errors:
                raise  # the store is unavailable (disk full, locked...): retry them later
            except Exception:  # noqa: BLE001 - a row the store refuses
                self._write_one_by_one(store, rows)
            store.write_workers(wsnap)
            store.delete_workers(gone)
        except Exception:
            # Keep the changes for the next attempt (newer changes win).
            with st.lock:
                self._dirty = {**dirty, **self._dirty}
                self._dirty_workers = {**wdirty, **self._dirty_workers}
                self._evicted_workers = gone + self._evicted_workers
            raise
        until = self._consuming_until()
        if until is not None:
            store.set_meta({"consuming_until": until})
        self._flushes += 1
        self._flush_seconds += time.perf_counter() - t0
        coordinator = self._coordinator
        if coordinator is not None:
            try:
                coordinator.publish(list(dirty), [*wsnap, *gone])
            except Exception:  # noqa: BLE001 - followers still read the store
                log.warning("celerymon: could not publish changes to followers", exc_info=True)
        return len(rows)

    def _write_one_by_one(self, store: HistoryStore, rows: list[tuple[Any, ...]]) -> None:
        """Write ``rows`` singly, dropping (logging, counting) each row the store refuses, so
        that one bad row never stops the history of every other task."""
        for row in rows:
            try:
                store.write_tasks([row])
            except store.unavailable_errors:
                raise
            except Exception as exc:  # noqa: BLE001
                self._rows_dropped += 1
                log.error("celerymon: the history store refused task %r: %s", row[0], exc)

    def _index(self, written: int) -> None:
        """Let the store index for search: a little while busy, more when idle."""
        store = self._store
        if store is not None:
            t0 = time.perf_counter()
            self._indexed += store.index_pending(INDEX_IDLE if written < 100 else INDEX_BUSY)
            self._index_seconds += time.perf_counter() - t0

    def prune(self) -> int:
        """Apply the retention settings to the store now; returns the tasks deleted."""
        store = self._store
        if store is None:
            return 0
        s = self.settings
        return store.prune(s.retention_tasks, time.time() - s.retention_days * 86400)

    def _mark_lost(self) -> None:
        """Tasks running on a worker whose heartbeats expired become LOST."""
        st = self._state
        with st.lock:
            lost = st.mark_lost_offline(time.time())
        if lost:
            log.warning(
                "celerymon: %d task(s) lost with their offline worker(s): %s",
                len(lost),
                ", ".join(sorted({t.worker for t in lost})),
            )

    def _purge_offline(self) -> None:
        after = self.settings.purge_offline_workers
        if after is None:
            return
        st = self._state
        now = time.time()
        with st.lock:
            victims = [
                h
                for h, w in st.workers.items()
                if not w.alive(now, st.worker_offline_after) and now - w.last_seen > after
            ]
            for h in victims:
                st.remove_worker(h)
                self._dirty_workers.pop(h, None)
        if victims:
            self._forget_workers(victims, now)

    def purge_worker(self, hostname: str) -> bool:
        """Forget a worker now, everywhere (state, store, inspect cache, listeners)."""
        with self._state.lock:
            known = self._state.remove_worker(hostname)
            self._dirty_workers.pop(hostname, None)
        if known:
            self._forget_workers([hostname], time.time())
        return known

    def _forget_workers(self, hostnames: list[str], now: float) -> None:
        if self._store is not None:
            self._store.delete_workers(hostnames)
        for h in hostnames:
            self.inspector.forget(h)
            self._purged.append((now, h))
            for sub in self._subs:
                sub._offer("worker-purged", h)
            for fn in self._purge_listeners:
                try:
                    fn(h)
                except Exception:  # noqa: BLE001
                    self._listener_errors += 1
                    log.exception("celerymon: purge listener %r failed", fn)
        del self._purged[:-1000]
        log.info("celerymon: purged offline workers %s", ", ".join(hostnames))

    # -- listeners and subscriptions -------------------------------------------------------

    def add_listener(self, fn: EventListener) -> None:
        """Call ``fn(event, task)`` in the ingest thread after each applied event.

        For metrics: ``event`` has ``type``, ``hostname``, ``timestamp`` and the event's
        fields; ``task`` is the changed task record (``name``, ``state``, ``received``,
        ``started``, ``runtime``, ``worker``...) or None. Keep it fast; exceptions are logged
        and counted, never raised into ingest.
        """
        with self._subs_lock:
            self._listeners = (*self._listeners, fn)

    def remove_listener(self, fn: EventListener) -> None:
        with self._subs_lock:
            self._listeners = tuple(f for f in self._listeners if f is not fn)

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
            self,
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

    # -- reading: workers ------------------------------------------------------------------

    def _online_hostnames(self) -> list[str]:
        now = time.time()
        st = self._state
        with st.lock:
            return [h for h, w in st.workers.items() if w.alive(now, st.worker_offline_after)]

    def workers(self) -> list[dict[str, Any]]:
        """Every known worker as Flower's ``/workers?json=1`` items, sorted by hostname.

        Keys: per-event-type counters (``task-received``, ``worker-heartbeat``...),
        ``hostname pid freq heartbeats clock active processed loadavg sw_ident sw_ver sw_sys``,
        ``status`` (online, bool) and ``last_seen`` (local time of its last event).
        """
        self._autostart()
        self._refresh_workers()
        now = time.time()
        st = self._state
        with st.lock:
            out = [w.as_dict(now, st.worker_offline_after) for w in st.workers.values()]
        return sorted(out, key=lambda d: d["hostname"])

    def worker(self, hostname: str) -> dict[str, Any] | None:
        """One worker like :meth:`workers` items, or None if unknown."""
        self._autostart()
        self._refresh_workers()
        st = self._state
        with st.lock:
            w = st.workers.get(hostname)
            return None if w is None else w.as_dict(time.time(), st.worker_offline_after)

    def worker_status(self) -> dict[str, bool]:
        """``{hostname: online}`` (Flower's ``/api/workers?status=1``)."""
        return {d["hostname"]: d["status"] for d in self.workers()}

    def inspect(
        self, worker: str | None = None, refresh: bool = False
    ) -> dict[str, dict[str, Any]]:
        """Flower's ``/api/workers``: ``{hostname: {stats, active_queues, registered, conf,
        timestamp[, scheduled, active, reserved, revoked]}}``.

        Workers known only from events are included with what is known (``timestamp`` None).
        With ``refresh`` the cache is refreshed first, waiting at most the inspect timeout;
        then an unreachable broker raises its connection error (kombu's ``OperationalError``)
        instead of answering with what the cache holds. An unknown ``worker`` gives ``{}``.
        """
        self._autostart()
        if refresh:
            data = self.inspector.refresh(worker)
        else:
            data = self.inspector.get(worker)
            if not data and self.inspector.last_refresh is None:
                self.inspector.refresh(worker, wait=False)
        names = [worker] if worker is not None else [d["hostname"] for d in self.workers()]
        for h in names:
            if h not in data and self.worker(h) is not None:
                data[h] = {"timestamp": None}
        return data

    # -- reading: tasks --------------------------------------------------------------------

    def task(self, uuid: str, children: bool = True) -> dict[str, Any] | None:
        """Flower's ``/api/task/info`` dict (``worker`` is the hostname) plus ``history``.

        From the window, else the history store; None if unknown.
        """
        self._autostart()
        st = self._state
        with st.lock:
            t = st.tasks.get(uuid)
            d = t.as_dict() if t is not None else None
        store = self._store
        if d is None:
            if store is None:
                return None
            row = store.get_task(uuid)
            if row is None:
                return None
            d = _task_dict(row, [])
        if children and store is not None:
            kids = d["children"]
            for c in store.children(uuid):
                if c not in kids:
                    kids.append(c)
        return d

    def query_tasks(
        self,
        *,
        state: str | Iterable[str] | None = None,
        worker: str | Iterable[str] | None = None,
        name: str | Iterable[str] | None = None,
        received_start: float | datetime | None = None,
        received_end: float | datetime | None = None,
        started_start: float | datetime | None = None,
        started_end: float | datetime | None = None,
        search: str | None = None,
        sort_by: str | None = None,
        offset: int = 0,
        limit: int | None = 100,
        source: str = "auto",
    ) -> TaskPage:
        """Filter, search, sort and page tasks over the window and the history store.

        Filters take one value or several (``"All"`` or None means no filter); times are Unix
        seconds or datetimes, bounds inclusive. ``search`` is Flower's search language (see
        :mod:`.query`). ``sort_by`` is ``name``, ``state``, ``received``, ``started``,
        ``runtime``, ``timestamp`` (prefix ``-`` for descending; default ``-received``);
        tasks without the sort value come last when descending, first when ascending.

        ``source``: ``"auto"`` answers from the window while it holds every task the service
        knows and from the history store otherwise (with the window's fresher copy of each
        task on the page); ``"window"`` or ``"store"`` force one side.

        Raises :class:`~.query.SearchError` (a ``ValueError``) for an invalid search, sort
        key, time or page; the message is fit for the user.
        """
        self._autostart()
        if not isinstance(offset, int) or offset < 0:
            raise SearchError(f"offset must be an integer >= 0, not {offset!r}")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise SearchError(f"limit must be an integer >= 0 or None, not {limit!r}")
        key, desc = parse_sort(sort_by)
        q = TaskQuery(
            state=tuple(s.upper() for s in _tuple(state)),
            worker=_tuple(worker),
            name=_tuple(name),
            received_start=_ts(received_start, "received_start"),
            received_end=_ts(received_end, "received_end"),
            started_start=_ts(started_start, "started_start"),
            started_end=_ts(started_end, "started_end"),
            search=parse(search),
            sort_key=key,
            descending=desc,
            offset=offset,
            limit=limit,
        )
        if source not in ("auto", "window", "store"):
            raise SearchError(f"source must be 'auto', 'window' or 'store', not {source!r}")
        st = self._state
        store = self._store
        if source == "store" and store is None:
            raise SearchError("source='store' needs a history store (CELERY_MONITOR_DB)")
        if source == "window" or (
            source == "auto"
            and (store is None or (st.complete and self._store_empty_at_start))
            and not self._following
        ):
            with st.lock:
                total, recs = st.query(q)
                return TaskPage(total, [r.as_dict() for r in recs])
        assert store is not None
        total, rows = store.query(q)
        exact = getattr(store, "last_count_exact", True)
        out = []
        with st.lock:
            for row in rows:
                t = st.tasks.get(row["uuid"])
                out.append(t.as_dict() if t is not None else _task_dict(row, []))
        return TaskPage(total, out, exact)

    def task_types(self) -> list[str]:
        """Every task name seen (window and history), sorted (``/api/task/types``)."""
        self._autostart()
        with self._state.lock:
            names = set(self._state.task_counters)
            names.update(t.name for t in self._state.tasks.values() if t.name)
        if self._store is not None:
            names.update(self._store.task_names())
        return sorted(names)

    def counters(self) -> dict[str, Any]:
        """Event counts since start: ``{"workers": {host: {type: n}}, "tasks": {name: {type: n}}}``."""
        self._autostart()
        st = self._state
        with st.lock:
            return {
                "workers": {h: dict(w.counters) for h, w in st.workers.items()},
                "tasks": {n: dict(c) for n, c in st.task_counters.items()},
            }

    def task_stats(
        self,
        since: float | None = None,
        until: float | None = None,
        bucket: float = 60.0,
        name: str | None = None,
    ) -> list[dict[str, Any]]:
        """Per ``bucket`` seconds and task name: finished counts and runtime percentiles.

        Items: ``{"name", "start", "succeeded", "failed", "retried", "revoked",
        "runtime_p50", "runtime_p95", "runtime_max"}`` ordered by ``start`` then name; by
        default the last hour. From the history store, or the window without one. A task
        counts in the bucket of its last state; ``retried`` counts retries (``task-retried``
        events) as the workers page does (see :func:`.sqlite_store.aggregate_stats`).
        """
        self._autostart()
        if bucket <= 0:
            raise ValueError(f"bucket must be > 0 seconds, not {bucket!r}")
        until = time.time() if until is None else until
        since = until - 3600 if since is None else since
        self.flush()
        if self._store is not None:
            return self._store.task_stats(since, until, bucket, name)
        finished = ("SUCCESS", "FAILURE", "RETRY", "REVOKED")
        with self._state.lock:
            rows = [
                (t.name, t.timestamp, t.state, t.runtime, t.retries)
                for t in self._state.tasks.values()
                if t.state in finished
                and t.timestamp is not None
                and since <= t.timestamp < until
                and (name is None or t.name == name)
            ]
        return aggregate_stats(rows, bucket)

    # -- reading: broker -------------------------------------------------------------------

    def queues(self, max_age: float = 1.0) -> list[dict[str, Any]] | None:
        """Queue lengths (Flower's ``/api/queues/length`` ``active_queues`` list).

        Names: workers' active queues, the queues workers consumed earlier since start,
        ``CELERY_MONITOR_QUEUES`` and the queues of ``CELERY_WORKERS``, Celery's configured
        queues.
        Cached for ``max_age`` seconds. None when the broker cannot give lengths; raises the
        broker's connection error when it is unreachable.
        """
        self._autostart()
        cached = self._queues_cache
        if cached is not None and time.monotonic() - cached[0] < max_age:
            return cached[1]
        active: list[Any] = []
        for info in self.inspector.get().values():
            active.extend(info.get("active_queues") or ())
        # then the queues consumed earlier (a queue whose consumers left is still measured)
        active.extend({"name": n} for n in self.inspector.seen_queues())
        names = _broker.queue_names(self.celery_app, active, self.settings.queues)
        result = _broker.queue_lengths(self.celery_app, names, self.settings.broker_api)
        self._queues_cache = (time.monotonic(), result)
        return result

    # -- self-figures ----------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """The service's own health numbers.

        ``events_received`` (decoded; an undecodable message counts as one), ``events_applied``, ``events_malformed`` (skipped),
        ``events_unknown`` (unknown types, applied to counters only), ``events_dropped``
        (received and never applied: undecodable messages, malformed events, failed batches;
        ``events_received == events_applied + events_dropped`` once ingest is idle),
        ``fields_coerced`` (event fields of the wrong type or encoding, coerced or left out),
        ``store_rows_dropped`` (task rows the history store refused), ``gaps`` (the last 20
        spans with no event consumed, ``{"start", "end", "seconds", "reason"}``: a broker
        disconnect, or the time between two runs of the monitor), ``gaps_total``,
        ``gap_seconds_total``, ``tasks_reconciled`` (unfinished tasks brought to the finished
        state the result backend holds) and ``reconcile_errors``,
        ``connects``, ``disconnects`` (each one may have lost events published meanwhile:
        ``events_maybe_lost`` is True once that happened), ``last_error``, ``lag`` and
        ``lag_max`` (seconds from an event's timestamp to its application), ``backlog_bytes``
        (read but not decoded), ``tasks``/``workers`` in the window, ``evicted``,
        ``store_pending``, ``flushes``, ``flush_seconds``, ``indexed`` and ``index_seconds`` (search
        indexing in the store), ``subscribers``,
        ``subscribers_dropped``, ``listener_errors``, ``connected``, ``running``, ``store``
        (the store's path or URL, without a password), ``role`` (``ingester``, ``follower``
        or ``stopped``, see :attr:`role`) and ``handovers`` (times this process took the
        ingester lease).
        """
        d = self._figures.as_dict()
        st = self._state
        with st.lock:
            d.update(
                tasks=len(st.tasks),
                workers=len(st.workers),
                evicted=st.evicted,
                store_pending=len(self._dirty),
            )
        c = self._consumer
        d.update(
            events_maybe_lost=d["disconnects"] > 0,
            fields_coerced=st.coerced,
            gaps=list(self._gaps),
            gaps_total=self._gaps_total,
            gap_seconds_total=round(self._gap_seconds, 3),
            tasks_reconciled=self._reconciled,
            reconcile_errors=self._reconcile_errors,
            store_rows_dropped=self._rows_dropped,
            flushes=self._flushes,
            flush_seconds=round(self._flush_seconds, 6),
            indexed=self._indexed,
            index_seconds=round(self._index_seconds, 6),
            subscribers=len(self._subs),
            subscribers_dropped=self._subs_dropped,
            listener_errors=self._listener_errors,
            inspect_errors=self.inspector.errors,
            connected=c is not None and c.connected,
            running=self.running,
            store=None if self.settings.db_path is None else _redact(self.settings.db_path),
            role=self.role,
            handovers=0 if self._coordinator is None else self._coordinator.handovers,
        )
        return d

    def _autostart(self) -> None:
        if self.autostart and not self._stopped and self._pid != os.getpid():
            self.start()
