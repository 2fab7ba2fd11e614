"""A plain Celery app for the monitor's event-path tests (no Flask involved).

The broker comes from ``CELERYMON_MONITOR_TEST_BROKER``, the result backend (none by default)
from ``CELERYMON_MONITOR_TEST_BACKEND``; run a worker with
``python -m celery -A tests.monitor.worker_app worker -P solo``.
"""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery(
    "monitor_tests",
    broker=os.environ.get("CELERYMON_MONITOR_TEST_BROKER", "memory://"),
    backend=os.environ.get("CELERYMON_MONITOR_TEST_BACKEND") or None,
)
app.conf.update(
    task_send_sent_event=True,
    task_track_started=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="mon.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="mon.fail")
def fail(message: str) -> None:
    raise ValueError(message)


@app.task(name="mon.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(name="mon.flaky", bind=True, max_retries=5)
def flaky(self, failures: int) -> int:
    """Fails (and retries at once) ``failures`` times, then returns its number of retries."""
    if self.request.retries < failures:
        raise self.retry(exc=ValueError(f"attempt {self.request.retries} failed"), countdown=0)
    return self.request.retries


@app.task(name="mon.spawn", bind=True)
def spawn(self, n: int) -> list[str]:
    return [add.delay(i, i).id for i in range(n)]
