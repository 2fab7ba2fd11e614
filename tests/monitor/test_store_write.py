"""``SQLiteStore.write_tasks`` inserts each row with ``ON CONFLICT DO NOTHING`` and upserts only
the rows it skipped, and grows the ``task_blocks`` of the rows it inserted once per write:
random batches (tasks new, written again, twice in one batch, columns NULL or not, written
at random batch boundaries) store exactly what upserting each row in turn stores (ids,
values, count, names, workers), and the blocks stay upper bounds of their rows no larger
than the largest value written there. A file of the version that kept the blocks of inserts
with a trigger per row loses that trigger when opened and keeps its bounds."""

from __future__ import annotations

import json
import random
import sqlite3
from typing import Any

import pytest

from flask_celerymon.monitor import sqlite_store
from flask_celerymon.monitor.model import TASK_COLUMNS
from flask_celerymon.monitor.sqlite_store import BLOCK_COLUMNS, SHIFT_KEY, SQLiteStore

_REAL = ("sent", "received", "started", "succeeded", "timestamp", "runtime")


def _row(rnd: random.Random, uuid: str, t: float) -> tuple[Any, ...]:
    v: dict[str, Any] = dict.fromkeys(TASK_COLUMNS)
    v["uuid"] = uuid
    for c in _REAL:
        if rnd.random() < 0.7:
            v[c] = t + rnd.random() * 100 if c != "runtime" else rnd.random()
    for c, choices in (("name", ["app.a", "app.b", "", None]), ("worker", ["w1", "w2", "", None]),
                       ("state", ["SUCCESS", "FAILURE", "STARTED", None]),
                       ("args", ["(1,)", "('x',)", None]), ("result", ["'ok'", None]),
                       ("retries", [0, 1, None]), ("parent_id", ["p1", None])):  # fmt: skip
        v[c] = rnd.choice(choices)
    if rnd.random() < 0.5:
        v["history"] = [["task-received", t], ["task-started", t + 1]]
    return tuple(v[c] for c in TASK_COLUMNS)


def _stored(row: tuple[Any, ...]) -> tuple[Any, ...]:
    h = TASK_COLUMNS.index("history")
    r = list(row)
    if r[h] is not None:
        r[h] = json.dumps(list(r[h]))
    return tuple(r)


@pytest.mark.parametrize("seed", range(8))
def test_random_writes_store_what_upserting_each_row_stores(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    monkeypatch.setattr(sqlite_store, "BLOCK_SHIFT", 3)  # many blocks
    rnd = random.Random(seed)
    store = SQLiteStore(str(tmp_path / "w.sqlite3"))
    ids: dict[str, int] = {}  # uuid -> id (order of first write)
    last: dict[str, tuple[Any, ...]] = {}
    ever: dict[int, dict[str, float]] = {}  # block -> column -> largest value written
    t = 1_700_000_000.0
    fresh = 0
    names: set[str] = set()
    workers: set[str] = set()
    try:
        for _ in range(rnd.choice((5, 20, 60))):
            batch = []
            for _ in range(rnd.choice((1, 2, 7, 40, 150))):
                t += 1
                if ids and rnd.random() < rnd.choice((0.0, 0.1, 0.5)):
                    uuid = rnd.choice(list(ids))  # written again
                elif batch and rnd.random() < 0.05:
                    uuid = batch[-1][0]  # twice in one batch
                else:
                    fresh += 1
                    uuid = f"u{fresh}"
                row = _row(rnd, uuid, t)
                batch.append(row)
            store.write_tasks(batch)
            for row in batch:
                names.update([row[1]] if row[1] else [])
                workers.update([row[3]] if row[3] else [])
                ids.setdefault(row[0], len(ids) + 1)
                last[row[0]] = _stored(row)
            for row in batch:  # every value written to a row of the block
                b = ever.setdefault(ids[row[0]] >> 3, {})
                for c in BLOCK_COLUMNS:
                    value = row[TASK_COLUMNS.index(c)]
                    if value is not None:
                        b[c] = max(b.get(c, value), value)
        with sqlite3.connect(store.path) as c:
            got = c.execute(
                f"SELECT id, {', '.join(TASK_COLUMNS)} FROM tasks ORDER BY id"
            ).fetchall()
            assert got == sorted((ids[u], *r) for u, r in last.items())
            assert store.count() == len(last) == c.execute("SELECT n FROM task_count").fetchone()[0]
            assert set(store.task_names()) == names
            assert {w for (w,) in c.execute("SELECT worker FROM task_workers")} == workers
            blocks = {
                r[0]: dict(zip(BLOCK_COLUMNS, r[1:]))
                for r in c.execute(f"SELECT block, {', '.join(BLOCK_COLUMNS)} FROM task_blocks")
            }
        for uuid, r in last.items():  # an upper bound of each row's values
            bound = blocks[ids[uuid] >> 3]
            for col in BLOCK_COLUMNS:
                value = r[TASK_COLUMNS.index(col)]
                if value is not None:
                    assert bound[col] is not None and bound[col] >= value, (uuid, col)
        for block, bound in blocks.items():  # and no larger than anything written there
            for col in BLOCK_COLUMNS:
                if bound[col] is not None:
                    assert bound[col] <= ever[block][col], (block, col)
    finally:
        store.close()


def test_a_null_uuid_fails_the_batch_whole(tmp_path: Any) -> None:
    rnd = random.Random(1)
    store = SQLiteStore(str(tmp_path / "n.sqlite3"))
    try:
        store.write_tasks([_row(rnd, "a", 1.0)])
        with pytest.raises(sqlite3.IntegrityError):
            store.write_tasks([_row(rnd, "a", 2.0), _row(rnd, "b", 3.0), _row(rnd, None, 4.0)])  # type: ignore[arg-type]
        assert store.count() == 1
        assert store.get_task("b") is None
    finally:
        store.close()


def test_a_file_with_the_insert_trigger_loses_it_and_keeps_its_bounds(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "BLOCK_SHIFT", 3)
    path = str(tmp_path / "old.sqlite3")
    rnd = random.Random(2)
    store = SQLiteStore(path)
    store.write_tasks([_row(rnd, f"t{i}", 100.0 + i) for i in range(40)])
    store.close()
    cols = ", ".join(BLOCK_COLUMNS)
    grow = ", ".join(
        f"{c} = max(coalesce({c}, excluded.{c}), coalesce(excluded.{c}, {c}))"
        for c in BLOCK_COLUMNS
    )
    with sqlite3.connect(path) as c:  # the earlier version's file: its trigger and key
        c.execute(
            f"CREATE TRIGGER tasks_blocks_in AFTER INSERT ON tasks BEGIN "
            f"INSERT INTO task_blocks (block, {cols}) VALUES (new.id >> 3, "
            f"{', '.join('new.' + b for b in BLOCK_COLUMNS)}) "
            f"ON CONFLICT (block) DO UPDATE SET {grow}; END"
        )
        c.execute("UPDATE meta SET key = 'block_shift' WHERE key = ?", (SHIFT_KEY,))
        before = c.execute(f"SELECT block, {cols} FROM task_blocks ORDER BY block").fetchall()
    monkeypatch.setattr(sqlite_store, "BLOCK_SHIFT", 10)  # the file's own shift is kept
    store = SQLiteStore(path)
    try:
        with sqlite3.connect(path) as c:
            names = {n for (n,) in c.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
            assert "tasks_blocks_in" not in names and "tasks_blocks_up" in names
            meta = dict(c.execute("SELECT key, value FROM meta"))
            assert meta[SHIFT_KEY] == "3" and "block_shift" not in meta  # an earlier version
            # opening it again finds no key of its own and makes its triggers and blocks afresh
            assert (
                c.execute(f"SELECT block, {cols} FROM task_blocks ORDER BY block").fetchall()
                == before
            )
        rows = [_row(rnd, f"t{i}", 500.0 + i) for i in range(30, 60)]  # 10 again, 20 new
        store.write_tasks(rows)
        with sqlite3.connect(path) as c:
            blocks = dict(
                (r[0], r[1:]) for r in c.execute(f"SELECT block, {cols} FROM task_blocks")
            )
            for id_, *values in c.execute(f"SELECT id, {cols} FROM tasks"):
                for bound, value in zip(blocks[id_ >> 3], values):
                    assert value is None or bound >= value
    finally:
        store.close()


def _unbounded(path: str, shift: int) -> list[tuple[int, str]]:
    """The (id, column) of each stored value above its block's bound in ``task_blocks``."""
    cols = ", ".join(BLOCK_COLUMNS)
    with sqlite3.connect(path) as c:
        blocks = {r[0]: r[1:] for r in c.execute(f"SELECT block, {cols} FROM task_blocks")}
        return [
            (id_, col)
            for id_, *values in c.execute(f"SELECT id, {cols} FROM tasks")
            for col, value, bound in zip(
                BLOCK_COLUMNS, values, blocks.get(id_ >> shift, (None,) * len(BLOCK_COLUMNS))
            )
            if value is not None and (bound is None or bound < value)
        ]


def test_rows_another_writer_inserts_without_the_trigger_stay_bounded(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rolling upgrade: an older process (still the ingester of a SQLite file shared by a
    host's processes) inserts rows with its plain upsert after this version dropped the insert
    trigger it relied on. Searches bound by ``task_blocks`` still see those rows at once, and
    the next write (or the next open) grows their blocks."""
    monkeypatch.setattr(sqlite_store, "BLOCK_SHIFT", 3)
    path = str(tmp_path / "rolling.sqlite3")
    rnd = random.Random(3)
    store = SQLiteStore(path)
    try:
        store.write_tasks([_row(rnd, f"t{i}", 100.0 + i) for i in range(20)])
        old = [_row(rnd, f"o{i}", 10_000.0 + i) for i in range(20)]
        with sqlite3.connect(path) as c:  # the older process's write: no trigger fires
            for row in old:
                c.execute(sqlite_store._UPSERT, _stored(row))  # noqa: SLF001
        assert _unbounded(path, 3)  # (what this test is about)
        reader = store._reader  # noqa: SLF001
        top = max(
            r[TASK_COLUMNS.index("received")]
            for r in old
            if r[TASK_COLUMNS.index("received")] is not None
        )
        bound = store._block_bound(reader, "received", [(1, 10**6)])  # noqa: SLF001
        assert bound is not None and bound >= top
        store.write_tasks([_row(rnd, "n1", 20_000.0)])
        assert _unbounded(path, 3) == []
        with sqlite3.connect(path) as c:
            for row in [_row(rnd, f"p{i}", 30_000.0 + i) for i in range(20)]:
                c.execute(sqlite_store._UPSERT, _stored(row))  # noqa: SLF001
    finally:
        store.close()
    store = SQLiteStore(path)  # opened again: the rows written meanwhile are bounded
    try:
        assert _unbounded(path, 3) == []
    finally:
        store.close()
