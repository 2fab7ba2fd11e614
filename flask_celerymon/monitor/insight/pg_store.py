"""The insight tables in PostgreSQL, shared by every process of a cluster.

With a PostgreSQL history (``CELERY_MONITOR_DB = "postgresql://..."``) the insight tables live
in the same database and schema as the history's ``tasks`` (``celerymon``, or ``?schema=`` of
the URL), named and shaped as in SQLite: ``insight_minutes``, ``insight_hours``,
``insight_days``, ``insight_error_groups``, ``insight_error_minutes``,
``insight_error_tasks``, ``insight_alerts``, ``insight_canvas`` and ``insight_meta``.
Their statements and every method are :class:`~.sql.SqlInsightStore`'s, shared with
:class:`~.store.InsightStore` (the dialect differences are :data:`~.sql.POSTGRESQL`), so the
engine, the analytics and the web views use either.

Who writes: with ``CELERY_MONITOR_SINGLE_INGESTER`` only the ingester (the engine skips
writing, back-filling, pruning and alert evaluation in followers); the followers read. The
tables are created under an advisory lock by the first process to open them; their version
is ``insight_meta['schema']`` (:data:`SCHEMA_VERSION`), and a newer one is refused.

Connections come from a :class:`psycopg_pool.ConnectionPool` (``min_size`` 1, ``max_size``
:data:`POOL_MAX`), in autocommit mode; each write is one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ..pg_store import (
    POOL_TIMEOUT,
    StoreVersionError,
    open_pool,
    parse_url,
    reaching,
)
from ..store import redact
from .sql import POSTGRESQL, SCHEMA_VERSION, SqlInsightStore, schema

__all__ = ["POOL_MAX", "SCHEMA_VERSION", "PgInsightStore"]

#: Connections per process at most (the engine's thread writes, web requests read).
POOL_MAX = 4


class PgInsightStore(SqlInsightStore):
    """The ``insight_*`` tables in the PostgreSQL database of ``url`` (a
    ``CELERY_MONITOR_DB`` URL, ``?schema=`` honoured). Thread-safe.

    Raises :class:`~flask_celerymon.errors.CeleryMonError` when psycopg is missing or the
    schema name is not valid, :class:`~..pg_store.StoreUnavailable` when the server cannot
    be reached within ``POOL_TIMEOUT`` seconds and :class:`~..pg_store.StoreVersionError`
    when the insight tables are newer than this release.
    """

    dialect = POSTGRESQL

    def __init__(self, url: str) -> None:
        from ..pg_store import _driver

        psycopg, _psycopg_pool = _driver()
        self._psycopg = psycopg
        self._missing_table = psycopg.errors.UndefinedTable
        self.url, self.schema = parse_url(url)
        self.path = redact(self.url)
        with reaching(self.url, "insight"):
            search_path = self._create()
        self._pool = open_pool(self.url, search_path, f"celerymon-insight-{self.schema}", POOL_MAX)

    def __repr__(self) -> str:
        return f"PgInsightStore({redact(self.url)!r}, schema={self.schema!r})"

    def _create(self) -> str:
        psycopg = self._psycopg
        s = self.schema
        lock = f"celerymon-insight:{s}"
        with psycopg.connect(self.url, autocommit=True, connect_timeout=int(POOL_TIMEOUT)) as c:
            c.execute("SELECT pg_advisory_lock(hashtext(%s))", (lock,))
            try:
                c.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
                c.execute(f"SET search_path = {s}")
                with c.transaction():
                    for stmt in schema(POSTGRESQL):
                        c.execute(stmt)
                    row = c.execute(
                        "SELECT value FROM insight_meta WHERE key = 'schema'"
                    ).fetchone()
                    if row is None:
                        c.execute(
                            "INSERT INTO insight_meta (key, value) VALUES ('schema', %s)",
                            (SCHEMA_VERSION,),
                        )
                    elif int(row[0]) > int(SCHEMA_VERSION):
                        raise StoreVersionError(
                            f"the insight tables of schema {s!r} in {redact(self.url)} are at "
                            f"version {row[0]}, newer than this release understands "
                            f"({SCHEMA_VERSION}); upgrade flask-celerymon"
                        )
            finally:
                c.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock,))
        return s

    def close(self) -> None:
        self._pool.close()

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._pool.connection() as c:
            return list(c.execute(sql, tuple(params)).fetchall())

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._pool.connection() as c, c.transaction(), c.cursor() as cur:
            yield cur
