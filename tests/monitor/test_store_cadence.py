"""The history a SQLite store holds does not depend on the flush cadence: random task event
histories, ingested by the service and flushed at random points, leave the same rows (ids
included), count, names, workers and ``task_blocks`` bounds as the same events flushed once."""

from __future__ import annotations

import random
import sqlite3
from typing import Any

import pytest
from celery import Celery

from flask_celerymon.monitor import MonitorService, MonitorSettings
from flask_celerymon.monitor.model import TASK_COLUMNS
from flask_celerymon.monitor.sqlite_store import BLOCK_COLUMNS, SHIFT_KEY, SQLiteStore

_TERMINAL = ("task-succeeded", "task-failed", "task-revoked", "task-rejected")


def _histories(rnd: random.Random, n: int) -> list[dict[str, Any]]:
    """The events of ``n`` tasks, each task's in order, the tasks interleaved at random."""
    per_task: list[list[dict[str, Any]]] = []
    t = 1_700_000_000.0
    for i in range(n):
        uuid = f"{i:08x}-{rnd.randrange(1 << 16):04x}-4000-8000-000000000000"
        host = f"w-{rnd.randrange(4)}@host"
        evs: list[dict[str, Any]] = []
        t += rnd.random()
        if rnd.random() < 0.7:
            evs.append({"type": "task-sent", "uuid": uuid, "timestamp": t,
                        "name": f"app.t{rnd.randrange(5)}", "args": f"({i},)",
                        "kwargs": f"{{'k': {rnd.randrange(9)}}}", "retries": 0,
                        "parent_id": f"{rnd.randrange(i + 1):08x}" if rnd.random() < 0.3 else None,
                        "eta": None, "expires": None})  # fmt: skip
        for kind in ("task-received", "task-started"):
            if rnd.random() < 0.85:
                t += rnd.random() / 10
                evs.append({"type": kind, "uuid": uuid, "hostname": host, "timestamp": t,
                            "name": f"app.t{rnd.randrange(5)}", "args": f"({i},)",
                            "kwargs": "{}", "retries": 0})  # fmt: skip
        if rnd.random() < 0.2:
            t += rnd.random() / 10
            evs.append({"type": "task-retried", "uuid": uuid, "hostname": host, "timestamp": t,
                        "exception": "KeyError('x')", "traceback": "Traceback..."})  # fmt: skip
            t += rnd.random() / 10
            evs.append({"type": "task-started", "uuid": uuid, "hostname": host, "timestamp": t})
        if rnd.random() < 0.8:
            t += rnd.random() / 10
            kind = rnd.choice(_TERMINAL)
            ev: dict[str, Any] = {"type": kind, "uuid": uuid, "hostname": host, "timestamp": t}
            if kind == "task-succeeded":
                ev.update(result=f"'r{i}'", runtime=rnd.random())
            elif kind == "task-failed":
                ev.update(exception="ValueError('v')", traceback="Traceback...")
            evs.append(ev)
        per_task.append(evs)
    out: list[dict[str, Any]] = []
    live = [list(reversed(e)) for e in per_task if e]
    while live:
        k = rnd.randrange(min(len(live), 8))  # a few tasks in flight at once
        out.append(live[k].pop())
        if not live[k]:
            live.pop(k)
    return out


def _service(path: str) -> MonitorService:
    settings = MonitorSettings(db=path, max_tasks=10**6)
    svc = MonitorService(Celery("cadence", broker="memory://"), settings, autostart=False)
    svc._store = SQLiteStore(path)  # noqa: SLF001 - no consumer: events are handed in
    return svc


def _contents(path: str) -> dict[str, Any]:
    with sqlite3.connect(path) as c:
        rows = c.execute(f"SELECT id, {', '.join(TASK_COLUMNS)} FROM tasks ORDER BY id").fetchall()
        blocks = dict(
            (r[0], r[1:])
            for r in c.execute(f"SELECT block, {', '.join(BLOCK_COLUMNS)} FROM task_blocks")
        )
        shift = int(c.execute("SELECT value FROM meta WHERE key = ?", (SHIFT_KEY,)).fetchone()[0])
        return {
            "rows": rows,
            "count": c.execute("SELECT n FROM task_count").fetchone()[0],
            "names": c.execute("SELECT name FROM task_names ORDER BY name").fetchall(),
            "workers": c.execute("SELECT worker FROM task_workers ORDER BY worker").fetchall(),
            "blocks": blocks,
            "shift": shift,
        }


@pytest.mark.parametrize("seed", range(6))
def test_rows_do_not_depend_on_the_flush_cadence(tmp_path: Any, seed: int) -> None:
    rnd = random.Random(seed)
    events = _histories(rnd, rnd.choice((50, 400, 1500)))
    stepped, once = _service(str(tmp_path / "a.sqlite3")), _service(str(tmp_path / "b.sqlite3"))
    i = 0
    while i < len(events):
        j = i + rnd.choice((1, 3, 20, 200))
        stepped._ingest(events[i:j])  # noqa: SLF001
        once._ingest(events[i:j])  # noqa: SLF001
        if rnd.random() < 0.4:
            stepped.flush()
        i = j
    stepped.flush()
    once.flush()
    for svc in (stepped, once):
        assert svc._store is not None  # noqa: SLF001
        svc._store.close()  # noqa: SLF001
    a, b = _contents(str(tmp_path / "a.sqlite3")), _contents(str(tmp_path / "b.sqlite3"))
    assert a["rows"] == b["rows"]
    assert a["count"] == b["count"] == len(a["rows"]) == len({e["uuid"] for e in events})
    assert a["names"] == b["names"] and a["workers"] == b["workers"]
    # every block bounds the sort values of its rows (written in one batch or in many)
    for got in (a, b):
        for row in got["rows"]:
            bound = got["blocks"][row[0] >> got["shift"]]
            for k, c in enumerate(BLOCK_COLUMNS):
                v = row[1 + TASK_COLUMNS.index(c)]
                assert v is None or (bound[k] is not None and bound[k] >= v)
    # flushed once, the bounds are exact
    for block, bound in b["blocks"].items():
        members = [r for r in b["rows"] if r[0] >> b["shift"] == block]
        for k, c in enumerate(BLOCK_COLUMNS):
            vals = [r[1 + TASK_COLUMNS.index(c)] for r in members]
            assert bound[k] == max((v for v in vals if v is not None), default=None)
