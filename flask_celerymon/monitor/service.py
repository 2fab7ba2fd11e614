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
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, ExitStack
from datetime import datetime
from typing import Any

from celery import Celery

from . import broker as _broker
from . import reconcile as _reconcile
from .events import EventConsumer, Figures
from .housekeeping import Housekeeping
from .inspector import Inspector
from .model import TaskPage, TaskQuery, TaskRecord
from .model import task_dict as _task_dict
from .query import SearchError, parse, parse_sort
from .settings import MonitorSettings
from .sqlite_store import aggregate_stats
from .state import (
    OTHER_NAMES,
    TASK_EVENTS,
    WORKER_EVENTS,
    MalformedEvent,
    State,
    StateObserver,
    WorkerRecord,
    clean_text,
)
from .store import HistoryStore
from .store import redact as _redact
from .stores import open_store
from .subscriptions import BatchHook, EventListener, Subscription, Subscriptions

log = logging.getLogger(__name__)


#: The event types the window knows (any other is counted in ``events_unknown``).
_KNOWN_TYPES = frozenset(TASK_EVENTS) | WORKER_EVENTS
#: Gaps in the event stream remembered for figures() and the pages.
GAPS_KEPT = 20
#: Unfinished tasks of the history read back after a restart, to reconcile.
RESTART_RECHECK_MAX = 10_000


def _ts(value: float | datetime | None, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise SearchError(f"{what} must be a Unix time or a datetime, not {value!r}")


def _tuple(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """A filter's values, as the window and the store hold text (:func:`.state.clean_text`:
    a lone surrogate, which JSON can carry, as its escape; the stores cannot take one)."""
    if value is None or value == "" or value == "All":
        return ()
    if isinstance(value, str):
        return (clean_text(value),)
    return tuple(clean_text(v) if isinstance(v, str) else v for v in value if v and v != "All")


class _WindowObserver(StateObserver):
    """The service's view of the window's changes (ingest thread, state lock held)."""

    __slots__ = ("_service", "_stored")

    def __init__(self, service: MonitorService) -> None:
        self._service = service
        #: whether changed tasks are queued for the history store (read once: called per event)
        self._stored = service.settings.db_path is not None

    def task_changed(self, task: TaskRecord) -> None:
        service = self._service
        if self._stored:
            service._dirty[task.uuid] = task
        for sub in service._subs:
            sub._offer("task", task.uuid)

    def worker_changed(self, worker: WorkerRecord) -> None:
        self._service._worker_changed(worker)

    def worker_evicted(self, hostname: str) -> None:
        self._service._worker_evicted(hostname)


class MonitorService(Housekeeping, Subscriptions):
    """The monitor of one Celery app. Construct freely; threads start with :meth:`start`.

    Reads have no side effects: they never start the service (nor any thread). A read on a
    service that is not running answers from what it holds in memory (nothing, before the
    first start). Whoever serves the monitor starts it: the blueprint's ``before_request``
    and ``flask celery monitor`` call :meth:`ensure_started`, so a Flask app only consumes
    events in the process that serves the monitor, never in the reloader's parent.
    ``start``/``stop`` are idempotent and thread-safe; a service used after a ``fork``
    restarts its threads in the child.

    ``autostart`` is accepted for compatibility and ignored (reads used to start the
    service).
    """

    def __init__(
        self,
        celery_app: Celery,
        settings: MonitorSettings | None = None,
        *,
        autostart: bool = False,
    ) -> None:
        del autostart  # ignored: see the class docstring
        self.celery_app = celery_app
        self.settings = settings or MonitorSettings()
        self._lifecycle = threading.RLock()
        self._pid: int | None = None
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
        self._listeners: tuple[tuple[EventListener, BatchHook | None], ...] = ()
        self._purge_listeners: tuple[Callable[[str], None], ...] = ()
        self._topic_listeners: tuple[Callable[[list[str]], None], ...] = ()
        self._lead_listeners: tuple[Callable[[], None], ...] = ()
        self._listener_errors = 0
        self._purged: list[tuple[float, str]] = []
        self._evicted_workers: list[str] = []
        self._queues_cache: tuple[float, list[dict[str, Any]] | None] | None = None
        self._flushes = 0
        self._flush_seconds = 0.0
        self._rows_dropped = 0
        self._flush_lock = threading.Lock()
        self._trims_seen = 0
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
        return State(
            self.settings.max_tasks,
            self.settings.max_workers,
            self.settings.worker_offline_after,
            observer=_WindowObserver(self),
        )

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
            if self._pid == os.getpid():
                return
            if self._pid is not None:  # forked: the parent's threads are not ours
                self._reset_after_fork()
            self._stop_event.clear()
            path = self.settings.db_path
            if path is not None and self._store is None:
                store = open_store(path, self.settings.db_cache_kb)
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
                    self.celery_app, self._ingest, self._figures, on_connect=self._on_connect,
                    max_backlog=self.settings.event_backlog_mb << 20,
                )
                self._consumer.start()
            self._house = threading.Thread(
                target=self._housekeeping, name="celerymon-house", daemon=True
            )
            self._house.start()
            self._pid = os.getpid()

    # -- one ingester per cluster (see lease.py) --------------------------------------------

    def _start_coordinated(self) -> None:
        from .lease import Coordinator, open_cluster

        self._following = True
        cluster = self.celery_app.main or "celery"
        lease = open_cluster(
            self.celery_app, cluster, self.settings.lease_ttl, self.settings.db_path
        )
        self._coordinator = Coordinator(
            lease,
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
                # The window holds only what this process consumes from now on: it answers
                # alone (query_tasks) only if no ingester ever wrote the store before.
                try:
                    written = (
                        not self._store.is_empty()
                        or self._store.get_meta("consuming_until") is not None
                    )
                except Exception:  # noqa: BLE001 - answer from the store, to be safe
                    written = True
                if written:
                    self._store_empty_at_start = False
            for fn in self._lead_listeners:  # before the first event is counted
                try:
                    fn()
                except Exception:  # noqa: BLE001
                    self._listener_errors += 1
                    log.exception("celerymon: lead listener %r failed", fn)
            self._following = False
            self._consumer = EventConsumer(
                self.celery_app, self._ingest, self._figures, on_connect=self._on_connect,
                max_backlog=self.settings.event_backlog_mb << 20,
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

    def _changes_elsewhere(self, tasks: list[str], workers: list[str], topics: list[str]) -> None:
        """Fan-out thread (followers): the ingester wrote these tasks, workers and topics."""
        if workers:
            self._workers_stale = True  # reloaded from the store when next read
        for sub in self._subs:
            for t in tasks:
                sub._offer("task", t)
            for h in workers:
                sub._offer("worker", h)
        if topics:
            for fn in self._topic_listeners:
                try:
                    fn(topics)
                except Exception:  # noqa: BLE001
                    self._listener_errors += 1
                    log.exception("celerymon: topic listener %r failed", fn)

    def add_topic_listener(self, fn: Callable[[list[str]], None]) -> None:
        """Call ``fn(topics)`` in a follower (fan-out thread) when the ingester announces
        (:meth:`announce`) that it wrote data of these topics (names, e.g. ``"errors"``) to
        the shared store. Never called in the ingester nor without ``single_ingester``.
        Exceptions are logged and counted in ``listener_errors``."""
        with self._subs_lock:
            self._topic_listeners = (*self._topic_listeners, fn)

    def remove_topic_listener(self, fn: Callable[[list[str]], None]) -> None:
        with self._subs_lock:
            self._topic_listeners = tuple(f for f in self._topic_listeners if f != fn)

    def add_lead_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` (lease thread) each time this process takes the ingester lease, before
        it consumes its first event (with ``single_ingester`` only): the metrics continue the
        cluster's counters from there. Exceptions are logged and counted in
        ``listener_errors``; ingesting starts anyway."""
        with self._subs_lock:
            self._lead_listeners = (*self._lead_listeners, fn)

    def write_as_ingester(self, key: str, value: bytes) -> bool:
        """Set the cluster value ``key`` (a Redis key of the broker, or a row of the PostgreSQL
        store when the lease lives there, see :func:`.lease.open_cluster`) to ``value`` (no
        expiry) only while this process holds the ingester lease, atomically with the check
        (see :meth:`.lease.RedisLease.set_if_held`). False when it does not hold it or
        without ``single_ingester``; raises redis-py's (psycopg's) errors when Redis
        (PostgreSQL) does not answer."""
        coordinator = self._coordinator
        if coordinator is None or not coordinator.leading:
            return False
        return bool(coordinator.lease.set_if_held(key, value))

    def cluster_value(self, key: str) -> bytes | None:
        """The cluster value ``key`` written by an ingester (:meth:`write_as_ingester`), or
        None (none written, or not running with ``single_ingester``). Raises redis-py's
        (psycopg's) errors when the lease's Redis (PostgreSQL) does not answer."""
        coordinator = self._coordinator
        if coordinator is None:
            return None
        value = coordinator.lease.get(key)
        return None if value is None else bytes(value)

    def announce(self, topics: Iterable[str]) -> None:
        """Ingester: tell the followers' topic listeners that data of ``topics`` was written
        to the shared store (over the fan-out channel). Does nothing in a follower or without
        ``single_ingester``; a failed publish is logged, never raised (followers still read
        the store)."""
        coordinator = self._coordinator
        names = list(topics)
        if coordinator is None or self._following or not names:
            return
        try:
            coordinator.publish([], [], names)
        except Exception:  # noqa: BLE001
            log.warning("celerymon: could not announce %s to followers", names, exc_info=True)

    @property
    def ingesting(self) -> bool:
        """False in a follower (see :mod:`.lease`), True otherwise: whether this process
        writes what is derived from events (the history, the insight tables)."""
        return not (self.running and self._following)

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

        Reads after ``stop()`` answer from memory (reads never start the service); call
        :meth:`start` to start again.
        """
        with self._lifecycle:
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
        """Wait until the event stream is subscribed and its connect hook ran (a gap recorded,
        events enabled); True if within ``timeout`` seconds (tests, the CLI). Starts the
        service."""
        self.ensure_started()
        c = self._consumer
        return c is not None and c.wait_connected(timeout)

    # -- ingest (the consumer thread) ------------------------------------------------------

    def _enter_batch(self, stack: ExitStack) -> tuple[EventListener, ...]:
        """The listeners to call for one batch, their batch hooks entered on ``stack`` (a
        hook that fails leaves its listener out of this batch)."""
        listeners = []
        for fn, batch in self._listeners:
            if batch is not None:
                try:
                    cm = batch()
                    cm.__enter__()
                except Exception:  # noqa: BLE001
                    self._listener_errors += 1
                    log.exception("celerymon: batch hook of event listener %r failed", fn)
                    continue
                stack.callback(self._leave_batch, fn, cm)
            listeners.append(fn)
        return tuple(listeners)

    def _leave_batch(self, fn: EventListener, cm: AbstractContextManager[Any]) -> None:
        try:
            cm.__exit__(None, None, None)
        except Exception:  # noqa: BLE001 - never into ingest
            self._listener_errors += 1
            log.exception("celerymon: batch hook of event listener %r failed", fn)

    def _ingest(self, events: list[dict[str, Any]]) -> None:
        st = self._state
        fig = self._figures
        now = time.time()
        applied = malformed = unknown = 0
        with st.lock, ExitStack() as stack:
            listeners = self._enter_batch(stack) if self._listeners else ()
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
                if ev["type"] not in _KNOWN_TYPES:
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
            try:
                lag = max(0.0, time.time() - last)
            except OverflowError:  # an int past a float's range (off the wire)
                lag = math.inf
            if lag != math.inf:  # (-inf or such an int: no lag measured, lag_max kept finite)
                fig.lag = lag
                fig.lag_max = max(fig.lag_max, lag)
        fig.last_event_at = now

    def apply_events(self, events: Iterable[dict[str, Any]]) -> None:
        """Apply decoded events as if they came from the broker (tests, imports, replays)."""
        evs = [dict(e) for e in events]
        if evs:
            self._figures.events_received += len(evs)
            self._ingest(evs)

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
            gap: dict[str, Any] = {
                "start": start,
                "end": now,
                "seconds": max(0.0, now - start),
                "reason": reason,
            }
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

    def revoke_requested(self, task_ids: Iterable[str]) -> int:
        """Note in the history of each unfinished task that this monitor asked to revoke it
        (``revoke-requested``), shown until the worker confirms; returns tasks noted."""
        now = time.time()
        st = self._state
        with st.lock:
            return sum(st.note(u, "revoke-requested", now) for u in task_ids)

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
        self._refresh_workers()
        now = time.time()
        st = self._state
        with st.lock:
            out = [w.as_dict(now, st.worker_offline_after) for w in st.workers.values()]
        return sorted(out, key=lambda d: d["hostname"])

    def worker(self, hostname: str) -> dict[str, Any] | None:
        """One worker like :meth:`workers` items, or None if unknown."""
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
        if refresh:
            data = self.inspector.refresh(worker)
        else:
            data = self.inspector.get(worker)
            if not data and self.inspector.last_refresh is None and self.running:
                self.inspector.refresh(worker, wait=False)  # a running service's first read
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
            search=parse(clean_text(search) if isinstance(search, str) else search),
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
        with self._state.lock:
            names = set(self._state.task_counters)
            names.discard(OTHER_NAMES)
            names.update(t.name for t in self._state.tasks.values() if t.name)
        if self._store is not None:
            names.update(self._store.task_names())
        return sorted(names)

    def counters(self) -> dict[str, Any]:
        """Event counts since start: ``{"workers": {host: {type: n}}, "tasks": {name: {type: n}}}``."""
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
        cached = self._queues_cache
        if cached is not None and time.monotonic() - cached[0] < max_age:
            return cached[1]
        names = _broker.known_queue_names(self.celery_app, self.inspector, self.settings.queues)
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
        (read but not decoded), ``memory_trims`` (read-aheads of over 16 MB drained, each
        followed by giving free memory back to the system), ``tasks``/``workers`` in the window, ``evicted``,
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
