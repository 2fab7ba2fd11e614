"""Prometheus metrics and the health check of one monitor service (no Flask here).

:class:`MonitorMetrics` listens to a :class:`~.service.MonitorService` and exposes what it sees
through its **own** :class:`~prometheus_client.CollectorRegistry`, never the process-global
one, so two apps (two services) in one process never collide::

    metrics = MonitorMetrics(service)
    body = prometheus_client.generate_latest(metrics.registry)

Two kinds of series:

* **Event-driven** (updated in the ingest thread by a listener, the lock held per batch):
  Flower's ``flower_events_total``, ``flower_task_runtime_seconds``,
  ``flower_task_prefetch_time_seconds`` and ``flower_worker_prefetched_tasks`` with Flower's
  names, types, labels and update rules, plus ``celerymon_tasks_total`` (by state, with the
  exception class of failures) and ``celerymon_task_queue_wait_seconds`` (started minus
  ``max(sent, eta)``).
* **Read at scrape time** from the service: ``flower_worker_online`` and
  ``flower_worker_number_of_currently_executing_tasks`` (so a worker whose heartbeats stopped
  reads 0, which Flower gets wrong), workers online, queue lengths and latencies from the
  broker, and the service's own figures (events received/dropped/malformed, ingest lag...).

**One ingester per cluster** (``CELERY_MONITOR_SINGLE_INGESTER``): only the ingester sees
events, so the event-driven series are the cluster's and live in it. Every
:data:`PUBLISH_INTERVAL` seconds it writes them to the Redis key
``celerymon:<cluster>:metrics`` (:func:`cluster_metrics_key`; JSON, written only while it
holds the lease, in one step with the check; with the lease in PostgreSQL, a row of that name
in ``celerymon_cluster``, see :meth:`.service.MonitorService.write_as_ingester`), and a follower's scrape exports that copy
instead of its own (empty) counters, unless the copy is more than :data:`PUBLISHED_TTL` s old
(no ingester for that long: the follower exports empty series). A scrape of any process thus
gives the cluster's figures once, at most :data:`PUBLISH_INTERVAL` s old
(``celerymon_cluster_metrics_age_seconds``); the per-process series (the service's own
figures, the requests) stay each process's own. ``celerymon_ingester`` says which process is
the ingester.

**Handover**: a process taking the lease starts from the last written copy (the key does not
expire) before it counts its first event (:meth:`MonitorMetrics.continue_cluster_series`), so
the cluster's counters and histograms go on from where the last ingester wrote them and never
go down, whichever process is scraped. What the last ingester counted after its last write
(at most :data:`PUBLISH_INTERVAL` s) and the events sent while no process ingested are not
counted. Without a copy (Redis emptied) the new ingester starts from zero: a counter reset.

Label values are task names, worker hostnames, queue names, event types, states and exception
class names: never task ids, and never a client's hostname (``task-sent`` events are labelled
``worker=""``: clients are not workers, and their names change with every process). Distinct task names and exception classes are capped
(``max_task_names``, ``max_exceptions``); later ones are counted under :data:`OTHER`. The label
sets of a worker the service purges are removed at once (``add_purge_listener``).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .state import TASK_EVENTS, clean_text

if TYPE_CHECKING:
    from .service import MonitorService

log = logging.getLogger(__name__)

#: Flower's default for ``flower_task_runtime_seconds`` (prometheus_client's default buckets).
RUNTIME_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
#: ``celerymon_task_queue_wait_seconds``: 50 ms to 30 min, as celery-exporter's.
QUEUE_WAIT_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
)  # fmt: skip
#: The label value standing for task names / exception classes past the cap.
OTHER = "__other__"
#: Tasks tracked as waiting in a queue (for ``celerymon_queue_latency_seconds``), at most.
MAX_PENDING = 100_000
#: Seconds between two writes of the ingester's event-driven series to Redis.
PUBLISH_INTERVAL = 1.0
#: A copy older than this (seconds) is not exported by followers (it is still continued from).
PUBLISHED_TTL = 300
#: Seconds a task sent just before an "empty queue" answer stays tracked (lengths are cached
#: up to 1 s, and producers' clocks drift a little).
PENDING_GRACE = 3.0

# What _count_event does per event type: (state for celerymon_tasks_total, branch code).
_SENT, _RECEIVED, _STARTED, _FINISHED, _FAILED, _DROPPED, _OTHER = range(7)
_CODES = {"task-sent": _SENT, "task-received": _RECEIVED, "task-started": _STARTED,
          "task-succeeded": _FINISHED, "task-failed": _FAILED, "task-revoked": _DROPPED,
          "task-rejected": _DROPPED}  # fmt: skip
_KINDS: dict[str, tuple[str | None, int]] = {
    etype: (state, _CODES.get(etype, _OTHER)) for etype, (state, _attr) in TASK_EVENTS.items()
}
_CUSTOM: tuple[str | None, int] = (None, _OTHER)

_INF = math.inf

_EXC_CLASS = re.compile(r"\s*([A-Za-z_][\w.]*)\s*(?:\(|:|$)")


def exception_class(exception: Any) -> str:
    """The class name in a ``task-failed`` event's ``exception`` (``"ValueError('x')"``).

    ``"unknown"`` when the text does not start with a class name.
    """
    if isinstance(exception, str):
        m = _EXC_CLASS.match(exception)
        if m:
            return m.group(1).rsplit(".", 1)[-1]
    return "unknown"


def _eta_timestamp(eta: Any) -> float | None:
    """An event's ``eta`` (ISO 8601 text; naive means UTC) as a Unix time, or None."""
    if not eta or not isinstance(eta, str):
        return None
    try:
        dt = datetime.fromisoformat(eta)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def cluster_metrics_key(cluster: str) -> str:
    """The Redis key holding the ingester's event-driven series of Celery app ``cluster``."""
    return f"celerymon:{cluster}:metrics"


_COUNTS = ("events", "prefetch_time", "prefetched", "tasks")
#: The number of labels of each series' key.
_ARITY = {"events": 3, "prefetch_time": 2, "prefetched": 2, "tasks": 4}
_HISTOGRAMS = ("runtime", "queue_wait")


def encode_series(snap: dict[str, Any], now: float) -> bytes:
    """The event-driven series of a snapshot as JSON bytes (for :func:`decode_series`)."""
    out: dict[str, Any] = {"at": now}
    for name in _COUNTS:
        out[name] = [[list(k), v] for k, v in snap[name].items()]
    for name in _HISTOGRAMS:
        out[name] = [[list(k), h.counts, h.total] for k, h in snap[name].items()]
    return json.dumps(out, separators=(",", ":")).encode()


def decode_series(data: bytes) -> dict[str, Any]:
    """A snapshot from :func:`encode_series`; raises ``ValueError`` for anything else."""
    try:
        raw = json.loads(data)
        snap: dict[str, Any] = {"at": float(raw["at"])}
        for name in _COUNTS:
            snap[name] = {tuple(str(x) for x in k): v for k, v in raw[name]}
        for name in _HISTOGRAMS:
            series = {}
            for k, counts, total in raw[name]:
                h = _Histogram(0)
                h.counts = [int(c) for c in counts]
                h.total = float(total)
                series[tuple(str(x) for x in k)] = h
            snap[name] = series
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a published metrics snapshot: {exc}") from None
    return snap


def _number(v: Any) -> float | None:
    """``v`` as a float when it is a number (not a bool), else None; an int past a float's
    range (off the wire: JSON ints have no bound) is None too, never an OverflowError."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        try:
            return float(v)
        except OverflowError:
            return None
    return None


class _Histogram:
    """Per-bucket (not cumulative) counts and a sum; the last bucket is +Inf."""

    __slots__ = ("counts", "total")

    def __init__(self, n: int) -> None:
        self.counts = [0] * (n + 1)
        self.total = 0.0

    def observe(self, bounds: Sequence[float], value: float) -> None:
        self.counts[bisect_left(bounds, value)] += 1
        self.total += value

    def copy(self) -> _Histogram:
        h = _Histogram(0)
        h.counts = list(self.counts)
        h.total = self.total
        return h


class Health(NamedTuple):
    """The answer of :func:`check_health`.

    ``ok`` is True only when every check passed; ``reason`` says what failed ("" when ok);
    ``checks`` is ``{"service": bool, "events": bool, "broker": bool}``.
    """

    ok: bool
    reason: str
    checks: dict[str, bool]


def broker_error(service: MonitorService, timeout: float = 2.0) -> str | None:
    """Connect to the service's broker once (no retry); the error text, or None if it answers.

    For Redis a connection means a ``PING`` was answered. Never raises.
    """
    try:
        with service.celery_app.connection_for_read(connect_timeout=timeout) as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=timeout
            )
            conn.default_channel  # noqa: B018 - opening a channel talks to the broker
    except Exception as exc:  # noqa: BLE001 - any failure means "does not answer"
        return f"{type(exc).__name__}: {exc}"
    return None


def check_health(service: MonitorService, timeout: float = 2.0) -> Health:
    """Healthy only when the service runs, consumes events and its broker answers.

    Does not start the service. Takes at most about ``timeout`` seconds (the broker check).
    Never raises.
    """
    reasons = []
    running = service.running
    fig = service.figures()
    # a follower (one ingester per cluster) consumes nothing by design
    consuming = running and (bool(fig.get("connected")) or fig.get("role") == "follower")
    if not running:
        reasons.append("the monitor service is not running")
    elif not consuming:
        last = fig.get("last_error")
        reasons.append(
            "the monitor is not consuming events" + (f" (last error: {last})" if last else "")
        )
    err = broker_error(service, timeout)
    if err is not None:
        reasons.append(f"the broker does not answer: {err}")
    checks = {"service": running, "events": consuming, "broker": err is None}
    return Health(not reasons, "; ".join(reasons), checks)


class MonitorMetrics:
    """The Prometheus metrics of one monitor service, in :attr:`registry`.

    Creating it registers an event listener and a purge listener on ``service`` (do it before
    the service starts to count every event). Nothing else happens until a scrape: then the
    collector reads the service (workers, figures) and the broker (queue lengths; a broker
    that does not answer gives ``celerymon_broker_up 0`` and no queue series, never an
    error).

    ``runtime_buckets`` / ``queue_wait_buckets`` are the histogram bounds (seconds, sorted,
    +Inf implied). Raises ``ValueError`` for unsorted or empty buckets or a cap below 1.
    """

    def __init__(
        self,
        service: MonitorService,
        *,
        runtime_buckets: Iterable[float] = RUNTIME_BUCKETS,
        queue_wait_buckets: Iterable[float] = QUEUE_WAIT_BUCKETS,
        max_task_names: int = 1_000,
        max_exceptions: int = 200,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.service = service
        self.runtime_buckets = _buckets(runtime_buckets, "runtime_buckets")
        self.queue_wait_buckets = _buckets(queue_wait_buckets, "queue_wait_buckets")
        for key, cap in (("max_task_names", max_task_names), ("max_exceptions", max_exceptions)):
            if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
                raise ValueError(f"{key} must be an integer >= 1, not {cap!r}")
        self.max_task_names = max_task_names
        self.max_exceptions = max_exceptions
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lock = threading.Lock()
        self._events: dict[tuple[str, str, str], int] = {}  # (worker, type, task)
        self._runtime: dict[tuple[str, str], _Histogram] = {}  # (worker, task)
        self._prefetch_time: dict[tuple[str, str], float] = {}  # (worker, task)
        self._prefetched: dict[tuple[str, str], int] = {}  # (worker, task)
        self._tasks: dict[tuple[str, str, str, str], int] = {}  # (task, worker, state, exc)
        self._queue_wait: dict[tuple[str, str], _Histogram] = {}  # (task, worker)
        self._pending: dict[str, dict[str, float]] = {}  # queue -> {uuid: sent}
        self._pending_queue: dict[str, str] = {}  # uuid -> queue
        self._names: set[str] = set()
        self._exceptions: set[str] = set()
        self._purged = 0
        #: single ingester: the thread writing our series to Redis (or the store)
        self._publisher: threading.Thread | None = None
        #: read once: the listener runs for every event
        self._single_ingester = service.settings.single_ingester
        service.add_listener(self._count_event, batch=self._batch)
        service.add_purge_listener(self._on_purge)
        if service.settings.single_ingester:
            service.add_lead_listener(self.continue_cluster_series)
        self.registry.register(_Collector(self))

    # -- the ingest thread -----------------------------------------------------------------

    @staticmethod
    def _bounded(value: str, seen: set[str], cap: int) -> str:
        """``value`` as a label, or OTHER once ``cap`` distinct values are in use."""
        if value not in seen:
            if len(seen) >= cap:
                return OTHER
            seen.add(value)
        return value

    def _batch(self) -> threading.Lock:
        """The service's batch hook (ingest thread): the lock, held around a batch of
        :meth:`_count_event` calls instead of taken per event."""
        if self._publisher is None and self._single_ingester:
            self._start_publisher()  # takes the lock itself: before it is held
        return self._lock

    def _count_event(self, event: dict[str, Any], task: Any) -> None:
        """The service's event listener (ingest thread, the lock held by :meth:`_batch`):
        update the event-driven series.

        Runs for every event applied (a few µs a batch of 100 matters): attributes are read
        once into locals, the common float fields take a ``type() is float`` fast path, and
        the per-type work is inline but for the queue wait (:meth:`_observe_queue_wait`).
        """
        if task is None:
            return
        etype: Any = event.get("type")  # applied by the state: a non-empty str
        kind = _KINDS.get(etype) if type(etype) is str else None
        if kind is None:  # a custom task event type (counted in events only), or none
            if not isinstance(etype, str) or not etype.startswith("task-"):
                return
            if not etype.isascii():
                etype = clean_text(etype)
            kind = _KINDS.get(etype, _CUSTOM)
        state, code = kind
        # task-sent comes from a client (gen<pid>@host, a new name per process): not a label.
        # The task's worker is the event's hostname, already checked by the state.
        worker = "" if code == _SENT else task.worker
        name = task.name or ""
        if name not in self._names:
            name = self._bounded(name, self._names, self.max_task_names)
        ek = (worker, etype, name)
        events = self._events
        events[ek] = events.get(ek, 0) + 1

        runtime = event.get("runtime")
        if runtime is not None:
            if type(runtime) is not float:
                runtime = _number(runtime)
            # a finite one only (as the state's record): a NaN would make the sum NaN for good
            if runtime and -_INF < runtime < _INF:
                key = (worker, name)
                h = self._runtime.get(key)
                if h is None:
                    h = self._runtime[key] = _Histogram(len(self.runtime_buckets))
                h.counts[bisect_left(self.runtime_buckets, runtime)] += 1
                h.total += runtime

        if state is not None:
            exc = ""
            if code == _FAILED:
                exc = self._bounded(
                    exception_class(event.get("exception")),
                    self._exceptions,
                    self.max_exceptions,
                )
            tk = (name, worker, state, exc)
            tasks = self._tasks
            tasks[tk] = tasks.get(tk, 0) + 1

        extra = task.extra  # the record's rare fields (eta, retried...), None when none set
        if code == _SENT:
            sent = event.get("timestamp")
            if type(sent) is not float:
                sent = _number(sent)
            # Keep the sent task pending in its queue (a task-received applied before its
            # task-sent leaves the state at RECEIVED: skipped).
            pending_queue = self._pending_queue
            if task.state == "PENDING" and len(pending_queue) < MAX_PENDING:
                queue = event.get("queue") or event.get("routing_key")
                if isinstance(queue, str) and queue and sent is not None:
                    if not queue.isascii():
                        queue = clean_text(queue)
                    uuid = task.uuid
                    old = pending_queue.get(uuid)
                    if old is not None and old != queue:
                        self._pending.get(old, {}).pop(uuid, None)
                    pending_queue[uuid] = queue
                    waiting = self._pending.get(queue)
                    if waiting is None:
                        waiting = self._pending[queue] = {}
                    waiting[uuid] = sent
            # The client's sent event may arrive after the worker's started event (two
            # connections), and even read later than it (the client stamps it after the
            # message left): measure the wait now (0 then). A retry's re-send comes after
            # the previous run started and a task-retried, and is not measured here.
            started = task.started
            if (
                sent is not None
                and started is not None
                and (started >= sent or extra is None or extra.get("retried") is None)
            ):
                self._observe_queue_wait(task, name, task.worker or "", extra)
            return
        pending_queue = self._pending_queue
        if pending_queue:
            queue = pending_queue.pop(task.uuid, None)
            if queue is not None:
                waiting = self._pending.get(queue)
                if waiting is not None:
                    waiting.pop(task.uuid, None)
        if code == _OTHER:
            return

        eta = None if extra is None else extra.get("eta")
        if code == _STARTED:
            started = task.started
            if started is None:
                return
            if not eta:
                received = task.received
                if received is not None:
                    key = (worker, name)
                    self._prefetch_time[key] = max(0.0, started - received)
                    n = self._prefetched.get(key)
                    if n is not None:
                        self._prefetched[key] = max(0, n - 1)
            self._observe_queue_wait(task, name, worker, extra)
        elif eta or task.received is None:
            return
        elif code == _RECEIVED:
            key = (worker, name)
            prefetched = self._prefetched
            prefetched[key] = prefetched.get(key, 0) + 1
        elif code in (_FINISHED, _FAILED):
            if task.started is not None:
                self._prefetch_time[(worker, name)] = 0.0
        elif code == _DROPPED and task.started is None:
            self._dec_prefetched((worker, name))

    def _dec_prefetched(self, key: tuple[str, str]) -> None:
        n = self._prefetched.get(key)
        if n is not None:
            self._prefetched[key] = max(0, n - 1)

    def _observe_queue_wait(
        self, task: Any, name: str, worker: str, extra: dict[str, Any] | None
    ) -> None:
        """Observe ``started - max(sent, eta)`` (``extra``: the record's rare fields)."""
        sent = task.sent
        started = task.started
        if sent is None or started is None:
            return
        base = sent
        if extra is not None:
            eta = _eta_timestamp(extra.get("eta"))
            if eta is not None and eta > base:
                base = eta
        key = (name, worker)
        h = self._queue_wait.get(key)
        if h is None:
            h = self._queue_wait[key] = _Histogram(len(self.queue_wait_buckets))
        h.observe(self.queue_wait_buckets, max(0.0, started - base))

    # -- one ingester per cluster ------------------------------------------------------------

    def _cluster_key(self) -> str:
        return cluster_metrics_key(self.service.celery_app.main or "celery")

    def _start_publisher(self) -> None:
        with self._lock:
            if self._publisher is not None:
                return
            self._publisher = threading.Thread(
                target=self._publish_loop, name="celerymon-metrics", daemon=True
            )
            self._publisher.start()

    def _publish_loop(self) -> None:
        """``celerymon-metrics``: write our series to Redis while we are the ingester.

        Ends when the service stops (the next event after a restart starts it again).
        """
        try:
            while self.service.running:
                if self.service.role == "ingester":
                    try:
                        self.publish()
                    except Exception:  # noqa: BLE001 - Redis down: try again next time
                        log.warning("celerymon: publishing the metrics failed", exc_info=True)
                time.sleep(PUBLISH_INTERVAL)
        finally:
            with self._lock:
                self._publisher = None

    def publish(self) -> bool:
        """Write the event-driven series to Redis now (the ingester does it every second);
        False (nothing written) when this process does not hold the ingester lease.

        Raises redis-py's errors when Redis does not answer.
        """
        data = encode_series(self._snapshot(), time.time())
        return self.service.write_as_ingester(self._cluster_key(), data)

    def continue_cluster_series(self) -> None:
        """Take the last written cluster series as this process's own (the service calls it
        when this process takes the ingester lease, before its first event): each counter,
        and each histogram bucket, becomes the larger of ours and the written one, so no
        counter goes down from the last ingester's value nor from ours; the gauges become
        the written ones. Label sets of another shape (another release) and histograms with
        other buckets are left out. Nothing happens without a written copy or when Redis
        does not answer (logged); never raises."""
        published = self._published()
        if published is None:
            return
        with self._lock:
            counters: tuple[tuple[str, dict[Any, int]], ...] = (
                ("events", self._events), ("tasks", self._tasks))  # fmt: skip
            for name, mine in counters:
                arity = _ARITY[name]
                for k, v in published[name].items():
                    if len(k) == arity and isinstance(v, int) and v > mine.get(k, 0):
                        mine[k] = v
            histograms: tuple[tuple[str, dict[Any, _Histogram], tuple[float, ...]], ...] = (
                ("runtime", self._runtime, self.runtime_buckets),
                ("queue_wait", self._queue_wait, self.queue_wait_buckets))  # fmt: skip
            for name, hists, bounds in histograms:
                for k, h in published[name].items():
                    if len(k) != 2 or len(h.counts) != len(bounds) + 1:
                        continue
                    old = hists.get(k)
                    if old is None:
                        hists[k] = h
                    else:
                        old.counts = [max(a, b) for a, b in zip(old.counts, h.counts)]
                        old.total = max(old.total, h.total)
            for name, gauge in (("prefetch_time", self._prefetch_time),
                                ("prefetched", self._prefetched)):  # fmt: skip
                gauge.update({k: v for k, v in published[name].items() if len(k) == 2})
            # the label caps count the names continued
            for _worker, _type, task in (k for k in self._events if len(k) == 3):
                if task != OTHER:
                    self._names.add(task)
            for task, _worker, _state, exc in self._tasks:
                if task != OTHER:
                    self._names.add(task)
                if exc and exc != OTHER:
                    self._exceptions.add(exc)
        log.info("celerymon: continuing the cluster's metrics written at %s", published["at"])

    def _published(self) -> dict[str, Any] | None:
        """The ingester's last written series, or None (none written, or Redis is down)."""
        try:
            data = self.service.cluster_value(self._cluster_key())
        except Exception:  # noqa: BLE001 - a scrape never fails for Redis
            log.info("celerymon: reading the ingester's metrics failed", exc_info=True)
            return None
        if data is None:
            return None
        try:
            return decode_series(data)
        except ValueError:
            log.warning("celerymon: %s holds no metrics snapshot", self._cluster_key())
            return None

    # -- purging ---------------------------------------------------------------------------

    def _on_purge(self, hostname: str) -> None:
        """The service's purge listener: drop every label set of ``hostname``."""
        with self._lock:
            self._purged += 1
            series: tuple[tuple[dict[Any, Any], int], ...] = (
                (self._events, 0),
                (self._runtime, 0),
                (self._prefetch_time, 0),
                (self._prefetched, 0),
                (self._tasks, 1),
                (self._queue_wait, 1),
            )
            for labelled, pos in series:
                for k in [k for k in labelled if k[pos] == hostname]:
                    del labelled[k]

    # -- scraping --------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "events": dict(self._events),
                "runtime": {k: h.copy() for k, h in self._runtime.items()},
                "prefetch_time": dict(self._prefetch_time),
                "prefetched": dict(self._prefetched),
                "tasks": dict(self._tasks),
                "queue_wait": {k: h.copy() for k, h in self._queue_wait.items()},
                "purged": self._purged,
            }

    def _queue_latencies(self, lengths: dict[str, int], asked: float) -> dict[str, float]:
        """Seconds the oldest task seen sent to each queue has waited (0 for an empty queue).

        An empty queue also forgets the tasks tracked as waiting in it (they were purged or
        lost), except those sent less than :data:`PENDING_GRACE` s before the lengths were
        asked for at ``asked``: the lengths may be cached, and a task sent since is waiting.
        """
        out = {}
        now = time.time()
        with self._lock:
            for queue, n in lengths.items():
                waiting = self._pending.get(queue)
                if n == 0:
                    if waiting:
                        gone = [u for u, sent in waiting.items() if sent < asked - PENDING_GRACE]
                        for uuid in gone:
                            del waiting[uuid]
                            self._pending_queue.pop(uuid, None)
                    out[queue] = 0.0
                elif waiting:
                    out[queue] = max(0.0, now - min(waiting.values()))
        return out

    def collect(self) -> Iterator[Metric]:
        """Every metric family, read now (what a scrape of :attr:`registry` returns)."""
        snap = self._snapshot()
        if self.service.settings.single_ingester:
            ingester = self.service.role == "ingester"
            yield GaugeMetricFamily(
                "celerymon_ingester",
                "1 in the process that consumes events (one ingester per cluster), else 0",
                value=1 if ingester else 0,
            )
            if not ingester:  # the cluster's series are the ingester's
                published = self._published()
                if published is not None and time.time() - published["at"] > PUBLISHED_TTL:
                    published = None  # no ingester for that long
                empty: dict[str, Any] = {name: {} for name in (*_COUNTS, *_HISTOGRAMS)}
                snap = {**snap, **(published or empty)}
                if published is not None:
                    yield GaugeMetricFamily(
                        "celerymon_cluster_metrics_age_seconds",
                        "Seconds since the ingester wrote the event-driven series a follower "
                        "exports",
                        value=max(0.0, time.time() - published["at"]),
                    )
        yield from self._flower_families(snap)
        yield from self._task_families(snap)
        yield from self._worker_families()
        yield from self._queue_families()
        yield from self._service_families(snap)

    def _flower_families(self, snap: dict[str, Any]) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "flower_events",
            "Number of task events (Flower); worker is '' for task-sent (sent by a client)",
            labels=["worker", "type", "task"],
        )
        for k, v in snap["events"].items():
            events.add_metric(list(k), v)
        yield events
        yield _histogram(
            "flower_task_runtime_seconds",
            "Task runtime in seconds (Flower)",
            ["worker", "task"],
            snap["runtime"],
            self.runtime_buckets,
        )
        prefetch = GaugeMetricFamily(
            "flower_task_prefetch_time_seconds",
            "Seconds the last task waited on the worker between received and started, "
            "0 once it finished (Flower)",
            labels=["worker", "task"],
        )
        for k, v in snap["prefetch_time"].items():
            prefetch.add_metric(list(k), v)
        yield prefetch
        prefetched = GaugeMetricFamily(
            "flower_worker_prefetched_tasks",
            "Tasks received by the worker and not started yet (Flower)",
            labels=["worker", "task"],
        )
        for k, v in snap["prefetched"].items():
            prefetched.add_metric(list(k), v)
        yield prefetched

    def _task_families(self, snap: dict[str, Any]) -> Iterator[Metric]:
        tasks = CounterMetricFamily(
            "celerymon_tasks",
            "Task events by state; exception is the class name of failures ('' otherwise); "
            "worker is '' for PENDING (sent by a client)",
            labels=["task", "worker", "state", "exception"],
        )
        for k, v in snap["tasks"].items():
            tasks.add_metric(list(k), v)
        yield tasks
        yield _histogram(
            "celerymon_task_queue_wait_seconds",
            "Seconds from max(sent, eta) to started, for tasks whose task-sent event was seen",
            ["task", "worker"],
            snap["queue_wait"],
            self.queue_wait_buckets,
        )

    def _worker_families(self) -> Iterator[Metric]:
        online = GaugeMetricFamily(
            "flower_worker_online",
            "1 while the worker sends heartbeats, 0 once it is offline (Flower)",
            labels=["worker"],
        )
        executing = GaugeMetricFamily(
            "flower_worker_number_of_currently_executing_tasks",
            "Tasks the worker is executing, from its last heartbeat (Flower)",
            labels=["worker"],
        )
        n_online = n_known = 0
        for w in self.service.workers():
            n_known += 1
            n_online += bool(w["status"])
            online.add_metric([w["hostname"]], 1.0 if w["status"] else 0.0)
            active = _number(w.get("active"))
            if active is not None:
                executing.add_metric([w["hostname"]], active)
        yield online
        yield executing
        yield GaugeMetricFamily("celerymon_workers_online", "Workers online", value=n_online)
        yield GaugeMetricFamily(
            "celerymon_workers", "Workers known to the monitor (online or not)", value=n_known
        )

    def _queue_families(self) -> Iterator[Metric]:
        asked = time.time()
        try:
            queues = self.service.queues()
            up = 1.0
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail with the broker
            log.info("celerymon: no queue lengths for the metrics: %s", exc)
            queues = None
            up = 0.0
        yield GaugeMetricFamily(
            "celerymon_broker_up",
            "1 if the broker answered the last queue-length query of this scrape, else 0",
            value=up,
        )
        if not queues:
            return
        lengths = {}
        for q in queues:
            n = _number(q.get("messages"))
            if isinstance(q.get("name"), str) and n is not None:
                lengths[q["name"]] = int(n)
        length = GaugeMetricFamily(
            "celerymon_queue_length", "Messages waiting in the queue", labels=["queue"]
        )
        for name, n in lengths.items():
            length.add_metric([name], n)
        yield length
        latency = GaugeMetricFamily(
            "celerymon_queue_latency_seconds",
            "Age of the oldest task seen sent to the queue and not yet received by a worker "
            "(0 when the queue is empty; absent when none of its messages was seen sent)",
            labels=["queue"],
        )
        for name, secs in self._queue_latencies(lengths, asked).items():
            latency.add_metric([name], secs)
        yield latency

    def _service_families(self, snap: dict[str, Any]) -> Iterator[Metric]:
        fig = self.service.figures()
        for key, name, doc in (
            ("events_received", "celerymon_events_received", "Events decoded from the broker"),
            ("events_applied", "celerymon_events_applied", "Events applied to the monitor state"),
            (
                "events_dropped",
                "celerymon_events_dropped",
                "Events received and never applied (undecodable, malformed, failed batch)",
            ),
            ("events_malformed", "celerymon_events_malformed", "Events skipped as malformed"),
            ("connects", "celerymon_event_stream_connects", "Connections to the event stream"),
            ("disconnects", "celerymon_event_stream_disconnects", "Event stream disconnections"),
            (
                "gaps_total",
                "celerymon_event_stream_gaps",
                "Spans with no event consumed (a disconnect, the time between two runs)",
            ),
            (
                "gap_seconds_total",
                "celerymon_event_stream_gap_seconds",
                "Seconds with no event consumed, over all gaps",
            ),
            (
                "tasks_reconciled",
                "celerymon_tasks_reconciled",
                "Unfinished tasks brought to the finished state the result backend holds",
            ),
            ("evicted", "celerymon_window_evicted_tasks", "Tasks evicted from the memory window"),
            ("flushes", "celerymon_store_flushes", "Writes of the changed tasks to the history "
             "store (one per flush interval, also when nothing changed)"),
            ("flush_seconds", "celerymon_store_flush_seconds", "Seconds spent writing changed "
             "tasks to the history store"),
            ("listener_errors", "celerymon_listener_errors", "Errors raised by event listeners"),
        ):  # fmt: skip
            yield CounterMetricFamily(name, doc, value=_number(fig.get(key)) or 0.0)
        yield CounterMetricFamily(
            "celerymon_workers_purged",
            "Offline workers purged (series removed)",
            value=snap["purged"],
        )
        for key, name, doc in (
            ("lag", "celerymon_ingest_lag_seconds", "Seconds from the last event's timestamp "
             "to its application"),
            ("lag_max", "celerymon_ingest_lag_max_seconds", "Largest ingest lag seen"),
            ("tasks", "celerymon_window_tasks", "Tasks in the memory window"),
            ("store_pending", "celerymon_store_pending_tasks", "Changed tasks not yet written "
             "to the history store"),
            ("subscribers", "celerymon_subscribers", "Live subscribers (websockets...)"),
        ):  # fmt: skip
            yield GaugeMetricFamily(name, doc, value=_number(fig.get(key)) or 0.0)
        yield GaugeMetricFamily(
            "celerymon_event_stream_connected",
            "1 while the monitor is subscribed to the event stream",
            value=1.0 if fig.get("connected") else 0.0,
        )
        last = _number(fig.get("last_event_at"))
        if last is not None:
            yield GaugeMetricFamily(
                "celerymon_last_event_timestamp_seconds",
                "Unix time the monitor applied its last event",
                value=last,
            )


class _Collector(Collector):
    def __init__(self, metrics: MonitorMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics.collect()


def _buckets(values: Iterable[float], what: str) -> tuple[float, ...]:
    b = tuple(float(v) for v in values)
    if b and b[-1] == float("inf"):
        b = b[:-1]
    if not b or any(x >= y for x, y in zip(b, b[1:])):
        raise ValueError(f"{what} must be increasing numbers of seconds, not {values!r}")
    return b


def _histogram(
    name: str,
    doc: str,
    labels: list[str],
    series: dict[tuple[str, ...], _Histogram],
    bounds: Sequence[float],
) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=labels)
    les = [str(floatToGoString(b)) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
    for k, h in series.items():
        acc = 0
        cumulative = []
        for le, c in zip(les, h.counts):
            acc += c
            cumulative.append((le, acc))
        fam.add_metric(list(k), cumulative, h.total)
    return fam
