"""Event listeners with a batch hook (``add_listener(fn, batch=...)``): the hook's context is
entered once around each batch the service applies, the listener still runs per event.

The differential test feeds generated event streams, cut into batches of any size, to two
services: one with :class:`MonitorMetrics` as a plain listener taking its lock per event
(the path before the batch hook), one with the metrics as built (the lock
taken per batch); both with the Insight listener. Every series, the pending sent tasks and
the Insight queue must come out identical, and so must the text of the event-driven
families as a scrape renders it (same samples in the same order). The per-event side runs the
listeners' code as it was before they were reworked (``_ref_count_event``, copied from integ
at 8fa8d40; ``_ref_on_event``, Insight's listener copied from integ at 59efae1), so the
reworks are checked too.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any
from unittest import mock

from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from flask_celerymon.monitor import MonitorService, MonitorSettings
from flask_celerymon.monitor.insight.engine import MAX_PENDING as INSIGHT_MAX_PENDING
from flask_celerymon.monitor.insight.engine import Insight, _eta, _text
from flask_celerymon.monitor.metrics import (
    MAX_PENDING,
    MonitorMetrics,
    _eta_timestamp,
    _Histogram,
    _number,
    clean_text,
    exception_class,
)
from flask_celerymon.monitor.state import TASK_EVENTS

NOW = 1_700_000_000.0
UUIDS = ("t1", "t2", "t3", "t4")
HOSTS = ("w1@h", "w2@h", "gen1@client")
NAMES = ("app.a", "app.b", "app.c")


@st.composite
def streams(draw: Any) -> list[list[dict[str, Any]]]:
    """Task and worker events in any order, with the fields the listeners read (name,
    queue, eta, runtime, exception, root_id), cut into batches of 1 to 7 events."""
    events = []
    for clock in range(1, draw(st.integers(1, 60)) + 1):
        ts: Any = NOW + draw(st.floats(-10, 10, allow_nan=False).map(lambda x: round(x, 3)))
        # off the wire a timestamp may be of any type (the listeners' float fast paths)
        ts = draw(st.sampled_from([ts] * 6 + [int(ts), float("nan"), float("inf"), -1.0, True]))
        kind = draw(st.sampled_from([*TASK_EVENTS, "task-custom", "task-\u00e9", "worker-online",
                                     "worker-heartbeat", "worker-offline"]))  # fmt: skip
        ev: dict[str, Any] = {"type": kind, "hostname": draw(st.sampled_from(HOSTS)),
                              "timestamp": ts, "local_received": NOW, "clock": clock}  # fmt: skip
        if kind.startswith("task-"):
            ev["uuid"] = draw(st.sampled_from(UUIDS))
            if kind in ("task-sent", "task-received"):
                ev["name"] = draw(st.sampled_from(NAMES))
                ev["root_id"] = draw(st.sampled_from([None, "t1", "t2"]))
                ev["eta"] = draw(st.sampled_from([None, None, "2023-11-14T22:13:30+00:00"]))
            if kind == "task-sent":
                ev["queue"] = draw(st.sampled_from(["celery", "q2", "", 5]))
            if kind == "task-succeeded":
                ev["runtime"] = draw(st.sampled_from([0.0, 0.25, 3.0, "x", None]))
            if kind in ("task-failed", "task-retried"):
                ev["exception"] = draw(st.sampled_from(["KeyError('a')", "ValueError()",
                                                        "boom", None]))  # fmt: skip
        else:
            ev["freq"] = 2.0
        events.append(ev)
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(events) - 1)), max_size=10)))
    out, start = [], 0
    for cut in [*cuts, len(events)]:
        if cut > start:
            out.append(events[start:cut])
            start = cut
    return out


# -- the reference: MonitorMetrics' listener before the batch hook and its rework -----------


def _ref_count_event(m: MonitorMetrics, event: dict[str, Any], task: Any) -> None:
    """The service's event listener (ingest thread, the lock held by :meth:`_batch`):
    update the event-driven series."""
    if task is None:
        return
    etype = event.get("type")
    if not isinstance(etype, str) or not etype.startswith("task-"):
        return
    if not etype.isascii():
        etype = clean_text(etype)
    # task-sent comes from a client (gen<pid>@host, a new name per process): not a label.
    # The task's worker is the event's hostname, already checked by the state.
    worker = task.worker if etype != "task-sent" else ""
    name = task.name or ""
    if name not in m._names:
        name = m._bounded(name, m._names, m.max_task_names)
    key = (worker, name)
    ek = (worker, etype, name)
    events = m._events
    events[ek] = events.get(ek, 0) + 1

    runtime = event.get("runtime")
    if runtime is not None:
        runtime = _number(runtime)
    if runtime:
        h = m._runtime.get(key)
        if h is None:
            h = m._runtime[key] = _Histogram(len(m.runtime_buckets))
        h.observe(m.runtime_buckets, runtime)

    known = TASK_EVENTS.get(etype)
    if known is not None:
        state = known[0]
        exc = ""
        if etype == "task-failed":
            exc = m._bounded(
                exception_class(event.get("exception")),
                m._exceptions,
                m.max_exceptions,
            )
        tk = (name, worker, state, exc)
        tasks = m._tasks
        tasks[tk] = tasks.get(tk, 0) + 1

    if etype == "task-sent":
        _ref_track_sent(m, event, task)
        # The client's sent event may arrive after the worker's started event (two
        # connections), and even read later than it (the client stamps it after the
        # message left): measure the wait now (0 then). A retry's re-send comes after
        # the previous run started and a task-retried, and is not measured here.
        sent = _number(event.get("timestamp"))
        if (
            sent is not None
            and task.started is not None
            and (task.started >= sent or task.retried is None)
        ):
            _ref_observe_queue_wait(m, task, name, task.worker or "")
        return
    queue = m._pending_queue.pop(task.uuid, None)
    if queue is not None:
        waiting = m._pending.get(queue)
        if waiting is not None:
            waiting.pop(task.uuid, None)

    eta = task.eta
    received = task.received
    started = task.started
    if etype == "task-received":
        if not eta and received is not None:
            m._prefetched[key] = m._prefetched.get(key, 0) + 1
    elif etype == "task-started":
        if not eta and started is not None and received is not None:
            m._prefetch_time[key] = max(0.0, started - received)
            m._dec_prefetched(key)
        _ref_observe_queue_wait(m, task, name, worker)
    elif etype in ("task-succeeded", "task-failed"):
        if not eta and started is not None and received is not None:
            m._prefetch_time[key] = 0.0
    elif (
        etype in ("task-revoked", "task-rejected")
        and not eta
        and received is not None
        and started is None
    ):
        m._dec_prefetched(key)


def _ref_track_sent(m: MonitorMetrics, event: dict[str, Any], task: Any) -> None:
    # A task-received applied before its task-sent leaves the state at RECEIVED: skip it.
    if task.state != "PENDING" or len(m._pending_queue) >= MAX_PENDING:
        return
    queue = event.get("queue") or event.get("routing_key")
    sent = _number(event.get("timestamp"))
    if not isinstance(queue, str) or not queue or sent is None:
        return
    if not queue.isascii():
        queue = clean_text(queue)
    old = m._pending_queue.get(task.uuid)
    if old is not None and old != queue:
        m._pending.get(old, {}).pop(task.uuid, None)
    m._pending_queue[task.uuid] = queue
    waiting = m._pending.get(queue)
    if waiting is None:
        waiting = m._pending[queue] = {}
    waiting[task.uuid] = sent


def _ref_observe_queue_wait(m: MonitorMetrics, task: Any, name: str, worker: str) -> None:
    sent = task.sent
    started = task.started
    if sent is None or started is None:
        return
    base = sent
    eta = _eta_timestamp(task.eta)
    if eta is not None and eta > base:
        base = eta
    key = (name, worker)
    h = m._queue_wait.get(key)
    if h is None:
        h = m._queue_wait[key] = _Histogram(len(m.queue_wait_buckets))
    h.observe(m.queue_wait_buckets, max(0.0, started - base))


_WATCHED = frozenset({"task-succeeded", "task-failed", "task-retried", "task-revoked",
                      "task-started", "task-received", "task-sent"})  # fmt: skip


def _ref_on_event(ins: Insight, event: dict[str, Any], task: Any) -> None:
    """Insight's listener as it was (integ at 59efae1)."""
    etype = event.get("type")
    if etype not in _WATCHED or task is None:
        return
    if len(ins._pending) >= INSIGHT_MAX_PENDING:
        ins.dropped += 1
        return
    ts = event.get("timestamp")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not 0 <= ts < 1e11:
        ts = time.time()
    if etype in ("task-received", "task-sent"):
        root = task.root_id
        if root and root != task.uuid:
            ins._pending.append((etype, task.name, ts, root, task.uuid))
        return
    if etype == "task-started":
        start = task.sent or task.received
        eta = _eta(task.eta)
        if start is not None and eta is not None:
            start = max(start, eta)
        wait = None if start is None else ts - start
        ins._pending.append((etype, task.name, ts, wait, task.routing_key or ""))
    elif etype == "task-succeeded":
        ins._pending.append((etype, task.name, ts, task.runtime))
    elif etype in ("task-failed", "task-retried"):
        ins._pending.append((etype, task.name, ts, task.uuid, task.worker,
                             _text(task.exception), _text(task.traceback)))  # fmt: skip
    else:
        ins._pending.append((etype, task.name, ts))


def _rendered(metrics: MonitorMetrics) -> bytes:
    """The event-driven families as a scrape renders them (text exposition format)."""

    class Families:
        def collect(self) -> Any:
            snap = metrics._snapshot()
            yield from metrics._flower_families(snap)
            yield from metrics._task_families(snap)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families())
    return generate_latest(registry)


def _run(batches: list[list[dict[str, Any]]], per_event: bool) -> dict[str, Any]:
    svc = MonitorService(Celery("diff", broker="memory://"), MonitorSettings(enable_events=False))
    metrics = MonitorMetrics(svc, max_task_names=2, max_exceptions=1)
    if per_event:  # the listener as it was: the lock taken per event, no batch hook

        def reference(event: dict[str, Any], task: Any) -> None:
            with metrics._lock:
                _ref_count_event(metrics, event, task)

        svc.remove_listener(metrics._count_event)
        svc.add_listener(reference)
    insight = Insight(svc)
    if per_event:
        svc.add_listener(lambda event, task: _ref_on_event(insight, event, task))
    else:
        svc.add_listener(insight._on_event)
    for batch in batches:
        svc.apply_events(batch)
    assert svc.figures()["listener_errors"] == 0
    series = metrics._snapshot()
    for kind in ("runtime", "queue_wait"):  # _Histogram has no __eq__
        series[kind] = {k: (h.counts, h.total) for k, h in series[kind].items()}
    return {
        "series": series,
        "pending": metrics._pending,
        "pending_queue": metrics._pending_queue,
        "names": metrics._names,
        "exceptions": metrics._exceptions,
        "insight": [_no_nan(item) for item in insight._pending],
        "text": _rendered(metrics),
    }


def _no_nan(item: tuple[Any, ...]) -> tuple[Any, ...]:
    """An Insight item with NaN (unequal to itself) spelled out, so items compare."""
    return tuple("nan" if isinstance(x, float) and x != x else x for x in item)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_metrics_and_insight_are_the_same_with_the_lock_per_batch_or_per_event(batches):
    # one clock for both sides: Insight stamps an event whose timestamp is unusable with now
    with mock.patch.object(time, "time", lambda: NOW + 99.0):
        assert _run(batches, per_event=False) == _run(batches, per_event=True)


def _service() -> MonitorService:
    return MonitorService(Celery("batch", broker="memory://"), MonitorSettings(enable_events=False))


def _events(n: int) -> list[dict[str, Any]]:
    return [{"type": "task-received", "uuid": f"u{i}", "name": "app.a", "hostname": "w@h",
             "timestamp": NOW + i} for i in range(n)]  # fmt: skip


def test_the_batch_hook_is_entered_once_around_a_batch_and_the_listener_runs_per_event():
    svc = _service()
    log: list[Any] = []

    @contextmanager
    def batch():
        log.append("enter")
        yield
        log.append("exit")

    svc.add_listener(lambda e, t: log.append(t.uuid), batch=batch)
    svc.apply_events(_events(3))
    svc.apply_events(_events(1))
    assert log == ["enter", "u0", "u1", "u2", "exit", "enter", "u0", "exit"]


def test_a_batch_hook_that_fails_skips_its_listener_for_that_batch_only():
    svc = _service()
    seen: list[str] = []
    other: list[str] = []
    fail = [True]

    def batch() -> threading.Lock:
        if fail[0]:
            raise RuntimeError("no")
        return threading.Lock()

    svc.add_listener(lambda e, t: seen.append(t.uuid), batch=batch)
    svc.add_listener(lambda e, t: other.append(t.uuid))
    svc.apply_events(_events(2))
    assert (seen, other, svc.figures()["listener_errors"]) == ([], ["u0", "u1"], 1)
    fail[0] = False
    svc.apply_events(_events(1))
    assert (seen, svc.figures()["events_applied"]) == (["u0"], 3)


def test_a_batch_hook_whose_exit_fails_is_counted_and_ingest_goes_on():
    svc = _service()

    @contextmanager
    def batch():
        yield
        raise RuntimeError("no")

    svc.add_listener(lambda e, t: None, batch=batch)
    svc.apply_events(_events(2))
    stats = svc.figures()
    assert (stats["events_applied"], stats["listener_errors"]) == (2, 1)


def test_remove_listener_removes_the_same_bound_method_obtained_again():
    svc = _service()
    insight = Insight(svc)
    svc.add_listener(insight._on_event)
    svc.add_listener(insight._on_event)
    svc.remove_listener(insight._on_event)
    svc.apply_events(_events(1))
    assert svc._listeners == ()


def test_insight_started_again_after_stop_listens_once():
    svc = _service()
    insight = Insight(svc)
    insight.ensure_started()
    insight.stop()
    insight.ensure_started()
    try:
        assert [fn for fn, _batch in svc._listeners] == [insight._on_event]
    finally:
        insight.close()
    assert svc._listeners == ()
