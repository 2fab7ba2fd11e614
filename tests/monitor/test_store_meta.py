"""The store's meta (restart gaps) in every store kind, and who writes it in a cluster."""

from __future__ import annotations

import os
import time

from celery import Celery

from flask_celerymon.monitor import MonitorService, MonitorSettings
from flask_celerymon.monitor.insight.engine import Insight
from flask_celerymon.monitor.stores import open_store
from tests.monitor.conftest import task_events


def test_the_store_keeps_meta_across_reopening_and_deletes_a_none(store_db):
    store = open_store(store_db)
    assert store.get_meta("consuming_until") is None
    store.set_meta({"consuming_until": "1700000000.5", "clean_stop": "1"})
    store.set_meta({"consuming_until": "1700000001.5", "clean_stop": None})
    store.close()
    store = open_store(store_db)
    assert store.get_meta("consuming_until") == "1700000001.5"
    assert store.get_meta("clean_stop") is None
    store.close()


def test_task_stats_count_the_retries_before_the_last_state_in_every_store(store_db):
    store = open_store(store_db)
    svc = MonitorService(Celery(broker="memory://"), MonitorSettings(db=False), autostart=False)
    now = 1_700_000_000.0
    svc.apply_events(
        [
            {
                "type": "task-received",
                "uuid": "u1",
                "hostname": "w",
                "timestamp": now,
                "name": "app.add",
                "retries": 2,
            },
            {
                "type": "task-succeeded",
                "uuid": "u1",
                "hostname": "w",
                "timestamp": now + 1,
                "runtime": 0.5,
            },
        ]  # fmt: skip
    )
    store.write_tasks([t.row() for t in svc._state.tasks.values()])
    (bucket,) = store.task_stats(now - 60, now + 60, 3600)
    assert (bucket["succeeded"], bucket["retried"]) == (1, 2)
    store.close()


def _follower(store_db: str, monkeypatch) -> MonitorService:
    """A service with CELERY_MONITOR_SINGLE_INGESTER that follows (the lease is elsewhere)."""
    settings = MonitorSettings(
        db=store_db, enable_events=False, inspect_timeout=0.2, single_ingester=True
    )
    svc = MonitorService(Celery(broker="memory://"), settings, autostart=False)
    monkeypatch.setattr(svc, "_start_coordinated", lambda: setattr(svc, "_following", True))
    return svc


def test_a_follower_leaves_the_restart_gap_and_the_meta_to_the_ingester(store_db, monkeypatch):
    store = open_store(store_db)
    store.set_meta({"consuming_until": "1700000000.5"})  # the ingester was killed
    store.close()
    svc = _follower(store_db, monkeypatch)
    reconciled = []
    monkeypatch.setattr(svc, "reconcile", lambda: reconciled.append(1) or 0)
    svc.start()
    assert svc.role == "follower"
    assert svc._gap_open is None and svc._store_unfinished == []
    time.sleep(1.6)  # the housekeeping thread's first reconcile is due after 1 s
    assert reconciled == []
    svc.stop()
    store = open_store(store_db)
    assert store.get_meta("consuming_until") == "1700000000.5"
    assert store.get_meta("clean_stop") is None
    store.close()


def test_taking_the_lease_opens_the_gap_since_the_last_ingester(store_db, monkeypatch):
    writer = MonitorService(
        Celery(broker="memory://"), MonitorSettings(db=store_db, enable_events=False)
    )
    writer.start()
    writer.apply_events(task_events(5))  # task 4 stays RECEIVED
    writer.stop()
    store = open_store(store_db)
    # as a killed ingester leaves it
    store.set_meta({"consuming_until": "1700000000.5", "clean_stop": None})
    store.close()
    svc = _follower(store_db, monkeypatch)
    svc.start()
    svc._lead()
    try:
        assert svc.role == "ingester"
        assert svc.wait_connected(10)
        (gap,) = svc.figures()["gaps"]
        assert gap["start"] == 1700000000.5
        assert gap["reason"] == "the monitor stopped without a clean shutdown (killed?)"
        assert svc._store_unfinished == ["00000004-0000-4000-8000-000000000000"]
    finally:
        svc.stop()
    store = open_store(store_db)
    assert store.get_meta("clean_stop") == "1"
    store.close()


def test_insight_over_a_postgresql_history_keeps_its_tables_in_that_database(
    postgres_server, tmp_path, monkeypatch
):
    """Issue 15: with a PostgreSQL history the insight tables are shared by every process
    (they used to be in memory per process); no file is written."""
    from flask_celerymon.monitor.insight.pg_store import PgInsightStore
    from flask_celerymon.monitor.insight.rollups import Failure

    monkeypatch.chdir(tmp_path)
    url = postgres_server.create_database()

    def insight() -> Insight:
        return Insight(MonitorService(Celery(broker="memory://"),
                                      MonitorSettings(db=url, enable_events=False)))  # fmt: skip

    ins, other = insight(), insight()
    assert isinstance(ins.store, PgInsightStore)
    assert ins.store.path == url.partition("?")[0]  # no password in this test's URL
    assert ins.backfill(time.time()) == 0  # no tasks table beside it: nothing to backfill
    ins.store.write({}, [Failure("0123456789abcdef", "t.x", "KeyError", "'k'", "KeyError('k')",
                                 "Traceback...", "u1", "w1", 1_700_000_000.0, "failure")])  # fmt: skip
    (group,) = other.store.error_groups()
    assert (group["id"], group["failures"], group["workers"]) == ("0123456789abcdef", 1, {"w1": 1})
    ins.store.close()
    other.store.close()
    assert os.listdir(tmp_path) == []
