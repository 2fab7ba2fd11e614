"""The embedded history store: one SQLite file in WAL mode.

Layout: ``tasks`` (one row per task, the columns of
:data:`~flask_celerymon.monitor.store.TASK_COLUMNS`, with an index per filter and sort key),
``tasks_fts`` (an FTS5 trigram index over args, kwargs and result; it answers substring search
without a scan), ``task_count`` (the number of tasks: ``count(*)`` reads every row, 150+ ms
at a million tasks, for the unfiltered list's total), ``task_names`` and ``task_workers``
(distinct values, for search), ``workers`` (JSON snapshots), ``meta``, and ``task_blocks``
(per block of ``2 ** block_shift`` consecutive ids, the largest ``received``, ``started`` and
``timestamp`` ever written there, kept by the writer for the rows it inserts and by a trigger
for the rows updated; ``blocks_state.upto``: the id up to which every row inserted is in its
block, the rows past it are read instead; see :meth:`SQLiteStore._block_bound`).

The count is kept by the two writers of ``tasks`` in their own transaction, once per batch,
not by a trigger per row: :meth:`SQLiteStore.write_tasks` adds the rows it inserted,
``max(id)`` after minus ``max(id)`` before (an ``INTEGER PRIMARY KEY`` without
``AUTOINCREMENT`` gives each new row ``max(id) + 1``, and an upsert that updates takes none),
:meth:`SQLiteStore.prune` subtracts the rows it deleted. A file of an earlier version loses
its counting triggers when opened (its count was already kept).

Trigram indexing is kept off the write path (it costs about 6 µs a row, a third of the row's
own write): :meth:`SQLiteStore.index_pending` indexes rows in batches up to a watermark
(``fts_state.upto``), as many a tick as were written (see :mod:`.housekeeping`); searches use
the index below it and scan the few newer rows. Triggers keep indexed rows right when they are
updated or deleted.

One connection writes (the service's housekeeping thread); every reading thread (or greenlet,
under gevent) holds a reader connection while it lives, so readers never wait for a batch
being written. A reader connection goes back to a small idle pool when its thread or greenlet
ends (at most :data:`IDLE_READERS` are kept; the rest are closed), so the connections, and
their page caches of ``cache_kb`` each, are bounded by the threads or greenlets reading at
once, never by the requests served.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .model import TASK_COLUMNS, TaskQuery, history_from_times
from .query import And, Node, Or, TextMatch, _fts_phrase, instr_sql, kwarg_pattern
from .settings import MonitorSettings
from .sql_query import (
    MIN_MAX_ID,
    SQLITE,
    SQLITE_SORT_INDEX,
    SearchSample,
    plan,
    sample_query,
)
from .store import HistoryStore

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"

_REAL = {"sent", "received", "started", "succeeded", "failed", "retried", "revoked", "rejected",
         "timestamp", "runtime"}  # fmt: skip
_INT = {"retries", "clock"}

#: The search index: trigrams, with the column of each occurrence but not its position
#: (``detail=column``: the index is only asked for single trigrams, see
#: :meth:`SQLiteStore._candidates`) and no per-row token counts (``columnsize=0``: no ranking).
#: With ``automerge`` 8 it costs half the default's time to write (6 against 12.5 µs a row at
#: 100,000 rows, ``bench/fts_cost.py``) and answers as fast.
_FTS_ARGS = (
    "args, kwargs, result, content='tasks', content_rowid='id', "
    "tokenize='trigram case_sensitive 1', detail=column, columnsize=0"
)
_FTS_AUTOMERGE = 8

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    {
    ", ".join(
        f"{c} {'REAL' if c in _REAL else 'INTEGER' if c in _INT else 'TEXT'}"
        + (" NOT NULL UNIQUE" if c == "uuid" else "")
        for c in TASK_COLUMNS
    )
}
);
CREATE INDEX IF NOT EXISTS tasks_received ON tasks(received);
CREATE INDEX IF NOT EXISTS tasks_started ON tasks(started);
CREATE INDEX IF NOT EXISTS tasks_runtime ON tasks(runtime);
CREATE INDEX IF NOT EXISTS tasks_timestamp ON tasks(timestamp);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state, received, name);
CREATE INDEX IF NOT EXISTS tasks_name ON tasks(name, received);
CREATE INDEX IF NOT EXISTS tasks_worker ON tasks(worker, received);
CREATE INDEX IF NOT EXISTS tasks_parent ON tasks(parent_id) WHERE parent_id IS NOT NULL;
CREATE VIRTUAL TABLE IF NOT EXISTS tasks_fts USING fts5({_FTS_ARGS});
CREATE TABLE IF NOT EXISTS task_count (n INTEGER NOT NULL);
INSERT INTO task_count (n) SELECT count(*) FROM tasks WHERE NOT EXISTS (SELECT 1 FROM task_count);
DROP TRIGGER IF EXISTS tasks_counted_in;
DROP TRIGGER IF EXISTS tasks_counted_out;
CREATE TABLE IF NOT EXISTS fts_state (upto INTEGER NOT NULL);
INSERT INTO fts_state (upto) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM fts_state);
CREATE TRIGGER IF NOT EXISTS tasks_ad AFTER DELETE ON tasks
WHEN old.id <= (SELECT upto FROM fts_state) BEGIN
    INSERT INTO tasks_fts(tasks_fts, rowid, args, kwargs, result)
    VALUES ('delete', old.id, old.args, old.kwargs, old.result);
END;
CREATE TRIGGER IF NOT EXISTS tasks_au AFTER UPDATE OF args, kwargs, result ON tasks
WHEN old.id <= (SELECT upto FROM fts_state)
    AND (old.args IS NOT new.args OR old.kwargs IS NOT new.kwargs
         OR old.result IS NOT new.result) BEGIN
    INSERT INTO tasks_fts(tasks_fts, rowid, args, kwargs, result)
    VALUES ('delete', old.id, old.args, old.kwargs, old.result);
    INSERT INTO tasks_fts(rowid, args, kwargs, result)
    VALUES (new.id, new.args, new.kwargs, new.result);
END;
CREATE TABLE IF NOT EXISTS task_names (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS task_workers (worker TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS workers (hostname TEXT PRIMARY KEY, data TEXT NOT NULL);
"""

_COLS = ", ".join(TASK_COLUMNS)
_UPSERT = (
    f"INSERT INTO tasks ({_COLS}) VALUES ({', '.join('?' for _ in TASK_COLUMNS)}) "
    "ON CONFLICT(uuid) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in TASK_COLUMNS if c != "uuid")
)
_HISTORY = TASK_COLUMNS.index("history")


@functools.lru_cache(maxsize=256)
def _upsert(nulls: tuple[bool, ...]) -> str:
    """The upsert of a row whose columns ``nulls`` marks (True: None) are NULL: it binds the
    others only (the NULLs are the columns' default), and sets every column on conflict."""
    cols = [c for c, null in zip(TASK_COLUMNS, nulls) if not null]
    return (
        f"INSERT INTO tasks ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
        "ON CONFLICT(uuid) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in TASK_COLUMNS if c != "uuid")
    )


@functools.lru_cache(maxsize=256)
def _insert(nulls: tuple[bool, ...]) -> str:
    """The insert of a row whose columns ``nulls`` marks are NULL, doing nothing when its uuid
    is stored already. Cheaper than :func:`_upsert` for a new task (17.5 against 23 µs a row
    at 100,000 tasks, ``bench/store_write_parts.py``: SQLite's ``DO UPDATE`` path costs a new
    row too), so each row is inserted with it first and only the rows it skipped are upserted."""
    cols = [c for c, null in zip(TASK_COLUMNS, nulls) if not null]
    return (
        f"INSERT INTO tasks ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
        "ON CONFLICT(uuid) DO NOTHING"
    )


def _bind_rows(
    rows: Sequence[tuple[Any, ...]],
) -> tuple[
    list[tuple[tuple[bool, ...], list[list[Any]]]],
    list[tuple[tuple[bool, ...], list[Any]]],
    set[Any],
    set[Any],
]:
    """The values :meth:`SQLiteStore.write_tasks` binds for ``rows`` (in
    :data:`.model.TASK_COLUMNS` order): ``(runs, built, names, workers)``. Consecutive rows
    with NULLs in the same columns make one run ``(nulls, [values, ...])``, written by one
    statement that names only their other columns (an omitted column is NULL, and so is its
    ``excluded.col``): binding a None costs about 0.35 µs (the sqlite3 module looks for an
    adapter of every value but int, float, str), and a task row has 10 of them. ``built``
    is each row's ``(nulls, values)`` in order; ``names`` and ``workers`` the non-empty task
    names and worker hostnames. A history is bound as its JSON text."""
    runs: list[tuple[tuple[bool, ...], list[list[Any]]]] = []
    built: list[tuple[tuple[bool, ...], list[Any]]] = []
    key: tuple[bool, ...] | None = None
    run: list[list[Any]] = []
    names = set()
    workers = set()
    for row in rows:
        hist = row[_HISTORY]
        if hist is not None:
            r = list(row)
            r[_HISTORY] = json.dumps(list(hist))
            row = tuple(r)
        k = tuple([v is None for v in row])
        if k != key:
            run = []
            runs.append((k, run))
            key = k
        values = [v for v in row if v is not None]
        run.append(values)
        built.append((k, values))
        names.add(row[1])
        workers.add(row[3])
    names.discard("")
    names.discard(None)
    workers.discard("")
    workers.discard(None)
    return runs, built, names, workers


_MAX_ID = "SELECT coalesce(max(id), 0) FROM tasks"
#: ``max(id)`` and the id up to which ``task_blocks`` bounds every row inserted.
_MAX_ID_BLOCKS = "SELECT coalesce(max(id), 0), (SELECT upto FROM blocks_state) FROM tasks"
_UUID = TASK_COLUMNS.index("uuid")
_NEW_UUIDS = "SELECT uuid FROM tasks WHERE id > ?"

_pattern_cache: dict[tuple[str, str], Any] = {}

#: A search term with fewer index hits than this is answered from the index; a more common one
#: by scanning in sort order, which finds a page quickly exactly because the term is common.
INDEX_HITS_MAX = 20_000
#: With at most this many matches a page is sorted from the matches, not read off an index.
SORT_MATCHES_MAX = 5_000
#: Trigram counts kept per search sample (:meth:`SQLiteStore._trigram_count`) before they are
#: dropped and counted again.
TRIGRAM_MEMO = 4096
#: SQLite virtual machine steps a search page may spend walking the sort column's index
#: before it is sorted from the candidates instead (a walk costs 25 - 60 steps a row: this
#: is 5,000 - 12,000 rows, a few ms).
PAGE_WALK_BUDGET = 300_000
#: Steps a common term's walk of the sort column's index may take before its candidates
#: are listed by the text index and sorted instead: about 20,000 - 40,000 rows read and
#: checked, or 200,000 rows outside the candidates' id range skipped per million steps.
COMMON_WALK_BUDGET = 4_000_000
#: SQLite virtual machine steps between two calls of the progress handler of a bounded walk.
PROGRESS_STEPS = 2000


#: Ids per ``task_blocks`` row: ``2 ** BLOCK_SHIFT``. A store keeps the shift it was made
#: with (``meta`` key :data:`SHIFT_KEY`).
BLOCK_SHIFT = 10
#: The ``meta`` key of the block shift of a store whose writer keeps the blocks of the rows
#: it inserts (``block_shift``: an earlier version's, kept by a trigger per row).
SHIFT_KEY = "block_shift_v2"
#: The sort columns ``task_blocks`` bounds.
BLOCK_COLUMNS = ("received", "started", "timestamp")


def _blocks_grow(shift: int) -> str:
    """The upsert growing the ``task_blocks`` rows of the tasks inserted in the current
    transaction (those with an id above the parameter: the ``max(id)`` before it) to the
    maxima of their rows."""
    cols = ", ".join(BLOCK_COLUMNS)
    grow = ", ".join(
        f"{c} = max(coalesce({c}, excluded.{c}), coalesce(excluded.{c}, {c}))"
        for c in BLOCK_COLUMNS
    )
    return (
        f"INSERT INTO task_blocks (block, {cols}) SELECT id >> {shift}, "
        + ", ".join(f"max({c})" for c in BLOCK_COLUMNS)
        + f" FROM tasks WHERE id > ? GROUP BY id >> {shift} "
        f"ON CONFLICT (block) DO UPDATE SET {grow}"
    )


def _blocks_schema(shift: int) -> list[str]:
    """The statements making ``task_blocks`` and its trigger for blocks of ``2 ** shift``
    ids. A block's values only grow (an update or a delete never lowers them), so each is an
    upper bound of the values of the rows in the block, which is all a search needs. Rows
    inserted are added by the writer once per transaction (:func:`_blocks_grow`: one upsert
    per block touched instead of a trigger per row); rows updated by the trigger, which
    fires only when a bounded column changes (a task written again: about 1 % of the rows)."""
    cols = ", ".join(BLOCK_COLUMNS)
    new = ", ".join(f"new.{c}" for c in BLOCK_COLUMNS)
    grow = ", ".join(
        f"{c} = max(coalesce({c}, excluded.{c}), coalesce(excluded.{c}, {c}))"
        for c in BLOCK_COLUMNS
    )
    upsert = (
        f"INSERT INTO task_blocks (block, {cols}) VALUES (new.id >> {shift}, {new}) "
        f"ON CONFLICT (block) DO UPDATE SET {grow};"
    )
    return [
        f"CREATE TABLE task_blocks (block INTEGER PRIMARY KEY, {cols})",
        f"CREATE TRIGGER tasks_blocks_up AFTER UPDATE OF {cols} ON tasks "
        f"WHEN {' OR '.join(f'new.{c} IS NOT old.{c}' for c in BLOCK_COLUMNS)} "
        f"BEGIN {upsert} END",
        _blocks_grow(shift).replace("?", "0"),
    ]


#: Reader connections kept open for the next reading thread or greenlet.
IDLE_READERS = 4


class _Lease:
    """A reader connection held in a thread's (a greenlet's) local storage: back to the idle
    pool when the thread-local is dropped, i.e. when the thread or greenlet ends."""

    __slots__ = ("conn", "store")

    def __init__(self, store: SQLiteStore, conn: sqlite3.Connection) -> None:
        self.store = store
        self.conn = conn

    def __del__(self) -> None:
        self.store._give_back(self.conn)


def _kwarg_match(kwargs: str | None, key: str, value: str) -> int:
    if not kwargs:
        return 0
    pat = _pattern_cache.get((key, value))
    if pat is None:
        if len(_pattern_cache) > 256:
            _pattern_cache.clear()
        pat = _pattern_cache[(key, value)] = kwarg_pattern(key, value)
    return 1 if pat.search(kwargs) else 0


class SQLiteStore(HistoryStore):
    """History in a SQLite file (created with its directory when missing).

    ``cache_kb``: the page cache of each connection (``PRAGMA cache_size``), in KiB; None
    takes :attr:`.MonitorSettings.db_cache_kb` (``CELERY_MONITOR_DB_CACHE_KB``). Raises
    ``ValueError`` for a value below 1.
    """

    unavailable_errors = (sqlite3.OperationalError, OSError)

    def __init__(self, path: str, cache_kb: int | None = None) -> None:
        if cache_kb is None:
            cache_kb = MonitorSettings.db_cache_kb
        if not isinstance(cache_kb, int) or isinstance(cache_kb, bool) or cache_kb < 1:
            raise ValueError(f"cache_kb must be an integer >= 1, not {cache_kb!r}")
        self.cache_kb = cache_kb
        self.path = path
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        self._local = threading.local()
        #: (the sample's texts per row, each row's texts joined, the sample's rows,
        #: trigram -> rows holding it), see :meth:`_trigram_count`
        self._trigram_sample: (
            tuple[list[tuple[str, ...]], list[str], list[Any], dict[str, int]] | None
        ) = None
        self._sample = SearchSample(self._sample_rows)
        self._write_lock = threading.Lock()
        self._closed = False
        self._all: list[sqlite3.Connection] = []
        self._idle: list[sqlite3.Connection] = []
        self._all_lock = threading.RLock()  # a lease may be given back under it (GC)
        try:
            self._writer = self._connect()
            self._writer.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            # Unreadable (not SQLite, truncated...): keep it for inspection, start afresh.
            bad = f"{path}.corrupt-{int(time.time())}"
            log.error("celerymon: history store %s is unreadable (%s); moved to %s", path, exc, bad)
            self.close()
            self._closed = False
            os.replace(path, bad)
            for suffix in ("-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.replace(path + suffix, bad + suffix)
            self._writer = self._connect()
        with self._write_lock:
            # one transaction: the count table and the old counting triggers change together
            try:
                self._writer.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
            except BaseException:
                if self._writer.in_transaction:
                    self._writer.execute("ROLLBACK")
                raise
            self._migrate_fts()
            self._block_shift = self._migrate_blocks()
            self._writer.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
            )

    def _migrate_blocks(self) -> int:
        """Make ``task_blocks`` and its trigger when missing (a new store, or one of an
        earlier version without them: filled from the rows, one read of the table), in one
        write transaction so no row is written between the fill and the trigger. A store
        whose blocks an earlier version kept with a trigger per inserted row (``meta`` key
        ``block_shift``) loses that trigger (its blocks are bounds already) and the key for
        :data:`SHIFT_KEY`, so that an earlier version opening the file again makes its
        triggers and blocks afresh. The rows past ``blocks_state.upto`` (inserted by another
        process without the trigger: an earlier version still writing in a rolling upgrade,
        or one that knew no blocks) have their blocks grown. Returns the store's block
        shift."""
        c = self._writer
        c.execute("BEGIN IMMEDIATE")
        try:
            covered = False  # every row is bounded already (by a trigger, or by the fill)
            row = c.execute("SELECT value FROM meta WHERE key = 'block_shift'").fetchone()
            if row is not None:  # an earlier version's blocks (kept by triggers)
                c.execute("DROP TRIGGER IF EXISTS tasks_blocks_in")
                c.execute("DELETE FROM meta WHERE key IN ('block_shift', ?)", (SHIFT_KEY,))
                c.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (SHIFT_KEY, row[0]))
                covered = True
            row = c.execute("SELECT value FROM meta WHERE key = ?", (SHIFT_KEY,)).fetchone()
            if row is None:
                c.execute("DROP TRIGGER IF EXISTS tasks_blocks_in")
                c.execute("DROP TRIGGER IF EXISTS tasks_blocks_up")
                c.execute("DROP TABLE IF EXISTS task_blocks")
                for sql in _blocks_schema(BLOCK_SHIFT):
                    c.execute(sql)
                c.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)", (SHIFT_KEY, str(BLOCK_SHIFT))
                )
                shift = BLOCK_SHIFT
                covered = True
            else:
                shift = int(row[0])
            c.execute("CREATE TABLE IF NOT EXISTS blocks_state (upto INTEGER NOT NULL)")
            top = c.execute(_MAX_ID).fetchone()[0]
            state = c.execute("SELECT upto FROM blocks_state").fetchone()
            if state is None:
                c.execute("INSERT INTO blocks_state (upto) VALUES (?)", (top if covered else 0,))
            elif covered:
                c.execute("UPDATE blocks_state SET upto = ?", (top,))
            self._blocks_grow = _blocks_grow(shift)
            self._cover_blocks(c, c.execute("SELECT upto FROM blocks_state").fetchone()[0], top)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return shift

    def _cover_blocks(self, c: sqlite3.Connection, upto: int, top: int) -> None:
        """Inside a write transaction on ``c``: grow the blocks of the rows past ``upto``
        (``blocks_state.upto``) up to ``top`` (``max(id)`` now), which no trigger put in a
        block, and move ``blocks_state.upto`` to ``top``."""
        start = min(upto, top)
        if start < top:
            c.execute(self._blocks_grow, (start,))
        if upto != top:
            c.execute("UPDATE blocks_state SET upto = ?", (top,))

    def _migrate_fts(self) -> None:
        """Rebuild a search index made with other options than :data:`_FTS_ARGS` (a store of
        an earlier version): dropped and made again empty, under the write lock of the file,
        so the housekeeping indexes every row again in the background (searches scan the
        rows not yet indexed meanwhile)."""
        c = self._writer
        c.execute("BEGIN IMMEDIATE")
        try:
            row = c.execute("SELECT sql FROM sqlite_master WHERE name = 'tasks_fts'").fetchone()
            if row is not None and "detail=column" not in row[0]:
                log.info("celerymon: rebuilding the search index of %s", self.path)
                c.execute("DROP TABLE tasks_fts")
                c.execute(f"CREATE VIRTUAL TABLE tasks_fts USING fts5({_FTS_ARGS})")
                c.execute("UPDATE fts_state SET upto = 0")
                row = None
            if (
                row is None
                or not c.execute("SELECT 1 FROM tasks_fts_config WHERE k = 'automerge'").fetchone()
            ):
                c.execute(
                    "INSERT INTO tasks_fts(tasks_fts, rank) VALUES ('automerge', ?)",
                    (_FTS_AUTOMERGE,),
                )
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute(f"PRAGMA cache_size=-{self.cache_kb}")
        conn.create_function("kwarg_match", 3, _kwarg_match, deterministic=True)
        with self._all_lock:
            self._all.append(conn)
        return conn

    @property
    def _reader(self) -> sqlite3.Connection:
        lease = getattr(self._local, "lease", None)
        if lease is None:
            if self._closed:
                raise RuntimeError(f"the history store {self.path} is closed")
            with self._all_lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = self._connect()
            lease = self._local.lease = _Lease(self, conn)
        return lease.conn

    def _give_back(self, conn: sqlite3.Connection) -> None:
        """A reader connection whose thread or greenlet ended: keep it idle or close it."""
        with self._all_lock:
            if not self._closed and len(self._idle) < IDLE_READERS and not conn.in_transaction:
                self._idle.append(conn)
                return
            try:
                self._all.remove(conn)
            except ValueError:
                return  # closed with the store already
        try:
            conn.close()
        except sqlite3.Error:  # pragma: no cover
            pass

    def open_connections(self) -> int:
        """Connections open now: the writer, the readers held, the idle readers."""
        with self._all_lock:
            return len(self._all)

    # -- writing ---------------------------------------------------------------------------

    def write_tasks(self, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        runs, built, names, workers = _bind_rows(rows)
        with self._write_lock:
            c = self._writer
            c.execute("BEGIN IMMEDIATE")
            try:
                # Rows inserted = growth of max(id): each new row takes max(id) + 1 (no
                # AUTOINCREMENT), an upsert that updates takes none, and nothing else writes
                # tasks inside this transaction.
                before, covered = c.execute(_MAX_ID_BLOCKS).fetchone()
                for k, values_ in runs:
                    c.executemany(_insert(k), values_)
                added = c.execute(_MAX_ID).fetchone()[0] - before
                if added < len(rows):
                    # Some rows were skipped (a task stored already, or twice in the batch):
                    # the first row of each uuid inserted took an id above ``before``; every
                    # other row is upserted now, in order, as if each row had been upserted.
                    fresh = {u for (u,) in c.execute(_NEW_UUIDS, (before,))}
                    for (k, values_), row in zip(built, rows):
                        u = row[_UUID]
                        if u in fresh:
                            fresh.discard(u)
                        else:
                            c.execute(_upsert(k), values_)
                if added:
                    c.execute("UPDATE task_count SET n = n + ?", (added,))
                # The blocks of the rows inserted here, and of any another process inserted
                # without the trigger since the last write (an earlier version still
                # writing in a rolling upgrade): those past ``blocks_state.upto``.
                # (from ``before`` at most: ids an older process freed are taken again)
                self._cover_blocks(c, min(covered, before), before + added)
                c.executemany(
                    "INSERT OR IGNORE INTO task_names (name) VALUES (?)", [(n,) for n in names]
                )
                c.executemany(
                    "INSERT OR IGNORE INTO task_workers (worker) VALUES (?)",
                    [(w,) for w in workers],
                )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def index_pending(self, max_rows: int) -> int:
        """Add up to ``max_rows`` rows past the watermark to the search index; returns how many."""
        with self._write_lock:
            c = self._writer
            c.execute("BEGIN IMMEDIATE")
            try:
                upto = c.execute("SELECT upto FROM fts_state").fetchone()[0]
                last = c.execute(
                    "SELECT max(id) FROM (SELECT id FROM tasks WHERE id > ? ORDER BY id LIMIT ?)",
                    (upto, max_rows),
                ).fetchone()[0]
                if last is None:
                    c.execute("COMMIT")
                    return 0
                n = c.execute(
                    "INSERT INTO tasks_fts (rowid, args, kwargs, result) "
                    "SELECT id, args, kwargs, result FROM tasks WHERE id > ? AND id <= ?",
                    (upto, last),
                ).rowcount
                c.execute("UPDATE fts_state SET upto = ?", (last,))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return n

    def unindexed(self) -> int:
        """Rows not yet in the search index."""
        return int(
            self._reader.execute(
                "SELECT count(*) FROM tasks WHERE id > (SELECT upto FROM fts_state)"
            ).fetchone()[0]
        )

    def _tx(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        """Run ``(sql, rows)`` executemany statements in one write transaction."""
        n = 0
        with self._write_lock:
            c = self._writer
            c.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in statements:
                    n += c.executemany(sql, rows).rowcount
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return n

    def write_workers(self, workers: Mapping[str, Mapping[str, Any]]) -> None:
        if workers:
            rows = [(h, json.dumps(d, default=str)) for h, d in workers.items()]
            self._tx([("INSERT OR REPLACE INTO workers (hostname, data) VALUES (?, ?)", rows)])

    def get_meta(self, key: str) -> str | None:
        r = self._reader.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if r is None else r[0]

    def set_meta(self, values: Mapping[str, str | None]) -> None:
        self._tx(
            [
                (
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    [(k, v) for k, v in values.items() if v is not None],
                ),
                ("DELETE FROM meta WHERE key = ?", [(k,) for k, v in values.items() if v is None]),
            ]
        )

    def delete_workers(self, hostnames: Iterable[str]) -> None:
        hs = [(h,) for h in hostnames]
        if hs:
            self._tx([("DELETE FROM workers WHERE hostname = ?", hs)])

    def prune(self, max_tasks: int, older_than: float) -> int:
        with self._write_lock:
            c = self._writer
            c.execute("BEGIN IMMEDIATE")
            try:
                deleted = c.execute("DELETE FROM tasks WHERE timestamp < ?", (older_than,)).rowcount
                n = c.execute("SELECT n FROM task_count").fetchone()[0] - deleted
                if n > max_tasks:
                    deleted += c.execute(
                        "DELETE FROM tasks WHERE id IN "
                        "(SELECT id FROM tasks ORDER BY timestamp LIMIT ?)",
                        (n - max_tasks,),
                    ).rowcount
                if deleted:
                    c.execute("UPDATE task_count SET n = n - ?", (deleted,))
                    # The next rows take the ids past max(id) again (no AUTOINCREMENT): the
                    # search index's watermark comes down to it, or they would count as
                    # indexed (never indexed, not found by search, and a later update would
                    # delete index entries they do not have). The deleted rows left the
                    # index with them (trigger tasks_ad), so every id below stays indexed.
                    c.execute(f"UPDATE fts_state SET upto = min(upto, ({_MAX_ID}))")
                    # and the blocks' (the ids past max(id) are taken again by the next rows)
                    c.execute(f"UPDATE blocks_state SET upto = min(upto, ({_MAX_ID}))")
                    # blocks wholly below the smallest id bound nothing any more
                    c.execute(
                        "DELETE FROM task_blocks WHERE block < (SELECT min(id) FROM tasks) >> "
                        f"{self._block_shift}"
                    )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("PRAGMA optimize")
            return deleted

    # -- reading ---------------------------------------------------------------------------

    def load_workers(self) -> dict[str, dict[str, Any]]:
        rows = self._reader.execute("SELECT hostname, data FROM workers").fetchall()
        return {h: json.loads(d) for h, d in rows}

    def get_task(self, uuid: str) -> dict[str, Any] | None:
        r = self._reader.execute(f"SELECT {_COLS} FROM tasks WHERE uuid = ?", (uuid,)).fetchone()
        return None if r is None else task_from_row(r)

    def children(self, uuid: str) -> list[str]:
        rows = self._reader.execute(
            "SELECT uuid FROM tasks WHERE parent_id = ? ORDER BY id", (uuid,)
        ).fetchall()
        return [r[0] for r in rows]

    def task_names(self) -> list[str]:
        return [r[0] for r in self._reader.execute("SELECT name FROM task_names ORDER BY name")]

    def count(self) -> int:
        return int(self._reader.execute("SELECT n FROM task_count").fetchone()[0])

    def is_empty(self) -> bool:
        return self._reader.execute("SELECT 1 FROM tasks LIMIT 1").fetchone() is None

    def _text_match(
        self,
        c: sqlite3.Connection,
        limit: int | None = INDEX_HITS_MAX,
        looked_up: list[int] | None = None,
    ) -> TextMatch:
        """Substring conditions for :func:`.sql_query.plan` on connection ``c``: the rows the
        FTS index names as candidates (in a temp table) plus the rows past its watermark,
        then the exact ``instr`` check; a scan when the index names ``limit`` rows or more
        (None: no limit). The number of candidates of each term answered from the index is
        appended to ``looked_up``."""
        n_hits = 0

        def text_match(columns: tuple[str, ...], phrases: list[str], ps: list[Any]) -> str:
            nonlocal n_hits
            ids = self._candidates(c, columns, phrases, limit)
            table = f"temp.hits{n_hits}"
            n_hits += 1
            c.execute(f"CREATE TEMP TABLE IF NOT EXISTS hits{n_hits - 1} "
                      "(id INTEGER PRIMARY KEY)")  # fmt: skip
            c.execute(f"DELETE FROM {table}")
            # straight from the index into the temp table (no round trip through Python:
            # 6 ms for 11k candidates)
            n = c.execute(f"INSERT INTO {table} (id) {ids[0]}", ids[1]).rowcount
            if limit is not None and n >= limit:
                return instr_sql(columns, phrases, ps)
            if looked_up is not None:
                looked_up.append(n)
            # One rowid list (the candidates plus the rows past the index watermark), so
            # the condition can drive a plan by itself; then the exact check.
            tail = instr_sql(columns, phrases, ps)
            return (
                f"(id IN (SELECT id FROM {table} UNION ALL SELECT id FROM tasks "
                f"WHERE id > (SELECT upto FROM fts_state)) AND {tail})"
            )

        return text_match

    def prepare_search(self) -> None:
        """See :meth:`HistoryStore.prepare_search`: the search sample (about 5 - 15 ms at
        100,000 tasks, a read of 1,000 rows) is taken again here when it is older than
        :data:`~.sql_query.SAMPLE_TTL` or the store grew or shrank by
        :data:`~.sql_query.SAMPLE_DRIFT`; otherwise one index probe."""
        top = self._reader.execute(_MAX_ID).fetchone()[0]
        if top:
            self._sample.rows(top)

    def _trigram_count(self, tri: str) -> int:
        """In how many of the search sample's random rows (:class:`~.sql_query.SearchSample`)
        the three-character string ``tri`` occurs in ``args``, ``kwargs`` or ``result``;
        kept until the search sample is taken again. (The newest rows were sampled before: a
        burst of similar new tasks hid which trigrams are rare in the rest, and a
        rare-looking trigram then listed most rows.)

        Counted on demand, for the trigrams of the phrases searched only (about 0.05 ms a
        trigram at 1,000 sampled rows): counting every trigram of the sample at once cost
        14 - 22 ms, paid by the first search after each new sample."""
        rows_ = self._sample.rows()
        held = self._trigram_sample
        if held is None or held[2] is not rows_:  # (a new sample is a new list)
            texts = [tuple(t for t in (r.args, r.kwargs, r.result) if t) for r in rows_]
            # one string a row: a substring test per row instead of one per column (a
            # trigram spanning the separator holds it, and is counted per column below)
            joined = ["\x00".join(ts) for ts in texts]
            held = self._trigram_sample = (texts, joined, rows_, {})
        counts = held[3]
        n = counts.get(tri)
        if n is None:
            if "\x00" in tri:
                n = sum(1 for ts in held[0] if any(tri in t for t in ts))
            else:
                n = sum(1 for j in held[1] if tri in j)
            if len(counts) >= TRIGRAM_MEMO:
                counts.clear()
            counts[tri] = n
        return n

    def _sample_rows(self) -> list[tuple[Any, ...]]:
        c = self._reader
        lo, hi = c.execute(MIN_MAX_ID).fetchone()
        return c.execute(*sample_query(SQLITE, lo, hi)).fetchall()

    def _candidate_match(
        self, columns: tuple[str, ...], phrases: list[str], trigrams: int = 2
    ) -> str | None:
        """The FTS5 ``MATCH`` expression of the indexed rows that may hold one of
        ``phrases`` in one of ``columns`` (rows holding its ``trigrams`` rarest trigrams);
        None when a phrase has no trigram (the index cannot look it up).

        A trigram phrase query walks the posting list of every trigram of the phrase, and
        common trigrams ("cus", "er-") list nearly every row. So ask the index only for rows
        holding the two trigrams of the phrase that are rarest in the search sample; the
        ``instr`` check in the SQL condition then keeps the exact matches. The sample only
        steers speed: any two trigrams of a phrase give a superset of its matches.
        """
        count = self._trigram_count
        parts = []
        for phrase in phrases:
            tris = sorted({phrase[i : i + 3] for i in range(len(phrase) - 2)},
                          key=lambda t: (count(t), t))  # fmt: skip
            if not tris:
                return None
            parts.append("(" + " AND ".join(_fts_phrase(t) for t in tris[:trigrams]) + ")")
        return f"{{{' '.join(columns)}}} : ({' OR '.join(parts)})" if parts else None

    def _candidates(
        self,
        c: sqlite3.Connection,
        columns: tuple[str, ...],
        phrases: list[str],
        limit: int | None = INDEX_HITS_MAX,
    ) -> tuple[str, list[Any]]:
        """``(sql, params)`` selecting the indexed rows (at most ``limit``; None: all) that
        may hold one of ``phrases`` (see :meth:`_candidate_match`)."""
        match = self._candidate_match(columns, phrases)
        if match is None:
            return "SELECT NULL WHERE 0", []
        return (
            "SELECT rowid FROM tasks_fts WHERE tasks_fts MATCH ? LIMIT ?",
            [match, -1 if limit is None else limit],
        )

    def _ranged_scan(
        self,
        c: sqlite3.Connection,
        upto: int,
        top: int,
        descending: bool,
        ranges: list[tuple[int, int] | None] | None = None,
    ) -> TextMatch:
        """Substring conditions of a common term for :func:`.sql_query.plan` on connection
        ``c``: the exact ``instr`` check, behind the range of ids the FTS index names as
        candidates (the smallest and largest id holding the phrase's rarest trigram, two
        probes of its posting list) and the rows past the index watermark ``upto`` (when
        ``top``, the largest id, is past it).

        SQLite checks the range on the entry of the sort column's index (which holds the
        rowid), so a walk skips the rows outside it without reading them: a common term
        whose matches lie half a million rows down the sort order (the tasks of one week)
        is found after about 4 VM steps per skipped entry (22 ms at a million tasks), not
        25-60 steps and a read of each row. ``descending``: the walk's direction; the bound
        the skipped rows most likely fail (newer ids when walking down) is checked first.
        The range holds every match, so it changes nothing in the answer. ``ranges``: each
        term's id ranges (inclusive) are appended to it, or None for a term not bounded by
        ids (a phrase without a trigram), see :meth:`_block_bound`."""

        def text_match(columns: tuple[str, ...], phrases: list[str], ps: list[Any]) -> str:
            match = self._candidate_match(columns, phrases, trigrams=1)
            if match is None:
                if ranges is not None:
                    ranges.append(None)
                return instr_sql(columns, phrases, ps)
            lo, hi = c.execute(
                "SELECT (SELECT rowid FROM tasks_fts WHERE tasks_fts MATCH ?1 ORDER BY rowid "
                "LIMIT 1), (SELECT rowid FROM tasks_fts WHERE tasks_fts MATCH ?1 ORDER BY "
                "rowid DESC LIMIT 1)",
                (match,),
            ).fetchone()
            conds = []
            if lo is not None:
                if descending:
                    conds.append("(id <= ? AND id >= ?)")
                    ps.extend([hi, lo])
                else:
                    conds.append("(id >= ? AND id <= ?)")
                    ps.extend([lo, hi])
            if top > upto:
                conds.append("id > ?")
                ps.append(upto)
            if ranges is not None:
                if lo is not None:
                    ranges.append((lo, hi))
                if top > upto:
                    ranges.append((upto + 1, top))
            if not conds:
                return "1 = 0"
            return f"(({' OR '.join(conds)}) AND {instr_sql(columns, phrases, ps)})"

        return text_match

    def _block_bound(
        self, c: sqlite3.Connection, column: str, ranges: list[tuple[int, int] | None]
    ) -> Any:
        """The largest ``column`` value (``received``, ``started`` or ``timestamp``) written
        to any row whose id lies in one of ``ranges`` (inclusive id ranges), from
        ``task_blocks``: at least the value of each such row (``NULL`` values aside). None
        when a range is None (a term not bounded by ids), there is no range, or no such row
        has a value.

        A common term whose matches lie far down the sort order (the tasks of one week among
        a million) is walked from this value: the sort column's index is entered at the
        bound instead of being stepped over from the newest task (500,000 entries, about
        22 ms, for ``result:"'order': 5"`` at a million tasks)."""
        if column not in BLOCK_COLUMNS or not ranges or None in ranges:
            return None
        shift = self._block_shift
        spans = [r for r in ranges if r is not None]
        where_ = " OR ".join("block BETWEEN ? AND ?" for _ in spans)
        params = [b for lo, hi in spans for b in (lo >> shift, hi >> shift)]
        # (and the rows past blocks_state.upto, not in any block yet: inserted by another
        # process without the trigger since this version's last write; usually none)
        # (``+id``: the rowid range is ``id > upto``, the spans only filter it)
        ids = " OR ".join("+id BETWEEN ? AND ?" for _ in spans)
        params += [i for span in spans for i in span]
        return c.execute(
            f"SELECT max(m) FROM (SELECT max({column}) AS m FROM task_blocks WHERE {where_} "
            f"UNION ALL SELECT max({column}) FROM tasks "
            f"WHERE id > (SELECT upto FROM blocks_state) AND ({ids}))",
            params,
        ).fetchone()[0]

    def query(self, q: TaskQuery) -> tuple[int, list[dict[str, Any]]]:
        """See :meth:`HistoryStore.query`. The SQL comes from :func:`.sql_query.plan`: a
        query with a filter or search counts at most :data:`~.sql_query.COUNT_CAP` matches,
        a search on a common term (:class:`~.sql_query.SearchSample`) a page past the one
        asked for (check :attr:`last_count_exact`); the count and the page are read in one
        snapshot."""
        c = self._reader
        c.execute("BEGIN")  # one snapshot for the count and the page
        try:
            # max(id) (one index probe) bounds the number of tasks: close enough to steer
            top = c.execute("SELECT coalesce(max(id), 0) FROM tasks").fetchone()[0]
            common = q.search is not None and self._sample.is_common(q.search, top)

            # A common term is checked row by row while walking the sort index (it matches
            # many rows, so a page comes quickly); a rare one is looked up in the index.
            # Names and workers containing a term are listed first (``name IN (...)``), so
            # an OR of them with other conditions is a union of index lookups; a subquery
            # over task_names there made SQLite read every row (5.6 s at a million tasks).
            def values(field: str, v: str) -> list[str]:
                table = "task_names" if field == "name" else "task_workers"
                sql = f"SELECT {field} FROM {table} WHERE instr({field}, ?) > 0"
                return [r[0] for r in c.execute(sql, (v,))]

            looked_up: list[int] = []  # candidates listed by the text index, per term
            ranges: list[tuple[int, int] | None] = []  # each text term's id ranges
            if common:
                upto = c.execute("SELECT upto FROM fts_state").fetchone()[0]
                match = self._ranged_scan(c, upto, top, q.descending, ranges)
            else:
                match = self._text_match(c, looked_up=looked_up)
            p = plan(q, SQLITE, match, lambda: common, values)
            index = SQLITE_SORT_INDEX.get(q.sort_key)
            total: int | None = None
            ids: list[int] | None = None
            fell_back = False
            if common:
                # One bounded walk of the sort column's index gives the page and the count
                # (the first matches in sort order). A common term's matches may all lie far
                # down the sort order where its candidates' id range does not prune the
                # walk: past the budget the text index lists every candidate and they are
                # sorted.
                walk = p.walk(None if _filtered(q) else index)
                found = None
                bound = None
                if (
                    walk is not None
                    and q.descending
                    and not _filtered(q)
                    and q.search is not None
                    and _id_bounded(q.search)
                ):
                    bound = self._block_bound(c, q.sort_key, ranges)
                if bound is not None:
                    # Every match's sort value is at most the bound (or NULL, sorting after
                    # all): a walk entered there that yields the cap is the answer.
                    bounded = p.walk(index, to_value=bound)
                    assert bounded is not None
                    found = _bounded(c, COMMON_WALK_BUDGET, *bounded)
                    if found is not None and len(found) < (p.cap or 0):
                        found = None  # fewer: matches with NULL values may follow
                if walk is not None:
                    if found is None:
                        found = _bounded(c, COMMON_WALK_BUDGET, *walk)
                    if found is not None:
                        total = len(found)
                        ids = found[q.offset : q.offset + (q.limit or 0)]
                else:
                    counted = _bounded(c, COMMON_WALK_BUDGET, *p.count())
                    total = None if counted is None else counted[0]
                if total is None:
                    fell_back = True
                    p = plan(q, SQLITE, self._text_match(c, None), lambda: True, values)
                    p = dataclasses.replace(p, count_in_order=False)
            if total is None:
                total = c.execute(*p.count()).fetchone()[0]
            cap = p.cap
            exact = cap is None or total < cap
            # Few matches: sorting them beats walking the sort column's index. Order and cut
            # the page on ids alone (a sort carrying whole rows is several times slower),
            # then read the page's rows.
            use_index = not (exact and total <= SORT_MATCHES_MAX) and not fell_back
            if (
                ids is None
                and use_index
                and index
                and looked_up
                and not common
                and not _filtered(q)
            ):
                # Many candidates from the text index: walking the sort column's index
                # (checking each entry against them) finds a page in a few ms, but SQLite's
                # planner prefers to sort every candidate (17 ms for 11k). The walk is
                # bounded (the matches may all lie far down the index); past it, the
                # planner's sort. (Without candidates the planner already picks well, e.g.
                # state:failure reads the state index.)
                ids = _bounded(c, PAGE_WALK_BUDGET, *p.page("id", indexed_by=index))
            if ids is None:
                sql, params = p.page("id", use_index=use_index)
                ids = [r[0] for r in c.execute(sql, params)]
            by_id: dict[int, Any] = {}
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                for r in c.execute(
                    f"SELECT id, {_COLS} FROM tasks WHERE id IN ({', '.join('?' * len(chunk))})",
                    chunk,
                ):
                    by_id[r[0]] = r[1:]
            rows = [by_id[i] for i in ids if i in by_id]
        finally:
            c.execute("COMMIT")
        self._local.exact = exact
        return total, [task_from_row(r) for r in rows]

    @property
    def last_count_exact(self) -> bool:
        """Whether the last :meth:`query` in this thread counted every match."""
        return getattr(self._local, "exact", True)

    def task_stats(
        self, since: float, until: float, bucket: float, name: str | None = None
    ) -> list[dict[str, Any]]:
        sql, params = stats_query(since, until, name)
        return aggregate_stats(self._reader.execute(sql, params), bucket)

    def close(self) -> None:
        self._closed = True
        with self._write_lock, self._all_lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover
                    pass
            self._all.clear()
            self._idle.clear()


def _id_bounded(node: Node) -> bool:
    """Whether every task ``node`` matches satisfies one of its substring terms over args,
    kwargs or result (a term ``any`` also matches names, workers, states and uuids), so the
    id ranges of those terms' candidates hold every match (see
    :meth:`SQLiteStore._block_bound`)."""
    if isinstance(node, And):
        return any(_id_bounded(i) for i in node.items)
    if isinstance(node, Or):
        return all(_id_bounded(i) for i in node.items)
    return node.field not in ("any", "state", "name", "worker")


def _filtered(q: TaskQuery) -> bool:
    """Whether ``q`` has a filter besides its search."""
    return bool(q.state or q.worker or q.name) or any(
        v is not None for v in (q.received_start, q.received_end, q.started_start, q.started_end)
    )


def _bounded(c: sqlite3.Connection, budget: int, sql: str, params: list[Any]) -> list[Any] | None:
    """The first column of ``sql``'s rows, or None when reading them took more than ``budget``
    SQLite virtual machine steps (the statement is interrupted; the read transaction stays
    open). Steps, not seconds: the plan a query ends with does not depend on the load of
    the machine (under load a time budget cut walks that were the better plan)."""
    calls = 0
    limit = budget // PROGRESS_STEPS

    def progress() -> bool:
        nonlocal calls
        calls += 1
        return calls > limit

    c.set_progress_handler(progress, PROGRESS_STEPS)
    try:
        return [r[0] for r in c.execute(sql, params)]
    except sqlite3.OperationalError as exc:
        if "interrupt" not in str(exc):
            raise
        return None
    finally:
        c.set_progress_handler(None, 0)


_STAT_KEYS = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried", "REVOKED": "revoked"}


def _percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(round(p * (len(sorted_values) - 1)))))
    return sorted_values[k]


def task_from_row(r: Sequence[Any]) -> dict[str, Any]:
    """A task dict from a ``tasks`` row of :data:`~.store.TASK_COLUMNS` (both stores)."""
    d = dict(zip(TASK_COLUMNS, r))
    h = d["history"]
    d["history"] = tuple(json.loads(h)) if h else history_from_times(d)
    return d


def stats_query(since: float, until: float, name: str | None) -> tuple[str, list[Any]]:
    """``(sql, params)`` of the finished tasks :func:`aggregate_stats` reads, with qmark
    placeholders (both stores; PostgreSQL swaps them for ``%s``)."""
    sql = (
        "SELECT name, timestamp, state, runtime, retries FROM tasks "
        "WHERE timestamp >= ? AND timestamp < ? "
        "AND state IN ('SUCCESS', 'FAILURE', 'RETRY', 'REVOKED')"
    )
    params: list[Any] = [since, until]
    if name is not None:
        sql += " AND name = ?"
        params.append(name)
    return sql, params


def aggregate_stats(rows: Iterable[Sequence[Any]], bucket: float) -> list[dict[str, Any]]:
    """(name, timestamp, state, runtime, retries) rows -> per (bucket, name) counts and
    runtime percentiles, by the time of each task's last state.

    ``succeeded``, ``failed``, ``revoked``: tasks in that state. ``retried``: retries of the
    tasks counted (the ``task-retried`` events: a task that retried twice then succeeded
    counts 2, one waiting for its first retry counts 1), as the workers page counts them.
    """
    acc: dict[tuple[float, str], dict[str, Any]] = {}
    for name, ts, state, runtime, retries in rows:
        start = (ts // bucket) * bucket
        k = (start, name or "")
        a = acc.get(k)
        if a is None:
            a = acc[k] = {"succeeded": 0, "failed": 0, "retried": 0, "revoked": 0, "rt": []}
        n = retries if isinstance(retries, int) and retries > 0 else 0
        if state == "RETRY":
            a["retried"] += n + 1  # this attempt's retry, and the ones before
        else:
            a[_STAT_KEYS[state]] += 1
            a["retried"] += n
        if runtime is not None:
            a["rt"].append(runtime)
    out = []
    for (start, name), a in sorted(acc.items()):
        rt = sorted(a.pop("rt"))
        out.append(
            {
                "name": name,
                "start": start,
                **a,
                "runtime_p50": _percentile(rt, 0.5),
                "runtime_p95": _percentile(rt, 0.95),
                "runtime_max": rt[-1] if rt else None,
            }
        )
    return out
