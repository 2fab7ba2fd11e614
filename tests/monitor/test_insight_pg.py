"""The insight tables in PostgreSQL answer exactly as the SQLite ones (a real server).

The same events go through two engines, one over an in-memory SQLite insight store and one
over :class:`PgInsightStore`; every read of the engine, the analytics and the web views is
compared.
"""

from __future__ import annotations

import random
import time

import pytest
from celery import Celery

from flask_celerymon.monitor.insight import Insight, InsightSettings, analytics
from flask_celerymon.monitor.insight.pg_store import SCHEMA_VERSION, PgInsightStore
from flask_celerymon.monitor.pg_store import StoreVersionError
from flask_celerymon.monitor.service import MonitorService
from flask_celerymon.monitor.settings import MonitorSettings
from tests.monitor.test_insight import _events


def _engine(db: str | None) -> Insight:
    svc = MonitorService(Celery(broker="memory://"), MonitorSettings(db=db, enable_events=False))
    ins = Insight(svc, InsightSettings(), send=lambda url, body: "sent")
    svc.add_listener(ins._on_event)
    return ins


def _approx(value):
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-9, abs=1e-12)
    if isinstance(value, dict):
        return {k: _approx(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_approx(v) for v in value)
    return value


@pytest.fixture
def engines(postgres_url):
    lite, pg = _engine(None), _engine(postgres_url)
    assert isinstance(pg.store, PgInsightStore)
    yield lite, pg
    lite.store.close()
    pg.store.close()


def test_postgresql_insight_answers_as_sqlite_does(engines):
    lite, pg = engines
    start = 1_700_000_000.0
    evs = _events(1500, start, 2 * 86400, seed=3)
    rnd = random.Random(5)
    root = "root-0000"
    for i, e in enumerate(evs[:60]):  # canvas members of one root
        if e["type"] == "task-received":
            e["root_id"] = root
            e["timestamp"] = start + i
    for ins in engines:  # in three writes: groups are created, then updated
        for i in range(3):
            ins.service.apply_events([dict(e) for e in evs[i::3]])
            assert ins.flush() > 0
    for _ in range(15):
        lo = start + rnd.random() * 2 * 86400
        hi = lo + rnd.choice((120, 3600, 7200, 86400)) * rnd.random() + 60
        assert pg.store.totals(lo, hi) == _approx(lite.store.totals(lo, hi))
        assert pg.store.totals(lo, hi, "queue:") == _approx(lite.store.totals(lo, hi, "queue:"))
        assert pg.store.totals(lo, hi, "task:", "app.t1") == _approx(
            lite.store.totals(lo, hi, "task:", "app.t1")
        )
    for bucket in (60, 3600):
        want = lite.store.series(start, start + 86400, bucket, "task:app.t0")
        assert want and pg.store.series(start, start + 86400, bucket, "task:app.t0") == _approx(
            want
        )
    assert sorted(pg.store.task_keys()) == sorted(lite.store.task_keys())
    now = start + 2 * 86400
    for window in ("1h", "24h", "7d"):
        assert analytics.task_analytics(pg.store, window, now) == _approx(
            analytics.task_analytics(lite.store, window, now)
        )
    groups = lite.store.error_groups()
    assert len(groups) == 3  # one per task name: the messages differ by a number
    assert pg.store.error_groups() == _approx(groups)
    assert pg.store.error_groups(since=start + 86400, name="app.t2") == _approx(
        lite.store.error_groups(since=start + 86400, name="app.t2")
    )
    ids = [g["id"] for g in groups[:20]]
    assert pg.store.error_counts(ids, start, now, 3600) == lite.store.error_counts(
        ids, start, now, 3600
    )
    gid = groups[0]["id"]
    assert pg.store.error_tasks(gid) == _approx(lite.store.error_tasks(gid))
    assert pg.store.canvas_members(root) == lite.store.canvas_members(root) != []
    for ins in engines:
        occ = ins.store.error_tasks(gid)
        ins.store.mark_retried(gid, [o["uuid"] for o in occ[:1]])
        ins.store.set_meta("k", "v1")
        ins.store.set_meta("k", "v2")
        ins.store.prune(start + 86400)
    assert pg.store.error_tasks(gid) == _approx(lite.store.error_tasks(gid))
    assert pg.store.error_groups() == _approx(lite.store.error_groups())
    assert pg.store.totals(start, now) == _approx(lite.store.totals(start, now))
    assert pg.store.get_meta("k") == lite.store.get_meta("k") == "v2"
    assert pg.store.get_meta("nothing") is None


def test_postgresql_alerts_open_update_and_list_as_sqlite_does(engines):
    for ins in engines:
        a = ins.store.open_alert("r", "failure_rate", "app.t", 0.5, 0.1, "50 % failed", 100.0)
        b = ins.store.open_alert("r", "failure_rate", "app.u", 0.7, 0.1, "70 % failed", 101.0)
        ins.store.update_alert(a, status="resolved", resolved=150.0, notifications=2)
        ins.store.update_alert(b, delivery="sent (200)", notified=102.0)
        with pytest.raises(ValueError, match=r"unknown alert field\(s\) \['rule'\]"):
            ins.store.update_alert(a, rule="x")
    lite, pg = engines
    assert pg.store.alerts() == lite.store.alerts()
    assert pg.store.alerts(status="firing") == lite.store.alerts(status="firing")
    assert [r["subject"] for r in pg.store.alerts(status="resolved")] == ["app.t"]


def test_postgresql_insight_backfills_the_history_of_the_same_database(postgres_url):
    svc = MonitorService(Celery(broker="memory://"), MonitorSettings(db=postgres_url))
    svc.start()  # creates the history's tables, no consumer needed for this
    try:
        now = time.time()
        svc.apply_events([
            {"type": "task-received", "uuid": "a", "name": "t.x", "hostname": "w", "timestamp": now - 5},
            {"type": "task-failed", "uuid": "a", "hostname": "w", "timestamp": now - 4,
             "exception": "KeyError('k')", "traceback": "Traceback ..."},
        ])  # fmt: skip
        svc.flush()
    finally:
        svc.stop()
    ins = Insight(MonitorService(Celery(broker="memory://"), MonitorSettings(db=postgres_url)))
    try:
        assert ins.backfill(time.time()) == 1
        assert ins.backfill(time.time()) == 0  # once per store
        (g,) = ins.store.error_groups()
        assert (g["name"], g["exception_type"], g["failures"]) == ("t.x", "KeyError", 1)
    finally:
        ins.store.close()


def test_newer_postgresql_insight_tables_are_refused(postgres_url):
    store = PgInsightStore(postgres_url)
    store.set_meta("schema", str(int(SCHEMA_VERSION) + 1))
    store.close()
    with pytest.raises(StoreVersionError, match="newer than this release understands"):
        PgInsightStore(postgres_url)
