"""Differential test: generated event streams applied to Celery's ``celery.events.state.State``
(what Flower shows) and to our :class:`~flask_celerymon.monitor.state.State` agree on each
task's state and times and each worker's online status, ``processed`` and ``active``.

The deliberate differences are listed in docs/monitor-service.rst ("Where the monitor differs
from Celery's state") and modelled here, each in one place:

* a task ``STARTED`` on a worker that sent ``worker-offline`` becomes ``LOST`` (Celery keeps
  it ``STARTED`` forever); after that, any event of the task is taken as news;
* custom task event types leave the state alone (Celery upper-cases them into a state);
* a task's ``timestamp`` is the time of the event that set its state (Celery's also moves
  with a late event of an earlier state, e.g. a ``task-sent`` read after ``task-started``).
"""

from __future__ import annotations

from typing import Any

from celery.events.state import State as CeleryState
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_celerymon.monitor.state import LOST, TASK_EVENTS, State

NOW = 1_700_000_000.0
UUIDS = ("t1", "t2", "t3")
HOSTS = ("w1@h", "w2@h")
TIMES = ("sent", "received", "started", "succeeded", "failed", "retried", "revoked", "rejected")
STATE_OF = [TASK_EVENTS[f"task-{a}"] for a in TIMES]


@st.composite
def events(draw: Any) -> list[dict[str, Any]]:
    """A stream of task and worker events, in any order, with times near NOW."""
    out = []
    for clock in range(1, draw(st.integers(1, 40)) + 1):
        ts = NOW + draw(st.floats(-10, 10, allow_nan=False).map(lambda x: round(x, 3)))
        host = draw(st.sampled_from(HOSTS))
        kind = draw(st.sampled_from([*TASK_EVENTS, "worker-online", "worker-heartbeat",
                                     "worker-offline"]))  # fmt: skip
        ev: dict[str, Any] = {"type": kind, "hostname": host, "timestamp": ts,
                              "local_received": NOW, "clock": clock}  # fmt: skip
        if kind.startswith("task-"):
            ev["uuid"] = draw(st.sampled_from(UUIDS))
            if kind in ("task-sent", "task-received"):
                ev["name"] = draw(st.sampled_from(["app.a", "app.b"]))
                # (the task's own id or another: State's root_id action takes both)
                root = draw(st.sampled_from([None, *UUIDS]))
                if root is not None:
                    ev["root_id"] = root
        else:
            ev["freq"] = draw(st.sampled_from([1.0, 2.0, 60.0]))
            if kind == "worker-heartbeat":
                ev["active"] = draw(st.integers(0, 8))
                ev["processed"] = draw(st.integers(0, 10_000))
        out.append(ev)
    return out


def _celery(stream: list[dict[str, Any]]) -> CeleryState:
    state = CeleryState()
    for ev in stream:
        state.event(dict(ev))
    return state


def _ours(stream: list[dict[str, Any]]) -> State:
    state = State()
    for ev in stream:
        state.apply(dict(ev), now=ev["local_received"])
    return state


@settings(max_examples=300, deadline=None)
@given(events())
def test_tasks_agree_with_celerys_state(stream):
    """Events in any order (several connections, clocks apart)."""
    theirs = _celery(stream)
    ours = _ours(stream)
    assert set(ours.tasks) == set(theirs.tasks)
    for uuid, t in ours.tasks.items():
        c = theirs.tasks[uuid]
        history = [t.full_history()[i] for i in range(0, len(t.full_history()), 2)]
        if t.state == LOST:
            assert c.state == "STARTED", f"{uuid} {stream}"
        elif LOST not in history:
            assert t.state == c.state, f"{uuid} {stream}"
            # our timestamp is the time of the event that set the state (Celery's moves with
            # a late event of an earlier state too)
            attr = next(a for a, (s, _) in zip(TIMES, STATE_OF) if s == t.state)
            assert t.timestamp == getattr(t, attr), f"{uuid} {stream}"
        for attr in TIMES:
            assert getattr(t, attr) == getattr(c, attr), f"{uuid} {attr} {stream}"
        assert (t.worker or None) == (c.worker.hostname if c.worker else None), f"{uuid} {stream}"
        assert t.client == c.client, f"{uuid} {stream}"
        assert t.root_id == c.root_id, f"{uuid} {stream}"


@settings(max_examples=300, deadline=None)
@given(events(), st.floats(0, 200))
def test_workers_agree_with_celerys_state(stream, later):
    """Events as received: in time order, each received when it was sent (Celery counts a
    task event as a heartbeat at the event's own timestamp, we at its arrival)."""
    stream = sorted(stream, key=lambda e: e["timestamp"])
    for ev in stream:
        ev["local_received"] = ev["timestamp"]
    theirs = _celery(stream)
    ours = _ours(stream)
    # only hosts that sent a worker or task event (not only task-sent) are workers
    assert set(ours.workers) == set(theirs.workers)
    last = stream[-1]["timestamp"]
    for host, w in ours.workers.items():
        c = theirs.workers[host]
        assert w.processed == (c.processed or 0), f"{host} {stream}"
        assert w.active == c.active, f"{host} {stream}"
        for dt in (0.0, later):
            alive = bool(c.heartbeats) and last + dt < c.heartbeat_expires
            assert w.alive(last + dt, None) == alive, f"{host} {dt} {stream}"
