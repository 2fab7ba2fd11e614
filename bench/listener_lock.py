"""CPU per event of the service's ingest with the metrics listener's lock taken per event or
per batch (the batch hook of ``add_listener``), A/B in one process.

    python bench/listener_lock.py [--recording PATH] [--events 200000] [--gevent]

Decodes the first ``--events`` events of a ``bench/served_monitor.py`` recording once, then
applies them in batches of ``events.BATCH`` to two services side by side, batch by batch
(A, B, B, A...): each has :class:`.MonitorMetrics` and :class:`.Insight`'s listener, A with
the metrics listener as it was before the hook (its lock per event), B as built (its lock
per batch). Prints one JSON line: thread CPU µs per event of each side's ingest. ``--gevent``
monkey-patches the process first, as ``flask celery monitor`` does by default.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and "--gevent" in sys.argv:  # before anything imports threading
    from gevent import monkey

    monkey.patch_all()

import argparse
import json
import os
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bench.served_monitor import read_recording  # noqa: E402
from flask_celerymon.monitor.events import BATCH, EventConsumer, Figures  # noqa: E402
from flask_celerymon.monitor.insight.engine import Insight  # noqa: E402
from flask_celerymon.monitor.metrics import MonitorMetrics  # noqa: E402
from flask_celerymon.monitor.service import MonitorService  # noqa: E402
from flask_celerymon.monitor.settings import MonitorSettings  # noqa: E402


def _service(per_event: bool) -> MonitorService:
    from celery import Celery

    svc = MonitorService(Celery("bench", broker="memory://"), MonitorSettings(max_tasks=10**6))
    metrics = MonitorMetrics(svc)
    if per_event:
        svc.remove_listener(metrics._count_event)  # noqa: SLF001
        svc.add_listener(metrics._on_event)  # noqa: SLF001
    svc.add_listener(Insight(svc)._on_event)  # noqa: SLF001 - the listener, not its thread
    return svc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recording", default=os.path.join(
        tempfile.gettempdir(), "celerymon-served-bench", "flood-100000.bin"))  # fmt: skip
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--gevent", action="store_true", help="monkey-patch with gevent first")
    a = p.parse_args()
    sides = {"per_event": _service(True), "per_batch": _service(False)}
    consumer = EventConsumer(sides["per_batch"].celery_app, lambda evs: None, Figures())
    events: list[dict] = []
    for _channel, data in read_recording(a.recording):
        events.extend(consumer.decode(data))
        if len(events) >= a.events:
            break
    batches = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
    spent = dict.fromkeys(sides, 0.0)
    clock = time.thread_time
    for i, batch in enumerate(batches):
        for name, svc in sorted(sides.items(), reverse=i % 2 == 1):  # either side first
            evs = [dict(e) for e in batch]  # each side its own dicts, copied off the clock
            t0 = clock()
            svc._ingest(evs)  # noqa: SLF001
            spent[name] += clock() - t0
    n = len(events)
    print(json.dumps({"events": n, "gevent": a.gevent,
                      **{f"{k}_us": round(v * 1e6 / n, 3) for k, v in spent.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
