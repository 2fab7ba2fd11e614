"""Time the 30-day task analytics query on the insight roll-ups of 1 million tasks.

    python -m bench.insight_analytics --tasks 1000000 --db /tmp/celerymon-insight.sqlite3
    python -m bench.insight_analytics --tasks 1000000 --db postgresql://user@host/empty_db

Feeds synthetic task events (spread evenly over the last 30 days, 20 task names, 5 % failures
and retries) through the insight engine's own listener and flush, as the monitor does live,
into a fresh SQLite file (or the insight tables of an empty PostgreSQL database, the store
every process of a single-ingester cluster reads); then prints one JSON line per query with p50/p95 in ms over
``--repeat`` runs. The issue's target: the 30-day view answers in under 200 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from types import SimpleNamespace
from typing import Any

from celery import Celery

from flask_celerymon.monitor.insight import Insight
from flask_celerymon.monitor.insight.analytics import task_analytics, task_series
from flask_celerymon.monitor.service import MonitorService
from flask_celerymon.monitor.settings import MonitorSettings

NAMES = [f"shop.task_{i:02d}" for i in range(20)]


def fill(ins: Insight, n: int, now: float, days: float = 30.0) -> float:
    """Feed ``n`` tasks through the listener; returns the seconds it took (with flushes)."""
    rnd = random.Random(42)
    span = days * 86400
    t0 = time.perf_counter()
    for i in range(n):
        ts = now - span + span * (i + rnd.random()) / n
        name = NAMES[i % len(NAMES)]
        task = SimpleNamespace(
            name=name, uuid=f"{i:032x}", worker=f"celery@bench-{i % 4}", sent=ts - 0.3,
            received=ts - 0.2, eta=None, routing_key="celery", runtime=rnd.expovariate(20),
            exception="", traceback="",
        )  # fmt: skip
        ins._on_event({"type": "task-started", "timestamp": ts - 0.1}, task)
        r = rnd.random()
        if r < 0.05:
            ev = {
                "type": "task-failed",
                "timestamp": ts,
                "exception": f"ValueError('order {i} failed')",
                "traceback": "Traceback ...",
            }
        elif r < 0.07:
            ev = {"type": "task-retried", "timestamp": ts, "exception": "TimeoutError()"}
        else:
            ev = {"type": "task-succeeded", "timestamp": ts}
        ins._on_event(ev, task)
        if i % 20_000 == 19_999:
            ins.flush()
    ins.flush()
    return time.perf_counter() - t0


def timed(fn: Any, repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2),
            "p95_ms": round(times[max(0, int(0.95 * len(times)) - 1)], 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--db", default="/tmp/celerymon-insight-bench.sqlite3")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args(argv)
    postgres = args.db.startswith(("postgresql://", "postgres://"))
    for suffix in ("", "-wal", "-shm"):
        if not postgres and os.path.exists(args.db + suffix):
            os.remove(args.db + suffix)
    svc = MonitorService(Celery(broker="memory://"), MonitorSettings(db=args.db), autostart=False)
    ins = Insight(svc)
    now = time.time()
    fill_s = fill(ins, args.tasks, now)
    print(json.dumps({"tasks": args.tasks, "fill_s": round(fill_s, 1),
                      "db_mb": None if postgres else round(os.path.getsize(args.db) / 2**20, 1)}))  # fmt: skip
    store = ins.store
    for window in ("30d", "7d", "24h", "1h"):
        r = timed(lambda w=window: task_analytics(store, w, time.time()), args.repeat)
        print(json.dumps({"query": f"analytics window={window} (all task names)", **r}))
    r = timed(lambda: task_series(store, NAMES[0], "30d", time.time()), args.repeat)
    print(json.dumps({"query": "series 30d of one task", **r}))
    r = timed(lambda: store.error_groups(since=time.time() - 30 * 86400), args.repeat)
    print(json.dumps({"query": "error groups 30d", **r}))
    check = task_analytics(store, "30d", time.time() + 60)
    total = sum(t["current"]["finished"] + t["current"]["retried"] for t in check["tasks"])
    print(json.dumps({"tasks_counted_30d": total}))
    store.close()


if __name__ == "__main__":
    main()
