"""CPU per event of the monitor's ingest path, in process, stage by stage (for A/B of one change).

    python bench/ingest_cpu.py [--recording PATH] [--runs 3] [--cache-kb N] [--gevent]

Replays a recording made by ``bench/served_monitor.py`` (its cache:
``$TMPDIR/celerymon-served-bench/flood-<tasks>.bin``) through the same code the served monitor
runs, in one thread, without sockets: the consumer's ``decode`` of each kombu message,
the service's ingest (the window plus the event listeners: :class:`.MonitorMetrics` and
:class:`.Insight`'s listener), a flush to a SQLite history store every ``--flush-every``
events (the housekeeping thread's 0.5 s at ~30,000 events/s) with the search indexing that
follows it. Prints one JSON line per run: CPU µs per event (thread CPU time) of each stage
and in all, and the process's RSS growth per task. The served figures remain the reference
(``bench/served_monitor.py``): this one only isolates the stages for A/B runs.
``--gevent`` monkey-patches the process first, as ``flask celery monitor`` does by default
(its locks are then gevent's).
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and "--gevent" in sys.argv:  # before anything imports threading
    from gevent import monkey

    monkey.patch_all()

import argparse
import gc
import json
import os
import shutil
import tempfile
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bench.served_monitor import read_recording  # noqa: E402
from flask_celerymon.monitor.events import BATCH, EventConsumer, Figures  # noqa: E402
from flask_celerymon.monitor.housekeeping import INDEX_AHEAD  # noqa: E402
from flask_celerymon.monitor.insight.engine import Insight  # noqa: E402
from flask_celerymon.monitor.metrics import MonitorMetrics  # noqa: E402
from flask_celerymon.monitor.service import MonitorService  # noqa: E402
from flask_celerymon.monitor.settings import MonitorSettings  # noqa: E402
from flask_celerymon.monitor.stores import open_store  # noqa: E402


def one_run(messages: list[bytes], flush_every: int, cache_kb: int | None) -> dict[str, float]:
    from celery import Celery

    work = tempfile.mkdtemp(prefix="celerymon-ingest-cpu-")
    try:
        settings = MonitorSettings(db=os.path.join(work, "h.sqlite3"), max_tasks=10**6,
                                   **({} if cache_kb is None else {"db_cache_kb": cache_kb}))  # fmt: skip
        svc = MonitorService(Celery("bench", broker="memory://"), settings)
        svc._store = open_store(settings.db, settings.db_cache_kb)  # noqa: SLF001 - no consumer
        MonitorMetrics(svc)
        insight = Insight(svc)
        svc.add_listener(insight._on_event)  # noqa: SLF001 - the listener, not its thread
        consumer = EventConsumer(svc.celery_app, svc._ingest, Figures())  # noqa: SLF001
        gc.collect()
        rss0 = psutil.Process().memory_info().rss
        clock = time.thread_time
        t_decode = t_ingest = t_flush = t_index = 0.0
        n = since_flush = 0
        batch: list[dict] = []
        for msg in messages:
            t0 = clock()
            batch.extend(consumer.decode(msg))
            t_decode += clock() - t0
            if len(batch) >= BATCH:
                t0 = clock()
                svc._ingest(batch)  # noqa: SLF001
                t_ingest += clock() - t0
                n += len(batch)
                since_flush += len(batch)
                batch = []
                if since_flush >= flush_every:
                    since_flush = 0
                    t0 = clock()
                    written = svc.flush()
                    t_flush += clock() - t0
                    t0 = clock()
                    svc._store.index_pending(written + INDEX_AHEAD)  # noqa: SLF001
                    t_index += clock() - t0
        if batch:
            svc._ingest(batch)  # noqa: SLF001
            n += len(batch)
        t0 = clock()
        svc.flush()
        t_flush += clock() - t0
        tasks = len(svc._state.tasks)  # noqa: SLF001
        rss = psutil.Process().memory_info().rss - rss0
        svc._store.close()  # noqa: SLF001
        insight.store  # noqa: B018 - opened lazily; nothing to close when unused
        us = 1e6 / n
        return {"events": n, "tasks": tasks,
                "decode_us": round(t_decode * us, 2), "ingest_us": round(t_ingest * us, 2),
                "flush_us": round(t_flush * us, 2), "index_us": round(t_index * us, 2),
                "total_us": round((t_decode + t_ingest + t_flush + t_index) * us, 2),
                "rss_per_task": round(rss / max(1, tasks))}  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def replay_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a replay of the served bench's recording (shared by bench/store_write.py)."""
    p.add_argument("--recording", default=os.path.join(
        tempfile.gettempdir(), "celerymon-served-bench", "flood-100000.bin"))  # fmt: skip
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--flush-every", type=int, default=15_000, help="events between flushes")
    p.add_argument("--cache-kb", type=int, help="SQLite page cache per connection (KiB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    replay_arguments(p)
    p.add_argument("--gevent", action="store_true", help="monkey-patch with gevent first")
    a = p.parse_args()
    messages = [data for _channel, data in read_recording(a.recording)]
    for _ in range(a.runs):
        print(json.dumps(one_run(messages, a.flush_every, a.cache_kb)), flush=True)


if __name__ == "__main__":
    main()
