"""The SQL of a task query (filters, search, count, order and page), for both history stores.

One builder, parametrised by a :class:`Dialect`: :class:`~.sqlite_store.SQLiteStore` and
:class:`~.pg_store.PostgresStore` differ only in

* how a substring condition reaches its index (``text_match``, see :func:`~.query.compile_sql`):
  SQLite looks candidates up in its FTS5 trigram table, PostgreSQL writes ``LIKE`` for its
  ``pg_trgm`` GIN indexes;
* the placeholder (``?`` or ``%s``) and how ``NULL`` sorts (PostgreSQL is told ``NULLS
  LAST``/``NULLS FIRST``; SQLite already sorts ``NULL`` lowest);
* the unfiltered total is read from a counter table in both (kept by statement triggers in
  PostgreSQL, by row triggers in SQLite).

Counting is bounded: the total of a filtered query counts at most :data:`COUNT_CAP` matches
(``SELECT count(*) FROM (... LIMIT cap)``), so a query over a million stored tasks reads at
most ``COUNT_CAP`` index entries for its total instead of every match; a search, whose
matches are checked row by row, counts at most :data:`SEARCH_COUNT_CAP` or a page past the
one asked for, whichever is more. A search on a *common* term (the store's index would name more than
:data:`INDEX_HITS_MAX` rows, see :class:`PhraseSample`) is answered by walking the sort
column's index, which finds a page quickly exactly because the term is common; its count
stops at :data:`LOOKAHEAD_PAGES` pages past the one asked for, so it costs about as much as
reading those pages. A total that reached its cap is reported as not exact
(``TaskPage.exact`` False; the tasks page shows "at least N"). The unfiltered total is
always exact.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .model import TaskQuery
from .query import And, Node, Or, TextMatch, compile_python, compile_sql

#: Counting stops here for filtered and searched queries (the total is then "at least").
COUNT_CAP = 10_000
#: A search counts matches up to this many pages past the one asked for, and a search that
#: is not common (:class:`SearchSample`) at least up to SEARCH_COUNT_CAP.
LOOKAHEAD_PAGES = 1
SEARCH_COUNT_CAP = 1_000
#: A phrase the index would name more rows for than this is searched by a scan in sort order.
INDEX_HITS_MAX = 20_000
#: Rows sampled to tell rare searches from common ones, and how long a sample is used.
SAMPLE_ROWS = 1_000
SAMPLE_RUNS = 200
SAMPLE_TTL = 600.0
#: Figures derived from one sample kept for reuse (see :meth:`SearchSample._memo`).
SAMPLE_MEMO = 1024
#: Consecutive tasks per run of the sample (see :func:`sample_query`).
SAMPLE_RUN = SAMPLE_ROWS // SAMPLE_RUNS
#: ... and the sample is taken again when the number of tasks moved by more than this share.
SAMPLE_DRIFT = 0.25

#: The SQLite indexes of one sort column alone (equal values in rowid order, as the planner's
#: own walk of them gives): a search page can be read by walking one.
SQLITE_SORT_INDEX = {c: f"tasks_{c}" for c in ("received", "started", "runtime", "timestamp")}

#: Sort keys (:data:`~.query.SORT_KEYS`) and their columns; every one has an index.
SORT_COLUMNS = ("name", "state", "received", "started", "runtime", "timestamp", "succeeded",
                "sent")  # fmt: skip


@dataclass(frozen=True)
class Dialect:
    """What differs between the stores' SQL. ``placeholder``: ``?`` or ``%s``;
    ``nulls``: write ``NULLS LAST``/``NULLS FIRST`` (SQLite sorts NULL lowest by itself);
    ``all_count``: the SQL of the number of all tasks; ``tiebreak``: order equal sort values
    by ``id`` (SQLite: by the rest of the sort column's index, which ends in the rowid, so
    the index walk needs no second pass; see :func:`order_by`)."""

    name: str
    placeholder: str
    nulls: bool
    all_count: str
    tiebreak: bool
    #: list the names/workers containing a term only inside an ``OR`` (SQLite: there a
    #: subquery reads every row, but alone the subquery lets it pick the covering
    #: ``tasks_state`` index for ``name:payments state:failure``, 0.2 ms against 3.6 ms)
    values_in_or_only: bool = False

    def sql(self, qmark: str) -> str:
        """``qmark`` (written with ``?`` placeholders and no literal ``?`` or ``%``) in this
        dialect's placeholders."""
        return qmark if self.placeholder == "?" else qmark.replace("?", self.placeholder)


SQLITE = Dialect("sqlite", "?", nulls=False, all_count="SELECT n FROM task_count",
                 tiebreak=False, values_in_or_only=True)  # fmt: skip
POSTGRESQL = Dialect("postgresql", "%s", nulls=True, all_count="SELECT n FROM task_count",
                     tiebreak=True)  # fmt: skip


def where(
    q: TaskQuery,
    text_match: TextMatch | None = None,
    values: Callable[[str, str], list[str]] | None = None,
    values_in_or_only: bool = False,
) -> tuple[str, list[Any]]:
    """``(condition, params)`` of the filters and search of ``q``, qmark placeholders;
    ``""`` when ``q`` has none (``text_match``, ``values`` and ``values_in_or_only``: see
    :func:`~.query.compile_sql`). Raises nothing: ``q`` holds parsed, valid values."""
    conds: list[str] = []
    params: list[Any] = []
    for col, chosen in (("state", q.state), ("worker", q.worker), ("name", q.name)):
        if chosen:
            conds.append(f"{col} IN ({', '.join('?' for _ in chosen)})")
            params.extend(chosen)
    for col, lo, hi in (
        ("received", q.received_start, q.received_end),
        ("started", q.started_start, q.started_end),
    ):
        if lo is not None:
            conds.append(f"{col} >= ?")
            params.append(lo)
        if hi is not None:
            conds.append(f"{col} <= ?")
            params.append(hi)
    if q.search is not None:
        cond, p = compile_sql(q.search, text_match, values, values_in_or_only)
        conds.append(cond)
        params.extend(p)
    return " AND ".join(conds), params


#: SQLite: the columns its index of a sort key holds after it (``tasks_name``,
#: ``tasks_state``); every index ends in the rowid.
_SQLITE_INDEX_TAIL = {"name": ("received",), "state": ("received", "name")}


def order_by(q: TaskQuery, dialect: Dialect, *, use_index: bool = True) -> str:
    """``ORDER BY`` of ``q``: its sort column (``NULL`` last when descending, first when
    ascending), then ``id`` in the same direction (``dialect.tiebreak``; SQLite: the rest of
    the sort column's index, then ``id``), so equal values keep one order on every page and
    plan. ``use_index`` False keeps SQLite from
    walking the sort column's index (better when few rows match). Raises ``ValueError`` for a
    sort key that is not a column (:func:`~.query.parse_sort` guards this)."""
    if q.sort_key not in SORT_COLUMNS:
        raise ValueError(f"cannot sort by {q.sort_key!r}")
    d = "DESC" if q.descending else "ASC"
    col = q.sort_key if use_index or dialect.nulls else "+" + q.sort_key
    nulls = (" NULLS LAST" if q.descending else " NULLS FIRST") if dialect.nulls else ""
    if dialect.tiebreak:
        tie = f", id {d}"
    else:
        # The order of the sort column's index, written out to the rowid: a total order (so
        # the pages of one query neither repeat nor skip a task whatever plan each takes; a
        # sort of candidates left equal values in any order) that the index walk still
        # gives without a second pass.
        tie = "".join(f", {c} {d}" for c in _SQLITE_INDEX_TAIL.get(q.sort_key, ())) + f", id {d}"
    return f"ORDER BY {col} {d}{nulls}{tie}"


@dataclass(frozen=True)
class QueryPlan:
    """The statements of one task query in a store's dialect (see :func:`plan`)."""

    q: TaskQuery
    dialect: Dialect
    #: the filters and search of ``q`` (qmark placeholders; "" for none) and their parameters
    cond: str
    params: list[Any]

    #: a search term is common: the count stops :data:`LOOKAHEAD_PAGES` past the page
    common: bool = False
    #: a common term's count walks the sort column's index (False: in any order, when its
    #: matches come from the store's text index)
    count_in_order: bool = True

    @property
    def cap(self) -> int | None:
        """Where :meth:`count` stops counting; None when it counts every task (no condition).
        A total equal to the cap is a lower bound."""
        if not self.cond:
            return None
        if self.q.search is None or self.q.limit is None:
            return COUNT_CAP
        ahead = self.q.offset + self.q.limit * (1 + LOOKAHEAD_PAGES) + 1
        return min(COUNT_CAP, ahead if self.common else max(ahead, SEARCH_COUNT_CAP))

    def count(self) -> tuple[str, list[Any]]:
        """``(sql, params)`` of one row holding the total: exact without a condition, else
        the number of matches up to :attr:`cap` (for a common term: the first ones in sort
        order, so the count walks the same index as the page)."""
        cap = self.cap
        if cap is None:
            return self.dialect.all_count, []
        order = f" {order_by(self.q, self.dialect)}" if self.common and self.count_in_order else ""
        sql = f"SELECT count(*) FROM (SELECT 1 FROM tasks WHERE {self.cond}{order} LIMIT ?) m"
        return self.dialect.sql(sql), [*self.params, cap]

    def walk(
        self,
        indexed_by: str | None = None,
        *,
        within: int | None = None,
        from_value: Any = None,
        to_value: Any = None,
    ) -> tuple[str, list[Any]] | None:
        """``(sql, params)`` of the ids of the first :attr:`cap` matches in sort order, for a
        common search: one walk gives both the page (``ids[offset:offset + limit]``) and the
        total (``len(ids)``, a lower bound when it equals :attr:`cap`), where
        :meth:`count` and :meth:`page` walk the same rows twice.

        ``indexed_by``: see :meth:`page`. ``within``: look only at the first ``within``
        tasks in sort order (a bounded walk; the answer is the query's only when it holds
        :attr:`cap` ids or the store has at most ``within`` tasks). ``from_value``: only
        the tasks whose sort value is at least this (descending sorts only): when that
        yields :attr:`cap` ids they are the query's first ones, since every task left out
        sorts after all of them (``NULL`` sorts last); a search that is not common is walked
        only with ``from_value``. None when the query is not common (and has no
        ``from_value``), has no limit, or its page ends past the cap (then :meth:`count` and :meth:`page`).
        ``to_value``: only the tasks whose sort value is at most this (descending sorts
        only), for a bound known to hold every match's value (SQLite's ``task_blocks``): the
        walk then starts there instead of stepping over the newer tasks; when it yields
        :attr:`cap` ids they are the query's first ones (the tasks left out are no matches
        or sort after all of them: ``NULL`` sorts last). Raises ``ValueError`` for
        ``from_value`` or ``to_value`` on an ascending sort."""
        cap = self.cap
        if (not self.common and from_value is None) or cap is None or self.q.limit is None:
            return None
        if self.q.offset + self.q.limit > cap:
            return None
        order = order_by(self.q, self.dialect)
        cond, params = self.cond, list(self.params)
        if from_value is not None:
            if not self.q.descending:
                raise ValueError("from_value needs a descending sort")
            cond = f"{cond} AND {self.q.sort_key} >= ?"
            params.append(from_value)
        if to_value is not None:
            if not self.q.descending:
                raise ValueError("to_value needs a descending sort")
            cond = f"{cond} AND {self.q.sort_key} <= ?"
            params.append(to_value)
        source = "tasks"
        if within is not None:
            source = f"(SELECT * FROM tasks {order} LIMIT ?) tasks"
            params.insert(0, within)
        elif indexed_by is not None:
            source = f"tasks INDEXED BY {indexed_by}"
        sql = f"SELECT id FROM {source} WHERE {cond} {order} LIMIT ?"
        return self.dialect.sql(sql), [*params, cap]

    def counted_page(self) -> tuple[str, list[Any]]:
        """``(sql, params)`` of one row: the total (as :meth:`count`) and an array of the
        page's ids in order, from one read of the matches (PostgreSQL). For a search whose
        matches come from a text index: :meth:`count` and :meth:`page` would each read the
        candidates' rows (customer-12: 6.5 + 15 ms at a million tasks). Raises
        ``ValueError`` for a query without a condition (its total is not counted)."""
        if not self.cond:
            raise ValueError("a query without a condition has no counted page")
        col = self.q.sort_key
        sql = (
            f"WITH m AS MATERIALIZED (SELECT id, {col} FROM tasks WHERE {self.cond}) "
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM m LIMIT ?) c), "
            f"ARRAY(SELECT id FROM m {order_by(self.q, self.dialect)} LIMIT ? OFFSET ?)"
        )
        return self.dialect.sql(sql), [*self.params, self.cap, self.q.limit, self.q.offset]

    def page(
        self, select: str = "id", *, use_index: bool = True, indexed_by: str | None = None
    ) -> tuple[str, list[Any]]:
        """``(sql, params)`` of the page's ``select`` columns in order (see :func:`order_by`
        for ``use_index``); ``indexed_by`` (SQLite) names the index the rows are read through
        (``INDEXED BY``, see :data:`SQLITE_SORT_INDEX`)."""
        where_ = f" WHERE {self.cond}" if self.cond else ""
        if indexed_by is not None:
            where_ = f" INDEXED BY {indexed_by}{where_}"
        order = order_by(self.q, self.dialect, use_index=use_index)
        limit: int | None = self.q.limit
        if limit is None and self.dialect is SQLITE:
            limit = -1  # SQLite's "no limit"; PostgreSQL takes NULL
        sql = f"SELECT {select} FROM tasks{where_} {order} LIMIT ? OFFSET ?"
        return self.dialect.sql(sql), [*self.params, limit, self.q.offset]


def plan(
    q: TaskQuery,
    dialect: Dialect,
    text_match: TextMatch | None = None,
    common: Callable[[], bool] | None = None,
    values: Callable[[str, str], list[str]] | None = None,
) -> QueryPlan:
    """The statements of ``q`` in ``dialect``; ``text_match`` writes substring conditions
    (see :func:`~.query.compile_sql`), and ``common()``, asked once they are written, says
    whether one of them was written as a scan because its term is common; ``values`` lists
    the distinct names or workers containing a text (see :func:`~.query.compile_sql`). Raises
    ``ValueError`` for an unknown sort key."""
    if q.sort_key not in SORT_COLUMNS:
        raise ValueError(f"cannot sort by {q.sort_key!r}")
    cond, params = where(q, text_match, values, dialect.values_in_or_only)
    return QueryPlan(q, dialect, cond, params, common=bool(common and common()))


#: The columns :class:`SearchSample` reads, in this order: what a search matches, then the
#: time columns a search may be sorted by (see :meth:`SearchSample.sort_values`).
SAMPLE_COLUMNS = ("uuid", "name", "state", "worker", "args", "kwargs", "result", "received",
                  "started", "timestamp")  # fmt: skip
_SAMPLE_TEXT = SAMPLE_COLUMNS[:7]


class _Sampled:
    __slots__ = ("uuid", "name", "state", "worker", "args", "kwargs", "result", "text",
                 "received", "started", "timestamp")  # fmt: skip
    uuid: str
    name: str
    state: str
    worker: str
    args: str
    kwargs: str
    result: str
    text: str
    received: float | None
    started: float | None
    timestamp: float | None

    def __init__(self, row: tuple[Any, ...]) -> None:
        self.received = self.started = self.timestamp = None
        for k, v in zip(SAMPLE_COLUMNS, row):
            setattr(self, k, (v or "") if k in _SAMPLE_TEXT else v)
        self.text = f"{self.args}\x00{self.kwargs}\x00{self.result}"


#: The smallest and largest task id (two subqueries: ``min(id), max(id)`` in one SELECT
#: makes SQLite read every row, 90 ms at a million tasks, instead of two index probes).
MIN_MAX_ID = "SELECT (SELECT min(id) FROM tasks), (SELECT max(id) FROM tasks)"


def sample_query(dialect: Dialect, lo: int | None, hi: int | None) -> tuple[str, list[int]]:
    """``(sql, params)`` reading up to :data:`SAMPLE_ROWS` tasks between ids ``lo`` and ``hi``
    (the table's smallest and largest id; None for an empty table): :data:`SAMPLE_RUNS` runs
    of consecutive ids at random places, so a sample costs the same at any size, is not
    biased to recent tasks, and reads a few pages per run (1,000 scattered ids read 1,000
    pages: 180 ms at a million tasks, against 10 ms)."""
    if lo is None or hi is None:
        ids: list[int] = []
    elif hi - lo < SAMPLE_ROWS:
        ids = list(range(lo, hi + 1))
    else:
        run = SAMPLE_RUN
        slots = (hi - lo + 1) // run  # the id range cut into runs; SAMPLE_RUNS of them drawn
        ids = [lo + k * run + i for k in random.sample(range(slots), min(slots, SAMPLE_RUNS))
               for i in range(run)]  # fmt: skip
    cols = ", ".join(SAMPLE_COLUMNS)
    marks = ", ".join("?" for _ in ids) or "NULL"
    return dialect.sql(f"SELECT {cols} FROM tasks WHERE id IN ({marks})"), ids


class SearchSample:
    """The share of :data:`SAMPLE_ROWS` random tasks a search matches, to tell a rare search
    (ask the index) from a common one (walk the sort column's index).

    ``fetch()`` returns the sample's rows (tuples of :data:`SAMPLE_COLUMNS`, see
    :func:`sample_query`);
    it is called again after :data:`SAMPLE_TTL` seconds or when the store grew or shrank by
    :data:`SAMPLE_DRIFT` (see :meth:`rows`), never per request. Two threads may both
    refresh; either sample is valid. The sample only steers speed, never which rows match.
    """

    def __init__(self, fetch: Callable[[], list[tuple[Any, ...]]]) -> None:
        self._fetch = fetch
        self._rows: list[_Sampled] | None = None
        self._at = 0.0
        self._n: int | None = None
        #: (the sampled rows, what was derived from them; see :meth:`_memo`)
        self._derived: tuple[list[_Sampled] | None, dict[Any, Any]] = (None, {})

    def _memo(self, rows: list[_Sampled], key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` (a figure of ``rows``), kept while ``rows`` is the sample and
        :data:`SAMPLE_MEMO` others are not kept: a request repeats the same few over
        1,000 rows (9 occurrence counts for a three-column search: 2-3 ms a request)."""
        held, memo = self._derived
        if held is not rows:
            memo = {}
            self._derived = (rows, memo)
        try:
            return memo[key]
        except KeyError:
            pass
        if len(memo) >= SAMPLE_MEMO:
            memo.clear()
        value = memo[key] = compute()
        return value

    def recall(self, key: Any, n_tasks: int | None = None) -> Any:
        """What :meth:`remember` kept under ``key`` (hashable) while the sample is the same,
        or None (``n_tasks``: see :meth:`rows`; a new sample forgets everything). For what
        a store learns from its own reads (e.g. how deep a search's first matches lie),
        which, like the sample, steers speed only."""
        rows = self.rows(n_tasks)
        held, memo = self._derived
        return memo.get(("learned", key)) if held is rows else None

    def remember(self, key: Any, value: Any) -> None:
        """Keep ``value`` under ``key`` until the sample is taken again (or
        :data:`SAMPLE_MEMO` figures are kept; see :meth:`recall`)."""
        rows = self._rows
        if rows is not None:
            self._memo(rows, ("learned", key), lambda: value)
            self._derived[1][("learned", key)] = value

    def rows(self, n_tasks: int | None = None) -> list[_Sampled]:
        """The sampled tasks (attributes ``uuid name state worker args kwargs result text``).

        Taken again after :data:`SAMPLE_TTL` seconds, or when ``n_tasks`` (the store's number
        of tasks now, when the caller knows it) is more than :data:`SAMPLE_DRIFT` away from
        the number at the last sample (a store that was empty at start is sampled once it
        has tasks, not a TTL later)."""
        now = time.monotonic()
        rows = self._rows
        last = self._n
        if (
            rows is None
            or now - self._at > SAMPLE_TTL
            or (n_tasks is not None and last is not None
                and abs(n_tasks - last) > max(SAMPLE_ROWS, last * SAMPLE_DRIFT))
        ):  # fmt: skip
            rows = self._rows = [_Sampled(r) for r in self._fetch()]
            self._at = now
            self._n = n_tasks
            self.generation += 1
        elif last is None and n_tasks is not None:
            self._n = n_tasks
        return rows

    #: How many samples were taken (derived caches compare it to know theirs is stale).
    generation = 0

    def fraction(self, node: Node, n_tasks: int | None = None) -> float:
        """The share (0..1) of sampled tasks ``node`` matches; 0.0 for an empty store
        (``n_tasks``: see :meth:`rows`)."""
        rows = self.rows(n_tasks)
        if not rows:
            return 0.0
        return float(self._memo(rows, ("fraction", node),
                                lambda: len(compile_python(node)(rows)) / len(rows)))  # fmt: skip

    def sort_values(self, node: Node, column: str, n_tasks: int | None = None) -> list[Any]:
        """The ``column`` values (``received``, ``started`` or ``timestamp``) of the sampled
        tasks ``node`` matches, largest first, ``NULL`` left out (``n_tasks``: see
        :meth:`rows`). The k-th is about the value of the ``k * n_tasks / SAMPLE_ROWS``-th
        match in a descending sort: a guess of where a page of matches starts (see
        :meth:`QueryPlan.walk`'s ``from_value``), never an answer. Raises ``ValueError``
        for another column."""
        if column not in SAMPLE_COLUMNS[7:]:
            raise ValueError(f"the sample holds no {column!r} values")
        rows = self.rows(n_tasks)

        def compute() -> list[Any]:
            found = (getattr(r, column) for r in compile_python(node)(rows))
            return sorted((v for v in found if v is not None), reverse=True)

        return list(self._memo(rows, ("sort_values", node, column), compute))

    def values(self, column: str, n_tasks: int | None = None) -> list[Any]:
        """The ``column`` values of every sampled task, largest first, ``NULL`` left out
        (``n_tasks``: see :meth:`rows`). Raises ``ValueError`` for a column the sample does
        not hold (see :meth:`sort_values`)."""
        if column not in SAMPLE_COLUMNS[7:]:
            raise ValueError(f"the sample holds no {column!r} values")
        rows = self.rows(n_tasks)

        def compute() -> list[Any]:
            return sorted((v for r in rows if (v := getattr(r, column)) is not None),
                          reverse=True)  # fmt: skip

        return list(self._memo(rows, ("values", column), compute))

    def matches_on_top(self, node: Node, column: str, n_tasks: int, within: int) -> float:
        """How many of the first ``within`` tasks of a descending sort by ``column``
        (``received``, ``started`` or ``timestamp``; ``NULL`` last) ``node`` is expected to
        match: its matches among the sampled tasks that sort first, as many as stand for
        ``within`` tasks, times the tasks each sampled task stands for (``n_tasks``: see
        :meth:`rows`). A guess that steers speed only. Raises ``ValueError`` for another
        column."""
        if column not in SAMPLE_COLUMNS[7:]:
            raise ValueError(f"the sample holds no {column!r} values")
        rows = self.rows(n_tasks)
        if not rows:
            return 0.0
        per_row = n_tasks / len(rows)
        first = self._memo(rows, ("first", column), lambda: sorted(
            rows, key=lambda r: (getattr(r, column) is not None, getattr(r, column) or 0),
            reverse=True))  # fmt: skip
        top = first[: max(1, math.ceil(within / per_row))]
        return len(compile_python(node)(top)) * per_row

    def occurrences(self, columns: tuple[str, ...], text: str) -> int:
        """In how many sampled tasks one of ``columns`` (args, kwargs, result) contains
        ``text``."""
        rows = self.rows()
        return int(self._memo(rows, ("occurrences", columns, text), lambda: sum(
            1 for r in rows if any(text in getattr(r, c) for c in columns))))  # fmt: skip

    def is_common(self, node: Node | None, n_tasks: int) -> bool:
        """Whether ``node`` has a substring term (name, worker and state terms are index
        lookups whatever their share) and likely matches more than :data:`INDEX_HITS_MAX`
        of ``n_tasks``."""
        if node is None or not _has_text(node):
            return False
        return self.fraction(node, n_tasks) * n_tasks > INDEX_HITS_MAX


def has_text(node: Node) -> bool:
    """Whether ``node`` has a substring term (over args, kwargs, result, or any field)."""
    return _has_text(node)


def _has_text(node: Node) -> bool:
    if isinstance(node, (And, Or)):
        return any(_has_text(i) for i in node.items)
    return node.field not in ("state", "name", "worker")
