"""The SQLite store's reads while it is written, with and without ``PRAGMA mmap_size``.

    python bench/store_mmap.py [--tasks 100000] [--mmap-mb 0,64] [--rounds 200]

A store of ``--tasks`` synthetic finished tasks (``store_queries.rows``, filled once into
``--db`` and copied for each variant, so every variant starts from the same file) is read by
one reader connection, the way a request reads it: ``search=customer-12`` (about 1,100
matches, limit 100) and the unfiltered list (limit 100). Each variant sets ``PRAGMA
mmap_size`` (MiB, 0 = off) on the store's reader connections and on its writer
(``64r``: the readers only). Phases per variant, each on a
fresh copy of the filled store, each query timed ``--rounds`` times (ms, p50/p95):

* ``quiet``: nothing written between two queries (the reader's page cache stays valid);
* ``tiny commit``: one row of ``meta`` committed before each search and list pair: a commit that adds no
  pages to read, so any slowdown is the reader's page cache discarded because the file
  changed (SQLite resets a connection's cache when the database changed since its last
  read transaction);
* ``flush``: ``--flush-rows`` new tasks written and indexed before each search and list
  pair (what a
  housekeeping flush does at 5,000 events/s every 0.5 s: about 600 rows);
* ``flush + checkpoint``: the same, then ``wal_checkpoint(TRUNCATE)``: no page read from
  the WAL.

Then ``threaded``: a writer thread flushes ``--flush-rows`` rows every 0.5 s while the main
thread runs the queries back to back, for ``--threaded-seconds``. After each variant the
process's RssAnon/RssFile (kB, /proc/self/status) are printed: mapped pages that were read
count in RssFile. The variants are interleaved (``--mmap-mb 0,64,0,64``) to compare them
under the same load. Run it pinned to one core (``flock /tmp/core1.lock taskset -c 1``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from flask_celerymon.monitor.model import TaskQuery
from flask_celerymon.monitor.query import parse
from flask_celerymon.monitor.sqlite_store import SQLiteStore

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from store_queries import fill, rows  # noqa: E402

SEARCH = TaskQuery(search=parse("customer-12"), limit=100)
LIST = TaskQuery(limit=100)


def rss() -> dict[str, int]:
    """RssAnon and RssFile of this process, kB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    return out


def pct(ts: list[float]) -> tuple[float, float]:
    ts = sorted(ts)
    return round(statistics.median(ts) * 1e3, 2), round(ts[int(0.95 * (len(ts) - 1))] * 1e3, 2)


class Feeder:
    """New task rows, continuing the ids (and received times) of the filled store."""

    def __init__(self, tasks: int) -> None:
        self.it = rows(10**7, time.time() - tasks * 0.01, seed=11)
        self.n = 0

    def flush(self, store: SQLiteStore, n: int) -> None:
        batch = [next(self.it) for _ in range(n)]
        store.write_tasks(batch)
        store.index_pending(n * 2)
        self.n += n


def checkpointed(store: SQLiteStore, feeder: Feeder, n: int) -> None:
    """A flush, then the WAL copied into the file and emptied: the reads after it find no
    page in the WAL (mapped pages are only those of the main file)."""
    feeder.flush(store, n)
    store._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def variant(base: str, tasks: int, spec: str, a: argparse.Namespace) -> dict[str, Any]:
    readers_only = spec.endswith("r")
    mmap_mb = int(spec.rstrip("r"))
    out: dict[str, Any] = {"mmap_mb": mmap_mb, "readers_only": readers_only}
    d = tempfile.mkdtemp(prefix="celerymon-mmap-")
    path = os.path.join(d, "store.sqlite3")

    def fresh() -> SQLiteStore:
        """A copy of the filled store (each phase starts from the same file)."""
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        shutil.copy(base, path)
        store = SQLiteStore(path)
        orig = store._connect  # the writer is open: only readers connect from here on

        def connect() -> Any:
            conn = orig()
            conn.execute(f"PRAGMA mmap_size={mmap_mb * 2**20}")
            return conn

        store._connect = connect  # type: ignore[method-assign]
        if not readers_only:
            store._writer.execute(f"PRAGMA mmap_size={mmap_mb * 2**20}")
        out["reader_mmap_size"] = store._reader.execute("PRAGMA mmap_size").fetchone()[0]
        store.prepare_search()
        for q in (SEARCH, LIST):  # warm the reader
            store.query(q)
        return store

    feeder = Feeder(tasks)
    rss0 = rss()
    phases: list[tuple[str, Callable[[SQLiteStore], None] | None]] = [
        ("quiet", None),
        ("tiny commit", lambda store: store.set_meta({"bench": str(time.time())})),
        ("flush", lambda store: feeder.flush(store, a.flush_rows)),
        ("flush + checkpoint", lambda store: checkpointed(store, feeder, a.flush_rows)),
    ]
    for name, before in phases:
        store = fresh()
        ts: dict[str, list[float]] = {"search": [], "list": []}
        for _ in range(a.rounds):
            if before is not None:
                before(store)
            for label, q in (("search", SEARCH), ("list", LIST)):
                t = time.perf_counter()
                store.query(q)
                ts[label].append(time.perf_counter() - t)
        out[name] = {k: pct(v) for k, v in ts.items()}
        store.close()
    store = fresh()
    stop = threading.Event()

    def writer() -> None:
        while not stop.wait(0.5):
            feeder.flush(store, a.flush_rows)

    th = threading.Thread(target=writer)
    th.start()
    ts = {"search": [], "list": []}
    end = time.monotonic() + a.threaded_seconds
    while time.monotonic() < end:
        for label, q in (("search", SEARCH), ("list", LIST)):
            t = time.perf_counter()
            store.query(q)
            ts[label].append(time.perf_counter() - t)
    stop.set()
    th.join()
    out["threaded"] = {k: pct(v) for k, v in ts.items()}
    out["threaded_queries"] = len(ts["search"])
    r = rss()
    out["rss_anon_kb"] = r["RssAnon"] - rss0["RssAnon"]
    out["rss_file_kb"] = r["RssFile"] - rss0["RssFile"]
    out["rss_file_kb_total"] = r["RssFile"]
    out["file_mb"] = round(os.path.getsize(path) / 2**20, 1)
    store.close()
    shutil.rmtree(d)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument(
        "--db", default=os.path.join(tempfile.gettempdir(), "celerymon-mmap-100k.sqlite3")
    )
    p.add_argument("--mmap-mb", default="0,64,0,64")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--flush-rows", type=int, default=600)
    p.add_argument("--threaded-seconds", type=float, default=10.0)
    a = p.parse_args()
    if not os.path.exists(a.db):
        secs = fill(a.db, a.tasks)
        print(json.dumps({"filled": a.tasks, "seconds": round(secs, 1)}), flush=True)
    for spec in a.mmap_mb.split(","):
        print(json.dumps(variant(a.db, a.tasks, spec, a)), flush=True)


if __name__ == "__main__":
    main()
