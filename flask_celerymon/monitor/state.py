"""The in-memory window: compact task and worker records and how events change them.

One thread (the service's ingest thread) calls :meth:`State.apply`; readers take
:attr:`State.lock` for a consistent view. Tasks are ``__slots__`` records whose unknown string
fields are ``""`` and whose repeated strings (task names, hostnames, routing keys...) are shared,
so a task costs well under 1 KB. The window is bounded by ``max_tasks``: finished tasks are
evicted first (oldest finished first), unfinished ones only when nothing finished is left.
An evicted record is dropped from the window's indexes (insertion order, finished order,
received time) lazily: they are compacted together once :func:`index_slack` records were
evicted, so the window never keeps more than ``max_tasks + index_slack(max_tasks)`` task
records alive.
"""

from __future__ import annotations

import bisect
import heapq
import math
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from itertools import compress, repeat
from operator import attrgetter, ge, is_not, le, not_
from typing import Any

from celery.states import PRECEDENCE_LOOKUP, RETRY

from .model import (  # noqa: F401 - LOST, FINISHED_STATES, task_dict: re-exported
    _SEP,
    _TEXT_INDEX,
    FINISHED_STATES,
    LOST,
    TaskQuery,
    TaskRecord,
    history_from_times,
    task_dict,
)
from .query import STATES, compile_python
from .searchcache import SearchCache

_NONE_PRECEDENCE: int = PRECEDENCE_LOOKUP[None]


#: task event type -> (state, timestamp attribute)
TASK_EVENTS: dict[str, tuple[str, str]] = {
    "task-sent": ("PENDING", "sent"),
    "task-received": ("RECEIVED", "received"),
    "task-started": ("STARTED", "started"),
    "task-succeeded": ("SUCCESS", "succeeded"),
    "task-failed": ("FAILURE", "failed"),
    "task-retried": ("RETRY", "retried"),
    "task-revoked": ("REVOKED", "revoked"),
    "task-rejected": ("REJECTED", "rejected"),
}
WORKER_EVENTS = frozenset({"worker-online", "worker-heartbeat", "worker-offline"})

# Fields a logically earlier event may still fill in (celery.events.state.Task.merge_rules).
_EARLY_FIELDS = frozenset(
    {"name", "args", "kwargs", "parent_id", "root_id", "retries", "eta", "expires"}
)
#: Fields copied as they are.
_PLAIN_FIELDS = frozenset({"runtime", "retries", "clock", "eta", "expires", "exception",
                           "traceback"})  # fmt: skip
_OPT_FIELDS = ("exchange", "routing_key", "client")
#: The fields a task event may set; any other field is ignored.
_TASK_FIELDS = frozenset(
    {"args", "kwargs", "result", "name", "root_id", "parent_id", *_PLAIN_FIELDS, *_OPT_FIELDS}
)
_INTERNED = ("name", "exchange", "routing_key", "client")

#: Celery's heartbeat expiry: last heartbeat + freq * 2 (HEARTBEAT_EXPIRE_WINDOW = 200 %).
HEARTBEAT_EXPIRE_FACTOR = 2.0

#: Distinct task names counted one by one in :attr:`State.task_counters`; the events of later
#: names are counted under :data:`OTHER_NAMES`. Names come off the wire, so the table has a
#: bound, as the metrics' ``task`` label has (``max_task_names`` there).
MAX_TASK_NAMES = 10_000
#: The ``task_counters`` key of the names past :data:`MAX_TASK_NAMES` (never a listed name).
OTHER_NAMES = "__other__"

WORKER_FIELDS = ("pid", "freq", "clock", "active", "processed", "loadavg", "sw_ident", "sw_ver",
                 "sw_sys")  # fmt: skip


class WorkerRecord:
    """One worker as seen through events."""

    __slots__ = (
        "hostname", "pid", "freq", "clock", "active", "processed", "loadavg", "sw_ident",
        "sw_ver", "sw_sys", "heartbeats", "counters", "last_seen", "offline_event",
        "lost_marked",
    )  # fmt: skip

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.pid = self.clock = self.active = self.loadavg = None
        self.sw_ident = self.sw_ver = self.sw_sys = None
        self.freq: float = 60.0
        self.processed = 0
        self.heartbeats: deque[float] = deque(maxlen=4)
        self.counters: dict[str, int] = {}
        self.last_seen = 0.0  # local time of the last event from this worker
        self.offline_event = False
        #: True once its running tasks were marked LOST (until it sends an event again).
        self.lost_marked = False

    def alive(self, now: float, offline_after: float | None) -> bool:
        """Online unless a worker-offline came last or heartbeats expired."""
        if self.offline_event:
            return False
        window = (
            offline_after if offline_after is not None else (self.freq * HEARTBEAT_EXPIRE_FACTOR)
        )
        return now - self.last_seen < window  # Celery: time() < heartbeat_expires

    def as_dict(self, now: float, offline_after: float | None) -> dict[str, Any]:
        """Flower's ``/workers?json=1`` item: counters, worker fields and ``status``."""
        d: dict[str, Any] = dict(self.counters)
        d.update(
            hostname=self.hostname,
            pid=self.pid,
            freq=self.freq,
            heartbeats=list(self.heartbeats),
            clock=self.clock,
            active=self.active,
            processed=self.processed,
            loadavg=self.loadavg,
            sw_ident=self.sw_ident,
            sw_ver=self.sw_ver,
            sw_sys=self.sw_sys,
            status=self.alive(now, offline_after),
            last_seen=self.last_seen,
        )
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WorkerRecord:
        w = cls(d["hostname"])
        for f in WORKER_FIELDS:
            if d.get(f) is not None:
                setattr(w, f, d[f])
        w.heartbeats.extend(d.get("heartbeats") or ())
        w.counters = {k: v for k, v in d.items() if k.startswith(("task-", "worker-"))}
        w.last_seen = float(d.get("last_seen") or 0.0)
        w.offline_event = not d.get("status", False)
        return w


class MalformedEvent(ValueError):
    """An event lacks a field it needs (``type``, a task's ``uuid`` and ``timestamp``)."""


# -- values from the wire ------------------------------------------------------------------
#
# Events come from any process that can publish to the broker: no field is trusted to have
# its expected type or a valid encoding. Each field is coerced to its type (free text by
# ``repr``) or dropped, per field, and counted; an event is refused (MalformedEvent) only
# without the fields that identify it. So one bad value never reaches the history store,
# where it would fail every later batch (SQLite refuses lists, lone surrogates and integers
# past 64 bits).

_INT64 = (1 << 63) - 1
#: Fields kept as free text: a value of another type is kept as its ``repr``.
_FREE_TEXT = frozenset({"args", "kwargs", "result", "exception", "traceback"})
_INT_FIELDS = frozenset({"retries", "clock", "pid", "active", "processed"})
_FLOAT_FIELDS = frozenset({"runtime", "freq"})


class _Drop(Exception):
    """The field's value cannot be coerced: leave the field out."""


#: What :meth:`State._coerce` returns for a value left out.
_DROPPED = object()


def clean_text(s: str) -> str:
    """``s`` with lone surrogates (not encodable in UTF-8) written as ``\\udXXX`` escapes."""
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")
    return s


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Drop
    f = float(v) if isinstance(v, float) or abs(v) <= _INT64 else math.inf
    if not math.isfinite(f):
        raise _Drop
    return f


def coerce_field(key: str, v: Any) -> Any:
    """``v`` as the type field ``key`` has (a string unless listed above); raises _Drop."""
    if key in _INT_FIELDS:
        if isinstance(v, int) and not isinstance(v, bool) and -_INT64 <= v <= _INT64:
            return v
        f = _number(v)
        i = int(f)
        if f != i or not -_INT64 <= i <= _INT64:  # a whole float past int64 (9.3e18) too
            raise _Drop
        return i
    if key in _FLOAT_FIELDS:
        return v if type(v) is float and math.isfinite(v) else _number(v)
    if key == "loadavg":
        if not isinstance(v, (list, tuple)) or len(v) > 3:
            raise _Drop
        return [_number(x) for x in v]
    if isinstance(v, str):
        return clean_text(v)
    if key in _FREE_TEXT:
        return clean_text(repr(v))
    raise _Drop


_PRECEDENCE: dict[str | None, int] = PRECEDENCE_LOOKUP

# What _apply_task does with each task field: (action, the type it has on the wire).
_INTERN, _PLAIN, _TEXT, _ROOT, _OTHER = "intern", "plain", "text", "root", "other"
_FIELD_HOW: dict[str, tuple[str, type]] = {
    k: (
        _INTERN if k in _INTERNED
        else _TEXT if k in _TEXT_INDEX
        else _PLAIN if k in _PLAIN_FIELDS
        else _ROOT if k == "root_id"
        else _OTHER,
        int if k in _INT_FIELDS else float if k in _FLOAT_FIELDS else str,
    )
    for k in _TASK_FIELDS
}  # fmt: skip
_INF = math.inf
#: The precedence of each task event's state (Celery's ``precedence``), looked up once.
_STATE_PRECEDENCE: dict[str, int] = {
    state: _PRECEDENCE.get(state, _NONE_PRECEDENCE) for state, _attr in TASK_EVENTS.values()
}


def index_slack(max_tasks: int) -> int:
    """How many entries beyond ``max_tasks`` each index of :class:`State` may hold before it
    is compacted: an eighth of ``max_tasks``, at least 1,000 (a count of task records).

    The entries beyond the window are records already evicted (or a received time that
    changed); they keep the records alive until the compaction, so this bounds the memory
    the window holds above ``max_tasks`` records. Compacting an index costs one pass over
    it, once per ``index_slack`` evictions at most.
    """
    return max(1000, max_tasks // 8)


class StateObserver:
    """What :class:`State` tells about its changes; subclass and override what you need.

    Every method is called in the writer thread with :attr:`State.lock` held: keep it short,
    read the record's attributes and don't keep or change the record.
    """

    __slots__ = ()

    def task_changed(self, task: TaskRecord) -> None:
        """A task was created or changed (an event, a note, marked LOST, adopted)."""

    def worker_changed(self, worker: WorkerRecord) -> None:
        """A worker was created or changed by an event."""

    def task_evicted(self, task: TaskRecord) -> None:
        """A task left the window to stay within ``max_tasks``."""

    def worker_evicted(self, hostname: str) -> None:
        """A worker was dropped to stay within ``max_workers``."""


def _hook(observer: StateObserver | None, name: str) -> Any:
    """``observer``'s bound method ``name``, or None when absent or not overridden."""
    if observer is None or getattr(type(observer), name) is getattr(StateObserver, name):
        return None
    return getattr(observer, name)


class State:
    """Tasks and workers in memory, changed only by :meth:`apply` (one writer thread).

    ``observer`` (a :class:`StateObserver`, given at construction) hears of each changed or
    evicted record, under :attr:`lock`, in the writer thread.
    """

    def __init__(
        self,
        max_tasks: int = 100_000,
        max_workers: int = 5_000,
        worker_offline_after: float | None = None,
        observer: StateObserver | None = None,
        max_task_names: int = MAX_TASK_NAMES,
    ) -> None:
        self.max_tasks = max_tasks
        self.max_task_names = max_task_names
        self.max_workers = max_workers
        self.worker_offline_after = worker_offline_after
        self.lock = threading.RLock()
        self.tasks: dict[str, TaskRecord] = {}
        self.workers: dict[str, WorkerRecord] = {}
        self._order: deque[TaskRecord] = deque()
        self._recv_times = array("d")
        self._recv_recs: list[TaskRecord | None] = []
        self._recv_head = 0
        self._finished: deque[TaskRecord] = deque()
        #: records evicted since the indexes were last compacted (see :func:`index_slack`)
        self._stale = 0
        #: (max_tasks, the index cap for it), see :meth:`_index_cap`
        self._cap = (-1, 0)
        self._strings: dict[str, str] = {}
        #: task name -> {event type: count}, since start; at most ``max_task_names`` names,
        #: the events of later names under :data:`OTHER_NAMES`.
        self.task_counters: dict[str, dict[str, int]] = {}
        #: hostnames that ran a task in the window (kept when a worker is purged)
        self.task_workers: set[str] = set()
        #: bumped when :attr:`task_workers` is rebuilt (a search's bare terms test its names)
        self._workers_version = 0
        #: kept answers of repeated searches and the log of changed tasks behind them
        self._searches = SearchCache()
        self.evicted = 0
        #: Event fields coerced to their type or dropped (see :func:`coerce_field`).
        self.coerced = 0
        #: True while every task ever seen is still in the window.
        self.complete = True
        # The observer's methods, bound once (None: not overridden, nothing to call).
        self.on_task: Callable[[TaskRecord], None] | None = _hook(observer, "task_changed")
        self.on_worker: Callable[[WorkerRecord], None] | None = _hook(observer, "worker_changed")
        self.on_evict: Callable[[TaskRecord], None] | None = _hook(observer, "task_evicted")
        self.on_worker_evicted: Callable[[str], None] | None = _hook(observer, "worker_evicted")

    # -- writing ---------------------------------------------------------------------------

    def _intern(self, s: Any) -> Any:
        if not isinstance(s, str):
            return s
        v = self._strings.get(s)
        if v is None:
            if len(self._strings) > 50_000:
                self._strings.clear()
            self._strings[s] = v = s
        return v

    def apply(self, event: dict[str, Any], now: float | None = None) -> TaskRecord | None:
        """Apply one decoded Celery event; return the task it changed, if any.

        Raises :class:`MalformedEvent` for an event that cannot be applied; unknown event
        types only count towards their worker's counters. Call with :attr:`lock` held.
        """
        etype = event.get("type")
        if not isinstance(etype, str) or not etype:
            raise MalformedEvent("event has no 'type'")
        if not etype.isascii():
            etype = clean_text(etype)
        if now is None:
            now = time.time()
        hostname = event.get("hostname")
        if hostname is not None:
            if isinstance(hostname, str):
                if not hostname.isascii():
                    hostname = clean_text(hostname)
            else:
                self.coerced += 1  # dropped: an event from nobody we can name
                hostname = None
        if etype == "task-sent":
            # Sent by a client (a web process, beat, a script), not a worker: the client is a
            # property of the task (as in celery.events.state.State).
            return self._apply_task(etype, event, None, client=hostname)
        if etype == "worker-offline" and hostname not in self.workers:
            return None  # the farewell of a worker never seen (as Celery's state)
        if hostname:
            worker = self.workers.get(hostname)
            if worker is None:
                worker = self._add_worker(hostname, now)
            worker.last_seen = now
            worker.offline_event = False
            worker.lost_marked = False
            counters = worker.counters
            counters[etype] = counters.get(etype, 0) + 1
        else:
            worker = None
        if etype.startswith("task-"):
            return self._apply_task(etype, event, worker)
        if etype in WORKER_EVENTS and worker is not None:
            self._apply_worker(etype, event, worker, now)
        elif worker is not None and self.on_worker is not None:
            self.on_worker(worker)
        return None

    def _add_worker(self, hostname: str, now: float) -> WorkerRecord:
        """A record for a worker not known yet (evicting one when ``max_workers`` are held)."""
        hostname = self._intern(hostname)
        w = WorkerRecord(hostname)
        if len(self.workers) >= self.max_workers:
            self._evict_worker(now)  # before adding: the newcomer is never the victim
        self.workers[hostname] = w
        return w

    def _evict_worker(self, now: float) -> None:
        def key(w: WorkerRecord) -> tuple[bool, float]:
            return (w.alive(now, self.worker_offline_after), w.last_seen)

        victim = min(self.workers.values(), key=key)
        self.remove_worker(victim.hostname)
        if self.on_worker_evicted is not None:
            self.on_worker_evicted(victim.hostname)

    def _coerce(self, field: str, value: Any) -> Any:
        """``coerce_field(field, value)``, or :data:`_DROPPED` when the value is dropped;
        a dropped or changed value is counted in ``coerced``."""
        try:
            c = coerce_field(field, value)
        except _Drop:
            self.coerced += 1
            return _DROPPED
        if c is not value:
            self.coerced += 1
        return c

    def _apply_worker(self, etype: str, event: dict[str, Any], w: WorkerRecord, now: float) -> None:
        for f in WORKER_FIELDS:
            v = event.get(f)
            if v is not None:
                c = self._coerce(f, v)
                if c is not _DROPPED:
                    setattr(w, f, c)
        if w.freq <= 0:
            w.freq = 60.0
        ts = event.get("timestamp")
        try:
            w.heartbeats.append(_number(ts))
        except _Drop:
            if ts is not None:
                self.coerced += 1
        if etype == "worker-offline":
            w.offline_event = True
        if self.on_worker is not None:
            self.on_worker(w)
        if etype == "worker-offline":
            self.mark_lost(w.hostname, now)

    def _apply_task(
        self,
        etype: str,
        event: dict[str, Any],
        worker: WorkerRecord | None,
        client: str | None = None,
    ) -> TaskRecord | None:
        uuid = event.get("uuid")
        if not isinstance(uuid, str) or not uuid:
            raise MalformedEvent(f"{etype}: 'uuid' is missing or not a string")
        if not uuid.isascii():
            uuid = clean_text(uuid)
        ts = event.get("timestamp")
        if type(ts) is not float or not -_INF < ts < _INF:
            try:
                ts = _number(ts)
            except _Drop:
                raise MalformedEvent(
                    f"{etype}: 'timestamp' is missing or not a finite number"
                ) from None
        known = TASK_EVENTS.get(etype)
        t = self.tasks.get(uuid)
        if t is None:
            t = TaskRecord(uuid)
            self.tasks[uuid] = t
            self._order.append(t)
            if self._searches.log is not None:
                self._searches.made(t)
            if len(self.tasks) > self.max_tasks:
                self._evict()
        if known is None:
            # A custom task event: record the time, leave the state alone.
            t.timestamp = max(t.timestamp or 0.0, ts)
            t.history = (*t.full_history(), etype, ts)
        else:
            state, attr = known
            prev = getattr(t, attr)
            if t.history is not None or prev is not None:
                if attr == "sent" and prev is None:
                    # The client's first task-sent, come after the worker's events or the
                    # monitor's notes (another publisher): the task was sent before all of
                    # them, so it goes first, as in history_from_times.
                    t.history = (state, ts, *t.full_history())
                else:
                    t.history = (*t.full_history(), state, ts)
            setattr(t, attr, ts)
            if attr == "received" and prev != ts:
                # (a repeated task-received of the same time is indexed already)
                self._index_received(t, ts)
            cur = t.state
            early = (
                cur
                and cur != LOST
                and state != RETRY
                and cur != RETRY
                and _STATE_PRECEDENCE[state] > _PRECEDENCE.get(cur, _NONE_PRECEDENCE)
            )
            text = None
            strings = self._strings
            for k, v in event.items():
                how = _FIELD_HOW.get(k)
                if how is None or v is None:
                    continue
                if early and (k not in _EARLY_FIELDS or (k == "name" and t.name)):
                    # (a late task-sent names the task the client sent, for submit(): the
                    # dispatch task; the worker's name, its shadow, the function, stays)
                    continue
                action, kind = how
                # The types fields have on the wire pass as they are (what coerce_field
                # returns for them); anything else is coerced, or dropped, and counted.
                if not (
                    (kind is str and type(v) is str and v.isascii())
                    or (kind is int and type(v) is int and -_INT64 <= v <= _INT64)
                ):
                    v = self._coerce(k, v)
                    if v is _DROPPED:
                        continue
                if action is _INTERN:
                    shared = strings.get(v)
                    setattr(t, k, shared if shared is not None else self._intern(v))
                elif action is _PLAIN:
                    setattr(t, k, v)
                elif action is _TEXT:
                    if text is None:
                        text = t.text.split(_SEP, 2)
                    text[_TEXT_INDEX[k]] = v.replace(_SEP, "\\x00")
                elif action is _ROOT:
                    t.root_id = t.uuid if v == t.uuid else v  # (as _set does)
                else:
                    self._set(t, k, v)
            if text is not None:
                t.text = _SEP.join(text)
            if client:
                t.client = self._intern(client)
            if not early:
                t.state = state
                t.timestamp = ts
            if worker is not None and t.worker is not worker.hostname:
                t.worker = worker.hostname
                self.task_workers.add(worker.hostname)
                if len(self.task_workers) > 2 * self.max_workers + 100:
                    # Worker churn: keep only hostnames that tasks in the window still name.
                    self.task_workers = {r.worker for r in self.tasks.values() if r.worker}
                    self._workers_version += 1
            if t.state in FINISHED_STATES and cur not in FINISHED_STATES:
                self._finished.append(t)
            if t.name:
                c = self.task_counters.get(t.name)
                if c is None:
                    key = t.name
                    if len(self.task_counters) >= self.max_task_names:
                        key = OTHER_NAMES
                    c = self.task_counters.get(key)
                    if c is None:
                        c = self.task_counters[key] = {}
                c[etype] = c.get(etype, 0) + 1
        searches = self._searches
        log = searches.log
        if log is not None:
            log.append(t)
            if len(log) + len(searches.created) > searches.max_log:
                searches.clear()  # nobody searched again for a while: stop logging
        if self.on_task is not None:
            self.on_task(t)
        return t

    def _set(self, t: TaskRecord, k: str, v: Any) -> None:
        if k == "name" or k in _OPT_FIELDS:
            t.__setattr__(k, self._intern(v) if k in _INTERNED else v)
        elif k == "root_id":
            t.root_id = t.uuid if v == t.uuid else v
        elif k == "parent_id" and v != t.uuid and t.parent_id != v:
            # (a retry is sent from the task itself: its parent_id is its own id)
            t.parent_id = v
            parent = self.tasks.get(v)
            if parent is not None:
                if parent.children is None:
                    parent.children = [t.uuid]
                elif t.uuid not in parent.children:
                    parent.children.append(t.uuid)

    def _evict(self) -> None:
        tasks = self.tasks
        victim = None
        in_order = True
        fin = self._finished
        while fin:
            r = fin.popleft()
            if r.state in FINISHED_STATES and tasks.get(r.uuid) is r:
                victim = r
                break
        if victim is None:
            order = self._order
            while order:
                r = order.popleft()
                if tasks.get(r.uuid) is r:
                    victim = r
                    in_order = False
                    break
        if victim is None:  # pragma: no cover - the new task itself is always in order
            return
        del tasks[victim.uuid]
        self.evicted += 1
        self.complete = False
        if self.on_evict is not None:
            self.on_evict(victim)
        # Drop the entries of evicted records at the front of the insertion order and of the
        # received-time order at once: usually the victim's (the oldest finished task came in
        # and was received early), at O(1) a task. A victim still named further in (behind a
        # long-running task, or by a second entry of a task whose events repeated) is counted,
        # and once index_slack of them are held every index is compacted.
        order = self._order
        while order and tasks.get(order[0].uuid) is not order[0]:
            if order.popleft() is victim:
                in_order = False
        in_received = victim.received is not None and self._trim_received(victim)
        if in_order or in_received or victim.history is not None:
            self._stale += 1
            if self._stale > index_slack(self.max_tasks):
                self._compact()

    def _trim_received(self, victim: TaskRecord) -> bool:
        """Clear the leading dead entries of the received-time index; False if the victim's
        entry was among them."""
        times = self._recv_times
        recs = self._recv_recs
        tasks = self.tasks
        head = self._recv_head
        n = len(recs)
        held = True
        while head < n:
            r = recs[head]
            if r is not None:
                if r.received == times[head] and tasks.get(r.uuid) is r:
                    break
                if r is victim:
                    held = False
                recs[head] = None
            head += 1
        if head >= 1024 or 2 * head > n:  # cleared entries go in bulk: O(1) a task
            del recs[:head]
            del times[:head]
            head = 0
        self._recv_head = head
        return held

    def _compact(self) -> None:
        """Drop the entries of evicted records from every index (one pass over each)."""
        tasks = self.tasks
        self._order = deque(r for r in self._order if tasks.get(r.uuid) is r)
        self._finished = deque(r for r in self._finished if tasks.get(r.uuid) is r)
        self._compact_received()
        self._stale = 0

    def _index_cap(self) -> int:
        """The most entries an index holds before it is compacted (see :func:`index_slack`);
        computed again only when ``max_tasks`` changed (this runs for every received task)."""
        cached = self._cap
        if cached[0] != self.max_tasks:
            cached = self._cap = (self.max_tasks, self.max_tasks + index_slack(self.max_tasks))
        return cached[1]

    # -- the received-time index ------------------------------------------------------------

    def _index_received(self, t: TaskRecord, ts: float) -> None:
        """Keep ``(_recv_times, _recv_recs)`` sorted by received time.

        Events arrive nearly in time order, so this is an append, or an insert a few places
        before the end. Entries of evicted tasks or of a received time that changed are left
        in place (stale) and skipped by readers until they are cleared (``None``) from the
        front by :meth:`_trim_received` or dropped by a compaction. Every entry before
        ``_recv_head`` is ``None``.
        """
        times = self._recv_times
        if not times or ts >= times[-1]:
            times.append(ts)
            self._recv_recs.append(t)
        else:
            i = bisect.bisect_right(times, ts)
            times.insert(i, ts)
            self._recv_recs.insert(i, t)
            if i < self._recv_head:
                self._recv_head = i
        if len(self._recv_recs) - self._recv_head > self._index_cap():
            self._compact_received()

    def _compact_received(self) -> None:
        tasks = self.tasks
        pairs = [
            (ts, r)
            for ts, r in zip(self._recv_times, self._recv_recs)
            if r is not None and r.received == ts and tasks.get(r.uuid) is r
        ]
        self._recv_times = array("d", (ts for ts, _ in pairs))
        self._recv_recs = [r for _, r in pairs]
        self._recv_head = 0

    def _newest_received(self, end: int | None) -> list[TaskRecord] | None:
        """The ``end`` tasks received last, newest first, or None if fewer are indexed
        (``end`` None: every indexed task)."""
        tasks = self.tasks
        times = self._recv_times
        recs = self._recv_recs
        out: list[TaskRecord] = []
        i = len(recs) - 1
        stop = self._recv_head
        while i >= stop and (end is None or len(out) < end):
            r = recs[i]
            if r is not None and r.received == times[i] and tasks.get(r.uuid) is r:
                out.append(r)
            i -= 1
        return out if end is None or len(out) == end else None

    def adopt(self, t: TaskRecord) -> TaskRecord:
        """Put ``t`` (e.g. from :meth:`TaskRecord.from_row`) in the window unless a task with
        its id is there already; returns the window's record. Call with :attr:`lock` held."""
        cur = self.tasks.get(t.uuid)
        if cur is not None:
            return cur
        self.tasks[t.uuid] = t
        self._order.append(t)
        if self._searches.log is not None:
            self._searches.made(t)
        if t.received is not None:
            self._index_received(t, t.received)
        if t.state in FINISHED_STATES:
            self._finished.append(t)
        if len(self.tasks) > self.max_tasks:
            self._evict()
        return t

    def note(self, uuid: str, what: str, now: float) -> bool:
        """Add ``what`` at ``now`` to the history of unfinished task ``uuid`` (the monitor's
        own actions, e.g. ``revoke-requested``); False if unknown or finished. Call with
        :attr:`lock` held."""
        t = self.tasks.get(uuid)
        if t is None or t.finished:
            return False
        t.history = (*t.full_history(), what, now)
        self._searches.changed(t)
        if self.on_task is not None:
            self.on_task(t)
        return True

    def mark_lost(self, hostname: str, now: float) -> list[TaskRecord]:
        """Give the tasks ``STARTED`` on ``hostname`` (gone offline) the state :data:`LOST`.

        Returns them. A task the worker had only received is left alone: its message was not
        acknowledged, so the broker delivers it again. Call with :attr:`lock` held.
        """
        w = self.workers.get(hostname)
        if w is not None:
            w.lost_marked = True
        lost = [t for t in self.tasks.values() if t.worker == hostname and t.state == "STARTED"]
        for t in lost:
            t.history = (*t.full_history(), LOST, now)
            t.state = LOST
            t.timestamp = now
            self._finished.append(t)
            self._searches.changed(t)
            if self.on_task is not None:
                self.on_task(t)
        return lost

    def mark_lost_offline(self, now: float) -> list[TaskRecord]:
        """:meth:`mark_lost` for every worker found offline since the last call."""
        lost: list[TaskRecord] = []
        for w in list(self.workers.values()):
            if not w.lost_marked and not w.alive(now, self.worker_offline_after):
                lost += self.mark_lost(w.hostname, now)
        return lost

    def remove_worker(self, hostname: str) -> bool:
        """Forget a worker and its counters; True if it was known."""
        return self.workers.pop(hostname, None) is not None

    def restore_workers(self, snapshots: Iterable[Mapping[str, Any]]) -> None:
        """Load stored worker snapshots (after a restart); events keep them current.

        Snapshots of clients stored by earlier versions (hostnames seen only on ``task-sent``)
        are skipped.
        """
        for d in snapshots:
            if not any(k.startswith(("worker-", "task-")) and k != "task-sent" for k in d):
                continue
            if d.get("hostname") and d["hostname"] not in self.workers:
                self.workers[d["hostname"]] = WorkerRecord.from_dict(d)

    # -- reading (hold the lock) -----------------------------------------------------------

    def _distinct(self, field: str) -> Iterable[str]:
        if field == "name":
            if OTHER_NAMES in self.task_counters:  # past the bound: the window's own names
                return {t.name for t in self.tasks.values() if t.name}
            return self.task_counters.keys()
        if field == "worker":
            return self.task_workers
        return STATES

    def _filter(self, q: TaskQuery, seq: Iterable[TaskRecord]) -> list[TaskRecord]:
        """The records of ``seq`` that pass the filters of ``q`` (not its search), in order."""
        if q.state:
            states = frozenset(q.state)
            seq = [t for t in seq if t.state in states]
        if q.worker:
            workers = frozenset(q.worker)
            seq = [t for t in seq if t.worker in workers]
        if q.name:
            names = frozenset(q.name)
            seq = [t for t in seq if t.name in names]
        for attr, lo, hi in (
            ("received", q.received_start, q.received_end),
            ("started", q.started_start, q.started_end),
        ):
            if lo is not None or hi is not None:
                lo_ = float("-inf") if lo is None else lo
                hi_ = float("inf") if hi is None else hi
                seq = [t for t in seq if (v := getattr(t, attr)) is not None and lo_ <= v <= hi_]
        return seq if isinstance(seq, list) else list(seq)

    def query(self, q: TaskQuery) -> tuple[int, list[TaskRecord]]:
        """(total matching, page) over the window."""
        if (
            q.sort_key == "received"
            and q.descending
            and not (q.state or q.worker or q.name or q.search is not None)
            and q.received_start is None
            and q.received_end is None
            and q.started_start is None
            and q.started_end is None
        ):
            # The default listing: read the newest off the received-time index, then the
            # tasks without a received time (last, as the sort puts them) when the page
            # reaches them. Every page takes this path, so equal received times keep the
            # index's order on every page (the sort below would order them otherwise: the
            # last page repeated and skipped tasks).
            end = None if q.limit is None else q.offset + q.limit
            newest = None if end is None else self._newest_received(end)
            if newest is not None:
                return len(self.tasks), newest[q.offset :]
            indexed = self._newest_received(None)
            assert indexed is not None
            unreceived = [t for t in self.tasks.values() if t.received is None]
            if len(indexed) + len(unreceived) == len(self.tasks):  # (each task once)
                return len(self.tasks), (indexed + unreceived)[q.offset : end]
        if q.search is None:
            seq = self._filter(q, self.tasks.values())
        else:
            # A repeated search is answered from its kept answer and the tasks changed since
            # (see .searchcache). The key holds the filters and what the compiled search
            # depends on besides the records: the distinct names and workers it tests.
            key = (
                q.state, q.worker, q.name, q.received_start, q.received_end,
                q.started_start, q.started_end, q.search,
                len(self.task_counters), len(self.task_workers), self._workers_version,
            )  # fmt: skip
            matcher = compile_python(q.search, self._distinct)
            seq = self._searches.answer(key, self.tasks, lambda s: matcher(self._filter(q, s)))
        total = len(seq)
        end = None if q.limit is None else q.offset + q.limit
        return total, _page(seq, q.sort_key, q.descending, q.offset, end)


#: Sort keys whose values arrive roughly in window order (timsort is near-linear on them).
_TIME_KEYS = frozenset({"received", "sent", "started", "succeeded", "timestamp"})


def _page(
    seq: list[TaskRecord], key: str, desc: bool, offset: int, end: int | None
) -> list[TaskRecord]:
    """Sort ``seq`` by ``key`` and cut ``[offset:end]``.

    Tasks without a value for ``key`` sort as the smallest (as SQL NULLs do): last when
    descending, first when ascending. The loops run in C (``map``, ``compress``, ``sorted``
    on plain floats): for a small page of a large window only the sort keys are ordered to
    find the page's threshold, then only the tasks past it are sorted as objects.
    """
    kf = attrgetter(key)
    keys = list(map(kf, seq))
    present, missing = seq, None
    if key not in ("name", "state") and None in keys:
        mask = list(map(is_not, keys, repeat(None)))
        present = list(compress(seq, mask))
        keys = list(compress(keys, mask))

        def missing_tasks() -> list[TaskRecord]:
            return list(compress(seq, map(not_, mask)))

        missing = missing_tasks
    if not desc and missing is not None:
        miss = missing()
        if end is not None and end <= len(miss):
            return miss[offset:end]
        rest = _head(present, keys, key, desc, None if end is None else end - len(miss))
        return (miss + rest)[offset:end]
    ordered = _head(present, keys, key, desc, end)
    if missing is not None and (end is None or end > len(ordered)):
        ordered = ordered + missing()
    return ordered[offset:end]


def _head(
    seq: list[TaskRecord], keys: list[Any], key: str, desc: bool, n: int | None
) -> list[TaskRecord]:
    """The first ``n`` (all for None) of ``seq`` ordered by ``key``; ``keys`` are its values."""
    if n == 0:
        return []
    if n is not None and n * 8 < len(seq):
        if key in _TIME_KEYS:
            threshold = sorted(keys, reverse=desc)[n - 1]
        else:
            threshold = (heapq.nlargest if desc else heapq.nsmallest)(n, keys)[-1]
        seq = list(compress(seq, map(ge if desc else le, keys, repeat(threshold))))
    out = sorted(seq, key=attrgetter(key), reverse=desc)
    return out if n is None else out[:n]
