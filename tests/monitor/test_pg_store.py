"""What only the PostgreSQL store has: a versioned schema, sharing between processes, schemas,
the trigram index, and clear errors. The behaviour both stores share is tested over both in
test_store.py and test_query.py."""

from __future__ import annotations

import sys
import threading

import psycopg
import pytest

from flask_celerymon.errors import CeleryMonError
from flask_celerymon.monitor import sql_query
from flask_celerymon.monitor.pg_store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    PostgresStore,
    StoreUnavailable,
    StoreVersionError,
    _pieces,
    _text_match,
    redact,
)
from flask_celerymon.monitor.query import parse
from flask_celerymon.monitor.store import TASK_COLUMNS, TaskQuery
from flask_celerymon.monitor.stores import open_store


def row(uuid: str, **values) -> tuple:
    return tuple(values.get(c, uuid if c == "uuid" else None) for c in TASK_COLUMNS)


def test_open_store_picks_postgres_for_a_postgresql_url(postgres_url):
    store = open_store(postgres_url)
    try:
        assert isinstance(store, PostgresStore)
        assert store.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
    finally:
        store.close()


def test_processes_starting_together_migrate_the_schema_once(postgres_url):
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(PostgresStore(postgres_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        with psycopg.connect(postgres_url) as c:
            versions = c.execute("SELECT version FROM celerymon.schema_version").fetchall()
        assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    finally:
        for s in stores:
            s.close()


def test_a_schema_newer_than_this_release_is_refused(postgres_url):
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url) as c:
        c.execute("INSERT INTO celerymon.schema_version (version) VALUES (99)")
    with pytest.raises(StoreVersionError) as exc:
        PostgresStore(postgres_url)
    assert str(exc.value).startswith("the history schema 'celerymon' in ")
    assert str(exc.value).endswith(
        f"is at version 99, newer than this release understands ({SCHEMA_VERSION}); upgrade "
        "flask-celerymon or point CELERY_MONITOR_DB at another schema"
    )


def test_every_process_sees_the_history_another_wrote(postgres_url):
    writer = PostgresStore(postgres_url)
    reader = PostgresStore(postgres_url)
    try:
        writer.write_tasks([row("a", name="app.add", state="SUCCESS", worker="w1",
                                received=1.0, timestamp=2.0, args="(1, 'needle')")])  # fmt: skip
        writer.write_workers({"w1": {"hostname": "w1", "freq": 2.0}})
        assert reader.count() == 1
        assert reader.get_task("a")["args"] == "(1, 'needle')"
        assert reader.task_names() == ["app.add"]
        assert reader.load_workers() == {"w1": {"hostname": "w1", "freq": 2.0}}
        total, page = reader.query(TaskQuery(search=parse("needle")))
        assert (total, [t["uuid"] for t in page]) == (1, ["a"])
    finally:
        writer.close()
        reader.close()


def test_an_id_with_a_nul_is_no_task_rather_than_an_error(postgres_url):
    # PostgreSQL text cannot hold NUL, so no stored task has one; GET /api/task/info/%00
    # (and canvas, retry, abort) answered 500 from psycopg's DataError before
    store = PostgresStore(postgres_url)
    try:
        store.write_tasks([row("a", name="app.add", received=1.0)])
        assert store.get_task("a\x00") is None
        assert store.children("a\x00") == []
        assert store.get_task("a")["name"] == "app.add"
        for field in ("state", "worker", "name"):  # /api/tasks?taskname=%00 ...
            assert store.query(TaskQuery(**{field: ("x\x00",)})) == (0, [])
            assert store.last_count_exact
        assert store.query(TaskQuery(name=("x\x00", "app.add")))[0] == 1
    finally:
        store.close()


def test_clusters_in_one_database_keep_to_their_own_schema(postgres_url):
    one = PostgresStore(postgres_url + "?schema=cluster_one")
    two = PostgresStore(postgres_url + "?schema=cluster_two")
    try:
        one.write_tasks([row("x", name="app.one", args="('only-in-one',)", received=1.0)])
        two.write_tasks([row("y", name="app.two", args="('only-in-two',)", received=1.0)])
        # the search (pg_trgm, our SQL functions) works in a schema that did not create pg_trgm
        assert two.query(TaskQuery(search=parse("only-in")))[0] == 1
        assert one.query(TaskQuery(search=parse("kwargs:x=1 OR only-in")))[0] == 1
        assert (one.task_names(), two.task_names()) == (["app.one"], ["app.two"])
    finally:
        one.close()
        two.close()


@pytest.mark.parametrize("schema", ["Robert'); DROP TABLE x; --", "1abc", "a-b", ""])
def test_a_schema_name_that_is_not_an_identifier_is_refused(postgres_url, schema):
    with pytest.raises(CeleryMonError) as exc:
        PostgresStore(f"{postgres_url}?schema={schema}")
    assert str(exc.value) == (
        f"CELERY_MONITOR_DB: schema {schema!r} is not valid; use lower-case letters, digits "
        "and _ (e.g. ?schema=celerymon)"
    )


@pytest.mark.parametrize("schema", ["user", "select", "pg_monitor", "pg_x"])
def test_a_schema_name_postgresql_reserves_is_refused_before_connecting(postgres_url, schema):
    """It had failed with psycopg's SyntaxError (``CREATE SCHEMA IF NOT EXISTS user``) or
    ReservedName, in the store and in the PostgreSQL lease alike."""
    from flask_celerymon.monitor.pg_lease import PgCluster

    for make in (PostgresStore, lambda url: PgCluster(url, "t", 1.0)):
        with pytest.raises(CeleryMonError, match=f"schema '{schema}' is not valid; PostgreSQL"):
            make(f"{postgres_url}?schema={schema}")


def test_substring_search_is_answered_from_the_trigram_index(postgres_url):
    store = PostgresStore(postgres_url)
    try:
        store.write_tasks([row(f"t{i}", args=f"({i},)", kwargs="{}", result=f"'r{i}'",
                               received=float(i)) for i in range(200)])  # fmt: skip
        where, params = sql_query.where(TaskQuery(search=parse("args:needle")), _text_match)
        where = sql_query.POSTGRESQL.sql(where)
        with psycopg.connect(postgres_url, options="-c search_path=celerymon,public") as c:
            c.execute("SET enable_seqscan = off")
            plan = "\n".join(
                r[0] for r in c.execute(f"EXPLAIN SELECT id FROM tasks WHERE {where}", params)
            )
        assert "tasks_args_trgm" in plan
    finally:
        store.close()


def test_the_index_is_asked_for_the_rarest_word_of_a_phrase():
    assert _pieces("customer-12") == ["customer-", "-12", "customer-12"]
    assert _pieces("'user_id': 42,") == ["'user_", "_id'", " 42,", "'user_id': 42,"]
    assert _pieces("ab") == ["ab"]  # a word too short to make a trigram: the phrase
    seen = {"-12": 3, "customer-": 1000, "customer-12": 3}
    params: list = []
    cond = _text_match(("args",), ["customer-12"], params, lambda cols, text: seen[text])
    # LIKE on the rare word finds candidates through the index; instr keeps exact matches
    assert (cond, params) == ("((args LIKE ? AND instr(args, ?) > 0))", ["%-12%", "customer-12"])


def test_kwarg_terms_match_exactly_what_the_window_matches(postgres_url):
    store = PostgresStore(postgres_url)
    kwargs = ["{'user': 7}", "{'user': '7'}", "{'user': 77}", "{'a.b': 1, 'user': 7}",
              "{'xuser': 7}", "{'user': '7x'}", '{\'q\': "it\'s", \'user\': 7}',
              "{'a.b': 1}", "{'a|b': '(x)'}"]  # fmt: skip
    try:
        store.write_tasks([row(f"k{i}", kwargs=k, received=float(i)) for i, k in enumerate(kwargs)])
        for search, expected in [
            ("kwargs:user=7", {0, 1, 3, 6}),
            ("kwargs:a.b=1", {3, 7}),
            ('kwargs:"a|b=(x)"', {8}),
        ]:
            _, page = store.query(TaskQuery(search=parse(search), limit=None))
            assert {int(t["uuid"][1:]) for t in page} == expected, search
    finally:
        store.close()


def test_without_the_driver_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(CeleryMonError) as exc:
        open_store("postgresql://u@127.0.0.1:1/db")
    assert str(exc.value) == (
        "CELERY_MONITOR_DB is a PostgreSQL URL but psycopg is not installed: "
        "pip install 'flask-celerymon[postgres]'"
    )


def test_passwords_never_appear_in_what_the_store_prints(postgres_url):
    assert redact("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact("postgresql://me@db/x") == "postgresql://me@db/x"


def test_an_older_schema_with_data_is_migrated_in_place(postgres_url, monkeypatch):
    from flask_celerymon.monitor import pg_store

    monkeypatch.setattr(pg_store, "MIGRATIONS", MIGRATIONS[:1])
    old = PostgresStore(postgres_url)
    old.write_tasks([row(f"t{i}", received=float(i), timestamp=float(i)) for i in range(5)])
    assert old.schema_version() == 1
    old.close()
    monkeypatch.setattr(pg_store, "MIGRATIONS", MIGRATIONS)
    new = PostgresStore(postgres_url)
    try:
        assert new.schema_version() == SCHEMA_VERSION
        assert new.count() == 5
        assert new.query(TaskQuery(limit=2))[0] == 5
    finally:
        new.close()


def test_the_kept_count_follows_inserts_updates_retention_and_truncation(postgres_url):
    store = PostgresStore(postgres_url)
    try:
        rows = [row(f"t{i}", received=float(i), timestamp=float(i)) for i in range(30)]
        store.write_tasks(rows[:20])
        store.write_tasks(rows[10:] + rows[:3])  # 10 new, 13 updated, one statement
        store.write_tasks([row("t0", received=0.0, timestamp=0.0, state="SUCCESS")] * 3)
        with psycopg.connect(postgres_url) as c:
            real = c.execute("SELECT count(*) FROM celerymon.tasks").fetchone()[0]
        assert store.count() == real == 30
        assert store.prune(max_tasks=25, older_than=2.0) == 2 + 3
        assert store.count() == store.query(TaskQuery(limit=None))[0] == 25
        with psycopg.connect(postgres_url) as c:
            c.execute("TRUNCATE celerymon.tasks")
        assert store.count() == 0
    finally:
        store.close()


def test_an_unreachable_server_is_named_without_its_password():
    from tests.conftest import free_port

    url = f"postgresql://me:s3cret@127.0.0.1:{free_port()}/db"
    with pytest.raises(StoreUnavailable) as exc:
        PostgresStore(url)
    message = str(exc.value)
    assert message.startswith(f"cannot reach the history database {redact(url)} (")
    assert message.endswith("); check CELERY_MONITOR_DB and that the server runs")
    assert "s3cret" not in message


_GEVENT_PROBE = """
import sys, time
import psycopg  # the host app's import, before the monkey-patching
from flask_celerymon.cli import _patch_gevent
_patch_gevent()
import gevent
ticks = []
def tick():
    while True:
        gevent.sleep(0.005)
        ticks.append(time.monotonic())
def query():
    with psycopg.connect(sys.argv[1]) as c:
        c.execute("SELECT pg_sleep(0.3)")
ticker = gevent.spawn(tick)
gevent.spawn(query).join()
ticker.kill()
print(psycopg.waiting.wait.__name__, len(ticks))
"""


def test_the_gevent_monitor_keeps_serving_while_psycopg_waits_for_a_query(postgres_url):
    """psycopg imported before ``flask celery monitor`` monkey-patches (by the host app)
    chose its C wait, which stops the gevent hub for a whole query; the patching makes it
    wait through gevent: a 5 ms ticker keeps ticking during a 300 ms query."""
    pytest.importorskip("gevent")
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", _GEVENT_PROBE, postgres_url],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    assert out[0] != "wait_c"
    assert int(out[1]) >= 20  # about 60 at 5 ms; none when the hub is blocked
