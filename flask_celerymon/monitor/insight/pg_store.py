"""The insight tables in PostgreSQL, shared by every process of a cluster.

With a PostgreSQL history (``CELERY_MONITOR_DB = "postgresql://..."``) the insight tables live
in the same database and schema as the history's ``tasks`` (``celerymon``, or ``?schema=`` of
the URL), named and shaped as in SQLite (see :mod:`.store`): ``insight_minutes``,
``insight_hours``, ``insight_days``, ``insight_error_groups``, ``insight_error_minutes``,
``insight_error_tasks``, ``insight_alerts``, ``insight_canvas`` and ``insight_meta``.
:class:`PgInsightStore` has the methods and return shapes of
:class:`~.store.InsightStore`, so the engine, the analytics and the web views use either.

Who writes: with ``CELERY_MONITOR_SINGLE_INGESTER`` only the ingester (the engine skips
writing, back-filling, pruning and alert evaluation in followers); the followers read. The
tables are created under an advisory lock by the first process to open them; their version
is ``insight_meta['schema']`` (:data:`SCHEMA_VERSION`), and a newer one is refused.

Connections come from a :class:`psycopg_pool.ConnectionPool` (``min_size`` 1, ``max_size``
:data:`POOL_MAX`), in autocommit mode; each write is one transaction.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..pg_store import (
    POOL_TIMEOUT,
    StoreUnavailable,
    StoreVersionError,
    open_pool,
    parse_url,
)
from ..store import redact
from .store import (
    _LEVELS,
    _MAXES,
    _SUMS,
    ROLLUP_COLUMNS,
    TASKS_PER_GROUP,
    WORKERS_PER_GROUP,
    Failure,
    Rollup,
    merge_levels,
    spans,
)

#: Connections per process at most (the engine's thread writes, web requests read).
POOL_MAX = 4
#: The version of the insight tables in PostgreSQL.
SCHEMA_VERSION = "1"


def _coltype(c: str) -> str:
    return "double precision" if c.endswith(("_sum", "_max")) else "bigint"


def _schema() -> list[str]:
    cols = ", ".join(f"{c} {_coltype(c)} NOT NULL DEFAULT 0" for c in ROLLUP_COLUMNS)
    out: list[str] = []
    for t in _LEVELS.values():
        out.append(
            f'CREATE TABLE IF NOT EXISTS {t} (key text COLLATE "C" NOT NULL, '
            f"start bigint NOT NULL, {cols}, PRIMARY KEY (start, key))"
        )
        out.append(f"CREATE INDEX IF NOT EXISTS {t}_key ON {t} (key, start)")
    out += [
        "CREATE TABLE IF NOT EXISTS insight_error_groups (id text PRIMARY KEY, "
        "name text NOT NULL, exc_type text NOT NULL, message text NOT NULL, "
        "sample_exception text, sample_traceback text, sample_task text, "
        "failures bigint NOT NULL DEFAULT 0, retries bigint NOT NULL DEFAULT 0, "
        "first_seen double precision NOT NULL, last_seen double precision NOT NULL, "
        "resolved_at double precision, workers text NOT NULL DEFAULT '{}')",
        "CREATE INDEX IF NOT EXISTS insight_error_groups_last ON insight_error_groups (last_seen)",
        "CREATE INDEX IF NOT EXISTS insight_error_groups_name ON insight_error_groups (name)",
        "CREATE TABLE IF NOT EXISTS insight_error_minutes (id text NOT NULL, "
        "start bigint NOT NULL, n bigint NOT NULL, PRIMARY KEY (id, start))",
        "CREATE TABLE IF NOT EXISTS insight_error_tasks (id text NOT NULL, uuid text NOT NULL, "
        "ts double precision NOT NULL, kind text NOT NULL, PRIMARY KEY (id, uuid))",
        "CREATE INDEX IF NOT EXISTS insight_error_tasks_ts ON insight_error_tasks (id, ts)",
        "CREATE TABLE IF NOT EXISTS insight_alerts (id bigserial PRIMARY KEY, "
        "rule text NOT NULL, kind text NOT NULL, subject text NOT NULL, status text NOT NULL, "
        "value double precision, threshold double precision, message text NOT NULL, "
        "started double precision NOT NULL, resolved double precision, "
        "notified double precision, notifications bigint NOT NULL DEFAULT 0, delivery text)",
        "CREATE INDEX IF NOT EXISTS insight_alerts_started ON insight_alerts (started)",
        "CREATE TABLE IF NOT EXISTS insight_canvas (root text NOT NULL, uuid text NOT NULL, "
        "ts double precision NOT NULL, PRIMARY KEY (root, uuid))",
        "CREATE INDEX IF NOT EXISTS insight_canvas_ts ON insight_canvas (ts)",
        "CREATE TABLE IF NOT EXISTS insight_meta (key text PRIMARY KEY, value text)",
    ]
    return out


def _upsert(table: str) -> str:
    cols = ", ".join(ROLLUP_COLUMNS)
    marks = ", ".join("%s" for _ in ROLLUP_COLUMNS)
    sets = ", ".join(
        [f"{c} = {table}.{c} + excluded.{c}" for c in _SUMS]
        + [f"{c} = greatest({table}.{c}, excluded.{c})" for c in _MAXES]
    )
    return (
        f"INSERT INTO {table} (key, start, {cols}) VALUES (%s, %s, {marks}) "
        f"ON CONFLICT (start, key) DO UPDATE SET {sets}"
    )


_UPSERT = {t: _upsert(t) for t in _LEVELS.values()}
#: sum() of a bigint is numeric in PostgreSQL: cast back, so values are int as in SQLite
_AGG = ", ".join([f"sum({c})::{_coltype(c)}" for c in _SUMS] + [f"max({c})" for c in _MAXES])
_GROUP_KEYS = ("id", "name", "exception_type", "message", "sample_exception",
               "sample_traceback", "sample_task", "failures", "retries", "first_seen",
               "last_seen", "resolved_at", "workers")  # fmt: skip
_ALERT_KEYS = ("id", "rule", "kind", "subject", "status", "value", "threshold", "message",
               "started", "resolved", "notified", "notifications", "delivery")  # fmt: skip
_HISTORY_COLS = ("id", "uuid", "name", "state", "worker", "sent", "received", "started",
                 "timestamp", "runtime", "eta", "routing_key", "exception", "traceback",
                 "root_id")  # fmt: skip


class PgInsightStore:
    """The ``insight_*`` tables in the PostgreSQL database of ``url`` (a
    ``CELERY_MONITOR_DB`` URL, ``?schema=`` honoured). Thread-safe.

    Raises :class:`~flask_celerymon.errors.CeleryMonError` when psycopg is missing or the
    schema name is not valid, :class:`~..pg_store.StoreUnavailable` when the server cannot
    be reached within ``POOL_TIMEOUT`` seconds and :class:`~..pg_store.StoreVersionError`
    when the insight tables are newer than this release.
    """

    def __init__(self, url: str) -> None:
        from ..pg_store import _driver

        psycopg, _psycopg_pool = _driver()
        self._psycopg = psycopg
        self.url, self.schema = parse_url(url)
        self.path = redact(self.url)
        try:
            search_path = self._create()
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(
                f"cannot reach the insight database {redact(self.url)} ({exc}); check "
                "CELERY_MONITOR_DB and that the server runs"
            ) from exc
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
                    for stmt in _schema():
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

    # -- writing ---------------------------------------------------------------------------

    def write(
        self,
        rollups: Mapping[tuple[str, int], Rollup],
        failures: Iterable[Failure] = (),
        resolved: Mapping[str, float] | None = None,
        members: Iterable[tuple[str, str, float]] = (),
    ) -> None:
        """See :meth:`.store.InsightStore.write`. One transaction."""
        rows = merge_levels(rollups)
        members = list(members)
        with self._pool.connection() as c, c.transaction(), c.cursor() as cur:
            for table, table_rows in rows.items():
                if table_rows:
                    cur.executemany(_UPSERT[table], table_rows)
            failures = list(failures)
            if failures:
                self._add_failures(cur, failures)
            if members:
                cur.executemany(
                    "INSERT INTO insight_canvas (root, uuid, ts) VALUES (%s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    members,
                )
            for name, at in (resolved or {}).items():
                cur.execute(
                    "UPDATE insight_error_groups SET resolved_at = %s "
                    "WHERE name = %s AND resolved_at IS NULL AND last_seen < %s",
                    (at, name, at),
                )

    def _add_failures(self, cur: Any, failures: list[Failure]) -> None:
        """Record ``failures`` in their groups with a few statements per write (one round trip
        per failure would cap the ingester at a few thousand failures a second): the same
        result as :meth:`.store.InsightStore.write` applying them one by one, in order."""
        by_group: dict[str, list[Failure]] = {}
        for f in failures:
            by_group.setdefault(f.group, []).append(f)
        old = {
            gid: json.loads(workers)
            for gid, workers in cur.execute(
                "SELECT id, workers FROM insight_error_groups "
                "WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                (sorted(by_group),),
            ).fetchall()
        }
        inserts, updates = [], []
        minutes: dict[tuple[str, int], int] = {}
        tasks: dict[tuple[str, str], tuple[float, str]] = {}
        for gid, fs in by_group.items():
            first, last = fs[0], fs[-1]
            nfail = sum(f.kind == "failure" for f in fs)
            lo, hi = min(f.ts for f in fs), max(f.ts for f in fs)
            seen = old.get(gid)
            workers: dict[str, int] = {} if seen is None else seen
            for f in fs:
                if f.worker and (f.worker in workers or len(workers) < WORKERS_PER_GROUP):
                    workers[f.worker] = workers.get(f.worker, 0) + 1
                k = (gid, int(f.ts // 60 * 60))
                minutes[k] = minutes.get(k, 0) + 1
                tasks[(gid, f.uuid)] = (f.ts, f.kind)
            # the last non-empty traceback, else the one the group has (a new group: the first)
            tb = next((f.traceback for f in reversed(fs) if f.traceback), None)
            if seen is None:
                inserts.append((gid, first.name, first.exc_type, first.message, last.exception,
                                tb if tb is not None else first.traceback, last.uuid, nfail,
                                len(fs) - nfail, lo, hi, json.dumps(workers)))  # fmt: skip
            else:
                updates.append((nfail, len(fs) - nfail, lo, hi, hi, last.exception, tb,
                                last.uuid, json.dumps(workers), gid))  # fmt: skip
        if inserts:
            cur.executemany(
                "INSERT INTO insight_error_groups (id, name, exc_type, message, "
                "sample_exception, sample_traceback, sample_task, failures, retries, "
                "first_seen, last_seen, workers) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                inserts,
            )
        if updates:
            # resolved again unless a failure is as recent as the group's last one (applied one
            # by one, the most recent failure is the one that reopens it)
            cur.executemany(
                "UPDATE insight_error_groups SET failures = failures + %s, "
                "retries = retries + %s, first_seen = least(first_seen, %s), "
                "resolved_at = CASE WHEN %s >= last_seen THEN NULL ELSE resolved_at END, "
                "last_seen = greatest(last_seen, %s), "
                "sample_exception = %s, sample_traceback = coalesce(%s, sample_traceback), "
                "sample_task = %s, workers = %s WHERE id = %s",
                updates,
            )
        cur.executemany(
            "INSERT INTO insight_error_minutes (id, start, n) VALUES (%s, %s, %s) "
            "ON CONFLICT (id, start) DO UPDATE SET n = insight_error_minutes.n + excluded.n",
            [(gid, start, n) for (gid, start), n in sorted(minutes.items())],
        )
        cur.executemany(
            "INSERT INTO insight_error_tasks (id, uuid, ts, kind) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (id, uuid) DO UPDATE SET ts = excluded.ts, kind = excluded.kind",
            [(gid, uuid, ts, kind) for (gid, uuid), (ts, kind) in sorted(tasks.items())],
        )

    def prune(self, older_than: float) -> None:
        """See :meth:`.store.InsightStore.prune`."""
        with self._pool.connection() as c, c.transaction():
            for t in (*_LEVELS.values(), "insight_error_minutes"):
                c.execute(f"DELETE FROM {t} WHERE start < %s", (older_than,))
            c.execute("DELETE FROM insight_error_tasks WHERE ts < %s", (older_than,))
            c.execute("DELETE FROM insight_canvas WHERE ts < %s", (older_than,))
            c.execute("DELETE FROM insight_error_groups WHERE last_seen < %s", (older_than,))
            c.execute("DELETE FROM insight_alerts WHERE started < %s AND status = 'resolved'",
                      (older_than,))  # fmt: skip
            for (gid,) in c.execute(
                "SELECT id FROM insight_error_tasks GROUP BY id HAVING count(*) > %s",
                (TASKS_PER_GROUP,),
            ).fetchall():
                c.execute(
                    "DELETE FROM insight_error_tasks WHERE id = %s AND ts < (SELECT ts FROM "
                    "insight_error_tasks WHERE id = %s ORDER BY ts DESC LIMIT 1 OFFSET %s)",
                    (gid, gid, TASKS_PER_GROUP - 1),
                )

    # -- roll-up reads ---------------------------------------------------------------------

    def totals(
        self, since: float, until: float, prefix: str = "task:", key: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """See :meth:`.store.InsightStore.totals`."""
        acc: dict[str, list[float]] = {}
        for table, lo, hi in spans(since, until):
            if key is not None:
                cond, params = "key = %s", [prefix + key]
            else:
                cond = "key >= %s AND key < %s"
                params = [prefix, prefix[:-1] + chr(ord(":") + 1)]
            rows = self._read(
                f"SELECT key, {_AGG} FROM {table} WHERE {cond} AND start >= %s AND start < %s "
                "GROUP BY key",
                [*params, lo, hi],
            )
            for k, *vals in rows:
                a = acc.get(k)
                if a is None:
                    acc[k] = [v or 0 for v in vals]
                else:
                    for i, c in enumerate(ROLLUP_COLUMNS):
                        v = vals[i] or 0
                        a[i] = max(a[i], v) if c in _MAXES else a[i] + v
        return {k[len(prefix) :]: dict(zip(ROLLUP_COLUMNS, v)) for k, v in acc.items()}

    def series(
        self, since: float, until: float, bucket: int, key: str
    ) -> list[tuple[int, dict[str, Any]]]:
        """See :meth:`.store.InsightStore.series`."""
        table = "insight_hours" if bucket % 3600 == 0 else "insight_minutes"
        rows = self._read(
            f"SELECT (start / %s) * %s AS b, {_AGG} FROM {table} WHERE key = %s "
            "AND start >= %s AND start < %s GROUP BY b ORDER BY b",
            [int(bucket), int(bucket), key, int(since), int(until)],
        )
        return [(int(b), dict(zip(ROLLUP_COLUMNS, vals))) for b, *vals in rows]

    def task_keys(self) -> list[str]:
        return [r[0][5:] for r in self._read(
            "SELECT DISTINCT key FROM insight_hours WHERE key >= 'task:' AND key < 'task;'"
        )]  # fmt: skip

    # -- meta and the history's tasks (for the first backfill) -----------------------------

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM insight_meta WHERE key = %s", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._pool.connection() as c:
            c.execute(
                "INSERT INTO insight_meta (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def history_tasks(self, after_id: int, before: float, limit: int) -> list[dict[str, Any]]:
        """Finished tasks of the history's ``tasks`` table in the same schema (see
        :meth:`.store.InsightStore.history_tasks`); ``[]`` without that table."""
        try:
            rows = self._read(
                f"SELECT {', '.join(_HISTORY_COLS)} FROM tasks WHERE id > %s AND timestamp < %s"
                " AND state IN ('SUCCESS', 'FAILURE', 'REVOKED', 'RETRY') ORDER BY id LIMIT %s",
                (after_id, before, limit),
            )
        except self._psycopg.errors.UndefinedTable:
            return []
        return [dict(zip(_HISTORY_COLS, r)) for r in rows]

    def canvas_members(self, root: str, limit: int = 1000) -> list[str]:
        """See :meth:`.store.InsightStore.canvas_members`."""
        rows = self._read(
            "SELECT uuid FROM insight_canvas WHERE root = %s ORDER BY ts LIMIT %s", (root, limit)
        )
        return [r[0] for r in rows]

    # -- error groups ----------------------------------------------------------------------

    def error_groups(
        self, since: float | None = None, name: str | None = None, group: str | None = None
    ) -> list[dict[str, Any]]:
        """See :meth:`.store.InsightStore.error_groups`."""
        conds: list[str] = []
        params: list[Any] = []
        for cond, value in (("last_seen >= %s", since), ("name = %s", name), ("id = %s", group)):
            if value is not None:
                conds.append(cond)
                params.append(value)
        where = " AND ".join(conds) or "true"
        rows = self._read(
            "SELECT id, name, exc_type, message, sample_exception, sample_traceback, "
            "sample_task, failures, retries, first_seen, last_seen, resolved_at, workers "
            f"FROM insight_error_groups WHERE {where} ORDER BY last_seen DESC, id",
            params,
        )
        out = []
        for r in rows:
            d = dict(zip(_GROUP_KEYS, r))
            d["workers"] = json.loads(d["workers"])
            out.append(d)
        return out

    def error_counts(
        self, ids: list[str], since: float, until: float, bucket: int
    ) -> dict[str, list[int]]:
        """See :meth:`.store.InsightStore.error_counts`."""
        n = max(1, math.ceil((until - since) / bucket))
        out = {i: [0] * n for i in ids}
        if not ids:
            return out
        for gid, start, count in self._read(
            "SELECT id, start, n FROM insight_error_minutes WHERE id = ANY(%s) "
            "AND start >= %s AND start < %s",
            [list(ids), int(since // 60 * 60), until],
        ):
            i = int((start - since) // bucket)
            if 0 <= i < n:
                out[gid][i] += count
        return out

    def error_tasks(
        self, group: str, limit: int = 1000, kind: str | None = None
    ) -> list[dict[str, Any]]:
        """See :meth:`.store.InsightStore.error_tasks`."""
        sql = "SELECT uuid, ts, kind FROM insight_error_tasks WHERE id = %s"
        params: list[Any] = [group]
        if kind is not None:
            sql += " AND kind = %s"
            params.append(kind)
        rows = self._read(sql + " ORDER BY ts DESC LIMIT %s", [*params, limit])
        return [{"uuid": u, "ts": ts, "kind": k} for u, ts, k in rows]

    def mark_retried(self, group: str, uuids: Iterable[str]) -> None:
        """See :meth:`.store.InsightStore.mark_retried` (any process may call it: a retry
        from a follower's page is marked in the shared table)."""
        rows = [(group, u) for u in uuids]
        if not rows:
            return
        with self._pool.connection() as c, c.transaction(), c.cursor() as cur:
            cur.executemany(
                "UPDATE insight_error_tasks SET kind = 'retried' WHERE id = %s AND uuid = %s",
                rows,
            )

    # -- alerts ----------------------------------------------------------------------------

    def open_alert(self, rule: str, kind: str, subject: str, value: float | None,
                   threshold: float | None, message: str, now: float) -> int:  # fmt: skip
        rows = self._read(
            "INSERT INTO insight_alerts (rule, kind, subject, status, value, threshold, "
            "message, started) VALUES (%s, %s, %s, 'firing', %s, %s, %s, %s) RETURNING id",
            (rule, kind, subject, value, threshold, message, now),
        )
        return int(rows[0][0])

    def update_alert(self, alert_id: int, **fields: Any) -> None:
        allowed = {"status", "value", "message", "resolved", "notified", "notifications",
                   "delivery"}  # fmt: skip
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown alert field(s) {sorted(bad)}")
        sets = ", ".join(f"{k} = %s" for k in fields)
        with self._pool.connection() as c:
            c.execute(
                f"UPDATE insight_alerts SET {sets} WHERE id = %s", (*fields.values(), alert_id)
            )

    def alerts(self, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """See :meth:`.store.InsightStore.alerts`."""
        sql = ("SELECT id, rule, kind, subject, status, value, threshold, message, started, "
               "resolved, notified, notifications, delivery FROM insight_alerts")  # fmt: skip
        params: list[Any] = []
        if status is not None:
            sql += " WHERE status = %s"
            params.append(status)
        rows = self._read(sql + " ORDER BY started DESC, id DESC LIMIT %s", [*params, limit])
        return [dict(zip(_ALERT_KEYS, r)) for r in rows]
