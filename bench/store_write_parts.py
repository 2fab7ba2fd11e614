"""Where the CPU of ``SQLiteStore.write_tasks`` goes, per written row, in process.

    python bench/store_write_parts.py [--rounds 3] [--dir /dev/shm] [--variants base,notrig,...]

Replays the flush batches cached by ``bench/store_write.py`` (run it once first) into fresh
stores, each variant made from the normal schema by dropping one part (a trigger pair, one
secondary index, everything) before the first write. The variants run interleaved, round after
round, so the machine's drift spreads over all of them; one JSON line a run: the variant, thread
CPU µs per written row. ``trigin`` grows the blocks of inserted rows with a trigger
per row (as before ``write10``) instead of once per write. ``rows`` also counts the rows written per task. ``pyrows`` times the
Python row building of ``write_tasks`` alone (no SQLite).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from flask_celerymon.monitor import sqlite_store  # noqa: E402
from flask_celerymon.monitor.model import TASK_COLUMNS  # noqa: E402
from flask_celerymon.monitor.sqlite_store import SQLiteStore, _bind_rows  # noqa: E402

INDEXES = ("tasks_received", "tasks_started", "tasks_runtime", "tasks_timestamp",
           "tasks_state", "tasks_name", "tasks_worker", "tasks_parent")  # fmt: skip


_TRIGGER_IN = (
    "CREATE TRIGGER tasks_blocks_in AFTER INSERT ON tasks BEGIN "
    "INSERT INTO task_blocks (block, received, started, timestamp) VALUES "
    "(new.id >> {shift}, new.received, new.started, new.timestamp) ON CONFLICT (block) DO UPDATE "
    "SET received = max(coalesce(received, excluded.received), coalesce(excluded.received, received)), "
    "started = max(coalesce(started, excluded.started), coalesce(excluded.started, started)), "
    "timestamp = max(coalesce(timestamp, excluded.timestamp), coalesce(excluded.timestamp, timestamp)); END"
)


def drops(variant: str) -> list[str]:
    if variant in ("base", "insert", "trigin"):
        return []
    if variant == "notrig":
        return ["DROP TRIGGER IF EXISTS tasks_blocks_in", "DROP TRIGGER IF EXISTS tasks_blocks_up"]
    if variant == "noidx":
        return [f"DROP INDEX {i}" for i in INDEXES]
    if variant == "bare":
        return drops("notrig") + drops("noidx")
    if variant.startswith("no_"):
        return [f"DROP INDEX {variant[3:]}"]
    raise SystemExit(f"unknown variant {variant}")


def pyrows(batches: list[list]) -> float:
    """Thread CPU µs a row of the Python part of ``write_tasks`` alone (its binding)."""
    t0 = time.thread_time()
    n = 0
    for rows in batches:
        _bind_rows(rows)
        n += len(rows)
    return (time.thread_time() - t0) * 1e6 / n


def one_run(batches: list[list], variant: str, where: str | None) -> dict:
    if variant == "pyrows":
        return {"variant": variant, "write_us": round(pyrows(batches), 2)}
    work = tempfile.mkdtemp(prefix="celerymon-parts-", dir=where)
    real = sqlite_store._upsert  # noqa: SLF001
    if variant == "insert":  # INSERT OR IGNORE: what the DO UPDATE clause costs

        def plain(nulls: tuple[bool, ...]) -> str:
            cols = [c for c, null in zip(TASK_COLUMNS, nulls) if not null]
            return f"INSERT OR IGNORE INTO tasks ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"

        sqlite_store._upsert = plain  # noqa: SLF001
    try:
        store = SQLiteStore(os.path.join(work, "h.sqlite3"))
        for sql in drops(variant):
            store._writer.execute(sql)  # noqa: SLF001 - an experiment
        if variant == "trigin":  # the blocks of inserts grown by a trigger per row (before)
            store._blocks_grow = "SELECT ?"  # noqa: SLF001
            store._writer.execute(_TRIGGER_IN.format(shift=store._block_shift))  # noqa: SLF001
        gc.collect()
        t = 0.0
        rows = 0
        for b in batches:
            t0 = time.thread_time()
            store.write_tasks(b)
            t += time.thread_time() - t0
            rows += len(b)
        tasks = store.count()
        store.close()
        return {"variant": variant, "write_us": round(t * 1e6 / rows, 2), "rows": rows,
                "tasks": tasks, "rows_per_task": round(rows / tasks, 4)}  # fmt: skip
    finally:
        sqlite_store._upsert = real  # noqa: SLF001
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=os.path.join(
        tempfile.gettempdir(), "celerymon-served-bench", "rows-100000-15000.json"))  # fmt: skip
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default="/dev/shm")
    p.add_argument("--variants", default="base,notrig,noidx,bare,pyrows,"
                   + ",".join(f"no_{i}" for i in INDEXES))  # fmt: skip
    a = p.parse_args()
    with open(a.rows) as f:
        batches = json.load(f)
    for _ in range(a.rounds):
        for v in a.variants.split(","):
            print(json.dumps(one_run(batches, v, a.dir)), flush=True)


if __name__ == "__main__":
    main()
