"""A task's history lists the client's first ``task-sent`` first, whenever it arrives.

``task-sent`` comes from the client's connection, the other task events from the worker's: it
may be read after the worker's events and after the monitor's own notes (``revoke-requested``).
The task was sent before all of them, so the history puts it first, as
:func:`~flask_celerymon.monitor.model.history_from_times` does; everything else stays in the
order it arrived (a note is ordered by when the monitor made it, not by a worker's clock).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flask_celerymon.monitor.model import history_from_times
from flask_celerymon.monitor.state import TASK_EVENTS, State

NOW = 1_700_000_000.0
WORKER_EVENTS = ("task-received", "task-started", "task-retried", "task-succeeded")


def _event(kind: str, ts: float) -> dict[str, Any]:
    host = "client@h" if kind == "task-sent" else "w1@h"
    ev = {"type": kind, "uuid": "t1", "hostname": host, "timestamp": ts, "clock": 1}
    if kind in ("task-sent", "task-received"):
        ev["name"] = "app.add"
    return ev


@st.composite
def arrivals(draw: Any) -> list[tuple[str, float]]:
    """The worker's events of one task in order, a note at any point, and the first
    ``task-sent`` read at any point (``("note", t)`` is the monitor's ``revoke-requested``)."""
    worker = draw(st.lists(st.sampled_from(WORKER_EVENTS), min_size=0, max_size=5))
    seq: list[tuple[str, float]] = [(k, NOW + 1 + i) for i, k in enumerate(worker)]
    if draw(st.booleans()):
        seq.insert(draw(st.integers(0, len(seq))), ("note", NOW + 10))
    # the client's clock: stamped after the message left, a little later than the worker's
    sent = NOW + draw(st.sampled_from([0.0, 1.5, 30.0]))
    seq.insert(draw(st.integers(0, len(seq))), ("task-sent", sent))
    return seq


@settings(max_examples=300, deadline=None)
@given(arrivals())
def test_the_first_task_sent_is_first_and_the_rest_keep_their_order(seq):
    state = State()
    made: list[str] = []  # every worker state, and each note the state accepted
    for kind, ts in seq:
        if kind == "note":
            with state.lock:
                if state.note("t1", "revoke-requested", ts):
                    made.append("revoke-requested")
        else:
            state.apply(_event(kind, ts), now=NOW + 20)
            if kind != "task-sent":
                made.append(TASK_EVENTS[kind][0])
    t = state.tasks["t1"]
    h = t.full_history()
    states = list(h[0::2])
    assert states[0] == "PENDING"
    assert h[1] == next(ts for kind, ts in seq if kind == "task-sent")
    # after it: the worker's states and the note, in the order they arrived (a note on a
    # finished task, or before the task was known, is not made)
    rest = [TASK_EVENTS[k][0] if k != "note" else "revoke-requested" for k, _ in seq
            if k != "task-sent"]  # fmt: skip
    assert states[1:] == [s for s in rest if s in states[1:]]
    # ... and none is lost (a note is refused on a finished task or before it was known)
    assert states[1:] == made
    kinds = [k for k, _ in seq]
    if "note" not in kinds and len(set(kinds)) == len(kinds):
        # each state once, no note: the history follows from the times
        assert h == history_from_times(t)


def test_a_task_sent_read_after_a_note_goes_before_it():
    """The case CI met: sent's event read after revoke-requested was noted and stored."""
    state = State()
    state.apply(_event("task-received", NOW + 1), now=NOW + 2)
    with state.lock:
        assert state.note("t1", "revoke-requested", NOW + 2)
    state.apply(_event("task-sent", NOW + 1.01), now=NOW + 3)
    h = state.tasks["t1"].full_history()
    assert h[0::2] == ("PENDING", "RECEIVED", "revoke-requested")
    assert h[-2] == "revoke-requested"
