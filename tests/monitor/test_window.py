"""Task and worker state in memory: fields, ordering rules, eviction, workers, purging."""

from __future__ import annotations

import gc
import time

import pytest
from celery import Celery
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_celerymon.monitor import MonitorService, MonitorSettings, SearchError
from flask_celerymon.monitor.model import TaskQuery, TaskRecord
from flask_celerymon.monitor.state import State, index_slack

from .conftest import task_events


def service(**kw) -> MonitorService:
    """A service fed by apply_events only (never started)."""
    return MonitorService(Celery("w", broker="memory://"), MonitorSettings(**kw), autostart=False)


def ev(type_, uuid=None, ts=None, host="w1@h", **fields):
    d = {"type": type_, "hostname": host, "timestamp": ts if ts is not None else time.time()}
    if uuid is not None:
        d["uuid"] = uuid
    d.update(fields)
    return d


def test_late_received_event_does_not_undo_success():
    svc = service()
    svc.apply_events([
        ev("task-succeeded", "t1", 10.0, result="3", runtime=0.5),
        ev("task-started", "t1", 9.0),
        ev("task-received", "t1", 8.0, name="app.add", args="(1, 2)", kwargs="{}"),
    ])  # fmt: skip
    t = svc.task("t1")
    assert t["state"] == "SUCCESS"
    assert t["name"] == "app.add"
    assert t["args"] == "(1, 2)"
    assert (t["received"], t["started"], t["succeeded"]) == (8.0, 9.0, 10.0)
    assert [h["state"] for h in t["history"]] == ["RECEIVED", "STARTED", "SUCCESS"]


def test_retries_are_kept_in_the_history_with_their_times():
    svc = service()
    svc.apply_events([
        ev("task-received", "t1", 1.0, name="app.x"),
        ev("task-started", "t1", 2.0),
        ev("task-retried", "t1", 3.0, exception="Boom()"),
        ev("task-received", "t1", 4.0, name="app.x", retries=1),
        ev("task-started", "t1", 5.0),
        ev("task-succeeded", "t1", 6.0, result="1"),
    ])  # fmt: skip
    t = svc.task("t1")
    assert [(h["state"], h["timestamp"]) for h in t["history"]] == [
        ("RECEIVED", 1.0), ("STARTED", 2.0), ("RETRY", 3.0),
        ("RECEIVED", 4.0), ("STARTED", 5.0), ("SUCCESS", 6.0),
    ]  # fmt: skip
    assert t["retries"] == 1
    assert t["state"] == "SUCCESS"


def test_window_evicts_finished_tasks_before_unfinished_ones():
    svc = service(max_tasks=3)
    svc.apply_events([
        ev("task-received", "running", 1.0, name="a"),
        ev("task-received", "done1", 2.0, name="a"),
        ev("task-succeeded", "done1", 3.0),
        ev("task-received", "done2", 4.0, name="a"),
        ev("task-succeeded", "done2", 5.0),
        ev("task-received", "new", 6.0, name="a"),
    ])  # fmt: skip
    assert svc.task("running") is not None
    assert svc.task("done1") is None
    assert {t["uuid"] for t in svc.query_tasks(limit=None).tasks} == {"running", "done2", "new"}
    assert svc.figures()["evicted"] == 1


def test_window_stays_bounded_when_nothing_is_finished():
    svc = service(max_tasks=10)
    svc.apply_events(ev("task-received", f"t{i}", float(i), name="a") for i in range(100))
    page = svc.query_tasks(limit=None)
    assert page.total == 10
    assert {t["uuid"] for t in page.tasks} == {f"t{i}" for i in range(90, 100)}


def task_records_alive() -> int:
    """TaskRecord objects alive in this process (after a full collection)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is TaskRecord)


def lifecycle(uuid: str, ts: float) -> list[dict]:
    return [
        ev("task-received", uuid, ts, name="app.add", args=f"('{uuid}',)", kwargs="{}"),
        ev("task-started", uuid, ts + 0.1),
        ev("task-succeeded", uuid, ts + 0.2, result="None", runtime=0.1),
    ]


@pytest.mark.parametrize("long_running_first", [False, True])
def test_evicted_task_records_are_released_within_the_index_slack(long_running_first):
    """Issue 15: evicted records stayed referenced by the window's indexes until they held
    2 x max_tasks + 1000 entries, so RSS rose for as long again after the window was full.
    Now at most max_tasks + index_slack(max_tasks) records are alive at any time, also with
    an unfinished task at the front of the insertion order (no cheap trimming there)."""
    max_tasks = 2000
    cap = max_tasks + index_slack(max_tasks)
    base = task_records_alive()
    svc = service(max_tasks=max_tasks)
    if long_running_first:
        svc.apply_events([ev("task-received", "long", 1.0, name="app.slow"),
                          ev("task-started", "long", 1.1)])  # fmt: skip
    peak = 0
    for chunk in range(14):  # 14,000 tasks: the window fills 7 times over
        events = []
        for i in range(chunk * 1000, (chunk + 1) * 1000):
            events += lifecycle(f"t{i}", 10.0 + i)
        svc.apply_events(events)
        peak = max(peak, task_records_alive() - base)
    assert svc.figures()["evicted"] == 14_000 + long_running_first - max_tasks
    assert peak <= cap, (peak, cap)
    page = svc.query_tasks(limit=5)
    assert page.total == max_tasks
    assert [t["uuid"] for t in page.tasks] == [f"t{i}" for i in range(13_999, 13_994, -1)]
    if long_running_first:
        assert svc.task("long")["state"] == "STARTED"  # unfinished: never the victim here


def test_task_records_stay_bounded_with_unfinished_tasks_and_repeated_events():
    """Unfinished tasks (a fifth of task_events' tasks) end up filling the window and are
    then evicted in arrival order; a duplicated task-received adds no index entry."""
    max_tasks = 1500
    base = task_records_alive()
    svc = service(max_tasks=max_tasks)
    events = task_events(12_000)
    peak = 0
    for start in range(0, len(events), 3000):
        chunk = events[start : start + 3000]
        svc.apply_events(chunk + [e for e in chunk if e["type"] == "task-received"])
        peak = max(peak, task_records_alive() - base)
    assert peak <= max_tasks + index_slack(max_tasks), peak
    assert svc.query_tasks(limit=None).total == max_tasks


def test_newest_first_listing_after_evictions_and_a_late_old_task():
    """The received-time index clears evicted entries at its front; a task received before
    them that arrives late is inserted there and still listed, last."""
    svc = service(max_tasks=3)
    for i, u in enumerate("abcd"):
        svc.apply_events(lifecycle(u, float(i + 1)))  # d evicts a
    svc.apply_events([ev("task-received", "late", 0.5, name="app.add")])  # evicts b
    page = svc.query_tasks(limit=3)
    assert [t["uuid"] for t in page.tasks] == ["d", "c", "late"]
    svc.apply_events(lifecycle("e", 5.0))  # evicts c (finished before the unfinished late)
    assert [t["uuid"] for t in svc.query_tasks(limit=3).tasks] == ["e", "d", "late"]


def test_malformed_and_unknown_events_are_counted_and_skipped():
    svc = service()
    svc.apply_events([
        {"no": "type"},
        ev("task-received", None, name="x"),  # no uuid
        ev("task-received", "t1", "yesterday"),  # bad timestamp
        ev("worker-custom-thing"),
        ev("task-received", "ok", 1.0, name="x"),
    ])  # fmt: skip
    f = svc.figures()
    assert (f["events_received"], f["events_malformed"], f["events_applied"]) == (5, 3, 2)
    assert f["events_unknown"] == 1
    assert svc.task("ok")["name"] == "x"
    assert svc.worker("w1@h")["worker-custom-thing"] == 1


class FakeClock:
    """Stands in for the ``time`` module inside service.py: time moves only when told."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    import flask_celerymon.monitor.housekeeping as housekeeping_module
    import flask_celerymon.monitor.service as service_module

    fake = FakeClock()
    monkeypatch.setattr(service_module, "time", fake)
    monkeypatch.setattr(housekeeping_module, "time", fake)
    return fake


def test_worker_is_offline_when_heartbeats_expire_or_it_says_so(clock):
    svc = service(worker_offline_after=10)
    svc.apply_events([ev("worker-online", freq=2.0, sw_ident="py-celery")])
    clock.now += 9.9
    assert svc.worker("w1@h")["status"] is True
    clock.now += 0.2
    assert svc.worker("w1@h")["status"] is False
    svc.apply_events([ev("worker-heartbeat", active=3, loadavg=[1.0, 0.5, 0.2])])
    w = svc.worker("w1@h")
    assert (w["status"], w["active"], w["loadavg"]) == (True, 3, [1.0, 0.5, 0.2])
    svc.apply_events([ev("worker-offline")])
    assert svc.worker_status() == {"w1@h": False}


def test_default_expiry_is_twice_the_heartbeat_frequency(clock):
    svc = service()
    svc.apply_events([ev("worker-heartbeat", freq=5.0)])
    clock.now += 9.9
    assert svc.worker("w1@h")["status"] is True
    clock.now += 0.2
    assert svc.worker("w1@h")["status"] is False


def test_worker_counters_count_every_event_type():
    svc = service()
    svc.apply_events(task_events(8))
    w = svc.worker("w-0@host")
    assert w["task-received"] == 3
    assert w["task-succeeded"] + w["task-failed"] + 0 <= w["task-started"]
    counters = svc.counters()
    assert counters["tasks"]["app.add"]["task-received"] == 3
    assert counters["workers"]["w-1@host"]["task-received"] == 3


def test_purged_worker_disappears_everywhere_and_listeners_hear_it(clock):
    svc = service(worker_offline_after=5, purge_offline_workers=60)
    heard = []
    svc.add_purge_listener(heard.append)
    sub = svc.subscribe(kinds=["worker-purged"])
    svc.apply_events([ev("worker-online", host="gone@h"), ev("worker-online", host="stay@h")])
    clock.now += 30
    svc._purge_offline()  # offline, but not for long enough yet
    assert svc.worker("gone@h") is not None
    clock.now += 36
    svc.apply_events([ev("worker-heartbeat", host="stay@h")])
    svc._purge_offline()
    assert svc.worker("gone@h") is None
    assert "gone@h" not in svc.counters()["workers"]
    assert [w["hostname"] for w in svc.workers()] == ["stay@h"]
    assert heard == ["gone@h"]
    assert [h for _, h in svc.purged_workers()] == ["gone@h"]
    assert sub.get(timeout=1) == [{"type": "worker-purged", "id": "gone@h", "data": None}]


def test_event_listeners_see_each_event_with_its_task():
    svc = service()
    seen = []
    svc.add_listener(lambda e, t: seen.append((e["type"], t.name if t else None, t and t.runtime)))
    svc.apply_events([
        ev("task-received", "t1", 1.0, name="app.add"),
        ev("task-succeeded", "t1", 2.0, runtime=0.25),
        ev("worker-heartbeat"),
    ])  # fmt: skip
    assert seen == [
        ("task-received", "app.add", None),
        ("task-succeeded", "app.add", 0.25),
        ("worker-heartbeat", None, None),
    ]


def test_a_failing_listener_never_stops_ingest():
    svc = service()
    svc.add_listener(lambda e, t: 1 / 0)
    svc.apply_events([ev("task-received", "t1", 1.0, name="a")])
    assert svc.task("t1") is not None
    assert svc.figures()["listener_errors"] == 1


def test_query_filters_sorts_and_pages_the_window():
    svc = service()
    svc.apply_events(task_events(30))
    page = svc.query_tasks(state="FAILURE", sort_by="received", limit=3, offset=1)
    assert page.total == 6
    assert [t["uuid"][:8] for t in page.tasks] == ["00000007", "0000000b", "0000000f"]
    by_runtime = svc.query_tasks(sort_by="-runtime", limit=None).tasks
    runtimes = [t["runtime"] for t in by_runtime if t["runtime"] is not None]
    assert runtimes == sorted(runtimes, reverse=True)
    assert by_runtime[-1]["runtime"] is None  # missing values last when descending
    assert svc.query_tasks(sort_by="runtime", limit=1).tasks[0]["runtime"] is None
    assert svc.query_tasks(received_start=1_700_000_010, received_end=1_700_000_012).total == 3
    assert svc.query_tasks(started_start=1_700_000_028.0).total == 1
    assert svc.query_tasks(worker=["w-0@host", "w-1@host"], name="app.add").total == 10
    assert svc.query_tasks(state="All").total == 30


def test_query_rejects_bad_arguments_with_search_errors():
    svc = service()
    with pytest.raises(SearchError, match="cannot sort by 'bogus'"):
        svc.query_tasks(sort_by="bogus")
    with pytest.raises(SearchError, match="offset must be an integer >= 0, not -1"):
        svc.query_tasks(offset=-1)
    with pytest.raises(SearchError, match="received_start must be a Unix time or a datetime"):
        svc.query_tasks(received_start="2024-01-01")
    with pytest.raises(SearchError, match="source='store' needs a history store"):
        svc.query_tasks(source="store")


def test_subscription_coalesces_updates_per_task():
    svc = service()
    sub = svc.subscribe(kinds=["task"])
    svc.apply_events([
        ev("task-received", "t1", 1.0, name="a"),
        ev("task-started", "t1", 2.0),
        ev("task-succeeded", "t1", 3.0),
        ev("task-received", "t2", 4.0, name="a"),
    ])  # fmt: skip
    updates = sub.get(timeout=1)
    assert [(u["id"], u["data"]["state"]) for u in updates] == [
        ("t1", "SUCCESS"),
        ("t2", "RECEIVED"),
    ]
    assert sub.get(timeout=0.01) == []


def test_slow_subscriber_is_dropped_without_slowing_ingest():
    svc = service()
    slow = svc.subscribe(kinds=["task"], buffer=5)
    fast = svc.subscribe(kinds=["task"], task_ids=["t0"])
    svc.apply_events(ev("task-received", f"t{i}", float(i), name="a") for i in range(50))
    assert slow.closed
    with pytest.raises(EOFError, match="dropped: more than 5 updates waiting"):
        slow.get(timeout=0)
    assert [u["id"] for u in fast.get(timeout=1)] == ["t0"]
    f = svc.figures()
    assert (f["subscribers"], f["subscribers_dropped"]) == (1, 1)
    assert svc.query_tasks().total == 50
    fast.close()
    assert svc.figures()["subscribers"] == 0


def test_task_stats_count_finished_tasks_per_minute_and_name():
    svc = service()
    svc.apply_events(task_events(120, start=1_700_000_000.0))
    stats = svc.task_stats(since=1_700_000_000.0, until=1_700_000_000.0 + 120, bucket=60)
    add = [s for s in stats if s["name"] == "app.add"]
    assert [s["start"] for s in add] == [1_699_999_980.0, 1_700_000_040.0, 1_700_000_100.0]
    total = sum(s["succeeded"] + s["failed"] for s in stats)
    assert total == 96
    assert all(
        s["runtime_p50"] <= s["runtime_p95"] <= s["runtime_max"] for s in stats if s["succeeded"]
    )


@settings(max_examples=60, deadline=None)
@given(
    times=st.lists(st.integers(0, 50), min_size=1, max_size=60),
    max_tasks=st.integers(3, 30),
    limit=st.integers(1, 25),
    offset=st.integers(0, 10),
)
def test_default_listing_matches_a_full_sort(times, max_tasks, limit, offset):
    svc = service(max_tasks=max_tasks)
    events = []
    for i, t in enumerate(times):
        uuid = f"t{i % 40}"  # some tasks are received again (retries)
        events.append(ev("task-received", uuid, float(t) + i / 1000, name="a"))
        if i % 3 == 0:
            events.append(ev("task-succeeded", uuid, float(t) + 1))
    svc.apply_events(events)
    fast = svc.query_tasks(limit=limit, offset=offset)
    full = svc.query_tasks(limit=limit, offset=offset, received_start=-1.0)
    assert fast.total == full.total
    assert [t["uuid"] for t in fast.tasks] == [t["uuid"] for t in full.tasks]


def test_worker_churn_stays_bounded(tmp_path):
    svc = service(max_workers=3, db=str(tmp_path / "m.sqlite3"))
    svc.start()
    for i in range(10):
        svc.apply_events(
            [
                ev("worker-online", host=f"pod-{i}@k8s"),
                ev("task-received", f"t{i}", float(i), host=f"pod-{i}@k8s", name="a"),
            ]
        )
    svc.flush()
    assert [w["hostname"] for w in svc.workers()] == ["pod-7@k8s", "pod-8@k8s", "pod-9@k8s"]
    assert sorted(svc._store.load_workers()) == ["pod-7@k8s", "pod-8@k8s", "pod-9@k8s"]
    assert svc.query_tasks(search="pod-1@k8s").total == 1  # tasks keep their worker
    svc.stop()


def test_a_task_sent_after_the_worker_received_it_by_the_clocks_is_still_sent_first():
    # task-sent is stamped by the client after the message left: it can read later than
    # the worker's task-received, and arrive last
    svc = service()
    svc.apply_events([ev("task-received", "late-sent", ts=100.0, name="app.x"),
                      ev("task-started", "late-sent", ts=100.1),
                      ev("task-succeeded", "late-sent", ts=100.2),
                      ev("task-sent", "late-sent", ts=100.05, host="gen1@c")])  # fmt: skip
    hist = [(h["state"], h["timestamp"]) for h in svc.task("late-sent")["history"]]
    assert hist == [("PENDING", 100.05), ("RECEIVED", 100.0), ("STARTED", 100.1),
                    ("SUCCESS", 100.2)]  # fmt: skip


def test_reads_on_a_stopped_service_start_no_thread(tmp_path):
    import threading

    svc = MonitorService(
        Celery("r", broker="memory://"),
        MonitorSettings(db=str(tmp_path / "m.sqlite3"), enable_events=False),
    )
    svc.apply_events([ev("task-received", "t1", 1.0, name="app.add")])
    before = set(threading.enumerate())
    assert svc.task("t1")["state"] == "RECEIVED"
    assert svc.workers()[0]["hostname"] == "w1@h"
    assert svc.worker("w1@h") is not None
    assert svc.worker_status() == {"w1@h": True}
    assert svc.query_tasks().total == 1
    assert svc.task_types() == ["app.add"]
    assert svc.counters()["tasks"]["app.add"] == {"task-received": 1}
    assert svc.task_stats(since=0, until=10) == []
    assert svc.inspect() == {"w1@h": {"timestamp": None}}
    assert svc.figures()["running"] is False
    assert set(threading.enumerate()) == before
    assert not svc.running and svc.role == "stopped"
    assert not (tmp_path / "m.sqlite3").exists()  # no store opened either


def test_task_names_off_the_wire_are_counted_one_by_one_up_to_a_bound():
    """Names come from events, so their counters are bounded as the metrics' labels are: past
    ``max_task_names`` the events are counted together, and that key is never listed."""
    svc = service()
    st = svc._state
    st.max_task_names = 5
    now = time.time()
    svc.apply_events(
        [ev("task-received", f"t{i}", now + i, name=f"app.task{i}") for i in range(40)]
    )
    counters = svc.counters()["tasks"]
    assert len(counters) == 6, sorted(counters)
    assert sum(c["task-received"] for c in counters.values()) == 40
    assert counters["__other__"] == {"task-received": 35}
    assert "__other__" not in svc.task_types()
    assert len(svc.task_types()) == 40  # every name of the window is still listed
    page = svc.query_tasks(search="name:task3")
    assert {t["name"] for t in page.tasks} == {"app.task3"} | {f"app.task3{i}" for i in range(10)}


def test_the_default_listing_pages_equal_received_times_in_one_order():
    # Ten tasks a received time, and tasks only sent (no received time: last). Every page,
    # the last ones too (fewer indexed tasks than offset + limit), and the unpaged listing
    # give one order: the pages put together are the listing, each task once. The last
    # page was sorted instead of read off the index, and repeated and skipped tasks.
    state = State(max_tasks=1000)
    for i in range(95):
        state.apply({"type": "task-received", "uuid": f"u{i:03d}", "timestamp": 1e9 + i // 10,
                     "hostname": "w"}, now=1e9)  # fmt: skip
    for i in range(7):
        state.apply({"type": "task-sent", "uuid": f"s{i}", "timestamp": 1e9}, now=1e9)
    full = [t.uuid for t in state.query(TaskQuery(limit=None))[1]]
    assert len(full) == len(set(full)) == 102
    assert full[-7:] == [f"s{i}" for i in range(7)]
    for limit in (20, 30, 7):
        seen: list[str] = []
        for offset in range(0, 110, limit):
            total, page = state.query(TaskQuery(offset=offset, limit=limit))
            assert total == 102
            seen += [t.uuid for t in page]
        assert seen == full, limit
