"""The PostgreSQL history store, for a monitor shared by several processes and hosts.

Chosen by a URL setting (``CELERY_MONITOR_DB = "postgresql://user:pw@host/db"``); needs the
``postgres`` extra (``pip install flask-celerymon[postgres]``: psycopg 3 and its pool).

Layout: everything lives in the schema ``celerymon`` (override with ``?schema=name`` in the
URL, e.g. one schema per cluster in one database): ``tasks`` (one row per task, the columns of
:data:`~flask_celerymon.monitor.store.TASK_COLUMNS`, text columns in the byte order of the
``C`` collation so sorts agree with SQLite), ``task_names`` and ``task_workers`` (distinct
values, for search), ``workers`` (JSON snapshots), ``meta`` (what the ingester keeps across
restarts, see :meth:`~flask_celerymon.monitor.store.HistoryStore.get_meta`) and
``schema_version``. Substring search uses
``pg_trgm`` GIN indexes over ``args``, ``kwargs`` and ``result``: a ``LIKE '%term%'`` is
answered from the index and rechecked, so it matches exactly what the SQLite store and the
in-memory window match (case-sensitive). BRIN indexes on ``received``, ``started`` and
``timestamp`` let a common search find its page far down the sort order without walking to
it (see :meth:`PostgresStore._common_walk`).

The schema is versioned: :data:`MIGRATIONS` is applied in order, each in its own transaction,
under an advisory lock, so processes starting together migrate once. A database created by a
newer release (a version above ours) is refused with :class:`StoreVersionError`.

Connections come from a :class:`psycopg_pool.ConnectionPool` (``min_size`` 1, ``max_size``
:data:`POOL_MAX`): one writer (the service's housekeeping thread) and any number of readers.
The count and the page of a query are read in one ``REPEATABLE READ`` snapshot.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import CeleryMonError
from .model import TASK_COLUMNS, TaskQuery
from .query import instr_sql
from .sql_query import (
    MIN_MAX_ID,
    POSTGRESQL,
    SAMPLE_RUN,
    SORT_COLUMNS,
    QueryPlan,
    SearchSample,
    has_text,
    plan,
    sample_query,
)
from .sqlite_store import aggregate_stats, stats_query, task_from_row
from .store import HistoryStore, redact

log = logging.getLogger(__name__)

#: Connections per process at most.
POOL_MAX = 8
#: Seconds to wait for a connection from the pool before failing the call.
POOL_TIMEOUT = 10.0
#: The schema's version after :data:`MIGRATIONS`.
SCHEMA_VERSION = 4

_REAL = {"sent", "received", "started", "succeeded", "failed", "retried", "revoked", "rejected",
         "timestamp", "runtime"}  # fmt: skip
_INT = {"retries", "clock"}
_KEYED = {"uuid", "name", "state", "worker", "root_id", "parent_id"}
_SORTED = SORT_COLUMNS


def _coltype(c: str) -> str:
    if c in _REAL:
        return "double precision"
    if c in _INT:
        return "bigint"
    return 'text COLLATE "C"' if c in _KEYED else "text"


#: One list of statements per schema version (index 0 makes version 1). Append, never edit.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE tasks (id bigserial PRIMARY KEY, "
        + ", ".join(
            f"{c} {_coltype(c)}" + (" NOT NULL UNIQUE" if c == "uuid" else "") for c in TASK_COLUMNS
        )
        + ")",
        *(
            # (col DESC NULLS LAST, id DESC) read backwards is (col ASC NULLS FIRST, id ASC):
            # one index serves both directions in SQLite's NULL order.
            f"CREATE INDEX tasks_{c} ON tasks ({c} DESC NULLS LAST, id DESC)"
            for c in _SORTED
        ),
        "CREATE INDEX tasks_worker ON tasks (worker, received)",
        "CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL",
        *(
            f"CREATE INDEX tasks_{c}_trgm ON tasks USING gin ({c} gin_trgm_ops)"
            for c in ("args", "kwargs", "result")
        ),
        'CREATE TABLE task_names (name text COLLATE "C" PRIMARY KEY)',
        'CREATE TABLE task_workers (worker text COLLATE "C" PRIMARY KEY)',
        "CREATE TABLE workers (hostname text PRIMARY KEY, data text NOT NULL)",
        # The helpers compile_sql's conditions call (SQLite has instr; kwarg_match is ours).
        "CREATE FUNCTION instr(haystack text, needle text) RETURNS integer "
        "LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT strpos(haystack, needle) $$",
        "CREATE FUNCTION re_quote(s text) RETURNS text LANGUAGE sql IMMUTABLE STRICT "
        "PARALLEL SAFE AS $$ SELECT regexp_replace(s, '([.^$*+?()\\[\\]{}|\\\\-])', "
        "'\\\\\\1', 'g') $$",
        # Same pattern as query.kwarg_pattern: 'key': value | 'value' | "value", then , } or end
        "CREATE FUNCTION kwarg_match(kwargs text, k text, v text) RETURNS boolean "
        "LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT coalesce(kwargs ~ "
        "('[''\"]' || re_quote(k) || '[''\"]: (?:''' || re_quote(v) || '''|\"' || re_quote(v) "
        "|| '\"|' || re_quote(v) || ')(?=,|\\}|$)'), false) $$",
    ),
    (
        # 2: the number of tasks, kept by statement triggers (count(*) reads every row: 50+ ms
        # at a million tasks for the unfiltered list, its most common query).
        "CREATE TABLE task_count (n bigint NOT NULL)",
        "INSERT INTO task_count (n) SELECT count(*) FROM tasks",
        "CREATE FUNCTION task_count_add() RETURNS trigger LANGUAGE plpgsql "
        "SET search_path FROM CURRENT AS $$ BEGIN "
        "UPDATE task_count SET n = n + (SELECT count(*) FROM added); RETURN NULL; END $$",
        "CREATE FUNCTION task_count_sub() RETURNS trigger LANGUAGE plpgsql "
        "SET search_path FROM CURRENT AS $$ BEGIN "
        "UPDATE task_count SET n = n - (SELECT count(*) FROM removed); RETURN NULL; END $$",
        "CREATE TRIGGER tasks_counted_in AFTER INSERT ON tasks REFERENCING NEW TABLE AS added "
        "FOR EACH STATEMENT EXECUTE FUNCTION task_count_add()",
        "CREATE TRIGGER tasks_counted_out AFTER DELETE ON tasks REFERENCING OLD TABLE AS removed "
        "FOR EACH STATEMENT EXECUTE FUNCTION task_count_sub()",
        # TRUNCATE fires no delete trigger
        "CREATE FUNCTION task_count_zero() RETURNS trigger LANGUAGE plpgsql "
        "SET search_path FROM CURRENT AS $$ BEGIN "
        "UPDATE task_count SET n = 0; RETURN NULL; END $$",
        "CREATE TRIGGER tasks_counted_none AFTER TRUNCATE ON tasks "
        "FOR EACH STATEMENT EXECUTE FUNCTION task_count_zero()",
    ),
    (
        # 3: values the ingester keeps across restarts (HistoryStore.get_meta: when events were
        # last consumed, whether the last run stopped cleanly).
        "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)",
    ),
    (
        # 4: BRIN summaries (min/max per 128 heap pages) of the time columns, which follow
        # the heap's order: "received >= T" is then a bitmap of a few page ranges that a
        # common search ANDs with its trigram index (PostgresStore._common_walk). A few
        # pages each; autosummarize keeps new ranges summarised (an unsummarised range is
        # read whole, never skipped).
        *(
            f"CREATE INDEX tasks_{c}_brin ON tasks USING brin ({c}) WITH (autosummarize = on)"
            for c in ("received", "started", "timestamp")
        ),
    ),
)
#: The sort columns with a BRIN index (migration 4).
BRIN_COLUMNS = ("received", "started", "timestamp")
#: Tasks a common search reads in sort order before it looks its matches up through the
#: trigram index instead (about 3 ms; a common term spread over the history fills a page
#: well within them).
WALK_ROWS = 20_000
#: A common search whose sampled matches all sort below the first this many times
#: :data:`WALK_ROWS` tasks skips the bounded walk (4-5 ms at a million tasks, of a 20 ms
#: answer) and goes to the sampled values; 0: never. A term spread over the history has a
#: sampled match there (a common term matches at least 2 % of the tasks, and these are
#: about 40 runs of the sample at 10), so a wrong skip is rare, and still exact.
SKIP_WALK_DEPTH = 10
#: A common search tries the sort values of sampled matches (:meth:`.SearchSample.sort_values`)
#: as "at least this" before it sorts every candidate: first the one expected to have this
#: many times the matches it needs above it, then this many (each sampled row stands for
#: ``tasks / sampled rows`` tasks). The sample is read in runs of :data:`~.sql_query.
#: SAMPLE_RUN` neighbouring tasks, whose matches sit together, so the n-th try (from 0) is
#: at least n runs' worth of sampled matches down: when the sampled run lay at the top of a
#: term's matches (``result:"'order': 5"``, half a million tasks down), both tries fell in
#: that run, found too few above, and every one of 100,000 candidates was sorted (78 ms
#: against 16 ms, by which sample the process drew).
THRESHOLD_MARGINS = (2, 8)
#: A search that is not common is read through the BRIN ranges (:meth:`PostgresStore.
#: _rare_from_value`) above a value expected to have this many times the count's cap of
#: matches above it, when the search sample expects at least that many in the store.
RARE_MARGIN = 3
#: ... first tried at this margin (half the rows read when the sample's share is right;
#: a share estimated from few sampled runs placed the value twice as deep as needed, and
#: ``customer-12`` took 19-26 ms instead of 11-15 in those processes), then at RARE_MARGIN.
RARE_FIRST_MARGIN = 1.5
#: A search whose share the sample cannot tell (:meth:`PostgresStore._rare_probe`) is first
#: probed over this share of the tasks in sort order (an eighth: ``customer-12``'s first
#: 1,000 of 11,000 matches lie within the first 90,000 of a million tasks; 4-6 ms against
#: 15-40 for every candidate), ...
PROBE_SHARE = 0.125
#: ... then at most over this share (deeper, reading every candidate costs about as much).
PROBE_MAX_SHARE = 0.5

_COLS = ", ".join(TASK_COLUMNS)
_ROW = "(" + ", ".join("%s" for _ in TASK_COLUMNS) + ")"
_ON_CONFLICT = " ON CONFLICT (uuid) DO UPDATE SET " + ", ".join(
    f"{c} = EXCLUDED.{c}" for c in TASK_COLUMNS if c != "uuid"
)
#: Rows per upsert statement (one statement per chunk: its counting trigger runs once).
UPSERT_ROWS = 1000


def _plan_bitmaps(c: Any) -> None:
    """Make the rest of ``c``'s transaction read by bitmap scans only (the walks over the
    trigram and BRIN indexes): no index or sequential scan, no parallel workers."""
    c.execute("SET LOCAL enable_indexscan = off")
    c.execute("SET LOCAL enable_seqscan = off")
    c.execute("SET LOCAL max_parallel_workers_per_gather = 0")


def _walk_ids(c: Any, p: QueryPlan, from_value: Any, plan: bool) -> list[int] | None:
    """The ids of the matches ``p``'s walk from the sort value ``from_value`` reads (at most
    its cap), or None when ``p`` has no such walk; with ``plan``, the transaction's
    bitmap-only plan is set first (:func:`_plan_bitmaps`, once per transaction)."""
    sql = p.walk(from_value=from_value)
    if sql is None:
        return None
    if plan:
        _plan_bitmaps(c)
    return [r[0] for r in c.execute(*sql)]


def _upsert(n: int) -> str:
    return f"INSERT INTO tasks ({_COLS}) VALUES " + ", ".join([_ROW] * n) + _ON_CONFLICT


_HISTORY = TASK_COLUMNS.index("history")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: Words PostgreSQL (15) does not take as a schema name unquoted (``pg_get_keywords()``,
#: categories R and T): ``?schema=user`` failed with psycopg's SyntaxError at the first start.
_RESERVED = frozenset((
    "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric",
    "authorization", "binary", "both", "case", "cast", "check", "collate", "collation",
    "column", "concurrently", "constraint", "create", "cross", "current_catalog",
    "current_date", "current_role", "current_schema", "current_time", "current_timestamp",
    "current_user", "default", "deferrable", "desc", "distinct", "do", "else", "end", "except",
    "false", "fetch", "for", "foreign", "freeze", "from", "full", "grant", "group", "having",
    "ilike", "in", "initially", "inner", "intersect", "into", "is", "isnull", "join", "lateral",
    "leading", "left", "like", "limit", "localtime", "localtimestamp", "natural", "not",
    "notnull", "null", "offset", "on", "only", "or", "order", "outer", "overlaps", "placing",
    "primary", "references", "returning", "right", "select", "session_user", "similar", "some",
    "symmetric", "table", "tablesample", "then", "to", "trailing", "true", "union", "unique",
    "user", "using", "variadic", "verbose", "when", "where", "window", "with",
))  # fmt: skip


class StoreVersionError(CeleryMonError, RuntimeError):
    """The database holds a schema newer than this release understands."""


class StoreUnavailable(CeleryMonError, RuntimeError):
    """The database server could not be reached (or refused the login) at start."""


def _driver() -> Any:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise CeleryMonError(
            "CELERY_MONITOR_DB is a PostgreSQL URL but psycopg is not installed: "
            "pip install 'flask-celerymon[postgres]'"
        ) from exc
    return psycopg, psycopg_pool


def cooperate_with_gevent() -> bool:
    """Make psycopg wait for the server through the ``select`` module when it chose its C
    wait function at import, before gevent's monkey-patching (a host app that imports
    psycopg itself, e.g. for its own SQLAlchemy engine, before ``flask celery monitor``
    patches): that function polls in C, so every history query would stop the gevent hub,
    every live page and request of the process with it, for the query's whole duration.
    Imported after the patching, psycopg picks a cooperative function itself (as it does
    when this package imports it). Call it after ``gevent.monkey.patch_all()``; returns
    whether the wait function was replaced. Raises nothing."""
    import select
    import sys

    waiting: Any = sys.modules.get("psycopg.waiting")
    if waiting is None or getattr(waiting, "wait", None) is not getattr(waiting, "wait_c", 0):
        return False
    # the choice psycopg makes itself when it finds select patched (waiting.py, 3.1-3.3)
    waiting.wait = waiting.wait_poll if hasattr(select, "poll") else waiting.wait_select
    return True


def _like(phrase: str) -> str:
    return "%" + phrase.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


#: pg_trgm's word characters (it splits text into words at anything else)
_WORD = re.compile(r"[^\W_]+")


def _pieces(phrase: str) -> list[str]:
    """Parts of ``phrase`` a pg_trgm index can look up cheaply: each word with the separator
    on either side of it (so pg_trgm pads it as a whole word), when that yields a trigram
    (a word with a separator on one side, or of 3+ characters), then the phrase itself. A
    GIN scan reads the posting list of every trigram it is given, so one rare word costs
    less than the phrase, whose cost is that of its most common word."""
    out = []
    for m in _WORD.finditer(phrase):
        a, b = max(0, m.start() - 1), min(len(phrase), m.end() + 1)
        if a < m.start() or b > m.end() or m.end() - m.start() >= 3:
            out.append(phrase[a:b])
    out.append(phrase)
    return out


def _text_match(
    columns: tuple[str, ...],
    phrases: list[str],
    params: list[Any],
    occurrences: Callable[[tuple[str, ...], str], int] | None = None,
) -> str:
    """A condition true when one of ``columns`` contains one of ``phrases``, answered from the
    pg_trgm indexes.

    The index is asked for the part of each phrase (:func:`_pieces`) rarest in the search
    sample (``occurrences(columns, text)``): a common word ("customer", "user_id") would make
    the GIN scan read its whole posting list, about a million entries. ``LIKE`` on that part
    finds a superset of the matches; ``instr`` on the phrase (which no index serves) keeps
    the exact ones.
    """
    conds = []
    for c in columns:
        for p in phrases:
            pieces = _pieces(p)
            if occurrences is not None:
                # rarest first; the phrase last among equals (it has the most trigrams)
                pieces.sort(key=lambda x: (occurrences((c,), x), x == p, -len(x)))
            piece = pieces[0]
            if piece == p:
                conds.append(f"{c} LIKE ?")
                params.append(_like(p))
            else:
                conds.append(f"({c} LIKE ? AND instr({c}, ?) > 0)")
                params.extend([_like(piece), p])
    return "(" + " OR ".join(conds) + ")"


def parse_url(url: str) -> tuple[str, str]:
    """``(libpq URL without the schema parameter, schema)`` of a ``CELERY_MONITOR_DB`` URL
    (schema ``celerymon`` unless ``?schema=`` names one). Raises :class:`CeleryMonError` for
    a schema name that is not lower-case letters, digits and ``_``."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    schema = query.pop("schema", ["celerymon"])[-1]
    if not _SCHEMA_NAME.fullmatch(schema):
        raise CeleryMonError(
            f"CELERY_MONITOR_DB: schema {schema!r} is not valid; use lower-case letters, "
            "digits and _ (e.g. ?schema=celerymon)"
        )
    if schema in _RESERVED or schema.startswith("pg_"):
        raise CeleryMonError(
            f"CELERY_MONITOR_DB: schema {schema!r} is not valid; PostgreSQL reserves the name "
            "(an SQL keyword or the pg_ prefix); choose another (e.g. ?schema=celerymon)"
        )
    clean = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, doseq=True)))
    return clean, schema


@contextmanager
def reaching(url: str, what: str) -> Iterator[None]:
    """Run the block; psycopg's ``OperationalError`` in it becomes :class:`StoreUnavailable`
    naming ``what`` (``"history"``, ``"insight"``, ``"lease"``) and the redacted ``url``."""
    psycopg, _pool = _driver()
    try:
        yield
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(
            f"cannot reach the {what} database {redact(url)} ({exc}); check "
            "CELERY_MONITOR_DB and that the server runs"
        ) from exc


def open_pool(url: str, search_path: str, name: str, max_size: int) -> Any:
    """An opened psycopg pool of autocommit connections to ``url`` with ``search_path``
    (at least one connection, at most ``max_size``); waits up to :data:`POOL_TIMEOUT` seconds
    for the first. Raises psycopg_pool's ``PoolTimeout`` when the server cannot be reached."""
    _psycopg, psycopg_pool = _driver()
    pool = psycopg_pool.ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        timeout=POOL_TIMEOUT,
        kwargs={"options": f"-c search_path={search_path}", "autocommit": True},
        name=name,
        open=False,
    )
    pool.open(wait=True, timeout=POOL_TIMEOUT)
    return pool


def _rows_by_id(c: Any, ids: list[int]) -> list[tuple[Any, ...]]:
    """The ``tasks`` rows (:data:`TASK_COLUMNS`) of ``ids``, in that order (missing ones
    left out)."""
    by_id = {
        r[0]: r[1:] for r in c.execute(f"SELECT id, {_COLS} FROM tasks WHERE id = ANY(%s)", (ids,))
    }
    return [by_id[i] for i in ids if i in by_id]


class PostgresStore(HistoryStore):
    """History in a PostgreSQL database, shared by every process that opens the same URL.

    ``url`` is a libpq URL (``postgresql://user:password@host:5432/dbname``); a ``schema``
    query parameter picks the schema (default ``celerymon``). Raises :class:`CeleryMonError`
    when psycopg is missing or the schema name is not valid, :class:`StoreVersionError` for a
    schema newer than this release, and :class:`StoreUnavailable` when the server cannot be
    reached (or refuses the login) within :data:`POOL_TIMEOUT` seconds.
    """

    def __init__(self, url: str) -> None:
        psycopg, _psycopg_pool = _driver()
        self._psycopg = psycopg
        #: The errors that mean the server is unreachable (retry later), not a refused row.
        self.unavailable_errors = (psycopg.OperationalError, OSError)
        self.url, self.schema = parse_url(url)
        self._local = threading.local()
        self._sample = SearchSample(self._sample_rows)
        self._write_lock = threading.Lock()
        with reaching(self.url, "history"):
            search_path = self._migrate()
        self._pool = open_pool(self.url, search_path, f"celerymon-{self.schema}", POOL_MAX)

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)!r}, schema={self.schema!r})"

    # -- schema ----------------------------------------------------------------------------

    def _migrate(self) -> str:
        """Bring the schema to :data:`SCHEMA_VERSION`; returns the search path to use."""
        psycopg = self._psycopg
        s = self.schema
        with psycopg.connect(self.url, autocommit=True, connect_timeout=int(POOL_TIMEOUT)) as c:
            # One migrating process per database: the others wait here, then find it done.
            c.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"celerymon:{s}",))
            try:
                c.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
                ext = self._trigram_schema(c)
                search_path = f"{s},{ext}"
                c.execute(f"SET search_path = {search_path}")
                c.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
                row = c.execute("SELECT max(version) FROM schema_version").fetchone()
                have = (row[0] if row else None) or 0
                if have > len(MIGRATIONS):
                    raise StoreVersionError(
                        f"the history schema {s!r} in {redact(self.url)} is at version {have}, "
                        f"newer than this release understands ({len(MIGRATIONS)}); upgrade "
                        "flask-celerymon or point CELERY_MONITOR_DB at another schema"
                    )
                for version in range(have + 1, len(MIGRATIONS) + 1):
                    with c.transaction():
                        for stmt in MIGRATIONS[version - 1]:
                            c.execute(stmt)
                        c.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                    log.info("celerymon: history schema %s migrated to version %s", s, version)
            finally:
                c.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"celerymon:{s}",))
        return search_path

    def _trigram_schema(self, c: Any) -> str:
        """The schema holding pg_trgm, created in ``public`` when the database has none."""
        find = "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pg_trgm'"
        row = c.execute(find).fetchone()
        if row is None:
            try:
                c.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public")
            except self._psycopg.errors.InsufficientPrivilege as exc:
                raise CeleryMonError(
                    f"the history store needs the pg_trgm extension in {redact(self.url)}; "
                    "run CREATE EXTENSION pg_trgm; in that database as a superuser"
                ) from exc
            row = c.execute(find).fetchone()
        return str(row[0])

    def schema_version(self) -> int:
        """The schema version in the database."""
        with self._pool.connection() as c:
            return int(c.execute("SELECT max(version) FROM schema_version").fetchone()[0])

    # -- writing ---------------------------------------------------------------------------

    def write_tasks(self, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        by_uuid: dict[str, list[Any]] = {}  # one statement may not touch a row twice
        names = set()
        workers = set()
        for row in rows:
            r = list(row)
            hist = r[_HISTORY]
            r[_HISTORY] = None if hist is None else json.dumps(list(hist))
            by_uuid[r[0]] = r
            names.add(r[1])
            workers.add(r[3])
        names -= {"", None}
        workers -= {"", None}
        prepared = list(by_uuid.values())
        with self._write_lock, self._pool.connection() as c, c.transaction(), c.cursor() as cur:
            for i in range(0, len(prepared), UPSERT_ROWS):
                chunk = prepared[i : i + UPSERT_ROWS]
                cur.execute(_upsert(len(chunk)), [v for r in chunk for v in r])
            if names:
                cur.executemany(
                    "INSERT INTO task_names (name) VALUES (%s) ON CONFLICT DO NOTHING",
                    [(n,) for n in sorted(names)],
                )
            if workers:
                cur.executemany(
                    "INSERT INTO task_workers (worker) VALUES (%s) ON CONFLICT DO NOTHING",
                    [(w,) for w in sorted(workers)],
                )

    def write_workers(self, workers: Mapping[str, Mapping[str, Any]]) -> None:
        if not workers:
            return
        rows = [(h, json.dumps(d, default=str)) for h, d in sorted(workers.items())]
        with self._write_lock, self._pool.connection() as c, c.transaction(), c.cursor() as cur:
            cur.executemany(
                "INSERT INTO workers (hostname, data) VALUES (%s, %s) "
                "ON CONFLICT (hostname) DO UPDATE SET data = EXCLUDED.data",
                rows,
            )

    def get_meta(self, key: str) -> str | None:
        with self._pool.connection() as c:
            r = c.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return None if r is None else r[0]

    def set_meta(self, values: Mapping[str, str | None]) -> None:
        put = [(k, v) for k, v in sorted(values.items()) if v is not None]
        drop = [k for k, v in values.items() if v is None]
        if not put and not drop:
            return
        with self._write_lock, self._pool.connection() as c, c.transaction(), c.cursor() as cur:
            if put:
                cur.executemany(
                    "INSERT INTO meta (key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    put,
                )
            if drop:
                cur.execute("DELETE FROM meta WHERE key = ANY(%s)", (drop,))

    def delete_workers(self, hostnames: Iterable[str]) -> None:
        hs = list(hostnames)
        if hs:
            with self._write_lock, self._pool.connection() as c:
                c.execute("DELETE FROM workers WHERE hostname = ANY(%s)", (hs,))

    def prune(self, max_tasks: int, older_than: float) -> int:
        with self._write_lock, self._pool.connection() as c, c.transaction():
            deleted = c.execute("DELETE FROM tasks WHERE timestamp < %s", (older_than,)).rowcount
            n = c.execute("SELECT n FROM task_count").fetchone()[0]
            if n > max_tasks:
                deleted += c.execute(
                    "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks "
                    "ORDER BY timestamp ASC NULLS FIRST, id LIMIT %s)",
                    (n - max_tasks,),
                ).rowcount
            return int(deleted)

    # -- reading ---------------------------------------------------------------------------

    def load_workers(self) -> dict[str, dict[str, Any]]:
        with self._pool.connection() as c:
            rows = c.execute("SELECT hostname, data FROM workers").fetchall()
        return {h: json.loads(d) for h, d in rows}

    def get_task(self, uuid: str) -> dict[str, Any] | None:
        if "\x00" in uuid:  # PostgreSQL text holds no NUL: no stored task has one
            return None
        with self._pool.connection() as c:
            r = c.execute(f"SELECT {_COLS} FROM tasks WHERE uuid = %s", (uuid,)).fetchone()
        return None if r is None else task_from_row(r)

    def children(self, uuid: str) -> list[str]:
        if "\x00" in uuid:  # as in get_task
            return []
        with self._pool.connection() as c:
            rows = c.execute(
                "SELECT uuid FROM tasks WHERE parent_id = %s ORDER BY id", (uuid,)
            ).fetchall()
        return [r[0] for r in rows]

    def task_names(self) -> list[str]:
        with self._pool.connection() as c:
            return [r[0] for r in c.execute("SELECT name FROM task_names ORDER BY name")]

    def count(self) -> int:
        with self._pool.connection() as c:
            return int(c.execute("SELECT n FROM task_count").fetchone()[0])

    def is_empty(self) -> bool:
        with self._pool.connection() as c:
            return c.execute("SELECT 1 FROM tasks LIMIT 1").fetchone() is None

    def query(self, q: TaskQuery) -> tuple[int, list[dict[str, Any]]]:
        """See :meth:`HistoryStore.query`. The SQL comes from :func:`.sql_query.plan`: a
        query with a filter or search counts at most :data:`~.sql_query.COUNT_CAP` matches,
        a search on a common term (:class:`~.sql_query.SearchSample`) a page past the one
        asked for (check :attr:`last_count_exact`); the count and the page are read in one
        snapshot. A filter value with a NUL matches nothing (PostgreSQL text holds none)."""
        kept = {f: tuple(v for v in getattr(q, f) if "\x00" not in v)
                for f in ("state", "worker", "name")}  # fmt: skip
        if any(getattr(q, f) and not vs for f, vs in kept.items()):
            self._local.exact = True
            return 0, []
        q = dataclasses.replace(q, state=kept["state"], worker=kept["worker"], name=kept["name"])
        with self._pool.connection() as c, c.transaction():
            c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            common = False
            n = 0
            if q.search is not None:
                n = c.execute("SELECT n FROM task_count").fetchone()[0]
                common = self._sample.is_common(q.search, n)

            # A common term is checked row by row while walking the sort index: the pg_trgm
            # index would list most rows (its common trigrams) before the first page.
            # Names and workers containing a term are listed first, so the condition is an
            # OR of index lookups (a subquery there would make PostgreSQL scan every row).
            def values(field: str, v: str) -> list[str]:
                table = "task_names" if field == "name" else "task_workers"
                sql = f"SELECT {field} FROM {table} WHERE strpos({field}, %s) > 0"
                return [r[0] for r in c.execute(sql, (v,))]

            def indexed(columns: tuple[str, ...], phrases: list[str], ps: list[Any]) -> str:
                return _text_match(columns, phrases, ps, self._sample.occurrences)

            def text_match(columns: tuple[str, ...], phrases: list[str], ps: list[Any]) -> str:
                if common:
                    return instr_sql(columns, phrases, ps)
                return indexed(columns, phrases, ps)

            p = plan(q, POSTGRESQL, text_match, lambda: common, values)
            found = None
            if common:
                found = self._common_walk(
                    c, p, n, lambda: plan(q, POSTGRESQL, indexed, lambda: True, values)
                )
            if found is None and not common and q.search is not None and has_text(q.search):
                found = self._rare_from_value(c, p, n)
            if found is None and q.search is not None and has_text(q.search):
                # the trigram index's candidates are read once for the total and the page
                total, ids = c.execute(*p.counted_page()).fetchone()
                rows = _rows_by_id(c, ids)
            elif found is None:
                total = c.execute(*p.count()).fetchone()[0]
                rows = c.execute(*p.page(_COLS)).fetchall()
            else:
                total = len(found)
                rows = _rows_by_id(c, found[q.offset : q.offset + (q.limit or 0)])
        cap = p.cap
        self._local.exact = cap is None or total < cap
        return total, [task_from_row(r) for r in rows]

    def _common_walk(
        self, c: Any, p: QueryPlan, n_tasks: int, indexed: Callable[[], QueryPlan]
    ) -> list[int] | None:
        """The ids of the first :attr:`~.QueryPlan.cap` matches of a common search in sort
        order (see :meth:`.QueryPlan.walk`), read on connection ``c`` inside the query's
        snapshot; None when the query's page is not read that way. ``p`` checks the term
        row by row, ``indexed()`` is the same query written for the trigram index.

        1. The first :data:`WALK_ROWS` tasks in sort order are read and checked (a term
           spread over the history fills its page there; all of them when the store holds
           no more). Skipped when step 2 applies and no sampled task among those that
           sort within the first :data:`SKIP_WALK_DEPTH` times :data:`WALK_ROWS` matches
           (the term's matches lie deeper; the walk would find none).
        2. For a descending sort by a column with a BRIN index, the matches whose value is
           at least the value of one of the sampled matches (:data:`THRESHOLD_MARGINS`): a
           bitmap of the trigram index ANDed with the BRIN ranges, so a term whose matches
           lie half a million rows down the sort order reads a few hundred rows, not half a
           million. Exact whenever it yields the cap (see ``from_value``).
        3. Otherwise every candidate of the trigram index, sorted.

        Steps 2 and 3 run with index scans and parallel workers off (``SET LOCAL``): the
        planner's own choice for them is the walk of step 1 over every row."""
        walk = p.walk(within=WALK_ROWS if n_tasks > WALK_ROWS else None)
        if walk is None:
            return None
        cap = walk[1][-1]
        q = p.q
        by_value = q.descending and q.sort_key in BRIN_COLUMNS and q.search is not None
        deep = (
            by_value
            and q.search is not None
            and n_tasks > SKIP_WALK_DEPTH * WALK_ROWS > 0
            and not self._sample.matches_on_top(
                q.search, q.sort_key, n_tasks, SKIP_WALK_DEPTH * WALK_ROWS
            )
        )
        if not deep:
            ids = [r[0] for r in c.execute(*walk)]
            if len(ids) >= cap or n_tasks <= WALK_ROWS:
                return ids
        ip = indexed()

        def matches(from_value: Any = None) -> list[int]:
            sql = ip.walk(from_value=from_value)
            assert sql is not None  # the same query as p's, which has a walk
            return [r[0] for r in c.execute(*sql)]

        _plan_bitmaps(c)  # (the page's rows are read by id after)
        if by_value and q.search is not None:
            guesses = self._sample.sort_values(q.search, q.sort_key, n_tasks)
            per_row = n_tasks / max(1, len(self._sample.rows(n_tasks)))
            tried = -1
            for step, margin in enumerate(THRESHOLD_MARGINS):
                # the n-th try at least n runs of sampled neighbours down (THRESHOLD_MARGINS)
                k = max(math.ceil(margin * cap / per_row) - 1, step * SAMPLE_RUN)
                k = min(len(guesses) - 1, k)
                if k > tried:
                    tried = k
                    ids = matches(guesses[k])
                    if len(ids) >= cap:
                        return ids
        return matches()

    def _rare_from_value(self, c: Any, p: QueryPlan, n_tasks: int) -> list[int] | None:
        """The ids of the first :attr:`~.QueryPlan.cap` matches of a search that is not
        common but has many candidates (``customer-12``: 11,000 of a million), read on
        connection ``c`` as step 2 of :meth:`_common_walk` reads a common one: the trigram
        index's bitmap ANDed with the BRIN ranges of the sort values at least that of a
        sampled task, chosen to have about :data:`RARE_FIRST_MARGIN`, then
        :data:`RARE_MARGIN` times the cap's matches above it (by the share of sampled tasks
        the search matches). The page's first ``cap`` matches then cost a few hundred to a
        few thousand row reads instead of every candidate's (the counted page). None when the
        sort is not descending by a BRIN column, the sample's matches are too few to expect
        :data:`RARE_MARGIN` times the cap in the store, or both guesses yield fewer than the
        cap (the caller then reads the counted page)."""
        q = p.q
        cap = p.cap
        if (
            cap is None
            or q.search is None
            or not q.descending
            or q.sort_key not in BRIN_COLUMNS
            or q.limit is None
            or q.offset + q.limit > cap
        ):
            return None
        rows = self._sample.rows(n_tasks)
        hits = len(self._sample.sort_values(q.search, q.sort_key, n_tasks))
        per_row = n_tasks / max(1, len(rows))
        if not hits or hits * per_row < RARE_MARGIN * cap:
            return self._rare_probe(c, p, n_tasks)
        # The value with about RARE_MARGIN times the cap's matches above it, from every
        # sampled task's value (the sampled matches come in runs of neighbours: a term
        # such as customer-12 matches ten consecutive tasks of each 977, too few places
        # to place a value by)
        values = self._sample.values(q.sort_key, n_tasks)
        tried = -1
        planned = False
        for margin in sorted({min(RARE_FIRST_MARGIN, RARE_MARGIN), RARE_MARGIN}):
            k = math.ceil(margin * cap / (hits * per_row / len(rows))) - 1  # rows above
            if k >= len(values) or k <= tried:
                continue
            tried = k
            ids = _walk_ids(c, p, values[max(0, k)], plan=not planned)
            if ids is None:
                return None
            planned = True
            if len(ids) >= cap:
                return ids
        return None

    def _rare_probe(self, c: Any, p: QueryPlan, n_tasks: int) -> list[int] | None:
        """The ids of the first :attr:`~.QueryPlan.cap` matches of a search whose share the
        search sample cannot tell (it caught too few matches: ``customer-12``, 1 % of the
        tasks in runs of ten, is caught 0-2 times by 1,000 sampled tasks in one process of
        eleven), or None (the caller then reads every candidate: the counted page). Called
        by :meth:`_rare_from_value` once its guards passed.

        A bounded probe: the matches among the first :data:`PROBE_SHARE` of the tasks in
        sort order (the trigram bitmap ANDed with the BRIN ranges from the sampled sort
        value that deep); the first ``cap`` matches are the query's when it finds them.
        When it finds ``m`` (0 < m < cap), the share it measured places one more probe
        where about :data:`RARE_FIRST_MARGIN` times the cap's matches are expected, if
        that is within :data:`PROBE_MAX_SHARE` of the tasks.

        What a probe learns is kept with the sample (:meth:`.SearchSample.remember`, per
        search and sort column, until the sample is retaken): the depth that yielded the
        cap (the next request probes there once), or that the term is too rare to fill it
        within :data:`PROBE_MAX_SHARE` (the next request reads the counted page at once).
        So a rare term with many candidates (``kwargs:user_id=42``: 200 matches) pays the
        one wasted probe (a trigram scan, 3-4 ms at a million tasks) once a sample, not
        per request."""
        cap = p.cap
        q = p.q
        values = self._sample.values(q.sort_key, n_tasks)
        if cap is None or q.search is None or n_tasks <= 0 or len(values) < 2:
            return None
        key = ("rare_probe", q.search, q.sort_key, cap)
        learned = self._sample.recall(key, n_tasks)
        if learned == "rare":
            return None
        per_row = n_tasks / len(values)
        depth = float(learned) if learned is not None else PROBE_SHARE * n_tasks
        planned = False
        while True:
            k = math.ceil(depth / per_row) - 1
            if k >= len(values) - 1:
                self._sample.remember(key, "rare")
                return None
            ids = _walk_ids(c, p, values[max(0, k)], plan=not planned)
            if ids is None:
                return None
            planned = True
            if len(ids) >= cap:
                self._sample.remember(key, depth)
                return ids
            # the probe read about (k + 1) * per_row tasks and found len(ids) matches: the
            # depth expected to hold RARE_FIRST_MARGIN times the cap's (a share measured over
            # an eighth of the store, not guessed from a few sampled runs; a term expected to
            # have fewer matches in the whole store reads every candidate for its total)
            deeper = RARE_FIRST_MARGIN * cap * (k + 1) * per_row / max(1, len(ids))
            if not ids or deeper <= depth or deeper > PROBE_MAX_SHARE * n_tasks:
                self._sample.remember(key, "rare")
                return None
            depth = deeper

    def prepare_search(self) -> None:
        """See :meth:`HistoryStore.prepare_search`: the search sample is taken again here when
        it is older than :data:`~.sql_query.SAMPLE_TTL` or the store grew or shrank by
        :data:`~.sql_query.SAMPLE_DRIFT`; otherwise one read of the task count."""
        with self._pool.connection() as c:
            n = c.execute("SELECT n FROM task_count").fetchone()[0]
        if n:
            self._sample.rows(n)

    def _sample_rows(self) -> list[tuple[Any, ...]]:
        with self._pool.connection() as c:
            lo, hi = c.execute(MIN_MAX_ID).fetchone()
            return list(c.execute(*sample_query(POSTGRESQL, lo, hi)).fetchall())

    @property
    def last_count_exact(self) -> bool:
        """Whether the last :meth:`query` in this thread counted every match."""
        return getattr(self._local, "exact", True)

    def task_stats(
        self, since: float, until: float, bucket: float, name: str | None = None
    ) -> list[dict[str, Any]]:
        sql, params = stats_query(since, until, name)
        with self._pool.connection() as c:
            return aggregate_stats(c.execute(sql.replace("?", "%s"), params).fetchall(), bucket)

    def close(self) -> None:
        self._pool.close()
