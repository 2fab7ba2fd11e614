"""The SQLite history: restarts, retention, search indexing."""

from __future__ import annotations

import sqlite3
import time

import pytest
from celery import Celery

from flask_celerymon.monitor import MonitorService, MonitorSettings
from flask_celerymon.monitor.query import parse
from flask_celerymon.monitor.settings import MonitorSettings as Settings
from flask_celerymon.monitor.sqlite_store import SQLiteStore
from flask_celerymon.monitor.store import TASK_COLUMNS, TaskQuery

from .conftest import task_events


def app() -> Celery:
    return Celery("store", broker="memory://")


def test_from_config_puts_the_store_in_the_instance_folder():
    s = Settings.from_config({"CELERY_MONITOR_MAX_TASKS": 10}, "/srv/app/instance")
    assert s.db_path == "/srv/app/instance/celerymon.sqlite3"
    assert s.max_tasks == 10
    assert Settings.from_config({"CELERY_MONITOR_DB": False}, "/x").db_path is None
    assert Settings.from_config({"CELERY_MONITOR_DB": "/d/m.db"}, "/x").db_path == "/d/m.db"
    assert MonitorSettings().db_path is None


def test_store_file_uses_wal_and_creates_its_directory(tmp_path):
    path = tmp_path / "deep" / "dir" / "m.sqlite3"
    store = SQLiteStore(str(path))
    store.close()
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_restart_answers_from_the_store_without_replaying(store_db):
    db = store_db
    first = MonitorService(app(), MonitorSettings(db=db, enable_events=False, inspect_timeout=0.2))
    first.start()
    first.apply_events(task_events(50))
    first.apply_events([{"type": "worker-online", "hostname": "w-0@host",
                         "timestamp": time.time(), "freq": 2.0}])  # fmt: skip
    first.stop()

    second = MonitorService(app(), MonitorSettings(db=db, enable_events=False, inspect_timeout=0.2))
    t0 = time.perf_counter()
    second.start()  # reads never start the service
    page = second.query_tasks(state="FAILURE", limit=5)
    elapsed = time.perf_counter() - t0
    assert page.total == 10
    assert elapsed < 1.0
    assert second.figures()["events_received"] == 0
    t = second.task("00000003-0000-4000-8000-000000000000")
    assert t["state"] == "FAILURE"
    assert t["exception"] == "ValueError('abc')"
    assert [h["state"] for h in t["history"]] == ["RECEIVED", "STARTED", "FAILURE"]
    assert second.task_types() == ["app.add", "app.fail_customer", "app.user_id_check"]
    assert second.query_tasks(search="customer-3", limit=None).total == 7
    assert second.worker("w-0@host")["freq"] == 2.0
    second.stop()


def test_unfinished_tasks_are_stored_on_stop_and_updated_later(store_db):
    db = store_db
    svc = MonitorService(
        app(), MonitorSettings(db=db, enable_events=False, max_tasks=5, inspect_timeout=0.2)
    )
    svc.start()
    svc.apply_events([{"type": "task-received", "uuid": "slow", "hostname": "w",
                       "timestamp": 1.0, "name": "app.slow"}])  # fmt: skip
    svc.apply_events(task_events(20))  # pushes "slow" out of the 5-task window
    assert svc.task("slow")["state"] == "RECEIVED"
    svc.apply_events([{"type": "task-succeeded", "uuid": "slow", "hostname": "w",
                       "timestamp": 9.0, "result": "'done'"}])  # fmt: skip
    svc.stop()
    again = MonitorService(app(), MonitorSettings(db=db, enable_events=False, inspect_timeout=0.2))
    again.start()
    t = again.task("slow")
    assert (t["state"], t["result"]) == ("SUCCESS", "'done'")
    again.stop()


def test_retention_keeps_the_newest_tasks_within_count_and_age(store_db):
    db = store_db
    now = time.time()
    svc = MonitorService(
        app(),
        MonitorSettings(
            db=db, enable_events=False, retention_tasks=30, retention_days=1, inspect_timeout=0.2
        ),
    )
    svc.start()
    old = task_events(10, start=now - 3 * 86400)
    svc.apply_events([{**e, "uuid": "old-" + e["uuid"]} for e in old])
    svc.apply_events(task_events(40, start=now - 100))
    svc.flush()
    assert svc.prune() == 20
    page = svc.query_tasks(limit=None, source="store")
    assert page.total == 30
    assert not any(t["uuid"].startswith("old-") for t in page.tasks)
    assert min(t["received"] for t in page.tasks) == now - 100 + 10
    svc.stop()


def test_search_index_stays_right_when_indexed_rows_change(tmp_path):
    store = SQLiteStore(str(tmp_path / "m.sqlite3"))
    svc = MonitorService(
        app(),
        MonitorSettings(db=str(tmp_path / "m.sqlite3"), enable_events=False, inspect_timeout=0.2),
    )
    svc.start()
    svc.apply_events([{"type": "task-started", "uuid": "t1", "hostname": "w", "timestamp": 1.0,
                       "name": "app.x"}])  # fmt: skip
    svc.flush()
    assert store.index_pending(100) == 1
    assert store.unindexed() == 0
    svc.apply_events([{"type": "task-succeeded", "uuid": "t1", "hostname": "w",
                       "timestamp": 2.0, "result": "'needle-in-result'"}])  # fmt: skip
    svc.flush()
    assert svc.query_tasks(search="result:needle", source="store").total == 1
    assert svc.query_tasks(search="needle-in", source="store").total == 1
    svc.stop()
    store.close()


def test_an_unreadable_store_is_set_aside_and_a_new_one_started(tmp_path):
    path = tmp_path / "m.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    store = SQLiteStore(str(path))
    assert store.count() == 0
    store.close()
    assert [p.name.split("-")[0] for p in tmp_path.iterdir() if "corrupt" in p.name] == [
        "m.sqlite3.corrupt"
    ]


def test_search_finds_rows_indexed_after_a_term_was_first_searched(tmp_path):
    db = str(tmp_path / "m.sqlite3")
    svc = MonitorService(app(), MonitorSettings(db=db, enable_events=False, inspect_timeout=0.2))
    svc.start()
    store = svc._store
    svc.apply_events([{"type": "task-received", "uuid": "a", "hostname": "w", "timestamp": 1.0,
                       "name": "app.x", "args": "('plain',)"}])  # fmt: skip
    svc.flush()
    store.index_pending(100)
    assert svc.query_tasks(search="zebra", source="store").total == 0
    svc.apply_events([{"type": "task-received", "uuid": "b", "hostname": "w", "timestamp": 2.0,
                       "name": "app.x", "args": "('zebra',)"}])  # fmt: skip
    svc.flush()
    assert svc.query_tasks(search="zebra", source="store").total == 1  # not indexed yet
    store.index_pending(100)
    assert store.unindexed() == 0
    assert svc.query_tasks(search="zebra", source="store").total == 1  # indexed now
    svc.stop()


def test_a_failed_write_keeps_the_changes_for_the_next_flush(store_db, monkeypatch):
    import pytest

    db = store_db
    settings = MonitorSettings(db=db, enable_events=False, inspect_timeout=0.2, flush_interval=3600)
    svc = MonitorService(app(), settings)
    svc.start()
    store = svc._store
    real = store.write_tasks
    unavailable = store.unavailable_errors[0]  # sqlite3's or psycopg's OperationalError

    def disk_full(rows):
        raise unavailable("database or disk is full")

    monkeypatch.setattr(store, "write_tasks", disk_full)
    svc.apply_events(task_events(3))
    with pytest.raises(unavailable):
        svc.flush()
    monkeypatch.setattr(store, "write_tasks", real)
    assert svc.flush() == 3
    assert svc.query_tasks(source="store").total == 3
    svc.stop()


def row(uuid: str, **values) -> tuple:
    return tuple(values.get(c, uuid if c == "uuid" else None) for c in TASK_COLUMNS)


def test_the_kept_count_follows_inserts_updates_and_retention(tmp_path):
    store = SQLiteStore(str(tmp_path / "count.sqlite3"))
    try:
        rows = [row(f"t{i}", received=float(i), timestamp=float(i)) for i in range(30)]
        store.write_tasks(rows[:20])
        store.write_tasks(rows[10:30])  # 10 updates, 10 inserts
        assert store.count() == 30
        assert store.query(TaskQuery(limit=1))[0] == 30
        assert store.prune(25, older_than=3.0) == 5  # 3 by age, 2 by count
        counted = store._reader.execute("SELECT count(*) FROM tasks").fetchone()[0]
        assert store.count() == 25 == counted
    finally:
        store.close()


def test_a_store_written_before_the_kept_count_counts_its_tasks_on_open(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    store = SQLiteStore(path)
    store.write_tasks([row(f"t{i}", received=float(i)) for i in range(7)])
    with store._write_lock:  # as a release without the counter left it
        store._writer.executescript(
            "DROP TRIGGER IF EXISTS tasks_counted_in; DROP TRIGGER IF EXISTS tasks_counted_out;"
            "DROP TABLE task_count;"
        )
    store.close()
    again = SQLiteStore(path)
    try:
        assert again.count() == 7
        again.write_tasks([row("t99", received=99.0)])
        assert again.count() == 8
    finally:
        again.close()


def _counted(store: SQLiteStore) -> int:
    return store._reader.execute("SELECT count(*) FROM tasks").fetchone()[0]


def test_the_kept_count_is_exact_for_repeated_uuids_in_a_batch_and_reused_ids(tmp_path):
    store = SQLiteStore(str(tmp_path / "count.sqlite3"))
    try:
        # one uuid three times in a batch: one insert, two upserts that update
        store.write_tasks([row("a", timestamp=1.0), row("a", timestamp=2.0),
                           row("b", timestamp=3.0), row("a", timestamp=4.0)])  # fmt: skip
        assert store.count() == 2 == _counted(store)
        store.write_tasks([row("a", timestamp=6.0), row("b", timestamp=5.0)])  # updates only
        assert store.count() == 2 == _counted(store)
        # prune the newest row (the largest id): the next insert takes its id again
        assert store.prune(10, older_than=5.5) == 1
        top = store._reader.execute("SELECT max(id) FROM tasks").fetchone()[0]
        store.write_tasks([row("c", timestamp=7.0), row("a", timestamp=8.0)])
        assert top == 1
        new_id = store._reader.execute("SELECT id FROM tasks WHERE uuid = 'c'").fetchone()[0]
        assert new_id == 2  # b's id, taken again
        assert store.count() == 2 == _counted(store)
        # everything pruned, then written again from id 1
        assert store.prune(10, older_than=100.0) == 2
        assert store.count() == 0 == _counted(store)
        store.write_tasks([row(f"n{i}", timestamp=200.0 + i) for i in range(5)])
        assert store.count() == 5 == _counted(store)
    finally:
        store.close()


def test_the_kept_count_matches_count_star_over_random_batches_and_prunes(tmp_path):
    import random

    rnd = random.Random(14)
    store = SQLiteStore(str(tmp_path / "count.sqlite3"))
    try:
        clock = 0.0
        for _ in range(60):
            batch = []
            for _ in range(rnd.randrange(1, 40)):
                clock += 1.0
                batch.append(row(f"t{rnd.randrange(300)}", timestamp=clock))
            store.write_tasks(batch)
            if rnd.random() < 0.3:
                store.prune(rnd.randrange(20, 200), older_than=clock - rnd.randrange(50, 400))
            assert store.count() == _counted(store)
    finally:
        store.close()


def test_a_rolled_back_write_leaves_the_kept_count_unchanged(tmp_path):
    store = SQLiteStore(str(tmp_path / "count.sqlite3"))
    try:
        store.write_tasks([row("a")])
        with pytest.raises(sqlite3.Error):
            store.write_tasks([row("b"), row(None)])  # uuid NOT NULL: the batch fails whole
        assert store.count() == 1 == _counted(store)
        store.write_tasks([row("b")])
        assert store.count() == 2 == _counted(store)
    finally:
        store.close()


def test_a_written_row_replaces_every_column_also_with_nulls(tmp_path):
    store = SQLiteStore(str(tmp_path / "nulls.sqlite3"))
    try:
        full = row("a", name="n", state="FAILURE", result="boom", exception="E()", retries=2,
                   received=1.0, history=(("received", 1.0),))  # fmt: skip
        store.write_tasks([full, row("b", state="PENDING")])
        assert store.get_task("a")["exception"] == "E()"
        # rows with NULLs in other columns, in one batch: each written as it is, in order
        store.write_tasks([row("b", name="m", retries=0), row("a", state="SUCCESS"),
                           row("c", result="r"), row("b", state="STARTED")])  # fmt: skip
        a, b, c = (store.get_task(u) for u in "abc")
        assert (a["state"], a["name"], a["result"], a["exception"], a["retries"]) == (
            "SUCCESS", None, None, None, None)  # fmt: skip
        assert (b["state"], b["name"], b["retries"]) == ("STARTED", None, None)
        assert c["result"] == "r"
        ids = dict(store._reader.execute("SELECT uuid, id FROM tasks").fetchall())
        assert ids["a"] < ids["b"] < ids["c"]
        assert store.count() == 3 == _counted(store)
    finally:
        store.close()


#: The counting triggers of the stores written before the count was kept by the writers.
_OLD_COUNT_TRIGGERS = """
CREATE TRIGGER tasks_counted_in AFTER INSERT ON tasks BEGIN
    UPDATE task_count SET n = n + 1;
END;
CREATE TRIGGER tasks_counted_out AFTER DELETE ON tasks BEGIN
    UPDATE task_count SET n = n - 1;
END;
"""


def test_a_store_with_the_old_counting_triggers_loses_them_on_open_and_keeps_its_count(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    SQLiteStore(path).close()
    old = sqlite3.connect(path, isolation_level=None)  # the file as the earlier release left it
    old.executescript(_OLD_COUNT_TRIGGERS)
    cols = ", ".join(TASK_COLUMNS)
    marks = ", ".join("?" for _ in TASK_COLUMNS)
    old.executemany(f"INSERT INTO tasks ({cols}) VALUES ({marks})",
                    [row(f"t{i}", timestamp=float(i)) for i in range(9)])  # fmt: skip
    old.execute("DELETE FROM tasks WHERE uuid = 't0'")
    assert old.execute("SELECT n FROM task_count").fetchone()[0] == 8
    old.close()
    store = SQLiteStore(path)
    try:
        triggers = store._reader.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'tasks_counted%'"
        ).fetchall()
        assert triggers == []
        assert store.count() == 8
        store.write_tasks([row("t1", timestamp=1.5), row("t99", timestamp=99.0)])
        assert store.count() == 9 == _counted(store)
        assert store.prune(9, older_than=3.0) == 2
        assert store.count() == 7 == _counted(store)
    finally:
        store.close()


def test_a_search_index_of_an_earlier_version_is_rebuilt_and_finds_the_same_rows(tmp_path):
    db = str(tmp_path / "m.sqlite3")
    svc = MonitorService(app(), MonitorSettings(db=db, enable_events=False, inspect_timeout=0.2))
    svc.start()
    svc.apply_events([{"type": "task-received", "uuid": f"t{i}", "hostname": "w",
                       "timestamp": float(i), "name": "app.x", "args": f"('zebra-{i}',)"}
                      for i in range(1, 6)])  # fmt: skip
    svc.flush()
    svc._store.index_pending(100)
    before = svc.query_tasks(search="zebra-3", source="store")
    svc.stop()
    # the index as an earlier version made it (positions kept, the default automerge)
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("DROP TABLE tasks_fts")
    c.execute("CREATE VIRTUAL TABLE tasks_fts USING fts5(args, kwargs, result, content='tasks', "
              "content_rowid='id', tokenize='trigram case_sensitive 1')")  # fmt: skip
    c.execute("INSERT INTO tasks_fts(tasks_fts) VALUES ('rebuild')")
    c.close()
    store = SQLiteStore(db)
    sql = store._reader.execute("SELECT sql FROM sqlite_master WHERE name = 'tasks_fts'")
    assert "detail=column" in sql.fetchone()[0]
    automerge = "SELECT v FROM tasks_fts_config WHERE k = 'automerge'"
    assert store._reader.execute(automerge).fetchone() == (8,)
    assert store.unindexed() == 5  # indexed again in the background
    assert store.index_pending(100) == 5
    store.close()
    svc = MonitorService(app(), MonitorSettings(db=db, enable_events=False, inspect_timeout=0.2))
    svc.start()
    after = svc.query_tasks(search="zebra-3", source="store")
    assert (after.total, [t["uuid"] for t in after.tasks]) == (1, ["t3"])
    assert [t["uuid"] for t in after.tasks] == [t["uuid"] for t in before.tasks]
    svc.stop()


def test_rows_written_after_the_newest_were_pruned_are_found_by_search(tmp_path):
    # the new rows take the pruned rows' ids again: they must not count as indexed
    store = SQLiteStore(str(tmp_path / "reuse.sqlite3"))
    try:
        store.write_tasks(
            [row(f"old{i}", args="['old-args']", timestamp=float(i)) for i in range(5)]
        )
        assert store.index_pending(100) == 5
        assert store.prune(100, older_than=10.0) == 5
        store.write_tasks(
            [row(f"new{i}", args="['fresh-args']", timestamp=20.0 + i) for i in range(3)]
        )
        assert store.query(TaskQuery(search=parse("fresh-args")))[0] == 3
        assert store.index_pending(100) == 3
        assert store.query(TaskQuery(search=parse("fresh-args")))[0] == 3
        assert store.query(TaskQuery(search=parse("old-args")))[0] == 0
        fts = store._reader.execute(
            "SELECT count(*) FROM tasks_fts WHERE tasks_fts MATCH '\"fre\"'"
        ).fetchone()[0]
        assert fts == 3
    finally:
        store.close()


def test_filters_and_searches_with_lone_surrogates_answer_as_the_window_does(store_db):
    # A JSON body carries a lone surrogate ("\ud800"): the stores cannot take one (the bulk
    # actions answered 500: UnicodeEncodeError). Filters and searches are compared with the
    # text the window and the store hold, where a surrogate is kept as its escape.
    svc = MonitorService(app(), Settings(db=store_db, enable_events=False, inspect_timeout=0.2))
    svc.start()
    try:
        now = time.time()
        svc.apply_events([
            {"type": "task-received", "uuid": "sur-1", "name": "job.\ud800x", "hostname": "w\udfff@h",
             "timestamp": now, "args": "('\ud800abc',)"},
            {"type": "task-received", "uuid": "plain-2", "name": "job.plain", "hostname": "w@h",
             "timestamp": now},
        ])  # fmt: skip
        svc.flush()
        for kw in ({"search": "\ud800abc"}, {"search": "\ud800x"}, {"name": "job.\ud800x"},
                   {"worker": ["w\udfff@h"]}, {"search": "name:\ud800 worker:\udfff"}):  # fmt: skip
            answers = {
                source: [t["uuid"] for t in svc.query_tasks(source=source, **kw).tasks]
                for source in ("window", "store")
            }
            assert answers == {"window": ["sur-1"], "store": ["sur-1"]}, kw
    finally:
        svc.stop()
