"""The insight tables in SQLite: per-minute, per-hour and per-day roll-ups, error groups and
alert history.

They live in the history store's SQLite file (``CELERY_MONITOR_DB``) beside its ``tasks``
table, all named ``insight_*``, so they survive restarts and follow the same retention
(``CELERY_MONITOR_RETENTION_DAYS``). Without a history they live in an in-memory SQLite
database for the life of the process: counted from the events this process consumes, starting
empty (no backfill). With a PostgreSQL history the same tables are in that database
(:mod:`.pg_store`). With ``CELERY_MONITOR_SINGLE_INGESTER`` only the ingester writes them and
every process reads them (see :mod:`.engine`).

The tables, their statements and every method are :class:`~.sql.SqlInsightStore`'s, shared
with PostgreSQL; the roll-up arithmetic (histogram buckets, percentiles, periods) is
:mod:`.rollups`. Because histograms are columns, a 30-day summary is a ``SUM(...) GROUP BY``
over about 30 daily rows and at most 48 hourly and 120 minute rows per key at its edges.

One connection, one lock: the insight thread writes once a second, web requests read.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from .sql import SCHEMA_VERSION, SQLITE, SqlInsightStore, schema

__all__ = ["AnyInsightStore", "InsightStore"]


class InsightStore(SqlInsightStore):
    """The ``insight_*`` tables in the SQLite file ``path`` (``":memory:"`` or None for an
    in-memory database). Thread-safe. Raises :class:`sqlite3.Error` when the file cannot be
    opened or written."""

    dialect = SQLITE
    _missing_table = sqlite3.OperationalError

    def __init__(self, path: str | None) -> None:
        self.path = path or ":memory:"
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            self.path, check_same_thread=False, timeout=30, isolation_level=None
        )
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        with self._transaction() as c:
            for stmt in schema(SQLITE):
                c.execute(stmt)
            c.execute(
                "INSERT INTO insight_meta (key, value) VALUES ('schema', ?) ON CONFLICT DO NOTHING",
                (SCHEMA_VERSION,),
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")


#: The insight tables: in SQLite (a file or memory) or in the history's PostgreSQL database
#: (:class:`~.pg_store.PgInsightStore`): both are :class:`~.sql.SqlInsightStore`.
AnyInsightStore = SqlInsightStore
