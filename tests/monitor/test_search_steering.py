"""Differential test: the search sample and the trigram counts taken from it steer how a store
answers a search, never what it answers.

* On generated histories (short texts of a small alphabet, so trigrams repeat across rows, some
  rows past SQLite's search index), each page equals the in-memory matcher's answer whatever
  the trigram counts say: the honest ones, their opposite (the commonest trigrams asked of the
  index), all equal, or a sample of other tasks;
* while another thread takes the sample again and again (``prepare_search``, a sample that
  holds every match and then none, so a term flips between common and rare), the answers
  from request threads do not change (SQLite and PostgreSQL).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_celerymon.monitor import sql_query
from flask_celerymon.monitor.model import TASK_COLUMNS, TaskQuery
from flask_celerymon.monitor.query import compile_python, parse
from flask_celerymon.monitor.sql_query import SAMPLE_COLUMNS, SearchSample, _Sampled
from flask_celerymon.monitor.sqlite_store import SQLiteStore
from flask_celerymon.monitor.stores import open_store

_ALPHABET = "ab-1'"
_text = st.one_of(st.none(), st.text(_ALPHABET, max_size=10))


def _row(i: int, args: str | None, kwargs: str | None, result: str | None) -> tuple[Any, ...]:
    values = {"uuid": f"t{i:04d}", "name": "app.job", "state": "SUCCESS", "worker": "w@h",
              "received": 1_700_000_000.0 + i, "timestamp": 1_700_000_001.0 + i,
              "args": args, "kwargs": kwargs, "result": result}  # fmt: skip
    return tuple(values.get(c) for c in TASK_COLUMNS)


def _expected(rows: list[tuple[Any, ...]], search: str) -> list[str]:
    idx = {c: TASK_COLUMNS.index(c) for c in SAMPLE_COLUMNS}
    records = [_Sampled(tuple(r[idx[c]] for c in SAMPLE_COLUMNS)) for r in rows]
    hits = {t.uuid for t in compile_python(parse(search))(records)}
    return [r[0] for r in reversed(rows) if r[0] in hits]  # received descending: newest first


def _sampled(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [tuple(r[TASK_COLUMNS.index(c)] for c in SAMPLE_COLUMNS) for r in rows]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(st.tuples(_text, _text, _text), min_size=1, max_size=40),
    phrases=st.lists(st.text(_ALPHABET, min_size=3, max_size=6), min_size=1, max_size=4),
    indexed=st.integers(0, 40),
)
def test_a_search_answers_the_same_whatever_the_trigram_counts_say(
    tmp_path_factory: Any, texts: list[tuple[Any, ...]], phrases: list[str], indexed: int
) -> None:
    store = SQLiteStore(str(tmp_path_factory.mktemp("steer") / "s.sqlite3"))
    try:
        rows = [_row(i, *t) for i, t in enumerate(texts)]
        store.write_tasks(rows[:indexed])
        store.index_pending(10_000)
        store.write_tasks(rows[indexed:])  # past the index: scanned
        honest = store._trigram_count
        others = _sampled([_row(9000 + i, "bbb-1", "'aa'", None) for i in range(30)])
        counts = {
            "honest": honest,
            "opposite": lambda t: -honest(t),
            "equal": lambda t: 0,
        }
        searches = [*phrases, " OR ".join(phrases), f'args:"{phrases[0]}"']
        for label, count in counts.items():
            store._trigram_count = count  # type: ignore[method-assign]
            for search in searches:
                _, page = store.query(TaskQuery(search=parse(search), limit=100))
                assert [t["uuid"] for t in page] == _expected(rows, search), (label, search)
        del store._trigram_count
        store._sample = SearchSample(lambda: others)  # a sample of other tasks
        for search in searches:
            _, page = store.query(TaskQuery(search=parse(search), limit=100))
            assert [t["uuid"] for t in page] == _expected(rows, search), ("others", search)
    finally:
        store.close()


@pytest.mark.timeout(120)
def test_answers_do_not_change_while_housekeeping_takes_the_sample_again(
    store_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(store_db)
    try:
        rows = [_row(i, f"('customer-{i % 7}', {i})", "{'k': 1}", f"ok-{i % 3}")
                for i in range(600)]  # fmt: skip
        store.write_tasks(rows)
        if hasattr(store, "index_pending"):
            store.index_pending(10_000)
        every = _sampled(rows)
        none = _sampled([_row(9000 + i, "x", "y", "z") for i in range(50)])
        flip = [0]

        def fetch() -> list[tuple[Any, ...]]:
            flip[0] += 1
            return every if flip[0] % 2 else none

        store._sample._fetch = fetch
        monkeypatch.setattr(sql_query, "SAMPLE_TTL", -1.0)  # every call takes it again
        searches = ["customer-3", "ok-1 customer-2", "customer-5 OR ok-2", "'k'"]
        expected = {s: _expected(rows, s) for s in searches}
        stop = threading.Event()
        errors: list[BaseException] = []

        def housekeeping() -> None:
            while not stop.is_set():
                try:
                    store.prepare_search()
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)
                    return
                time.sleep(0)  # (under gevent: let the requests run)

        def requests() -> None:
            try:
                for _ in range(15):
                    for s in searches:
                        _, page = store.query(TaskQuery(search=parse(s), limit=20))
                        assert [t["uuid"] for t in page] == expected[s][:20], s
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        house = threading.Thread(target=housekeeping)
        house.start()
        readers = [threading.Thread(target=requests) for _ in range(3)]
        for r in readers:
            r.start()
        for r in readers:
            r.join(100)
        stop.set()
        house.join(10)
        assert not errors, errors[0]
        assert flip[0] > 2, "the sample was not taken again"
    finally:
        store.close()
