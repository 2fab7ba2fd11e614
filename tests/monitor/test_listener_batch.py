"""Event listeners with a batch hook (``add_listener(fn, batch=...)``): the hook's context is
entered once around each batch the service applies, the listener still runs per event.

The differential test feeds generated event streams, cut into batches of any size, to two
services: one with :class:`MonitorMetrics` as a plain listener taking its lock per event
(``_on_event``, the path before the batch hook), one with the metrics as built (the lock
taken per batch); both with the Insight listener. Every series, the pending sent tasks and
the Insight queue must come out identical.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any

from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_celerymon.monitor import MonitorService, MonitorSettings
from flask_celerymon.monitor.insight.engine import Insight
from flask_celerymon.monitor.metrics import MonitorMetrics
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
        ts = NOW + draw(st.floats(-10, 10, allow_nan=False).map(lambda x: round(x, 3)))
        kind = draw(st.sampled_from([*TASK_EVENTS, "task-custom", "worker-online",
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


def _run(batches: list[list[dict[str, Any]]], per_event: bool) -> dict[str, Any]:
    svc = MonitorService(Celery("diff", broker="memory://"), MonitorSettings(enable_events=False))
    metrics = MonitorMetrics(svc, max_task_names=2, max_exceptions=1)
    if per_event:  # the listener as it was: the lock taken per event, no batch hook
        svc.remove_listener(metrics._count_event)
        svc.add_listener(metrics._on_event)
    insight = Insight(svc)
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
        "insight": list(insight._pending),
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_metrics_and_insight_are_the_same_with_the_lock_per_batch_or_per_event(batches):
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
