"""Differential test of the window's kept search answers (:mod:`~flask_celerymon.monitor.
searchcache`): on generated histories, a search asked again after tasks were created, changed,
evicted, re-created, adopted, marked lost or noted answers exactly what a full scan of the
window answers at that moment: the same total and the same page, in the same order (the sort
values are drawn from a few integers, so ties, which keep window order, are frequent).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flask_celerymon.monitor import searchcache
from flask_celerymon.monitor.model import TaskQuery, TaskRecord
from flask_celerymon.monitor.query import compile_python, parse
from flask_celerymon.monitor.state import State, _page

NOW = 1_700_000_000.0
UUIDS = tuple(f"{c}{i:x}ab-{i}" for c in "ab" for i in range(12))
NAMES = ("shop.pay.capture", "shop.mail.send", "app.alpha_job")
HOSTS = ("w1@h", "w2@h", "w3@alpha")
WORDS = ("alpha", "beta", "gamma", "delta")
SEARCHES = (
    "alpha",
    "beta",
    "args:alpha",
    "result:gamma",
    "kwargs:k=1",
    "kwargs:\"'k': 2\"",
    "state:started",
    "state:success OR state:lost",
    "name:pay",
    "pay",
    "worker:w2",
    "alpha OR beta",
    "alpha beta",
    "(alpha OR gamma) name:mail",
    "SUCC",
    "a1a",
    "b2ab",
    "delta OR w3@",
)
SORTS = ("received", "started", "timestamp", "name", "state", "runtime")

TYPES = ("task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
         "task-retried", "task-revoked")  # fmt: skip


@st.composite
def task_event(draw: Any) -> dict[str, Any]:
    etype = draw(st.sampled_from(TYPES))
    ev: dict[str, Any] = {
        "type": etype,
        "uuid": draw(st.sampled_from(UUIDS)),
        "timestamp": NOW + draw(st.integers(0, 5)),
        "hostname": draw(st.sampled_from(HOSTS)),
    }
    if draw(st.booleans()):
        ev["name"] = draw(st.sampled_from(NAMES))
    if draw(st.booleans()):
        ev["args"] = f"({draw(st.integers(0, 3))}, '{draw(st.sampled_from(WORDS))}')"
    if draw(st.booleans()):
        ev["kwargs"] = f"{{'k': {draw(st.integers(0, 2))}}}"
    if etype == "task-succeeded" and draw(st.booleans()):
        ev["result"] = f"'{draw(st.sampled_from(WORDS))}'"
        ev["runtime"] = float(draw(st.integers(0, 3)))
    return ev


@st.composite
def query(draw: Any) -> TaskQuery:
    sort = draw(st.sampled_from(SORTS))
    filters: dict[str, Any] = {}
    if draw(st.integers(0, 4)) == 0:
        filters["state"] = (draw(st.sampled_from(("SUCCESS", "STARTED", "RECEIVED"))),)
    if draw(st.integers(0, 4)) == 0:
        filters["received_start"] = NOW + draw(st.integers(0, 3))
    return TaskQuery(
        search=parse(draw(st.sampled_from(SEARCHES))),
        sort_key=sort,
        descending=draw(st.booleans()),
        offset=draw(st.sampled_from((0, 0, 2))),
        limit=draw(st.sampled_from((3, 5, None))),
        **filters,
    )


def _record(uuid: str) -> TaskRecord:
    t = TaskRecord(uuid)
    t.name, t.state, t.worker = "shop.adopted.alpha", "SUCCESS", "w9@h"
    t.received = t.timestamp = NOW + 2
    t.text = "('beta',)\x00{}\x00'gamma'"
    return t


_events = st.tuples(st.just("events"), st.lists(task_event(), min_size=1, max_size=4))
_again = st.tuples(st.just("again"), st.integers(0, 10))  # the same query as an earlier one
step = st.one_of(
    _events,
    _events,
    _again,
    _again,
    _again,
    st.tuples(st.just("query"), query()),
    st.tuples(st.just("adopt"), st.sampled_from(UUIDS)),
    st.tuples(st.just("lost"), st.sampled_from(HOSTS)),
    st.tuples(st.just("note"), st.sampled_from(UUIDS)),
)


def full_scan(state: State, q: TaskQuery) -> tuple[int, list[str]]:
    seq = compile_python(q.search, state._distinct)(state._filter(q, state.tasks.values()))
    end = None if q.limit is None else q.offset + q.limit
    return len(seq), [t.uuid for t in _page(seq, q.sort_key, q.descending, q.offset, end)]


@settings(max_examples=400, deadline=None)
@given(st.lists(step, min_size=20, max_size=60), st.sampled_from((10, 20, 100)))
def test_a_repeated_search_answers_what_a_full_scan_answers(steps, max_tasks):
    state = State(max_tasks=max_tasks)
    for i, uuid in enumerate(UUIDS):  # every name and worker known: most steps change tasks
        state.apply({"type": "task-received", "uuid": uuid, "timestamp": NOW + i % 4,
                     "hostname": HOSTS[i % 3], "name": NAMES[i % 3]}, now=NOW)  # fmt: skip
    asked: list[TaskQuery] = []
    for kind, arg in steps:
        if kind == "events":
            for ev in arg:
                state.apply(ev, now=NOW)
            continue
        if kind == "adopt":
            state.adopt(_record(arg))
            continue
        if kind == "lost":
            state.mark_lost(arg, NOW + 6)
            continue
        if kind == "note":
            state.note(arg, "revoke-requested", NOW + 6)
            continue
        if kind == "again":
            if not asked:
                continue
            q = asked[arg % len(asked)]
        else:
            q = arg
            asked.append(q)
        total, page = state.query(q)
        assert (total, [t.uuid for t in page]) == full_scan(state, q)


def test_a_kept_answer_follows_changes_without_a_full_scan(monkeypatch):
    state = State(max_tasks=1000)
    for i in range(200):
        state.apply({"type": "task-received", "uuid": f"u{i}", "timestamp": NOW + i,
                     "hostname": "w1@h", "name": "app.job", "args": f"('c-{i % 10}',)"})  # fmt: skip
    q = TaskQuery(search=parse("c-3"), limit=5)
    first = state.query(q)
    scans = []
    real = compile_python

    def counting(node, values=None):
        fn = real(node, values)

        def run(seq):
            seq = list(seq)
            scans.append(len(seq))
            return fn(seq)

        return run

    monkeypatch.setattr("flask_celerymon.monitor.state.compile_python", counting)
    state.apply({"type": "task-succeeded", "uuid": "u13", "timestamp": NOW + 500,
                 "hostname": "w1@h", "result": "'ok'"})  # fmt: skip
    state.apply({"type": "task-received", "uuid": "u999", "timestamp": NOW + 600,
                 "hostname": "w1@h", "args": "('c-3',)"})  # fmt: skip
    total, page = state.query(q)
    assert (total, [t.uuid for t in page]) == (
        first[0] + 1,
        ["u999", *[t.uuid for t in first[1][:4]]],
    )
    assert max(scans) <= 2  # the changed task and the new one, never the window


def test_the_log_is_dropped_past_its_bound(monkeypatch):
    monkeypatch.setattr(searchcache, "MAX_LOG", 50)
    state = State(max_tasks=1000)
    q = TaskQuery(search=parse("alpha"))
    state.query(q)
    assert state._searches.log == []
    for i in range(60):
        state.apply({"type": "task-received", "uuid": f"u{i}", "timestamp": NOW + i,
                     "hostname": "w1@h", "args": "('alpha',)"})  # fmt: skip
    assert state.query(q)[0] == 60
    assert len(state._searches.log) == 0  # dropped, then kept anew from a full scan


def test_the_log_stays_bounded_when_the_search_is_not_asked_again(monkeypatch):
    # One search starts the log; events keep coming and nobody searches again (a page was
    # closed, an API client asked once). The log must not grow past its bound meanwhile: it
    # holds every changed record, evicted ones too, so unbounded it keeps them all alive.
    monkeypatch.setattr(searchcache, "MAX_LOG", 50)
    state = State(max_tasks=20)
    state.query(TaskQuery(search=parse("alpha")))
    assert state._searches.log == []
    for i in range(500):
        state.apply({"type": "task-received", "uuid": f"u{i}", "timestamp": NOW + i,
                     "hostname": "w1@h", "args": "('alpha',)"})  # fmt: skip
        state.note(f"u{i}", "revoke-requested", NOW + i)
        log = state._searches.log
        assert log is None or len(log) + len(state._searches.created) <= 50
    for i in range(500):
        state.adopt(_record(f"a{i}"))
        log = state._searches.log
        assert log is None or len(log) + len(state._searches.created) <= 50
    q = TaskQuery(search=parse("alpha"), limit=None)
    assert state.query(q)[0] == full_scan(state, q)[0]
