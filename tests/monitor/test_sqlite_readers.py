"""The SQLite store's reader connections and page cache are bounded (issue 14).

A reader connection belongs to a thread (a greenlet under gevent) while it lives, and goes
back to a small idle pool when it ends: the connections open never grow with the requests
served. The page cache per connection is ``CELERY_MONITOR_DB_CACHE_KB``.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from flask_celerymon.monitor.settings import MonitorSettings
from flask_celerymon.monitor.sqlite_store import IDLE_READERS, SQLiteStore
from flask_celerymon.monitor.stores import open_store


def _page_cache_kib(store: SQLiteStore) -> int:
    return -int(store._reader.execute("PRAGMA cache_size").fetchone()[0])


def test_threads_share_a_bounded_set_of_reader_connections(tmp_path):
    store = SQLiteStore(str(tmp_path / "h.sqlite3"))
    try:
        store.write_tasks([])
        for _ in range(20):
            threads = [threading.Thread(target=store.count) for _ in range(10)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        gc.collect()
        # the writer, the idle readers (the ended threads gave theirs back)
        assert store.open_connections() <= 1 + IDLE_READERS
        assert store.count() == 0  # the idle connections still answer
    finally:
        store.close()


def test_a_thread_keeps_its_reader_while_it_lives(tmp_path):
    store = SQLiteStore(str(tmp_path / "h.sqlite3"))
    try:
        first = store._reader
        store.count()
        assert store._reader is first
    finally:
        store.close()


def test_closed_store_closes_idle_readers_and_refuses_reads(tmp_path):
    store = SQLiteStore(str(tmp_path / "h.sqlite3"))
    t = threading.Thread(target=store.count)
    t.start()
    t.join()
    gc.collect()
    store.close()
    assert store.open_connections() == 0
    with pytest.raises(RuntimeError, match="closed"):
        SQLiteStore.count(store)


def test_page_cache_per_connection_is_the_setting(tmp_path):
    default = SQLiteStore(str(tmp_path / "a.sqlite3"))
    small = open_store(str(tmp_path / "b.sqlite3"), 512)
    try:
        assert _page_cache_kib(default) == MonitorSettings.db_cache_kb
        assert _page_cache_kib(small) == 512
        assert -small._writer.execute("PRAGMA cache_size").fetchone()[0] == 512
    finally:
        default.close()
        small.close()


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "100"])
def test_page_cache_setting_must_be_a_positive_int(tmp_path, bad):
    with pytest.raises(ValueError, match="cache_kb must be an integer >= 1"):
        SQLiteStore(str(tmp_path / "c.sqlite3"), bad)


def test_setting_from_config_reaches_the_store(tmp_path):
    s = MonitorSettings.from_config(
        {"CELERY_MONITOR_DB": str(tmp_path / "d.sqlite3"), "CELERY_MONITOR_DB_CACHE_KB": 700},
        str(tmp_path),
    )
    assert s.db_cache_kb == 700
    store = open_store(s.db_path, s.db_cache_kb)
    try:
        assert _page_cache_kib(store) == 700
    finally:
        store.close()


def test_greenlets_under_gevent_do_not_open_a_connection_each(tmp_path):
    """``flask celery monitor`` serves on gevent by default: a request greenlet's
    thread-local reader must go back to the pool when the greenlet ends (it was one new
    connection, and 4 MB of page cache, per request, never closed)."""
    pytest.importorskip("gevent")
    script = textwrap.dedent(
        f"""
        from gevent import monkey; monkey.patch_all()
        import gc, gevent
        from flask_celerymon.monitor.sqlite_store import SQLiteStore
        s = SQLiteStore({str(tmp_path / "g.sqlite3")!r})
        for _ in range(20):
            gevent.joinall([gevent.spawn(s.count) for _ in range(50)])
        gevent.sleep(0)  # the last greenlet's locals go at the next switch
        gc.collect()
        print(s.open_connections())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip().splitlines()[-1]) <= 1 + IDLE_READERS
