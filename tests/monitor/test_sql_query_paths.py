"""Differential test of the task query's fast paths: on generated histories, every page and
total a store answers through its shortcuts for common searches (one walk of the sort
column's index; SQLite's id-range prefilter and its fallback to sorting the candidates;
PostgreSQL's bounded walk, or its skip when the sample puts every match deeper, its "at
least this value" bitmap over BRIN ranges, also for a search that is not common (from the
sample, or from a bounded probe when the sample caught too few matches), and its
sorted candidates; SQLite's walk entered at the bound its ``task_blocks`` give) equals the plain answer: every stored task checked by the in-memory
matcher (:func:`~flask_celerymon.monitor.query.compile_python`) and sorted, on a real SQLite
file and a real PostgreSQL server.

The sort values are distinct (SQLite orders equal values by its index, PostgreSQL by id) and
follow the ids only loosely: some tasks were received long before or after their
neighbours, as tasks held by a broker are, so no path may take id order for sort order.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from flask_celerymon.monitor import pg_store, sql_query, sqlite_store
from flask_celerymon.monitor.model import TASK_COLUMNS, TaskQuery
from flask_celerymon.monitor.query import compile_python, parse
from flask_celerymon.monitor.sql_query import SAMPLE_COLUMNS, _Sampled
from flask_celerymon.monitor.stores import open_store

from .conftest import STORE_KINDS, store_target

N = 3000
START = 1_700_000_000.0

SEARCHES = (
    "result:\"'order': 1\"",  # tasks 1, 10-19, 100-199, 1000-1999: clustered
    "batch-4",  # tasks 2000-2499 in args: clustered, late
    "batch-0",  # tasks 0-499: clustered at the far end of a descending sort
    "customer-7",  # every 97th task and its tens: spread
    "kwargs:priority=2",  # a third of the tasks
    "kwargs:\"'priority': 1\"",
    "fresh",  # only the tasks written after the search index was built (SQLite)
    "state:failure result:declined",
    "batch-1 OR batch-5",
    "name:payments customer-3",
    "no-such-text",
)
SORTS = ("-received", "received", "-timestamp", "-runtime", "-started")


def _rows() -> list[tuple[Any, ...]]:
    rnd = random.Random(5)
    slots = list(range(N))
    for i in range(0, N - 7, 7):  # local disorder
        j = i + rnd.randrange(7)
        slots[i], slots[j] = slots[j], slots[i]
    out = []
    for i in range(N):
        received = START + slots[i] + (rnd.choice((-1, 1)) * 50_000 if i % 37 == 0 else 0)
        failed = i % 11 == 0
        values = {
            "uuid": f"task-{i:05d}",
            "name": ("shop.payments.capture", "shop.mail.send", "shop.stock.count")[i % 3],
            "state": "FAILURE" if failed else "SUCCESS",
            "worker": f"celery@w{i % 4}",
            "received": received,
            "started": received + 0.5 + i / 1e6,
            "timestamp": received + 1 + (i % 13) / 100 + i / 1e7,
            "runtime": round(rnd.uniform(0.001, 2.0), 6) + i / 1e9,
            "args": f"(batch-{i // 500}, 'customer-{i % 97}', {i})",
            "kwargs": f"{{'priority': {i % 3}, 'user_id': {i % 50}}}",
            "result": "declined" if failed else f"{{'order': {i}, 'status': 'ok'}}",
        }
        out.append(tuple(values.get(c) for c in TASK_COLUMNS))
    return out


def _fresh_rows() -> list[tuple[Any, ...]]:
    """Written after the search index was built: SQLite scans them."""
    out = []
    for k in range(40):
        values = {"uuid": f"fresh-{k:03d}", "name": "shop.mail.send", "state": "SUCCESS",
                  "worker": "celery@w9", "received": START + N + 100 + k,
                  "started": START + N + 100.5 + k, "timestamp": START + N + 101 + k,
                  "runtime": 3.0 + k / 100, "args": f"('fresh', 'customer-7{k}')",
                  "kwargs": "{'priority': 2}", "result": f"{{'order': 1{k}}}"}  # fmt: skip
        out.append(tuple(values.get(c) for c in TASK_COLUMNS))
    return out


def _expected(rows: list[tuple[Any, ...]], search: str, sort: str) -> list[str]:
    """The uuids of the matching tasks in sort order: every task checked in memory."""
    idx = {c: TASK_COLUMNS.index(c) for c in SAMPLE_COLUMNS}
    records = [_Sampled(tuple(r[idx[c]] for c in SAMPLE_COLUMNS)) for r in rows]
    key = sort.lstrip("-")
    by_uuid = {r[0]: r[TASK_COLUMNS.index(key)] for r in rows}
    hits = [t.uuid for t in compile_python(parse(search))(records)]
    return sorted(hits, key=lambda u: by_uuid[u], reverse=sort.startswith("-"))


@pytest.fixture(scope="module", params=STORE_KINDS)
def history(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Any:
    """A store of each kind holding the generated history (the newest 40 tasks past
    SQLite's search index), and its rows."""
    db = store_target(request, tmp_path_factory.mktemp("paths"))
    # blocks of 8 ids in SQLite's task_blocks: the bounds of its walks prune something here
    shift, sqlite_store.BLOCK_SHIFT = sqlite_store.BLOCK_SHIFT, 3
    try:
        store = open_store(db)
    finally:
        sqlite_store.BLOCK_SHIFT = shift
    rows = _rows()
    for i in range(0, N, 500):
        store.write_tasks(rows[i : i + 500])
    while store.index_pending(1000):
        pass
    fresh = _fresh_rows()
    store.write_tasks(fresh)
    yield store, rows + fresh
    store.close()


#: How a store is pushed onto each of its paths: (label, module attributes to set).
PATHS = (
    ("as configured", {}),
    # every text term is common: one walk of the sort column's index
    ("common, walked", {(sql_query, "INDEX_HITS_MAX"): -1}),
    # ... the walk cut short: SQLite sorts the candidates, PostgreSQL tries the sampled
    # values with its BRIN ranges, then sorts the candidates
    (
        "common, walk cut short",
        {
            (sql_query, "INDEX_HITS_MAX"): -1,
            (sqlite_store, "COMMON_WALK_BUDGET"): 4000,
            (pg_store, "WALK_ROWS"): 30,
        },
    ),  # fmt: skip
    # ... PostgreSQL skips the walk when no sampled match sorts near the top
    (
        "common, walk skipped",
        {
            (sql_query, "INDEX_HITS_MAX"): -1,
            (pg_store, "WALK_ROWS"): 30,
            (pg_store, "SKIP_WALK_DEPTH"): 1,
        },
    ),  # fmt: skip
    # a search that is not common, read from a sampled value through PostgreSQL's BRIN
    # ranges (or its counted page when the guess falls short)
    (
        "rare, from a sampled value",
        {(pg_store, "RARE_MARGIN"): 1, (sql_query, "SEARCH_COUNT_CAP"): 60},
    ),
    # ... its first, shallow guess falling short: the second one read, or the counted page
    (
        "rare, second sampled value",
        {
            (pg_store, "RARE_FIRST_MARGIN"): 0.05,
            (pg_store, "RARE_MARGIN"): 1,
            (sql_query, "SEARCH_COUNT_CAP"): 60,
        },
    ),  # fmt: skip
    # ... the sample telling nothing (too few sampled matches, as customer-12 at a million
    # tasks in one process of eleven): PostgreSQL's bounded probe over the first eighth
    (
        "rare, probed",
        {(pg_store, "RARE_MARGIN"): 10**9, (sql_query, "SEARCH_COUNT_CAP"): 60},
    ),
    # ... its first probe too shallow: a second one placed by the share it measured, or the
    # counted page; the next request starts where the last one filled the cap
    (
        "rare, probed twice",
        {
            (pg_store, "RARE_MARGIN"): 10**9,
            (pg_store, "PROBE_SHARE"): 0.01,
            (sql_query, "SEARCH_COUNT_CAP"): 60,
        },
    ),  # fmt: skip
    # ... and no sampled value is tried (the candidates sorted)
    (
        "common, candidates sorted",
        {
            (sql_query, "INDEX_HITS_MAX"): -1,
            (sqlite_store, "COMMON_WALK_BUDGET"): 1,
            (pg_store, "WALK_ROWS"): 1,
            (pg_store, "THRESHOLD_MARGINS"): (),
        },
    ),  # fmt: skip
)


PAGES = ((0, 20), (40, 20), (0, 100))


@pytest.mark.parametrize("path", [p[1] for p in PATHS], ids=[p[0] for p in PATHS])
@pytest.mark.parametrize("sort", SORTS)
def test_every_path_answers_what_checking_every_task_answers(
    history: Any, path: dict[Any, Any], sort: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, rows = history
    for (module, name), value in path.items():
        monkeypatch.setattr(module, name, value)
    # what the store learned on another path's queries (SearchSample.remember) is forgotten
    sample = getattr(store, "_sample", None)
    if sample is not None:
        monkeypatch.setattr(sample, "_derived", (None, {}))
    key, descending = sort.lstrip("-"), sort.startswith("-")
    for search in SEARCHES:
        expected = _expected(rows, search, sort)
        # on the probed paths each page twice: the second one asked after the first one's lessons
        for offset, limit in PAGES * (2 if (pg_store, "RARE_MARGIN") in path else 1):
            q = TaskQuery(search=parse(search), sort_key=key, descending=descending,
                          offset=offset, limit=limit)  # fmt: skip
            total, page = store.query(q)
            where = f"{search!r} sorted by {sort}, offset {offset}"
            assert [t["uuid"] for t in page] == expected[offset : offset + limit], where
            # the total: every match, or at least a page past the one shown
            assert total <= len(expected), where
            if store.last_count_exact:
                assert total == len(expected), where
            else:  # a cap reached: "at least", possibly all of them
                assert total == len(expected) or total > offset + limit, where
            assert total >= min(len(expected), offset + 2 * limit + 1), where


def test_the_generated_history_has_clustered_spread_and_unindexed_matches(history: Any) -> None:
    _store, rows = history
    assert len(_expected(rows, "batch-0", "-received")) == 500
    assert len(_expected(rows, "fresh", "-received")) == 40
    spread = _expected(rows, "customer-7", "-received")
    assert 200 < len(spread) < 400


def test_sqlite_block_bounds_hold_after_values_move_nulls_and_pruning(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's walk entered at the ``task_blocks`` bound answers exactly what checking every
    task answers after tasks were written again with later or NULL sort values (the bound
    only grows) and the oldest tasks were pruned; a store made before ``task_blocks`` existed
    gets it filled from its rows."""
    monkeypatch.setattr(sqlite_store, "BLOCK_SHIFT", 3)
    db = str(tmp_path / "blocks.sqlite3")
    rows = _rows()
    store = open_store(db)
    store.write_tasks(rows[:1500])
    store.close()
    # an earlier version's file: no task_blocks, no triggers, no shift
    import sqlite3

    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER IF EXISTS tasks_blocks_in")  # (this version has none)
        conn.execute("DROP TRIGGER tasks_blocks_up")
        conn.execute("DROP TABLE task_blocks")
        conn.execute("DELETE FROM meta WHERE key IN ('block_shift', ?)", (sqlite_store.SHIFT_KEY,))
    store = open_store(db)
    try:
        store.write_tasks(rows[1500:])
        while store.index_pending(1000):
            pass
        rnd = random.Random(9)
        col = {c: TASK_COLUMNS.index(c) for c in ("received", "started", "timestamp")}
        moved = []
        for i in rnd.sample(range(N), 300):
            r = list(rows[i])
            for k in col.values():
                r[k] = None if i % 3 == 0 else r[k] + 90_000  # NULL, or after every other
            moved.append(tuple(r))
            rows[i] = tuple(r)
        store.write_tasks(moved)
        oldest = sorted(range(N), key=lambda i: rows[i][col["timestamp"]] or 0)[:200]
        store.prune(N - 200, START - 10**6)
        kept = [r for i, r in enumerate(rows) if i not in set(oldest)]
        assert store.count() == len(kept)
        monkeypatch.setattr(sql_query, "INDEX_HITS_MAX", -1)  # every search common: walked
        ids = {r[0]: n for n, r in enumerate(_rows())}  # uuid -> insertion order (the id)
        for sort in ("-received", "-started", "-timestamp"):
            key = sort[1:]
            by_uuid = {r[0]: r[TASK_COLUMNS.index(key)] for r in kept}
            for search in SEARCHES:
                hits = _expected(kept, search, "-runtime")
                # NULL last; equal values (NULLs) newest id first, as SQLite's index walk
                expected = sorted(hits, key=lambda u: (by_uuid[u] is not None,
                                                       by_uuid[u] or 0, ids[u]), reverse=True)  # fmt: skip
                for offset, limit in ((0, 20), (40, 20), (0, 100)):
                    q = TaskQuery(search=parse(search), sort_key=key, descending=True,
                                  offset=offset, limit=limit)  # fmt: skip
                    total, page = store.query(q)
                    where = f"{search!r} sorted by {sort}, offset {offset}"
                    assert [t["uuid"] for t in page] == expected[offset : offset + limit], where
                    assert total <= len(expected), where
                    assert total >= min(len(expected), offset + 2 * limit + 1), where
    finally:
        store.close()


def test_pages_of_equal_sort_values_neither_repeat_nor_skip_a_task(store_db: str) -> None:
    """Many tasks share a sort value (ten a received time, four runtimes): the pages of one
    search, each of which may take another plan (a bounded walk of the sort column's index,
    the candidates sorted), put together are the whole answer once, in one order; SQLite's
    and PostgreSQL's orders agree (equal values by id). SQLite left equal values in whatever
    order each plan gave: searching ``app`` sorted by runtime repeated 65 tasks across 11
    pages of 250 and skipped as many."""
    rnd = random.Random(3)
    rows = []
    for i in range(4000):
        v: dict[str, Any] = dict.fromkeys(TASK_COLUMNS)
        v.update(uuid=f"t{i:05d}", name=rnd.choice(["app.a", "app.b", "pay.c"]),
                 state=rnd.choice(["SUCCESS", "FAILURE"]), worker="w1",
                 received=START + i // 10, started=START + i // 10 if i % 3 else None,
                 timestamp=START + i // 20, runtime=float(i % 4) if i % 5 else None,
                 args=f"('cust-{i % 50}', 'batch-{i // 500}')", kwargs="{}", result="'ok'")  # fmt: skip
        rows.append(tuple(v[c] for c in TASK_COLUMNS))
    store = open_store(store_db)
    try:
        for k in range(0, len(rows), 500):
            store.write_tasks(rows[k : k + 500])
            if k < 3000 and hasattr(store, "index_pending"):
                store.index_pending(400)  # (SQLite: some rows left unindexed)
        for search in ("app", "cust-1", "batch-3"):
            for sort in ("-runtime", "runtime", "-received", "received", "-started", "-timestamp"):
                key, desc = sort.lstrip("-"), sort.startswith("-")
                seen: list[str] = []
                for offset in range(0, 4000, 250):
                    q = TaskQuery(search=parse(search), sort_key=key, descending=desc,
                                  offset=offset, limit=250)  # fmt: skip
                    page = [t["uuid"] for t in store.query(q)[1]]
                    seen += page
                    if len(page) < 250:
                        break
                col = TASK_COLUMNS.index(key)
                value = {r[0]: r[col] for r in rows}
                hits = sorted(_expected(rows, search, "uuid"), key=lambda u: int(u[1:]),
                              reverse=desc)  # equal values by id: here the uuid's number  # fmt: skip
                present = [u for u in hits if value[u] is not None]
                missing = [u for u in hits if value[u] is None]  # last descending, first ascending
                ordered = sorted(present, key=value.__getitem__, reverse=desc)
                expected = ordered + missing if desc else missing + ordered
                assert seen == expected, f"{search!r} sorted by {sort}"
    finally:
        store.close()


def test_what_the_rare_probe_learned_never_makes_a_page_wrong_after_the_history_changed(
    postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL's bounded probe keeps what it learned (the depth that filled the cap, or
    # that the term is too rare) with the sample; the history changes under it (new matches
    # on top, tasks moved, the oldest pruned) while the sample is kept: every page and total
    # must still be what checking every task answers.
    monkeypatch.setattr(pg_store, "RARE_MARGIN", 10**9)
    monkeypatch.setattr(pg_store, "PROBE_SHARE", 0.01)
    monkeypatch.setattr(sql_query, "SEARCH_COUNT_CAP", 60)
    store = open_store(postgres_server.create_database())
    try:
        rows = _rows()
        for i in range(0, N, 500):
            store.write_tasks(rows[i : i + 500])
        searches = ("customer-7", "batch-4", "batch-0", "kwargs:\"'user_id': 42\"", "no-such-text")

        def check(rows: list[tuple[Any, ...]]) -> None:
            for search in searches:
                for sort in ("-received", "-timestamp", "-started"):
                    expected = _expected(rows, search, sort)
                    for offset, limit in PAGES:
                        q = TaskQuery(search=parse(search), sort_key=sort[1:], descending=True,
                                      offset=offset, limit=limit)  # fmt: skip
                        total, page = store.query(q)
                        where = f"{search!r} sorted by {sort}, offset {offset}"
                        assert [t["uuid"] for t in page] == expected[offset:offset + limit], where
                        assert total <= len(expected), where
                        if store.last_count_exact:
                            assert total == len(expected), where
                        assert total >= min(len(expected), offset + 2 * limit + 1), where

        check(rows)
        sample = store._sample
        learned = sample._derived
        assert any(k[0] == "learned" for k in learned[1] if isinstance(k, tuple)), "no probe ran"
        # the rare become common on top, a common one moved to the bottom, the oldest pruned
        u = TASK_COLUMNS.index("uuid")
        cols = {c: TASK_COLUMNS.index(c) for c in ("received", "started", "timestamp", "args")}
        top = START + 10 * N
        changed = []
        for k, r in enumerate(rows):
            v = list(r)
            if k % 50 == 0:  # user_id 0 tasks: now customer-7 and batch-0, on top
                v[cols["args"]] = f"(batch-0, 'customer-7', {k})"
                for c in ("received", "started", "timestamp"):
                    v[cols[c]] = top + k
            elif r[cols["args"]].startswith("(batch-4"):  # batch-4 at the bottom
                for c in ("received", "started", "timestamp"):
                    v[cols[c]] = START - N - k
            changed.append(tuple(v))
        store.write_tasks([r for r in changed if r not in rows])
        assert store.prune(N - 200, 0.0) > 0
        kept = {t["uuid"] for t in store.query(TaskQuery(limit=None))[1]}
        rows = [r for r in changed if r[u] in kept]
        assert store._sample._derived is learned, "the sample was taken again"
        check(rows)
        # what is learned stays bounded however many distinct searches arrive
        monkeypatch.setattr(sql_query, "SAMPLE_MEMO", 16)
        for k in range(60):
            store.query(TaskQuery(search=parse(f"customer-{k}"), sort_key="received",
                                  descending=True, limit=20))  # fmt: skip
        assert len(store._sample._derived[1]) <= 16
    finally:
        store.close()
