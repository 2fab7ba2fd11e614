"""The insight tables: per-minute and per-hour roll-ups, error groups and alert history.

They live in the history store's SQLite file (``CELERY_MONITOR_DB``) beside its ``tasks``
table, all named ``insight_*``, so they survive restarts and follow the same retention
(``CELERY_MONITOR_RETENTION_DAYS``). Without a history they live in an in-memory SQLite
database for the life of the process: counted from the events this process consumes, starting
empty (no backfill). With a PostgreSQL history the same tables are in that database
(:mod:`.pg_store`, same methods and shapes). With ``CELERY_MONITOR_SINGLE_INGESTER`` only the
ingester writes them and every process reads them (see :mod:`.engine`).

Roll-ups (``insight_minutes``, ``insight_hours`` and ``insight_days``) hold, per ``key`` and period start (Unix
seconds): finished counts, and two histograms, task runtime and queue wait, as
:data:`BUCKETS` integer columns each (``rt0`` ... and ``w0`` ...). Bucket ``i`` counts values
up to :func:`bucket_bound` ``(i)``; the bounds grow by √2 from 0.1 ms, so a percentile read
from them is within about 19 % of the exact one. Because histograms are columns, a 30-day
summary is a ``SUM(...) GROUP BY`` over about 30 daily rows and at most 48 hourly and 120
minute rows per key at its edges, done by SQLite.
Keys are ``task:<task name>`` and ``queue:<queue name>`` (queue wait only).

One connection, one lock: the insight thread writes once a second, web requests read.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from .pg_store import PgInsightStore

#: Histogram buckets per measure.
BUCKETS = 56
#: Upper bound of bucket 0, seconds.
BASE = 1e-4
COUNTS = ("succeeded", "failed", "retried", "revoked")
_RT = [f"rt{i}" for i in range(BUCKETS)]
_W = [f"w{i}" for i in range(BUCKETS)]
_SUMS = [*COUNTS, "rt_n", "rt_sum", *_RT, "w_n", "w_sum", *_W]
_MAXES = ["rt_max", "w_max"]
ROLLUP_COLUMNS = (*_SUMS, *_MAXES)

SCHEMA_VERSION = "1"
#: Roll-up tables by period (seconds): minutes, hours and days (UTC).
_LEVELS = {60: "insight_minutes", 3600: "insight_hours", 86400: "insight_days"}


def bucket_bound(i: int) -> float:
    """Upper bound (seconds) of histogram bucket ``i``; the last bucket has none (inf)."""
    return math.inf if i >= BUCKETS - 1 else BASE * 2 ** (i / 2)


def bucket_of(value: float) -> int:
    """The histogram bucket of a duration in seconds (negative values count as 0)."""
    if value <= BASE:
        return 0
    return min(BUCKETS - 1, math.ceil(2 * math.log2(value / BASE) - 1e-9))


def percentile(hist: list[int], p: float, vmax: float | None = None) -> float | None:
    """The ``p`` (0-1) percentile of a histogram: the geometric middle of its bucket.

    Never above ``vmax`` (the exact maximum) when given. None for an empty histogram.
    """
    n = sum(hist)
    if n == 0:
        return None
    rank = max(1, math.ceil(p * n))
    seen = 0
    for i, c in enumerate(hist):
        seen += c
        if seen >= rank:
            hi = BASE * 2 ** (i / 2)
            value = hi if i == 0 else hi / 2**0.25
            return min(value, vmax) if vmax is not None else value
    return vmax  # pragma: no cover - unreachable: seen reaches n


def _schema() -> str:
    cols = ", ".join(
        f"{c} {'REAL' if c.endswith(('_sum', '_max')) else 'INTEGER'} NOT NULL DEFAULT 0"
        for c in ROLLUP_COLUMNS
    )
    tables = "\n".join(
        f"CREATE TABLE IF NOT EXISTS {t} (key TEXT NOT NULL, start INTEGER NOT NULL, {cols}, "
        "PRIMARY KEY (start, key)) WITHOUT ROWID;\n"
        f"CREATE INDEX IF NOT EXISTS {t}_key ON {t}(key, start);"
        for t in _LEVELS.values()
    )
    return f"""
{tables}
CREATE TABLE IF NOT EXISTS insight_error_groups (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, exc_type TEXT NOT NULL, message TEXT NOT NULL,
    sample_exception TEXT, sample_traceback TEXT, sample_task TEXT,
    failures INTEGER NOT NULL DEFAULT 0, retries INTEGER NOT NULL DEFAULT 0,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, resolved_at REAL,
    workers TEXT NOT NULL DEFAULT '{{}}'
);
CREATE INDEX IF NOT EXISTS insight_error_groups_last ON insight_error_groups(last_seen);
CREATE INDEX IF NOT EXISTS insight_error_groups_name ON insight_error_groups(name);
CREATE TABLE IF NOT EXISTS insight_error_minutes (
    id TEXT NOT NULL, start INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (id, start)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS insight_error_tasks (
    id TEXT NOT NULL, uuid TEXT NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL,
    PRIMARY KEY (id, uuid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS insight_error_tasks_ts ON insight_error_tasks(id, ts);
CREATE TABLE IF NOT EXISTS insight_alerts (
    id INTEGER PRIMARY KEY, rule TEXT NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL,
    status TEXT NOT NULL, value REAL, threshold REAL, message TEXT NOT NULL,
    started REAL NOT NULL, resolved REAL, notified REAL, notifications INTEGER NOT NULL DEFAULT 0,
    delivery TEXT
);
CREATE INDEX IF NOT EXISTS insight_alerts_started ON insight_alerts(started);
CREATE TABLE IF NOT EXISTS insight_canvas (
    root TEXT NOT NULL, uuid TEXT NOT NULL, ts REAL NOT NULL,
    PRIMARY KEY (root, uuid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS insight_canvas_ts ON insight_canvas(ts);
CREATE TABLE IF NOT EXISTS insight_meta (key TEXT PRIMARY KEY, value TEXT);
INSERT OR IGNORE INTO insight_meta (key, value) VALUES ('schema', '{SCHEMA_VERSION}');
"""


def _upsert(table: str) -> str:
    cols = ", ".join(ROLLUP_COLUMNS)
    marks = ", ".join("?" for _ in ROLLUP_COLUMNS)
    sets = ", ".join(
        [f"{c} = {c} + excluded.{c}" for c in _SUMS]
        + [f"{c} = max({c}, excluded.{c})" for c in _MAXES]
    )
    return (
        f"INSERT INTO {table} (key, start, {cols}) VALUES (?, ?, {marks}) "
        f"ON CONFLICT(start, key) DO UPDATE SET {sets}"
    )


_UPSERT = {t: _upsert(t) for t in _LEVELS.values()}
_INDEX = {c: i for i, c in enumerate(ROLLUP_COLUMNS)}


@dataclass
class Rollup:
    """Counts and histograms of one key over one period, being accumulated."""

    values: list[float] = field(default_factory=lambda: [0] * len(ROLLUP_COLUMNS))

    def count(self, column: str) -> None:
        self.values[_INDEX[column]] += 1

    def runtime(self, seconds: float) -> None:
        v = self.values
        v[_INDEX["rt_n"]] += 1
        v[_INDEX["rt_sum"]] += seconds
        v[_INDEX[_RT[bucket_of(seconds)]]] += 1
        v[_INDEX["rt_max"]] = max(v[_INDEX["rt_max"]], seconds)

    def wait(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        v = self.values
        v[_INDEX["w_n"]] += 1
        v[_INDEX["w_sum"]] += seconds
        v[_INDEX[_W[bucket_of(seconds)]]] += 1
        v[_INDEX["w_max"]] = max(v[_INDEX["w_max"]], seconds)


@dataclass
class Failure:
    """One failure or retry, for its error group."""

    group: str
    name: str
    exc_type: str
    message: str
    exception: str
    traceback: str
    uuid: str
    worker: str
    ts: float
    kind: str  # "failure" | "retry" (later "retried": a failure sent again)


def merge_levels(rollups: Mapping[tuple[str, int], Rollup]) -> dict[str, list[tuple[Any, ...]]]:
    """Per-minute ``rollups`` ``{(key, minute start): Rollup}`` as the rows to add to each
    roll-up table: ``{table: [(key, period start, *ROLLUP_COLUMNS values)]}``."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for period, table in _LEVELS.items():
        acc: dict[tuple[str, int], list[float]] = {}
        for (key, start), r in rollups.items():
            k = (key, start - start % period)
            a = acc.get(k)
            if a is None:
                acc[k] = list(r.values)
            else:
                for i, col in enumerate(ROLLUP_COLUMNS):
                    a[i] = max(a[i], r.values[i]) if col in _MAXES else a[i] + r.values[i]
        rows[table] = [(k, s, *v) for (k, s), v in acc.items()]
    return rows


def spans(since: float, until: float) -> list[tuple[str, int, int]]:
    """(table, start, end) pieces covering [since, until) rounded out to minutes: whole days
    from the day table, whole hours around them, minutes at the edges."""
    lo = int(since // 60 * 60)
    hi = int(-(-until // 60) * 60)
    out: list[tuple[str, int, int]] = []

    def cover(a: int, b: int, periods: list[int]) -> None:
        period, rest = periods[0], periods[1:]
        if not rest:
            if a < b:
                out.append((_LEVELS[period], a, b))
            return
        p0 = -(-a // period) * period
        p1 = b // period * period
        if p1 <= p0:
            cover(a, b, rest)
            return
        out.append((_LEVELS[period], p0, p1))
        cover(a, p0, rest)
        cover(p1, b, rest)

    cover(lo, hi, [86400, 3600, 60])
    return out


#: Task ids kept per error group (the most recent), for links and bulk actions.
TASKS_PER_GROUP = 10_000
#: Workers listed per error group.
WORKERS_PER_GROUP = 50


class InsightStore:
    """The ``insight_*`` tables in ``path`` (``":memory:"`` for none). Thread-safe."""

    def __init__(self, path: str | None) -> None:
        self.path = path or ":memory:"
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            self.path, check_same_thread=False, timeout=30, isolation_level=None
        )
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            self._conn.executescript(_schema())

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    # -- writing ---------------------------------------------------------------------------

    def write(
        self,
        rollups: Mapping[tuple[str, int], Rollup],
        failures: Iterable[Failure] = (),
        resolved: Mapping[str, float] | None = None,
        members: Iterable[tuple[str, str, float]] = (),
    ) -> None:
        """Add per-minute ``rollups`` ``{(key, minute start): Rollup}`` (also to the hours),
        record ``failures`` in their groups and mark ``resolved`` ``{task name: time}``: the
        groups of that task not seen since then are resolved, and record canvas ``members``
        ``(root id, task id, time)``. One transaction."""
        rows = merge_levels(rollups)
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                for table, table_rows in rows.items():
                    c.executemany(_UPSERT[table], table_rows)
                for f in failures:
                    self._add_failure(c, f)
                c.executemany(
                    "INSERT OR IGNORE INTO insight_canvas (root, uuid, ts) VALUES (?, ?, ?)",
                    list(members),
                )
                for name, at in (resolved or {}).items():
                    c.execute(
                        "UPDATE insight_error_groups SET resolved_at = ? "
                        "WHERE name = ? AND resolved_at IS NULL AND last_seen < ?",
                        (at, name, at),
                    )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def _add_failure(self, c: sqlite3.Connection, f: Failure) -> None:
        row = c.execute(
            "SELECT workers FROM insight_error_groups WHERE id = ?", (f.group,)
        ).fetchone()
        failures, retries = (1, 0) if f.kind == "failure" else (0, 1)
        if row is None:
            workers = {f.worker: 1} if f.worker else {}
            c.execute(
                "INSERT INTO insight_error_groups (id, name, exc_type, message, "
                "sample_exception, sample_traceback, sample_task, failures, retries, "
                "first_seen, last_seen, workers) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (f.group, f.name, f.exc_type, f.message, f.exception, f.traceback, f.uuid,
                 failures, retries, f.ts, f.ts, json.dumps(workers)),
            )  # fmt: skip
        else:
            workers = json.loads(row[0])
            if f.worker and (f.worker in workers or len(workers) < WORKERS_PER_GROUP):
                workers[f.worker] = workers.get(f.worker, 0) + 1
            c.execute(
                "UPDATE insight_error_groups SET failures = failures + ?, retries = retries + ?,"
                " first_seen = min(first_seen, ?), last_seen = max(last_seen, ?),"
                " resolved_at = CASE WHEN ? >= last_seen THEN NULL ELSE resolved_at END,"
                " sample_exception = ?, sample_traceback = coalesce(?, sample_traceback),"
                " sample_task = ?, workers = ? WHERE id = ?",
                (failures, retries, f.ts, f.ts, f.ts, f.exception, f.traceback or None,
                 f.uuid, json.dumps(workers), f.group),
            )  # fmt: skip
        c.execute(
            "INSERT INTO insight_error_minutes (id, start, n) VALUES (?, ?, 1) "
            "ON CONFLICT(id, start) DO UPDATE SET n = n + 1",
            (f.group, int(f.ts // 60 * 60)),
        )
        c.execute(
            "INSERT OR REPLACE INTO insight_error_tasks (id, uuid, ts, kind) VALUES (?, ?, ?, ?)",
            (f.group, f.uuid, f.ts, f.kind),
        )

    def prune(self, older_than: float) -> None:
        """Forget roll-ups, error occurrences and alerts from before ``older_than``; keep at
        most :data:`TASKS_PER_GROUP` task ids per group."""
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                for t in (*_LEVELS.values(), "insight_error_minutes"):
                    c.execute(f"DELETE FROM {t} WHERE start < ?", (older_than,))
                c.execute("DELETE FROM insight_error_tasks WHERE ts < ?", (older_than,))
                c.execute("DELETE FROM insight_canvas WHERE ts < ?", (older_than,))
                c.execute("DELETE FROM insight_error_groups WHERE last_seen < ?", (older_than,))
                c.execute("DELETE FROM insight_alerts WHERE started < ? AND status = 'resolved'",
                          (older_than,))  # fmt: skip
                for (gid,) in c.execute(
                    "SELECT id FROM insight_error_tasks GROUP BY id HAVING count(*) > ?",
                    (TASKS_PER_GROUP,),
                ).fetchall():
                    c.execute(
                        "DELETE FROM insight_error_tasks WHERE id = ? AND ts < (SELECT ts FROM "
                        "insight_error_tasks WHERE id = ? ORDER BY ts DESC LIMIT 1 OFFSET ?)",
                        (gid, gid, TASKS_PER_GROUP - 1),
                    )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    # -- roll-up reads ---------------------------------------------------------------------

    def totals(
        self, since: float, until: float, prefix: str = "task:", key: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Summed roll-ups per key over [since, until): ``{key without prefix: {column:
        value}}`` (``rt_max``/``w_max`` are maxima). Times are rounded out to whole
        minutes."""
        cols = ", ".join([f"sum({c})" for c in _SUMS] + [f"max({c})" for c in _MAXES])
        acc: dict[str, list[float]] = {}
        for table, lo, hi in spans(since, until):
            if key is not None:
                cond, params = "key = ?", [prefix + key]
            else:
                # "+key": walk the primary key's time range, not every row of the key index
                cond = "+key >= ? AND +key < ?"
                params = [prefix, prefix[:-1] + chr(ord(":") + 1)]
            rows = self._read(
                f"SELECT key, {cols} FROM {table} WHERE {cond} AND start >= ? AND start < ? "
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
        """Per ``bucket`` seconds (a multiple of 60) over [since, until) for one full key:
        ``[(bucket start, {column: value}), ...]`` for the buckets that have data."""
        table = "insight_hours" if bucket % 3600 == 0 else "insight_minutes"
        cols = ", ".join([f"sum({c})" for c in _SUMS] + [f"max({c})" for c in _MAXES])
        rows = self._read(
            f"SELECT (start / ?) * ? AS b, {cols} FROM {table} WHERE key = ? AND start >= ? "
            "AND start < ? GROUP BY b ORDER BY b",
            [bucket, bucket, key, int(since), int(until)],
        )
        return [(int(b), dict(zip(ROLLUP_COLUMNS, vals))) for b, *vals in rows]

    def task_keys(self) -> list[str]:
        return [r[0][5:] for r in self._read(
            "SELECT DISTINCT key FROM insight_hours WHERE key >= 'task:' AND key < 'task;'"
        )]  # fmt: skip

    # -- meta and the history's tasks (for the first backfill) -----------------------------

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM insight_meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO insight_meta (key, value) VALUES (?, ?)", (key, value)
            )

    def history_tasks(self, after_id: int, before: float, limit: int) -> list[dict[str, Any]]:
        """Finished tasks of the history store's ``tasks`` table in the same file (id order,
        ``id > after_id``, last updated before ``before``); ``[]`` without that table."""
        cols = ("id", "uuid", "name", "state", "worker", "sent", "received", "started",
                "timestamp", "runtime", "eta", "routing_key", "exception", "traceback",
                "root_id")  # fmt: skip
        try:
            rows = self._read(
                f"SELECT {', '.join(cols)} FROM tasks WHERE id > ? AND timestamp < ? "
                "AND state IN ('SUCCESS', 'FAILURE', 'REVOKED', 'RETRY') ORDER BY id LIMIT ?",
                (after_id, before, limit),
            )
        except sqlite3.OperationalError:  # no history table in this file
            return []
        return [dict(zip(cols, r)) for r in rows]

    def canvas_members(self, root: str, limit: int = 1000) -> list[str]:
        """Ids of the tasks seen with ``root`` as their root id (the root excluded), oldest
        first."""
        rows = self._read(
            "SELECT uuid FROM insight_canvas WHERE root = ? ORDER BY ts LIMIT ?", (root, limit)
        )
        return [r[0] for r in rows]

    # -- error groups ----------------------------------------------------------------------

    def error_groups(
        self, since: float | None = None, name: str | None = None, group: str | None = None
    ) -> list[dict[str, Any]]:
        """Error groups seen since ``since`` (all by default), newest first."""
        conds: list[str] = []
        params: list[Any] = []
        if since is not None:
            conds.append("last_seen >= ?")
            params.append(since)
        if name is not None:
            conds.append("name = ?")
            params.append(name)
        if group is not None:
            conds.append("id = ?")
            params.append(group)
        where = " AND ".join(conds) or "1"
        rows = self._read(
            "SELECT id, name, exc_type, message, sample_exception, sample_traceback, "
            "sample_task, failures, retries, first_seen, last_seen, resolved_at, workers "
            f"FROM insight_error_groups WHERE {where} ORDER BY last_seen DESC, id",
            params,
        )
        keys = ("id", "name", "exception_type", "message", "sample_exception",
                "sample_traceback", "sample_task", "failures", "retries", "first_seen",
                "last_seen", "resolved_at", "workers")  # fmt: skip
        out = []
        for r in rows:
            d = dict(zip(keys, r))
            d["workers"] = json.loads(d["workers"])
            out.append(d)
        return out

    def error_counts(
        self, ids: list[str], since: float, until: float, bucket: int
    ) -> dict[str, list[int]]:
        """Occurrences per ``bucket`` seconds over [since, until) for each group id."""
        n = max(1, math.ceil((until - since) / bucket))
        out = {i: [0] * n for i in ids}
        if not ids:
            return out
        for gid, start, count in self._read(
            f"SELECT id, start, n FROM insight_error_minutes WHERE id IN "
            f"({', '.join('?' for _ in ids)}) AND start >= ? AND start < ?",
            [*ids, int(since // 60 * 60), until],
        ):
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
        rows = self._read(sql + " ORDER BY ts DESC LIMIT ?", [*params, limit])
        return [{"uuid": u, "ts": ts, "kind": k} for u, ts, k in rows]

    def mark_retried(self, group: str, uuids: Iterable[str]) -> None:
        """Mark these failures of the group as sent again (kind ``retried``): a later retry
        of the group leaves them out."""
        with self._lock:
            self._conn.executemany(
                "UPDATE insight_error_tasks SET kind = 'retried' WHERE id = ? AND uuid = ?",
                [(group, u) for u in uuids],
            )

    # -- alerts ----------------------------------------------------------------------------

    def open_alert(self, rule: str, kind: str, subject: str, value: float | None,
                   threshold: float | None, message: str, now: float) -> int:  # fmt: skip
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO insight_alerts (rule, kind, subject, status, value, threshold, "
                "message, started) VALUES (?, ?, ?, 'firing', ?, ?, ?, ?)",
                (rule, kind, subject, value, threshold, message, now),
            )
            return int(cur.lastrowid or 0)

    def update_alert(self, alert_id: int, **fields: Any) -> None:
        allowed = {"status", "value", "message", "resolved", "notified", "notifications",
                   "delivery"}  # fmt: skip
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown alert field(s) {sorted(bad)}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._conn.execute(
                f"UPDATE insight_alerts SET {sets} WHERE id = ?", (*fields.values(), alert_id)
            )

    def alerts(self, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Alerts, newest first (``status`` ``firing`` or ``resolved`` to filter)."""
        sql = ("SELECT id, rule, kind, subject, status, value, threshold, message, started, "
               "resolved, notified, notifications, delivery FROM insight_alerts")  # fmt: skip
        params: list[Any] = []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        rows = self._read(sql + " ORDER BY started DESC, id DESC LIMIT ?", [*params, limit])
        keys = ("id", "rule", "kind", "subject", "status", "value", "threshold", "message",
                "started", "resolved", "notified", "notifications", "delivery")  # fmt: skip
        return [dict(zip(keys, r)) for r in rows]


#: The insight tables: in SQLite (a file or memory) or in the history's PostgreSQL database
#: (:class:`~.pg_store.PgInsightStore`, the same methods and shapes).
AnyInsightStore = Union[InsightStore, "PgInsightStore"]
