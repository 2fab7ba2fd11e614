"""The SQL of the insight tables, for both stores: one schema, one writer, one set of reads.

:class:`SqlInsightStore` holds every statement, written once with ``?`` placeholders, and
runs them through two methods its subclasses give: :meth:`SqlInsightStore._read` (one
statement, its rows) and :meth:`SqlInsightStore._transaction` (a cursor whose statements
commit together). :class:`~.store.InsightStore` runs them on one SQLite connection under a
lock, :class:`~.pg_store.PgInsightStore` on a PostgreSQL connection pool. What differs
between the two is an :class:`InsightDialect`:

* the placeholder (``?`` or ``%s``, through :class:`~..sql_query.Dialect`);
* column types (``INTEGER``/``REAL`` against ``bigint``/``double precision``, the alert id,
  ``WITHOUT ROWID`` tables, the roll-up key in the ``C`` collation in PostgreSQL so a range
  of keys is a range of the index);
* the two-argument ``max``/``min`` (``greatest``/``least`` in PostgreSQL) and the type of a
  sum (PostgreSQL sums a ``bigint`` as ``numeric``: cast back, so values are ``int`` as in
  SQLite);
* how a range of roll-up keys is read (SQLite is told ``+key`` to walk the primary key's time
  range instead of every row of the key index) and whether the error groups being updated
  are locked (``FOR UPDATE`` in PostgreSQL, where several writers may meet during a lease
  handover; SQLite's write transaction is exclusive already).

Upserts are ``INSERT ... ON CONFLICT`` in both (SQLite 3.24 or later; ``RETURNING`` needs
3.35).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from .. import sql_query
from .rollups import (
    LEVELS,
    MAX_COLUMNS,
    ROLLUP_COLUMNS,
    SUM_COLUMNS,
    Failure,
    Rollup,
    merge_levels,
    spans,
)

#: Task ids kept per error group (the most recent), for links and bulk actions.
TASKS_PER_GROUP = 10_000
#: Workers listed per error group.
WORKERS_PER_GROUP = 50
#: The version of the insight tables (``insight_meta['schema']``), in both stores.
SCHEMA_VERSION = "1"


@dataclass(frozen=True)
class InsightDialect:
    """What differs between the insight SQL of SQLite and of PostgreSQL (see the module)."""

    sql: sql_query.Dialect
    integer: str
    real: str
    #: the type of a roll-up key
    key: str
    #: the alert id column
    serial: str
    #: written after a table whose primary key is its only index (SQLite: WITHOUT ROWID)
    clustered: str
    greatest: str
    least: str
    #: ``{c}`` is the column summed
    sum_int: str
    sum_real: str
    #: written before ``key`` in a range of keys
    key_range_hint: str
    for_update: str

    def q(self, qmark: str) -> str:
        """``qmark`` (``?`` placeholders, no literal ``?`` or ``%``) in this dialect."""
        return self.sql.sql(qmark)

    def coltype(self, column: str) -> str:
        return self.real if column.endswith(("_sum", "_max")) else self.integer

    @functools.cached_property
    def aggregates(self) -> str:
        """The summed roll-up columns then the maxima, in :data:`ROLLUP_COLUMNS` order."""
        return ", ".join(
            [(self.sum_real if c.endswith("_sum") else self.sum_int).format(c=c)
             for c in SUM_COLUMNS]
            + [f"max({c})" for c in MAX_COLUMNS]
        )  # fmt: skip


SQLITE = InsightDialect(
    sql_query.SQLITE, integer="INTEGER", real="REAL", key="TEXT", serial="INTEGER PRIMARY KEY",
    clustered=" WITHOUT ROWID", greatest="max", least="min", sum_int="sum({c})",
    sum_real="sum({c})", key_range_hint="+", for_update="",
)  # fmt: skip
POSTGRESQL = InsightDialect(
    sql_query.POSTGRESQL, integer="bigint", real="double precision", key='text COLLATE "C"',
    serial="bigserial PRIMARY KEY", clustered="", greatest="greatest", least="least",
    sum_int="sum({c})::bigint", sum_real="sum({c})::double precision", key_range_hint="",
    for_update=" FOR UPDATE",
)  # fmt: skip


def schema(d: InsightDialect) -> list[str]:
    """The ``CREATE`` statements of every insight table and index in dialect ``d`` (each
    ``IF NOT EXISTS``; the schema version row is the store's business)."""
    i, r = d.integer, d.real
    cols = ", ".join(f"{c} {d.coltype(c)} NOT NULL DEFAULT 0" for c in ROLLUP_COLUMNS)
    out: list[str] = []
    for t in LEVELS.values():
        out.append(
            f"CREATE TABLE IF NOT EXISTS {t} (key {d.key} NOT NULL, start {i} NOT NULL, "
            f"{cols}, PRIMARY KEY (start, key)){d.clustered}"
        )
        out.append(f"CREATE INDEX IF NOT EXISTS {t}_key ON {t} (key, start)")
    return out + [
        "CREATE TABLE IF NOT EXISTS insight_error_groups (id TEXT PRIMARY KEY, "
        "name TEXT NOT NULL, exc_type TEXT NOT NULL, message TEXT NOT NULL, "
        "sample_exception TEXT, sample_traceback TEXT, sample_task TEXT, "
        f"failures {i} NOT NULL DEFAULT 0, retries {i} NOT NULL DEFAULT 0, "
        f"first_seen {r} NOT NULL, last_seen {r} NOT NULL, resolved_at {r}, "
        "workers TEXT NOT NULL DEFAULT '{}')",
        "CREATE INDEX IF NOT EXISTS insight_error_groups_last ON insight_error_groups (last_seen)",
        "CREATE INDEX IF NOT EXISTS insight_error_groups_name ON insight_error_groups (name)",
        "CREATE TABLE IF NOT EXISTS insight_error_minutes (id TEXT NOT NULL, "
        f"start {i} NOT NULL, n {i} NOT NULL, PRIMARY KEY (id, start)){d.clustered}",
        "CREATE TABLE IF NOT EXISTS insight_error_tasks (id TEXT NOT NULL, uuid TEXT NOT NULL, "
        f"ts {r} NOT NULL, kind TEXT NOT NULL, PRIMARY KEY (id, uuid)){d.clustered}",
        "CREATE INDEX IF NOT EXISTS insight_error_tasks_ts ON insight_error_tasks (id, ts)",
        f"CREATE TABLE IF NOT EXISTS insight_alerts (id {d.serial}, "
        "rule TEXT NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL, status TEXT NOT NULL, "
        f"value {r}, threshold {r}, message TEXT NOT NULL, started {r} NOT NULL, "
        f"resolved {r}, notified {r}, notifications {i} NOT NULL DEFAULT 0, delivery TEXT)",
        "CREATE INDEX IF NOT EXISTS insight_alerts_started ON insight_alerts (started)",
        "CREATE TABLE IF NOT EXISTS insight_canvas (root TEXT NOT NULL, uuid TEXT NOT NULL, "
        f"ts {r} NOT NULL, PRIMARY KEY (root, uuid)){d.clustered}",
        "CREATE INDEX IF NOT EXISTS insight_canvas_ts ON insight_canvas (ts)",
        "CREATE TABLE IF NOT EXISTS insight_meta (key TEXT PRIMARY KEY, value TEXT)",
    ]


@functools.cache
def upsert(d: InsightDialect, table: str) -> str:
    """The statement adding one roll-up row ``(key, start, *ROLLUP_COLUMNS)`` to ``table``."""
    cols = ", ".join(ROLLUP_COLUMNS)
    marks = ", ".join("?" for _ in ROLLUP_COLUMNS)
    sets = ", ".join(
        [f"{c} = {table}.{c} + excluded.{c}" for c in SUM_COLUMNS]
        + [f"{c} = {d.greatest}({table}.{c}, excluded.{c})" for c in MAX_COLUMNS]
    )
    return d.q(
        f"INSERT INTO {table} (key, start, {cols}) VALUES (?, ?, {marks}) "
        f"ON CONFLICT (start, key) DO UPDATE SET {sets}"
    )


_GROUP_KEYS = ("id", "name", "exception_type", "message", "sample_exception",
               "sample_traceback", "sample_task", "failures", "retries", "first_seen",
               "last_seen", "resolved_at", "workers")  # fmt: skip
_ALERT_KEYS = ("id", "rule", "kind", "subject", "status", "value", "threshold", "message",
               "started", "resolved", "notified", "notifications", "delivery")  # fmt: skip
_HISTORY_COLS = ("id", "uuid", "name", "state", "worker", "sent", "received", "started",
                 "timestamp", "runtime", "eta", "routing_key", "exception", "traceback",
                 "root_id")  # fmt: skip
_ALERT_FIELDS = frozenset(("status", "value", "message", "resolved", "notified",
                           "notifications", "delivery"))  # fmt: skip


class Cursor(Protocol):
    """What :meth:`SqlInsightStore._transaction` yields (a DB-API cursor or connection)."""

    def execute(self, sql: str, params: Any = ...) -> Any: ...
    def executemany(self, sql: str, params: Any) -> Any: ...


def _in(ids: list[str]) -> str:
    return ", ".join("?" for _ in ids)


class SqlInsightStore:
    """The insight tables over a database of :attr:`dialect`: every method of the insight
    store, the same in SQLite and PostgreSQL. Subclasses open the database and give
    :meth:`_read` and :meth:`_transaction`; statements are handed to them in the dialect's
    placeholders. Thread-safe when those are.

    Times are Unix seconds (float); roll-up periods start on whole minutes, hours and days.
    """

    dialect: InsightDialect
    #: the exception a read of a table that does not exist raises
    _missing_table: type[BaseException] | tuple[type[BaseException], ...] = ()
    #: the name shown for the database (no password)
    path: str

    def close(self) -> None:
        raise NotImplementedError

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one statement (already in the dialect's placeholders)."""
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[Cursor]:
        """A cursor whose statements commit together when the block ends without an
        exception and roll back when it raises."""
        raise NotImplementedError

    def _q(self, qmark: str) -> str:
        return self.dialect.q(qmark)

    # -- writing ---------------------------------------------------------------------------

    def write(
        self,
        rollups: Mapping[tuple[str, int], Rollup],
        failures: Iterable[Failure] = (),
        resolved: Mapping[str, float] | None = None,
        members: Iterable[tuple[str, str, float]] = (),
    ) -> None:
        """Add per-minute ``rollups`` ``{(key, minute start): Rollup}`` (also to the hours and
        days), record ``failures`` in their groups and mark ``resolved`` ``{task name:
        time}``: the groups of that task not seen since then are resolved, and record canvas
        ``members`` ``(root id, task id, time)``. One transaction; raises the driver's error
        (nothing written) when the database refuses it."""
        rows = merge_levels(rollups)
        members = list(members)
        failures = list(failures)
        q = self._q
        with self._transaction() as cur:
            for table, table_rows in rows.items():
                if table_rows:
                    cur.executemany(upsert(self.dialect, table), table_rows)
            if failures:
                self._add_failures(cur, failures)
            if members:
                cur.executemany(
                    q("INSERT INTO insight_canvas (root, uuid, ts) VALUES (?, ?, ?) "
                      "ON CONFLICT DO NOTHING"),
                    members,
                )  # fmt: skip
            for name, at in (resolved or {}).items():
                cur.execute(
                    q("UPDATE insight_error_groups SET resolved_at = ? "
                      "WHERE name = ? AND resolved_at IS NULL AND last_seen < ?"),
                    (at, name, at),
                )  # fmt: skip

    def _add_failures(self, cur: Cursor, failures: list[Failure]) -> None:
        """Record ``failures`` in their groups with a few statements per write (one round trip
        per failure would cap the ingester at a few thousand failures a second): the same
        result as applying them one by one, in order."""
        q, d = self._q, self.dialect
        by_group: dict[str, list[Failure]] = {}
        for f in failures:
            by_group.setdefault(f.group, []).append(f)
        ids = sorted(by_group)
        old = {
            gid: json.loads(workers)
            for gid, workers in cur.execute(
                q(f"SELECT id, workers FROM insight_error_groups WHERE id IN ({_in(ids)}) "
                  f"ORDER BY id{d.for_update}"),
                ids,
            ).fetchall()
        }  # fmt: skip
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
                q("INSERT INTO insight_error_groups (id, name, exc_type, message, "
                  "sample_exception, sample_traceback, sample_task, failures, retries, "
                  "first_seen, last_seen, workers) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                inserts,
            )  # fmt: skip
        if updates:
            # resolved again unless a failure is as recent as the group's last one (applied one
            # by one, the most recent failure is the one that reopens it)
            cur.executemany(
                q("UPDATE insight_error_groups SET failures = failures + ?, "
                  f"retries = retries + ?, first_seen = {d.least}(first_seen, ?), "
                  "resolved_at = CASE WHEN ? >= last_seen THEN NULL ELSE resolved_at END, "
                  f"last_seen = {d.greatest}(last_seen, ?), "
                  "sample_exception = ?, sample_traceback = coalesce(?, sample_traceback), "
                  "sample_task = ?, workers = ? WHERE id = ?"),
                updates,
            )  # fmt: skip
        cur.executemany(
            q("INSERT INTO insight_error_minutes (id, start, n) VALUES (?, ?, ?) "
              "ON CONFLICT (id, start) DO UPDATE SET n = insight_error_minutes.n + excluded.n"),
            [(gid, start, n) for (gid, start), n in sorted(minutes.items())],
        )  # fmt: skip
        cur.executemany(
            q("INSERT INTO insight_error_tasks (id, uuid, ts, kind) VALUES (?, ?, ?, ?) "
              "ON CONFLICT (id, uuid) DO UPDATE SET ts = excluded.ts, kind = excluded.kind"),
            [(gid, uuid, ts, kind) for (gid, uuid), (ts, kind) in sorted(tasks.items())],
        )  # fmt: skip

    def prune(self, older_than: float) -> None:
        """Forget roll-ups, error occurrences and alerts from before ``older_than``; keep at
        most :data:`TASKS_PER_GROUP` task ids per group. One transaction."""
        q = self._q
        with self._transaction() as c:
            for t in (*LEVELS.values(), "insight_error_minutes"):
                c.execute(q(f"DELETE FROM {t} WHERE start < ?"), (older_than,))
            c.execute(q("DELETE FROM insight_error_tasks WHERE ts < ?"), (older_than,))
            c.execute(q("DELETE FROM insight_canvas WHERE ts < ?"), (older_than,))
            c.execute(q("DELETE FROM insight_error_groups WHERE last_seen < ?"), (older_than,))
            c.execute(q("DELETE FROM insight_alerts WHERE started < ? AND status = 'resolved'"),
                      (older_than,))  # fmt: skip
            for (gid,) in c.execute(
                q("SELECT id FROM insight_error_tasks GROUP BY id HAVING count(*) > ?"),
                (TASKS_PER_GROUP,),
            ).fetchall():
                c.execute(
                    q("DELETE FROM insight_error_tasks WHERE id = ? AND ts < (SELECT ts FROM "
                      "insight_error_tasks WHERE id = ? ORDER BY ts DESC LIMIT 1 OFFSET ?)"),
                    (gid, gid, TASKS_PER_GROUP - 1),
                )  # fmt: skip

    # -- roll-up reads ---------------------------------------------------------------------

    def totals(
        self, since: float, until: float, prefix: str = "task:", key: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Summed roll-ups per key over [since, until): ``{key without prefix: {column:
        value}}`` (``rt_max``/``w_max`` are maxima). Times are rounded out to whole
        minutes."""
        hint = self.dialect.key_range_hint
        acc: dict[str, list[float]] = {}
        for table, lo, hi in spans(since, until):
            if key is not None:
                cond, params = "key = ?", [prefix + key]
            else:
                cond = f"{hint}key >= ? AND {hint}key < ?"
                params = [prefix, prefix[:-1] + chr(ord(":") + 1)]
            rows = self._read(
                self._q(f"SELECT key, {self.dialect.aggregates} FROM {table} WHERE {cond} "
                        "AND start >= ? AND start < ? GROUP BY key"),
                [*params, lo, hi],
            )  # fmt: skip
            for k, *vals in rows:
                a = acc.get(k)
                if a is None:
                    acc[k] = [v or 0 for v in vals]
                else:
                    for i, c in enumerate(ROLLUP_COLUMNS):
                        v = vals[i] or 0
                        a[i] = max(a[i], v) if c in MAX_COLUMNS else a[i] + v
        return {k[len(prefix) :]: dict(zip(ROLLUP_COLUMNS, v)) for k, v in acc.items()}

    def series(
        self, since: float, until: float, bucket: int, key: str
    ) -> list[tuple[int, dict[str, Any]]]:
        """Per ``bucket`` seconds (a multiple of 60) over [since, until) for one full key:
        ``[(bucket start, {column: value}), ...]`` for the buckets that have data."""
        table = "insight_hours" if bucket % 3600 == 0 else "insight_minutes"
        rows = self._read(
            self._q(f"SELECT (start / ?) * ? AS b, {self.dialect.aggregates} FROM {table} "
                    "WHERE key = ? AND start >= ? AND start < ? GROUP BY b ORDER BY b"),
            [int(bucket), int(bucket), key, int(since), int(until)],
        )  # fmt: skip
        return [(int(b), dict(zip(ROLLUP_COLUMNS, vals))) for b, *vals in rows]

    def task_keys(self) -> list[str]:
        """The task names with roll-ups (any period kept)."""
        return [r[0][5:] for r in self._read(
            "SELECT DISTINCT key FROM insight_hours WHERE key >= 'task:' AND key < 'task;'"
        )]  # fmt: skip

    # -- meta and the history's tasks (for the first backfill) -----------------------------

    def get_meta(self, key: str) -> str | None:
        """The value of ``insight_meta[key]``, None when unset."""
        rows = self._read(self._q("SELECT value FROM insight_meta WHERE key = ?"), (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        """Set ``insight_meta[key]`` to ``value``."""
        with self._transaction() as c:
            c.execute(
                self._q("INSERT INTO insight_meta (key, value) VALUES (?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value"),
                (key, value),
            )  # fmt: skip

    def history_tasks(self, after_id: int, before: float, limit: int) -> list[dict[str, Any]]:
        """Finished tasks of the history store's ``tasks`` table in the same database (id
        order, ``id > after_id``, last updated before ``before``; dicts of the columns
        ``id uuid name state worker sent received started timestamp runtime eta routing_key
        exception traceback root_id``); ``[]`` without that table."""
        try:
            rows = self._read(
                self._q(f"SELECT {', '.join(_HISTORY_COLS)} FROM tasks WHERE id > ? AND "
                        "timestamp < ? AND state IN ('SUCCESS', 'FAILURE', 'REVOKED', 'RETRY') "
                        "ORDER BY id LIMIT ?"),
                (after_id, before, limit),
            )  # fmt: skip
        except self._missing_table:  # no history table in this database
            return []
        return [dict(zip(_HISTORY_COLS, r)) for r in rows]

    def canvas_members(self, root: str, limit: int = 1000) -> list[str]:
        """Ids of the tasks seen with ``root`` as their root id (the root excluded), oldest
        first."""
        rows = self._read(
            self._q("SELECT uuid FROM insight_canvas WHERE root = ? ORDER BY ts LIMIT ?"),
            (root, limit),
        )
        return [r[0] for r in rows]

    # -- error groups ----------------------------------------------------------------------

    def error_groups(
        self, since: float | None = None, name: str | None = None, group: str | None = None
    ) -> list[dict[str, Any]]:
        """Error groups seen since ``since`` (all by default), newest first: dicts with
        ``id name exception_type message sample_exception sample_traceback sample_task
        failures retries first_seen last_seen resolved_at workers`` (``workers``: ``{worker
        name: failures}``)."""
        conds: list[str] = []
        params: list[Any] = []
        for cond, value in (("last_seen >= ?", since), ("name = ?", name), ("id = ?", group)):
            if value is not None:
                conds.append(cond)
                params.append(value)
        where = " AND ".join(conds) or "true"
        rows = self._read(
            self._q("SELECT id, name, exc_type, message, sample_exception, sample_traceback, "
                    "sample_task, failures, retries, first_seen, last_seen, resolved_at, "
                    f"workers FROM insight_error_groups WHERE {where} "
                    "ORDER BY last_seen DESC, id"),
            params,
        )  # fmt: skip
        out = []
        for r in rows:
            d = dict(zip(_GROUP_KEYS, r))
            d["workers"] = json.loads(d["workers"])
            out.append(d)
        return out

    def error_counts(
        self, ids: list[str], since: float, until: float, bucket: int
    ) -> dict[str, list[int]]:
        """Occurrences per ``bucket`` seconds over [since, until) for each group id:
        ``{id: [count per bucket]}``."""
        n = max(1, math.ceil((until - since) / bucket))
        out = {i: [0] * n for i in ids}
        if not ids:
            return out
        for gid, start, count in self._read(
            self._q(f"SELECT id, start, n FROM insight_error_minutes WHERE id IN ({_in(ids)}) "
                    "AND start >= ? AND start < ?"),
            [*ids, int(since // 60 * 60), until],
        ):  # fmt: skip
            i = int((start - since) // bucket)
            if 0 <= i < n:
                out[gid][i] += count
        return out

    def error_tasks(
        self, group: str, limit: int = 1000, kind: str | None = None
    ) -> list[dict[str, Any]]:
        """The group's most recent occurrences ``{"uuid", "ts", "kind"}``, newest first."""
        sql = "SELECT uuid, ts, kind FROM insight_error_tasks WHERE id = ?"
        params: list[Any] = [group]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        rows = self._read(self._q(sql + " ORDER BY ts DESC LIMIT ?"), [*params, limit])
        return [{"uuid": u, "ts": ts, "kind": k} for u, ts, k in rows]

    def mark_retried(self, group: str, uuids: Iterable[str]) -> None:
        """Mark these failures of the group as sent again (kind ``retried``): a later retry
        of the group leaves them out (any process may call it: a retry from a follower's page
        is marked in the shared table)."""
        rows = [(group, u) for u in uuids]
        if not rows:
            return
        with self._transaction() as c:
            c.executemany(
                self._q("UPDATE insight_error_tasks SET kind = 'retried' "
                        "WHERE id = ? AND uuid = ?"),
                rows,
            )  # fmt: skip

    # -- alerts ----------------------------------------------------------------------------

    def open_alert(self, rule: str, kind: str, subject: str, value: float | None,
                   threshold: float | None, message: str, now: float) -> int:  # fmt: skip
        """Record a firing alert; its id."""
        with self._transaction() as c:
            row = c.execute(
                self._q("INSERT INTO insight_alerts (rule, kind, subject, status, value, "
                        "threshold, message, started) VALUES (?, ?, ?, 'firing', ?, ?, ?, ?) "
                        "RETURNING id"),
                (rule, kind, subject, value, threshold, message, now),
            ).fetchone()  # fmt: skip
        return int(row[0])

    def update_alert(self, alert_id: int, **fields: Any) -> None:
        """Set ``fields`` (``status value message resolved notified notifications
        delivery``) of alert ``alert_id``; ``ValueError`` naming any other field."""
        bad = set(fields) - _ALERT_FIELDS
        if bad:
            raise ValueError(f"unknown alert field(s) {sorted(bad)}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._transaction() as c:
            c.execute(
                self._q(f"UPDATE insight_alerts SET {sets} WHERE id = ?"),
                (*fields.values(), alert_id),
            )

    def alerts(self, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Alerts, newest first (``status`` ``firing`` or ``resolved`` to filter): dicts with
        ``id rule kind subject status value threshold message started resolved notified
        notifications delivery``."""
        sql = ("SELECT id, rule, kind, subject, status, value, threshold, message, started, "
               "resolved, notified, notifications, delivery FROM insight_alerts")  # fmt: skip
        params: list[Any] = []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        rows = self._read(
            self._q(sql + " ORDER BY started DESC, id DESC LIMIT ?"), [*params, limit]
        )
        return [dict(zip(_ALERT_KEYS, r)) for r in rows]
