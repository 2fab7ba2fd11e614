"""The one SQL builder of the task query, per dialect (the stores run it in test_query.py)."""

from __future__ import annotations

import pytest

from flask_celerymon.monitor import sql_query
from flask_celerymon.monitor.query import parse
from flask_celerymon.monitor.sql_query import POSTGRESQL, SQLITE, SearchSample, plan
from flask_celerymon.monitor.store import TaskQuery


def test_the_dialects_differ_only_in_placeholders_nulls_and_the_tie_break():
    q = TaskQuery(state=("FAILURE",), sort_key="runtime", descending=True, limit=10, offset=20)
    lite, pg = plan(q, SQLITE), plan(q, POSTGRESQL)
    assert lite.page() == (
        "SELECT id FROM tasks WHERE state IN (?) ORDER BY runtime DESC, id DESC LIMIT ? OFFSET ?",
        ["FAILURE", 10, 20],
    )
    assert pg.page() == (
        "SELECT id FROM tasks WHERE state IN (%s) ORDER BY runtime DESC NULLS LAST, id DESC "
        "LIMIT %s OFFSET %s",
        ["FAILURE", 10, 20],
    )
    asc = TaskQuery(sort_key="name", descending=False, limit=None)
    assert plan(asc, POSTGRESQL).page()[0].endswith("ORDER BY name ASC NULLS FIRST, id ASC "
                                                    "LIMIT %s OFFSET %s")  # fmt: skip
    assert plan(asc, SQLITE).page() == (
        # SQLite: the rest of its index of the sort column, then the id (a total order)
        "SELECT id FROM tasks ORDER BY name ASC, received ASC, id ASC LIMIT ? OFFSET ?",
        [-1, 0],  # SQLite's "no limit"
    )
    by_state = TaskQuery(sort_key="state", limit=5)
    assert (
        plan(by_state, SQLITE)
        .page()[0]
        .endswith("ORDER BY state DESC, received DESC, name DESC, id DESC LIMIT ? OFFSET ?")
    )


def test_the_unfiltered_total_is_exact_and_filters_count_up_to_the_cap():
    assert plan(TaskQuery(), SQLITE).count() == ("SELECT n FROM task_count", [])
    assert plan(TaskQuery(), POSTGRESQL).count() == ("SELECT n FROM task_count", [])
    assert plan(TaskQuery(), POSTGRESQL).cap is None
    p = plan(TaskQuery(worker=("w1", "w2")), SQLITE)
    assert p.count() == (
        "SELECT count(*) FROM (SELECT 1 FROM tasks WHERE worker IN (?, ?) LIMIT ?) m",
        ["w1", "w2", sql_query.COUNT_CAP],
    )


def test_a_search_counts_a_page_ahead_or_search_count_cap_whichever_is_more():
    q = TaskQuery(search=parse("state:failure"), offset=300, limit=100)
    assert plan(q, SQLITE).cap == sql_query.SEARCH_COUNT_CAP
    far = TaskQuery(search=parse("state:failure"), offset=5000, limit=100)
    assert plan(far, SQLITE).cap == 5000 + 200 + 1
    common = plan(q, SQLITE, common=lambda: True)
    assert common.cap == 300 + 200 + 1
    # a common search counts the first matches in sort order: the walk the page takes
    assert "ORDER BY received DESC, id DESC LIMIT ?) m" in common.count()[0]
    unpaged = TaskQuery(search=parse("state:failure"), limit=None)
    assert plan(unpaged, SQLITE).cap == sql_query.COUNT_CAP


def test_an_unknown_sort_key_is_refused():
    with pytest.raises(ValueError, match="cannot sort by 'uuid'"):
        plan(TaskQuery(sort_key="uuid"), SQLITE)


def test_names_and_workers_are_named_in_the_condition_when_listed():
    listed = {"name": ["app.add", "app.add_more"], "worker": []}
    cond, params = sql_query.where(
        TaskQuery(search=parse("name:add OR worker:add")), values=lambda f, v: listed[f]
    )
    # the worker branch matches nothing: left out of the OR (a "1 = 0" branch there keeps
    # SQLite from answering the OR from its indexes)
    assert cond == "(name IN (?, ?))"
    assert params == ["app.add", "app.add_more"]
    nothing, params = sql_query.where(
        TaskQuery(search=parse("worker:add OR worker:sub")), values=lambda f, v: []
    )
    assert (nothing, params) == ("1 = 0", [])
    both, _ = sql_query.where(
        TaskQuery(search=parse("add name:add")), values=lambda f, v: listed[f]
    )
    assert "1 = 0" not in both


def test_the_sample_tells_common_searches_from_rare_ones():
    rows = [(f"u{i}", "app.add", "SUCCESS", "w1", f"({i},)", "{}", "'ok'") for i in range(100)]
    fetched = []

    def fetch():
        fetched.append(1)
        return rows

    sample = SearchSample(fetch)
    assert sample.fraction(parse("'ok'")) == 1.0
    assert sample.fraction(parse('args:"(42,)"')) == 0.01
    assert sample.is_common(parse("'ok'"), 1_000_000)
    assert not sample.is_common(parse('args:"(42,)"'), 1_000_000)  # 10,000 estimated matches
    # state, name and worker terms are index lookups, however many tasks they match
    assert not sample.is_common(parse("state:success name:add"), 1_000_000)
    assert sample.is_common(parse("state:success 'ok'"), 1_000_000)
    assert sample.occurrences(("args",), "(4") == 11
    assert len(fetched) == 1  # kept for SAMPLE_TTL seconds
    assert SearchSample(list).fraction(parse("anything")) == 0.0


def test_the_sample_is_taken_again_when_the_store_grew_not_per_request():
    fetched = []

    def fetch():
        fetched.append(1)
        return [("u", "app.add", "SUCCESS", "w1", "(1,)", "{}", "'ok'")]

    sample = SearchSample(fetch)
    sample.rows(0)
    sample.rows(10)
    assert len(fetched) == 1
    sample.rows(5_000)  # moved by more than SAMPLE_ROWS: an empty store got its tasks
    sample.rows(6_000)  # within SAMPLE_DRIFT of 5,000
    assert len(fetched) == 2
    sample.rows(7_000)
    assert (len(fetched), sample.generation) == (3, 3)


def test_figures_of_a_sample_are_kept_until_the_sample_is_taken_again(
    monkeypatch: pytest.MonkeyPatch,
):
    ok = [("u1", "app.add", "SUCCESS", "w1", "(1,)", "{}", "'ok'", 5.0, None, 5.0)]
    fetched = [ok]
    sample = SearchSample(lambda: fetched[-1])
    assert sample.fraction(parse("'ok'"), 10) == 1.0
    assert sample.occurrences(("result",), "ok") == 1
    assert sample.sort_values(parse("'ok'"), "received") == [5.0]
    fetched.append([("u2", "app.add", "SUCCESS", "w1", "(1,)", "{}", "'no'", 7.0, None, 7.0)])
    assert sample.occurrences(("result",), "ok") == 1  # the same sample: kept
    sample.rows(50_000)  # the store grew: taken again, its figures with it
    assert sample.fraction(parse("'ok'"), 50_000) == 0.0
    assert sample.occurrences(("result",), "ok") == 0
    assert sample.sort_values(parse("'no'"), "received") == [7.0]
    assert sample.values("received") == [7.0]
    # at most SAMPLE_MEMO figures are kept: the oldest are dropped, never a wrong one read
    monkeypatch.setattr(sql_query, "SAMPLE_MEMO", 2)
    for text in ("a", "b", "c", "no"):
        assert sample.occurrences(("result",), text) == (1 if text == "no" else 0)


def test_the_sample_expects_the_matches_among_the_tasks_that_sort_first():
    # 100 sampled tasks, received 0..99; the term matches the 10 received first (oldest)
    rows = [(f"u{i}", "app.add", "SUCCESS", "w1", "('old',)" if i < 10 else "('new',)", "{}",
             "'ok'", float(i), None, float(i)) for i in range(100)]  # fmt: skip
    rows.append(("u-null", "app.add", "SUCCESS", "w1", "('old',)", "{}", "'ok'", None, None, None))
    sample = SearchSample(lambda: rows)
    # 10,100 tasks: each sampled task stands for 100; the first 2,000 are 20 sampled ones
    assert sample.matches_on_top(parse("old"), "received", 10_100, 2_000) == 0
    assert sample.matches_on_top(parse("new"), "received", 10_100, 2_000) == 2_000
    # NULL sorts last in a descending sort: the whole sample reaches the NULL match
    assert sample.matches_on_top(parse("old"), "received", 10_100, 10_100) == 1_100
    assert SearchSample(list).matches_on_top(parse("old"), "received", 0, 10) == 0
    with pytest.raises(ValueError, match="no 'runtime' values"):
        sample.matches_on_top(parse("old"), "runtime", 10_100, 10)


def test_the_sample_reads_runs_of_consecutive_ids_across_the_table():
    _, ids = sql_query.sample_query(SQLITE, 1, 1_000_000)
    assert len(set(ids)) == len(ids) == sql_query.SAMPLE_ROWS
    assert all(1 <= i <= 1_000_000 for i in ids)
    run = sql_query.SAMPLE_ROWS // sql_query.SAMPLE_RUNS
    assert len({(i - 1) // run for i in ids}) == sql_query.SAMPLE_RUNS
    assert sql_query.sample_query(SQLITE, 5, 9)[1] == [5, 6, 7, 8, 9]
    assert sql_query.sample_query(SQLITE, None, None)[1] == []


def test_sqlite_lists_names_and_workers_only_inside_an_or():
    listed = {"name": ["app.add"], "worker": ["w-add"]}
    alone, params = sql_query.where(
        TaskQuery(search=parse("name:add state:failure")),
        values=lambda f, v: listed[f],
        values_in_or_only=True,
    )
    assert "SELECT name FROM task_names" in alone and params == ["add", "FAILURE"]
    either, params = sql_query.where(
        TaskQuery(search=parse("name:add OR worker:add")),
        values=lambda f, v: listed[f],
        values_in_or_only=True,
    )
    assert (either, params) == ("(name IN (?) OR worker IN (?))", ["app.add", "w-add"])
    assert SQLITE.values_in_or_only and not POSTGRESQL.values_in_or_only
