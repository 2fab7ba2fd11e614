"""CPU per written row of the SQLite history store's write path, in process (for A/B of a change).

    python bench/store_write.py [--recording PATH] [--runs 3] [--cache-kb N] [--index]

The rows are the served monitor's own: the recording of ``bench/served_monitor.py``
(``$TMPDIR/celerymon-served-bench/flood-<tasks>.bin``) is replayed through
:class:`.MonitorService` as ``bench/ingest_cpu.py`` does (decode, ingest, a flush every
``--flush-every`` events), and the batches the flush hands to ``SQLiteStore.write_tasks`` are
kept (cached beside the recording as ``rows-<tasks>-<flush-every>.json``). Each run writes
those batches, in order, into a fresh store in a temporary directory and prints one JSON line:
thread CPU µs per written row of ``write_tasks`` (``write_us``), of the search indexing that
follows each flush when ``--index`` (``index_us``), rows, batches, and the file's size.
``--pragma`` sets a PRAGMA on the writer connection first (to try one before changing the code).
Run it with ``PYTHONPATH`` set to the checkout to measure (the rows are the same for both
sides of an A/B pair: the cache holds them).
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

from bench.ingest_cpu import replay_arguments  # noqa: E402
from bench.served_monitor import read_recording  # noqa: E402
from flask_celerymon.monitor.events import BATCH, EventConsumer, Figures  # noqa: E402
from flask_celerymon.monitor.housekeeping import INDEX_AHEAD  # noqa: E402
from flask_celerymon.monitor.service import MonitorService  # noqa: E402
from flask_celerymon.monitor.settings import MonitorSettings  # noqa: E402
from flask_celerymon.monitor.sqlite_store import SQLiteStore  # noqa: E402


def capture(recording: str, flush_every: int) -> list[list[tuple]]:
    """The batches of rows the flush hands to ``write_tasks`` while ``recording`` is ingested."""
    from celery import Celery

    work = tempfile.mkdtemp(prefix="celerymon-store-write-")
    try:
        settings = MonitorSettings(db=os.path.join(work, "h.sqlite3"), max_tasks=10**6)
        svc = MonitorService(Celery("bench", broker="memory://"), settings)
        store = svc._store = SQLiteStore(settings.db)  # noqa: SLF001 - no consumer
        batches: list[list[tuple]] = []
        real = store.write_tasks

        def write_tasks(rows):
            batches.append([tuple(r) for r in rows])
            real(rows)

        store.write_tasks = write_tasks  # type: ignore[method-assign]
        consumer = EventConsumer(svc.celery_app, svc._ingest, Figures())  # noqa: SLF001
        batch: list[dict] = []
        since = 0
        for _channel, msg in read_recording(recording):
            batch.extend(consumer.decode(msg))
            if len(batch) >= BATCH:
                svc._ingest(batch)  # noqa: SLF001
                since += len(batch)
                batch = []
                if since >= flush_every:
                    since = 0
                    svc.flush()
        if batch:
            svc._ingest(batch)  # noqa: SLF001
        svc.flush()
        store.close()
        return batches
    finally:
        shutil.rmtree(work, ignore_errors=True)


def one_run(
    batches: list[list[tuple]],
    cache_kb: int | None,
    index: bool,
    pragmas: list[str],
    where: str | None = None,
) -> dict[str, float]:
    work = tempfile.mkdtemp(prefix="celerymon-store-write-", dir=where)
    try:
        store = SQLiteStore(os.path.join(work, "h.sqlite3"), cache_kb)
        for pragma in pragmas:
            store._writer.execute(f"PRAGMA {pragma}")  # noqa: SLF001 - an experiment
        gc.collect()
        clock = time.thread_time
        t_write = t_index = 0.0
        rows = 0
        for b in batches:
            t0 = clock()
            store.write_tasks(b)
            t_write += clock() - t0
            rows += len(b)
            if index:
                t0 = clock()
                store.index_pending(len(b) + INDEX_AHEAD)
                t_index += clock() - t0
        tasks = store.count()
        store.close()
        size = sum(os.path.getsize(os.path.join(work, f)) for f in os.listdir(work))
        return {"rows": rows, "batches": len(batches), "tasks": tasks,
                "write_us": round(t_write * 1e6 / rows, 2),
                "index_us": round(t_index * 1e6 / rows, 2),
                "file_bytes_per_task": round(size / max(1, tasks))}  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    replay_arguments(p)
    p.add_argument("--index", action="store_true", help="also index each batch for search")
    p.add_argument("--pragma", action="append", default=[],
                   help="a PRAGMA for the writer connection, e.g. wal_autocheckpoint=4000")  # fmt: skip
    p.add_argument("--dir", help="where the store is written (default: the temp dir); "
                   "/dev/shm takes the disk's noise out of an A/B of CPU costs")  # fmt: skip
    a = p.parse_args()
    base = os.path.splitext(os.path.basename(a.recording))[0].replace("flood-", "rows-")
    cache = os.path.join(os.path.dirname(a.recording), f"{base}-{a.flush_every}.json")
    if os.path.exists(cache):  # rows as JSON lists (the store takes any sequence)
        with open(cache) as f:
            batches = json.load(f)
    else:
        batches = capture(a.recording, a.flush_every)
        with open(cache + ".tmp", "w") as f:
            json.dump(batches, f)
        os.replace(cache + ".tmp", cache)
    for _ in range(a.runs):
        print(json.dumps(one_run(batches, a.cache_kb, a.index, a.pragma, a.dir)), flush=True)


if __name__ == "__main__":
    main()
