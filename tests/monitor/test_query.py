"""The search language: parsing, errors, and the same answers from the window and the store."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_celerymon.monitor import sql_query, sqlite_store
from flask_celerymon.monitor.query import And, Or, SearchError, Term, parse, parse_sort


def test_bare_words_are_anded_terms():
    assert parse("add failure") == And((Term("any", "add"), Term("any", "failure")))


def test_qualifiers_map_to_fields_and_state_is_upper_cased():
    assert parse("name:add state:failure worker:w1 args:123 result:ok!") == And(
        (
            Term("name", "add"),
            Term("state", "FAILURE"),
            Term("worker", "w1"),
            Term("args", "123"),
            Term("result", "ok!"),
        )
    )


def test_kwargs_with_equals_is_an_exact_keyword_term():
    assert parse("kwargs:user=7") == Term("kwarg", "7", "user")
    assert parse("kwargs:user_id") == Term("kwargs", "user_id")


def test_and_binds_tighter_than_or_and_parentheses_group():
    assert parse("aaa OR bbb ccc") == Or(
        (Term("any", "aaa"), And((Term("any", "bbb"), Term("any", "ccc"))))
    )
    assert parse("(aaa OR bbb) AND ccc") == And(
        (Or((Term("any", "aaa"), Term("any", "bbb"))), Term("any", "ccc"))
    )


def test_quoted_phrases_keep_spaces_and_parentheses():
    assert parse('"hello world"') == Term("any", "hello world")
    assert parse('args:"(1, 2)"') == Term("args", "(1, 2)")
    assert parse(r'"say \"hi\""') == Term("any", 'say "hi"')


def test_unknown_qualifier_is_part_of_a_bare_term():
    assert parse("http://example") == Term("any", "http://example")


def test_empty_search_is_no_filter():
    assert parse("") is None
    assert parse("   ") is None
    assert parse(None) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ab", "search term 'ab' is too short: terms need at least 3 characters"),
        ("args:12", "args:12 is too short: substring terms need at least 3 characters"),
        ("(abc", "missing ')' in search"),
        ("abc)", "unbalanced ')' in search"),
        ("abc OR", "OR needs a term on both sides"),
        ("OR abc", "OR needs a term on both sides"),
        ("abc AND", "AND needs a term on both sides"),
        ("abc AND OR def", "AND needs a term on both sides"),
        ('"abc', "unterminated quote at position 1 in search '\"abc'"),
        ("()", "empty parentheses in search"),
        ("state:", "state: needs a value, e.g. state:something"),
        ("kwargs:=3", "kwargs:=3 needs a keyword name before '='"),
        ("(" * 25 + "abc" + ")" * 25, "search nests parentheses too deeply (20 levels at most)"),
    ],
)
def test_invalid_searches_raise_a_clear_search_error(text, message):
    with pytest.raises(SearchError) as info:
        parse(text)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_sort_keys_are_checked():
    assert parse_sort("-runtime") == ("runtime", True)
    assert parse_sort(None) == ("received", True)
    with pytest.raises(SearchError, match="cannot sort by 'args'; use one of name, state"):
        parse_sort("args")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_parser_never_fails_with_anything_but_search_error(text):
    try:
        parse(text)
    except SearchError:
        pass


words = st.sampled_from(["add", "fail", "customer", "ok'}", "user_id", "w-1", "SUCC", "abc"])
terms = st.one_of(
    words,
    words.map(lambda w: f"name:{w}"),
    words.map(lambda w: f"args:{w}"),
    words.map(lambda w: f"result:{w}"),
    words.map(lambda w: f"kwargs:{w}"),
    st.sampled_from(["state:success", "state:FAILURE", "kwargs:user_id=7", "kwargs:tag=x"]),
)


def _expr(children):
    return st.one_of(
        st.tuples(children, children).map(lambda p: f"{p[0]} {p[1]}"),
        st.tuples(children, children).map(lambda p: f"({p[0]} OR {p[1]})"),
        st.tuples(children, children).map(lambda p: f"{p[0]} AND {p[1]}"),
    )


searches = st.recursive(terms, _expr, max_leaves=5)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(search=searches)
def test_window_and_store_give_the_same_answers(populated, search):
    window = populated.query_tasks(search=search, limit=None, source="window")
    store = populated.query_tasks(search=search, limit=None, source="store")
    assert window.total == store.total
    assert [t["uuid"] for t in window.tasks] == [t["uuid"] for t in store.tasks]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(search=searches)
def test_a_search_taken_as_common_gives_the_same_answers(populated, monkeypatch, search):
    # every search the sample sees match is "common": checked row by row in sort order
    monkeypatch.setattr(sql_query, "INDEX_HITS_MAX", 0)
    window = populated.query_tasks(search=search, limit=None, source="window")
    store = populated.query_tasks(search=search, limit=None, source="store")
    assert window.total == store.total, search
    assert [t["uuid"] for t in window.tasks] == [t["uuid"] for t in store.tasks]


@pytest.mark.parametrize("interrupted", [False, True])
# (keys without ties in the fixture: the stores and the window order equal runtimes and
# start times differently, with or without this walk)
@pytest.mark.parametrize("sort_by", [None, "received", "-timestamp", "timestamp"])
def test_a_search_page_read_through_the_sort_index_is_the_same_page(
    populated, monkeypatch, interrupted, sort_by
):
    # many matches: the SQLite store walks the sort column's index for the page, within a
    # budget of steps; past it (interrupted), the planner's sort of the candidates
    monkeypatch.setattr(sqlite_store, "SORT_MATCHES_MAX", 0)
    walks = []
    bounded = sqlite_store._bounded

    def spy(*args):
        out = bounded(*args)
        walks.append(out is not None)
        return out

    monkeypatch.setattr(sqlite_store, "_bounded", spy)
    if interrupted:
        monkeypatch.setattr(sqlite_store, "PAGE_WALK_BUDGET", 0)
        monkeypatch.setattr(sqlite_store, "PROGRESS_STEPS", 1)
    for search in ("customer", "ok'}", "args:customer state:success", "add OR fail"):
        for offset in (0, 7):
            kw = {"search": search, "sort_by": sort_by, "offset": offset, "limit": 10}
            window = populated.query_tasks(source="window", **kw)
            store = populated.query_tasks(source="store", **kw)
            assert [t["uuid"] for t in window.tasks] == [t["uuid"] for t in store.tasks], kw
    if isinstance(populated._store, sqlite_store.SQLiteStore):
        assert walks and set(walks) == {not interrupted}


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(search=searches)
def test_a_common_search_whose_walk_runs_out_of_budget_gives_the_same_answers(
    populated, monkeypatch, search
):
    # every search is "common" and its walk of the sort index is cut at once (SQLite): the
    # text index lists every candidate and they are sorted
    monkeypatch.setattr(sql_query, "INDEX_HITS_MAX", 0)
    monkeypatch.setattr(sqlite_store, "COMMON_WALK_BUDGET", 0)
    monkeypatch.setattr(sqlite_store, "PROGRESS_STEPS", 1)
    window = populated.query_tasks(search=search, limit=None, source="window")
    store = populated.query_tasks(search=search, limit=None, source="store")
    assert window.total == store.total, search
    assert [t["uuid"] for t in window.tasks] == [t["uuid"] for t in store.tasks]
    window = populated.query_tasks(search=search, offset=3, limit=10, source="window")
    store = populated.query_tasks(search=search, offset=3, limit=10, source="store")
    assert [t["uuid"] for t in window.tasks] == [t["uuid"] for t in store.tasks]
    # a bounded count: at least up to a page past the one asked for, exact when it says so
    assert min(window.total, 3 + 2 * 10 + 1) <= store.total <= window.total, search
    assert not store.exact or store.total == window.total, search


def test_filtered_totals_stop_at_the_cap_and_say_so(populated, monkeypatch):
    monkeypatch.setattr(sql_query, "COUNT_CAP", 50)
    page = populated.query_tasks(received_start=0, limit=10, source="store")
    assert (page.total, page.exact, len(page.tasks)) == (50, False, 10)
    few = populated.query_tasks(worker="w-1@host", limit=10, source="store")
    assert (few.total, few.exact) == (40, True)
    every = populated.query_tasks(limit=10, source="store")
    assert (every.total, every.exact) == (120, True)  # the unfiltered total is always exact


def test_a_common_search_counts_up_to_a_page_past_the_one_asked_for(populated, monkeypatch):
    monkeypatch.setattr(sql_query, "INDEX_HITS_MAX", 0)
    page = populated.query_tasks(search="customer", offset=10, limit=10, source="store")
    window = populated.query_tasks(search="customer", offset=10, limit=10, source="window")
    assert (page.total, page.exact) == (10 + 2 * 10 + 1, False)
    assert [t["uuid"] for t in page.tasks] == [t["uuid"] for t in window.tasks]
    last = populated.query_tasks(search="customer", offset=110, limit=10, source="store")
    assert (last.total, last.exact) == (120, True)  # fewer than the cap: counted exactly


def test_a_rare_search_counts_at_least_search_count_cap_matches(populated, monkeypatch):
    monkeypatch.setattr(sql_query, "SEARCH_COUNT_CAP", 40)
    page = populated.query_tasks(search="customer", limit=10, source="store")
    assert (page.total, page.exact) == (40, False)
    some = populated.query_tasks(search="customer-3", limit=10, source="store")
    assert (some.total, some.exact) == (17, True)
