"""The housekeeping of the monitor service: its ``celerymon-house`` thread and what it runs.

One thread per running service (started by :meth:`.service.MonitorService.start`). Every
``flush_interval`` seconds it writes the tasks and workers changed since the last flush to the
history store (in slices of :data:`FLUSH_SLICE` rows in :data:`.model.TASK_COLUMNS` order) and lets the store index
as many rows for search, plus :data:`INDEX_AHEAD` of a backlog; every second it marks LOST the
tasks of workers whose heartbeats expired and purges workers offline for ``purge_offline_workers`` seconds; it sends
``enable_events`` every ``enable_events_interval`` seconds, schedules inspect refreshes every
``inspect_interval`` seconds, asks the result backend about unfinished tasks (see
:mod:`.reconcile`) and prunes the store to its retention every :data:`PRUNE_INTERVAL` seconds.
After a flush, at most every :data:`PREPARE_INTERVAL` seconds, it has the store take its
search sample again when stale (:meth:`.store.HistoryStore.prepare_search`, so no request
waits for it), and once after a burst it gives free heap back to the system
(:meth:`Housekeeping.trim_after_burst`).
In a follower (see :mod:`.lease`) it only flushes, prepares the search, purges and refreshes;
the search index is the ingester's to write (a follower indexing took the store's write lock
every tick, contending with the ingester's writes).

:class:`Housekeeping` is a part of :class:`~.service.MonitorService` (a base class of it); it
uses the service's state, store and figures, declared below.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import events as _events
from . import reconcile as _reconcile
from .model import TaskRecord
from .store import HistoryStore

if TYPE_CHECKING:
    from celery import Celery

    from .events import Figures
    from .inspector import Inspector
    from .settings import MonitorSettings
    from .state import State, WorkerRecord
    from .subscriptions import Subscription

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 60.0
PURGE_CHECK_INTERVAL = 1.0
#: Seconds between two calls of the store's ``prepare_search`` (it takes the search sample
#: again when that is stale, so the first search after a flood or a restart does not wait
#: 20 - 30 ms for it; fresh, a call costs one index probe).
PREPARE_INTERVAL = 2.0
#: Rows the store indexes for search per housekeeping tick beyond the rows the tick wrote: the
#: index keeps pace with the writes (a search scans the rows past it, 100+ ms for 25,000 rows
#: while 5,000 events/s were applied when it was held to 500 rows a tick) and catches up
#: with a backlog (a restart, a flood) at this many rows a tick.
INDEX_AHEAD = 2_000
#: A flush that wrote fewer task rows than this is caught up: a burst's rows are in the store
#: (see :meth:`Housekeeping.trim_after_burst`).
TRIM_ROWS = 2_000
#: Task rows a flush builds and writes at a time (one store transaction each): the flush's
#: transient memory is bounded by this, not by the number of tasks changed since the last one.
FLUSH_SLICE = 2_000


class Housekeeping:
    """The housekeeping thread's work and the writes it makes (see the module docstring)."""

    # Set by MonitorService.__init__ (and start/stop).
    celery_app: Celery
    settings: MonitorSettings
    inspector: Inspector
    _state: State
    _store: HistoryStore | None
    _stop_event: threading.Event
    _following: bool
    _coordinator: Any
    _dirty: dict[str, TaskRecord]
    _dirty_workers: dict[str, WorkerRecord]
    _evicted_workers: list[str]
    _figures: Figures
    _trims_seen: int
    _flush_lock: threading.Lock
    _flushes: int
    _flush_seconds: float
    _rows_dropped: int
    _indexed: int
    _index_seconds: float
    _checked: dict[str, float]
    _store_unfinished: list[str]
    _reconcile_ok: bool | None
    _reconciled: int
    _reconcile_errors: int
    _purged: list[tuple[float, str]]
    _subs: tuple[Subscription, ...]
    _purge_listeners: tuple[Any, ...]
    _listener_errors: int
    _consuming_until: Callable[[], str | None]

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
        next_prepare = time.monotonic()
        tick = min(s.flush_interval, PURGE_CHECK_INTERVAL, 0.5)
        while not self._stop_event.wait(tick):
            now = time.monotonic()
            if now >= next_flush:
                next_flush = now + s.flush_interval
                try:
                    written = self.flush()
                    if not self._following:  # the ingester is the store's only writer
                        self._index(written)
                    self.trim_after_burst(written)
                except Exception:  # noqa: BLE001 - keep housekeeping alive
                    log.exception("celerymon: writing to the history store failed")
                if now >= next_prepare and self._store is not None:
                    next_prepare = now + PREPARE_INTERVAL
                    try:
                        self._store.prepare_search()
                    except Exception:  # noqa: BLE001 - a request would take it itself
                        log.exception("celerymon: preparing the store's search failed")
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
            tasks = list(dirty.values())
            wsnap = {h: w.as_dict(now, st.worker_offline_after) for h, w in wdirty.items()}
        t0 = time.perf_counter()
        try:
            # In slices: the rows of a slice (and what the store makes of them) are the only
            # transient objects, however many tasks changed since the last flush. Built all at
            # once, a flood's flush (50,000 rows) took ~40 MB of small-object arenas that
            # stayed fragmented, and so in the RSS, once freed.
            for i in range(0, len(tasks), FLUSH_SLICE):
                with st.lock:
                    rows = [t.row() for t in tasks[i : i + FLUSH_SLICE]]
                try:
                    store.write_tasks(rows)
                except store.unavailable_errors:
                    raise  # the store is unavailable (disk full, locked...): retry them later
                except Exception:  # noqa: BLE001 - a row the store refuses
                    self._write_one_by_one(store, rows)
                del rows
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
        return len(tasks)

    def trim_after_burst(self, written: int) -> bool:
        """Give free heap memory back to the system (``malloc_trim``) once after a burst:
        when the event consumer drained a read-ahead of over :data:`.events.TRIM_AFTER` bytes
        since the last such trim here (``Figures.memory_trims`` moved), nothing is read ahead
        now and the last flush wrote ``written`` < :data:`TRIM_ROWS` rows (the burst's rows
        are in the store). The consumer trims as its backlog drains, but writing and indexing
        the burst's rows frees more after that, which stayed in the RSS. Returns True if it
        trimmed. Cheap when it does nothing; a trim costs a few ms."""
        fig = self._figures
        trims = fig.memory_trims
        if trims == self._trims_seen or written >= TRIM_ROWS or fig.backlog_bytes:
            return False
        self._trims_seen = trims
        _events._release_memory()
        return True

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
        """Let the store index for search as many rows as the tick wrote (``written``), plus
        :data:`INDEX_AHEAD` of any backlog."""
        store = self._store
        if store is not None:
            t0 = time.perf_counter()
            self._indexed += store.index_pending(written + INDEX_AHEAD)
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
