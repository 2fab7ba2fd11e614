"""The SQLite store's search figures are taken off the request path and counted on demand.

* ``_trigram_count`` (how many sampled rows hold a trigram, counted only for the trigrams a
  search asks about) equals counting every trigram of every sampled row, as the store did
  before, on generated rows (texts that are short, empty, missing or hold the separator);
* ``prepare_search`` (SQLite and PostgreSQL) takes the search sample when it is missing or stale, so the first
  search after a flood or a restart does not; fresh, it does not take it again;
* the service's housekeeping calls it: a store that was never searched has its sample.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from celery import Celery
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_celerymon.monitor.model import TASK_COLUMNS, TaskQuery
from flask_celerymon.monitor.query import parse
from flask_celerymon.monitor.sql_query import SAMPLE_COLUMNS, SearchSample
from flask_celerymon.monitor.sqlite_store import SQLiteStore
from flask_celerymon.monitor.stores import open_store

_ALPHABET = "ab-1\x00'"
_text = st.one_of(st.none(), st.just(""), st.text(_ALPHABET, max_size=12))


def _sample_row(args: str | None, kwargs: str | None, result: str | None) -> tuple[Any, ...]:
    values = {"uuid": "u", "name": "n", "state": "SUCCESS", "worker": "w",
              "args": args, "kwargs": kwargs, "result": result}  # fmt: skip
    return tuple(values.get(c) for c in SAMPLE_COLUMNS)


def _all_counts(rows: list[tuple[Any, ...]]) -> Counter[str]:
    """Every trigram of every row, each counted once a row (the store's former way)."""
    counts: Counter[str] = Counter()
    for r in rows:
        seen: set[str] = set()
        for text in r[SAMPLE_COLUMNS.index("args") : SAMPLE_COLUMNS.index("result") + 1]:
            if text:
                seen.update(text[i : i + 3] for i in range(len(text) - 2))
        counts.update(seen)
    return counts


def _row(uuid: str, **values: Any) -> tuple[Any, ...]:
    return tuple(values.get(c, uuid if c == "uuid" else None) for c in TASK_COLUMNS)


@settings(max_examples=150, deadline=None)
@given(
    texts=st.lists(st.tuples(_text, _text, _text), max_size=30),
    asked=st.lists(st.text(_ALPHABET, min_size=3, max_size=3), max_size=20),
)
def test_trigram_counts_on_demand_equal_counting_every_trigram(
    tmp_path_factory: Any, texts: list[tuple[Any, ...]], asked: list[str]
) -> None:
    store = SQLiteStore(str(tmp_path_factory.mktemp("tri") / "t.sqlite3"))
    try:
        rows = [_sample_row(*t) for t in texts]
        store._sample = SearchSample(lambda: rows)
        expected = _all_counts(rows)
        for tri in [*asked, *expected]:
            assert store._trigram_count(tri) == expected.get(tri, 0), repr(tri)
        # a new sample: counted anew
        rows2 = rows[: len(rows) // 2]
        store._sample = SearchSample(lambda: rows2)
        expected2 = _all_counts(rows2)
        for tri in [*asked, *expected]:
            assert store._trigram_count(tri) == expected2.get(tri, 0), repr(tri)
    finally:
        store.close()


def test_prepare_search_takes_the_sample_so_a_search_does_not(store_db: str) -> None:
    store = open_store(store_db)
    try:
        store.prepare_search()  # empty: nothing to sample, and no error
        assert store._sample._rows is None
        store.write_tasks([_row(f"t{i}", received=float(i), args=f"('customer-{i}',)")
                           for i in range(2000)])  # fmt: skip
        fetched: list[int] = []
        fetch = store._sample._fetch

        def counted() -> list[tuple[Any, ...]]:
            fetched.append(1)
            return fetch()

        store._sample._fetch = counted
        store.prepare_search()
        assert len(fetched) == 1
        q = TaskQuery(search=parse("customer-12"), limit=10)
        total, page = store.query(q)
        assert [t["uuid"] for t in page] == [
            "t1299",
            "t1298",
            "t1297",
            "t1296",
            "t1295",
            "t1294",
            "t1293",
            "t1292",
            "t1291",
            "t1290",
        ]
        assert len(fetched) == 1, "the search took the sample again"
        store.prepare_search()  # fresh: not taken again
        assert len(fetched) == 1
        # grown past the drift: taken again by prepare_search, not by the next search
        store.write_tasks([_row(f"n{i}", received=3000.0 + i) for i in range(2000)])
        store.prepare_search()
        assert len(fetched) == 2
        store.query(q)
        assert len(fetched) == 2
    finally:
        store.close()


def test_housekeeping_prepares_the_search_of_a_store_never_searched(
    make_service: Any, celery_app: Celery
) -> None:
    svc = make_service(celery_app)
    svc.start()
    store = svc._store
    store.write_tasks([_row(f"t{i}", received=float(i)) for i in range(50)])
    deadline = time.monotonic() + 10
    while store._sample._rows is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store._sample._rows is not None
    assert len(store._sample._rows) == 50


def test_trigram_counts_kept_stay_bounded_and_right(tmp_path: Any, monkeypatch: Any) -> None:
    """At most ``TRIGRAM_MEMO`` counts are kept per sample (searches of ever new phrases
    must not grow it), and a count asked again after they were dropped is still right."""
    from flask_celerymon.monitor import sqlite_store

    monkeypatch.setattr(sqlite_store, "TRIGRAM_MEMO", 8)
    store = SQLiteStore(str(tmp_path / "m.sqlite3"))
    try:
        rows = [_sample_row(f"({i:03d}, 'ab')", None, "ok") for i in range(200)]
        store._sample = SearchSample(lambda: rows)
        expected = _all_counts(rows)
        asked = sorted(expected)
        for tri in asked * 2:
            assert store._trigram_count(tri) == expected[tri], tri
            held = store._trigram_sample
            assert held is not None and len(held[3]) <= 8
    finally:
        store.close()
