"""The housekeeping flush writes in slices (``FLUSH_SLICE`` rows a transaction) and lets the
others run between them, without losing what a flush promises: every change made before
``flush()`` is stored when it returns, a failed slice keeps exactly the unwritten rows (newer
changes win), the followers are told of every row written. Under gevent (``flask celery
monitor``'s default server) the slices are what keeps a request from waiting for a whole
flush; those cases run in a monkey-patched interpreter of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from celery import Celery

from flask_celerymon.monitor import MonitorService, MonitorSettings, housekeeping
from flask_celerymon.monitor.sqlite_store import WAL_LIMIT, SQLiteStore

from .conftest import task_events

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Followers:
    """Records what the ingester publishes to its followers (``coordinator.publish``)."""

    def __init__(self) -> None:
        self.tasks: list[str] = []

    def publish(self, uuids: list[str], hostnames: list[str]) -> None:
        self.tasks += uuids


def _service(tmp_path: Any) -> MonitorService:
    settings = MonitorSettings(
        db=str(tmp_path / "h.sqlite3"), enable_events=False, inspect_timeout=0.2,
        flush_interval=3600,
    )  # fmt: skip
    svc = MonitorService(Celery("slices", broker="memory://"), settings)
    svc.start()
    return svc


def _stored(svc: MonitorService) -> dict[str, str]:
    return {u: s for u, s in svc._store._reader.execute("SELECT uuid, state FROM tasks").fetchall()}


def test_a_flush_failing_in_a_slice_keeps_exactly_the_unwritten_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(housekeeping, "FLUSH_SLICE", 3)
    svc = _service(tmp_path)
    try:
        store = svc._store
        followers = svc._coordinator = _Followers()
        real = store.write_tasks
        calls: list[int] = []

        def third_slice_fails(rows):
            calls.append(len(rows))
            if len(calls) == 3:
                raise store.unavailable_errors[0]("database or disk is full")
            real(rows)

        monkeypatch.setattr(store, "write_tasks", third_slice_fails)
        events = task_events(10)
        svc.apply_events(events)
        order = list(svc._dirty)  # the flush writes in this order
        with pytest.raises(store.unavailable_errors[0]):
            svc.flush()
        assert calls == [3, 3, 3]
        assert set(_stored(svc)) == set(order[:6])
        assert list(svc._dirty) == order[6:]  # exactly the unwritten rows, kept
        assert followers.tasks == order[:6]  # told of what was written

        # a newer change to a kept row and to a written one: the newer wins
        kept, written = order[9], order[4]  # still RECEIVED (task_events: i % 5 == 4)
        now = time.time()
        svc.apply_events([{"type": "task-started", "uuid": u, "hostname": "w-0@host",
                           "timestamp": now} for u in (kept, written)])  # fmt: skip
        monkeypatch.setattr(store, "write_tasks", real)
        assert svc.flush() == 5  # the 4 kept, the written one changed again
        rows = _stored(svc)
        assert set(rows) == set(order)
        assert rows[kept] == rows[written] == "STARTED"
        assert sorted(followers.tasks) == sorted(order + [written])
        assert svc._dirty == {}
    finally:
        svc._coordinator = None  # a recorder, not a lease to give up
        svc.stop()


def test_a_refused_row_in_a_slice_drops_only_that_row(tmp_path, monkeypatch):
    monkeypatch.setattr(housekeeping, "FLUSH_SLICE", 4)
    svc = _service(tmp_path)
    try:
        store = svc._store
        real = store.write_tasks
        svc.apply_events(task_events(10))
        bad = list(svc._dirty)[5]

        def refuse_one(rows):
            if any(r[0] == bad for r in rows):
                raise ValueError("refused")
            real(rows)

        monkeypatch.setattr(store, "write_tasks", refuse_one)
        assert svc.flush() == 10
        assert len(_stored(svc)) == 9 and bad not in _stored(svc)
        assert svc._rows_dropped == 1
    finally:
        svc.stop()


def test_flush_waits_for_a_running_flush_and_stores_every_earlier_change(tmp_path, monkeypatch):
    monkeypatch.setattr(housekeeping, "FLUSH_SLICE", 5)
    svc = _service(tmp_path)
    try:
        store = svc._store
        real = store.write_tasks
        in_first = threading.Event()
        release = threading.Event()

        def slow_first_slice(rows):
            if not in_first.is_set():
                in_first.set()
                assert release.wait(10)
            real(rows)

        monkeypatch.setattr(store, "write_tasks", slow_first_slice)
        svc.apply_events(task_events(20))
        first = threading.Thread(target=svc.flush)
        first.start()
        assert in_first.wait(10)
        later = task_events(5, start=1_800_000_000.0)
        for e in later:
            e["uuid"] = "late-" + e["uuid"]
        svc.apply_events(later)
        second_done = threading.Event()
        second = threading.Thread(target=lambda: (svc.flush(), second_done.set()))
        second.start()
        assert not second_done.wait(0.3)  # waits for the running flush
        release.set()
        first.join(10)
        second.join(10)
        assert second_done.is_set()
        assert len(_stored(svc)) == 25
    finally:
        release.set()
        svc.stop()


def test_writes_leave_the_log_to_the_checkpoint(tmp_path):
    """The writer's COMMIT does not copy the log into the file (it cost 12 of 46 ms of a
    635-row write at 100,000 tasks); ``checkpoint()`` does, and the log is cut again."""
    store = SQLiteStore(str(tmp_path / "h.sqlite3"))
    try:
        big = "x" * 3000  # about a page a row
        rows = [(f"t{i}", "app.x", "SUCCESS", "w@h", big) for i in range(2_500)]
        cols = "uuid, name, state, worker, args"
        from flask_celerymon.monitor.store import TASK_COLUMNS

        full = [tuple(dict(zip(cols.split(", "), r)).get(c) for c in TASK_COLUMNS) for r in rows]
        for i in range(0, len(full), 500):
            store.write_tasks(full[i : i + 500])
        wal = str(tmp_path / "h.sqlite3-wal")
        assert os.path.getsize(wal) > 4096 * 2_000  # past the 1,000 pages of autocheckpoint
        assert store.checkpoint() == 0  # all of it copied
        store.write_tasks(full[:1])  # starts the log again, cut to the limit
        assert os.path.getsize(wal) <= WAL_LIMIT
        assert store.count() == 2_500
    finally:
        store.close()


_PATCHED = """
from gevent import monkey; monkey.patch_all()
import json, time, gevent
from celery import Celery
from flask_celerymon.monitor import MonitorService, MonitorSettings
from flask_celerymon.monitor import housekeeping
from tests.monitor.conftest import task_events

svc = MonitorService(Celery("g", broker="memory://"), MonitorSettings(
    db="h.sqlite3", enable_events=False, inspect_timeout=0.2, flush_interval=3600))
svc.start()
native = monkey.get_original("threading", "get_native_id")
store, real = svc._store, svc._store.checkpoint
threads = []
def checkpoint():
    threads.append(native())
    return real()
store.checkpoint = checkpoint
wakes = []
def ticker():
    while True:
        gevent.sleep(0.0005)
        wakes.append(time.perf_counter())
t = gevent.spawn(ticker)
out = {}
for name, n, start in (("light", 1_000, 1e9), ("backlog", 3_000, 2e9)):
    svc.apply_events(task_events(n, start=start))
    gevent.sleep(0.01)
    t0 = time.perf_counter()
    written = svc.flush()
    t1 = time.perf_counter()
    out[name] = {"written": written, "wakes": len([w for w in wakes if t0 < w < t1]),
                 "checkpoints_off_hub": len([i for i in threads if i != native()]),
                 "checkpoints": len(threads)}
    del threads[:]
t.kill()
out["stored"] = svc._store.count()
svc.stop()
print(json.dumps(out))
"""


def test_under_gevent_a_light_flush_lets_the_others_run_and_a_backlog_does_not(tmp_path):
    """A flush of 1,000 rows (20 slices) lets a greenlet that sleeps 0.5 ms wake between
    slices; a flush of 3,000 (more than COOPERATE_ROWS: a backlog) keeps the hub, so the event
    consumer cannot run ahead of the store; the log's checkpoint in gevent's thread pool
    runs in a native thread (a backlog's, after each 1,000-row slice, on the writer's)."""
    pytest.importorskip("gevent")
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_PATCHED)], capture_output=True, text=True,
        timeout=300, cwd=str(tmp_path),
        env={**os.environ, "PYTHONPATH": ROOT, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    light, backlog = got["light"], got["backlog"]
    assert light["written"] == 1_000
    assert light["wakes"] >= 1_000 // housekeeping.FLUSH_SLICE // 2
    assert light["checkpoints"] == light["checkpoints_off_hub"] == 1  # in a native thread
    assert backlog["written"] == 3_000
    assert backlog["wakes"] == 0
    assert backlog["checkpoints"] == 3 and backlog["checkpoints_off_hub"] == 0  # per slice
    assert got["stored"] == 3_000  # task_events numbers uuids from 0: the first 1,000 again
