"""Fill a history store with synthetic finished tasks and time the task queries on it.

    python bench/store_queries.py --tasks 1000000 --db /tmp/celerymon-1m.sqlite3
    python bench/store_queries.py --tasks 1000000 --db postgresql://user@host/db

``--db`` is a SQLite path or a PostgreSQL URL (as ``CELERY_MONITOR_DB``). An existing, filled
store is reused (``--refill`` to rebuild). Prints the time to the first answer of a
fresh service on the store (in this process, and in a new Python process including its
imports) and the file's size per stored task, then one JSON line per query with p50/p95 in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid as uuidlib
from typing import Any

from celery import Celery

from flask_celerymon.monitor import MonitorService, MonitorSettings
from flask_celerymon.monitor.stores import POSTGRES_SCHEMES, open_store

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flood import TASK_NAMES, TRACEBACK  # noqa: E402

QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("list limit=100", {"limit": 100}),
    ("list page 50 (offset 5000)", {"limit": 100, "offset": 5000}),
    ("filter state=FAILURE", {"state": "FAILURE", "limit": 100}),
    ("filter name", {"name": "shop.payments.capture", "limit": 100}),
    ("filter worker + received range", {"worker": "celery@bench-1", "limit": 100,
                                        "received_start": "RANGE_START"}),
    ("sort -runtime", {"sort_by": "-runtime", "limit": 100}),
    ("sort name", {"sort_by": "name", "limit": 100}),
    ("search customer-12", {"search": "customer-12", "limit": 100}),
    ("search kwargs:user_id=42", {"search": "kwargs:user_id=42", "limit": 100}),
    ("search (state:failure OR result:declined) name:payments", {"search": "(state:failure OR result:declined) "
                                            "name:payments", "limit": 100}),
]  # fmt: skip


def rows(n: int, start: float, seed: int = 7) -> Any:
    rnd = random.Random(seed)
    for i in range(n):
        tid = str(uuidlib.UUID(int=rnd.getrandbits(128), version=4))
        oid = 100000 + i
        received = start + i * 0.01
        started = received + 0.002
        runtime = round(rnd.uniform(0.001, 0.2), 6)
        failed = i % 20 == 19
        done = started + runtime
        hist = ("RECEIVED", received, "STARTED", started, "FAILURE" if failed else "SUCCESS", done)
        yield (
            tid, TASK_NAMES[i % len(TASK_NAMES)], "FAILURE" if failed else "SUCCESS",
            f"celery@bench-{i % 4}", None, received, started, None if failed else done,
            done if failed else None, None, None, None, done, None if failed else runtime,
            f"({oid}, 'customer-{oid % 977}')", f"{{'priority': {oid % 3}, 'user_id': {oid % 5000}}}",
            "" if failed else f"{{'order': {oid}, 'status': 'ok'}}",
            f"PaymentDeclined({oid})" if failed else None,
            TRACEBACK.format(oid=oid) if failed else None, None, None, 0, "", "celery",
            i, None, tid, None, hist,
        )  # fmt: skip


def fill(path: str, n: int) -> float:
    store = open_store(path)
    t0 = time.perf_counter()
    batch = []
    start = time.time() - n * 0.01
    for r in rows(n, start):
        batch.append(r)
        if len(batch) == 5000:
            store.write_tasks(batch)
            batch = []
    store.write_tasks(batch)
    while store.index_pending(50_000):
        pass
    store.close()
    return time.perf_counter() - t0


def timed(svc: MonitorService, kw: dict[str, Any], repeat: int) -> tuple[int, float, float, float]:
    """(total, first, p50, p95); the first run of a search also counts its trigrams."""
    ts = []
    total = 0
    for _ in range(repeat):
        t = time.perf_counter()
        total = svc.query_tasks(**kw).total
        ts.append(time.perf_counter() - t)
    first = ts[0]
    ts.sort()
    return total, first * 1000, statistics.median(ts) * 1000, ts[int(0.95 * (len(ts) - 1))] * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--db", default="/tmp/celerymon-bench-store.sqlite3")
    p.add_argument("--refill", action="store_true")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--first-answer-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.first_answer_only:
        svc = MonitorService(Celery(broker="memory://"), MonitorSettings(db=a.db), autostart=False)
        svc._store = open_store(a.db)
        svc._store_empty_at_start = svc._store.is_empty()
        print(svc.query_tasks(limit=100).total, flush=True)
        return
    if a.db.startswith(POSTGRES_SCHEMES):
        store = open_store(a.db)
        empty = store.is_empty()
        if a.refill and not empty:
            with store._pool.connection() as c:
                c.execute("TRUNCATE tasks, task_names, task_workers")
            empty = True
        store.close()
    else:
        empty = not os.path.exists(a.db)
        if a.refill:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(a.db + suffix):
                    os.remove(a.db + suffix)
            empty = True
    if empty:
        secs = fill(a.db, a.tasks)
        print(json.dumps({"filled": a.tasks, "seconds": round(secs, 1),
                          "rows_per_s": round(a.tasks / secs)}), flush=True)  # fmt: skip
    app = Celery(broker="memory://")
    settings = MonitorSettings(db=a.db, retention_tasks=10**9, retention_days=10**5)
    t0 = time.perf_counter()
    svc = MonitorService(app, settings, autostart=False)
    svc._store = open_store(a.db)  # open the store without consuming events
    svc._store_empty_at_start = svc._store.is_empty()
    first = svc.query_tasks(limit=100)
    ttfa = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--first-answer-only", "--db", a.db],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    spawn = time.perf_counter() - t0
    size = sum(os.path.getsize(a.db + x) for x in ("", "-wal") if os.path.exists(a.db + x))
    print(json.dumps({"stored": first.total, "first_answer_s": round(ttfa, 3),
                      "new_process_first_answer_s": round(spawn, 3),
                      "file_bytes_per_task": round(size / max(first.total, 1))}),
          flush=True)  # fmt: skip
    range_start = time.time() - a.tasks * 0.01 / 2
    for label, kw in QUERIES:
        kw = {k: (range_start if v == "RANGE_START" else v) for k, v in kw.items()}
        total, first, p50, p95 = timed(svc, kw, a.repeat)
        print(json.dumps({"query": label, "total": total, "first_ms": round(first, 1),
                          "p50_ms": round(p50, 1), "p95_ms": round(p95, 1)}), flush=True)  # fmt: skip
    svc._store.close()


if __name__ == "__main__":
    main()
